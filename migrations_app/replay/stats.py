"""Replay statistics: per metric an estimate with an interval in which the items are the units,
and the gates' verdicts on it. Pure: numpy and scipy over sums, no Django, no I/O, no clock.

A replay calls the candidate R times on each dataset item. The R answers to one item share
its difficulty, so they are not R independent observations: with items that range from easy
to hard the repeats agree with each other far more than with other items, and an interval
that counts every call as a unit is too narrow by the design effect 1 + (R - 1) ICC (about
x2 in variance for R = 3 and Beta(0.5, 0.5) difficulties; tests/replay/test_stats.py shows a
"95 %" per-call interval covering about 83 % of the time). The estimate here is the ratio of
sums over items, exactly the shape of the per-request guardrail metrics with items in the
users' place (reference/quality.md), so it reuses their machinery:
:class:`~migrations_app.guardrails.stats.MetricSums` with one unit per item, the delete-one-
item jackknife (CR3) variance with its per-value floor (a few identical values do not claim
certainty: Agresti-Coull for a rate, one pseudo-value at each end for a mean), and Student's
t on the effective number of items minus one (:func:`ratio_cluster_variance`). With every item
repeated R times the effective number is the number of items, and the interval is the
classical t interval on item means with a jackknife's small-sample inflation.

A replay is a single test at a sample fixed in advance (the dataset), not a sequence that is
looked at for days, so the fixed-sample t quantile applies (``critical_value(fixed=True)``).

Metrics come in two settings:

- the candidate alone (JSON valid, a task check): the values are the candidate's;
- paired with control (exact match, agreement): per item and repeat the candidate's value
  minus control's on the same item, so the items' shared difficulty cancels.

Gate verdicts are one-sided against a threshold: *pass* when the interval's lower bound clears
it (at_least), *fail* when its upper bound misses it, otherwise *inconclusive*, which is not a
pass (fail-safe: a replay that could not tell never lets shadow start on its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from migrations_app.guardrails.stats import (
    ClusterSums,
    FloatArray,
    MetricSums,
    RatioArm,
    critical_value,
)
from migrations_app.guardrails.stats.per_request import MetricKind, _mean_variance_v

Direction = Literal["at_least", "at_most"]
Outcome = Literal["pass", "fail", "inconclusive", "not_evaluated"]
DIRECTIONS: tuple[Direction, ...] = ("at_least", "at_most")

#: Two-sided level of the intervals shown; a gate is one-sided at (1 + level) / 2.
DEFAULT_LEVEL = 0.95

#: Below this many evaluated items a metric is "not evaluated": a t interval over a handful of
#: items says little, and an outage that left few items must read as an outage.
MIN_ITEMS = 5

#: Share of the dataset's items that must have been evaluated for a verdict: with more lost to
#: a provider outage the ones left are not a random sample of the dataset (the failures cluster
#: on long or unusual requests), so the gate says "not evaluated" rather than pass or fail.
MIN_EVALUATED_SHARE = 0.9


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate and its two-sided interval at ``level``; ``items`` is how many items (the
    units) it rests on and ``values`` how many item x repeat values."""

    estimate: float
    lower: float
    upper: float
    items: int
    values: int
    level: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "estimate": self.estimate,
            "lower": self.lower,
            "upper": self.upper,
            "items": self.items,
            "values": self.values,
            "level": self.level,
        }


