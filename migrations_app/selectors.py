"""Reads. Views, the engine and the dashboard ask here; nothing in this module writes."""

from __future__ import annotations

from migrations_app.models import MigrationPlan, PlanStatus
from migrations_app.phases import PhaseRule, Position, position


def plan_position(plan: MigrationPlan) -> Position:
    """Where the plan's traffic goes now. Only a running plan splits; other statuses serve one arm."""
    phases = [
        PhaseRule(p.kind, p.percent, tuple(float(s) for s in p.steps or []))
        for p in plan.phases.all()
    ]
    here = position(phases, plan.phase_index, plan.step_index)
    if plan.status == PlanStatus.RUNNING:
        return here
    return Position(here.phase, here.phase_index, here.step_index, 0, 0)
