"""A batch's segment sums wait in PendingSegments until a fold adds them to the SegmentAggregate
rows (outcomes/segment_rollup.py): ingest writes one row per batch instead of rewriting
hundreds of segment rows on every batch (bench/bench_ingest.py --segments 3)."""

import django.db.models.deletion
from django.db import migrations, models


def _store_uncompressed(apps, schema_editor):
    # A pending row is JSON written once and read once (~150 kB for 500 segmented outcomes): compressing it (pglz, the
    # default past 2 kB) cost more of the insert than storing it (bench/bench_ingest.py).
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "ALTER TABLE migrations_app_pendingsegments ALTER COLUMN data SET STORAGE EXTERNAL"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("migrations_app", "0023_aggregate_indexes"),
    ]

    operations = [
        migrations.CreateModel(
            name="PendingSegments",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("data", models.BinaryField()),
                (
                    "stage",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="migrations_app.planstage",
                    ),
                ),
            ],
        ),
        migrations.RunPython(_store_uncompressed, migrations.RunPython.noop),
    ]
