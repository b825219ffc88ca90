from django.db import migrations


def seed(apps, schema_editor):
    from migrations_app.plans.catalog import seed_catalog

    seed_catalog(apps.get_model("migrations_app", "ProviderConnection"), apps.get_model("migrations_app", "ModelSpec"))


class Migration(migrations.Migration):
    dependencies = [("migrations_app", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
