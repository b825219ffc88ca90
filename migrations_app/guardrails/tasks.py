"""The engine's tasks: the beat's fan-out over running plans, one evaluation, one recovery check."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from migrations_app.guardrails import engine


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
