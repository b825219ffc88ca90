"""Replay services: start a plan's replay, cancel it, and the sweep that keeps replays going
(a plan that entered its replay stage by any path, lost calls, replays whose calls are all in:
``decide.replay_decide``). Plan transitions go through ``plans.lifecycle`` only."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from migrations_app.datasets import selectors as datasets
from migrations_app.errors import NotFound
from migrations_app.models import (
    MigrationPlan,
    PlanStatus,
    ReplayCall,
    ReplayRun,
    ReplayStatus,
    StageKind,
)
from migrations_app.models import ReplayCallStatus as C
from migrations_app.plans import lifecycle
from migrations_app.replay import decide
from migrations_app.replay.claims import lost
from migrations_app.replay.metrics import DEFAULT_REPEATS

log = logging.getLogger(__name__)

#: Calls inserted per statement when a replay starts (10,000 items x 3 repeats = 30,000 rows).
INSERT_BATCH = 2000


def _replay_phase(plan: MigrationPlan) -> Any:
    phases = list(plan.phases.all())
    if plan.phase_index < len(phases) and phases[plan.phase_index].kind == "replay":
        return phases[plan.phase_index]
    return None


def active_run(plan: MigrationPlan) -> ReplayRun | None:
    """The replay of the plan's current stage that was not cancelled, if one was started."""
    if plan.current_stage_id is None:
        return None
    return (
        ReplayRun.objects.filter(stage_id=plan.current_stage_id)
        .exclude(status=ReplayStatus.CANCELLED)
        .order_by("-pk")
        .first()
    )


def replay_start(
    *,
    plan_id: int,
    created_by: str,
    dataset: str | None = None,
    version: int | None = None,
    now: datetime | None = None,
) -> ReplayRun | None:
    """Start the replay of a running plan at its replay stage: copy the phase's settings, make
    one call per (item, repeat); the caller enqueues them (``pending_ids``) after. ``dataset`` (and ``version``)
    replay another set than the phase names (the CLI's --dataset). Idempotent: the stage's
    replay if one runs or was decided already; None when the plan is not at a replay stage.
    Raises ``NotFound`` (dataset_not_found) when the dataset does not exist."""
    now = now or timezone.now()
    with transaction.atomic():
        # The plan's row lock serialises two starts (the sweep and the API at once).
        plan = MigrationPlan.objects.select_for_update(of=("self",)).filter(pk=plan_id).first()
        if plan is None or plan.status != PlanStatus.RUNNING:
            return None
        stage = plan.current_stage
        phase = _replay_phase(plan)
        if stage is None or stage.kind != StageKind.REPLAY or phase is None:
            return None
        existing = active_run(plan)
        if existing is not None:
            return existing
        settings_ = dict(phase.replay or {})
        if dataset is not None:
            settings_["dataset"], settings_["version"] = dataset, version
        chosen = datasets.get(
            str(settings_.get("dataset")), settings_.get("version"), for_plan=plan.pk
        )
        items = list(datasets.items(chosen).only("pk", "index", "control_answer"))
        repeats = int(settings_.get("repeats", DEFAULT_REPEATS))
        run = ReplayRun.objects.create(
            plan=plan,
            run_id=plan.current_run_id,
            stage=stage,
            dataset=chosen,
            repeats=repeats,
            fresh_baseline=bool(settings_.get("fresh_baseline", False)),
            gates=list(settings_.get("gates") or []),
            on_fail=str(settings_.get("on_fail", "stop")),
            budget_usd=settings_.get("budget_usd"),
            items=len(items),
            calls_total=len(items) * repeats,
            created_by=created_by,
            created_at=now,
        )
        ReplayCall.objects.bulk_create(
            (
                ReplayCall(
                    replay=run, item_id=item.pk, index=item.index, repeat=r,
                    arm="candidate", created_at=now,
                )
                for item in items
                for r in range(repeats)
            ),
            batch_size=INSERT_BATCH,
        )  # fmt: skip
    return run


