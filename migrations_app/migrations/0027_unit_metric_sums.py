"""A unit's per-request metric sums move into its ``UnitTotals`` row (``metrics``: {metric: [n,
sum]}, the ``paired`` arm [n, candidate's sum, control's sum]), added key by key
(outcomes/store.py): ingest then upserts one row per unit, not one more per unit and metric.

The rows of ``MetricUnitTotals`` are moved, with both tables locked against writes for the
migration's length (ingest waits: ~7 s per 500,000 legacy rows, a reviewer's measure), taken
in the order every transaction of the release before takes them (unit totals, then metric
sums), so that none deadlocks with the migration. The table stays one release, read by
nothing: a process of the release before, serving during a rolling deploy, still writes
there. Those units' sums then start again from zero in the new row, so their clustering is
understated for the rest of the stage (every count and sum of the windows and stages stays
whole); the next release drops the table. Going back moves the sums back.

Also: a metric's name is matched as a whole (``\\Z``): ``$`` matched before a final newline.
"""

import django.core.validators
import orjson
from django.db import migrations, models

_BUILTIN = (
    "requests, errors, cost_n, cost_sum, feedback_n, feedback_sum,"
    " latency_n, latency_log1p, ttft_n, ttft_log1p"
)
_ZEROS = "0, 0, 0, 0.0, 0, 0.0, 0, 0.0, 0, 0.0"
_UPSERT = (
    f"INSERT INTO migrations_app_unittotals (stage_id, arm, unit, {_BUILTIN}, metrics) {{source}}"
    # Every row's metrics are the {} the column was just added with.
    " ON CONFLICT (stage_id, arm, unit) DO UPDATE SET metrics = EXCLUDED.metrics"
)


def lock_tables(apps, schema_editor):
    """Before the column is added: both tables, in the release before's order."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("LOCK TABLE migrations_app_unittotals IN ACCESS EXCLUSIVE MODE")
        schema_editor.execute("LOCK TABLE migrations_app_metricunittotals IN EXCLUSIVE MODE")


def move_unit_sums(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                _UPSERT.format(
                    source=f"SELECT stage_id, arm, unit, {_ZEROS}, jsonb_object_agg(metric,"
                    " CASE WHEN arm = 'paired' THEN jsonb_build_array(n, total, control_total)"
                    " ELSE jsonb_build_array(n, total) END)"
                    " FROM migrations_app_metricunittotals GROUP BY stage_id, arm, unit"
                )
            )
        else:
            # SQLite (the embedded mode) prints a float with 15 digits: group in Python.
            cursor.execute(
                "SELECT stage_id, arm, unit, metric, n, total, control_total"
                " FROM migrations_app_metricunittotals"
            )
            units: dict[tuple, dict] = {}
            for stage_id, arm, unit, metric, n, total, control in cursor.fetchall():
                sums = [n, total, control] if arm == "paired" else [n, total]
                units.setdefault((stage_id, arm, unit), {})[metric] = sums
            for (stage_id, arm, unit), sums in units.items():
                cursor.execute(
                    _UPSERT.format(source=f"VALUES (%s, %s, %s, {_ZEROS}, %s)"),
                    [stage_id, arm, unit, orjson.dumps(sums).decode()],
                )
        cursor.execute("DELETE FROM migrations_app_metricunittotals")


def move_back(apps, schema_editor):
    """Going back to 0026: each unit's sums to one row per metric again (before the column
    goes), added to what the release before wrote there meanwhile."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT stage_id, arm, unit, metrics FROM migrations_app_unittotals"
            " WHERE metrics IS NOT NULL"
        )
        rows = [
            (stage_id, arm, unit, name, int(sums[0]), float(sums[1]),
             float(sums[2]) if len(sums) > 2 else 0.0)
            for stage_id, arm, unit, metrics in cursor.fetchall()
            for name, sums in (orjson.loads(metrics) if isinstance(metrics, str) else metrics).items()
        ]  # fmt: skip
        for start in range(0, len(rows), 1000):
            part = rows[start : start + 1000]
            cursor.execute(
                "INSERT INTO migrations_app_metricunittotals"
                " (stage_id, arm, unit, metric, n, total, control_total) VALUES "
                + ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(part))
                + " ON CONFLICT (stage_id, arm, unit, metric) DO UPDATE SET"
                " n = migrations_app_metricunittotals.n + EXCLUDED.n,"
                " total = migrations_app_metricunittotals.total + EXCLUDED.total,"
                " control_total = migrations_app_metricunittotals.control_total"
                " + EXCLUDED.control_total",
                [value for row in part for value in row],
            )


class Migration(migrations.Migration):
    dependencies = [
        ("migrations_app", "0026_pending_rollup"),
    ]

    operations = [
        migrations.RunPython(lock_tables, migrations.RunPython.noop),
        migrations.AddField(
            model_name="unittotals",
            name="metrics",
            field=models.JSONField(db_default={}, default=dict),
        ),
        migrations.RunPython(move_unit_sums, move_back),
        migrations.AlterField(
            model_name="metricdefinition",
            name="name",
            field=models.CharField(
                max_length=48,
                validators=[
                    django.core.validators.RegexValidator(
                        "^[a-z][a-z0-9_]{0,47}\\Z",
                        "Lowercase letters, digits and underscores, starting with a letter"
                        " (at most 48).",
                    )
                ],
            ),
        ),
    ]
