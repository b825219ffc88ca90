"""Latency quantiles (p95, p99, time to first token): exact order-statistic confidence sequences
on the latency sketch, on Kish's effective sample under user clustering.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special

from migrations_app.guardrails.stats.inputs import (
    ArmAggregates,
    Buckets,
    FloatArray,
    RatioArm,
    bucket_bounds,
    bucket_value,
)
from migrations_app.guardrails.stats.sequences import (
    DEFAULT_N_STAR,
    critical_value,
    mixture_half_width,
    ratio_cluster_variance,
)
from migrations_app.guardrails.stats.verdicts import (
    ToleranceKind,
    Verdict,
    _not_enough,
    _safe_ratio,
    _verdict,
)

IntArray = npt.NDArray[np.int64]

# Concentration of the Beta prior in the quantile confidence sequence: the mixture is
# centred on the quantile level p and weighs ~30 pseudo-observations. Bounds vary < 5 %
# for concentrations 10-300 at 500-20k samples; 30 makes them finite early (145 samples
# per arm for p95, 565 for p99, at alpha 0.0125 per guardrail).
QUANTILE_PRIOR_CONCENTRATION = 30.0


def _log_mixture(p: float, upper: bool) -> Callable[[IntArray, IntArray], FloatArray]:
    """log of the one-sided Beta-binomial mixture martingale at k successes in t trials, as
    a function of (k, t), element-wise over arrays (the terms that depend on p alone are
    computed once).

    The alternatives r are restricted to one side of p (r > p for ``upper``), which makes
    the mixture monotone in k and a supermartingale under every null on the other side.
    """
    rho = QUANTILE_PRIOR_CONCENTRATION
    a, b = p * rho, (1 - p) * rho
    tail = special.betaincc if upper else special.betainc
    with np.errstate(divide="ignore"):
        log_prior = float(np.log(tail(a, b, p)))
    prior = float(special.betaln(a, b))
    log_p, log_q = math.log(p), math.log1p(-p)

    def at(k: IntArray, t: IntArray) -> FloatArray:
        ak, bk = a + k, b + t - k
        with np.errstate(divide="ignore", invalid="ignore"):
            log_mass = np.log(tail(ak, bk, p))
            return np.asarray(
                special.betaln(ak, bk) - prior + log_mass - log_prior - k * log_p
                - (t - k) * log_q,
                dtype=np.float64,
            )  # fmt: skip

    return at


def _search_ranks(t: IntArray, p: float, alpha: float) -> tuple[IntArray, IntArray]:
    """:func:`quantile_ranks` for every (positive) t at once: each element's bisection takes
    the steps it would take alone, all elements in lockstep, so one evaluation of the
    mixture serves every t still searching (a plan's 63 segments cost ~2 x 20 vectorised
    calls instead of ~5,000 scalar ones; the ranks are the same). An element whose search
    has ended is evaluated with the others and left as it is."""
    level = math.log(1.0 / alpha)
    # Smallest k in [0, t] with the upper mixture >= 1/alpha (t + 1 if none): monotone in k.
    upper = _log_mixture(p, True)
    lo, hi = np.zeros_like(t), t + 1
    while (active := lo < hi).any():
        mid = (lo + hi) // 2
        ok = upper(mid, t) >= level
        hi = np.where(active & ok, mid, hi)
        lo = np.where(active & ~ok, mid + 1, lo)
    k = lo
    # Largest count c in [0, t] with the lower mixture >= 1/alpha (-1 if none); j = c + 1.
    lower = _log_mixture(p, False)
    lo, hi = np.full_like(t, -1), t.copy()
    while (active := lo < hi).any():
        mid = (lo + hi + 1) // 2
        ok = lower(mid, t) >= level
        lo = np.where(active & ok, mid, lo)
        hi = np.where(active & ~ok, mid - 1, hi)
    return lo + 1, k


class QuantileRanks:
    """(j, k): 1-based ranks with X_(j) <= q_p <= X_(k) for all t, each w.p. >= 1 - alpha.

    Howard & Ramdas 1906.09712 (Thm 1 with the beta-binomial boundary): the number of
    observations below q_p is a Binomial(t, <= p) walk; k is the smallest count at which the
    one-sided mixture reaches 1/alpha (so seeing k values below q_p is already
    implausible), j - 1 the largest count at which the lower mixture does. k = t + 1 means
    no finite upper bound yet; j = 0 no lower bound.

    Called as ``quantile_ranks(t, p, alpha)`` for one t, or :meth:`lookup` for many (one
    vectorised search for those not seen yet). Ranks are cached: an engine's
    looks and a simulation's rollouts meet the same sizes again and again; the cache holds
    :data:`CACHE_SIZE` entries and starts over when full.
    """

    CACHE_SIZE = 65536

    def __init__(self) -> None:
        self._cache: dict[tuple[int, float, float], tuple[int, int]] = {}

    def __call__(self, t: int, p: float, alpha: float) -> tuple[int, int]:
        return self.lookup([t], p, alpha)[0]

    def lookup(self, sizes: Sequence[int], p: float, alpha: float) -> list[tuple[int, int]]:
        """(j, k) per size, the sizes not seen yet searched together."""
        cache = self._cache
        missing = sorted({n for n in sizes if n > 0 and (n, p, alpha) not in cache})
        if missing:
            if len(cache) + len(missing) > self.CACHE_SIZE:
                cache.clear()
            js, ks = _search_ranks(np.asarray(missing, dtype=np.int64), p, alpha)
            for n, j, k in zip(missing, js.tolist(), ks.tolist(), strict=True):
                cache[(n, p, alpha)] = (j, k)
        return [cache[(n, p, alpha)] if n > 0 else (0, 1) for n in sizes]

    def cache_clear(self) -> None:
        """Forget every rank (benchmarks: the engine sees a new n at every look)."""
        self._cache.clear()


quantile_ranks = QuantileRanks()


def effective_quantile_ranks(
    t: npt.ArrayLike, p: float, alpha: float, design_effect: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """:func:`quantile_ranks` when the count of values below q_p varies ``design_effect``
    times more than a binomial count (users whose latencies resemble each other).

    Kish's effective sample size (Kish 1965; in binomial intervals for survey data, Korn &
    Graubard 1998; for quantiles, Woodruff 1952 inverts such an interval on the
    distribution function): the count divided by the design effect D varies like a
    binomial count of t / D trials with the same mean share. The ranks of the sequence at
    t_e = floor(t / D) trials are scaled back to the t values: k = ceil(k_e t / t_e),
    j = floor((j_e - 1) t / t_e) + 1. At D = 1 they are :func:`quantile_ranks`.
    """
    tt, dd = np.broadcast_arrays(
        np.asarray(t, dtype=np.int64), np.asarray(design_effect, dtype=np.float64)
    )
    sizes = tt.ravel().tolist()
    t_eff = [math.floor(n / max(d, 1.0)) for n, d in zip(sizes, dd.ravel().tolist(), strict=True)]
    # One search for every effective size not seen yet (a plan's segments: all their arms).
    ranks = quantile_ranks.lookup(t_eff, p, alpha)
    pairs = [_scale_ranks(*args) for args in zip(sizes, t_eff, ranks, strict=True)]
    j = np.fromiter((pair[0] for pair in pairs), dtype=np.int64, count=len(pairs))
    k = np.fromiter((pair[1] for pair in pairs), dtype=np.int64, count=len(pairs))
    return j.reshape(tt.shape), k.reshape(tt.shape)


def _scale_ranks(n: int, t_eff: int, ranks: tuple[int, int]) -> tuple[int, int]:
    j_eff, k_eff = ranks
    k = n + 1 if k_eff > t_eff else -((-k_eff * n) // max(t_eff, 1))
    j = 0 if j_eff <= 0 else ((j_eff - 1) * n) // max(t_eff, 1) + 1
    return j, k


def design_effect(
    arm: RatioArm, quantile: float, alpha: float, n_star: float = DEFAULT_N_STAR
) -> FloatArray:
    """How many times more the count of an arm's latencies below its ``quantile`` varies
    than a binomial count, from how the units' log(1 + ms) latencies cluster (>= 1).

    The exact quantile sequence (Howard & Ramdas) assumes independent values. When a few
    users send most requests and each has their own typical latency (long prompts, a slow
    region), the arm's share of values below q_p moves with which users it drew: the
    sequence alone rolled back 7.6 % of candidates at the tolerance for a per-user sd of
    0.3 in log latency at alpha 0.0125 (tests/guardrails/stats, heavy-tailed activity).

    Measured on the mean log latency, whose jackknife variance over unit sums
    (:func:`ratio_cluster_variance`) against its request-level variance is the design effect
    1 + rho (m - 1) of a within-user correlation rho (Kish 1965, unequal clusters:
    m = sum N_u^2 / N). The excess over 1 (the binomial part is exact) is estimated from the
    units and is noisy when few of them carry the traffic: it is widened by the square of
    Student's t over the normal multiplier at the sequence's level with the effective
    number of units (:func:`critical_value`), as the other tests widen their bounds. Then
    rho is carried to the indicator of being below q_p as for a user's shared level plus
    independent noise, jointly normal (:func:`indicator_correlation`): in the tails far
    less than rho (0.08 for rho 0.26 at p95), so the effective sample is not cut by the
    mean's design effect. The suite checks it with normal levels and with one user in ten
    three sd slower (far from normal). Not seen: users who differ in the spread of their
    latencies rather than their level (the mean does not move); with per-user spreads of
    sd 0.4 in log scale the p95 test rolls back ~6 % at the tolerance (measured, not in
    the suite) and would need per-user counts above fixed latency thresholds.
    """
    y, n, ss, nn = (np.asarray(v, dtype=np.float64) for v in (arm.y, arm.n, arm.sum_sq, arm.sum_nn))
    with np.errstate(invalid="ignore", divide="ignore"):
        n1 = np.maximum(n, 1.0)
        mean = y / n1
        iid = np.maximum(ss / n1 - mean * mean, 0.0) * n1 / np.maximum(n1 - 1.0, 1.0) / n1
        var, df = ratio_cluster_variance(arm, iid)
        ratio = np.where((iid > 0) & (n > 1), var / np.where(iid > 0, iid, 1.0), 1.0)
        z = mixture_half_width(np.ones_like(n1), n1, alpha, n_star)
        widen = (critical_value(n1, alpha, df, n_star=n_star) / z) ** 2
        excess = np.maximum(ratio - 1.0, 0.0) * widen
        size = np.maximum(nn / n1 - 1.0, 0.0)  # m - 1
        rho = np.where(size > 0, excess / np.where(size > 0, size, 1.0), 0.0)
    shared = indicator_correlation(rho, quantile) * size
    return np.asarray(np.where(n > 1, 1.0 + shared, 1.0), dtype=np.float64)


def indicator_correlation(rho: npt.ArrayLike, p: float) -> FloatArray:
    """Correlation of 1{X1 <= q_p} and 1{X2 <= q_p} for a standard bivariate normal pair
    with correlation rho: (Phi2(z, z; rho) - p^2) / (p (1 - p)), z = Phi^-1(p), where
    Phi2(h, h; rho) = Phi(h) - 2 T(h, sqrt((1 - rho) / (1 + rho))) (Owen 1956)."""
    r = np.clip(np.asarray(rho, dtype=np.float64), 0.0, 1.0)
    z = float(special.ndtri(p))
    joint = p - 2.0 * special.owens_t(z, np.sqrt((1.0 - r) / (1.0 + r)))
    return np.asarray(np.clip((joint - p * p) / (p * (1.0 - p)), 0.0, 1.0), dtype=np.float64)


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
    design_effect: float = 1.0,
) -> tuple[FloatArray, FloatArray]:
    """Per row: (lower, upper) confidence-sequence bounds on the p-quantile, each side at
    level alpha, conservative at bucket edges (lower edge for the lower bound, upper edge
    for the upper); the ranks of :func:`effective_quantile_ranks`."""
    jj, kk = effective_quantile_ranks(int(n), float(p), float(alpha), design_effect)
    j, k = int(jj), int(kk)
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


def quantile_interval(
    buckets: Buckets, p: float, alpha: float, design_effect: float = 1.0
) -> tuple[float, float, float]:
    """(estimate, lower, upper) for one arm's p-quantile from its buckets; the bounds widen
    with the arm's :func:`design_effect`."""
    keys, counts = buckets.arrays()
    lower_edges, upper_edges = bucket_bounds(keys)
    # The zero bucket is prepended with edges [0, 0].
    lower_edges = np.concatenate(([0.0], lower_edges))
    upper_edges = np.concatenate(([0.0], upper_edges))
    cum = np.cumsum(np.concatenate(([buckets.zero_count], counts)))
    n = int(cum[-1]) if cum.size else 0
    if n == 0:
        return math.nan, 0.0, math.inf
    lo, hi = quantile_bounds_from_cumulative(
        lower_edges, upper_edges, cum[None, :], n, p, alpha, design_effect
    )
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
    design_effects: tuple[float, float] = (1.0, 1.0),
) -> Verdict:
    """Candidate vs control p-quantile (latency, time to first token).

    Each arm gets an exact quantile confidence sequence at alpha/2 per side (Howard &
    Ramdas 1906.09712); the union bound makes "candidate lower > tolerance x control
    upper" wrong with probability <= alpha, whatever the distributions, tails or
    dependence between arms (so it is also valid in shadow mode, where both arms see the
    same requests). The ratio bounds are lower_b / upper_a and upper_b / lower_a.
    ``design_effects`` (control, candidate; :func:`design_effect`) widen each arm's
    sequence when its users' latencies cluster.
    """
    half = alpha / 2.0
    n_a, n_b = control.total, candidate.total
    d_a, d_b = (max(1.0, float(d)) for d in design_effects)
    est_a, lo_a, hi_a = quantile_interval(control, quantile, half, d_a)
    est_b, lo_b, hi_b = quantile_interval(candidate, quantile, half, d_b)
    notes: tuple[str, ...] = ()
    if max(d_a, d_b) >= 1.05:
        notes = (
            f"latencies cluster by user: the tests count control's {n_a} as {n_a / d_a:.0f} "
            f"independent values and the candidate's {n_b} as {n_b / d_b:.0f}",
        )
    if not (math.isfinite(hi_a) and lo_b > 0) and not (math.isfinite(hi_b) and lo_a > 0):
        first = math.ceil(_first_finite(quantile, half) * max(d_a, d_b))
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
        *notes,
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


def latency_spread(arm: ArmAggregates, source: Literal["latency", "ttft"]) -> RatioArm:
    """An arm's log(1 + ms) latencies (or times to first token) as a ratio metric, for
    :func:`design_effect`."""
    if source == "ttft":
        return RatioArm.of(
            arm.ttft_log1p_sum, arm.ttft_log1p_n, arm.ttft_clusters, arm.ttft_log1p_sum_sq
        )
    return RatioArm.of(
        arm.latency_log1p_sum, arm.latency_log1p_n, arm.latency_clusters, arm.latency_log1p_sum_sq
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
