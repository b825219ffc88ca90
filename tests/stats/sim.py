"""Vectorised rollout simulators for the statistics suite.

Each simulator draws per-look aggregates for many rollouts at once (binomial counts,
sums, bucket counts) and hands them to the *same* kernels that ``migrations_app.stats``
uses for a single evaluation, so the code that decides in the simulation is the code that
decides in production.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy import stats as sps

from migrations_app import stats as S

LOOKS = 240
ROLLOUTS = 10_000


def cumulative(x: np.ndarray) -> np.ndarray:
    return np.cumsum(x, axis=1)


# --- error rate ------------------------------------------------------------------------


@dataclass
class CountPaths:
    """Cumulative per-look aggregates of one arm, shape (rollouts, looks)."""

    e: np.ndarray
    n: np.ndarray
    units: np.ndarray
    yy: np.ndarray
    yn: np.ndarray
    nn: np.ndarray


def iid_counts(rng: np.random.Generator, rollouts: int, n_per_look: np.ndarray, p: np.ndarray):
    """Independent requests, one unit each: cluster sums equal the request-level ones."""
    n_per_look = np.broadcast_to(np.asarray(n_per_look), (LOOKS,)).astype(np.int64)
    p = np.broadcast_to(np.asarray(p, dtype=float), (LOOKS,))
    e = rng.binomial(np.broadcast_to(n_per_look, (rollouts, LOOKS)), p)
    ce = cumulative(e).astype(float)
    cn = np.broadcast_to(np.cumsum(n_per_look).astype(float), (rollouts, LOOKS))
    return CountPaths(e=ce, n=cn, units=cn, yy=ce, yn=ce, nn=cn)


def clustered_counts(
    rng: np.random.Generator,
    rollouts: int,
    *,
    light_per_look: int,
    heavy_units: int,
    heavy_rate: int,
    base: float,
    concentration: float,
    ratio: float = 1.0,
):
    """A few sticky heavy users carry much of the traffic, each with its own error rate
    (Beta around the base rate); the rest is independent light traffic."""
    a, b = base * concentration, (1 - base) * concentration
    p_u = np.minimum(rng.beta(a, b, size=(rollouts, heavy_units)) * ratio, 1.0)
    n_u = np.full((rollouts, LOOKS, heavy_units), heavy_rate, dtype=np.int64)
    e_u = rng.binomial(heavy_rate, np.broadcast_to(p_u[:, None, :], n_u.shape))
    cn_u = np.cumsum(n_u, axis=1).astype(float)
    ce_u = np.cumsum(e_u, axis=1).astype(float)
    light_e = cumulative(rng.binomial(light_per_look, min(base * ratio, 1.0), (rollouts, LOOKS)))
    light_n = np.broadcast_to(
        np.arange(1, LOOKS + 1, dtype=float) * light_per_look, (rollouts, LOOKS)
    )
    e = ce_u.sum(axis=2) + light_e
    n = cn_u.sum(axis=2) + light_n
    return CountPaths(
        e=e,
        n=n,
        units=light_n + (cn_u > 0).sum(axis=2),
        yy=(ce_u**2).sum(axis=2) + light_e,
        yn=(ce_u * cn_u).sum(axis=2) + light_e,
        nn=(cn_u**2).sum(axis=2) + light_n,
    )


def error_rollbacks(
    a: CountPaths,
    b: CountPaths,
    *,
    tolerance: float,
    alpha: float,
    kind: S.ToleranceKind = "relative",
    min_errors: int = S.MIN_ERRORS,
    design: int = 0,
) -> np.ndarray:
    """Per rollout and look: does the error-rate guardrail say regressed?

    The confidence sequence at every look, at alpha minus the confirmatory share; with a
    ``design`` sample (the step's minimum, per arm), plus the one fixed-sample look at the
    first look where ``stats.confirmatory_look_due``, whose bound then stays in the running
    intersection (guardrails.evaluate_guardrail does the same for one plan).
    """
    share = S.confirmatory_share(design)
    args = (a.e, a.n, a.units, a.yy, a.yn, a.nn, b.e, b.n, b.units, b.yy, b.yn, b.nn)
    limit = S.threshold(tolerance, kind, "increase")
    null = tolerance if kind == "relative" else None
    _, lo, _ = S.error_rate_kernel(*args, alpha=alpha * (1 - share), kind=kind)
    decisions = S.error_rate_enough(a.e, b.e, min_errors) & (lo > limit)
    if share:
        _, fixed_lo, _ = S.error_rate_kernel(
            *args, alpha=alpha * share, kind=kind, fixed=True, null_ratio=null
        )
        due = S.confirmatory_look_due(a.n, b.n, a.e, b.e, design, min_errors)
        first = first_look(due)
        rows = np.arange(due.shape[0])
        hit = (first >= 0) & (fixed_lo[rows, np.maximum(first, 0)] > limit)
        after = np.arange(due.shape[1])[None, :] >= first[:, None]
        decisions |= hit[:, None] & after
    return decisions


def error_e_process(a: CountPaths, b: CountPaths, *, tolerance: float) -> np.ndarray:
    """Log e-value of ``stats.count_e_process_log`` per rollout and look (looks = windows)."""

    def window(x: np.ndarray) -> np.ndarray:
        return np.diff(x, axis=1, prepend=0.0)

    return S.count_e_process_log(
        window(a.e), window(a.n), window(b.e), window(b.n), theta0=tolerance
    )


def first_look(decisions: np.ndarray) -> np.ndarray:
    """Index of the first True look per rollout, or -1."""
    hit = decisions.any(axis=1)
    return np.where(hit, decisions.argmax(axis=1), -1)


# --- quantiles -------------------------------------------------------------------------


@dataclass
class Dist:
    """A latency distribution by its inverse CDF, scaled by a per-look factor (drift)."""

    ppf: Callable[[np.ndarray], np.ndarray]
    cdf: Callable[[np.ndarray], np.ndarray]


def lognormal(sigma: float, median: float = 800.0) -> Dist:
    mu = np.log(median)
    return Dist(
        ppf=lambda u: np.exp(mu + sigma * special.ndtri(u)),
        cdf=lambda x: special.ndtr((np.log(x) - mu) / sigma),
    )


def pareto(shape: float, scale: float = 300.0) -> Dist:
    return Dist(
        ppf=lambda u: scale * (1.0 - u) ** (-1.0 / shape),
        cdf=lambda x: np.where(x > scale, 1.0 - (scale / np.maximum(x, scale)) ** shape, 0.0),
    )


class QuantileArm:
    """Running bucket counts for many rollouts, exact above a floor bucket.

    Values at or below ``floor_key`` are only counted (column 0, edges (0, floor edge]);
    values above it are drawn and bucketed with the DDSketch mapping; values above
    ``cap_key`` land in the cap column. The floor sits far below every rank the quantile
    sequence can use once it is finite, and the cap far above; the test records the rare
    look where a control order statistic lands in column 0 and counts it as a rollback,
    so any error in the harness can only overstate the false-rollback rate.
    """

    def __init__(self, rollouts: int, floor_key: int, cap_key: int) -> None:
        self.rollouts = rollouts
        self.floor_key = floor_key
        self.cap_key = cap_key
        self.width = cap_key - floor_key + 1
        self.counts = np.zeros((rollouts, self.width), dtype=np.int32)
        self.n = 0
        keys = np.arange(floor_key, cap_key + 1)
        lower, upper = S.bucket_bounds(keys)
        lower[0] = 0.0
        self.lower, self.upper = lower, upper
        _, self.floor_edge = S.bucket_bounds(np.array([floor_key]))

    def add(self, rng: np.random.Generator, dist: Dist, m: int, scale: float) -> None:
        p_floor = float(dist.cdf(np.array([self.floor_edge[0] / scale]))[0])
        below = rng.binomial(m, p_floor, size=self.rollouts)
        above = m - below
        self.counts[:, 0] += below
        total = int(above.sum())
        if total:
            u = rng.uniform(p_floor, 1.0, size=total)
            values = dist.ppf(u) * scale
            keys = np.clip(S.bucket_keys(values), self.floor_key + 1, self.cap_key)
            rows = np.repeat(np.arange(self.rollouts), above)
            flat = rows * self.width + (keys - self.floor_key)
            self.counts += (
                np.bincount(flat, minlength=self.rollouts * self.width)
                .reshape(self.rollouts, self.width)
                .astype(np.int32)
            )
        self.n += m

    def bound(self, p: float, alpha: float, side: str) -> tuple[np.ndarray, np.ndarray]:
        """One side of ``stats.quantile_bounds_from_cumulative`` per rollout (the ranks and
        the order-statistic search are the stats kernels), and whether a control order
        statistic fell in the floor column."""
        cum = np.cumsum(self.counts, axis=1)
        j, k = S.quantile_ranks(self.n, p, alpha)
        rank = k if side == "upper" else j
        idx = S.order_statistic_buckets(cum, rank)
        edges = self.upper if side == "upper" else self.lower
        ext = np.concatenate(([0.0], edges, [np.inf]))
        value = ext[np.clip(idx, -1, self.width) + 1]
        in_floor = (rank <= self.n) & (idx == 0) if side == "upper" else np.zeros(1, bool)
        return value, in_floor


def key_range(dists_scales: list[tuple[Dist, float]], p_floor: float, p_cap: float):
    floor = min(float(d.ppf(np.array([p_floor]))[0]) * s for d, s in dists_scales)
    cap = max(float(d.ppf(np.array([p_cap]))[0]) * s for d, s in dists_scales)
    return int(S.bucket_keys(np.array([floor]))[0]) - 1, int(S.bucket_keys(np.array([cap]))[0])


def quantile_rollbacks(
    rng: np.random.Generator,
    rollouts: int,
    *,
    p: float,
    control: Dist,
    candidate: Dist,
    candidate_factor: float | tuple[float, ...],
    tolerance: float,
    alpha: float,
    m_per_look: int | np.ndarray,
    m_candidate: int | np.ndarray | None = None,
    drift: np.ndarray | None = None,
    looks: int = LOOKS,
    p_floor: float | None = None,
    p_cap: float = 1 - 1e-4,
):
    """Per rollout and look: does ``quantile_test`` say regressed? Also n per arm per look.

    The candidate's values are ``candidate_factor`` times draws from ``candidate``; with a
    tuple of factors the control arm is shared and a list of decision arrays is returned.
    """
    factors = candidate_factor if isinstance(candidate_factor, tuple) else (candidate_factor,)
    drift = np.ones(looks) if drift is None else drift
    m = np.broadcast_to(np.asarray(m_per_look), (looks,))
    mb = m if m_candidate is None else np.broadcast_to(np.asarray(m_candidate), (looks,))
    if p_floor is None:
        p_floor = 0.8 if p < 0.98 else 0.95
    pairs = [(control, drift.min()), (control, drift.max())]
    for f in factors:
        pairs += [(candidate, f * drift.min()), (candidate, f * drift.max())]
    lo_key, hi_key = key_range(pairs, p_floor, p_cap)
    arm_a = QuantileArm(rollouts, lo_key, hi_key)
    arms_b = [QuantileArm(rollouts, lo_key, hi_key) for _ in factors]
    half = alpha / 2
    outs = [np.zeros((rollouts, looks), dtype=bool) for _ in factors]
    ns = np.zeros(looks, dtype=np.int64)
    for t in range(looks):
        arm_a.add(rng, control, int(m[t]), drift[t])
        ns[t] = arm_a.n
        hi_a, floor_hit = arm_a.bound(p, half, "upper")
        for f, arm_b, out in zip(factors, arms_b, outs, strict=True):
            arm_b.add(rng, candidate, int(mb[t]), drift[t] * f)
            lo_b, _ = arm_b.bound(p, half, "lower")
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio_lower = np.where(hi_a > 0, lo_b / hi_a, np.inf)
            out[:, t] = (ratio_lower > tolerance) | floor_hit
    if isinstance(candidate_factor, tuple):
        return outs, ns
    return outs[0], ns


# --- means -----------------------------------------------------------------------------


def mean_rollbacks(
    a_n: np.ndarray, a_s: np.ndarray, a_ss: np.ndarray,
    b_n: np.ndarray, b_s: np.ndarray, b_ss: np.ndarray,
    *, alpha: float, log_ratio: bool, limit: float, harm: S.Harm, min_n: int,
) -> np.ndarray:  # fmt: skip
    """Per rollout and look, for independent observations (one per unit)."""
    est, lo, hi = S.mean_kernel(
        a_n, a_s, a_ss, a_n, a_ss, a_s, a_n,
        b_n, b_s, b_ss, b_n, b_ss, b_s, b_n,
        alpha=alpha, log_ratio=log_ratio,
    )  # fmt: skip
    enough = (a_n >= min_n) & (b_n >= min_n)
    if harm == "increase":
        return enough & (lo > limit)
    return enough & (hi < limit)


def summed_draws(
    rng: np.random.Generator, rollouts: int, m: int, draw: Callable[[tuple[int, int]], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative n, sum, sum of squares of ``m`` draws per look."""
    s = np.empty((rollouts, LOOKS))
    ss = np.empty((rollouts, LOOKS))
    for t in range(LOOKS):
        x = draw((rollouts, m))
        s[:, t] = x.sum(axis=1)
        ss[:, t] = (x * x).sum(axis=1)
    n = np.broadcast_to(np.arange(1, LOOKS + 1, dtype=float) * m, (rollouts, LOOKS))
    return n, np.cumsum(s, axis=1), np.cumsum(ss, axis=1)


def binary_draws(rng: np.random.Generator, rollouts: int, m: int, p: float):
    """Cumulative n, sum and sum of squares of thumbs (0/1) feedback."""
    s = np.cumsum(rng.binomial(m, p, (rollouts, LOOKS)), axis=1).astype(float)
    n = np.broadcast_to(np.arange(1, LOOKS + 1, dtype=float) * m, (rollouts, LOOKS))
    return n, s, s.copy()


def rate_ok(hits: int, trials: int, alpha: float, level: float = 0.01) -> bool:
    """Not significantly above alpha (one-sided binomial test)."""
    return sps.binomtest(hits, trials, alpha, alternative="greater").pvalue > level


def median_first(decisions: np.ndarray, ns: np.ndarray) -> float:
    first = first_look(decisions)
    values = np.where(first >= 0, ns[np.maximum(first, 0)], np.inf)
    return float(np.median(values))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --- building real aggregates from raw requests (unit tests) ---------------------------


def cluster_sums(unit: np.ndarray, y: np.ndarray, n: np.ndarray | None = None) -> S.ClusterSums:
    """ClusterSums from per-request unit ids and values (N = 1 per request unless given)."""
    n = np.ones_like(y, dtype=float) if n is None else n
    _, inv = np.unique(unit, return_inverse=True)
    yu = np.bincount(inv, weights=y)
    nu = np.bincount(inv, weights=n)
    return S.ClusterSums.from_units(yu, nu)


def arm_from_requests(
    unit: np.ndarray,
    error: np.ndarray,
    latency: np.ndarray,
    cost: np.ndarray,
    feedback: np.ndarray,
) -> S.ArmAggregates:
    """ArmAggregates from per-request arrays; ``feedback`` is NaN where none was given."""
    has_fb = ~np.isnan(feedback)
    fb = np.where(has_fb, feedback, 0.0)
    err = error.astype(float)
    return S.ArmAggregates(
        requests=int(unit.size),
        errors=int(err.sum()),
        errors_by_kind={"server_error": int(err.sum())} if err.sum() else {},
        error_clusters=cluster_sums(unit, err),
        latency=S.Buckets.from_values(latency),
        latency_sum=float(latency.sum()),
        latency_log_sum=float(np.log(latency).sum()),
        ttft=S.Buckets.from_values(latency * 0.25),
        ttft_sum=float(latency.sum() * 0.25),
        ttft_log_sum=float(np.log(latency * 0.25).sum()),
        cost_n=int(unit.size),
        cost_sum=float(cost.sum()),
        cost_sum_sq=float((cost * cost).sum()),
        cost_clusters=cluster_sums(unit, cost),
        feedback_n=int(has_fb.sum()),
        feedback_sum=float(fb.sum()),
        feedback_sum_sq=float((fb * fb).sum()),
        feedback_clusters=cluster_sums(unit[has_fb], fb[has_fb]),
        feedback_rate_clusters=cluster_sums(unit, has_fb.astype(float)),
    )


def random_arm(
    rng: np.random.Generator,
    n: int,
    *,
    error_rate: float = 0.02,
    latency_factor: float = 1.0,
    cost_factor: float = 1.0,
    satisfaction: float = 0.7,
    feedback_rate: float = 0.1,
    units: int | None = None,
) -> S.ArmAggregates:
    units = units or max(1, n // 5)
    unit = rng.integers(0, units, n)
    return arm_from_requests(
        unit,
        rng.random(n) < error_rate,
        rng.lognormal(np.log(800.0), 0.5, n) * latency_factor,
        rng.lognormal(np.log(0.002), 0.8, n) * cost_factor,
        np.where(rng.random(n) < feedback_rate, (rng.random(n) < satisfaction) * 1.0, np.nan),
    )
