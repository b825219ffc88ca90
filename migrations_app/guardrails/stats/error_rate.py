"""Error rate: the candidate/control risk ratio (or difference) as a confidence sequence on
unit-level sums, and the confirmatory fixed-sample look at the step's planned size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from migrations_app.guardrails.stats.inputs import ArmAggregates, FloatArray, RatioArm
from migrations_app.guardrails.stats.sequences import (
    DEFAULT_N_STAR,
    critical_value,
    ratio_cluster_variance,
    welch_df,
)
from migrations_app.guardrails.stats.verdicts import (
    ToleranceKind,
    Verdict,
    _not_enough,
    _safe_ratio,
    _verdict,
    tested_pairs,
)

# Minimums before a test may act. The reference suggests 10 errors per arm for the log
# risk ratio; with the +0.5 correction and the request-level variance floor the sequence
# stays at or below alpha with no minimum at all (tests/guardrails/stats, base rates down to 0.05 %),
# and a per-arm minimum would blind it exactly when control rarely fails and the candidate
# often does. So: 10 errors across both arms. Satisfaction needs enough feedback for the
# unit-level variance to mean anything.
MIN_ERRORS = 10


def error_rate_kernel(
    a: RatioArm,
    b: RatioArm,
    *,
    alpha: float,
    kind: ToleranceKind,
    n_star: float = DEFAULT_N_STAR,
    fixed: bool = False,
    null: float | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(estimate, lower, upper) for the candidate (b) vs control (a) error rate, vectorised.

    Relative: Fieller's bounds on the ratio p_b / p_a (Fieller 1954) by
    :func:`rate_ratio_bounds`, with the request-level floor p(1 - p)/n at the
    +0.5-corrected rates. The estimate shown is the ratio of the corrected rates.

    Why not the log risk ratio the reference names: its delta-method variance Var(p)/p^2
    moves with the estimate itself, which breaks down when a few sticky heavy users carry
    the errors. At the tolerance, with 40 heavy users (Beta(0.02, 0.98) error rates) beside
    light traffic, the log-ratio sequence rolls back 1.65 % of rollouts at alpha 0.0125
    (above alpha) and a fixed-sample log-ratio test 3-5x its level; the Fieller contrast
    0.03 % and under its level. With independent errors it is also the sharper one: 2x
    errors at 2 % by 12k per arm 0.76 against 0.71, 3x by 3k 0.98 against 0.96
    (tests/guardrails/stats; on the Wald variance: with the null floor every guardrail now
    takes, 0.72 and 0.97, test_unequal_arms.py). The floors keep low base rates honest.

    Absolute: the difference of proportions (:func:`rate_difference_bounds`). Variances are
    cluster-robust (units are sticky, so one heavy user with many errors is one
    observation, not hundreds), with the leverage correction and the degrees of freedom of
    :func:`ratio_cluster_variance`; the two arms' degrees of freedom combine by
    Welch-Satterthwaite (on the relative variances for the ratio) into
    :func:`critical_value`.

    ``fixed``: the one-sided fixed-sample bound (Student's t quantile at 1 - alpha in place
    of the sequence's width). It is valid only when it is computed once, at a sample size
    chosen before the data (the confirmatory look of :func:`confirmatory_share`).

    ``null``: the value a verdict compares the bounds with (the guardrail's threshold, a
    ratio or a difference): the score-type floor of :func:`rate_ratio_bounds` and
    :func:`rate_difference_bounds`. Every guardrail passes it, to the sequence and the look.
    """
    ea, na_, eb, nb = (np.asarray(v, dtype=np.float64) for v in (a.y, a.n, b.y, b.n))
    with np.errstate(invalid="ignore", divide="ignore"):
        if kind == "relative":
            pa_c, pb_c = _corrected(ea, na_), _corrected(eb, nb)
            lo, hi = rate_ratio_bounds(
                a, b, pa_c * (1 - pa_c) / np.maximum(na_, 1.0),
                pb_c * (1 - pb_c) / np.maximum(nb, 1.0),
                alpha=alpha, n_star=n_star, fixed=fixed, null_ratio=null,
            )  # fmt: skip
            return pb_c / pa_c, lo, hi
        pa = np.where(na_ > 0, ea / np.maximum(na_, 1.0), 0.0)
        pb = np.where(nb > 0, eb / np.maximum(nb, 1.0), 0.0)
        lo, hi = rate_difference_bounds(
            a, b, pa * (1 - pa) / np.maximum(na_, 1.0), pb * (1 - pb) / np.maximum(nb, 1.0),
            alpha=alpha, n_star=n_star, fixed=fixed, null_difference=null,
        )  # fmt: skip
        return pb - pa, lo, hi


