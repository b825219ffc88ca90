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
    heavy_rate: float,
    base: float,
    concentration: float,
    ratio: float = 1.0,
):
    """A few sticky heavy users carry much of the traffic, each with its own error rate
    (Beta around the base rate); the rest is independent light traffic."""
    a, b = base * concentration, (1 - base) * concentration
    p_u = np.minimum(rng.beta(a, b, size=(rollouts, heavy_units)) * ratio, 1.0)
    n_u = rng.poisson(heavy_rate, size=(rollouts, LOOKS, heavy_units))
    e_u = rng.binomial(n_u, p_u[:, None, :])
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
) -> np.ndarray:
    """Per rollout and look: does ``error_rate_test`` say regressed?"""
    _, lo, _ = S.error_rate_kernel(
        a.e, a.n, a.units, a.yy, a.yn, a.nn, b.e, b.n, b.units, b.yy, b.yn, b.nn,
        alpha=alpha, kind=kind,
    )  # fmt: skip
    enough = S.error_rate_enough(a.e, b.e, min_errors)
    return enough & (lo > S.threshold(tolerance, kind, "increase"))


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
    d = sps.lognorm(s=sigma, scale=median)
    return Dist(ppf=d.ppf, cdf=d.cdf)


def pareto(shape: float, scale: float = 300.0) -> Dist:
    d = sps.pareto(b=shape, scale=scale)
    return Dist(ppf=d.ppf, cdf=d.cdf)


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
        self.counts = np.zeros((rollouts, self.width), dtype=np.int64)
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
            self.counts += np.bincount(flat, minlength=self.rollouts * self.width).reshape(
                self.rollouts, self.width
            )
        self.n += m

    def bounds(self, p: float, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lower, upper, upper-in-floor) per rollout via the stats kernel."""
        cum = np.cumsum(self.counts, axis=1)
        lower, upper = S.quantile_bounds_from_cumulative(
            self.lower, self.upper, cum, self.n, p, alpha
        )
        _, k = S.quantile_ranks(self.n, p, alpha)
        in_floor = (k <= self.n) & (cum[:, 0] >= k)
        return lower, upper, in_floor


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
    candidate_factor: float,
    tolerance: float,
    alpha: float,
    m_per_look: int | np.ndarray,
    drift: np.ndarray | None = None,
    looks: int = LOOKS,
    p_floor: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per rollout and look: does ``quantile_test`` say regressed? Also n per arm per look.

    The candidate's values are ``candidate_factor`` times draws from ``candidate``.
    """
    drift = np.ones(looks) if drift is None else drift
    m = np.broadcast_to(np.asarray(m_per_look), (looks,))
    if p_floor is None:
        p_floor = 0.8 if p < 0.98 else 0.95
    lo_key, hi_key = key_range(
        [(control, drift.min()), (control, drift.max()),
         (candidate, candidate_factor * drift.min()), (candidate, candidate_factor * drift.max())],
        p_floor, 1 - 1e-5,
    )  # fmt: skip
    arm_a = QuantileArm(rollouts, lo_key, hi_key)
    arm_b = QuantileArm(rollouts, lo_key, hi_key)
    half = alpha / 2
    out = np.zeros((rollouts, looks), dtype=bool)
    ns = np.zeros(looks, dtype=np.int64)
    for t in range(looks):
        arm_a.add(rng, control, int(m[t]), drift[t])
        arm_b.add(rng, candidate, int(m[t]), drift[t] * candidate_factor)
        ns[t] = arm_a.n
        _, hi_a, floor_hit = arm_a.bounds(p, half)
        lo_b, _, _ = arm_b.bounds(p, half)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio_lower = np.where(hi_a > 0, lo_b / hi_a, np.inf)
        out[:, t] = (ratio_lower > tolerance) | floor_hit
    return out, ns


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
