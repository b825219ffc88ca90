"""Claims and leases: a worker claims a sample by moving it from pending to running with a lease
(compare-and-set), and ends its claim by moving it on from running only while that claim is
still the current one. A worker killed mid-call leaves a running sample whose lease expires;
the sweeper hands it to another worker, and the dead worker's result matches no row. A sample
whose attempts go wrong too often is marked failed instead of being retried and paid forever.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from migrations_app.models import (
    JudgeSample,
    MigrationPlan,
    ShadowSample,
    ShadowStatus,
)
from migrations_app.outcomes.store import fast_path, pg_cursor
from migrations_app.shadow.budget import estimate_cost, note_budget_reached, spent_today
from migrations_app.shadow.judge_budget import JudgeAllowance, day_of, estimate_judge_cost

#: Attempts of one sample that may go wrong (its call raised, its answer could not be stored,
#: its worker died mid-call) before it is marked failed: a sample that breaks its worker must
#: not be retried, and its batch's calls paid for, at every sweep.
MAX_FAILURES = 3


def claimable_at(now: datetime) -> Q:
    """A sample a worker may claim at ``now``: pending, or running with its lease expired.
    (Shadow samples and the pointwise judge's alike.)"""
    return Q(status=ShadowStatus.PENDING) | Q(status=ShadowStatus.RUNNING, lease_until__lt=now)


def lost(model: type[ShadowSample] | type[JudgeSample], *, now: datetime, limit: int) -> list[str]:
    """Samples of ``model`` whose task was lost (pending for longer than a lease: a worker
    killed with tasks it had fetched but not started) or whose worker died mid-call (lease
    expired): their ids, oldest first, to process again. Enqueuing a sample twice is harmless
    (claims decide)."""
    lease = timedelta(seconds=settings.TURNOUT_SHADOW_LEASE_SECONDS)
    return list(
        model.objects.filter(
            Q(status=ShadowStatus.PENDING, created_at__lt=now - lease)
            | Q(status=ShadowStatus.RUNNING, lease_until__lt=now)
        )
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )


class PlanClaims(Protocol):
    """One kind of sample's budget while a claim holds its plan's lock."""

    def admit(self, sample: Any) -> dict[str, Any] | str:
        """The fields that reserve the sample's call (stored with its lease), or why the
        sample is skipped."""

    def claimed(self, sample: Any) -> None:
        """Called for each sample this claim won."""

    def close(self) -> None:
        """Called before the plan's transaction ends."""


def claim_samples(
    model: type[ShadowSample] | type[JudgeSample],
    sample_ids: Sequence[str],
    *,
    now: datetime,
    related: Sequence[str],
    open_plan: Callable[[MigrationPlan], PlanClaims | str],
    dropped: Mapping[str, Any],
) -> list[Any]:
    """Claim what can be processed now, plan by plan: pending samples, and running ones whose
    lease has expired. ``open_plan`` gives the plan's budget (or why all its samples are
    skipped); a sample whose attempts went wrong :data:`MAX_FAILURES` times is failed, with
    ``dropped`` (its reservation) cleared. Shadow samples and the pointwise judge's alike."""
    claimable = claimable_at(now)
    claimed: list[Any] = []
    by_plan: dict[int, list[str]] = {}
    for pk, plan_id in model.objects.filter(claimable, pk__in=sample_ids).values_list(
        "pk", "plan_id"
    ):
        by_plan.setdefault(plan_id, []).append(pk)
    for plan_id, ids in sorted(by_plan.items()):
        with transaction.atomic():
            # Serialises claims of one plan: the budget check and reservation below see
            # every other worker's reservations.
            plan = (
                MigrationPlan.objects.select_for_update(of=("self",))
                .select_related(*related)
                .filter(pk=plan_id)
                .first()
            )
            if plan is None:  # deleted since the samples were listed (they went with it)
                continue
            budget = open_plan(plan)
            if isinstance(budget, str):
                model.objects.filter(claimable, pk__in=ids).update(
                    status=ShadowStatus.SKIPPED, skip_reason=budget, lease_until=None
                )
                continue
            # Locked in key order (the deadlock rule), then claimed in one statement: read
            # and claimed under the lock, a sample cannot move in between.
            lease = now + timedelta(seconds=settings.TURNOUT_SHADOW_LEASE_SECONDS)
            wanted: list[tuple[Any, int, dict[str, Any]]] = []
            samples = model.objects.filter(claimable, pk__in=ids).select_for_update(of=("self",))
            for sample in samples.order_by("pk"):
                # Running and claimable: its lease expired, its worker died mid-call.
                failures = sample.failures + (sample.status == ShadowStatus.RUNNING)
                if failures >= MAX_FAILURES:
                    model.objects.filter(claimable, pk=sample.pk, attempts=sample.attempts).update(
                        status=ShadowStatus.FAILED,
                        failures=failures,
                        skip_reason=f"{failures} attempts went wrong; the last one's worker "
                        "stopped mid-call",
                        lease_until=None,
                        **dropped,
                    )
                    continue
                reservation = budget.admit(sample)
                if isinstance(reservation, str):
                    model.objects.filter(pk=sample.pk).update(
                        status=ShadowStatus.SKIPPED, skip_reason=reservation, lease_until=None
                    )
                    continue
                wanted.append((sample, failures, reservation))
            won = claim_many(model, wanted, claimable=claimable, now=now, lease_until=lease)
            for sample, failures, reservation in wanted:
                if sample.pk in won:
                    sample.status, sample.attempts, sample.failures, sample.lease_until = (
                        ShadowStatus.RUNNING,
                        sample.attempts + 1,
                        failures,
                        lease,
                    )
                    for name, value in reservation.items():
                        setattr(sample, name, value)
                    sample.plan = plan
                    budget.claimed(sample)
                    claimed.append(sample)
            budget.close()
    return claimed


def claim_many(
    model: Any,
    wanted: Sequence[tuple[Any, int, dict[str, Any]]],
    *,
    claimable: Q,
    now: datetime,
    lease_until: datetime,
) -> set[Any]:
    """Claim each ``(row, failures, reservation)`` of ``model`` (a shadow or judge sample, a
    replay call: the same status, attempts, failures and lease columns): compare-and-set on
    its ``attempts``, still claimable at ``now``. The keys won. One UPDATE on PostgreSQL when
    the reservations name the same fields (a batch's 64 UPDATEs were the largest part of a
    worker's own CPU beside the vendor SDK's), one per row elsewhere. The caller holds the
    row locks, taken in key order."""
    fields = {tuple(reservation) for _, _, reservation in wanted}
    if not wanted:
        return set()
    if not fast_path() or len(fields) != 1:
        won = set()
        for sample, failures, reservation in wanted:
            if model.objects.filter(claimable, pk=sample.pk, attempts=sample.attempts).update(
                status=ShadowStatus.RUNNING,
                attempts=sample.attempts + 1,
                failures=failures,
                lease_until=lease_until,
                **reservation,
            ):
                won.add(sample.pk)
        return won
    (names,) = fields
    qn = connection.ops.quote_name
    meta = model._meta
    pk: Any = meta.pk
    table, key = qn(meta.db_table), qn(pk.column)
    columns: list[Any] = [meta.get_field(name) for name in names]
    sets = "".join(f", {qn(c.column)} = v.c{i}" for i, c in enumerate(columns))
    unpack = "".join(
        f", (r->>{i + 3})::{c.db_type(connection)} AS c{i}" for i, c in enumerate(columns)
    )
    rows = [
        [sample.pk, sample.attempts, failures, *reservation.values()]
        for sample, failures, reservation in wanted
    ]
    with pg_cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS t SET status = %s, attempts = t.attempts + 1, "
            f"failures = v.failures, lease_until = %s{sets} "
            f"FROM (SELECT (r->>0)::{pk.db_type(connection)} AS key, (r->>1)::int AS attempts, "
            "(r->>2)::int AS failures"
            f"{unpack} FROM jsonb_array_elements(%s::jsonb) AS r) AS v "
            f"WHERE t.{key} = v.key AND t.attempts = v.attempts "
            "AND (t.status = %s OR (t.status = %s AND t.lease_until < %s)) "
            f"RETURNING t.{key}",
            [
                ShadowStatus.RUNNING,
                lease_until,
                orjson.dumps(rows).decode(),
                ShadowStatus.PENDING,
                ShadowStatus.RUNNING,
                now,
            ],
        )
        return {row[0] for row in cursor.fetchall()}


