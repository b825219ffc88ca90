"""Fewer indexes on the tables ingest writes on every batch (bench/bench_ingest.py): the
aggregates' stage index, which their unique constraint's first column already serves, and the
``varchar_pattern_ops`` copy of the outcome's primary key that PostgreSQL gets for a CharField
key (for LIKE queries; nothing queries event ids by pattern)."""

import django.db.models.deletion
from django.db import migrations, models


# The name Django gave it (schema_editor._create_index_name for the pattern-ops copy).
_LIKE_INDEX = "migrations_app_outcome_event_id_9e161331_like"


def _drop_outcome_like_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f'DROP INDEX IF EXISTS "{_LIKE_INDEX}"')


def _create_outcome_like_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f'CREATE INDEX IF NOT EXISTS "{_LIKE_INDEX}"'
            " ON migrations_app_outcome (event_id varchar_pattern_ops)"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("migrations_app", "0022_replay"),
    ]

    operations = [
        migrations.AlterField(
            model_name="metricunittotals",
            name="stage",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="migrations_app.planstage",
            ),
        ),
        migrations.AlterField(
            model_name="segmentaggregate",
            name="stage",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="segment_totals",
                to="migrations_app.planstage",
            ),
        ),
        migrations.AlterField(
            model_name="stageaggregate",
            name="stage",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="totals",
                to="migrations_app.planstage",
            ),
        ),
        migrations.AlterField(
            model_name="unittotals",
            name="stage",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="migrations_app.planstage",
            ),
        ),
        migrations.AlterField(
            model_name="windowaggregate",
            name="stage",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="windows",
                to="migrations_app.planstage",
            ),
        ),
        migrations.RunPython(_drop_outcome_like_index, _create_outcome_like_index),
    ]
