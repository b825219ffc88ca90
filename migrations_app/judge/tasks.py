"""The pointwise judge's tasks: score a batch of samples, sweep up lost ones, purge old ones.

The samples' ingest (``judge.samples``) enqueues through :func:`enqueue_judge_samples` after its
commit."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from migrations_app.judge import pointwise


def enqueue_judge_samples(sample_ids: list[str]) -> None:
    """One task per ``TURNOUT_SHADOW_CONCURRENCY`` samples (each task makes its calls at once)."""
    size = settings.TURNOUT_SHADOW_CONCURRENCY
    for start in range(0, len(sample_ids), size):
        run_judge_samples.delay(sample_ids[start : start + size])


@shared_task(name="turnout.run_judge_samples", acks_late=True, soft_time_limit=150, time_limit=180)
def run_judge_samples(sample_ids: list[str]) -> dict[str, int]:
    """Score these answers on the plan's rubric and aggregate. Safe to run twice and after a
    crash (claims with leases), hence ``acks_late``."""
    return pointwise.judge_run(sample_ids)


@shared_task(name="turnout.sweep_judge_samples", soft_time_limit=50, time_limit=60)
def sweep_judge_samples() -> int:
    """Re-enqueue samples whose task was lost or whose worker died."""
    ids = pointwise.judge_sweep()
    enqueue_judge_samples(ids)
    return len(ids)


@shared_task(name="turnout.purge_judge_samples", soft_time_limit=600, time_limit=660)
def purge_judge_samples() -> int:
    """Delete judge samples past their plan's retention."""
    return pointwise.judge_purge()
