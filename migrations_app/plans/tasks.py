"""The catalog's task: refresh prices from a community price-map file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from celery import shared_task

from migrations_app.plans.catalog import catalog_import_prices


@shared_task(name="turnout.import_prices", acks_late=True, soft_time_limit=60, time_limit=90)
def import_prices(path: str) -> dict[str, Any]:
    """Refresh catalog prices from a community price-map file. Safe to run twice (an update
    to the same prices changes nothing), hence ``acks_late``."""
    report = catalog_import_prices(json.loads(Path(path).read_text()))
    return {
        "updated": report.updated,
        "unchanged": report.unchanged,
        "skipped": [s[0] for s in report.skipped],
    }
