"""Verdicts: a test's bounds against a guardrail's tolerance, classified and said in words."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

METRICS = (
    "error_rate",
    "latency_p95",
    "latency_p99",
    "ttft_p95",
    "satisfaction",
    "cost_per_request",
)

Status = Literal["regressed", "warning", "inside_tolerance", "inconclusive", "not_enough_data"]


ToleranceKind = Literal["relative", "absolute"]


Harm = Literal["increase", "decrease"]


def _json_float(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one test, on the tolerance's scale.

    For relative tolerances, ``estimate``/``lower``/``upper`` are candidate/control ratios;
    for absolute ones, candidate - control differences. ``harm`` says which direction is
    bad. ``lower``/``upper`` may be infinite (JSON: null) when data are too few.
    """

    metric: str
    status: Status
    estimate: float
    lower: float
    upper: float
    tolerance: float
    tolerance_kind: ToleranceKind
    harm: Harm
    n_control: int
    n_candidate: int
    alpha: float
    summary: str
    notes: tuple[str, ...] = ()
    # How a person names the metric and reads its values, for metrics not in _LABELS (an
    # application's own, an answer check): ``label`` replaces the name in the summary;
    # ``scale`` "points" shows absolute differences of rates in percentage points.
    label: str = ""
    scale: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (non-finite floats become None) for the audit trail."""
        return {
            "metric": self.metric,
            "status": self.status,
            "estimate": _json_float(self.estimate),
            "lower": _json_float(self.lower),
            "upper": _json_float(self.upper),
            "tolerance": _json_float(self.tolerance),
            "tolerance_kind": self.tolerance_kind,
            "harm": self.harm,
            "n_control": self.n_control,
            "n_candidate": self.n_candidate,
            "alpha": _json_float(self.alpha),
            "summary": self.summary,
            "notes": list(self.notes),
            "label": self.label or _LABELS.get(self.metric, self.metric),
            "scale": self.scale,
        }


_LABELS = {
    "error_rate": "error rate",
    "latency_p95": "p95 latency",
    "latency_p99": "p99 latency",
    "ttft_p95": "p95 time to first token",
    "satisfaction": "satisfaction",
    "cost_per_request": "cost per request",
    "paired_error_rate": "error rate (paired)",
    "paired_difference": "paired difference",
    "judge_preference": "net judge preference",
    "judge_score": "judge score (1-5)",
}


def threshold(tolerance: float, kind: ToleranceKind, harm: Harm) -> float:
    """The boundary on the reported scale: ratio tol, +tol, or -tol for a harmful decrease."""
    if kind == "relative":
        return tolerance if harm == "increase" else 1.0 / tolerance
    return tolerance if harm == "increase" else -tolerance


def classify(estimate: float, lower: float, upper: float, limit: float, harm: Harm) -> Status:
    """Status from the bounds: regressed when the whole sequence is past the limit, inside
    when it is entirely within, warning when only the estimate is past it."""
    if harm == "increase":
        if lower > limit:
            return "regressed"
        if upper <= limit:
            return "inside_tolerance"
        return "warning" if estimate > limit else "inconclusive"
    if upper < limit:
        return "regressed"
    if lower >= limit:
        return "inside_tolerance"
    return "warning" if estimate < limit else "inconclusive"


def _fmt(value: float, kind: ToleranceKind, metric: str, scale: str = "") -> str:
    if not math.isfinite(value):
        return "unbounded"
    if kind == "relative":
        return f"{value:.2f}x"
    if metric == "error_rate" or scale == "points":
        return f"{value * 100:+.2f} points"
    if metric == "cost_per_request":
        return f"{value:+.4g}"
    if metric == "judge_preference":
        # Net preference in points (-100 to +100): "may lose at most 5 points net".
        return f"{value * 100:+.1f} points"
    if metric.startswith(("latency", "ttft")):
        return f"{value:+.0f} ms"
    return f"{value:+.3f}"


def summarise_bounds(lower: float, upper: float, kind: ToleranceKind, alpha: float) -> str:
    """The confirmatory look's bounds in words (error rate)."""
    return (
        f"candidate error rate at least {_fmt(lower, kind, 'error_rate')} and at most "
        f"{_fmt(upper, kind, 'error_rate')} control, each side with "
        f"{100 * (1 - alpha):.4g}% confidence"
    )


