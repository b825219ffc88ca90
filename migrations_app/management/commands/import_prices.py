"""``manage.py import_prices FILE``: update catalog prices from a community price map."""

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from migrations_app.plans.catalog import catalog_import_prices


class Command(BaseCommand):
    help = "Update model prices and limits from a model_prices_and_context_window.json file. Plans are not touched."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path)

    def handle(self, *args: Any, path: Path, **options: Any) -> None:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"cannot read {path}: {exc}") from exc
        try:
            report = catalog_import_prices(data)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        for name in report.updated:
            self.stdout.write(f"updated {name}")
        for name, reason in report.skipped:
            self.stderr.write(f"skipped {name}: {reason}")
        self.stdout.write(
            f"{len(report.updated)} updated, {report.unchanged} unchanged, "
            f"{report.unmatched} not in the catalog, {len(report.skipped)} malformed"
        )
