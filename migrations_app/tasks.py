"""Celery tasks: interfaces, not logic. Each takes JSON-safe arguments and calls one service.

Task names are explicit (``turnout.<verb>``) so a rename of a module never strands queued work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from celery import shared_task
from django.conf import settings

from migrations_app import engine, ingest, shadow
from migrations_app.alerts import outbox
from migrations_app.catalog import catalog_import_prices


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


@shared_task(name="turnout.purge_outcomes", soft_time_limit=600, time_limit=660)
def purge_outcomes() -> int:
    """Delete raw outcomes and feedback past the retention period (aggregates stay)."""
    return ingest.outcomes_purge()


@shared_task(name="turnout.apply_held_feedback", soft_time_limit=50, time_limit=60)
def apply_held_feedback() -> int:
    """Count feedback whose outcome arrived in a transaction that crossed its own. Safe to
    run twice at once: each feedback row is locked and applied once."""
    return ingest.apply_held_feedback()


@shared_task(name="turnout.evaluate_plans", soft_time_limit=30, time_limit=45)
def evaluate_plans() -> int:
    """The engine's beat: one evaluation task per running plan, and one recovery check per
    rolled-back plan still watched. Each expires after one period,
    so a stalled worker never works through a backlog of stale evaluations."""
    interval = settings.TURNOUT_EVALUATION_INTERVAL
    ids = engine.running_plan_ids()
    for plan_id in ids:
        evaluate_plan.apply_async((plan_id,), expires=interval)
    recovering = engine.recovering_plan_ids()
    for plan_id in recovering:
        watch_recovery.apply_async((plan_id,), expires=interval)
    return len(ids) + len(recovering)


@shared_task(name="turnout.evaluate_plan", soft_time_limit=30, time_limit=45)
def evaluate_plan(plan_id: int) -> dict[str, object]:
    """Evaluate one plan and act. Safe to run twice at once (a row lock; the second skips)."""
    result = engine.plan_evaluate(plan_id=plan_id)
    return {
        "plan": result.plan_key,
        "action": result.action,
        "acted": result.acted,
        "evaluation": result.evaluation_id,
        "skipped": result.skipped,
    }


@shared_task(name="turnout.watch_recovery", soft_time_limit=30, time_limit=45)
def watch_recovery(plan_id: int) -> str:
    """After a rollback: resolve when control is back to baseline, escalate when it is not."""
    return engine.plan_watch_recovery(plan_id=plan_id)


def enqueue_shadow_samples(sample_ids: list[str]) -> None:
    """One task per ``TURNOUT_SHADOW_CONCURRENCY`` samples: a task starts every call it claims
    at once, so each sample's lease runs from about when its call starts, and a task's work
    fits its time limit whatever the size of the batch that brought the samples."""
    size = settings.TURNOUT_SHADOW_CONCURRENCY
    for start in range(0, len(sample_ids), size):
        run_shadow_samples.delay(sample_ids[start : start + size])


@shared_task(name="turnout.run_shadow_samples", acks_late=True, soft_time_limit=150, time_limit=180)
def run_shadow_samples(sample_ids: list[str]) -> dict[str, int]:
    """Call the candidate for these samples (many at once), compare, aggregate. Safe to run
    twice and after a crash (claims with leases; see shadow.py), hence ``acks_late``."""
    return shadow.shadow_run(sample_ids, call=shadow.provider_call, compare=shadow.compare_answers)


@shared_task(name="turnout.sweep_shadow", soft_time_limit=50, time_limit=60)
def sweep_shadow() -> int:
    """Re-enqueue samples whose task was lost or whose worker died."""
    ids = shadow.shadow_sweep()
    enqueue_shadow_samples(ids)
    return len(ids)


@shared_task(name="turnout.purge_shadow", soft_time_limit=600, time_limit=660)
def purge_shadow() -> int:
    """Delete shadow samples past their plan's retention."""
    return shadow.shadow_purge()


@shared_task(name="turnout.deliver_alert", acks_late=True, soft_time_limit=30, time_limit=45)
def deliver_alert(delivery_id: int) -> str:
    """Deliver one outbox row; on a transient failure, come back after the backoff. Safe to
    run twice (a compare-and-set claim per attempt)."""
    attempted = outbox.alert_deliver(delivery_id=delivery_id)
    if attempted.outcome == "retry":
        deliver_alert.apply_async((delivery_id,), countdown=attempted.retry_in)
    return attempted.outcome


@shared_task(name="turnout.sweep_alerts", soft_time_limit=10, time_limit=14)
def sweep_alerts() -> int:
    """Deliver what is due but has no task on the way (lost enqueue, dead worker)."""
    due = outbox.alerts_due()
    for delivery_id in due:
        deliver_alert.delay(delivery_id)
    return len(due)
