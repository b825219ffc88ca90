"""The alert outbox: enqueue in the causing transaction; delivered after commit (``delivery``).

:func:`alert_enqueue` writes one :class:`AlertDelivery` row per enabled channel of the plan
inside the caller's transaction (a rolled-back plan and its page commit together or not at
all) and hands the rows to the ``turnout.deliver_alert`` task after commit. The same page
again (same channel, dedup key and event) within ``TURNOUT_ALERT_DEDUP_MINUTES`` is folded
into the open row (``repeats``), so a guardrail that warns every 15 s pages once.

Delivery (claims, attempts, retries) is ``delivery.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from migrations_app.alerts import AlertMessage
from migrations_app.alerts import tasks as alert_tasks
from migrations_app.models import (
    AlertChannel,
    AlertDelivery,
    DeliveryStatus,
    MigrationPlan,
)


def alert_enqueue(
    *,
    plan: MigrationPlan,
    message: AlertMessage,
    now: datetime | None = None,
    channels: Sequence[AlertChannel] | None = None,
) -> list[AlertDelivery]:
    """Queue ``message`` for each of the plan's enabled channels, or for ``channels`` when
    given (the admin's test of one channel, enabled or not: it is how one checks a channel
    before turning it on). Call inside the transaction of the action that causes the alert.
    Returns the new rows (repeats fold into open ones)."""
    now = now or timezone.now()
    window = timedelta(minutes=settings.TURNOUT_ALERT_DEDUP_MINUTES)
    created: list[AlertDelivery] = []
    if channels is None:
        channels = list(plan.alert_channels.filter(enabled=True).order_by("pk"))
    for channel in channels:
        repeated = AlertDelivery.objects.filter(
            channel=channel,
            dedup_key=message.dedup_key,
            event=message.event,
            created_at__gte=now - window,
        ).exclude(status=DeliveryStatus.FAILED)
        if repeated.update(repeats=F("repeats") + 1, last_seen_at=now):
            continue
        created.append(
            AlertDelivery.objects.create(
                plan=plan,
                channel=channel,
                event=message.event,
                severity=message.severity,
                dedup_key=message.dedup_key,
                message=message.to_dict(),
                next_attempt_at=now,
                last_seen_at=now,
                created_at=now,
            )
        )
    if created:
        ids = [row.pk for row in created]
        # robust: the action has committed; a broker that fails now (down, or hung past its
        # timeouts) must not fail it. The rows are pending, and sweep_alerts delivers them.
        transaction.on_commit(
            lambda: [alert_tasks.deliver_alert.delay(pk) for pk in ids], robust=True
        )
    return created
