"""Delivering the alert outbox, exactly once.

:func:`alert_deliver` claims a due row with a compare-and-set on its status and attempt
count, so two workers (a retry and the sweeper) never send it twice at once; records every
attempt with the receiver's status code and latency; retries transient failures with
exponential backoff (or the receiver's ``Retry-After``) up to ``TURNOUT_ALERT_MAX_ATTEMPTS``;
then marks the row failed. Each row is delivered by its own task: a dead receiver delays
only its own channel. :func:`alerts_due` finds what the sweeper must hand on.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from migrations_app import secret_policy
from migrations_app.alerts import AlertMessage, DeliveryError, Target, get_channel, resolve_target
from migrations_app.models import (
    AlertAttempt,
    AlertChannel,
    AlertDelivery,
    DeliveryStatus,
)
from migrations_app.outcomes import metrics

log = logging.getLogger(__name__)

# How long a claimed attempt may take before the sweeper may try again (a worker died).
CLAIM_LEASE = timedelta(seconds=60)


MAX_BACKOFF_S = 300.0


@dataclass(frozen=True, slots=True)
class Attempted:
    """What one delivery attempt came to: ``delivered``, ``retry`` (in ``retry_in`` seconds),
    ``failed``, or ``not_due`` (someone else holds it, or it is done)."""

    outcome: str
    retry_in: float = 0.0


def _backoff(attempts: int) -> float:
    return min(MAX_BACKOFF_S, 2.0 ** (attempts - 1)) * random.uniform(0.75, 1.0)


def channel_target(channel: AlertChannel) -> Target:
    """The channel's destination from the environment. A channel naming a variable the secret
    policy refuses (saved before the rule, or before it was narrowed) fails for good, and its
    variables are never read."""
    if problems := secret_policy.channel_problems(
        url_env=channel.url_env, secret_env=channel.secret_env
    ):
        raise DeliveryError(
            f"channel {channel.name} names variables it may not: {secret_policy.summary(problems)}",
            transient=False,
        )
    return resolve_target(
        url_env=channel.url_env, secret_env=channel.secret_env, recipients=channel.recipients
    )


def alert_deliver(*, delivery_id: int, now: datetime | None = None) -> Attempted:
    """Try to deliver one outbox row now (see the module docstring)."""
    now = now or timezone.now()
    row = AlertDelivery.objects.select_related("channel").filter(pk=delivery_id).first()
    if row is None or row.status != DeliveryStatus.PENDING:
        return Attempted("not_due")
    # A row never tried is due whatever its timestamp says: it was stamped by the clock of
    # the process that enqueued it, and a worker whose clock is behind would otherwise leave
    # the page to the sweeper. The claim below still lets only one task have it. Once tried,
    # next_attempt_at is the backoff or the lease of an attempt in flight: respect it.
    if row.attempts and row.next_attempt_at > now:
        return Attempted("not_due")
    claimed = AlertDelivery.objects.filter(
        pk=row.pk, status=DeliveryStatus.PENDING, attempts=row.attempts
    ).update(attempts=row.attempts + 1, next_attempt_at=now + CLAIM_LEASE)
    if not claimed:
        return Attempted("not_due")
    attempts = row.attempts + 1
    channel = row.channel
    started = time.perf_counter()
    error: DeliveryError | None = None
    status_code: int | None = None
    try:
        target = channel_target(channel)
        result = get_channel(channel.kind).deliver(
            AlertMessage.from_dict(row.message), target, now=now
        )
        status_code = result.status_code
    except DeliveryError as exc:
        error, status_code = exc, exc.status_code
    latency_ms = (time.perf_counter() - started) * 1000.0
    done_at = timezone.now()
    with transaction.atomic():
        AlertAttempt.objects.create(
            delivery=row,
            at=done_at,
            ok=error is None,
            status_code=status_code,
            latency_ms=latency_ms,
            error=error.message[:500] if error else "",
        )
        mine = AlertDelivery.objects.filter(
            pk=row.pk, status=DeliveryStatus.PENDING, attempts=attempts
        )
        if error is None:
            mine.update(status=DeliveryStatus.DELIVERED, delivered_at=done_at, last_error="")
            outcome = Attempted("delivered")
        elif error.transient and attempts < settings.TURNOUT_ALERT_MAX_ATTEMPTS:
            delay = max(error.retry_after_s or 0.0, _backoff(attempts))
            mine.update(
                next_attempt_at=done_at + timedelta(seconds=delay), last_error=error.message[:500]
            )
            outcome = Attempted("retry", delay)
        else:
            mine.update(status=DeliveryStatus.FAILED, last_error=error.message[:500])
            log.warning("alert %s to %s failed: %s", row.pk, channel.name, error.message)
            outcome = Attempted("failed")
    metrics.incr({f"turnout_alert_deliveries|{channel.kind}|{outcome.outcome}": 1})
    return outcome


def alerts_due(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    """Pending rows whose attempt is due: a lost task, a retry whose task was lost, or a
    worker that died mid-attempt (its claim lease expired)."""
    now = now or timezone.now()
    return list(
        AlertDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
