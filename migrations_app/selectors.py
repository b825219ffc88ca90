"""Reads. Views, the engine and the dashboard ask here; nothing in this module writes."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from migrations_app import aggregation
from migrations_app.models import (
    Evaluation,
    MigrationPlan,
    PlanPhase,
    PlanStage,
    PlanStatus,
    StageAggregate,
    WindowAggregate,
)
from migrations_app.phases import PhaseRule, Position, position
from migrations_app.stats import ArmAggregates


def phase_rules_of(phases: Iterable[PlanPhase]) -> list[PhaseRule]:
    """Phase rows as the pure rules of ``phases.py`` see them."""
    return [
        PhaseRule(kind=p.kind, percent=p.percent, steps=tuple(float(s) for s in (p.steps or [])))
        for p in phases
    ]


def phase_rules(plan: MigrationPlan) -> list[PhaseRule]:
    """The plan's phases as the pure rules of ``phases.py`` see them."""
    return phase_rules_of(plan.phases.all())


def plan_position(plan: MigrationPlan) -> Position:
    """Where the plan's traffic goes now. Only a running plan splits; other statuses serve one arm."""
    here = position(phase_rules(plan), plan.phase_index, plan.step_index)
    if plan.status == PlanStatus.RUNNING:
        return here
    return Position(here.phase, here.phase_index, here.step_index, 0, 0)


def stage_totals(stage: PlanStage | int) -> dict[str, ArmAggregates]:
    """Each arm's aggregates over a whole stage (two rows, whatever the stage's length)."""
    rows = StageAggregate.objects.filter(stage=stage).values_list("arm", "data")
    totals = {"control": ArmAggregates(), "candidate": ArmAggregates()}
    totals.update({arm: aggregation.from_json(data) for arm, data in rows})
    return totals


def latest_evaluation(stage: PlanStage | int) -> Evaluation | None:
    """The stage's most recent evaluation (its bounds are the running intersection)."""
    return Evaluation.objects.filter(stage=stage).order_by("-created_at", "-pk").first()


def window_totals(stage: PlanStage | int, arm: str, *, since: datetime) -> ArmAggregates:
    """One arm's aggregates over a stage's windows from ``since`` on."""
    return ArmAggregates.merge(
        aggregation.from_json(data)
        for data in WindowAggregate.objects.filter(
            stage=stage, arm=arm, window__gte=since
        ).values_list("data", flat=True)
    )
