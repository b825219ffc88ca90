"""The confirmatory look in the plan rules (:func:`rules.evaluate_plan`), over plain data.

When a step has a minimum sample, a rate-type guardrail (the error rate, a declared rate
metric) spends most of its alpha on one fixed-sample test when both arms first reach it, and
the rest on its confidence sequence at every look (Haybittle-Peto; stats.CONFIRMATORY_SHARE
says why). This module says which guardrails have that look, reads its two arms, and takes it
when it is due; the rules split the alpha and keep the look's bounds in the running
intersection, spent once per stage (``rule_types.Bounds.looked``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from migrations_app.guardrails import stats
from migrations_app.guardrails.stats import ArmAggregates, MetricSums


@dataclass(frozen=True, slots=True)
class ConfirmatoryLook:
    """A rate-type guardrail's confirmatory look, per arm: the two arms' events over samples
    (the error rate's errors over requests, a rate metric's 1s over its values) and the look's
    fixed-sample bounds at a given alpha. One look for every rate: the same due rule, share
    and bookkeeping."""

    control: stats.RatioArm
    candidate: stats.RatioArm
    bounds: Callable[[float], tuple[float, float]]
    tolerance_kind: stats.ToleranceKind

    def take(self, alpha: float, design_samples: int) -> tuple[float, float, str] | None:
        """The look's bounds at ``alpha`` and the note that says so, once both arms are at
        the step's minimum (``design_samples`` per arm) with enough events; None before."""
        a, b = self.control, self.candidate
        if not bool(stats.confirmatory_look_due(a.n, b.n, a.y, b.y, design_samples)):
            return None
        lo, hi = self.bounds(alpha)
        note = (
            f"confirmatory look at {int(np.asarray(a.n))} control and {int(np.asarray(b.n))} "
            f"candidate requests (the step's minimum is {design_samples} per arm): "
            f"{stats.summarise_bounds(lo, hi, self.tolerance_kind, alpha)}"
        )
        return lo, hi, note


def rate_look(
    metric: str,
    control: ArmAggregates,
    candidate: ArmAggregates,
    *,
    tolerance: float,
    tolerance_kind: stats.ToleranceKind,
    measure: tuple[stats.MetricKind, stats.Harm] | None,
    paired: bool,
) -> ConfirmatoryLook | None:
    """A guardrail's confirmatory look, or None: in a shadow stage (``paired``: its test
    reads pairs, not arms) and for means, quantiles, cost. ``measure``: a per-request
    metric's kind and harm (``rule_types.Measure``), None for the built-in six."""
    if paired:
        return None
    if measure is None and metric == "error_rate":
        return ConfirmatoryLook(
            stats.error_arm(control),
            stats.error_arm(candidate),
            lambda alpha: stats.error_rate_confirmatory(
                control, candidate, tolerance=tolerance, tolerance_kind=tolerance_kind,
                alpha=alpha,
            ),
            tolerance_kind,
        )  # fmt: skip
    if measure is None or measure[0] != "rate":
        return None
    harm = measure[1]
    a = control.metrics.get(metric, MetricSums()).ratio_arm()
    b = candidate.metrics.get(metric, MetricSums()).ratio_arm()

    def bounds(alpha: float) -> tuple[float, float]:
        lo, hi = stats.metric_confirmatory(
            a, b, tolerance=tolerance, tolerance_kind=tolerance_kind, harm=harm, alpha=alpha
        )
        return float(lo), float(hi)

    return ConfirmatoryLook(a, b, bounds, tolerance_kind)
