"""Retention: raw outcomes, feedback and metric values are deleted after ``TURNOUT_RAW_RETENTION_DAYS``; the
aggregates built from them stay.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from migrations_app.models import (
    Feedback,
    MetricValue,
    Outcome,
)


def outcomes_purge(*, now: datetime | None = None, batch: int = 10_000) -> int:
    """Delete raw outcomes and feedback older than the retention period, in batches (short
    transactions, no long lock). Aggregates are kept. Returns how many rows were deleted."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.TURNOUT_RAW_RETENTION_DAYS)
    deleted = 0
    for model in (Feedback, MetricValue, Outcome):
        while True:
            pks = list(model.objects.filter(ts__lt=cutoff).values_list("pk", flat=True)[:batch])
            if not pks:
                break
            deleted += model.objects.filter(pk__in=pks).delete()[0]
    return deleted
