"""Anytime-valid statistics for automatic rollback (see reference/statistics.md).

Pure: numpy and scipy over plain aggregates. No Django, no I/O, no clock. Every test
here may be evaluated after every window for days without inflating its false-alarm
rate: the bounds are confidence sequences, so the chance that they *ever* exclude the
truth is at most alpha.

The inputs are sums. The caller stores one :class:`ArmAggregates` per (plan, stage, arm,
window) and adds them up; addition is exact for integers and exactly rounded for floats
(:meth:`ArmAggregates.merge` uses ``math.fsum``), so the same windows give the same
decision in any order.

Bounds are one-sided toward harm for the rollback decision (the lower bound of
candidate/control for "more is worse") and one-sided the other way for "safe to advance".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping
from scipy import special

FloatArray = npt.NDArray[np.float64]

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

# GrowthBook's default: the total sample at which the mixture is tightest. Detection time
# moves < 25 % for N* anywhere in 1k-48k (reference/statistics.md).
DEFAULT_N_STAR = 5000
RELATIVE_ACCURACY = 0.01
MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
# ddsketch's LogarithmicMapping computes key = ceil(log2(v) * multiplier); reproduced here
# so that numpy arrays bucket exactly like DDSketch.add.
_KEY_MULTIPLIER = math.log(2) / math.log1p(2 * RELATIVE_ACCURACY / (1 - RELATIVE_ACCURACY))
_MIN_INDEXABLE = MAPPING.min_possible
# Bucket edges are computed in floating point; widening them by a relative 1e-9 keeps
# the bounds conservative when a value sits exactly on an edge.
_EDGE_SLACK = 1e-9

# Minimums before a test may act. The reference suggests 10 errors per arm for the log
# risk ratio; with the +0.5 correction and the request-level variance floor the sequence
# stays at or below alpha with no minimum at all (tests/stats, base rates down to 0.05 %),
# and a per-arm minimum would blind it exactly when control rarely fails and the candidate
# often does. So: 10 errors across both arms. Satisfaction needs enough feedback for the
# unit-level variance to mean anything.
MIN_ERRORS = 10
MIN_FEEDBACK_PER_ARM = 50
MIN_COST_PER_ARM = 30

# Concentration of the Beta prior in the quantile confidence sequence: the mixture is
# centred on the quantile level p and weighs ~30 pseudo-observations. Bounds vary < 5 %
# for concentrations 10-300 at 500-20k samples; 30 makes them finite early (145 samples
# per arm for p95, 565 for p99, at alpha 0.0125 per guardrail).
QUANTILE_PRIOR_CONCENTRATION = 30.0
# Prior concentration of the sample-ratio e-value's Beta mixture around the expected share.
SRM_PRIOR_CONCENTRATION = 100.0


# --- inputs --------------------------------------------------------------------------


def _fsum_field(items: list[Any], name: str) -> float:
    return math.fsum(getattr(item, name) for item in items)


@dataclass(frozen=True, slots=True)
class ClusterSums:
    """Unit-level sums for a ratio metric Y/N (errors per request, cost per request, ...).

    ``sum_yy``, ``sum_yn`` and ``sum_nn`` are sums over units of Y_u**2, Y_u*N_u and
    N_u**2 using each unit's running totals for the stage. They stay additive across
    windows if each window stores the *increments*: when a unit's totals move from (Y, N)
    to (Y + y, N + n), the window adds (Y+y)**2 - Y**2 and so on. ``units`` counts units
    the first time they are seen.
    """

    units: int = 0
    sum_yy: float = 0.0
    sum_yn: float = 0.0
    sum_nn: float = 0.0

    @classmethod
    def merge(cls, items: Iterable[ClusterSums]) -> ClusterSums:
        """Sum of many, exactly rounded, so the result does not depend on their order."""
        seq = list(items)
        return cls(
            units=sum(item.units for item in seq),
            sum_yy=_fsum_field(seq, "sum_yy"),
            sum_yn=_fsum_field(seq, "sum_yn"),
            sum_nn=_fsum_field(seq, "sum_nn"),
        )

    @classmethod
    def from_units(cls, y: npt.ArrayLike, n: npt.ArrayLike) -> ClusterSums:
        """From per-unit totals (tests, backfills)."""
        ya = np.asarray(y, dtype=np.float64)
        na = np.asarray(n, dtype=np.float64)
        return cls(
            units=int(np.count_nonzero(na)),
            sum_yy=math.fsum((ya * ya).tolist()),
            sum_yn=math.fsum((ya * na).tolist()),
            sum_nn=math.fsum((na * na).tolist()),
        )


@dataclass(frozen=True, slots=True)
class Buckets:
    """DDSketch-style bucket counts (LogarithmicMapping, 1 % relative accuracy).

    ``counts`` maps a bucket key to how many values fell in it; key k holds the values in
    (gamma**(k-1), gamma**k]. ``zero_count`` holds values too small to index (<= 0).
    """

    counts: Mapping[int, int] = field(default_factory=dict)
    zero_count: int = 0

    @property
    def total(self) -> int:
        """Number of values."""
        return self.zero_count + sum(self.counts.values())

    @classmethod
    def merge(cls, items: Iterable[Buckets]) -> Buckets:
        """Bucket-wise sum."""
        counts: dict[int, int] = {}
        zero = 0
        for item in items:
            zero += item.zero_count
            for key, count in item.counts.items():
                counts[key] = counts.get(key, 0) + count
        return cls(counts=counts, zero_count=zero)

    @classmethod
    def from_values(cls, values: npt.ArrayLike) -> Buckets:
        """Bucket raw values with the same mapping DDSketch uses."""
        keys, counts, zero = bucketize(values)
        return cls(counts=dict(zip(keys.tolist(), counts.tolist(), strict=True)), zero_count=zero)

    def arrays(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Sorted keys and their counts (zero bucket excluded)."""
        if not self.counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        keys = np.fromiter(self.counts.keys(), dtype=np.int64, count=len(self.counts))
        counts = np.fromiter(self.counts.values(), dtype=np.int64, count=len(self.counts))
        order = np.argsort(keys, kind="stable")
        return keys[order], counts[order]


