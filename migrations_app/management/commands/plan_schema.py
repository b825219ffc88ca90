"""``python manage.py plan_schema [--check]``: write (or check) the plan files' JSON Schema that
the SDK ships, generated from the plan document's serializer (api/plan_schema.py)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from migrations_app.api.plan_schema import SDK_SCHEMA, schema_text


class Command(BaseCommand):
    help = "Write the plan files' JSON Schema to sdk/src/turnout/schemas/plan.schema.json."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--check", action="store_true", help="fail if the shipped file is out of date"
        )

    def handle(self, *args: Any, check: bool = False, **options: Any) -> None:
        text = schema_text()
        if check:
            if not SDK_SCHEMA.exists() or SDK_SCHEMA.read_text() != text:
                raise CommandError(f"{SDK_SCHEMA} is out of date: run manage.py plan_schema")
            self.stdout.write("up to date")
            return
        SDK_SCHEMA.parent.mkdir(parents=True, exist_ok=True)
        SDK_SCHEMA.write_text(text)
        self.stdout.write(f"wrote {SDK_SCHEMA}")