def summarise(
    metric: str,
    status: Status,
    estimate: float,
    lower: float,
    upper: float,
    tolerance: float,
    kind: ToleranceKind,
    harm: Harm,
    alpha: float,
    *,
    label: str = "",
    scale: str = "",
) -> str:
    """The sentence a person reads in a page."""
    label = label or _LABELS.get(metric, metric)
    confidence = f"{100 * (1 - alpha):.4g}%"
    limit = threshold(tolerance, kind, harm)
    verdict = {
        "regressed": "regressed",
        "warning": "warning",
        "inside_tolerance": "inside",
        "inconclusive": "inconclusive",
        "not_enough_data": "not enough data",
    }[status]
    if kind == "relative":
        ratio = f"{_fmt(estimate, kind, metric, scale)} control"
    else:
        ratio = f"{_fmt(estimate, kind, metric, scale)} vs control"
    if harm == "increase":
        worst, best, word = upper, lower, "most"
        if status == "regressed":
            worst, word = lower, "least"
    else:
        worst, word = lower, "worst"
        if status == "regressed":
            worst, word = upper, "best"
        best = upper
    del best
    return (
        f"candidate {label} is {ratio}, at {word} {_fmt(worst, kind, metric, scale)} with "
        f"{confidence} confidence; tolerance {_fmt(limit, kind, metric, scale)}: {verdict}"
    )


def _verdict(
    metric: str,
    estimate: float,
    lower: float,
    upper: float,
    tolerance: float,
    kind: ToleranceKind,
    harm: Harm,
    n_control: int,
    n_candidate: int,
    alpha: float,
    notes: tuple[str, ...] = (),
    status: Status | None = None,
    *,
    label: str = "",
    scale: str = "",
) -> Verdict:
    limit = threshold(tolerance, kind, harm)
    if status is None:
        status = classify(estimate, lower, upper, limit, harm)
    summary = summarise(
        metric, status, estimate, lower, upper, tolerance, kind, harm, alpha,
        label=label, scale=scale,
    )  # fmt: skip
    return Verdict(
        metric=metric,
        status=status,
        estimate=estimate,
        lower=lower,
        upper=upper,
        tolerance=tolerance,
        tolerance_kind=kind,
        harm=harm,
        n_control=n_control,
        n_candidate=n_candidate,
        alpha=alpha,
        summary=summary,
        notes=notes,
        label=label,
        scale=scale,
    )


def _not_enough(
    metric: str,
    tolerance: float,
    kind: ToleranceKind,
    harm: Harm,
    n_control: int,
    n_candidate: int,
    alpha: float,
    why: str,
    estimate: float = math.nan,
    *,
    label: str = "",
    scale: str = "",
) -> Verdict:
    name = label or _LABELS.get(metric, metric)
    return Verdict(
        metric=metric,
        status="not_enough_data",
        estimate=estimate,
        lower=-math.inf,
        upper=math.inf,
        tolerance=tolerance,
        tolerance_kind=kind,
        harm=harm,
        n_control=n_control,
        n_candidate=n_candidate,
        alpha=alpha,
        summary=f"{name}: not enough data yet ({why})",
        label=label,
        scale=scale,
    )


def _safe_ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return math.inf if num > 0 else math.nan


Pair = tuple[Any, Any]  # (control, candidate) ArmAggregates


def tested_pairs(
    pairs: Sequence[Pair],
    refuse: Callable[[Any, Any], Verdict | None],
    kernel: Callable[[Sequence[Pair]], tuple[npt.NDArray[np.float64], ...]],
    conclude: Callable[[Any, Any, float, float, float], Verdict],
) -> list[Verdict]:
    """Each pair's verdict, the tests batched: ``refuse(a, b)`` is the verdict of a pair that
    cannot be tested (not enough data) or None; the others get their (estimate, lower,
    upper) from one vectorised ``kernel`` call over all of them (element-wise, so each pair's
    numbers are the ones it would get alone) and ``conclude(a, b, estimate, lower, upper)``."""
    out: list[Verdict | None] = [refuse(a, b) for a, b in pairs]
    ready = [i for i, v in enumerate(out) if v is None]
    if ready:
        est, lo, hi = kernel([pairs[i] for i in ready])
        for j, i in enumerate(ready):
            out[i] = conclude(*pairs[i], float(est[j]), float(lo[j]), float(hi[j]))
    return [v for v in out if v is not None]
