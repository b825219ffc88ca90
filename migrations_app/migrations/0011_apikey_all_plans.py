"""API keys: "every plan" becomes an explicit flag; an empty plan list now means none.

Keys that had an empty list saw every plan: they keep doing so (all_plans=True)."""

from django.db import migrations, models


def keep_what_keys_saw(apps, schema_editor):
    ApiKey = apps.get_model("migrations_app", "ApiKey")
    unrestricted = ApiKey.objects.filter(plans__isnull=True).values_list("pk", flat=True)
    ApiKey.objects.filter(pk__in=list(unrestricted)).update(all_plans=True)


class Migration(migrations.Migration):
    dependencies = [
        ("migrations_app", "0010_routing_state"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="all_plans",
            field=models.BooleanField(
                default=False,
                help_text="Sees every plan, present and future.",
                verbose_name="every plan",
            ),
        ),
        migrations.AlterField(
            model_name="apikey",
            name="plans",
            field=models.ManyToManyField(
                blank=True,
                help_text="The plans this key sees when it is not for every plan. Empty: none.",
                related_name="api_keys",
                to="migrations_app.migrationplan",
            ),
        ),
        migrations.RunPython(keep_what_keys_saw, migrations.RunPython.noop),
    ]
