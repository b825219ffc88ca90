"""The holdout after promotion (issue 16), as pure rules: its bounds, the stage it adds after
a plan's last rollout step, and what a valid holdout is.

A plan with ``holdout_percent`` h > 0 does not complete when its last step (100 %) is done:
it advances into one more stage, ``holdout``, that sends the units in the top h % of buckets
back to control (the candidate's weight is 100 - h) and keeps the guardrails testing the
candidate against them, with the same tests and the same unit-level variance, the holdout
being the control arm. A regression there rolls back as in any stage; when the watch has run
``holdout_watch_minutes`` and both arms have ``holdout_min_samples`` requests without one,
the plan completes and the holdout is released (every unit on the candidate).

Why after the last step, not instead of it: the last step proves the candidate at 100 % (the
circuit breaker watching), then the holdout watches slow regressions against a concurrent
control. Bucketing stays sticky: entering the holdout moves only units with a bucket at or
above 100 - h, and only from the candidate to control; completing moves them back. A cohort
step's weight does not survive into the holdout: its units are held out like everyone's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from migrations_app.plans.phases import (
    BASIS_POINTS,
    HOLDOUT,
    CohortStep,
    Errors,
    PhaseRule,
    to_bp,
)

MIN_PERCENT = 0.5
MAX_PERCENT = 20.0
MAX_WATCH_MINUTES = 30 * 24 * 60
MAX_SAMPLES = 10_000_000
#: The plan's columns that set it, in the order the admin shows them.
FIELDS = ("holdout_percent", "holdout_watch_minutes", "holdout_min_samples")


def holdout_rule(percent: float) -> PhaseRule:
    """The holdout stage as the phase rules see it: a stage at 100 - ``percent`` (``position``
    gives it no cohort weights)."""
    return PhaseRule(kind=HOLDOUT, percent=percent, steps=())


def with_holdout(phases: Sequence[PhaseRule], percent: float | None) -> list[PhaseRule]:
    """A plan's phases with its holdout stage after them, when it keeps one."""
    rules = list(phases)
    if percent and percent > 0:
        rules.append(holdout_rule(float(percent)))
    return rules


def holdout_bp(percent: float) -> int:
    """The candidate's weight during the holdout (basis points)."""
    return BASIS_POINTS - to_bp(percent)


def ends_at_full(phases: Sequence[PhaseRule]) -> bool:
    """Whether the run's last stage sends everyone to the candidate: the last phase a rollout
    whose last step is a general 100 %."""
    if not phases or phases[-1].kind != "rollout":
        return False
    steps = phases[-1].steps or (100.0,)
    last = steps[-1]
    return not isinstance(last, CohortStep) and to_bp(last) == BASIS_POINTS


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def percent_problem(percent: Any) -> str:
    """What is wrong with a holdout share on its own ("" when nothing is)."""
    number = isinstance(percent, int | float) and not isinstance(percent, bool)
    if not (number and math.isfinite(percent)):
        return "A percentage is required (0 for no holdout)."
    if percent != 0 and not MIN_PERCENT <= percent <= MAX_PERCENT:
        return f"0 for no holdout, or from {MIN_PERCENT:g} to {MAX_PERCENT:g} % of units."
    return ""


def validate_holdout(
    phases: Sequence[PhaseRule],
    *,
    percent: Any,
    watch_minutes: Any,
    min_samples: Any,
) -> Errors:
    """The holdout's fields, keyed by column: the bounds, and that the phases end at 100 %
    (a holdout after a split at 10 % would raise the candidate's share, not hold some back)."""
    errors: Errors = {}
    if problem := percent_problem(percent):
        errors["holdout_percent"] = [problem]
    elif percent and not ends_at_full(phases):
        errors["holdout_percent"] = [
            "A holdout follows the last rollout step at 100 %: make the last phase a rollout "
            "whose last step is 100, or set the holdout to 0."
        ]
    if not _whole(watch_minutes, 1, MAX_WATCH_MINUTES):
        errors["holdout_watch_minutes"] = [
            f"A whole number of minutes from 1 to {MAX_WATCH_MINUTES} (30 days)."
        ]
    if not _whole(min_samples, 0, MAX_SAMPLES):
        errors["holdout_min_samples"] = [f"A whole number from 0 to {MAX_SAMPLES:,}."]
    return errors
