"""One shape for every per-request metric (reference/quality.md): the application's own metrics,
the answer checks, and any score a later guardrail adds (a judge's), tested the same way.

A request-level value x (0/1 for a rate, a bounded number for a mean) belongs to a unit. Per
arm the caller keeps :class:`MetricSums`: the count, the sum, the sum of squares and the unit
sums of :class:`ClusterSums` (Y = the unit's sum of x, N = its count), all additive across
windows. The estimate is the ratio of sums; its variance is the cluster-robust jackknife with
Student's t on the effective number of units (:func:`ratio_cluster_variance`), never the
request-level one. Two settings:

- per arm (a split stage): :func:`metric_test` compares the candidate's arm with control's;
- paired (a shadow stage, both models answered the same requests): :func:`paired_metric_test`
  tests the per-request difference, whose variance lacks the between-request spread the two
  arms share. :class:`PairedSums` keeps both arms' sums and the difference's, for the same
  pairs, so the covariance of the two means follows from three variances.

Absolute tolerances test the difference of means; relative ones the ratio, by Fieller's
bounds for rates and paired means (a rate near 0 makes the log ratio's delta method unstable,
see ``error_rate_kernel``) and by the log ratio for unpaired means (as the cost test does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np

from migrations_app.guardrails.stats.error_rate import rate_difference_bounds, rate_ratio_bounds
from migrations_app.guardrails.stats.inputs import FloatArray, MetricSums, PairedSums, RatioArm
from migrations_app.guardrails.stats.means import mean_kernel
from migrations_app.guardrails.stats.sequences import (
    DEFAULT_N_STAR,
    critical_value,
    ratio_cluster_variance,
    welch_df,
)
from migrations_app.guardrails.stats.verdicts import (
    Harm,
    ToleranceKind,
    Verdict,
    _not_enough,
    _verdict,
    threshold,
)

MetricKind = Literal["rate", "mean"]

#: Values per arm (pairs, in shadow) before a metric's test may act: below it the unit-level
#: variance of a few units means little. A guardrail's own minimum may ask for more.
MIN_METRIC_SAMPLES = 30


def _obs_variance(s: MetricSums, kind: MetricKind, value_range: float) -> float:
    """The per-value variance, with a floor that keeps a few identical values from claiming
    certainty: for a rate that of (x + 1) / (n + 2) (Agresti-Coull's shrinkage: zero events
    in n is not a zero rate), for a mean a quarter of the range squared over n + 1 (one
    pseudo-value at each end)."""
    return float(_obs_variance_v(s.ratio_arm(), kind, value_range))


def _obs_variance_v(arm: RatioArm, kind: MetricKind, value_range: float) -> FloatArray:
    """:func:`_obs_variance` over arrays (the simulations' rollouts x looks)."""
    n_raw, total, sum_sq = (np.asarray(v, dtype=np.float64) for v in (arm.n, arm.y, arm.sum_sq))
    n = np.maximum(n_raw, 1.0)
    m = total / n
    var = np.maximum(sum_sq / n - m * m, 0.0) * n / np.maximum(n - 1.0, 1.0)
    if kind == "rate":
        p = (total + 1.0) / (n + 2.0)
        return np.asarray(np.maximum(var, p * (1.0 - p)), dtype=np.float64)
    return np.asarray(np.maximum(var, value_range * value_range / 4.0 / (n + 1.0)))


def _mean_variance(s: MetricSums, kind: MetricKind, value_range: float) -> tuple[float, float]:
    """(variance of the arm's mean, degrees of freedom): unit-level, floored per value."""
    var, df = _mean_variance_v(s.ratio_arm(), kind, value_range)
    return float(var), float(df)


def _mean_variance_v(
    arm: RatioArm, kind: MetricKind, value_range: float
) -> tuple[FloatArray, FloatArray]:
    floor = _obs_variance_v(arm, kind, value_range) / np.maximum(
        np.asarray(arm.n, dtype=np.float64), 1.0
    )
    return ratio_cluster_variance(arm, floor)


def difference_kernel(
    control: RatioArm,
    candidate: RatioArm,
    *,
    kind: MetricKind,
    alpha: float,
    value_range: float = 1.0,
    n_star: float = DEFAULT_N_STAR,
    null: float | None = None,
    fixed: bool = False,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(difference of means, lower, upper), candidate - control, per arm: what
    :func:`metric_kernel` computes for an absolute tolerance, vectorised (each field of the
    arms may be an array of rollouts x looks in the simulations). A rate's bounds are the
    error rate's (:func:`rate_difference_bounds`, with its score-type floor at ``null``,
    the verdict's threshold). ``fixed``: the fixed-sample bounds of the confirmatory look
    (:func:`metric_confirmatory`)."""
    va, df_a = _mean_variance_v(control, kind, value_range)
    vb, df_b = _mean_variance_v(candidate, kind, value_range)
    na, nb = (np.asarray(v, dtype=np.float64) for v in (control.n, candidate.n))
    with np.errstate(invalid="ignore", divide="ignore"):
        ma = np.asarray(control.y, dtype=np.float64) / np.maximum(na, 1.0)
        mb = np.asarray(candidate.y, dtype=np.float64) / np.maximum(nb, 1.0)
    est = mb - ma
    if kind == "rate":
        lo, hi = rate_difference_bounds(
            control, candidate,
            _obs_variance_v(control, kind, value_range) / np.maximum(na, 1.0),
            _obs_variance_v(candidate, kind, value_range) / np.maximum(nb, 1.0),
            alpha=alpha, n_star=n_star, fixed=fixed, null_difference=null,
        )  # fmt: skip
        return est, lo, hi
    c = critical_value(na + nb, alpha, welch_df(va, df_a, vb, df_b), n_star=n_star, fixed=fixed)
    width = np.sqrt(va + vb) * c
    return est, est - width, est + width


def rate_ratio_kernel(
    control: RatioArm,
    candidate: RatioArm,
    *,
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
    null_ratio: float | None = None,
    fixed: bool = False,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(ratio of the +0.5-corrected rates, lower, upper), candidate / control, per arm, of a
    rate metric: what :func:`metric_kernel` computes for a relative tolerance, vectorised.
    Fieller's bounds of the error rate (:func:`rate_ratio_bounds`, with its score-type floor
    at ``null_ratio``), floored per value as :func:`_obs_variance`."""
    na, nb = (np.asarray(v, dtype=np.float64) for v in (control.n, candidate.n))
    lo, hi = rate_ratio_bounds(
        control, candidate,
        _obs_variance_v(control, "rate", 1.0) / np.maximum(na, 1.0),
        _obs_variance_v(candidate, "rate", 1.0) / np.maximum(nb, 1.0),
        alpha=alpha, n_star=n_star, fixed=fixed, null_ratio=null_ratio,
    )  # fmt: skip
    ya, yb = (np.asarray(v, dtype=np.float64) for v in (control.y, candidate.y))
    return (yb + 0.5) / (nb + 0.5) / ((ya + 0.5) / (na + 0.5)), lo, hi


def metric_confirmatory(
    control: RatioArm,
    candidate: RatioArm,
    *,
    tolerance: float,
    tolerance_kind: ToleranceKind,
    harm: Harm,
    alpha: float,
) -> tuple[FloatArray, FloatArray]:
    """(lower, upper): the confirmatory look's one-sided fixed-sample bounds, each at
    ``alpha``, of a rate metric per arm, vectorised: the sequence's own kernel
    (:func:`difference_kernel` or :func:`rate_ratio_kernel`, the same estimate, unit-level
    variance and score-type floor at the threshold) with Student's t quantile in place of
    the sequence's width, as :func:`error_rate_confirmatory` for the error rate. Valid once
    per stage, when both arms first reach the step's minimum sample
    (:func:`confirmatory_look_due`); the engine (guardrails.confirmatory_look) and the simulations
    (tests/guardrails/stats/test_metric_sim.py) both call this."""
    null = threshold(tolerance, tolerance_kind, harm)
    if tolerance_kind == "relative":
        _, lo, hi = rate_ratio_kernel(control, candidate, alpha=alpha, null_ratio=null, fixed=True)
    else:
        _, lo, hi = difference_kernel(
            control, candidate, kind="rate", alpha=alpha, null=null, fixed=True
        )
    return lo, hi


def paired_difference_kernel(
    difference: RatioArm,
    *,
    alpha: float,
    value_range: float = 1.0,
    n_star: float = DEFAULT_N_STAR,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(mean difference, lower, upper) of paired values, vectorised: what :func:`paired_kernel`
    computes for an absolute tolerance. A difference of two values lies in twice their range;
    the floor is then about one pseudo-pair at each extreme (no discordant pair yet is not a
    known zero difference)."""
    var_d, df = _mean_variance_v(difference, "mean", 2.0 * value_range)
    n = np.asarray(difference.n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = np.asarray(difference.y, dtype=np.float64) / np.maximum(n, 1.0)
    width = np.sqrt(var_d) * critical_value(2 * n, alpha, df, n_star=n_star)
    return est, est - width, est + width


def metric_kernel(
    control: MetricSums,
    candidate: MetricSums,
    *,
    kind: MetricKind,
    tolerance_kind: ToleranceKind,
    alpha: float,
    value_range: float = 1.0,
    n_star: float = DEFAULT_N_STAR,
    null: float | None = None,
) -> tuple[float, float, float]:
    """(estimate, lower, upper) of candidate vs control, one-sided bounds each at ``alpha``
    on the normal-mixture confidence sequence. Absolute: the difference of means. Relative:
    the ratio (Fieller for rates, by the error rate's :func:`rate_ratio_bounds`; the log
    ratio for means, as the cost test). ``null``: the verdict's threshold, where a rate's
    bounds take the error rate's score-type floor."""
    a, b = control, candidate
    if tolerance_kind == "relative" and kind == "mean":
        bounds = mean_kernel(
            a.ratio_arm(), b.ratio_arm(), alpha=alpha, log_ratio=True, n_star=n_star
        )
        return float(bounds[0]), float(bounds[1]), float(bounds[2])
    if tolerance_kind == "relative":
        est, lo, hi = rate_ratio_kernel(
            a.ratio_arm(), b.ratio_arm(), alpha=alpha, n_star=n_star, null_ratio=null
        )
        return float(est), float(lo), float(hi)
    est, lo, hi = difference_kernel(
        a.ratio_arm(), b.ratio_arm(), kind=kind, alpha=alpha, value_range=value_range,
        n_star=n_star, null=null,
    )  # fmt: skip
    return float(est), float(lo), float(hi)


def paired_fieller_bounds(
    ma: float, mb: float, va: float, vb: float, cov: float, c: float
) -> tuple[float, float]:
    """(lower, upper) on mb / ma for correlated means: the thetas with
    |mb - theta ma| <= c sd(theta), sd(theta)^2 = vb - 2 theta cov + theta^2 va. The same
    quadratic as ``fieller_bounds`` with the covariance term: A theta^2 - 2 B theta + C = 0,
    A = ma^2 - c^2 va, B = ma mb - c^2 cov, C = mb^2 - c^2 vb; the lower root, rationalised,
    C / (B + sqrt(B^2 - AC)), and the upper (B + sqrt(B^2 - AC)) / A when A > 0."""
    big_a = ma * ma - c * c * va
    big_b = ma * mb - c * c * cov
    big_c = mb * mb - c * c * vb
    root = math.sqrt(max(big_b * big_b - big_a * big_c, 0.0))
    denom = big_b + root
    lower = big_c / denom if big_c > 0 and denom > 0 else 0.0
    upper = denom / big_a if big_a > 0 else math.inf
    return lower, upper


def paired_kernel(
    pairs: PairedSums,
    *,
    kind: MetricKind,
    tolerance_kind: ToleranceKind,
    alpha: float,
    value_range: float = 1.0,
    n_star: float = DEFAULT_N_STAR,
) -> tuple[float, float, float]:
    """(estimate, lower, upper) for paired values. Absolute: the mean difference, a one-sample
    confidence sequence on the per-unit sums of the differences. Relative: Fieller's bounds
    on mean(candidate) / mean(control) with their covariance, from
    Var(diff) = Var(b) + Var(a) - 2 Cov(a, b) on the same units."""
    d = pairs.difference
    n = d.n
    if tolerance_kind == "absolute":
        difference = paired_difference_kernel(
            d.ratio_arm(), alpha=alpha, value_range=value_range, n_star=n_star
        )
        return float(difference[0]), float(difference[1]), float(difference[2])
    # A difference of two values lies in twice their range (paired_difference_kernel).
    var_d, df = _mean_variance(d, "mean", 2.0 * value_range)
    c = float(critical_value(2 * n, alpha, df, n_star=n_star))
    va, _ = _mean_variance(pairs.control, kind, value_range)
    vb, _ = _mean_variance(pairs.candidate, kind, value_range)
    cov = (va + vb - var_d) / 2.0
    ma, mb = pairs.control.mean, pairs.candidate.mean
    lo, hi = paired_fieller_bounds(ma, mb, va, vb, cov, c)
    if kind == "rate":
        ratio = ((pairs.candidate.total + 0.5) / (n + 0.5)) / (
            (pairs.control.total + 0.5) / (n + 0.5)
        )
    else:
        ratio = mb / ma if ma > 0 else math.inf
    return ratio, float(lo), float(hi)


def metric_test(
    metric: str,
    control: MetricSums,
    candidate: MetricSums,
    *,
    kind: MetricKind,
    harm: Harm,
    tolerance: float,
    tolerance_kind: ToleranceKind,
    alpha: float,
    value_range: float = 1.0,
    label: str = "",
    n_star: float = DEFAULT_N_STAR,
    min_samples: int = MIN_METRIC_SAMPLES,
) -> Verdict:
    """Candidate vs control on one per-request metric, per arm (a split stage).

    ``harm``: which direction is bad ("decrease" for a metric where higher is better).
    ``value_range``: upper minus lower bound of a mean's values (1 for a rate), for the
    variance floor. A relative tolerance t: the candidate at most t x control when more is
    worse, at least control / t when less is."""
    a, b = control, candidate
    return _metric_verdict(
        metric, a, b, a.n, b.n,
        kind=kind, harm=harm, tolerance=tolerance, tolerance_kind=tolerance_kind, alpha=alpha,
        label=label, min_samples=min_samples,
        too_few=f"{a.n} control and {b.n} candidate values; the test needs {min_samples} per arm",
        positive=a.total > 0 and b.total > 0,
        needs_positive="a relative tolerance needs positive means in both arms",
        bounds=lambda: metric_kernel(
            a, b, kind=kind, tolerance_kind=tolerance_kind, alpha=alpha,
            value_range=value_range, n_star=n_star,
            null=threshold(tolerance, tolerance_kind, harm),
        ),
        note=f"control {_show(a.mean, kind)} over {a.n}, candidate {_show(b.mean, kind)} over {b.n}",
    )  # fmt: skip


def paired_metric_test(
    metric: str,
    pairs: PairedSums,
    *,
    kind: MetricKind,
    harm: Harm,
    tolerance: float,
    tolerance_kind: ToleranceKind,
    alpha: float,
    value_range: float = 1.0,
    label: str = "",
    n_star: float = DEFAULT_N_STAR,
    min_samples: int = MIN_METRIC_SAMPLES,
) -> Verdict:
    """Candidate vs control on one per-request metric where both answered the same requests
    (a shadow stage): the paired difference, user-level (see :func:`paired_kernel`)."""
    n = pairs.n
    return _metric_verdict(
        metric, pairs.control, pairs.candidate, n, n,
        kind=kind, harm=harm, tolerance=tolerance, tolerance_kind=tolerance_kind, alpha=alpha,
        label=label, min_samples=min_samples,
        too_few=f"{n} requests both models answered; the test needs {min_samples}",
        positive=pairs.control.total > 0,
        needs_positive="a relative tolerance needs a positive control mean",
        bounds=lambda: paired_kernel(
            pairs, kind=kind, tolerance_kind=tolerance_kind, alpha=alpha,
            value_range=value_range, n_star=n_star,
        ),
        note=(
            f"paired over {n} requests: control {_show(pairs.control.mean, kind)}, candidate "
            f"{_show(pairs.candidate.mean, kind)}"
        ),
    )  # fmt: skip


def _metric_verdict(
    metric: str,
    control: MetricSums,
    candidate: MetricSums,
    n_a: int,
    n_b: int,
    *,
    kind: MetricKind,
    harm: Harm,
    tolerance: float,
    tolerance_kind: ToleranceKind,
    alpha: float,
    label: str,
    min_samples: int,
    too_few: str,
    positive: bool,
    needs_positive: str,
    bounds: Callable[[], tuple[float, float, float]],
    note: str,
) -> Verdict:
    """The verdict both settings share: not enough below ``min_samples`` values (``n_a``,
    ``n_b``: per arm, or pairs twice) or, for a relative tolerance on a mean, without
    ``positive`` means; else the ``bounds`` against the tolerance."""
    scale = "points" if kind == "rate" else ""
    if min(n_a, n_b) < min_samples:
        return _not_enough(
                metric, tolerance, tolerance_kind, harm, n_a, n_b, alpha, too_few,
                estimate=_point(control, candidate, tolerance_kind),
            label=label, scale=scale,
        )  # fmt: skip
    if tolerance_kind == "relative" and kind == "mean" and not positive:
        return _not_enough(
                metric, tolerance, tolerance_kind, harm, n_a, n_b, alpha, needs_positive,
            label=label, scale=scale,
        )  # fmt: skip
    est, lo, hi = bounds()
    return _verdict(
        metric, est, lo, hi, tolerance, tolerance_kind, harm, n_a, n_b, alpha, (note,),
        label=label, scale=scale,
    )  # fmt: skip


def _point(a: MetricSums, b: MetricSums, tolerance_kind: ToleranceKind) -> float:
    if not (a.n and b.n):
        return math.nan
    if tolerance_kind == "relative":
        return b.mean / a.mean if a.mean else math.nan
    return b.mean - a.mean


def _show(value: float, kind: MetricKind) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.2%}" if kind == "rate" else f"{value:.4g}"


__all__ = [
    "MIN_METRIC_SAMPLES",
    "difference_kernel",
    "metric_confirmatory",
    "paired_difference_kernel",
    "rate_ratio_kernel",
    "MetricKind",
    "MetricSums",
    "PairedSums",
    "metric_kernel",
    "metric_test",
    "paired_fieller_bounds",
    "paired_kernel",
    "paired_metric_test",
]