def end_claim(model: type[ShadowSample] | type[JudgeSample], sample: Any, **fields: Any) -> bool:
    """Move a claimed sample on from running if this claim is still the current one
    (compare-and-set on the attempt)."""
    return bool(
        model.objects.filter(
            pk=sample.pk, status=ShadowStatus.RUNNING, attempts=sample.attempts
        ).update(lease_until=None, **fields)
    )


class _ShadowBudget:
    """The plan's daily shadow budget, and its judge's for the pairs (when it has a judge)."""

    def __init__(self, plan: MigrationPlan, now: datetime) -> None:
        self.plan, self.now = plan, now
        self.spent = spent_today(plan, now)
        self.budget = plan.shadow_budget_usd_per_day
        self.judge = JudgeAllowance(plan, now) if plan.judge_model is not None else None

    def admit(self, sample: ShadowSample) -> dict[str, Any] | str:
        estimate = estimate_cost(self.plan.candidate_model, sample)
        if self.budget is not None and self.spent + (estimate or 0.0) > float(self.budget):
            note_budget_reached(self.plan, float(self.budget), self.spent, self.now)
            return f"daily shadow budget of ${self.budget} reached"
        self.spent += estimate or 0.0
        return {"candidate_cost_usd": estimate}  # the reservation, until the real cost

    def claimed(self, sample: ShadowSample) -> None:
        if self.judge is not None:
            _reserve_judge(sample, self.judge, self.now)

    def close(self) -> None:
        if self.judge is not None:
            self.judge.save()


