"""Deciding a replay whose calls are all in: each item's sums and the summary stored, the
outcome set by compare-and-set, and the plan acted on through ``plans.lifecycle`` as the
rollback engine: a pass advances it to its next phase (shadow); a fail stops it (a rollback
of a run no user saw the candidate in, with the evidence and a page) or waits for a person,
as the phase says; a replay that could not tell (inconclusive, or not evaluated after an
outage) never passes on its own: it waits for a person, who advances or rolls back.

The status change (running -> the outcome) and the lifecycle action share one transaction
under the replay's row lock, so two workers finishing the last calls at once decide once.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Count, Sum
from django.utils import timezone

from migrations_app.errors import IllegalTransition
from migrations_app.guardrails.engine import _page as engine_page
from migrations_app.models import (
    MigrationPlan,
    PlanStatus,
    ReplayCall,
    ReplayItem,
    ReplayRun,
    ReplayStatus,
)
from migrations_app.models import ReplayCallStatus as C
from migrations_app.plans import lifecycle
from migrations_app.replay import evidence
from migrations_app.replay.metrics import gates_of

log = logging.getLogger(__name__)

#: Item rows inserted per statement.
INSERT_BATCH = 2000


def replays_of(call_ids: list[int]) -> list[int]:
    """The replays these calls belong to."""
    return sorted(
        set(ReplayCall.objects.filter(pk__in=call_ids).values_list("replay_id", flat=True))
    )


def _outstanding(run: ReplayRun) -> bool:
    return ReplayCall.objects.filter(replay=run, status__in=(C.PENDING, C.RUNNING)).exists()


def replay_decide(*, replay_id: int, now: datetime | None = None) -> str:
    """Decide a replay whose calls are all in: store each item's sums and the summary, set
    the outcome, and act on the plan. Returns the outcome, or "" when there is nothing to
    decide yet (calls outstanding, decided already, cancelled)."""
    now = now or timezone.now()
    with transaction.atomic():
        run = (
            ReplayRun.objects.select_for_update(of=("self",))
            .select_related("plan", "dataset")
            .filter(pk=replay_id, status=ReplayStatus.RUNNING)
            .first()
        )
        if run is None or _outstanding(run):
            return ""
        # The plan's row too, so a pause cannot land between this read and the action: a
        # replay whose plan a person paused at its stage waits with it (decided once it runs
        # again), where "moved on" would leave the resumed plan with no replay to run.
        plan = MigrationPlan.objects.select_for_update(of=("self",)).get(pk=run.plan_id)
        if plan.status == PlanStatus.PAUSED and plan.current_stage_id == run.stage_id:
            return ""
        gates = gates_of({"gates": run.gates})
        rows = _item_rows(run, gates)
        summary = evidence.summarize(list(rows.values()), gates, run.items)
        summary.update(_costs(run, now))
        ReplayItem.objects.bulk_create(
            (
                ReplayItem(
                    replay=run, item_id=item_id, index=r.index, tags=r.tags,
                    evaluated=r.evaluated, sums=r.sums, diffs=r.diffs, worst=r.worst,
                    flipped=r.flipped,
                )
                for item_id, r in rows.items()
            ),
            batch_size=INSERT_BATCH,
            ignore_conflicts=True,
        )  # fmt: skip
        outcome = summary["outcome"]
        status = {
            "pass": ReplayStatus.PASSED,
            "fail": ReplayStatus.FAILED,
            "inconclusive": ReplayStatus.INCONCLUSIVE,
            "not_evaluated": ReplayStatus.NOT_EVALUATED,
        }[outcome]
        decision = _act(run, outcome, summary, now)
        ReplayRun.objects.filter(pk=run.pk, status=ReplayStatus.RUNNING).update(
            status=status, summary=summary, finished_at=now, decision=decision
        )
    return outcome


def _item_rows(run: ReplayRun, gates: list[Any]) -> dict[int, evidence.ItemResult]:
    per_item: dict[int, list[dict[str, Any]]] = {}
    meta: dict[int, tuple[int, list[str]]] = {}
    calls = ReplayCall.objects.filter(replay=run).values_list(
        "item_id", "index", "status", "values", "item__tags"
    )
    for item_id, index, status, values, tags in calls.iterator(chunk_size=5000):
        meta[item_id] = (index, list(tags or []))
        per_item.setdefault(item_id, [])
        if status == C.DONE:
            per_item[item_id].append(values or {})
    return {
        item_id: evidence.item_result(meta[item_id][0], meta[item_id][1], repeats, gates)
        for item_id, repeats in per_item.items()
    }


def _costs(run: ReplayRun, now: datetime) -> dict[str, Any]:
    by_status = dict(
        ReplayCall.objects.filter(replay=run)
        .values_list("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    cost = ReplayCall.objects.filter(replay=run, status=C.DONE).aggregate(s=Sum("cost_usd"))["s"]
    return {
        "calls": by_status,
        "cost_usd": round(float(cost or 0.0), 6),
        "seconds": round((now - run.created_at).total_seconds(), 3),
    }


def _reason(outcome: str, summary: dict[str, Any]) -> str:
    failing = [g["reason"] for g in summary["gates"] if g["outcome"] == outcome]
    head = {
        "pass": "Replay passed every gate",
        "fail": "Replay failed",
        "inconclusive": "Replay inconclusive (not passed)",
        "not_evaluated": "Replay not evaluated (calls lost to provider errors)",
    }[outcome]
    return f"{head}: {'; '.join(failing)}" if failing else head


def _act(run: ReplayRun, outcome: str, summary: dict[str, Any], now: datetime) -> str:
    """Act on the plan through the lifecycle, as the engine. Returns what was done."""
    plan = run.plan
    plan.refresh_from_db()
    if plan.status != PlanStatus.RUNNING or plan.current_stage_id != run.stage_id:
        return "plan moved on"  # a person paused, advanced or rolled back meanwhile
    evidence_ = {"replay": {"id": run.pk, "dataset": run.dataset.name, **summary}}
    reason = _reason(outcome, summary)
    common: dict[str, Any] = {
        "plan_key": plan.key,
        "actor": lifecycle.ENGINE,
        "evidence": evidence_,
        "expected_version": plan.version,
    }
    try:
        if outcome == "pass":
            lifecycle.plan_advance(reason=reason, **common)
            return "advanced"
        if outcome == "fail" and run.on_fail == "stop":
            lifecycle.plan_rollback(reason=reason, **common)
            _page(plan, "rollback", evidence_, reason, now)
            return "stopped"
    except IllegalTransition as exc:  # a person acted first
        log.info("replay %s: %s not applied: %s", run.pk, outcome, exc.message)
        return "plan moved on"
    lifecycle.record_edit(
        plan, actor=lifecycle.ENGINE, action="replay", reason=f"{reason}. A person decides: "
        "advance to start shadow, or roll back.", evidence=evidence_, publish=False,
    )  # fmt: skip
    if outcome == "fail":
        _page(plan, "pause", evidence_, reason, now)
    return "awaiting_approval"


def _page(
    plan: MigrationPlan, action: str, evidence_: dict[str, Any], reason: str, now: datetime
) -> None:
    """The page, queued in the deciding transaction, exactly as the engine pages a rollback."""
    plan.refresh_from_db()
    engine_page(plan, action, evidence_, reason, now, about="replay")