def bucketize(
    values: npt.ArrayLike,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """Keys (sorted, unique), their counts and the zero count for raw values."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    positive = arr > _MIN_INDEXABLE
    keys = bucket_keys(arr[positive])
    uniq, counts = np.unique(keys, return_counts=True)
    return uniq.astype(np.int64), counts.astype(np.int64), int(arr.size - positive.sum())


def bucket_keys(values: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The DDSketch key of each (positive) value."""
    arr = np.asarray(values, dtype=np.float64)
    return np.ceil(np.log(arr) / math.log(2) * _KEY_MULTIPLIER).astype(np.int64)


def bucket_bounds(keys: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """(lower, upper) edges of buckets, widened by a hair so they always contain their values."""
    k = np.asarray(keys, dtype=np.float64)
    lower = np.power(2.0, (k - 1) / _KEY_MULTIPLIER) * (1 - _EDGE_SLACK)
    upper = np.power(2.0, k / _KEY_MULTIPLIER) * (1 + _EDGE_SLACK)
    return lower, upper


def bucket_value(key: int) -> float:
    """The value DDSketch reports for a bucket (within 1 % of every value in it)."""
    return float(MAPPING.value(key))


def buckets_from_ddsketch(sketch: DDSketch) -> Buckets:
    """Convert a ``ddsketch.DDSketch`` built with ``LogarithmicMapping(0.01)`` to :class:`Buckets`."""
    mapping = sketch._mapping
    if not isinstance(mapping, LogarithmicMapping) or not math.isclose(
        mapping.relative_accuracy, RELATIVE_ACCURACY
    ):
        raise ValueError("sketch must use LogarithmicMapping with relative accuracy 0.01")
    if sketch._negative_store.count:
        raise ValueError("durations cannot be negative")
    store = sketch._store
    counts = {store.offset + index: round(count) for index, count in enumerate(store.bins) if count}
    return Buckets(counts=counts, zero_count=round(sketch._zero_count))


@dataclass(frozen=True, slots=True)
class ArmAggregates:
    """One arm's aggregates over a stage, summed across windows by the caller.

    Every field is a sum, so windows merge by addition (:meth:`merge`).

    Errors: ``requests``, ``errors``, ``errors_by_kind`` and ``error_clusters`` (Y = errors,
    N = requests per unit; ``error_clusters.units`` is the number of units, used by the
    sample-ratio test). Latency and time to first token: bucket counts plus sums of values
    and of their logs (for display). Cost: requests with a known cost, the sum and sum of
    squares of their cost, and ``cost_clusters`` (Y = cost, N = costed requests per unit).
    Feedback, normalised to [0, 1]: count, sum, sum of squares, ``feedback_clusters``
    (Y = score sum, N = feedbacks per unit) and ``feedback_rate_clusters`` (Y = feedbacks,
    N = requests per unit).
    """

    requests: int = 0
    errors: int = 0
    errors_by_kind: Mapping[str, int] = field(default_factory=dict)
    error_clusters: ClusterSums = ClusterSums()
    latency: Buckets = Buckets()
    latency_sum: float = 0.0
    latency_log_sum: float = 0.0
    ttft: Buckets = Buckets()
    ttft_sum: float = 0.0
    ttft_log_sum: float = 0.0
    cost_n: int = 0
    cost_sum: float = 0.0
    cost_sum_sq: float = 0.0
    cost_clusters: ClusterSums = ClusterSums()
    feedback_n: int = 0
    feedback_sum: float = 0.0
    feedback_sum_sq: float = 0.0
    feedback_clusters: ClusterSums = ClusterSums()
    feedback_rate_clusters: ClusterSums = ClusterSums()

    @property
    def units(self) -> int:
        """Distinct units that sent requests."""
        return self.error_clusters.units

    @property
    def feedback_rate(self) -> float:
        """Feedbacks per request."""
        return self.feedback_n / self.requests if self.requests else 0.0

    @classmethod
    def merge(cls, windows: Iterable[ArmAggregates]) -> ArmAggregates:
        """Sum windows. Exactly rounded float sums make the result independent of order."""
        seq = list(windows)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.name
            if name == "errors_by_kind":
                kinds: dict[str, int] = {}
                for w in seq:
                    for kind, count in w.errors_by_kind.items():
                        kinds[kind] = kinds.get(kind, 0) + count
                values[name] = kinds
            elif name in ("latency", "ttft"):
                values[name] = Buckets.merge(getattr(w, name) for w in seq)
            elif name.endswith("_clusters"):
                values[name] = ClusterSums.merge(getattr(w, name) for w in seq)
            elif f.type == "int":
                values[name] = sum(getattr(w, name) for w in seq)
            else:
                values[name] = _fsum_field(seq, name)
        return cls(**values)

    def __add__(self, other: ArmAggregates) -> ArmAggregates:
        return ArmAggregates.merge((self, other))


@dataclass(frozen=True, slots=True)
class PairedErrors:
    """Shadow mode: both models answered the same ``n`` requests."""

    n: int = 0
    control_only: int = 0
    candidate_only: int = 0
    both: int = 0


@dataclass(frozen=True, slots=True)
class PairedDiffs:
    """Shadow mode: per request, d = candidate - control (log latency, judge score, ...).

    ``clusters`` has Y = sum of d, N = pairs, per unit.
    """

    n: int = 0
    sum: float = 0.0
    sum_sq: float = 0.0
    clusters: ClusterSums = ClusterSums()


# --- verdicts ------------------------------------------------------------------------


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


def _fmt(value: float, kind: ToleranceKind, metric: str) -> str:
    if not math.isfinite(value):
        return "unbounded"
    if kind == "relative":
        return f"{value:.2f}x"
    if metric == "error_rate":
        return f"{value * 100:+.2f} points"
    if metric == "cost_per_request":
        return f"{value:+.4g}"
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
) -> str:
    """The sentence a person reads in a page."""
    label = _LABELS.get(metric, metric)
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
        ratio = f"{_fmt(estimate, kind, metric)} control"
    else:
        ratio = f"{_fmt(estimate, kind, metric)} vs control"
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
        f"candidate {label} is {ratio}, at {word} {_fmt(worst, kind, metric)} with "
        f"{confidence} confidence; tolerance {_fmt(limit, kind, metric)}: {verdict}"
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
) -> Verdict:
    limit = threshold(tolerance, kind, harm)
    if status is None:
        status = classify(estimate, lower, upper, limit, harm)
    summary = summarise(metric, status, estimate, lower, upper, tolerance, kind, harm, alpha)
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
) -> Verdict:
    label = _LABELS.get(metric, metric)
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
        summary=f"{label}: not enough data yet ({why})",
    )


# --- the normal-mixture confidence sequence ------------------------------------------


def mixture_half_width(
    se: npt.ArrayLike, n: npt.ArrayLike, alpha: float, n_star: float = DEFAULT_N_STAR
) -> FloatArray:
    """One-sided half-width of the normal-mixture confidence sequence.

    Howard et al. 1810.08240 eq. (14), in GrowthBook's parametrisation (Waudby-Smith et al.
    2103.06476): ``se`` is the ordinary standard error at total sample ``n``; the bound
    estimate - width holds at every n simultaneously with probability 1 - alpha.
    """
    a = 2.0 * alpha
    r = n_star / (-2.0 * math.log(a) + math.log(1.0 - 2.0 * math.log(a)))
    s = np.asarray(se, dtype=np.float64)
    nn = np.maximum(np.asarray(n, dtype=np.float64), 1.0)
    with np.errstate(invalid="ignore"):
        return np.asarray(
            s * np.sqrt(2.0 * (nn + r) / nn * np.log1p(np.sqrt((nn + r) / r) / (2.0 * alpha))),
            dtype=np.float64,
        )


def mixture_e_value(
    estimate: float, null: float, se: float, n: float, alpha: float, n_star: float
) -> float:
    """E-value of the same mixture for H0: effect = null (for the audit trail)."""
    a = 2.0 * alpha
    r = n_star / (-2.0 * math.log(a) + math.log(1.0 - 2.0 * math.log(a)))
    if not (se > 0 and math.isfinite(estimate)):
        return 1.0
    z = (estimate - null) / se
    return math.sqrt(r / (n + r)) * math.exp(min(700.0, n * z * z / (2.0 * (n + r))))