def interval_bounds(
    arm: RatioArm, *, kind: MetricKind, low: float, high: float, level: float = DEFAULT_LEVEL
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(estimate, lower, upper) over arrays of item sums (the simulations' many replays at
    once): the ratio of sums, +- Student's t on the effective items minus one times the
    item-clustered jackknife standard error, clipped to the values' range [low, high]."""
    y, n = (np.asarray(v, dtype=np.float64) for v in (arm.y, arm.n))
    variance, df = _mean_variance_v(arm, kind, high - low)
    t = critical_value(n, (1.0 - level) / 2.0, df, fixed=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = np.where(n > 0, y / np.maximum(n, 1.0), np.nan)
    half = t * np.sqrt(variance)
    return est, np.clip(est - half, low, high), np.clip(est + half, low, high)


def interval(
    sums: MetricSums, *, kind: MetricKind, low: float = 0.0, high: float = 1.0,
    level: float = DEFAULT_LEVEL,
) -> Interval:  # fmt: skip
    """The interval of one metric from its item sums (``sums.clusters.units`` = items)."""
    est, lo, hi = interval_bounds(sums.ratio_arm(), kind=kind, low=low, high=high, level=level)
    return Interval(float(est), float(lo), float(hi), sums.clusters.units, sums.n, level)


def item_sums(
    y: npt.ArrayLike, n: npt.ArrayLike, sum_sq: npt.ArrayLike | None = None
) -> MetricSums:
    """:class:`MetricSums` from per-item totals: ``y`` the item's sum of values over its
    evaluated repeats, ``n`` how many repeats were evaluated, ``sum_sq`` the sum of the values'
    squares (defaults to ``y``: 0/1 values). Items with ``n == 0`` count for nothing."""
    ya = np.asarray(y, dtype=np.float64)
    na = np.asarray(n, dtype=np.float64)
    sq = ya if sum_sq is None else np.asarray(sum_sq, dtype=np.float64)
    return MetricSums(
        int(na.sum()), float(np.sum(ya)), float(np.sum(sq)), ClusterSums.from_units(ya, na)
    )


@dataclass(frozen=True, slots=True)
class Gate:
    """One gate of a replay phase: ``metric`` (candidate alone) or its difference from control
    (``versus_control``) must be ``direction`` ``threshold``. E.g. json_valid at_least 0.99;
    exact_match versus control at_least -0.02 (at most two points below control)."""

    metric: str
    threshold: float
    direction: Direction = "at_least"
    versus_control: bool = False

    def describe(self) -> str:
        op = ">=" if self.direction == "at_least" else "<="
        if self.versus_control:
            return f"{self.metric} - control {op} {self.threshold:g}"
        return f"{self.metric} {op} {self.threshold:g}"


@dataclass(frozen=True, slots=True)
class GateVerdict:
    gate: Gate
    outcome: Outcome
    interval: Interval | None
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.gate.metric,
            "gate": self.gate.describe(),
            "outcome": self.outcome,
            "interval": None if self.interval is None else self.interval.to_dict(),
            "reason": self.reason,
        }


def gate_verdict(
    gate: Gate,
    est: Interval | None,
    *,
    dataset_items: int,
    min_items: int = MIN_ITEMS,
    min_evaluated_share: float = MIN_EVALUATED_SHARE,
) -> GateVerdict:
    """The gate's outcome on the metric's interval (``None``: the metric was never measured).

    Pass needs the whole interval on the right side of the threshold; fail needs the whole
    interval on the wrong side; anything between is inconclusive and does not pass. A metric
    measured on too few items, or on too small a share of the dataset (calls lost to an
    outage), is not evaluated: neither pass nor fail."""
    if est is None or est.items < min_items:
        got = 0 if est is None else est.items
        return GateVerdict(gate, "not_evaluated", est, f"{got} items evaluated, need {min_items}")
    if dataset_items > 0 and est.items < min_evaluated_share * dataset_items:
        return GateVerdict(
            gate,
            "not_evaluated",
            est,
            f"only {est.items} of {dataset_items} items evaluated "
            f"(need {min_evaluated_share:.0%}); the rest failed to be called",
        )
    at_least = gate.direction == "at_least"
    good, bad = (est.lower, est.upper) if at_least else (est.upper, est.lower)
    shown = f"{est.estimate:.4g} [{est.lower:.4g}, {est.upper:.4g}]"
    if (good >= gate.threshold) if at_least else (good <= gate.threshold):
        return GateVerdict(gate, "pass", est, f"{shown} clears {gate.describe()}")
    if (bad < gate.threshold) if at_least else (bad > gate.threshold):
        return GateVerdict(gate, "fail", est, f"{shown} misses {gate.describe()}")
    return GateVerdict(
        gate, "inconclusive", est, f"{shown} straddles {gate.threshold:g}: not passed (fail-safe)"
    )


PhaseOutcome = Literal["pass", "fail", "inconclusive", "not_evaluated"]


def phase_outcome(verdicts: list[GateVerdict]) -> PhaseOutcome:
    """The replay's verdict from its gates: fail if any gate failed (the candidate measurably
    misses one), else not_evaluated if any gate could not be measured (an outage, not the
    candidate's fault), else inconclusive if any was, else pass. No gates: inconclusive (a
    replay that checks nothing must not pass on its own)."""
    outcomes = {v.outcome for v in verdicts}
    if not verdicts:
        return "inconclusive"
    for outcome in ("fail", "not_evaluated", "inconclusive"):
        if outcome in outcomes:
            return outcome  # type: ignore[return-value]
    return "pass"


@dataclass(frozen=True, slots=True)
class Stability:
    """How stable the candidate is across repeats on a 0/1 metric: ``flipped`` items got both
    verdicts among their repeats, ``stable`` items the same one every time (items with fewer
    than two evaluated repeats count in neither)."""

    stable: int
    flipped: int

    @property
    def flip_share(self) -> float:
        total = self.stable + self.flipped
        return self.flipped / total if total else 0.0


def flip_stability(y: npt.ArrayLike, n: npt.ArrayLike) -> Stability:
    """Per item ``y`` passes out of ``n`` evaluated repeats: an item flipped when 0 < y < n."""
    ya = np.asarray(y, dtype=np.float64)
    na = np.asarray(n, dtype=np.float64)
    repeated = na >= 2
    flipped = repeated & (ya > 0) & (ya < na)
    return Stability(int(np.count_nonzero(repeated & ~flipped)), int(np.count_nonzero(flipped)))
