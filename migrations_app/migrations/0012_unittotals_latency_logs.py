"""Per-unit log(1 + ms) latency sums (how much a user's latencies resemble each other, for the
latency tests' design effect), and the third-order unit moments of the cluster sums in the
stage totals (the leverage correction of stats.ratio_cluster_variance).

Stage totals written before hold four values per cluster sum; their third-order moments are
rebuilt here from the units' current totals, so a stage running through the upgrade keeps
exact sums (ingest adds each unit's increments to them from now on). Windows keep four values
(they are not tested; aggregation reads missing moments as zero). Latency sums cannot be
rebuilt: they start now, with their own counts."""

from django.db import migrations, models
from django.db.models import F, FloatField, Sum
from django.db.models.functions import Cast

# (Y, N) columns of the unit totals behind each cluster sum (aggregation._CLUSTER_FIELDS).
CLUSTERS = {
    "error_clusters": ("errors", "requests"),
    "cost_clusters": ("cost_sum", "cost_n"),
    "feedback_clusters": ("feedback_sum", "feedback_n"),
    "feedback_rate_clusters": ("feedback_n", "requests"),
}


def third_moments(apps, schema_editor):
    StageAggregate = apps.get_model("migrations_app", "StageAggregate")
    UnitTotals = apps.get_model("migrations_app", "UnitTotals")
    for row in StageAggregate.objects.all().iterator():
        data = dict(row.data or {})
        stale = [name for name in CLUSTERS if len(data.get(name) or ()) == 4]
        if not stale:
            continue
        units = UnitTotals.objects.filter(stage_id=row.stage_id, arm=row.arm)
        for name in stale:
            y, n = (Cast(F(column), FloatField()) for column in CLUSTERS[name])
            sums = units.aggregate(yyn=Sum(y * y * n), ynn=Sum(y * n * n), nnn=Sum(n * n * n))
            data[name] = [*data[name], *(float(sums[k] or 0.0) for k in ("yyn", "ynn", "nnn"))]
        row.data = data
        row.save(update_fields=["data"])


class Migration(migrations.Migration):
    dependencies = [
        ("migrations_app", "0011_apikey_all_plans"),
    ]

    operations = [
        migrations.AddField(
            model_name="unittotals",
            name="latency_n",
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name="unittotals",
            name="latency_log1p",
            field=models.FloatField(db_default=0.0, default=0.0),
        ),
        migrations.AddField(
            model_name="unittotals",
            name="ttft_n",
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name="unittotals",
            name="ttft_log1p",
            field=models.FloatField(db_default=0.0, default=0.0),
        ),
        migrations.RunPython(third_moments, migrations.RunPython.noop),
    ]
