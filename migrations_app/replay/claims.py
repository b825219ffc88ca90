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

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from migrations_app.models import (
    MigrationPlan,
    PlanStatus,
    ReplayCall,
    ReplayRun,
    ReplayStatus,
)
from migrations_app.models import ReplayCallStatus as C
from migrations_app.outcomes.store import fast_path, pg_cursor
from migrations_app.shadow.budget import estimate_cost
from migrations_app.shadow.claims import MAX_FAILURES, claim_many, claimable_at


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
            if run.plan.status != PlanStatus.RUNNING:  # paused: its calls wait with it
                continue
            budget = run.budget_usd
            so_far = spent(run) if budget is not None else 0.0
            # Locked in key order (the deadlock rule: cancel and the flush take them so too):
            # read and claimed under the lock, a call cannot move in between.
            calls = (
                ReplayCall.objects.filter(claimable, pk__in=ids)
                .select_related("item")
                .select_for_update(of=("self",))
                .order_by("pk")
            )
            wanted: list[tuple[ReplayCall, int, float]] = []
            for call in calls:
                # Running and claimable: its lease expired, its worker died mid-call.
                failures = call.failures + (call.status == C.RUNNING)
                if failures >= MAX_FAILURES:
                    _not_claimed(
                        call,
                        claimable,
                        failures=failures,
                        reason=f"{failures} attempts went wrong; the last one's worker stopped "
                        "mid-call",
                    )
                    continue
                estimate = _estimate(run, call)
                if budget is not None and so_far + estimate > budget:
                    _not_claimed(call, claimable, reason=f"replay budget of ${budget:g} reached")
                    continue
                so_far += estimate
                wanted.append((call, failures, estimate))
            won = claim_many(
                ReplayCall,
                [(call, failures, {"cost_usd": estimate}) for call, failures, estimate in wanted],
                claimable=claimable,
                now=now,
                lease_until=now + lease,
            )  # cost_usd: the reservation, until the real cost
            for call, failures, _ in wanted:
                if call.pk in won:
                    call.status, call.attempts, call.failures = (
                        C.RUNNING,
                        call.attempts + 1,
                        failures,
                    )
                    call.replay = run
                    claimed.append(call)
    return claimed


def _not_claimed(call: ReplayCall, claimable: Q, **fields: Any) -> None:
    """A claimable call that will not be evaluated (compare-and-set on its ``attempts``)."""
    ReplayCall.objects.filter(claimable, pk=call.pk, attempts=call.attempts).update(
        status=C.FAILED, lease_until=None, cost_usd=None, **fields
    )


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


@dataclass(frozen=True, slots=True)
class Answered:
    """A claimed call's result to store: its answers, values, the judge's verdict, the cost."""

    call: ReplayCall
    answer: dict[str, Any]
    values: dict[str, dict[str, float]]
    judge: dict[str, Any] | None
    cost_usd: float


def replay_complete_many(answered: Sequence[Answered], *, now: datetime) -> set[int]:
    """Store each call's answers under its claim (:func:`replay_complete` for each): the keys
    of the calls stored; the others' claims were no longer current. Call inside a transaction.

    The rows are locked first, in key order (the deadlock rule), then stored in one UPDATE
    on PostgreSQL (one per call was a tenth of a worker's CPU in bench_replay); one UPDATE
    per call elsewhere."""
    answered = sorted(answered, key=lambda a: a.call.pk)
    if not fast_path():
        return {
            a.call.pk
            for a in answered
            if replay_complete(
                a.call,
                now=now,
                answer=a.answer,
                values=a.values,
                judge=a.judge,
                cost_usd=a.cost_usd,
            )  # fmt: skip
        }
    if not answered:
        return set()
    qn = connection.ops.quote_name
    table = qn(ReplayCall._meta.db_table)
    values = qn("values")
    rows = [[a.call.pk, a.call.attempts, a.answer, a.values, a.judge, a.cost_usd] for a in answered]
    with pg_cursor() as cursor:
        # An UPDATE ... FROM locks its rows in the order of its join, not of the keys.
        cursor.execute(
            f"SELECT id FROM {table} WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            [[a.call.pk for a in answered]],
        )
        cursor.execute(
            f"UPDATE {table} AS t SET status = %s, completed_at = %s, lease_until = NULL, "
            f"answer = v.answer, {values} = v.vals, judge = v.judge, cost_usd = v.cost "
            "FROM (SELECT (r->>0)::bigint AS id, (r->>1)::int AS attempts, r->2 AS answer, "
            "r->3 AS vals, NULLIF(r->4, 'null'::jsonb) AS judge, (r->>5)::float8 AS cost "
            "FROM jsonb_array_elements(%s::jsonb) AS r) AS v "
            "WHERE t.id = v.id AND t.status = %s AND t.attempts = v.attempts RETURNING t.id",
            [C.DONE, now, orjson.dumps(rows, option=orjson.OPT_NON_STR_KEYS).decode(), C.RUNNING],
        )
        return {row[0] for row in cursor.fetchall()}


def lost(*, now: datetime, limit: int = 5000) -> dict[int, list[int]]:
    """Calls of running replays (of running plans: a paused plan's wait) to process again: pending for longer than a lease and not
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
        ReplayCall.objects.filter(
            due, replay__status=ReplayStatus.RUNNING, replay__plan__status=PlanStatus.RUNNING
        ).values_list("replay_id", "pk")[:limit]
    )
    ReplayCall.objects.filter(pk__in=[pk for _, pk in rows], status=C.PENDING).update(
        lease_until=now + lease
    )
    found: dict[int, list[int]] = {}
    for replay_id, pk in rows:
        found.setdefault(replay_id, []).append(pk)
    return found