def ratio_cluster_variance(
    y: npt.ArrayLike,
    n: npt.ArrayLike,
    units: npt.ArrayLike,
    sum_yy: npt.ArrayLike,
    sum_yn: npt.ArrayLike,
    sum_nn: npt.ArrayLike,
    iid_var: npt.ArrayLike,
) -> FloatArray:
    """Variance of the ratio mean Y/N from unit-level sums (sandwich / delta method).

    Var(m) = sum_u (Y_u - m N_u)^2 / N^2 (reference/statistics.md), with the usual
    G/(G-1) small-sample factor. It is floored at the request-level ``iid_var``: with few
    units the sandwich is biased low (Cameron & Miller 2015, sec. VI), and clustering can
    only add variance in the settings we simulate.
    """
    ya = np.asarray(y, dtype=np.float64)
    na = np.asarray(n, dtype=np.float64)
    g = np.asarray(units, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(na > 0, ya / na, 0.0)
        resid = np.asarray(sum_yy) - 2.0 * m * np.asarray(sum_yn) + m * m * np.asarray(sum_nn)
        sandwich = np.maximum(resid, 0.0) / np.maximum(na, 1.0) ** 2
        sandwich = sandwich * np.where(g > 1, g / np.maximum(g - 1.0, 1.0), 1.0)
    return np.asarray(np.maximum(sandwich, np.asarray(iid_var, dtype=np.float64)))


# --- error rate ----------------------------------------------------------------------


def error_rate_kernel(
    e_a: npt.ArrayLike,
    n_a: npt.ArrayLike,
    g_a: npt.ArrayLike,
    yy_a: npt.ArrayLike,
    yn_a: npt.ArrayLike,
    nn_a: npt.ArrayLike,
    e_b: npt.ArrayLike,
    n_b: npt.ArrayLike,
    g_b: npt.ArrayLike,
    yy_b: npt.ArrayLike,
    yn_b: npt.ArrayLike,
    nn_b: npt.ArrayLike,
    *,
    alpha: float,
    kind: ToleranceKind,
    n_star: float = DEFAULT_N_STAR,
    fixed: bool = False,
    null_ratio: float | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(estimate, lower, upper) for the candidate (b) vs control (a) error rate, vectorised.

    Relative: Fieller's bounds on the ratio p_b / p_a (Fieller 1954). For each ratio theta
    the contrast p_b - theta p_a is a difference of two arms' means, so the normal-mixture
    confidence sequence covers it at every look, with the cluster-robust variance
    Var(p_b) + theta^2 Var(p_a); the bounds are the thetas it does not reject, closed form
    (:func:`fieller_bounds`). "Lower bound > tolerance" is then exactly "the contrast at
    the tolerance is positive at every ratio up to it". The estimate shown is the ratio of
    the +0.5-corrected rates.

    Why not the log risk ratio the reference names: its delta-method variance Var(p)/p^2
    moves with the estimate itself, which breaks down when a few sticky heavy users carry
    the errors. At the tolerance, with 40 heavy users (Beta(0.02, 0.98) error rates) beside
    light traffic, the log-ratio sequence rolls back 1.65 % of rollouts at alpha 0.0125
    (above alpha) and a fixed-sample log-ratio test 3-5x its level; the Fieller contrast
    0.03 % and under its level. With independent errors it is also the sharper one: 2x
    errors at 2 % by 12k per arm 0.76 against 0.71, 3x by 3k 0.98 against 0.96
    (tests/stats). Variances are floored at the request-level p(1 - p)/n with the
    +0.5-corrected rate, which keeps low base rates honest.

    Absolute: the difference of proportions. The variance is cluster-robust (units are
    sticky, so one heavy user with many errors is one observation, not hundreds).

    ``fixed``: the one-sided fixed-sample bound (normal quantile z_(1-alpha) in place of
    the sequence's width). It is valid only when it is computed once, at a sample size
    chosen before the data (the confirmatory look of :func:`confirmatory_share`).

    ``null_ratio`` (relative only; the tolerance; used by the confirmatory look): the
    contrast's variance at the tolerance is also floored at its value on the null boundary
    p_b = null_ratio p_a (rates from the restricted estimate p_a = (e_a + e_b) /
    (n_a + null_ratio n_b), times each arm's cluster inflation), as in a score test. With
    the Wald variance alone a fixed-sample test at the tolerance is 18 % over its level at
    a 2 % base and 38 % at 0.1 % (60k rollouts: binomial counts are skewed to the right,
    and the lattice adds to it); with the floor it is under (0.96x and 0.86x). The
    sequence does not need it: it stays under alpha in every scenario of tests/stats.
    """
    ea, na_, eb, nb = (np.asarray(v, dtype=np.float64) for v in (e_a, n_a, e_b, n_b))
    with np.errstate(invalid="ignore", divide="ignore"):
        pa = np.where(na_ > 0, ea / np.maximum(na_, 1.0), 0.0)
        pb = np.where(nb > 0, eb / np.maximum(nb, 1.0), 0.0)
        total = na_ + nb
        if kind == "relative":
            pa_c = (ea + 0.5) / (na_ + 0.5)
            pb_c = (eb + 0.5) / (nb + 0.5)
            var_a = ratio_cluster_variance(
                ea, na_, g_a, yy_a, yn_a, nn_a, pa_c * (1 - pa_c) / np.maximum(na_, 1.0)
            )
            var_b = ratio_cluster_variance(
                eb, nb, g_b, yy_b, yn_b, nn_b, pb_c * (1 - pb_c) / np.maximum(nb, 1.0)
            )
            if null_ratio is not None:
                var_a, var_b = _null_floor(
                    ea, na_, eb, nb, pa_c, pb_c, var_a, var_b, float(null_ratio)
                )
            c = _width(np.ones_like(total), total, alpha, n_star, fixed)
            lo, hi = fieller_bounds(pa, pb, var_a, var_b, c)
            return pb_c / pa_c, lo, hi
        var_a = ratio_cluster_variance(
            ea, na_, g_a, yy_a, yn_a, nn_a, pa * (1 - pa) / np.maximum(na_, 1.0)
        )
        var_b = ratio_cluster_variance(
            eb, nb, g_b, yy_b, yn_b, nn_b, pb * (1 - pb) / np.maximum(nb, 1.0)
        )
        est = pb - pa
        width = _width(np.sqrt(var_a + var_b), total, alpha, n_star, fixed)
        return est, est - width, est + width


def _null_floor(
    ea: FloatArray,
    na: FloatArray,
    eb: FloatArray,
    nb: FloatArray,
    pa_c: FloatArray,
    pb_c: FloatArray,
    var_a: FloatArray,
    var_b: FloatArray,
    theta0: float,
) -> tuple[FloatArray, FloatArray]:
    na1, nb1 = np.maximum(na, 1.0), np.maximum(nb, 1.0)
    # How much more than binomial each arm varies (>= 1: the cluster variance is floored).
    inflation_a = var_a / (pa_c * (1 - pa_c) / na1)
    inflation_b = var_b / (pb_c * (1 - pb_c) / nb1)
    p0 = np.minimum((ea + eb + 0.5) / (na + theta0 * nb + 0.5), 0.5 / theta0)
    null_a = inflation_a * p0 * (1 - p0) / na1
    null_b = inflation_b * theta0 * p0 * (1 - theta0 * p0) / nb1
    # One factor for both arms: the contrast's variance at theta0 becomes the larger of the
    # two, and the bounds at other ratios stay a Fieller inversion of fixed variances.
    scale = np.maximum(1.0, (null_b + theta0**2 * null_a) / (var_b + theta0**2 * var_a))
    return var_a * scale, var_b * scale


def fieller_bounds(
    p_a: npt.ArrayLike,
    p_b: npt.ArrayLike,
    var_a: npt.ArrayLike,
    var_b: npt.ArrayLike,
    c: npt.ArrayLike,
) -> tuple[FloatArray, FloatArray]:
    """(lower, upper) on p_b / p_a: the thetas with |p_b - theta p_a| <= c sd(theta).

    sd(theta)^2 = var_b + theta^2 var_a. g(theta) = p_b - theta p_a - c sd(theta) falls
    with theta, so the lower bound is its one root (0 if g(0) <= 0): squaring gives
    A theta^2 - 2 p_a p_b theta + C = 0 with A = p_a^2 - c^2 var_a, C = p_b^2 - c^2 var_b,
    and the root, rationalised so that it stays finite when A is 0 or negative, is
    C / (p_a p_b + c sqrt(D)), D = p_a^2 var_b + p_b^2 var_a - c^2 var_a var_b. The upper
    bound (p_a p_b + c sqrt(D)) / A exists when the control rate is itself clear of 0
    (A > 0); otherwise it is infinite.
    """
    pa, pb, va, vb, cc = (np.asarray(v, dtype=np.float64) for v in (p_a, p_b, var_a, var_b, c))
    with np.errstate(invalid="ignore", divide="ignore"):
        big_a = pa * pa - cc * cc * va
        big_c = pb * pb - cc * cc * vb
        root = cc * np.sqrt(np.maximum(pa * pa * vb + pb * pb * va - cc * cc * va * vb, 0.0))
        denom = pa * pb + root
        lower = np.where((big_c > 0) & (denom > 0), big_c / np.where(denom > 0, denom, 1.0), 0.0)
        upper = np.where(big_a > 0, denom / np.where(big_a > 0, big_a, 1.0), math.inf)
    return np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)


def _width(se: FloatArray, n: FloatArray, alpha: float, n_star: float, fixed: bool) -> FloatArray:
    if fixed:
        return np.asarray(se * float(special.ndtri(1.0 - alpha)), dtype=np.float64)
    return mixture_half_width(se, n, alpha, n_star)


def error_rate_enough(
    e_a: npt.ArrayLike, e_b: npt.ArrayLike, min_errors: int = MIN_ERRORS
) -> npt.NDArray[np.bool_]:
    """Whether the log-risk-ratio sequence may act: enough errors in the two arms."""
    return np.asarray(np.asarray(e_a) + np.asarray(e_b) >= min_errors)


# The confirmatory look (Haybittle-Peto; Haybittle 1971, Peto et al. 1976, here with an
# anytime-valid sequence in place of their strict interim z-boundary): when a step has a
# minimum sample, the error-rate guardrail spends CONFIRMATORY_SHARE of its alpha on ONE
# fixed-sample test at that sample and the rest on the confidence sequence at every look.
# The union bound makes the two together wrong with probability <= alpha.
#
# Why: no test that must stay valid at every look, with no horizon, gets near the power of
# a fixed-sample test at a known sample. 2x errors at a 2 % base against a 1.5x tolerance,
# by 12k requests per arm at the standard plan's 0.0125 (tests/stats/test_power.py): the
# sequence alone 0.76 (0.78 with N* tuned to 12k-24k, 0.83 with this guardrail given half
# the plan's alpha); the count e-process over 30 log-spaced ratios 0.67; the oracle SPRT
# that knows the true ratio 0.83; one fixed-sample test at 12k, the Neyman-Pearson ceiling
# for *any* level-0.0125 test of those data, 0.93. Spending 2/3 at the look keeps 3x by
# 3k above 0.9 through the sequence (0.95 at alpha / 3) and lifts 2x by 12k to 0.91 when
# the step's minimum is 12k. The share is not tuned finely: any of 0.6-0.8 meets both
# targets (2x by 12k 0.91-0.92, 3x by 3k 0.94-0.96; at 0.5 2x is 0.89).
CONFIRMATORY_SHARE = 2.0 / 3.0


def confirmatory_share(design_samples: int) -> float:
    """Share of the error-rate guardrail's alpha spent at the step's minimum sample."""
    return CONFIRMATORY_SHARE if design_samples > 0 else 0.0


def confirmatory_look_due(
    n_a: npt.ArrayLike,
    n_b: npt.ArrayLike,
    e_a: npt.ArrayLike,
    e_b: npt.ArrayLike,
    design_samples: int,
    min_errors: int = MIN_ERRORS,
) -> npt.NDArray[np.bool_]:
    """Whether the data are past the confirmatory look's sample (both arms at the step's
    minimum, and enough errors for the normal approximation).

    The look is taken once, at the first evaluation where this holds. That moment depends
    on request counts and on the total error count only; given those, the candidate's share
    of the errors is still binomial(M, theta w / (1 + theta w)), so the fixed-sample test
    there keeps its level (waiting for errors costs no alpha, skipping would waste it).
    """
    na, nb = np.asarray(n_a), np.asarray(n_b)
    return np.asarray(
        (design_samples > 0)
        & (np.minimum(na, nb) >= design_samples)
        & (np.asarray(e_a) + np.asarray(e_b) >= min_errors)
    )


# --- the count e-process for error rate (measured; not the acting test) --------------

E_PROCESS_RATIOS = 30


def count_e_process_log(
    e_a: npt.ArrayLike,
    n_a: npt.ArrayLike,
    e_b: npt.ArrayLike,
    n_b: npt.ArrayLike,
    *,
    theta0: float,
    ratios: int = E_PROCESS_RATIOS,
    span: tuple[float, float] = (1.05, 4.0),
) -> FloatArray:
    """Running log e-value against "candidate/control error rate <= theta0", per window.

    Lindon & Malek 2011.03567 (reference/statistics.md): inputs are *per-window* counts,
    windows on the last axis; the result is cumulative over them. Conditional on a window's
    errors in both arms, the candidate's share is binomial with p = theta w / (1 + theta w),
    w the window's candidate/control request ratio, so weight ramps and drift shared by the
    arms cancel window by window. For Bernoulli requests the exact conditional law
    (Fisher's noncentral hypergeometric) has the same mean to O(rate) and a smaller
    variance, so the binomial likelihood is slightly conservative.

    The e-value is the uniform mixture over ``ratios`` log-spaced theta in
    (span[0] theta0, span[1] theta0] of prod_w LR(theta vs theta0). The null is composite
    (every theta <= theta0) and the likelihood ratio is taken against theta0 alone: per
    error it is p(theta)/p(theta0) for a candidate error and (1-p(theta))/(1-p(theta0)) for a
    control one; its mean under a null theta' is p' r1 + (1 - p') r0 with r1 > 1 > r0, which
    increases with p', equals 1 at theta0 and is < 1 below it. So theta0 is least
    favourable: the product is a martingale at theta0 and a supermartingale at every
    smaller ratio, and Ville's inequality bounds the chance that it ever reaches 1/alpha.

    Not the acting test: it treats errors as independent, and sticky heavy users with their
    own error rates make them overdispersed. In the suite's clustering scenario it rolls
    back 17 % of A/A and 31 % of at-tolerance rollouts at alpha 0.0125 (25x alpha); tempering
    the log-likelihood by the cluster-robust variance ratio still leaves 4.4 %. And when it
    is valid it is the less powerful one (tests/stats/test_power.py).
    """
    ea, na, eb, nb = (np.asarray(v, dtype=np.float64) for v in (e_a, n_a, e_b, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where((na > 0) & (nb > 0), nb / np.maximum(na, 1.0), 0.0)
        informative = w > 0
        p0 = theta0 * w / (1.0 + theta0 * w)
        # (span[0], span[1]]: the left end is open, as in the reference.
        log_ratios = np.linspace(math.log(span[0]), math.log(span[1]), ratios + 1)[1:]
        acc = np.full(np.broadcast(ea, eb).shape, -np.inf)
        for log_c in log_ratios:
            theta = theta0 * math.exp(log_c)
            p = theta * w / (1.0 + theta * w)
            step = eb * np.log(p / p0) + ea * np.log((1.0 - p) / (1.0 - p0))
            step = np.where(informative, step, 0.0)
            acc = np.logaddexp(acc, np.cumsum(step, axis=-1))
    return np.asarray(acc - math.log(ratios), dtype=np.float64)


def error_rate_test(
    control: ArmAggregates,
    candidate: ArmAggregates,
    *,
    tolerance: float,
    tolerance_kind: ToleranceKind = "relative",
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
    min_errors: int = MIN_ERRORS,
) -> Verdict:
    """Candidate vs control error rate: Fieller's bounds on the ratio (relative) or the
    difference (absolute), from the normal-mixture confidence sequence with cluster-robust
    variance (:func:`error_rate_kernel`). This is the sequential part of the guardrail;
    guardrails.evaluate_guardrail adds the confirmatory look when the step has a minimum
    sample, and passes this test the alpha left for it.

    Why not the per-window count e-process the reference names
    (:func:`count_e_process_log`, Lindon & Malek 2011.03567): it treats every error as an
    independent event, so when sticky users with their own error rates carry the traffic
    it is overdispersed and rolls back healthy candidates (17 % of A/A and 31 % of
    at-tolerance rollouts in the suite's clustering scenario at alpha 0.0125); and where it
    is valid it is the weaker test (2x errors by 12k per arm 0.67 against 0.76). Weight
    changes are handled by evaluating each stage separately (guardrails.py), which is what
    its per-window conditioning would otherwise buy. The +0.5 correction and the
    request-level variance floor keep the sequence valid at low base rates with 10 errors
    across the two arms instead of the reference's 10 per arm (tests/stats).
    """
    metric = "error_rate"
    a, b = control, candidate
    if not bool(error_rate_enough(a.errors, b.errors, min_errors)):
        return _not_enough(
            metric,
            tolerance,
            tolerance_kind,
            "increase",
            a.requests,
            b.requests,
            alpha,
            f"{a.errors} control errors, {b.errors} candidate errors; the test needs "
            f"{min_errors} in total",
            estimate=_safe_ratio(b.errors / max(b.requests, 1), a.errors / max(a.requests, 1))
            if tolerance_kind == "relative"
            else b.errors / max(b.requests, 1) - a.errors / max(a.requests, 1),
        )
    ca, cb = a.error_clusters, b.error_clusters
    est, lo, hi = error_rate_kernel(
        a.errors,
        a.requests,
        ca.units,
        ca.sum_yy,
        ca.sum_yn,
        ca.sum_nn,
        b.errors,
        b.requests,
        cb.units,
        cb.sum_yy,
        cb.sum_yn,
        cb.sum_nn,
        alpha=alpha,
        kind=tolerance_kind,
        n_star=n_star,
    )
    notes = (
        f"control {a.errors}/{a.requests} = {a.errors / a.requests:.2%}, "
        f"candidate {b.errors}/{b.requests} = {b.errors / b.requests:.2%}",
    )
    return _verdict(
        metric,
        float(est),
        float(lo),
        float(hi),
        tolerance,
        tolerance_kind,
        "increase",
        a.requests,
        b.requests,
        alpha,
        notes,
    )


def error_rate_confirmatory(
    control: ArmAggregates,
    candidate: ArmAggregates,
    *,
    tolerance: float,
    tolerance_kind: ToleranceKind = "relative",
    alpha: float,
) -> tuple[float, float]:
    """(lower, upper): the confirmatory look's one-sided fixed-sample bounds, each at alpha.

    Same estimate and cluster-robust variance as :func:`error_rate_test`, with the normal
    quantile in place of the sequence's width. Valid once per stage, at the step's minimum
    sample (:data:`CONFIRMATORY_SHARE`); the caller keeps it in the running intersection.
    """
    a, b = control, candidate
    ca, cb = a.error_clusters, b.error_clusters
    _, lo, hi = error_rate_kernel(
        a.errors, a.requests, ca.units, ca.sum_yy, ca.sum_yn, ca.sum_nn,
        b.errors, b.requests, cb.units, cb.sum_yy, cb.sum_yn, cb.sum_nn,
        alpha=alpha, kind=tolerance_kind, fixed=True,
        null_ratio=tolerance if tolerance_kind == "relative" else None,
    )  # fmt: skip
    return float(lo), float(hi)


def _safe_ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return math.inf if num > 0 else math.nan


# --- quantiles -----------------------------------------------------------------------


def _log_mixture(k: float, t: int, p: float, upper: bool) -> float:
    """log of the one-sided Beta-binomial mixture martingale at k successes in t trials.

    The alternatives r are restricted to one side of p (r > p for ``upper``), which makes
    the mixture monotone in k and a supermartingale under every null on the other side.
    """
    rho = QUANTILE_PRIOR_CONCENTRATION
    a, b = p * rho, (1 - p) * rho
    tail = special.betaincc if upper else special.betainc
    with np.errstate(divide="ignore"):
        log_mass = float(np.log(tail(a + k, b + t - k, p)))
        log_prior = float(np.log(tail(a, b, p)))
    return (
        float(special.betaln(a + k, b + t - k))
        - float(special.betaln(a, b))
        + log_mass
        - log_prior
        - k * math.log(p)
        - (t - k) * math.log1p(-p)
    )


@lru_cache(maxsize=65536)
def quantile_ranks(t: int, p: float, alpha: float) -> tuple[int, int]:
    """(j, k): 1-based ranks with X_(j) <= q_p <= X_(k) for all t, each w.p. >= 1 - alpha.

    Howard & Ramdas 1906.09712 (Thm 1 with the beta-binomial boundary): the number of
    observations below q_p is a Binomial(t, <= p) walk; k is the smallest count at which the
    one-sided mixture reaches 1/alpha (so seeing k values below q_p is already
    implausible), j - 1 the largest count at which the lower mixture does. k = t + 1 means
    no finite upper bound yet; j = 0 no lower bound.
    """
    if t <= 0:
        return 0, 1
    level = math.log(1.0 / alpha)
    lo, hi = 0, t + 1
    # Smallest k in [0, t] with the upper mixture >= 1/alpha (t + 1 if none): monotone in k.
    while lo < hi:
        mid = (lo + hi) // 2
        if _log_mixture(mid, t, p, True) >= level:
            hi = mid
        else:
            lo = mid + 1
    k = lo
    # Largest count c in [0, t] with the lower mixture >= 1/alpha (-1 if none); j = c + 1.
    lo, hi = -1, t
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _log_mixture(mid, t, p, False) >= level:
            lo = mid
        else:
            hi = mid - 1
    return lo + 1, k


def order_statistic_buckets(
    cum_counts: npt.NDArray[np.int64], rank: npt.ArrayLike
) -> npt.NDArray[np.int64]:
    """Index of the bucket holding the rank-th smallest value, per row of cumulative counts.

    ``cum_counts`` has shape (rows, buckets); column 0 may be a zero bucket. Rank 0 gives -1
    (below everything), a rank above the row total gives ``buckets`` (above everything).
    """
    r = np.asarray(rank, dtype=np.int64).reshape(-1, 1)
    idx = np.sum(cum_counts < r, axis=1).astype(np.int64)
    return np.where(r[:, 0] <= 0, -1, idx)


def quantile_bounds_from_cumulative(
    lower_edges: FloatArray,
    upper_edges: FloatArray,
    cum_counts: npt.NDArray[np.int64],
    n: int,
    p: float,
    alpha: float,
) -> tuple[FloatArray, FloatArray]:
    """Per row: (lower, upper) confidence-sequence bounds on the p-quantile, each side at
    level alpha, conservative at bucket edges (lower edge for the lower bound, upper edge
    for the upper)."""
    j, k = quantile_ranks(int(n), float(p), float(alpha))
    nb = len(lower_edges)
    lo_idx = order_statistic_buckets(cum_counts, j)
    hi_idx = order_statistic_buckets(cum_counts, k)
    lower_ext = np.concatenate(([0.0], lower_edges, [math.inf]))
    upper_ext = np.concatenate(([0.0], upper_edges, [math.inf]))
    lower = lower_ext[np.clip(lo_idx, -1, nb) + 1]
    upper = upper_ext[np.clip(hi_idx, -1, nb) + 1]
    return lower, upper


def _point_quantile(keys: npt.NDArray[np.int64], cum: npt.NDArray[np.int64], p: float) -> float:
    n = int(cum[-1])
    rank = max(1, math.ceil(p * n))
    idx = int(np.searchsorted(cum, rank))
    if idx == 0:
        return 0.0
    return bucket_value(int(keys[idx - 1]))


def quantile_interval(buckets: Buckets, p: float, alpha: float) -> tuple[float, float, float]:
    """(estimate, lower, upper) for one arm's p-quantile from its buckets."""
    keys, counts = buckets.arrays()
    lower_edges, upper_edges = bucket_bounds(keys)
    # The zero bucket is prepended with edges [0, 0].
    lower_edges = np.concatenate(([0.0], lower_edges))
    upper_edges = np.concatenate(([0.0], upper_edges))
    cum = np.cumsum(np.concatenate(([buckets.zero_count], counts)))
    n = int(cum[-1]) if cum.size else 0
    if n == 0:
        return math.nan, 0.0, math.inf
    lo, hi = quantile_bounds_from_cumulative(lower_edges, upper_edges, cum[None, :], n, p, alpha)
    est = _point_quantile(keys, cum, p)
    return est, float(lo[0]), float(hi[0])


def quantile_test(
    metric: str,
    control: Buckets,
    candidate: Buckets,
    *,
    quantile: float,
    tolerance: float,
    tolerance_kind: ToleranceKind = "relative",
    alpha: float,
) -> Verdict:
    """Candidate vs control p-quantile (latency, time to first token).

    Each arm gets an exact quantile confidence sequence at alpha/2 per side (Howard &
    Ramdas 1906.09712); the union bound makes "candidate lower > tolerance x control
    upper" wrong with probability <= alpha, whatever the distributions, tails or
    dependence between arms (so it is also valid in shadow mode, where both arms see the
    same requests). The ratio bounds are lower_b / upper_a and upper_b / lower_a.
    """
    half = alpha / 2.0
    n_a, n_b = control.total, candidate.total
    est_a, lo_a, hi_a = quantile_interval(control, quantile, half)
    est_b, lo_b, hi_b = quantile_interval(candidate, quantile, half)
    if not (math.isfinite(hi_a) and lo_b > 0) and not (math.isfinite(hi_b) and lo_a > 0):
        first = _first_finite(quantile, half)
        return _not_enough(
            metric,
            tolerance,
            tolerance_kind,
            "increase",
            n_a,
            n_b,
            alpha,
            f"{n_a} control and {n_b} candidate samples; the bounds are finite from "
            f"{first} per arm",
        )
    if tolerance_kind == "relative":
        est = _safe_ratio(est_b, est_a)
        lower = lo_b / hi_a if hi_a > 0 else math.inf
        upper = hi_b / lo_a if lo_a > 0 else math.inf
    else:
        est = est_b - est_a
        lower = lo_b - hi_a
        upper = hi_b - lo_a
    notes = (
        f"control p{round(quantile * 100)} {est_a:.0f} ms in [{lo_a:.0f}, {_fmt_ms(hi_a)}], "
        f"candidate {est_b:.0f} ms in [{lo_b:.0f}, {_fmt_ms(hi_b)}]",
    )
    return _verdict(
        metric,
        est,
        lower,
        upper,
        tolerance,
        tolerance_kind,
        "increase",
        n_a,
        n_b,
        alpha,
        notes,
    )


def _fmt_ms(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) else "unbounded"


@lru_cache(maxsize=256)
def _first_finite(p: float, alpha: float) -> int:
    """Smallest sample size at which the upper quantile bound is finite."""
    lo, hi = 1, 1
    while quantile_ranks(hi, p, alpha)[1] > hi:
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if quantile_ranks(mid, p, alpha)[1] <= mid:
            hi = mid
        else:
            lo = mid + 1
    return lo


def minimum_samples_for_quantile(p: float, alpha: float) -> int:
    """Per-arm samples before a quantile test can conclude anything (alpha for the test)."""
    return _first_finite(p, alpha / 2.0)


# --- means: satisfaction and cost ----------------------------------------------------


def mean_kernel(
    n_a: npt.ArrayLike,
    s_a: npt.ArrayLike,
    ss_a: npt.ArrayLike,
    g_a: npt.ArrayLike,
    yy_a: npt.ArrayLike,
    yn_a: npt.ArrayLike,
    nn_a: npt.ArrayLike,
    n_b: npt.ArrayLike,
    s_b: npt.ArrayLike,
    ss_b: npt.ArrayLike,
    g_b: npt.ArrayLike,
    yy_b: npt.ArrayLike,
    yn_b: npt.ArrayLike,
    nn_b: npt.ArrayLike,
    *,
    alpha: float,
    log_ratio: bool,
    n_star: float = DEFAULT_N_STAR,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(estimate, lower, upper) for mean_b vs mean_a, vectorised.

    ``log_ratio``: the ratio of means via the log (delta method, s^2 / (n m^2) per arm);
    otherwise the difference. Variances are cluster-robust over units, floored at the
    per-observation variance.
    """
    na_, sa, ssa, nb, sb, ssb = (
        np.asarray(v, dtype=np.float64) for v in (n_a, s_a, ss_a, n_b, s_b, ss_b)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        ma = sa / np.maximum(na_, 1.0)
        mb = sb / np.maximum(nb, 1.0)
        var_obs_a = np.maximum(ssa / np.maximum(na_, 1.0) - ma * ma, 0.0) * (
            na_ / np.maximum(na_ - 1.0, 1.0)
        )
        var_obs_b = np.maximum(ssb / np.maximum(nb, 1.0) - mb * mb, 0.0) * (
            nb / np.maximum(nb - 1.0, 1.0)
        )
        va = ratio_cluster_variance(
            sa, na_, g_a, yy_a, yn_a, nn_a, var_obs_a / np.maximum(na_, 1.0)
        )
        vb = ratio_cluster_variance(sb, nb, g_b, yy_b, yn_b, nn_b, var_obs_b / np.maximum(nb, 1.0))
        total = na_ + nb
        if log_ratio:
            est = np.log(mb) - np.log(ma)
            var = va / (ma * ma) + vb / (mb * mb)
            width = mixture_half_width(np.sqrt(var), total, alpha, n_star)
            return np.exp(est), np.exp(est - width), np.exp(est + width)
        est = mb - ma
        width = mixture_half_width(np.sqrt(va + vb), total, alpha, n_star)
        return est, est - width, est + width


MeanSums = tuple[int, float, float, ClusterSums]  # n, sum, sum of squares, unit clusters


def _mean_bounds(
    a: MeanSums, b: MeanSums, *, alpha: float, log_ratio: bool, n_star: float
) -> tuple[float, float, float]:
    """:func:`mean_kernel` on one arm pair's sums (satisfaction, cost)."""
    (na, sa, ssa, ca), (nb, sb, ssb, cb) = a, b
    est, lo, hi = mean_kernel(
        na, sa, ssa, ca.units, ca.sum_yy, ca.sum_yn, ca.sum_nn,
        nb, sb, ssb, cb.units, cb.sum_yy, cb.sum_yn, cb.sum_nn,
        alpha=alpha, log_ratio=log_ratio, n_star=n_star,
    )  # fmt: skip
    return float(est), float(lo), float(hi)


def satisfaction_test(
    control: ArmAggregates,
    candidate: ArmAggregates,
    *,
    tolerance: float,
    tolerance_kind: ToleranceKind = "absolute",
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
    min_feedback: int = MIN_FEEDBACK_PER_ARM,
) -> Verdict:
    """Candidate - control mean feedback on the [0, 1] scale; harm is a drop > tolerance.

    The mean is per feedback with the unit-level (cluster) variance: a user who rates
    every answer counts as one noisy unit, not as hundreds of independent ratings. The
    feedback *rate* is tested alongside (two-sided, same alpha): when the arms' users
    answer at different rates the scores compare different self-selected groups, so a
    clear rate difference is noted and stops the verdict from reading "inside".
    """
    metric = "satisfaction"
    a, b = control, candidate
    if tolerance_kind != "absolute":
        raise ValueError("satisfaction tolerances are absolute drops on the 0-1 scale")
    if a.feedback_n < min_feedback or b.feedback_n < min_feedback:
        return _not_enough(
            metric,
            tolerance,
            tolerance_kind,
            "decrease",
            a.feedback_n,
            b.feedback_n,
            alpha,
            f"{a.feedback_n} control and {b.feedback_n} candidate feedbacks; the test "
            f"needs {min_feedback} per arm",
        )
    est, lo, hi = _mean_bounds(
        (a.feedback_n, a.feedback_sum, a.feedback_sum_sq, a.feedback_clusters),
        (b.feedback_n, b.feedback_sum, b.feedback_sum_sq, b.feedback_clusters),
        alpha=alpha,
        log_ratio=False,
        n_star=n_star,
    )
    notes: list[str] = []
    rate_est, rate_lo, rate_hi = feedback_rate_interval(control, candidate, alpha=alpha)
    notes.append(
        f"feedback rate: control {a.feedback_rate:.2%}, candidate {b.feedback_rate:.2%} "
        f"(ratio {rate_est:.2f}, in [{rate_lo:.2f}, {rate_hi:.2f}])"
    )
    status: Status | None = None
    if rate_lo > 1.0 or rate_hi < 1.0:
        notes.append("the arms' feedback rates differ: scores may compare different kinds of users")
        base = classify(float(est), float(lo), float(hi), -tolerance, "decrease")
        if base == "inside_tolerance":
            status = "inconclusive"
    return _verdict(
        metric,
        float(est),
        float(lo),
        float(hi),
        tolerance,
        tolerance_kind,
        "decrease",
        a.feedback_n,
        b.feedback_n,
        alpha,
        tuple(notes),
        status,
    )


def feedback_rate_interval(
    control: ArmAggregates,
    candidate: ArmAggregates,
    *,
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
) -> tuple[float, float, float]:
    """(ratio, lower, upper) of candidate/control feedback rate, two-sided at alpha."""
    a, b = control, candidate
    ca, cb = a.feedback_rate_clusters, b.feedback_rate_clusters
    est, lo, hi = error_rate_kernel(
        a.feedback_n,
        a.requests,
        ca.units,
        ca.sum_yy,
        ca.sum_yn,
        ca.sum_nn,
        b.feedback_n,
        b.requests,
        cb.units,
        cb.sum_yy,
        cb.sum_yn,
        cb.sum_nn,
        alpha=alpha / 2.0,
        kind="relative",
        n_star=n_star,
    )
    return float(est), float(lo), float(hi)


def cost_test(
    control: ArmAggregates,
    candidate: ArmAggregates,
    *,
    tolerance: float,
    tolerance_kind: ToleranceKind = "relative",
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
    min_samples: int = MIN_COST_PER_ARM,
) -> Verdict:
    """Candidate vs control mean cost per request (requests with a known cost only).

    Relative: the log mean-ratio confidence sequence (delta method); absolute: the
    difference in currency units. Cluster-robust like the others.
    """
    metric = "cost_per_request"
    a, b = control, candidate
    if a.cost_n < min_samples or b.cost_n < min_samples or a.cost_sum <= 0:
        return _not_enough(
            metric,
            tolerance,
            tolerance_kind,
            "increase",
            a.cost_n,
            b.cost_n,
            alpha,
            f"{a.cost_n} control and {b.cost_n} candidate requests with a known cost; the "
            f"test needs {min_samples} per arm",
        )
    est, lo, hi = _mean_bounds(
        (a.cost_n, a.cost_sum, a.cost_sum_sq, a.cost_clusters),
        (b.cost_n, b.cost_sum, b.cost_sum_sq, b.cost_clusters),
        alpha=alpha,
        log_ratio=tolerance_kind == "relative",
        n_star=n_star,
    )
    return _verdict(
        metric,
        float(est),
        float(lo),
        float(hi),
        tolerance,
        tolerance_kind,
        "increase",
        a.cost_n,
        b.cost_n,
        alpha,
    )


# --- sample ratio --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """Sequential sample-ratio check: does the candidate's share match the weight?"""

    control: int
    candidate: int
    expected_share: float
    observed_share: float
    e_value: float
    alpha: float
    mismatch: bool
    summary: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the audit trail."""
        return {
            "control": self.control,
            "candidate": self.candidate,
            "expected_share": _json_float(self.expected_share),
            "observed_share": _json_float(self.observed_share),
            "e_value": _json_float(self.e_value),
            "alpha": _json_float(self.alpha),
            "mismatch": self.mismatch,
            "summary": self.summary,
        }


def srm_log_e_value(
    control: npt.ArrayLike, candidate: npt.ArrayLike, expected_share: float
) -> FloatArray:
    """log e-value of the Beta-binomial mixture against candidate share == expected.

    Conjugate mixture martingale (Lindon & Malek 2011.03567, multinomial case with two
    cells): valid at every look, two-sided, no minimum sample.
    """
    x = np.asarray(candidate, dtype=np.float64)
    n = x + np.asarray(control, dtype=np.float64)
    w = float(expected_share)
    a, b = w * SRM_PRIOR_CONCENTRATION, (1 - w) * SRM_PRIOR_CONCENTRATION
    return np.asarray(
        special.betaln(a + x, b + n - x)
        - special.betaln(a, b)
        - x * math.log(w)
        - (n - x) * math.log1p(-w),
        dtype=np.float64,
    )


def sample_ratio_test(
    control_units: int, candidate_units: int, *, expected_share: float, alpha: float = 0.001
) -> SampleRatio:
    """Sample-ratio mismatch from unit counts (units are assigned independently by hash,
    so each is a Bernoulli(weight) draw; request counts are not, heavy users cluster)."""
    total = control_units + candidate_units
    observed = candidate_units / total if total else math.nan
    if not 0.0 < expected_share < 1.0 or total == 0:
        e_value = 1.0
    else:
        e_value = float(
            np.exp(
                min(700.0, float(srm_log_e_value(control_units, candidate_units, expected_share)))
            )
        )
    mismatch = e_value >= 1.0 / alpha
    summary = (
        f"candidate has {observed:.2%} of {total} units, expected {expected_share:.2%}; "
        f"e-value {e_value:.3g} (mismatch at {1 / alpha:.0f}): "
        + ("mismatch" if mismatch else "consistent")
        if total
        else "no units yet"
    )
    return SampleRatio(
        control=control_units,
        candidate=candidate_units,
        expected_share=expected_share,
        observed_share=observed,
        e_value=e_value,
        alpha=alpha,
        mismatch=mismatch,
        summary=summary,
    )


# --- shadow mode: paired tests -------------------------------------------------------


def paired_error_test(
    pairs: PairedErrors,
    *,
    tolerance: float,
    tolerance_kind: ToleranceKind = "relative",
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
    min_discordant: int = MIN_ERRORS,
) -> Verdict:
    """Shadow mode: both models answered the same requests (McNemar-style).

    Only discordant pairs carry information about the difference; the paired variance of
    the log risk ratio, (b + c) / ((a + d)(b + d)) for discordant b, c and concordant errors
    d, is much smaller than two independent arms' when errors are request-driven.
    """
    metric = "error_rate"
    n = pairs.n
    b, c, d = pairs.control_only, pairs.candidate_only, pairs.both
    e_a, e_b = b + d, c + d
    if b + c < min_discordant:
        return _not_enough(
            metric,
            tolerance,
            tolerance_kind,
            "increase",
            n,
            n,
            alpha,
            f"{b + c} requests where exactly one model failed; the test needs {min_discordant}",
        )
    if tolerance_kind == "relative":
        pa, pb = (e_a + 0.5) / (n + 0.5), (e_b + 0.5) / (n + 0.5)
        est = math.log(pb / pa)
        var = (b + c + 1.0) / ((e_a + 0.5) * (e_b + 0.5))
        width = float(mixture_half_width(math.sqrt(var), 2 * n, alpha, n_star))
        lo, hi = math.exp(est - width), math.exp(est + width)
        est = math.exp(est)
    else:
        est = (c - b) / n
        var = ((b + c) / n - est * est) / n
        width = float(mixture_half_width(math.sqrt(max(var, 0.0)), 2 * n, alpha, n_star))
        lo, hi = est - width, est + width
    return _verdict(metric, est, lo, hi, tolerance, tolerance_kind, "increase", n, n, alpha)


def paired_difference_test(
    metric: str,
    diffs: PairedDiffs,
    *,
    tolerance: float,
    harm: Harm,
    log_scale: bool = False,
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
    min_pairs: int = 30,
) -> Verdict:
    """Shadow mode: mean paired difference d = candidate - control.

    ``log_scale``: d is a log ratio (log latency), reported and tolerated as a ratio of
    geometric means; otherwise an absolute difference (judge score). Variance over units.
    """
    kind: ToleranceKind = "relative" if log_scale else "absolute"
    if diffs.n < min_pairs:
        return _not_enough(
            metric,
            tolerance,
            kind,
            harm,
            diffs.n,
            diffs.n,
            alpha,
            f"{diffs.n} pairs; the test needs {min_pairs}",
        )
    n = float(diffs.n)
    mean = diffs.sum / n
    var_obs = max(diffs.sum_sq / n - mean * mean, 0.0) * n / max(n - 1.0, 1.0)
    cl = diffs.clusters
    var = float(
        ratio_cluster_variance(diffs.sum, n, cl.units, cl.sum_yy, cl.sum_yn, cl.sum_nn, var_obs / n)
    )
    width = float(mixture_half_width(math.sqrt(var), n, alpha, n_star))
    est, lo, hi = mean, mean - width, mean + width
    if log_scale:
        est, lo, hi = math.exp(est), math.exp(lo), math.exp(hi)
    return _verdict(metric, est, lo, hi, tolerance, kind, harm, diffs.n, diffs.n, alpha)


# --- one entry point per guardrail metric --------------------------------------------

QUANTILES = {"latency_p95": 0.95, "latency_p99": 0.99, "ttft_p95": 0.95}


def evaluate_metric(
    metric: str,
    control: ArmAggregates,
    candidate: ArmAggregates,
    *,
    tolerance: float,
    tolerance_kind: ToleranceKind,
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
) -> Verdict:
    """Run the test for a guardrail metric (one of :data:`METRICS`)."""
    if metric == "error_rate":
        return error_rate_test(
            control,
            candidate,
            tolerance=tolerance,
            tolerance_kind=tolerance_kind,
            alpha=alpha,
            n_star=n_star,
        )
    if metric in QUANTILES:
        source = "ttft" if metric.startswith("ttft") else "latency"
        return quantile_test(
            metric,
            getattr(control, source),
            getattr(candidate, source),
            quantile=QUANTILES[metric],
            tolerance=tolerance,
            tolerance_kind=tolerance_kind,
            alpha=alpha,
        )
    if metric == "satisfaction":
        return satisfaction_test(
            control,
            candidate,
            tolerance=tolerance,
            tolerance_kind=tolerance_kind,
            alpha=alpha,
            n_star=n_star,
        )
    if metric == "cost_per_request":
        return cost_test(
            control,
            candidate,
            tolerance=tolerance,
            tolerance_kind=tolerance_kind,
            alpha=alpha,
            n_star=n_star,
        )
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
