"""Dataset retention: a set made from shadow samples holds their prompts and answers, so it
expires as they do (the plan's shadow retention, counted from the set's making) unless an
operator pinned it. A set a replay still uses is kept until it no longer does."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import ProtectedError, RestrictedError
from django.utils import timezone

from migrations_app.datasets import selectors
from migrations_app.models import Dataset


def dataset_purge(*, now: datetime | None = None) -> int:
    """Delete the sets past their expiry that no replay uses; the number deleted."""
    now = now or timezone.now()
    expired = list(Dataset.objects.filter(expires_at__lt=now).values_list("pk", flat=True))
    used = selectors.in_use_ids(expired)
    deleted = 0
    for pk in expired:
        if pk in used:
            continue
        try:
            with transaction.atomic():
                # Re-read under the condition: a pin since the list was read keeps the set.
                deleted += bool(Dataset.objects.filter(pk=pk, expires_at__lt=now).delete()[0])
        except (ProtectedError, RestrictedError):
            continue  # a replay's row refers to it
    return deleted
