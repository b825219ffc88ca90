"""A batch's window deltas wait in its stage's pending row too (``PendingSegments.windows``,
outcomes/window_rollup.py): the fold that adds the segments' part adds them to the window and
stage rows, and no ingest transaction locks those rows any more (bench/bench_ingest.py)."""

from django.db import migrations, models


def _store_uncompressed(apps, schema_editor):
    # Written once and read once, like ``data`` (0024): compressing it costs more than storing it.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "ALTER TABLE migrations_app_pendingsegments ALTER COLUMN windows SET STORAGE EXTERNAL"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("migrations_app", "0024_pending_segments"),
    ]

    operations = [
        migrations.AddField(
            model_name="pendingsegments",
            name="windows",
            field=models.BinaryField(null=True),
        ),
        migrations.RunPython(_store_uncompressed, migrations.RunPython.noop),
    ]
