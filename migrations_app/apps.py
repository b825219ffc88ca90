from django.apps import AppConfig


class MigrationsAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "migrations_app"
    verbose_name = "Turnout"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from migrations_app.outcomes import store
        from migrations_app.routing import changes

        changes.connect_catalog_edits()
        connection_created.connect(store.connect_sqlite)