def shadow_claim(sample_ids: Sequence[str], *, now: datetime | None = None) -> list[ShadowSample]:
    """Claim what can be processed now (:func:`claim_samples`), within a plan's daily
    budget; samples beyond it are skipped and the plan's audit trail says so (once a day)."""
    now = now or timezone.now()
    return claim_samples(
        ShadowSample,
        sample_ids,
        now=now,
        related=("candidate_model__provider", "judge_model__provider"),
        open_plan=lambda plan: _ShadowBudget(plan, now),
        dropped={"candidate_cost_usd": None},
    )


def _reserve_judge(sample: ShadowSample, judge: JudgeAllowance, now: datetime) -> None:
    """Book the judge's call for a claimed pair within the judge's own daily budget. The
    sample carries the outcome to the pipeline (no database there): ``judge_reserved`` the
    reservation (settled at completion), None when the budget had no room (the pair then
    gets no verdict, counted in neither direction). A pair whose control failed is never
    judged, so it reserves nothing."""
    sample.judge_day = day_of(now)  # type: ignore[attr-defined]
    if sample.control.get("error"):
        sample.judge_reserved = 0.0  # type: ignore[attr-defined]
        return
    text = sample.control.get("text", "")
    # The candidate's answer is not known yet: control's stands in for its length.
    estimate = estimate_judge_cost(
        sample.plan.judge_model, sample.request.get("messages", []), [text, text]
    )
    sample.judge_reserved = estimate if judge.reserve(estimate) else None  # type: ignore[attr-defined]


def _end_claim(sample: ShadowSample, **fields: Any) -> bool:
    """Move a claimed sample on from running, its reservation dropped, if this claim is still
    the current one."""
    return end_claim(ShadowSample, sample, candidate_cost_usd=None, **fields)


def shadow_release(sample: ShadowSample) -> bool:
    """Give a claimed sample back (pending) when its call was never made: it is processed
    again later, by this worker or another."""
    return _end_claim(sample, status=ShadowStatus.PENDING)


def shadow_skip(sample: ShadowSample, reason: str) -> bool:
    """A claimed sample that cannot be shadowed at all (the workers cannot call the
    candidate): stored as skipped with the reason, counted nowhere."""
    return _end_claim(sample, status=ShadowStatus.SKIPPED, skip_reason=reason[:200])


def shadow_fail(sample: ShadowSample, reason: str) -> bool:
    """A claimed sample that will never be processed (its own request is at fault): stored
    as failed with the reason, counted nowhere, never retried."""
    return _end_claim(sample, status=ShadowStatus.FAILED, skip_reason=reason[:200])


def shadow_retry_later(sample: ShadowSample, reason: str) -> str:
    """A claimed sample whose attempt went wrong: given back for a later attempt, or failed
    with the reason once :data:`MAX_FAILURES` attempts have. Returns ``"released"``,
    ``"failed"`` or ``""`` (the claim was no longer current)."""
    failures = sample.failures + 1
    if failures >= MAX_FAILURES:
        reason = f"{failures} attempts went wrong; the last: {reason}"
        ended = _end_claim(
            sample, status=ShadowStatus.FAILED, failures=failures, skip_reason=reason[:200]
        )
        return "failed" if ended else ""
    ended = _end_claim(sample, status=ShadowStatus.PENDING, failures=failures)
    return "released" if ended else ""


def shadow_sweep(*, now: datetime | None = None, limit: int = 1000) -> list[str]:
    """The shadow samples to process again (:func:`lost`)."""
    return lost(ShadowSample, now=now or timezone.now(), limit=limit)
