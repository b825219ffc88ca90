"""Means: user satisfaction and cost per request, confidence sequences on unit-level sums."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from migrations_app.guardrails.stats.error_rate import error_rate_kernel
from migrations_app.guardrails.stats.inputs import (
    ArmAggregates,
    ClusterSums,
    FloatArray,
    RatioArm,
)
from migrations_app.guardrails.stats.sequences import (
    DEFAULT_N_STAR,
    critical_value,
    ratio_cluster_variance,
    welch_df,
)
from migrations_app.guardrails.stats.verdicts import (
    Status,
    ToleranceKind,
    Verdict,
    _not_enough,
    _verdict,
    classify,
    tested_pairs,
)

MIN_FEEDBACK_PER_ARM = 50


MIN_COST_PER_ARM = 30


def mean_kernel(
    a: RatioArm,
    b: RatioArm,
    *,
    alpha: float,
    log_ratio: bool,
    n_star: float = DEFAULT_N_STAR,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(estimate, lower, upper) for mean_b vs mean_a, vectorised (Y = sum of the values,
    N = their count, per unit).

    ``log_ratio``: the ratio of means via the log (delta method, s^2 / (n m^2) per arm);
    otherwise the difference. Variances are cluster-robust over units with the leverage
    correction and degrees of freedom of :func:`ratio_cluster_variance`, floored at the
    per-observation variance.
    """
    na_, sa, ssa, nb, sb, ssb = (
        np.asarray(v, dtype=np.float64) for v in (a.n, a.y, a.sum_sq, b.n, b.y, b.sum_sq)
    )
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ma = sa / np.maximum(na_, 1.0)
        mb = sb / np.maximum(nb, 1.0)
        var_obs_a = np.maximum(ssa / np.maximum(na_, 1.0) - ma * ma, 0.0) * (
            na_ / np.maximum(na_ - 1.0, 1.0)
        )
        var_obs_b = np.maximum(ssb / np.maximum(nb, 1.0) - mb * mb, 0.0) * (
            nb / np.maximum(nb - 1.0, 1.0)
        )
        va, df_a = ratio_cluster_variance(a, var_obs_a / np.maximum(na_, 1.0))
        vb, df_b = ratio_cluster_variance(b, var_obs_b / np.maximum(nb, 1.0))
        total = na_ + nb
        if log_ratio:
            est = np.log(mb) - np.log(ma)
            wa, wb = va / (ma * ma), vb / (mb * mb)
            c = critical_value(total, alpha, welch_df(wa, df_a, wb, df_b), n_star=n_star)
            width = np.sqrt(wa + wb) * c
            return np.exp(est), np.exp(est - width), np.exp(est + width)
        est = mb - ma
        c = critical_value(total, alpha, welch_df(va, df_a, vb, df_b), n_star=n_star)
        width = np.sqrt(va + vb) * c
        return est, est - width, est + width


MeanSums = tuple[int, float, float, ClusterSums]  # n, sum, sum of squares, unit clusters


def _mean_bounds(
    a: MeanSums, b: MeanSums, *, alpha: float, log_ratio: bool, n_star: float
) -> tuple[float, float, float]:
    """:func:`mean_kernel` on one arm pair's sums (satisfaction, cost)."""
    (na, sa, ssa, ca), (nb, sb, ssb, cb) = a, b
    est, lo, hi = mean_kernel(
        RatioArm.of(sa, na, ca, ssa),
        RatioArm.of(sb, nb, cb, ssb),
        alpha=alpha,
        log_ratio=log_ratio,
        n_star=n_star,
    )
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
    est, lo, hi = error_rate_kernel(
        RatioArm.of(a.feedback_n, a.requests, a.feedback_rate_clusters),
        RatioArm.of(b.feedback_n, b.requests, b.feedback_rate_clusters),
        alpha=alpha / 2.0,
        kind="relative",
        n_star=n_star,
        null=1.0,
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
    (verdict,) = cost_tests(
        [(control, candidate)], tolerance=tolerance, tolerance_kind=tolerance_kind,
        alpha=alpha, n_star=n_star, min_samples=min_samples,
    )  # fmt: skip
    return verdict


def cost_tests(
    pairs: Sequence[tuple[ArmAggregates, ArmAggregates]],
    *,
    tolerance: float,
    tolerance_kind: ToleranceKind = "relative",
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
    min_samples: int = MIN_COST_PER_ARM,
) -> list[Verdict]:
    """:func:`cost_test` for many pairs at one alpha (a plan's segments), the kernel run
    once over all of them."""
    metric = "cost_per_request"

    def refuse(a: ArmAggregates, b: ArmAggregates) -> Verdict | None:
        if not (a.cost_n < min_samples or b.cost_n < min_samples or a.cost_sum <= 0):
            return None
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

    def kernel(ready: Sequence[tuple[ArmAggregates, ArmAggregates]]) -> tuple[FloatArray, ...]:
        return mean_kernel(
            RatioArm.stack([_costs(a) for a, _ in ready]),
            RatioArm.stack([_costs(b) for _, b in ready]),
            alpha=alpha,
            log_ratio=tolerance_kind == "relative",
            n_star=n_star,
        )

    def conclude(a: ArmAggregates, b: ArmAggregates, est: float, lo: float, hi: float) -> Verdict:
        return _verdict(
            metric, est, lo, hi, tolerance, tolerance_kind, "increase", a.cost_n, b.cost_n, alpha
        )

    return tested_pairs(pairs, refuse, kernel, conclude)


def _costs(arm: ArmAggregates) -> RatioArm:
    return RatioArm.of(arm.cost_sum, arm.cost_n, arm.cost_clusters, arm.cost_sum_sq)
