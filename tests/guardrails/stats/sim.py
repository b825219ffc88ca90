"""Vectorised rollout simulators for the statistics suite.

Each simulator draws per-look aggregates for many rollouts at once (binomial counts,
sums, bucket counts) and hands them to the *same* kernels that ``migrations_app.stats``
uses for a single evaluation, so the code that decides in the simulation is the code that
decides in production.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt
from scipy import special
from scipy import stats as sps

from migrations_app.guardrails import stats
from migrations_app.guardrails.stats.inputs import ClusterSums, FloatArray, RatioArm
from migrations_app.guardrails.stats.sequences import (
    DEFAULT_N_STAR,
    critical_value,
    ratio_cluster_variance,
)
from migrations_app.guardrails.stats.verdicts import (
    Harm,
    ToleranceKind,
    Verdict,
    _not_enough,
    _verdict,
)

LOOKS = 240
ROLLOUTS = 10_000


def cumulative(x: np.ndarray) -> np.ndarray:
    return np.cumsum(x, axis=1)


# --- error rate ------------------------------------------------------------------------


@dataclass
class CountPaths:
    """Cumulative per-look aggregates of one arm, shape (rollouts, looks): errors,
    requests, and the unit-level sums of ``stats.ClusterSums`` (Y = errors, N = requests)."""

    e: np.ndarray
    n: np.ndarray
    units: np.ndarray
    yy: np.ndarray
    yn: np.ndarray
    nn: np.ndarray
    yyn: np.ndarray
    ynn: np.ndarray
    nnn: np.ndarray

    @classmethod
    def independent(cls, e: np.ndarray, n: np.ndarray) -> CountPaths:
        """One request per unit: the unit-level sums are the request-level ones."""
        return cls(e, n, n, e, e, n, e, e, n)

    def arm(self) -> stats.RatioArm:
        return stats.RatioArm(
            self.e, self.n, self.e, self.units, self.yy, self.yn, self.nn,
            self.yyn, self.ynn, self.nnn,
        )  # fmt: skip

    def cut(self, looks: slice) -> CountPaths:
        return CountPaths(*(getattr(self, f.name)[:, looks] for f in fields(self)))


def iid_counts(rng: np.random.Generator, rollouts: int, n_per_look: np.ndarray, p: np.ndarray):
    """Independent requests, one unit each: cluster sums equal the request-level ones."""
    n_per_look = np.broadcast_to(np.asarray(n_per_look), (LOOKS,)).astype(np.int64)
    p = np.broadcast_to(np.asarray(p, dtype=float), (LOOKS,))
    e = rng.binomial(np.broadcast_to(n_per_look, (rollouts, LOOKS)), p)
    ce = cumulative(e).astype(float)
    cn = np.broadcast_to(np.cumsum(n_per_look).astype(float), (rollouts, LOOKS))
    return CountPaths.independent(ce, cn)


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
    e_u = rng.binomial(heavy_rate, np.broadcast_to(p_u[:, None, :], (rollouts, LOOKS, heavy_units)))
    ce_u = np.cumsum(e_u, axis=1).astype(float)
    light_e = cumulative(rng.binomial(light_per_look, min(base * ratio, 1.0), (rollouts, LOOKS)))
    light_n = np.broadcast_to(
        np.arange(1, LOOKS + 1, dtype=float) * light_per_look, (rollouts, LOOKS)
    )
    # Every heavy user sends heavy_rate requests a look: N_u = c (c = heavy_rate x looks so
    # far) for all of them, so the sums over users with N_u in them factor out c (whole
    # numbers throughout: the same values as summing the products).
    c = np.arange(1, LOOKS + 1, dtype=float) * heavy_rate
    sum_e, sum_ee = ce_u.sum(axis=2), (ce_u * ce_u).sum(axis=2)
    return CountPaths(
        e=sum_e + light_e,
        n=heavy_units * c + light_n,
        units=light_n + heavy_units,
        yy=sum_ee + light_e,
        yn=c * sum_e + light_e,
        nn=heavy_units * c**2 + light_n,
        yyn=c * sum_ee + light_e,
        ynn=c**2 * sum_e + light_e,
        nnn=heavy_units * c**3 + light_n,
    )


def error_rollbacks(
    a: CountPaths,
    b: CountPaths,
    *,
    tolerance: float,
    alpha: float,
    kind: stats.ToleranceKind = "relative",
    min_errors: int = stats.MIN_ERRORS,
    design: int = 0,
) -> np.ndarray:
    """Per rollout and look: does the error-rate guardrail say regressed?

    The confidence sequence at every look, at alpha minus the confirmatory share; with a
    ``design`` sample (the step's minimum, per arm), plus the one fixed-sample look at the
    first look where ``stats.confirmatory_look_due``, whose bound then stays in the running
    intersection (guardrails.evaluate_guardrail does the same for one plan).
    """
    share = stats.confirmatory_share(design)
    args = (a.arm(), b.arm())
    limit = stats.threshold(tolerance, kind, "increase")
    _, lo, _ = stats.error_rate_kernel(*args, alpha=alpha * (1 - share), kind=kind, null=limit)
    decisions = stats.error_rate_enough(a.e, b.e, min_errors) & (lo > limit)
    if share:
        _, fixed_lo, _ = stats.error_rate_kernel(
            *args, alpha=alpha * share, kind=kind, fixed=True, null=limit
        )
        due = stats.confirmatory_look_due(a.n, b.n, a.e, b.e, design, min_errors)
        first = first_look(due)
        rows = np.arange(due.shape[0])
        hit = (first >= 0) & (fixed_lo[rows, np.maximum(first, 0)] > limit)
        after = np.arange(due.shape[1])[None, :] >= first[:, None]
        decisions |= hit[:, None] & after
    return decisions


def error_e_process(a: CountPaths, b: CountPaths, *, tolerance: float) -> np.ndarray:
    """Log e-value of ``count_e_process_log`` per rollout and look (looks = windows)."""

    def window(x: np.ndarray) -> np.ndarray:
        return np.diff(x, axis=1, prepend=0.0)

    return count_e_process_log(window(a.e), window(a.n), window(b.e), window(b.n), theta0=tolerance)


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
        lower, upper = stats.bucket_bounds(keys)
        lower[0] = 0.0
        self.lower, self.upper = lower, upper
        _, self.floor_edge = stats.bucket_bounds(np.array([floor_key]))

    def add(self, rng: np.random.Generator, dist: Dist, m: int, scale: float) -> None:
        p_floor = float(dist.cdf(np.array([self.floor_edge[0] / scale]))[0])
        below = rng.binomial(m, p_floor, size=self.rollouts)
        above = m - below
        self.counts[:, 0] += below
        total = int(above.sum())
        if total:
            u = rng.uniform(p_floor, 1.0, size=total)
            values = dist.ppf(u) * scale
            keys = np.clip(stats.bucket_keys(values), self.floor_key + 1, self.cap_key)
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
        j, k = stats.quantile_ranks(self.n, p, alpha)
        rank = k if side == "upper" else j
        idx = stats.order_statistic_buckets(cum, rank)
        edges = self.upper if side == "upper" else self.lower
        ext = np.concatenate(([0.0], edges, [np.inf]))
        value = ext[np.clip(idx, -1, self.width) + 1]
        in_floor = (rank <= self.n) & (idx == 0) if side == "upper" else np.zeros(1, bool)
        return value, in_floor


def key_range(dists_scales: list[tuple[Dist, float]], p_floor: float, p_cap: float):
    floor = min(float(d.ppf(np.array([p_floor]))[0]) * s for d, s in dists_scales)
    cap = max(float(d.ppf(np.array([p_cap]))[0]) * s for d, s in dists_scales)
    return int(stats.bucket_keys(np.array([floor]))[0]) - 1, int(
        stats.bucket_keys(np.array([cap]))[0]
    )


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
    *, alpha: float, log_ratio: bool, limit: float, harm: stats.Harm, min_n: int,
) -> np.ndarray:  # fmt: skip
    """Per rollout and look, for independent observations (one per unit)."""
    est, lo, hi = stats.mean_kernel(
        independent_means(a_n, a_s, a_ss), independent_means(b_n, b_s, b_ss),
        alpha=alpha, log_ratio=log_ratio,
    )  # fmt: skip
    enough = (a_n >= min_n) & (b_n >= min_n)
    if harm == "increase":
        return enough & (lo > limit)
    return enough & (hi < limit)


def independent_means(n: np.ndarray, s: np.ndarray, ss: np.ndarray) -> stats.RatioArm:
    """One observation per unit: the unit-level sums are the observation-level ones."""
    return stats.RatioArm(s, n, ss, n, ss, s, n, ss, s, n)


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


def cluster_sums(unit: np.ndarray, y: np.ndarray, n: np.ndarray | None = None) -> stats.ClusterSums:
    """ClusterSums from per-request unit ids and values (N = 1 per request unless given)."""
    n = np.ones_like(y, dtype=float) if n is None else n
    _, inv = np.unique(unit, return_inverse=True)
    yu = np.bincount(inv, weights=y)
    nu = np.bincount(inv, weights=n)
    return stats.ClusterSums.from_units(yu, nu)


def arm_from_requests(
    unit: np.ndarray,
    error: np.ndarray,
    latency: np.ndarray,
    cost: np.ndarray,
    feedback: np.ndarray,
) -> stats.ArmAggregates:
    """ArmAggregates from per-request arrays; ``feedback`` is NaN where none was given."""
    has_fb = ~np.isnan(feedback)
    fb = np.where(has_fb, feedback, 0.0)
    err = error.astype(float)
    return stats.ArmAggregates(
        requests=int(unit.size),
        errors=int(err.sum()),
        errors_by_kind={"server_error": int(err.sum())} if err.sum() else {},
        error_clusters=cluster_sums(unit, err),
        latency=stats.Buckets.from_values(latency),
        latency_sum=float(latency.sum()),
        latency_log_sum=float(np.log(latency).sum()),
        ttft=stats.Buckets.from_values(latency * 0.25),
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


def million_request_arm(rng: np.random.Generator, factor: float) -> stats.ArmAggregates:
    """One arm of 10^6 requests from 50,000 users, its latency lognormal around 800 ms times
    ``factor``: the size at which bench_stats.py times an evaluation and test_stats.py checks
    that one is deterministic."""
    n = 1_000_000
    latency = rng.lognormal(np.log(800), 0.7, n) * factor
    units = rng.integers(0, 50_000, n)
    z = np.log1p(latency)
    z_clusters = cluster_sums(units, z)
    return stats.ArmAggregates(
        requests=n,
        errors=20_000,
        error_clusters=stats.ClusterSums(50_000, 5e5, 1e7, 1e9),
        latency=stats.Buckets.from_values(latency),
        ttft=stats.Buckets.from_values(latency / 4),
        cost_n=n,
        cost_sum=2e3,
        cost_sum_sq=10.0,
        cost_clusters=stats.ClusterSums(50_000, 2e3, 5e4, 1e9),
        feedback_n=50_000,
        feedback_sum=35_000.0,
        feedback_sum_sq=35_000.0,
        feedback_clusters=stats.ClusterSums(30_000, 1e5, 1e5, 2e5),
        feedback_rate_clusters=stats.ClusterSums(50_000, 1e5, 1e6, 1e9),
        latency_log1p_n=n,
        latency_log1p_sum=float(z.sum()),
        latency_log1p_sum_sq=float((z * z).sum()),
        latency_clusters=z_clusters,
        ttft_log1p_n=n,
        ttft_log1p_sum=float(z.sum()),
        ttft_log1p_sum_sq=float((z * z).sum()),
        ttft_clusters=z_clusters,
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
) -> stats.ArmAggregates:
    units = units or max(1, n // 5)
    unit = rng.integers(0, units, n)
    return arm_from_requests(
        unit,
        rng.random(n) < error_rate,
        rng.lognormal(np.log(800.0), 0.5, n) * latency_factor,
        rng.lognormal(np.log(0.002), 0.8, n) * cost_factor,
        np.where(rng.random(n) < feedback_rate, (rng.random(n) < satisfaction) * 1.0, np.nan),
    )


# --- heavy-tailed, unequal activity ----------------------------------------------------
#
# A few users send most requests. Per rollout, an arm's users get an activity from a Pareto
# (Lomax) law and a parameter of their own (error propensity, typical latency, cost level,
# how they rate); each request goes to a user in proportion to activity, and stays with that
# user's arm (sticky). The unit-level sums are built per look from each unit's running
# totals exactly as ingest builds them, so the kernels see what production would. With 2,000
# users per arm and shape 1.1, Kish's effective number of users (N^2 / sum N_u^2) is ~45 in
# the median at 2,000 requests, among ~600 distinct ones.

HEAVY_USERS = 2000
HEAVY_SHAPE = 1.1
HEAVY_CHUNK = 100  # rollouts generated at once (memory: chunk x requests per rollout)


@dataclass
class UnitPaths:
    """Cumulative per-look sums of one arm for a ratio metric Y/N, shape (rollouts, looks):
    totals, the request-level sum of squares, and ``stats.ClusterSums``'s unit sums."""

    y: np.ndarray
    n: np.ndarray
    sum_sq: np.ndarray
    units: np.ndarray
    yy: np.ndarray
    yn: np.ndarray
    nn: np.ndarray
    yyn: np.ndarray
    ynn: np.ndarray
    nnn: np.ndarray

    def arm(self) -> stats.RatioArm:
        return stats.RatioArm(
            self.y, self.n, self.sum_sq, self.units, self.yy, self.yn, self.nn,
            self.yyn, self.ynn, self.nnn,
        )  # fmt: skip

    def counts(self) -> CountPaths:
        return CountPaths(
            self.y, self.n, self.units, self.yy, self.yn, self.nn, self.yyn, self.ynn, self.nnn
        )

    @classmethod
    def concat(cls, parts: list[UnitPaths]) -> UnitPaths:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))


