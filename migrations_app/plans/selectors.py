"""Plan reads: its phases as the pure rules of ``phases.py`` see them, and where its traffic goes
now. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from migrations_app.models import (
    MigrationPlan,
    PlanPhase,
    PlanStatus,
)
from migrations_app.plans.holdout import with_holdout
from migrations_app.plans.phases import PhaseRule, Position, position, steps_of


def phase_rules_of(phases: Iterable[PlanPhase], holdout_percent: float = 0.0) -> list[PhaseRule]:
    """Phase rows as the pure rules of ``phases.py`` see them, and the holdout stage after
    them when ``holdout_percent`` keeps one (plans/holdout.py)."""
    rules = [PhaseRule(kind=p.kind, percent=p.percent, steps=steps_of(p.steps)) for p in phases]
    return with_holdout(rules, holdout_percent)


def phase_rules(plan: MigrationPlan) -> list[PhaseRule]:
    """The stages a run of the plan walks as the pure rules of ``phases.py`` see them: its
    phases, then its holdout if it keeps one."""
    return phase_rules_of(plan.phases.all(), plan.holdout_percent)


def plan_position(plan: MigrationPlan) -> Position:
    """Where the plan's traffic goes now. Only a running plan splits; other statuses serve one arm."""
    here = position(phase_rules(plan), plan.phase_index, plan.step_index)
    if plan.status == PlanStatus.RUNNING:
        return here
    return Position(here.phase, here.phase_index, here.step_index, 0, 0)


@dataclass(frozen=True, slots=True)
class StageCriteria:
    """What the plan's current stage waits for before the engine moves on: the phase's
    minimum requests per arm and duration, or the holdout's (``watch``: the holdout, which
    ends without a regression rather than on every guardrail proven inside)."""

    min_samples: int
    min_duration_minutes: int
    auto_advance: bool
    watch: bool = False


def stage_criteria(plan: MigrationPlan, phases: Sequence[PlanPhase]) -> StageCriteria:
    """The criteria at the plan's position (``phases``: its phase rows, in order)."""
    if plan.phase_index < len(phases):
        phase = phases[plan.phase_index]
        return StageCriteria(phase.min_samples, phase.min_duration_minutes, phase.auto_advance)
    if plan.holdout_percent:
        return StageCriteria(
            plan.holdout_min_samples, plan.holdout_watch_minutes, auto_advance=True, watch=True
        )
    return StageCriteria(0, 0, auto_advance=True)
