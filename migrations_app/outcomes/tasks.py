"""Outcome tasks: the retention purge (and of metric values whose outcome never came), the
sweeper of feedback and metric values held while their outcome was already stored, and the
fold of pending rows traffic left behind."""

from __future__ import annotations

from celery import shared_task

from migrations_app.outcomes import feedback, metric_values
from migrations_app.outcomes.retention import outcomes_purge
from migrations_app.outcomes.segment_rollup import catch_up


@shared_task(name="turnout.purge_outcomes", soft_time_limit=600, time_limit=660)
def purge_outcomes() -> int:
    """Delete raw outcomes, feedback and metric values past the retention period (aggregates
    stay), and metric values held longer than ``metric_values.HELD_HOURS`` for an outcome
    that never came."""
    return outcomes_purge() + metric_values.purge_held_metric_values()


@shared_task(name="turnout.apply_held_feedback", soft_time_limit=50, time_limit=60)
def apply_held_feedback() -> int:
    """Count feedback and metric values whose outcome arrived in a transaction that crossed
    their own. Safe to run twice at once: each row is locked and applied once."""
    return feedback.apply_held_feedback() + metric_values.apply_held_metric_values()


@shared_task(name="turnout.fold_pending", soft_time_limit=50, time_limit=60)
def fold_pending() -> bool:
    """Fold the pending rows no ingest and no read has folded yet (segment_rollup.catch_up):
    the last second of a burst's batches waits for the next ingest or read otherwise, and a
    plan the engine no longer evaluates has no reads. Never waits for a fold another holds."""
    return catch_up(wait=False)
