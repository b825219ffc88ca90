"""Claims and leases of replay calls, the shadow pipeline's way (shadow/claims.py): a worker
claims a call by moving it from pending to running with a lease (compare-and-set on
``attempts``) and ends its claim only while that claim is still the current one. A worker
killed mid-call leaves a running call whose lease expires; the sweep hands it to another
worker, and the dead worker's late answer matches no row. A call whose attempts go wrong
:data:`~migrations_app.shadow.claims.MAX_FAILURES` times is "not evaluated", never counted.

The replay budget: claims of one replay are serialised by its row lock and reserve each
unit's estimated cost (shadow.budget.estimate_cost, candidate and fresh control), so
concurrent workers overshoot the budget by at most one unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from migrations_app.models import (
    MigrationPlan,
    ReplayCall,
    ReplayRun,
    ReplayStatus,
)
from migrations_app.models import ReplayCallStatus as C
from migrations_app.shadow.budget import estimate_cost
from migrations_app.shadow.claims import MAX_FAILURES, claimable_at


@dataclass(frozen=True, slots=True)
class Pair:
    """A dataset item's request as the shadow pipeline's functions read a sample (``plan``,
    ``request``, ``control``, ``pk``): the budget's estimate and the judge take it as is."""

    plan: MigrationPlan
    request: dict[str, Any]
    control: dict[str, Any]
    pk: str


def needs_control(run: ReplayRun, call: ReplayCall) -> bool:
    """Control is called too when the item holds no recorded answer, or the plan asks for a
    fresh baseline."""
    return run.fresh_baseline or call.item.control_answer is None


def _estimate(run: ReplayRun, call: ReplayCall) -> float:
    plan = run.plan
    pair = Pair(plan, call.item.request, {"text": call.item.control_answer or ""}, "")
    cost = estimate_cost(plan.candidate_model, pair)  # type: ignore[arg-type]
    if needs_control(run, call):
        cost += estimate_cost(plan.control_model, pair)  # type: ignore[arg-type]
    return cost


def spent(run: ReplayRun) -> float:
    """The replay's cost so far: done calls at their real cost, running ones at their
    reservation."""
    total = ReplayCall.objects.filter(Q(status=C.DONE) | Q(status=C.RUNNING), replay=run).aggregate(
        s=Sum("cost_usd")
    )["s"]
    return float(total or 0.0)


def replay_claim(call_ids: Sequence[int], *, now: datetime | None = None) -> list[ReplayCall]:
    """Claim what can be processed now: pending calls, and running ones whose lease expired,
    of replays still running; within the replay's budget (calls beyond it are not
    evaluated, with the reason)."""
    now = now or timezone.now()
    claimable = claimable_at(now)
    by_replay: dict[int, list[int]] = {}
    for pk, replay_id in ReplayCall.objects.filter(claimable, pk__in=call_ids).values_list(
        "pk", "replay_id"
    ):
        by_replay.setdefault(replay_id, []).append(pk)
    claimed: list[ReplayCall] = []
    lease = timedelta(seconds=settings.TURNOUT_SHADOW_LEASE_SECONDS)
    for replay_id, ids in sorted(by_replay.items()):
        with transaction.atomic():
            run = (
                ReplayRun.objects.select_for_update(of=("self",))
                .select_related(
                    "plan__candidate_model__provider",
                    "plan__control_model__provider",
                    "plan__judge_model__provider",
                )
                .filter(pk=replay_id, status=ReplayStatus.RUNNING)
                .first()
            )
            if run is None:  # decided or cancelled since the calls were listed
                continue
            budget = run.budget_usd
            so_far = spent(run) if budget is not None else 0.0
            calls = ReplayCall.objects.filter(claimable, pk__in=ids).select_related("item")
            for call in calls.order_by("pk"):
                # Running and claimable: its lease expired, its worker died mid-call.
                failures = call.failures + (call.status == C.RUNNING)
                current = ReplayCall.objects.filter(claimable, pk=call.pk, attempts=call.attempts)
                if failures >= MAX_FAILURES:
                    current.update(
                        status=C.FAILED,
                        failures=failures,
                        reason=f"{failures} attempts went wrong; the last one's worker stopped "
                        "mid-call",
                        lease_until=None,
                        cost_usd=None,
                    )
                    continue
                estimate = _estimate(run, call)
                if budget is not None and so_far + estimate > budget:
                    current.update(
                        status=C.FAILED,
                        reason=f"replay budget of ${budget:g} reached",
                        lease_until=None,
                        cost_usd=None,
                    )
                    continue
                so_far += estimate
                won = current.update(
                    status=C.RUNNING,
                    attempts=call.attempts + 1,
                    failures=failures,
                    lease_until=now + lease,
                    cost_usd=estimate,  # the reservation, until the real cost
                )
                if won:
                    call.status, call.attempts, call.failures = (
                        C.RUNNING,
                        call.attempts + 1,
                        failures,
                    )
                    call.replay = run
                    claimed.append(call)
    return claimed