def pending_ids(run: ReplayRun) -> list[int]:
    """The replay's calls not made yet, to enqueue (``tasks.enqueue_calls``)."""
    return list(
        ReplayCall.objects.filter(replay=run, status=C.PENDING)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def replay_cancel(*, plan_key: str, actor: lifecycle.Actor, reason: str = "") -> ReplayRun:
    """Cancel the plan's running replay: its calls not yet made are dropped (a call in flight
    finds its row cancelled and stores nothing), and the plan pauses (a plan paused already
    stays so, the cancel audited on it); resuming it starts the replay again. Raises NotFound
    (replay_not_found) when none is running."""
    with transaction.atomic():
        plan = MigrationPlan.objects.filter(key=plan_key).first()
        run = active_run(plan) if plan is not None else None
        none_running = NotFound(
            f"Plan {plan_key!r} has no replay running.",
            code="replay_not_found",
            details={"field": "plan"},
        )
        if plan is None or run is None or run.status != ReplayStatus.RUNNING:
            raise none_running
        # The run's row decides: a decision (it locks the row) or another cancel that got
        # there first leaves nothing to cancel, and the plan it moved on is not paused.
        if not ReplayRun.objects.filter(pk=run.pk, status=ReplayStatus.RUNNING).update(
            status=ReplayStatus.CANCELLED, finished_at=timezone.now(), decision="cancelled"
        ):
            raise none_running
        # Locked in key order first, as a worker's flush stores its answers: an UPDATE
        # takes its rows in whatever order it scans them, and deadlocked with a flush.
        open_calls = (
            ReplayCall.objects.select_for_update()
            .filter(replay=run, status__in=(C.PENDING, C.RUNNING))
            .order_by("pk")
        )
        ReplayCall.objects.filter(pk__in=list(open_calls.values_list("pk", flat=True))).update(
            status=C.CANCELLED, lease_until=None
        )
        reason = reason or "Replay cancelled"
        evidence = {"replay": {"id": run.pk, "cancelled": True}}
        plan = MigrationPlan.objects.select_for_update(of=("self",)).get(pk=plan.pk)
        if plan.status == PlanStatus.RUNNING:
            lifecycle.plan_pause(plan_key=plan_key, actor=actor, reason=reason, evidence=evidence)
        else:  # paused by a person while it replayed: it stays paused, paused once
            lifecycle.record_edit(
                plan, actor=actor, action="replay", reason=reason, evidence=evidence,
                publish=False,
            )  # fmt: skip
        run.refresh_from_db()
    return run


def replay_sweep(*, now: datetime | None = None) -> tuple[dict[str, int], list[int]]:
    """Keep replays going: start the replay of every running plan at a replay stage that has
    none (a plan started from the admin or the API), find lost calls, and decide the replays
    whose calls are all in. Returns the counts and the calls to enqueue (the task does).
    Safe to run at any time, twice at once."""
    now = now or timezone.now()
    counts = {"started": 0, "requeued": 0, "decided": 0}
    enqueue: list[int] = []
    waiting = MigrationPlan.objects.filter(
        status=PlanStatus.RUNNING, current_stage__kind=StageKind.REPLAY
    ).values_list("pk", "current_stage_id")
    for plan_id, stage_id in waiting:
        stage_runs = ReplayRun.objects.filter(stage_id=stage_id)
        if stage_runs.exclude(status=ReplayStatus.CANCELLED).exists():
            continue
        try:
            run = replay_start(plan_id=plan_id, created_by="sweep", now=now)
        except NotFound as exc:
            log.warning("replay of plan %s cannot start: %s", plan_id, exc.message)
            continue
        if run is not None:
            counts["started"] += 1
            enqueue += pending_ids(run)
    for ids in lost(now=now).values():
        enqueue += ids
        counts["requeued"] += len(ids)
    for replay_id in ReplayRun.objects.filter(status=ReplayStatus.RUNNING).values_list(
        "pk", flat=True
    ):
        counts["decided"] += bool(decide.replay_decide(replay_id=replay_id, now=now))
    return counts, enqueue