def pick_users(rng: np.random.Generator, activity: np.ndarray, size: int) -> np.ndarray:
    """(rollouts, size) user indices, each row drawn in proportion to its activity row."""
    rows, users = activity.shape
    cw = np.cumsum(activity, axis=1)
    cw = cw / cw[:, -1:]
    cw[:, -1] = 1.0
    offset = np.arange(rows)[:, None]
    flat = (cw + offset).ravel()
    draws = (rng.random((rows, size)) + offset).ravel()
    idx = np.searchsorted(flat, draws, side="right").reshape(rows, size)
    return np.clip(idx - offset * users, 0, users - 1)


def unit_paths(users: np.ndarray, y: np.ndarray, n: np.ndarray, per_look: int) -> UnitPaths:
    """Per-look cumulative sums from requests in time order, shape (rollouts, looks *
    per_look): each request's unit, value y and count n (what it adds to Y_u and N_u).
    A unit's moments grow by (Y+y)^a (N+n)^b - Y^a N^b, as ingest books them."""
    rows, size = users.shape
    looks = size // per_look
    # By unit, in time order within it. Stable sorts of 16-bit integers are radix sorts (~6x
    # faster than on the int64 indices, the same order).
    keys = users.astype(np.int16) if users.max(initial=0) < 2**15 else users
    order = np.argsort(keys, axis=1, kind="stable")
    pick = np.arange(rows)[:, None]
    us, ys, ns = users[pick, order], y[pick, order], n[pick, order]
    start = np.ones((rows, size), dtype=bool)
    start[:, 1:] = us[:, 1:] != us[:, :-1]
    first = np.where(start, np.arange(size)[None, :], 0)
    np.maximum.accumulate(first, axis=1, out=first)

    def before(v: np.ndarray) -> np.ndarray:  # the unit's total before each request
        excl = np.cumsum(v, axis=1) - v
        return excl - np.take_along_axis(excl, first, axis=1)

    y0, n0 = before(ys), before(ns)
    y1, n1 = y0 + ys, n0 + ns
    key = (pick * looks + order // per_look).ravel()

    def per_look_sum(v: np.ndarray) -> np.ndarray:
        sums = np.bincount(key, weights=v.ravel(), minlength=rows * looks)
        return np.cumsum(sums.reshape(rows, looks), axis=1)

    def grow(a: int, b: int) -> np.ndarray:
        return per_look_sum(y1**a * n1**b - y0**a * n0**b)

    return UnitPaths(
        per_look_sum(ys), per_look_sum(ns), per_look_sum(ys * ys),
        per_look_sum(((n0 == 0) & (ns > 0)).astype(float)),
        grow(2, 0), grow(1, 1), grow(0, 2), grow(2, 1), grow(1, 2), grow(0, 3),
    )  # fmt: skip


def unit_paths_by_look(
    users: np.ndarray, y: np.ndarray, n: np.ndarray, per_look: int, n_units: int
) -> UnitPaths:
    """:func:`unit_paths` for an arm with many requests per look (the large arm of a 2 %
    holdout): the same sums, booked look by look from each unit's running totals, so the
    work grows with the units a look touches instead of sorting every request of the run.
    A unit's moments grow by (Y+y)^a (N+n)^b - Y^a N^b with y, n its look's increments:
    the telescoped sum of :func:`unit_paths`' per-request increments (whole numbers: equal)."""
    rows, size = users.shape
    looks = size // per_look
    state_y = np.zeros(rows * n_units)
    state_n = np.zeros(rows * n_units)
    offset = (np.arange(rows) * n_units)[:, None]
    names = ("y", "n", "sum_sq", "units", "yy", "yn", "nn", "yyn", "ynn", "nnn")
    out = {name: np.zeros((rows, looks)) for name in names}
    powers = {"yy": (2, 0), "yn": (1, 1), "nn": (0, 2), "yyn": (2, 1), "ynn": (1, 2), "nnn": (0, 3)}
    for t in range(looks):
        part = slice(t * per_look, (t + 1) * per_look)
        ys, ns = y[:, part], n[:, part]
        out["y"][:, t], out["n"][:, t] = ys.sum(axis=1), ns.sum(axis=1)
        out["sum_sq"][:, t] = (ys * ys).sum(axis=1)
        touched, inverse = np.unique((users[:, part] + offset).ravel(), return_inverse=True)
        y0, n0 = state_y[touched], state_n[touched]
        y1 = y0 + np.bincount(inverse, weights=ys.ravel(), minlength=touched.size)
        n1 = n0 + np.bincount(inverse, weights=ns.ravel(), minlength=touched.size)
        row = touched // n_units
        out["units"][:, t] = np.bincount(row, weights=(n0 == 0) & (n1 > 0), minlength=rows)
        for name, (a, b) in powers.items():
            grown = y1**a * n1**b - y0**a * n0**b
            out[name][:, t] = np.bincount(row, weights=grown, minlength=rows)
        state_y[touched], state_n[touched] = y1, n1
    return UnitPaths(*(np.cumsum(out[name], axis=1) for name in names))


def heavy_requests(
    rng: np.random.Generator,
    rollouts: int,
    per_look: int,
    looks: int,
    draw: Callable[[np.random.Generator, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    shape: float = HEAVY_SHAPE,
    by_look: bool = False,
) -> UnitPaths:
    """One arm's unit paths. ``draw(rng, users, looks)`` gives each request's (y, n) from
    its user index (rollouts_chunk, requests) and look index (requests,), and may keep
    per-rollout user parameters it draws on its first call per chunk (see the scenarios).
    ``shape`` is the Pareto shape of the users' activity (larger: lighter tail; ``inf``:
    every user equally active). ``by_look``: book the sums with :func:`unit_paths_by_look`
    (the same numbers; faster for an arm with hundreds of requests a look)."""
    parts = []
    for start in range(0, rollouts, HEAVY_CHUNK):
        rows = min(HEAVY_CHUNK, rollouts - start)
        if math.isinf(shape):
            activity = np.ones((rows, HEAVY_USERS))
        else:
            activity = rng.pareto(shape, (rows, HEAVY_USERS)) + 1.0
        users = pick_users(rng, activity, per_look * looks)
        y, n = draw(rng, users, np.repeat(np.arange(looks), per_look))
        if by_look:
            parts.append(unit_paths_by_look(users, y, n, per_look, HEAVY_USERS))
        else:
            parts.append(unit_paths(users, y, n, per_look))
    return UnitPaths.concat(parts)


def per_user(rng: np.random.Generator, users: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each request's value of its user's parameter (values: (rows, HEAVY_USERS))."""
    del rng
    return np.take_along_axis(values, users, axis=1)


def heavy_errors(
    rng: np.random.Generator,
    rollouts: int,
    *,
    base: float = 0.02,
    concentration: float = 5.0,
    ratio: float = 1.0,
    per_look: int = 50,
    drift: np.ndarray | None = None,
    by_look: bool = False,
) -> CountPaths:
    """Errors: each user fails with their own propensity (Beta with mean ``base``), times
    ``ratio`` in the candidate, times a drift shared by both arms at each look. ``by_look``:
    as :func:`heavy_requests` (the large arm of an unequal split)."""
    shift = np.ones(LOOKS) if drift is None else drift

    def draw(g: np.random.Generator, users: np.ndarray, look: np.ndarray):
        a, b = base * concentration, (1 - base) * concentration
        p = g.beta(a, b, (users.shape[0], HEAVY_USERS)) * ratio
        rate = np.minimum(per_user(g, users, p) * shift[look][None, :], 1.0)
        return (g.random(users.shape) < rate).astype(float), np.ones(users.shape)

    return heavy_requests(rng, rollouts, per_look, LOOKS, draw, by_look=by_look).counts()


def heavy_costs(
    rng: np.random.Generator,
    rollouts: int,
    *,
    factor: float = 1.0,
    per_look: int = 10,
    by_look: bool = False,
) -> UnitPaths:
    """Cost per request: a user's level (lognormal, sigma 0.8: short and long prompts) times
    lognormal noise (sigma 0.5), times ``factor`` in the candidate. ``by_look``: as
    :func:`heavy_requests`."""

    def draw(g: np.random.Generator, users: np.ndarray, look: np.ndarray):
        level = g.lognormal(np.log(0.002), 0.8, (users.shape[0], HEAVY_USERS))
        cost = per_user(g, users, level) * g.lognormal(0.0, 0.5, users.shape) * factor
        return cost, np.ones(users.shape)

    return heavy_requests(rng, rollouts, per_look, LOOKS, draw, by_look=by_look)


def heavy_feedback(
    rng: np.random.Generator, rollouts: int, *, mean: float = 0.7, per_look: int = 50
) -> UnitPaths:
    """Thumbs: one user in five rates, at their own rate (uniform 0-0.5 of their answers),
    thumbs up with their own probability (Beta with mean ``mean``, concentration 4)."""

    def draw(g: np.random.Generator, users: np.ndarray, look: np.ndarray):
        rows = users.shape[0]
        rates = np.where(
            g.random((rows, HEAVY_USERS)) < 0.2, g.uniform(0, 0.5, (rows, HEAVY_USERS)), 0
        )
        up = g.beta(mean * 4.0, (1 - mean) * 4.0, (rows, HEAVY_USERS))
        rated = (g.random(users.shape) < per_user(g, users, rates)).astype(float)
        thumbs = (g.random(users.shape) < per_user(g, users, up)).astype(float)
        return rated * thumbs, rated

    return heavy_requests(rng, rollouts, per_look, LOOKS, draw)


def heavy_preferences(
    rng: np.random.Generator,
    rollouts: int,
    *,
    net: float,
    per_look: int = 10,
    ties: tuple[float, float] = (2.0, 3.0),
    spread: float = 0.5,
    shape: float = HEAVY_SHAPE,
) -> UnitPaths:
    """The judge's paired verdicts s in {+1, 0, -1}, sticky by user. Each user has their own
    share of ties (Beta ``ties``, mean 0.4) and their own lean among decisive verdicts,
    uniform within +-``spread`` around the one that makes the population's net preference
    E[s] exactly ``net`` (users ask different kinds of questions, and the candidate is better
    at some): heavy users then carry their own lean, the clustering the test must survive."""
    mean_decisive = ties[1] / (ties[0] + ties[1])
    centre = net / mean_decisive
    if abs(centre) + spread > 1.0:
        raise ValueError("net and spread leave [-1, 1]")

    def draw(g: np.random.Generator, users: np.ndarray, look: np.ndarray):
        rows = users.shape[0]
        decisive = 1.0 - g.beta(*ties, (rows, HEAVY_USERS))
        lean = centre + g.uniform(-spread, spread, (rows, HEAVY_USERS))
        d, m = per_user(g, users, decisive), per_user(g, users, lean)
        win, loss = d * (1.0 + m) / 2.0, d * (1.0 - m) / 2.0
        u = g.random(users.shape)
        s = np.where(u < win, 1.0, np.where(u < win + loss, -1.0, 0.0))
        return s, np.ones(users.shape)

    return heavy_requests(rng, rollouts, per_look, LOOKS, draw, shape)


def heavy_scores(
    rng: np.random.Generator,
    rollouts: int,
    *,
    shift: float = 0.0,
    per_look: int = 10,
    shape: float = HEAVY_SHAPE,
) -> UnitPaths:
    """A pointwise judge's rubric scores 1-5 of one arm's answers, sticky by user: 1 +
    Binomial(4, g) with each user's own g in [0.25, 0.9] (0.25 + 0.65 Beta(4, 2): some users'
    questions are harder), moved by ``shift`` / 4 so that the arm's mean moves by exactly
    ``shift`` (the mean control score is 3.73)."""

    def draw(g: np.random.Generator, users: np.ndarray, look: np.ndarray):
        good = 0.25 + 0.65 * g.beta(4.0, 2.0, (users.shape[0], HEAVY_USERS)) + shift / 4.0
        if good.min() < 0.0 or good.max() > 1.0:
            raise ValueError("shift leaves [0, 1]")
        return 1.0 + g.binomial(4, per_user(g, users, good)), np.ones(users.shape)

    return heavy_requests(rng, rollouts, per_look, LOOKS, draw, shape)


def heavy_quantile_rollbacks(
    rng: np.random.Generator,
    rollouts: int,
    *,
    p: float = 0.95,
    spread: float,
    factor: float,
    tolerance: float,
    alpha: float,
    per_look: int = 25,
    noise: float = 0.5,
    median: float = 800.0,
    clustered: bool = True,
    levels: str = "normal",
) -> tuple[np.ndarray, np.ndarray]:
    """Per rollout and look: does ``quantile_test`` say regressed? And n per arm per look.

    Latency (ms) = median x (``factor`` in the candidate) x exp(b_u + noise e): b_u a user's
    own level with sd ``spread`` (long prompts, a slow region), normal, or ``levels="slow
    few"``: one user in ten slower by spread / 0.3 (the same sd, far from normal); e
    independent per request. Each arm's design effect comes from its units' log(1 + ms) sums through
    ``stats.design_effect`` (``clustered=False``: the test without it, as before). Values
    below a floor far under every rank the sequence uses are only counted, as in
    QuantileArm, and a control order statistic landing there counts as a rollback.
    """
    half = alpha / 2.0
    size = per_look * LOOKS
    sd = math.hypot(spread, noise)
    lo_key = int(stats.bucket_keys(np.array([median * math.exp(-3.0 * sd)]))[0])
    hi_key = int(stats.bucket_keys(np.array([median * factor * math.exp(6.0 * sd)]))[0])
    width = hi_key - lo_key + 1
    lower, upper = stats.bucket_bounds(np.arange(lo_key, hi_key + 1))
    lower[0] = 0.0
    lower_ext = np.concatenate(([0.0], lower, [np.inf]))
    upper_ext = np.concatenate(([0.0], upper, [np.inf]))
    out = []
    for start in range(0, rollouts, HEAVY_CHUNK):
        rows = min(HEAVY_CHUNK, rollouts - start)
        arms = []
        for f in (1.0, factor):
            activity = rng.pareto(HEAVY_SHAPE, (rows, HEAVY_USERS)) + 1.0
            if levels == "slow few":
                level = np.where(rng.random((rows, HEAVY_USERS)) < 0.1, spread / 0.3, 0.0)
            else:
                level = rng.normal(0.0, spread, (rows, HEAVY_USERS))
            users = pick_users(rng, activity, size)
            values = (
                median
                * f
                * np.exp(per_user(rng, users, level) + noise * rng.standard_normal(users.shape))
            )
            keys = np.clip(stats.bucket_keys(values), lo_key, hi_key) - lo_key
            spread_paths = unit_paths(users, np.log1p(values), np.ones(users.shape), per_look)
            deff = (
                stats.design_effect(spread_paths.arm(), p, half)
                if clustered
                else np.ones((rows, LOOKS))
            )
            arms.append((keys.reshape(rows, LOOKS, per_look), deff))
        (keys_a, deff_a), (keys_b, deff_b) = arms
        counts_a = np.zeros((rows, width), dtype=np.int64)
        counts_b = np.zeros((rows, width), dtype=np.int64)
        flat = np.repeat(np.arange(rows), per_look) * width
        decisions = np.zeros((rows, LOOKS), dtype=bool)
        for t in range(LOOKS):
            counts_a += np.bincount(flat + keys_a[:, t].ravel(), minlength=rows * width).reshape(
                rows, width
            )
            counts_b += np.bincount(flat + keys_b[:, t].ravel(), minlength=rows * width).reshape(
                rows, width
            )
            n = (t + 1) * per_look
            _, k = stats.effective_quantile_ranks(np.full(rows, n), p, half, deff_a[:, t])
            j, _ = stats.effective_quantile_ranks(np.full(rows, n), p, half, deff_b[:, t])
            idx_a = stats.order_statistic_buckets(np.cumsum(counts_a, axis=1), k)
            idx_b = stats.order_statistic_buckets(np.cumsum(counts_b, axis=1), j)
            hi_a = upper_ext[np.clip(idx_a, -1, width) + 1]
            lo_b = lower_ext[np.clip(idx_b, -1, width) + 1]
            floor_hit = (k <= n) & (idx_a == 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                decisions[:, t] = (np.where(hi_a > 0, lo_b / hi_a, np.inf) > tolerance) | floor_hit
        out.append(decisions)
    return np.concatenate(out), np.arange(1, LOOKS + 1) * per_look


# --- tests' own statistics: code the engine does not run --------------------------------
# The reference's count e-process (measured against the acting error-rate test in the
# simulations, tests/guardrails/stats/test_power.py and test_false_rollback.py) and the paired
# difference test of a per-request score on the log scale (a check of the mixture on paired
# data; the engine's paired tests are stats.paired_error_test and stats.paired_metric_test).

# The count e-process for error rate (measured; not the acting test).-------------

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
    is valid it is the less powerful one (tests/guardrails/stats/test_power.py).
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


@dataclass(frozen=True, slots=True)
class PairedDiffs:
    """Shadow mode: per request, d = candidate - control (log latency, judge score, ...).

    ``clusters`` has Y = sum of d, N = pairs, per unit.
    """

    n: int = 0
    sum: float = 0.0
    sum_sq: float = 0.0
    clusters: ClusterSums = ClusterSums()


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
    geometric means; otherwise an absolute difference (judge score). Variance over units,
    as :func:`ratio_cluster_variance` (Y = sum of d, N = pairs, per unit).
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
    var, df = ratio_cluster_variance(
        RatioArm.of(diffs.sum, n, diffs.clusters, diffs.sum_sq), var_obs / n
    )
    width = float(np.sqrt(var) * critical_value(n, alpha, df, n_star=n_star))
    est, lo, hi = mean, mean - width, mean + width
    if log_scale:
        est, lo, hi = math.exp(est), math.exp(lo), math.exp(hi)
    return _verdict(metric, est, lo, hi, tolerance, kind, harm, diffs.n, diffs.n, alpha)
