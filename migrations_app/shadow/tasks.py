"""Shadow tasks: run the pipeline for a batch of samples, sweep up lost ones, purge old ones.

The samples' ingest enqueues through :func:`enqueue_shadow_samples` after its commit."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from migrations_app.shadow import calls, claims, judge, pipeline
from migrations_app.shadow.retention import shadow_purge


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
    twice and after a crash (claims with leases; see pipeline.py), hence ``acks_late``."""
    return pipeline.shadow_run(sample_ids, call=calls.provider_call, compare=judge.compare_answers)


@shared_task(name="turnout.sweep_shadow", soft_time_limit=50, time_limit=60)
def sweep_shadow() -> int:
    """Re-enqueue samples whose task was lost or whose worker died."""
    ids = claims.shadow_sweep()
    enqueue_shadow_samples(ids)
    return len(ids)


@shared_task(name="turnout.purge_shadow", soft_time_limit=600, time_limit=660)
def purge_shadow() -> int:
    """Delete shadow samples past their plan's retention."""
    return shadow_purge()
