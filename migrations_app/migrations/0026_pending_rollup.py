"""A batch's pending part (its segment part and its windows' deltas) goes to a table of its own,
``PendingRollup`` (outcomes/segment_rollup.py), not to ``PendingSegments``: the code before
folds ``PendingSegments`` and reads neither the window part (0025) nor the newer segment format,
so during a rolling deploy or after a rollback it would have deleted them unread. It never
touches the new table; the new fold moves whatever the code before left in ``PendingSegments``
into it. The window column of 0025 goes (no release wrote it)."""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.db import migrations, models


def _store_uncompressed(apps, schema_editor):
    # Written once and read once (0024): compressing the parts costs more than storing them.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "ALTER TABLE migrations_app_pendingrollup ALTER COLUMN segments SET STORAGE EXTERNAL,"
            " ALTER COLUMN windows SET STORAGE EXTERNAL"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("migrations_app", "0025_pending_windows"),
    ]

    operations = [
        migrations.RemoveField(model_name="pendingsegments", name="windows"),
        migrations.CreateModel(
            name="PendingRollup",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("segments", models.BinaryField()),
                ("windows", models.BinaryField()),
                (
                    "created_at",
                    models.DateTimeField(db_default=django.db.models.functions.datetime.Now()),
                ),
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