def _corrected(y: FloatArray, n: FloatArray) -> FloatArray:
    """The +0.5-corrected rate (y + 0.5) / (n + 0.5): never 0, so ratios stay finite."""
    return (y + 0.5) / (n + 0.5)


ArmRate = tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]


def _arms(
    a: RatioArm, b: RatioArm, iid_a: npt.ArrayLike, iid_b: npt.ArrayLike
) -> tuple[ArmRate, ArmRate]:
    """Each arm's (count, requests, rate, cluster-robust variance of the rate, its degrees of
    freedom): what both rate bounds start from."""

    def arm(x: RatioArm, iid: npt.ArrayLike) -> ArmRate:
        y, n = np.asarray(x.y, dtype=np.float64), np.asarray(x.n, dtype=np.float64)
        rate = np.where(n > 0, y / np.maximum(n, 1.0), 0.0)
        var, df = ratio_cluster_variance(x, iid)
        return y, n, rate, var, df

    return arm(a, iid_a), arm(b, iid_b)


def rate_ratio_bounds(
    a: RatioArm,
    b: RatioArm,
    iid_a: npt.ArrayLike,
    iid_b: npt.ArrayLike,
    *,
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
    fixed: bool = False,
    null_ratio: float | None = None,
) -> tuple[FloatArray, FloatArray]:
    """(lower, upper) on the ratio of two arms' rates Y_b/N_b over Y_a/N_a, vectorised: the
    one ratio test of every per-request rate (the error rate, an application's own rate
    metric, the feedback rate).

    For each ratio theta the contrast p_b - theta p_a is a difference of two arms' means,
    so the normal-mixture confidence sequence covers it at every look, with the
    cluster-robust variance Var(p_b) + theta^2 Var(p_a) (:func:`ratio_cluster_variance`,
    floored at ``iid_a``/``iid_b``); the bounds are the thetas it does not reject, closed
    form (:func:`fieller_bounds`). "Lower bound > threshold" is then exactly "the contrast
    at the threshold is positive at every ratio up to it".

    ``null_ratio`` (the threshold the verdict compares with): the contrast's variance there
    is also floored at its value on the null boundary p_b = null_ratio p_a (rates from the
    restricted estimate, times each arm's cluster inflation, :func:`_null_floor`), as in a
    score test. The Wald variance alone is taken at the observed rates, and a small arm's
    rate and variance move together: when a 2 % holdout (control) happens to see few
    errors its variance looks small exactly when the ratio looks large. Measured with 240
    looks (tests/guardrails/stats/test_unequal_arms.py): without the floor a 2 % holdout
    rolls back 2.2 % of A/A runs at alpha 0.0125 and 16 % at the tolerance at 0.05; with
    it 0.0 % and 0.5 %. A fixed-sample test at the tolerance was 18 % over its level at a
    2 % base and 38 % at 0.1 % with balanced arms (binomial counts are skewed to the right,
    and the lattice adds to it); with the floor under (0.96x and 0.86x). A small candidate
    arm (a 5 % first step) is not affected (its variance grows with its own rate), and
    the floor costs little power at balanced splits (test_unequal_arms.py).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        (ea, na, pa, var_a, df_a), (eb, nb, pb, var_b, df_b) = _arms(a, b, iid_a, iid_b)
        pa_c, pb_c = _corrected(ea, na), _corrected(eb, nb)
        df = welch_df(var_a / (pa_c * pa_c), df_a, var_b / (pb_c * pb_c), df_b)
        if null_ratio is not None:
            var_a, var_b = _null_floor(a, b, var_a, var_b, float(null_ratio))
        c = critical_value(na + nb, alpha, df, n_star=n_star, fixed=fixed)
        return fieller_bounds(pa, pb, var_a, var_b, c)


def _null_variance(
    a: RatioArm,
    b: RatioArm,
    var_a: FloatArray,
    var_b: FloatArray,
    rate_a: FloatArray,
    rate_b: FloatArray,
    weight: float,
) -> FloatArray:
    """Var(p_b) + weight^2 Var(p_a) with the arms' rates at ``rate_a``, ``rate_b`` (a point on
    the null boundary), each arm keeping how much more than binomial it varies (its cluster
    inflation over the binomial variance at its +0.5-corrected rate, at least 1)."""
    ea, na, eb, nb = (np.asarray(v, dtype=np.float64) for v in (a.y, a.n, b.y, b.n))
    na1, nb1 = np.maximum(na, 1.0), np.maximum(nb, 1.0)
    pa_c, pb_c = _corrected(ea, na), _corrected(eb, nb)
    inflation_a = np.maximum(1.0, var_a / (pa_c * (1 - pa_c) / na1))
    inflation_b = np.maximum(1.0, var_b / (pb_c * (1 - pb_c) / nb1))
    null_a = inflation_a * rate_a * (1 - rate_a) / na1
    null_b = inflation_b * rate_b * (1 - rate_b) / nb1
    return np.asarray(null_b + weight**2 * null_a, dtype=np.float64)


def _null_floor(
    a: RatioArm, b: RatioArm, var_a: FloatArray, var_b: FloatArray, theta0: float
) -> tuple[FloatArray, FloatArray]:
    ea, na, eb, nb = (np.asarray(v, dtype=np.float64) for v in (a.y, a.n, b.y, b.n))
    # The restricted rate: control's rate if p_b = theta0 p_a, where both are rates.
    p0 = np.clip((ea + eb + 0.5) / (na + theta0 * nb + 0.5), 0.0, min(1.0, 1.0 / theta0))
    null = _null_variance(a, b, var_a, var_b, p0, theta0 * p0, theta0)
    # One factor for both arms: the contrast's variance at theta0 becomes the larger of the
    # two, and the bounds at other ratios stay a Fieller inversion of fixed variances.
    scale = np.maximum(1.0, null / (var_b + theta0**2 * var_a))
    return var_a * scale, var_b * scale


def rate_difference_bounds(
    a: RatioArm,
    b: RatioArm,
    iid_a: npt.ArrayLike,
    iid_b: npt.ArrayLike,
    *,
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
    fixed: bool = False,
    null_difference: float | None = None,
) -> tuple[FloatArray, FloatArray]:
    """(lower, upper) on the difference of two arms' rates p_b - p_a, vectorised: the
    absolute-tolerance twin of :func:`rate_ratio_bounds` (the error rate, an application's
    own rate metric), with the same score-type floor: the variance is at least its value
    on the null boundary p_b = p_a + ``null_difference`` (control's rate restricted to the
    pooled (e_a + e_b - n_b delta) / (n_a + n_b), each arm's cluster inflation kept).

    Without it the Wald variance vanishes with a small arm's rate: a 2 % holdout that has
    seen no error yet has variance 0, and an absolute 1-point tolerance rolled back 31 % of
    A/A runs at alpha 0.0125 and 59 % at the tolerance at 0.05
    (tests/guardrails/stats/test_unequal_arms.py; with the floor under alpha).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        (ea, na, pa, var_a, df_a), (eb, nb, pb, var_b, df_b) = _arms(a, b, iid_a, iid_b)
        df = welch_df(var_a, df_a, var_b, df_b)
        total = var_a + var_b
        if null_difference is not None:
            d0 = float(null_difference)
            p0 = np.clip(
                (ea + eb + 0.5 - nb * d0) / (na + nb + 0.5), max(0.0, -d0), min(1.0, 1.0 - d0)
            )
            total = np.maximum(total, _null_variance(a, b, var_a, var_b, p0, p0 + d0, 1.0))
        c = critical_value(na + nb, alpha, df, n_star=n_star, fixed=fixed)
        width = np.sqrt(total) * c
        est = pb - pa
        return np.asarray(est - width, dtype=np.float64), np.asarray(est + width, dtype=np.float64)


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
# by 12k requests per arm at the standard plan's 0.0125 (tests/guardrails/stats/test_power.py): the
# sequence alone 0.76 on the Wald variance, 0.72 with the null floor it now has (0.78 with
# N* tuned to 12k-24k, 0.83 with this guardrail given half
# the plan's alpha); the count e-process over 30 log-spaced ratios 0.67; the oracle SPRT
# that knows the true ratio 0.83; one fixed-sample test at 12k, the Neyman-Pearson ceiling
# for *any* level-0.0125 test of those data, 0.93. Spending 2/3 at the look keeps 3x by
# 3k above 0.9 through the sequence (0.95 at alpha / 3) and lifts 2x by 12k to 0.91 when
# the step's minimum is 12k. The share is not tuned finely: any of 0.6-0.8 meets both
# targets (2x by 12k 0.91-0.92, 3x by 3k 0.94-0.96; at 0.5 2x is 0.89).
CONFIRMATORY_SHARE = 2.0 / 3.0


def confirmatory_share(design_samples: int) -> float:
    """Share of a rate-type guardrail's alpha (the error rate, a declared rate metric) spent
    at the step's minimum sample."""
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
    minimum, and enough events - errors, or a rate metric's 1s - for the normal
    approximation).

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
    (``count_e_process_log`` in tests/guardrails/stats/sim.py, Lindon & Malek 2011.03567): it treats every error as an
    independent event, so when sticky users with their own error rates carry the traffic
    it is overdispersed and rolls back healthy candidates (17 % of A/A and 31 % of
    at-tolerance rollouts in the suite's clustering scenario at alpha 0.0125); and where it
    is valid it is the weaker test (2x errors by 12k per arm 0.67 against 0.76). Weight
    changes are handled by evaluating each stage separately (guardrails/rules.py), which is what
    its per-window conditioning would otherwise buy. The +0.5 correction and the
    request-level variance floor keep the sequence valid at low base rates with 10 errors
    across the two arms instead of the reference's 10 per arm (tests/guardrails/stats).
    """
    (verdict,) = error_rate_tests(
        [(control, candidate)], tolerance=tolerance, tolerance_kind=tolerance_kind,
        alpha=alpha, n_star=n_star, min_errors=min_errors,
    )  # fmt: skip
    return verdict


def error_rate_tests(
    pairs: Sequence[tuple[ArmAggregates, ArmAggregates]],
    *,
    tolerance: float,
    tolerance_kind: ToleranceKind = "relative",
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
    min_errors: int = MIN_ERRORS,
) -> list[Verdict]:
    """:func:`error_rate_test` for many (control, candidate) pairs at one alpha (a plan's
    segments): the kernel runs once over all of them, vectorised, and gives each pair the
    numbers it would alone (element-wise arithmetic)."""
    metric = "error_rate"

    def refuse(a: ArmAggregates, b: ArmAggregates) -> Verdict | None:
        if bool(error_rate_enough(a.errors, b.errors, min_errors)):
            return None
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

    def kernel(ready: Sequence[tuple[ArmAggregates, ArmAggregates]]) -> tuple[FloatArray, ...]:
        return error_rate_kernel(
            RatioArm.stack([error_arm(a) for a, _ in ready]),
            RatioArm.stack([error_arm(b) for _, b in ready]),
            alpha=alpha,
            kind=tolerance_kind,
            n_star=n_star,
            null=tolerance,
        )

    def conclude(a: ArmAggregates, b: ArmAggregates, est: float, lo: float, hi: float) -> Verdict:
        notes = (
            f"control {a.errors}/{a.requests} = {a.errors / a.requests:.2%}, "
            f"candidate {b.errors}/{b.requests} = {b.errors / b.requests:.2%}",
        )
        return _verdict(
            metric, est, lo, hi, tolerance, tolerance_kind, "increase", a.requests, b.requests,
            alpha, notes,
        )  # fmt: skip

    return tested_pairs(pairs, refuse, kernel, conclude)


def error_arm(arm: ArmAggregates) -> RatioArm:
    """An arm's errors over its requests, as the kernels and the confirmatory look read them."""
    return RatioArm.of(arm.errors, arm.requests, arm.error_clusters)


def error_rate_confirmatory(
    control: ArmAggregates,
    candidate: ArmAggregates,
    *,
    tolerance: float,
    tolerance_kind: ToleranceKind = "relative",
    alpha: float,
) -> tuple[float, float]:
    """(lower, upper): the confirmatory look's one-sided fixed-sample bounds, each at alpha.

    Same estimate and cluster-robust variance as :func:`error_rate_test`, with Student's t
    quantile in place of the sequence's width. Valid once per stage, at the step's minimum
    sample (:data:`CONFIRMATORY_SHARE`); the caller keeps it in the running intersection.
    """
    a, b = control, candidate
    _, lo, hi = error_rate_kernel(
        error_arm(a),
        error_arm(b),
        alpha=alpha,
        kind=tolerance_kind,
        fixed=True,
        null=tolerance,
    )
    return float(lo), float(hi)
