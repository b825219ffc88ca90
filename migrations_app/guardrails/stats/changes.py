"""Change detection per guardrail: has the candidate become worse than tolerance since some
recent window? Each guardrail maps to a family of per-window e-values (:func:`series_for`;
the families and the users' margins are :mod:`change_evidence`'s); :func:`detect` folds the
stage's committed minute windows into the e-detector of :mod:`detector`, reads the recent
ones on top, and says the change point in words (:class:`Change`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from scipy import special

from migrations_app.guardrails.stats import detector
from migrations_app.guardrails.stats.change_evidence import (
    MAX_MARGIN,
    MEAN_WEIGHTS,
    QUANTILE_STEPS,
    QUANTILE_WEIGHTS,
    RATE_WEIGHTS,
    Family,
    _above,
    _flat,
    _moved,
    _window_quantiles,
    mean_evidence,
    quantile_evidence,
    quantile_margin,
    rate_evidence,
    ratio_margin,
)
from migrations_app.guardrails.stats.detector import SUMS, DetectorState
from migrations_app.guardrails.stats.inputs import (
    ArmAggregates,
    Buckets,
    ClusterSums,
    FloatArray,
    MetricSums,
    RatioArm,
)
from migrations_app.guardrails.stats.per_request import MetricKind, _obs_variance
from migrations_app.guardrails.stats.verdicts import Harm, ToleranceKind, _fmt, threshold

# --- one guardrail ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Series:
    """How a guardrail's detector reads an arm's aggregates: its family, and for ``rate`` and
    ``mean`` the (count, sum, sum of squares, unit sums) of its values; for ``quantile`` the
    latency source ("latency" or "ttft") and the quantile. ``floor``: a mean's variance floor
    per value (a quarter of the range squared, over the count: per_request's)."""

    family: Family
    read: Callable[[ArmAggregates], tuple[int, float, float, ClusterSums]] | None = None
    source: str = "latency"
    quantile: float = 0.95
    value_range: float = 1.0


_BUILT_IN: dict[str, Callable[[ArmAggregates], tuple[int, float, float, ClusterSums]]] = {
    "error_rate": lambda a: (a.requests, a.errors, a.errors, a.error_clusters),
    "satisfaction": lambda a: (
        a.feedback_n,
        a.feedback_sum,
        a.feedback_sum_sq,
        a.feedback_clusters,
    ),
    "cost_per_request": lambda a: (a.cost_n, a.cost_sum, a.cost_sum_sq, a.cost_clusters),
}
_QUANTILES = {"latency_p95": ("latency", 0.95), "latency_p99": ("latency", 0.99),
              "ttft_p95": ("ttft", 0.95)}  # fmt: skip


def series_for(
    metric: str,
    tolerance_kind: ToleranceKind,
    *,
    measure_kind: str | None = None,
    value_range: float = 1.0,
) -> Series | None:
    """The detector's view of a guardrail, or None when none applies. Built-in metrics by
    name; any per-request metric (an application's, an answer check, a judge's score) by its
    kind, read from ``ArmAggregates.metrics[metric]``: the extension point for new kinds."""
    if metric in _QUANTILES:
        source, q = _QUANTILES[metric]
        return Series("quantile", source=source, quantile=q)
    if metric in _BUILT_IN:
        rate = metric == "error_rate"
        family: Family = "rate" if rate and tolerance_kind == "relative" else "mean"
        return Series(family, _BUILT_IN[metric], value_range=1.0 if rate else 0.0)
    if measure_kind in ("rate", "mean"):

        def read(a: ArmAggregates) -> tuple[int, float, float, ClusterSums]:
            s = a.metrics.get(metric, MetricSums())
            return s.n, s.total, s.sum_sq, s.clusters

        rate_kind = measure_kind == "rate" and tolerance_kind == "relative"
        return Series("rate" if rate_kind else "mean", read, value_range=value_range)
    return None


@dataclass(frozen=True, slots=True)
class Window:
    """One window of both arms: ``index`` counts minutes from the stage's first window."""

    index: int
    control: ArmAggregates
    candidate: ArmAggregates


@dataclass(frozen=True, slots=True)
class Change:
    """A detector's reading at one look.

    ``since``: the window the CUSUM locates the change at (minutes from the stage's first
    window), ``estimate`` and ``bound`` the comparison since then on the tolerance's scale
    (the bound at the detector's level, widened by the users' margin), ``before`` the
    comparison over the stage before it; for a quantile guardrail the candidate's share of
    values above its bound since then, and that share's lower bound. ``summary``: in words.
    """

    fired: bool
    log_statistic: float
    log_threshold: float
    since: int
    estimate: float
    bound: float
    before: float
    n_control: int
    n_candidate: int
    summary: str
    at: str = ""

    def to_dict(self) -> dict[str, object]:
        """JSON-safe; ``since`` is the change point's time (ISO 8601)."""
        return {
            "fired": self.fired,
            "since": self.at,
            "since_window": self.since,
            "estimate": _finite(self.estimate),
            "bound": _finite(self.bound),
            "before": _finite(self.before),
            "n_control": self.n_control,
            "n_candidate": self.n_candidate,
            "log_statistic": _finite(self.log_statistic),
            "log_threshold": _finite(self.log_threshold),
            "summary": self.summary,
        }


@dataclass(frozen=True, slots=True)
class Windows:
    """What the engine hands the detectors at one look: the stage's windows it has not
    folded yet, split into ``committed`` (complete: folded and stored) and ``recent`` (still
    filling, or young enough to receive late reports: read, not stored), the detectors'
    states by metric, the stage's first window, the step's planned minutes and the plan's
    average run length to a false alarm (days)."""

    committed: Sequence[Window]
    recent: Sequence[Window]
    stage_start: datetime
    states: Mapping[str, DetectorState] = field(default_factory=dict)
    planned_minutes: float = 0.0
    arl_days: float = detector.DEFAULT_ARL_DAYS


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Guard:
    """What the detector tests: the guardrail's metric, tolerance and harmful direction."""

    metric: str
    tolerance: float
    tolerance_kind: ToleranceKind
    harm: Harm
    label: str = ""
    scale: str = ""


def detect(
    guard: Guard,
    series: Series,
    *,
    control_total: ArmAggregates,
    candidate_total: ArmAggregates,
    committed: Sequence[Window],
    recent: Sequence[Window],
    state: DetectorState,
    alpha: float,
    log_threshold: float,
    stage_start: datetime,
) -> tuple[DetectorState, Change]:
    """Fold ``committed`` windows into ``state`` (returned, for the next evaluation) and read
    the statistic with the ``recent`` ones (still filling, so not stored) on top.

    ``alpha``: the detector's share of the guardrail's alpha, half of it spent on the users'
    margin; ``log_threshold``: log A (:func:`detector.log_threshold`)."""
    margin_alpha = alpha / 2.0
    weights = _weights(series.family)
    components = len(weights)
    now = detector.Scan(*state.arrays(components))
    reference = state.reference
    params = _params(guard, series, control_total, candidate_total, margin_alpha)

    def fold(
        windows: Sequence[Window], before: detector.Scan, ref: float | None
    ) -> tuple[detector.Scan, float | None]:
        log_e, window_sums, after = _evidence(guard, series, windows, params, ref)
        out = detector.scan(
            log_e, window_sums, first=windows[0].index, log_r0=before.log_r,
            log_w0=before.log_w, since0=before.since, sums0=before.sums,
        )  # fmt: skip
        return out, after

    folded = DetectorState(state.committed, state.log_r, state.log_w, state.since, state.sums,
                           reference, state.windows)  # fmt: skip
    fresh = [w for w in committed if w.index > state.committed]
    if fresh:
        now, reference = fold(fresh, now, reference)
        folded = DetectorState(
            fresh[-1].index, tuple(now.log_r.tolist()), tuple(now.log_w.tolist()),
            tuple(int(s) for s in now.since.tolist()), tuple(tuple(s) for s in now.sums.tolist()),
            reference, state.windows + len(fresh),
        )  # fmt: skip
    pending = [w for w in recent if w.index > folded.committed]
    if pending:
        now, _ = fold(
            pending, now, reference
        )  # read, not stored: the reference stays the folded one
    log_r, since, sums = now.log_r, now.since, now.sums
    log_weights = detector.log_weights(weights)
    statistic = (
        float(detector.mixture(log_r, log_weights)) if np.isfinite(log_r).any() else -math.inf
    )
    best = int(np.argmax(log_r + log_weights)) if np.isfinite(log_r).any() else 0
    change = _reading(
        guard, series, params, statistic, log_threshold, int(since[best]), sums[best],
        control_total, candidate_total, stage_start, reference, best,
    )  # fmt: skip
    return folded, change


def _weights(family: Family) -> tuple[float, ...]:
    return {"rate": RATE_WEIGHTS, "mean": MEAN_WEIGHTS, "quantile": QUANTILE_WEIGHTS}[family]


@dataclass(frozen=True, slots=True)
class _Params:
    """A look's null boundary (tolerance widened by the users' margin) and scales."""

    limit: float
    margin: float
    var_a: float = 0.0
    var_b: float = 0.0
    size: float = 0.0
    margin_a: float = 0.0
    margin_b: float = 0.0


def _params(
    guard: Guard, series: Series, control: ArmAggregates, candidate: ArmAggregates, alpha: float
) -> _Params:
    limit = threshold(guard.tolerance, guard.tolerance_kind, guard.harm)
    if series.family == "quantile":
        # Both sides may be the one the null makes true, so each gets half.
        return _Params(
            limit, 0.0,
            margin_a=quantile_margin(control, series.source, series.quantile, alpha / 2.0),
            margin_b=quantile_margin(candidate, series.source, series.quantile, alpha / 2.0),
        )  # fmt: skip
    assert series.read is not None
    arms = [
        RatioArm.of(y, n, c, ss) for n, y, ss, c in (series.read(control), series.read(candidate))
    ]
    relative = guard.tolerance_kind == "relative"
    margin = float(
        ratio_margin(*arms, relative=relative, alpha=alpha, rate=series.family == "rate")
    )
    away = 1.0 if guard.harm == "increase" else -1.0
    # A margin this wide (one user carrying nearly everything) leaves nothing to detect.
    margin = min(margin, MAX_MARGIN)
    widened = limit * math.exp(away * margin) if relative else limit + away * margin
    if series.family == "rate":
        return _Params(widened, margin)
    var_a, var_b = (_value_variance(series, arm) for arm in (control, candidate))
    mean_a = _mean(series, control)
    size = abs(guard.tolerance) if not relative else abs(widened - 1.0) * abs(mean_a)
    if not size > 0:
        size = math.sqrt(max(var_a, var_b, 1e-12)) / 10.0
    return _Params(widened, margin, var_a, var_b, size)


def _value_variance(series: Series, arm: ArmAggregates) -> float:
    """Per-value variance over the stage, floored as per_request floors it (p(1 - p) with one
    pseudo-event each way for 0/1 values, a quarter of the range squared over n + 1 for a
    bounded mean)."""
    assert series.read is not None
    n, y, ss, c = series.read(arm)
    if n < 1:
        return 0.0
    kind: MetricKind = "rate" if series.value_range == 1.0 and ss == y else "mean"
    return _obs_variance(MetricSums(n, y, ss, c), kind, series.value_range)


def _mean(series: Series, arm: ArmAggregates) -> float:
    assert series.read is not None
    n, y, _, _ = series.read(arm)
    return y / n if n else math.nan


def _evidence(
    guard: Guard, series: Series, windows: Sequence[Window], p: _Params, reference: float | None
) -> tuple[FloatArray, FloatArray, float | None]:
    """Per-window log e-values (windows x alternatives), sums, and the reference after."""
    if series.family == "quantile":
        return _quantile_windows(guard, series, windows, p, reference)
    assert series.read is not None
    rows = np.array([[*series.read(w.control)[:2], *series.read(w.candidate)[:2]] for w in windows],
                    dtype=np.float64)  # fmt: skip
    na, ya, nb, yb = rows.T
    if series.family == "rate":
        log_e, sums = rate_evidence(na, ya, nb, yb, limit=p.limit, harm=guard.harm)
    else:
        log_e, sums = mean_evidence(
            na, ya, nb, yb, var_a=p.var_a, var_b=p.var_b, limit=p.limit,
            kind=guard.tolerance_kind, harm=guard.harm, size=p.size,
        )  # fmt: skip
    return log_e, sums, reference


def _buckets(arm: ArmAggregates, source: str) -> Buckets:
    return arm.ttft if source == "ttft" else arm.latency


def _quantile_windows(
    guard: Guard, series: Series, windows: Sequence[Window], p: _Params, reference: float | None
) -> tuple[FloatArray, FloatArray, float | None]:
    """Every window at once (a week folds in one pass): per window, the control values above
    each threshold (multiples of the reference carried from the windows before it) and the
    candidate values above its bound, then :func:`quantile_evidence` over all of them. The
    same counts as :func:`count_above` and the same reference as :func:`next_reference`
    window by window (tests/guardrails/stats/test_changes.py checks it)."""
    k = len(windows)
    steps = np.asarray(QUANTILE_STEPS)
    a = _flat([_buckets(w.control, series.source) for w in windows])
    b = _flat([_buckets(w.candidate, series.source) for w in windows])
    # The reference before each window: the moving average of the earlier windows' quantiles.
    values = _window_quantiles(a, k, series.quantile)
    before = np.full(k, np.nan)
    for i in range(k):
        if reference is not None:
            before[i] = reference
        v = float(values[i])
        if not math.isnan(v):
            reference = _moved(reference, v)
    has = ~np.isnan(before)
    t = np.where(has[:, None], np.nan_to_num(before, nan=0.0)[:, None] * steps, np.inf)
    bound = t * guard.tolerance if guard.tolerance_kind == "relative" else t + guard.tolerance
    # Conservative at bucket edges: a bucket that straddles t counts as above it for control
    # (less evidence that control is fast) and as below it for the candidate.
    above_a = _above(a, t, straddle=True)
    above_b = _above(b, bound, straddle=False)
    n_a, n_b = np.where(has, a.total, 0.0), np.where(has, b.total, 0.0)
    log_e, sums = quantile_evidence(
        n_a, above_a, n_b, above_b, tail=1.0 - series.quantile, margin_a=p.margin_a,
        margin_b=p.margin_b,
    )  # fmt: skip
    return log_e, sums, reference


# --- the reading in words ----------------------------------------------------------------


def _reading(
    guard: Guard,
    series: Series,
    p: _Params,
    statistic: float,
    log_threshold: float,
    since: int,
    sums: FloatArray,
    control: ArmAggregates,
    candidate: ArmAggregates,
    stage_start: datetime,
    reference: float | None,
    best: int,
) -> Change:
    n_a, y_a, n_b, y_b = (float(v) for v in sums[:SUMS])
    fired = statistic >= log_threshold
    level = math.exp(-log_threshold)
    moment = stage_start + timedelta(minutes=since)
    when, at = moment.strftime("%H:%M"), moment.isoformat()
    label = guard.label or guard.metric.replace("_", " ")
    if series.family == "quantile":
        share = y_b / n_b if n_b else math.nan
        lo = float(special.betaincinv(y_b, n_b - y_b + 1, level)) if y_b > 0 else 0.0
        bound = max(lo - p.margin_b, 0.0)
        limit = "x" if guard.tolerance_kind == "relative" else " ms +"
        ref = f"{reference * QUANTILE_STEPS[best]:,.0f} ms" if reference else "its reference"
        text = (
            f"since {when} UTC, {share:.1%} of candidate requests took longer than "
            f"{guard.tolerance:g}{limit} control's p{round(series.quantile * 100)} "
            f"(~{ref}): at least {bound:.1%} with the detector's confidence, where "
            f"{1 - series.quantile:.0%} is the most the tolerance allows"
        )
        return Change(fired, statistic, log_threshold, since, share, bound, math.nan,
                      int(n_a), int(n_b), _lead(fired, label) + text, at)  # fmt: skip
    est, bound = _since_estimate(guard, series, p, n_a, y_a, n_b, y_b, level)
    before = _before_estimate(guard, series, control, candidate, n_a, y_a, n_b, y_b)
    kind, metric, scale = guard.tolerance_kind, guard.metric, guard.scale
    word = "least" if guard.harm == "increase" else "most"
    versus = "control" if kind == "relative" else "vs control"
    hours = since / 60.0
    span = f"{hours:.0f} h" if hours >= 2 else f"{since} min"
    prior = (
        f"; before that it was {_fmt(before, kind, metric, scale)} {versus} for {span}"
        if since > 0 and math.isfinite(before)
        else ""
    )
    text = (
        f"candidate {label} has been {_fmt(est, kind, metric, scale)} {versus} since {when} "
        f"UTC (at {word} {_fmt(bound, kind, metric, scale)} with the detector's confidence; "
        f"tolerance {_fmt(threshold(guard.tolerance, kind, guard.harm), kind, metric, scale)})"
        f"{prior}"
    )
    return Change(fired, statistic, log_threshold, since, est, bound, before, int(n_a), int(n_b),
                  _lead(fired, label) + text, at)  # fmt: skip


def _lead(fired: bool, label: str) -> str:
    return "change detected: " if fired else f"{label} since its change point: "


def _since_estimate(
    guard: Guard, series: Series, p: _Params, n_a: float, y_a: float, n_b: float, y_b: float,
    level: float,
) -> tuple[float, float]:  # fmt: skip
    """The comparison since the change point and its bound at the detector's level (the
    users' margin taken off, so the bound speaks for the population, not these users)."""
    increase = guard.harm == "increase"
    if series.family == "rate":
        w = n_b / n_a if n_a > 0 and n_b > 0 else math.nan
        est = ((y_b + 0.5) / (n_b + 0.5)) / ((y_a + 0.5) / (n_a + 0.5))
        total = y_a + y_b
        if not (total > 0 and w > 0):
            return est, math.nan
        if increase:
            q = float(special.betaincinv(y_b, y_a + 1, level)) if y_b > 0 else 0.0
        else:
            q = float(special.betaincinv(y_b + 1, y_a, 1 - level)) if y_a > 0 else 1.0
        theta = q / ((1 - q) * w) if q < 1 else math.inf
        return est, theta * math.exp((-1.0 if increase else 1.0) * p.margin)
    ma = y_a / n_a if n_a else math.nan
    mb = y_b / n_b if n_b else math.nan
    z = float(special.ndtri(1.0 - level))
    sd = math.sqrt(p.var_b / max(n_b, 1.0) + p.var_a / max(n_a, 1.0))
    sign = -1.0 if increase else 1.0
    if guard.tolerance_kind == "relative":
        est = mb / ma if ma else math.nan
        rel = sd / abs(ma) if ma else math.inf
        return est, est * math.exp(sign * (z * rel + p.margin))
    est = mb - ma
    return est, est + sign * (z * sd + p.margin)


def _before_estimate(
    guard: Guard, series: Series, control: ArmAggregates, candidate: ArmAggregates,
    n_a: float, y_a: float, n_b: float, y_b: float,
) -> float:  # fmt: skip
    """The comparison over the stage before the change point (its totals minus since)."""
    assert series.read is not None
    ca, cb = series.read(control), series.read(candidate)
    pa_n, pa_y, pb_n, pb_y = ca[0] - n_a, ca[1] - y_a, cb[0] - n_b, cb[1] - y_b
    if pa_n < 1 or pb_n < 1:
        return math.nan
    ma, mb = pa_y / pa_n, pb_y / pb_n
    if guard.tolerance_kind == "relative":
        return mb / ma if ma > 0 else math.nan
    return mb - ma
