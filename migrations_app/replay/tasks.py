"""Replay tasks: run a batch of calls, and the sweep (start replays of plans at their replay
stage, re-enqueue lost calls, decide replays whose calls are all in)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from migrations_app.replay import claims, decide, pipeline, services
from migrations_app.shadow import calls, judge

# A call handed back (an outage's attempt, no provider slot free) is tried again this much
# later: an outage reads "not evaluated" after MAX_FAILURES attempts in seconds, not leases.
RETRY_AFTER_SECONDS = 5


def enqueue_calls(call_ids: list[int], *, countdown: float | None = None) -> None:
    """One task per ``TURNOUT_SHADOW_CONCURRENCY`` calls (a task starts every call it claims
    at once, so each lease runs from about when its call starts)."""
    size = settings.TURNOUT_SHADOW_CONCURRENCY
    for start in range(0, len(call_ids), size):
        run_replay_calls.apply_async((call_ids[start : start + size],), countdown=countdown)


@shared_task(name="turnout.run_replay_calls", acks_late=True, soft_time_limit=150, time_limit=180)
def run_replay_calls(call_ids: list[int]) -> dict[str, int]:
    """Call control (when needed) and the candidate for these calls, score, store; then
    decide the replay if these were its last. Safe to run twice and after a crash (claims
    with leases), hence ``acks_late``."""
    counts = pipeline.replay_run_calls(call_ids, call_arm=calls.arm_call, judge=judge.judge_pair)
    if counts["released"]:
        enqueue_calls(claims.handed_back(call_ids), countdown=RETRY_AFTER_SECONDS)
    for replay_id in decide.replays_of(call_ids):
        decide.replay_decide(replay_id=replay_id)
    return counts


@shared_task(name="turnout.sweep_replays", soft_time_limit=50, time_limit=60)
def sweep_replays() -> dict[str, int]:
    """Start, resume and decide replays, re-enqueue lost calls (services.replay_sweep)."""
    counts, ids = services.replay_sweep()
    enqueue_calls(ids)
    return counts
