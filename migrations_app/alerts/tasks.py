"""Alert tasks: deliver one outbox row (and come back after the backoff), and the sweeper.

The outbox enqueues :func:`deliver_alert` after the causing transaction commits."""

from __future__ import annotations

from celery import shared_task

from migrations_app.alerts import delivery


@shared_task(name="turnout.deliver_alert", acks_late=True, soft_time_limit=30, time_limit=45)
def deliver_alert(delivery_id: int) -> str:
    """Deliver one outbox row; on a transient failure, come back after the backoff. Safe to
    run twice (a compare-and-set claim per attempt)."""
    attempted = delivery.alert_deliver(delivery_id=delivery_id)
    if attempted.outcome == "retry":
        deliver_alert.apply_async((delivery_id,), countdown=attempted.retry_in)
    return attempted.outcome


@shared_task(name="turnout.sweep_alerts", soft_time_limit=10, time_limit=14)
def sweep_alerts() -> int:
    """Deliver what is due but has no task on the way (lost enqueue, dead worker)."""
    due = delivery.alerts_due()
    for delivery_id in due:
        deliver_alert.delay(delivery_id)
    return len(due)