def _end_claim(call: ReplayCall, **fields: Any) -> bool:
    """Move a claimed call on from running if this claim is still the current one."""
    return bool(
        ReplayCall.objects.filter(pk=call.pk, status=C.RUNNING, attempts=call.attempts).update(
            lease_until=None, **fields
        )
    )


def replay_release(call: ReplayCall) -> bool:
    """Give a claimed call back (pending) when it was never made (no provider slot free)."""
    return _end_claim(call, status=C.PENDING, cost_usd=None)


def replay_not_evaluated(call: ReplayCall, reason: str) -> bool:
    """A call that will not be evaluated (its request may not be sent, the provider cannot
    be reached at all): counted in no metric, its reason kept."""
    return _end_claim(call, status=C.FAILED, reason=reason[:200], cost_usd=None)


def replay_retry_later(call: ReplayCall, reason: str) -> str:
    """An attempt that went wrong (a provider outage): back to pending for a later attempt,
    or not evaluated once :data:`MAX_FAILURES` attempts have. Returns ``"released"``,
    ``"failed"`` or ``""`` (the claim was no longer current)."""
    failures = call.failures + 1
    if failures >= MAX_FAILURES:
        reason = f"{failures} attempts went wrong; the last: {reason}"
        ended = _end_claim(
            call, status=C.FAILED, failures=failures, reason=reason[:200], cost_usd=None
        )
        return "failed" if ended else ""
    ended = _end_claim(call, status=C.PENDING, failures=failures, cost_usd=None)
    return "released" if ended else ""


def handed_back(call_ids: Sequence[int]) -> list[int]:
    """Of ``call_ids``, those back to pending (never made: no provider slot; or an outage's
    attempt, to be made again): their task queues them again shortly rather than leaving them
    to the sweep, which takes a pending call on only a lease later."""
    return list(
        ReplayCall.objects.filter(pk__in=call_ids, status=C.PENDING)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def replay_complete(call: ReplayCall, *, now: datetime, **fields: Any) -> bool:
    """Store a call's answers and values, if its claim is still current."""
    return _end_claim(call, status=C.DONE, completed_at=now, **fields)


def lost(*, now: datetime, limit: int = 5000) -> dict[int, list[int]]:
    """Calls of running replays to process again: pending for longer than a lease and not
    handed out again within one (their task was lost, or an outage put them back), or
    running with an expired lease (their worker died). Marks the pending ones handed out
    (``lease_until`` on a pending call: not before then again), so a sweep every few seconds
    does not queue the same call over and over while the workers have it in their queue.
    Enqueuing one twice is harmless all the same: claims decide."""
    lease = timedelta(seconds=settings.TURNOUT_SHADOW_LEASE_SECONDS)
    due = Q(
        Q(lease_until__isnull=True) | Q(lease_until__lt=now),
        status=C.PENDING,
        created_at__lt=now - lease,
    ) | Q(status=C.RUNNING, lease_until__lt=now)
    rows = list(
        ReplayCall.objects.filter(due, replay__status=ReplayStatus.RUNNING).values_list(
            "replay_id", "pk"
        )[:limit]
    )
    ReplayCall.objects.filter(pk__in=[pk for _, pk in rows], status=C.PENDING).update(
        lease_until=now + lease
    )
    found: dict[int, list[int]] = {}
    for replay_id, pk in rows:
        found.setdefault(replay_id, []).append(pk)
    return found
