"""The normal-mixture confidence sequence every test builds on, and the unit-level variance and
critical values they share (users, not requests, are the independent units).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import special

from migrations_app.guardrails.stats.inputs import FloatArray, RatioArm

# GrowthBook's default: the total sample at which the mixture is tightest. Detection time
# moves < 25 % for N* anywhere in 1k-48k (reference/statistics.md).
DEFAULT_N_STAR = 5000


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


# A leverage above this is treated as this (one unit holding all but a millionth of the
# traffic): the correction below stays finite, and such data get t with 1 df anyway.
_MAX_LEVERAGE = 1.0 - 1e-6


# Degrees of freedom beyond which Student's t is the normal distribution to the precision
# that matters here (the quantiles differ by < 1e-5 relative at the tails used).
_DF_NORMAL = 1e7


def ratio_cluster_variance(arm: RatioArm, iid_var: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """(variance of the ratio Y/N, its degrees of freedom) from unit-level sums.

    The variance is the delete-one-unit jackknife (CR3; Bell & McCaffrey 2002, MacKinnon,
    Nielsen & Webb 2023 "Cluster-robust inference: a guide to empirical practice"), not the
    plain sandwich sum_u r_u^2 / N^2 (r_u = Y_u - m N_u) of reference/statistics.md. Y/N is
    the intercept of a regression of per-request values on a constant, in which unit u has
    leverage h_u = N_u / N: its own requests pull the mean towards it, so its residual
    r_u shows only (1 - h_u) of its deviation. With a few heavy users (h_u of 5-30 %) the
    sandwich is then too small, and a G/(G-1) factor, G the distinct units, does nothing
    about it. Dropping unit u moves the ratio by r_u / (N - N_u), so the jackknife is
    sum_u r_u^2 / (1 - h_u)^2 / N^2; it is conservative in expectation (Efron & Stein
    1981). The sums hold no per-unit leverage, so the weight is bounded instead:
    1/(1 - h)^2 = 1 + h (2 - h)/(1 - h)^2 and (2 - h)/(1 - h)^2 grows with h, so
    sum_u r_u^2/(1 - h_u)^2 <= sum r^2 + (2 - H)/(1 - H)^2 sum r^2 h, with the largest
    leverage bounded by H = (sum N_u^3)^(1/3) / N (sum r^2 h from the third-order sums).
    H is close to the largest share when one user dominates, which is when it matters;
    with many similar units the bound is a few percent above the exact jackknife.

    Floored at the request-level ``iid_var``: with few units the estimate is noisy
    (Cameron & Miller 2015, sec. VI), and clustering can only add variance in the settings
    we simulate.

    Degrees of freedom: the estimate is a sum of one term per unit, so it is as noisy as
    the number of units that carry the traffic, not the number of distinct ones (Carter,
    Schnepel & Steigerwald 2017: with unequal clusters an effective number governs the
    cluster-robust t-test). Kish's effective number N^2 / sum N_u^2 is a few dozen when a
    few users send most requests, even with a thousand distinct users; the reference
    distribution is Student's t with that number minus one, as for CR3 with G clusters
    (MacKinnon, Nielsen & Webb 2023). :func:`critical_value` uses it.
    """
    y, n, nn, nnn = (
        np.asarray(v, dtype=np.float64) for v in (arm.y, arm.n, arm.sum_nn, arm.sum_nnn)
    )
    yy, yn, yyn, ynn = (
        np.asarray(v, dtype=np.float64) for v in (arm.sum_yy, arm.sum_yn, arm.sum_yyn, arm.sum_ynn)
    )
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        n1 = np.maximum(n, 1.0)
        m = np.where(n > 0, y / n1, 0.0)
        resid = np.maximum(yy - 2.0 * m * yn + m * m * nn, 0.0)
        resid_h = np.maximum(yyn - 2.0 * m * ynn + m * m * nnn, 0.0) / n1
        h = np.clip(np.cbrt(np.maximum(nnn, 0.0)) / n1, 0.0, _MAX_LEVERAGE)
        jackknife = (resid + (2.0 - h) / (1.0 - h) ** 2 * resid_h) / n1**2
        # Without unit sums (none recorded) the observations count as independent units.
        df = np.where(nn > 0, n * n / np.where(nn > 0, nn, 1.0), n) - 1.0
    variance = np.maximum(jackknife, np.asarray(iid_var, dtype=np.float64))
    return np.asarray(variance, dtype=np.float64), np.asarray(np.maximum(df, 1.0))


def welch_df(
    var_a: npt.ArrayLike, df_a: npt.ArrayLike, var_b: npt.ArrayLike, df_b: npt.ArrayLike
) -> FloatArray:
    """Welch-Satterthwaite degrees of freedom of var_a + var_b (two arms' estimates)."""
    va, da, vb, db = (np.asarray(v, dtype=np.float64) for v in (var_a, df_a, var_b, df_b))
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = va * va / da + vb * vb / db
        df = np.where(denom > 0, (va + vb) ** 2 / np.where(denom > 0, denom, 1.0), math.inf)
    return np.asarray(np.maximum(df, 1.0), dtype=np.float64)


def critical_value(
    n: npt.ArrayLike,
    alpha: float,
    df: npt.ArrayLike,
    *,
    n_star: float = DEFAULT_N_STAR,
    fixed: bool = False,
) -> FloatArray:
    """How many standard errors a one-sided bound lies from the estimate.

    ``fixed``: a single test at a sample size chosen in advance, Student's t quantile with
    ``df`` degrees of freedom at 1 - alpha (the confirmatory look). Otherwise the
    normal-mixture sequence's multiplier (:func:`mixture_half_width`) at total sample
    ``n``, moved to Student's t with ``df`` at the same one-sided tail probability: the
    "significance level" approach to group sequential t-tests (Pocock 1977; Jennison &
    Turnbull 2000, ch. 3), where each look keeps the nominal level the known-variance
    boundary gives it and only the reference distribution accounts for the estimated
    variance. The sequence's guarantee is proved for a known variance; with a variance
    estimated from a few dozen effective units the normal multiplier under-covers
    (tests/guardrails/stats: heavy-tailed activity), and t at the same level restores it, while
    with thousands of effective units it is the normal one to four digits. The mixture is
    not recomputed for t: no closed-form t-mixture sequence exists for per-unit totals
    that keep growing, and the simulation suite measures what this one does.
    """
    d = np.asarray(df, dtype=np.float64)
    if fixed:
        z = np.full(np.shape(d), float(special.ndtri(1.0 - alpha)))
    else:
        z = mixture_half_width(np.ones(np.broadcast(d, np.asarray(n)).shape), n, alpha, n_star)
    with np.errstate(invalid="ignore"):
        t = -special.stdtrit(np.minimum(np.maximum(d, 1.0), _DF_NORMAL), special.ndtr(-z))
    return np.asarray(np.where(d >= _DF_NORMAL, z, np.maximum(t, z)), dtype=np.float64)
