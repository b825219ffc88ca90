"""Shadow retention: samples hold prompts and answers; each plan says how long they are kept."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from migrations_app.models import (
    MigrationPlan,
    ShadowSample,
)


def shadow_purge(*, now: datetime | None = None) -> int:
    """Delete samples past their plan's retention (prompts and answers are sensitive)."""
    now = now or timezone.now()
    deleted = 0
    for plan_id, days in MigrationPlan.objects.values_list("pk", "shadow_retention_days"):
        deleted += ShadowSample.objects.filter(
            plan_id=plan_id, created_at__lt=now - timedelta(days=days)
        ).delete()[0]
    return deleted
