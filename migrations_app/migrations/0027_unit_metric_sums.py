"""A unit's per-request metric sums move into its ``UnitTotals`` row (``metrics``: {metric: [n,
sum]}, the ``paired`` arm [n, candidate's sum, control's sum]), added key by key
(outcomes/store.py): ingest then upserts one row per unit, not one more per unit and metric.

The rows of ``MetricUnitTotals`` are moved. The table stays one release, read by nothing: a
process of the release before, serving during a rolling deploy, still writes there (those
sums then miss from the units' rows, which only the clustering of the variance reads; every
count and sum of the windows and stages is whole). The next release drops it.
"""

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


class Migration(migrations.Migration):
    dependencies = [
        ("migrations_app", "0026_pending_rollup"),
    ]

    operations = [
        migrations.AddField(
            model_name="unittotals",
            name="metrics",
            field=models.JSONField(db_default={}, default=dict),
        ),
        migrations.RunPython(move_unit_sums, migrations.RunPython.noop),
    ]
