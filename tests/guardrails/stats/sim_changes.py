"""Window-level simulators for the change detectors (stats.changes): days of minute windows at
one look per 15 s, from the windows' sums rather than request by request.

The model is the suite's heavy-tailed one (sim.py): per rollout, each arm has HEAVY_USERS
sticky users with a Pareto(1.1) activity and a parameter of their own (error propensity,
typical latency, level of a mean metric), and a diurnal drift shared by both arms moves the
traffic and the metric. Users send requests as Poisson processes, so given the users'
parameters an arm's errors (or values above a threshold) in any stretch of time are Poisson
with the activity-weighted rate, independent of its other events: a window's counts are
multinomial splits of the hour's, which are drawn user by user. Each hour's per-user totals
give the stage's cluster sums (what the margins read) at the hour's end; every look of the
next hour uses them, where the engine reads the current totals (in the first hour there are
none, and the detector runs with no margin: harder on it, not easier).

A look is a quarter of a window: the detector's statistic at look (w, q) is the committed
Shiryaev-Roberts statistic after window w - 1 with the partial window w (its first q + 1
quarters) on top, as the engine computes it. Every e-value, scan and margin here is the
production code's (stats.changes, stats.detector).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

from migrations_app.guardrails.stats import change_evidence, detector
from migrations_app.guardrails.stats.inputs import RatioArm
from tests.guardrails.stats import sim
from tests.guardrails.stats.sim import HEAVY_SHAPE, HEAVY_USERS

QUARTERS = 4
HOUR = 60
#: The first hour in segments of these many windows, so the margins (read at each segment's
#: end) follow the early stage as the engine's do at every look; then whole hours.
FIRST_HOUR = (1, 1, 2, 4, 8, 16, 28)


def diurnal(hours: int, amplitude: float, phase: float = 0.0) -> np.ndarray:
    """A shared multiplier per hour: 1 + amplitude x sin over a day."""
    h = np.arange(hours)
    return 1.0 + amplitude * np.sin(2 * math.pi * (h + phase) / 24.0)


@dataclass(frozen=True)
class Timeline:
    """The run's segments: lengths in windows, and each window's segment and hour."""

    hours: int

    @property
    def lengths(self) -> np.ndarray:
        return np.array(FIRST_HOUR + (HOUR,) * (self.hours - 1))

    @property
    def windows(self) -> int:
        return self.hours * HOUR

    @property
    def segment_of_window(self) -> np.ndarray:
        return np.repeat(np.arange(self.lengths.size), self.lengths)

    @property
    def hour_of_segment(self) -> np.ndarray:
        starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        return starts // HOUR

    def per_segment(self, hourly: np.ndarray) -> np.ndarray:
        """(hours,) -> (segments,)."""
        return hourly[self.hour_of_segment]

    def per_window(self, x: np.ndarray) -> np.ndarray:
        """(rows, segments) -> (rows, windows)."""
        return x[:, self.segment_of_window]

    def previous(self, x: np.ndarray) -> np.ndarray:
        """(rows, segments) values at segments' ends -> the value each segment's looks read
        (the previous segment's end; zeros before the first)."""
        return np.concatenate([np.zeros_like(x[:, :1]), x[:, :-1]], axis=1)


@dataclass
class ArmHours:
    """One arm over the run: events per quarter-window (rollouts, windows, QUARTERS) and the
    stage's cumulative cluster sums at each segment's end (rollouts, segments) as a RatioArm."""

    n: np.ndarray  # requests (or values) per quarter-window
    y: np.ndarray  # errors (or the values' sum) per quarter-window
    totals: RatioArm  # cumulative to each segment's end
    ss: np.ndarray | None = None  # the values' sum of squares per quarter-window (means)

    def per_look(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Running (n, y, ss) at every look, (rows, looks): what a cumulative test reads."""
        rows = self.n.shape[0]
        ss = self.y if self.ss is None else self.ss
        return tuple(
            np.cumsum(x.reshape(rows, -1), axis=1).astype(np.float64) for x in (self.n, self.y, ss)
        )  # type: ignore[return-value]


def split(
    rng: np.random.Generator, line: Timeline, per_segment: np.ndarray, weights: np.ndarray | None
) -> np.ndarray:
    """(rows, segments) counts -> (rows, windows, QUARTERS): spread over each segment's
    quarter-windows in proportion to ``weights`` (one per quarter; None: uniformly)."""
    rows = per_segment.shape[0]
    out = np.empty((rows, line.windows, QUARTERS), dtype=np.int64)
    first = 0
    for seg, length in enumerate(line.lengths):
        if weights is None:
            p = np.full(length * QUARTERS, 1.0 / (length * QUARTERS))
        else:
            w = weights[first * QUARTERS : (first + length) * QUARTERS]
            p = w / w.sum()
        parts = rng.multinomial(per_segment[:, seg].astype(np.int64), p)
        out[:, first : first + length, :] = parts.reshape(rows, length, QUARTERS)
        first += length
    return out


def _cumulative_clusters(y_us: np.ndarray, n_us: np.ndarray, ss_s: np.ndarray) -> RatioArm:
    """Cluster sums of per-user cumulative totals at each segment's end: (rows, users, segs)."""
    y = np.cumsum(y_us, axis=2, dtype=np.float64)
    n = np.cumsum(n_us, axis=2, dtype=np.float64)

    # The sums over users of products, each in one pass and without an array of products (the
    # arrays are rollouts x 2,000 users x segments): the same sums as (y * n).sum(axis=1), whole
    # numbers for counts, 8x faster.
    def users_sum(*factors: np.ndarray) -> np.ndarray:
        return np.einsum(",".join(["rus"] * len(factors)) + "->rs", *factors)

    return RatioArm(
        y.sum(axis=1), n.sum(axis=1), np.cumsum(ss_s, axis=1), (n > 0).sum(axis=1),
        users_sum(y, y), users_sum(y, n), users_sum(n, n),
        users_sum(y, y, n), users_sum(y, n, n), users_sum(n, n, n),
    )  # fmt: skip


def activity(rng: np.random.Generator, rows: int, heavy: bool) -> np.ndarray:
    """Users' shares of an arm's traffic: Pareto (a few send most) or equal."""
    if heavy:
        a = rng.pareto(HEAVY_SHAPE, (rows, HEAVY_USERS)) + 1.0
    else:
        a = np.ones((rows, HEAVY_USERS))
    return a / a.sum(axis=1, keepdims=True)


def _factor(line: Timeline, change: Callable[[np.ndarray], np.ndarray] | float) -> np.ndarray:
    """The change's value per quarter-window: ``change`` takes the time in minutes since the
    stage began (each quarter's middle)."""
    t = (np.arange(line.windows * QUARTERS) + 0.5) / QUARTERS
    return np.asarray(change(t) if callable(change) else np.full(t.size, float(change)))


def _segment_mean(line: Timeline, per_quarter: np.ndarray) -> np.ndarray:
    seg = np.repeat(line.segment_of_window, QUARTERS)
    return np.bincount(seg, weights=per_quarter) / (line.lengths * QUARTERS)


def error_arm(
    rng: np.random.Generator,
    rows: int,
    hours: int,
    *,
    per_minute: float,
    base: float,
    ratio: Callable[[np.ndarray], np.ndarray] | float = 1.0,
    concentration: float | None = 5.0,
    heavy: bool = True,
    traffic: np.ndarray | None = None,
    drift: np.ndarray | None = None,
) -> ArmHours:
    """Errors of one arm. ``concentration``: users' own propensities Beta around ``base``
    (None: every user at ``base``); ``ratio``: a factor on every propensity, or a function
    of the window index giving it per window (a regression starting mid-run: a segment's
    errors are drawn at its mean factor and spread in proportion to the factor)."""
    line = Timeline(hours)
    traffic = line.per_segment(np.ones(hours) if traffic is None else traffic)
    drift = line.per_segment(np.ones(hours) if drift is None else drift)
    share = activity(rng, rows, heavy)
    if concentration is None:
        p = np.full((rows, HEAVY_USERS), base)
    else:
        p = rng.beta(base * concentration, (1 - base) * concentration, (rows, HEAVY_USERS))
    lam = share[:, :, None] * per_minute * (line.lengths * traffic)[None, None, :]
    n_us = rng.poisson(lam)
    factor = _factor(line, ratio)
    seg_factor = _segment_mean(line, factor)
    rate = np.minimum(p[:, :, None] * (drift * seg_factor)[None, None, :], 1.0)
    e_us = rng.binomial(n_us, rate)
    n_s, e_s = n_us.sum(axis=1), e_us.sum(axis=1)
    # Errors and the other requests are independent Poisson streams: split each.
    others = split(rng, line, n_s - e_s, None)
    errors = split(rng, line, e_s, factor)
    return ArmHours(others + errors, errors, _cumulative_clusters(e_us, n_us, e_s))


def mean_arm(
    rng: np.random.Generator,
    rows: int,
    hours: int,
    *,
    per_minute: float,
    level: float,
    spread: float,
    noise: float,
    shift: Callable[[np.ndarray], np.ndarray] | float = 0.0,
    heavy: bool = True,
    drift: np.ndarray | None = None,
) -> ArmHours:
    """A mean metric (e.g. a score): user u's values are level + b_u + shift + noise, b_u with
    sd ``spread`` (a user's own habit), plus a shared additive ``drift`` per hour. A window's
    sum is its values' count times its segment's mean (plus the change's pattern within the
    segment) plus the sampling noise of a random subset of the segment's values (Gaussian: a
    window holds dozens to thousands of them)."""
    line = Timeline(hours)
    drift = line.per_segment(np.zeros(hours) if drift is None else drift)
    share = activity(rng, rows, heavy)
    b = rng.normal(0.0, spread, (rows, HEAVY_USERS))
    n_us = rng.poisson(share[:, :, None] * per_minute * line.lengths[None, None, :])
    moved = _factor(line, shift)
    seg_shift = _segment_mean(line, moved)
    mu = level + b[:, :, None] + (drift + seg_shift)[None, None, :]
    s_us = n_us * mu + np.sqrt(n_us) * noise * rng.standard_normal(n_us.shape)
    # A user's sum of squares in a segment is s^2 / n plus noise^2 times a chi-square with n - 1
    # degrees of freedom (independent of s); only the sum over users is read, and a sum of
    # independent chi-squares is one chi-square with the summed degrees of freedom: one draw
    # per segment instead of one per user (of which most have n <= 1), the same law.
    df = np.maximum(n_us - 1, 0).sum(axis=1)
    chi = noise**2 * np.where(df > 0, rng.chisquare(np.maximum(df, 1)), 0.0)
    n_s, s_s = n_us.sum(axis=1), s_us.sum(axis=1)
    ss_s = (s_us**2 / np.maximum(n_us, 1)).sum(axis=1) + chi  # s is 0 where n is
    counts = split(rng, line, n_s, None)
    mean_s = s_s / np.maximum(n_s, 1)
    var_s = np.maximum(ss_s / np.maximum(n_s, 1) - mean_s**2, 0.0)
    at = line.per_window(mean_s)[:, :, None]
    seg = np.repeat(line.segment_of_window, QUARTERS)
    offset = (moved - seg_shift[seg]).reshape(1, line.windows, QUARTERS)
    # The slots of a segment hold random subsets of its values: Gaussian noise with variance
    # in proportion to each slot's count, less its count's share of the noise's total, so
    # the slots add up to the segment's sum (the conditional law given the total).
    raw = np.sqrt(counts * line.per_window(var_s)[:, :, None]) * rng.standard_normal(counts.shape)
    flat_c = counts.reshape(counts.shape[0], -1).astype(np.float64)
    flat_r = raw.reshape(raw.shape[0], -1)
    size = line.lengths.size
    seg_r = np.stack([np.bincount(seg, weights=r, minlength=size) for r in flat_r])
    seg_c = np.stack([np.bincount(seg, weights=c, minlength=size) for c in flat_c])
    share_c = flat_c / np.maximum(seg_c[:, seg], 1.0)
    noise_w = (flat_r - share_c * seg_r[:, seg]).reshape(counts.shape)
    sums = counts * (at + offset) + noise_w
    within = line.per_window(var_s)[:, :, None]
    ss = (
        np.where(counts > 0, sums**2 / np.maximum(counts, 1), 0.0)
        + np.maximum(counts - 1, 0) * within
    )
    return ArmHours(counts, sums, _cumulative_clusters(s_us, n_us, ss_s), ss)


# --- running the detector over the looks -----------------------------------------------


def limits(
    line: Timeline, margin: np.ndarray, limit: float, relative: bool, harm: str
) -> np.ndarray:
    """(rows, segments) margins at segments' ends -> (rows, windows) null boundaries."""
    away = 1.0 if harm == "increase" else -1.0
    m = np.minimum(line.per_window(line.previous(margin)), change_evidence.MAX_MARGIN)
    return limit * np.exp(away * m) if relative else limit + away * m


def looks(log_e_full: np.ndarray, log_e_partial: np.ndarray, log_weights: np.ndarray) -> np.ndarray:
    """The detector's statistic at every look: (rows, windows, QUARTERS).

    ``log_e_full``: (rows, windows, J) e-values of whole windows; ``log_e_partial``: (rows,
    windows, QUARTERS - 1, J) of their first 1..3 quarters."""
    rows, windows, j = log_e_full.shape
    zero = np.zeros((rows, windows, j, detector.SUMS))
    out = detector.scan(
        log_e_full, zero, first=0, log_r0=np.full((rows, j), -np.inf),
        log_w0=np.full((rows, j), -np.inf), since0=np.zeros((rows, j), np.int64),
        sums0=np.zeros((rows, j, detector.SUMS)), keep_path=True,
    )  # fmt: skip
    previous = np.concatenate([np.full((rows, 1, j), -np.inf), out.path[:, :-1, :]], axis=1)
    stats = np.empty((rows, windows, QUARTERS))
    for q in range(QUARTERS - 1):
        stats[:, :, q] = detector.mixture(
            detector.provisional(previous, log_e_partial[:, :, q, :]), log_weights
        )
    stats[:, :, QUARTERS - 1] = detector.mixture(out.path, log_weights)
    return stats


def first_alarm(stats: np.ndarray, log_threshold: float) -> np.ndarray:
    """The first look (in quarters from the start) at which each rollout alarms, or -1."""
    flat = stats.reshape(stats.shape[0], -1) >= log_threshold
    hit = flat.any(axis=1)
    return np.where(hit, flat.argmax(axis=1), -1)


def partial(x: np.ndarray) -> np.ndarray:
    """(rows, windows, QUARTERS) per-quarter counts -> cumulative within the window."""
    return np.cumsum(x, axis=2)


def error_looks(
    control: ArmHours,
    candidate: ArmHours,
    *,
    tolerance: float,
    alpha: float,
    margins: bool = True,
) -> np.ndarray:
    """The error-rate detector's statistic at every look (relative tolerance: rate family)."""
    line = Timeline(control.n.shape[1] // HOUR)
    margin = change_evidence.ratio_margin(
        control.totals, candidate.totals, relative=True, alpha=alpha / 2.0, rate=True
    )
    if not margins:
        margin = np.zeros_like(margin)
    limit = limits(line, margin, tolerance, True, "increase")
    na, ya, nb, yb = (partial(x) for x in (control.n, control.y, candidate.n, candidate.y))
    lim = limit[:, :, None]
    full, _ = change_evidence.rate_evidence(
        na[..., -1], ya[..., -1], nb[..., -1], yb[..., -1], limit=limit, harm="increase"
    )
    part, _ = change_evidence.rate_evidence(
        na[..., :-1], ya[..., :-1], nb[..., :-1], yb[..., :-1],
        limit=np.broadcast_to(lim, na[..., :-1].shape), harm="increase",
    )  # fmt: skip
    return looks(full, part, detector.log_weights(change_evidence.RATE_WEIGHTS))


def mean_looks(
    control: ArmHours,
    candidate: ArmHours,
    *,
    tolerance: float,
    harm: str,
    alpha: float,
) -> np.ndarray:
    """A mean metric's detector (absolute tolerance) at every look."""
    line = Timeline(control.n.shape[1] // HOUR)
    ta, tb = control.totals, candidate.totals
    margin = change_evidence.ratio_margin(ta, tb, relative=False, alpha=alpha / 2.0, rate=False)
    limit_0 = tolerance if harm == "increase" else -tolerance
    limit = limits(line, margin, limit_0, False, harm)

    def variance(t: RatioArm) -> np.ndarray:
        n = np.maximum(t.n, 1.0)
        m = t.y / n
        v = np.maximum(t.sum_sq / n - m * m, 0.0) * n / np.maximum(n - 1.0, 1.0)
        # Before any values: the first segment's own spread (the engine's first looks read
        # the few values they have).
        prev = np.concatenate([v[:, :1], v[:, :-1]], axis=1)
        return line.per_window(prev)

    va, vb = variance(ta), variance(tb)
    na, sa, nb, sb = (partial(x) for x in (control.n, control.y, candidate.n, candidate.y))
    kw = dict(kind="absolute", harm=harm, size=abs(tolerance))
    full, _ = change_evidence.mean_evidence(
        na[..., -1], sa[..., -1], nb[..., -1], sb[..., -1], var_a=va, var_b=vb, limit=limit,
        **kw,
    )  # fmt: skip
    b3 = np.broadcast_to
    shape = na[..., :-1].shape
    part, _ = change_evidence.mean_evidence(
        na[..., :-1], sa[..., :-1], nb[..., :-1], sb[..., :-1],
        var_a=b3(va[..., None], shape), var_b=b3(vb[..., None], shape),
        limit=b3(limit[..., None], shape), **kw,
    )  # fmt: skip
    return looks(full, part, detector.log_weights(change_evidence.MEAN_WEIGHTS))


# --- latency quantiles ----------------------------------------------------------------


def _survival(levels: np.ndarray, share: np.ndarray, noise: float, grid: np.ndarray) -> np.ndarray:
    """P(value > exp(grid)) for an arm whose user u's log values are levels_u + noise e,
    activity-weighted: (rows, grid)."""
    z = (grid[None, None, :] - levels[:, :, None]) / noise
    return np.einsum("ru,rug->rg", share, special.ndtr(-z))


def quantile_looks(
    rng: np.random.Generator,
    rows: int,
    hours: int,
    *,
    per_minute: float,
    spread: float,
    factor: Callable[[np.ndarray], np.ndarray] | float,
    tolerance: float,
    alpha: float,
    quantile: float = 0.95,
    noise: float = 0.5,
    median: float = 800.0,
    heavy: bool = True,
    drift: np.ndarray | None = None,
) -> np.ndarray:
    """The p-quantile detector's statistic at every look. Latency = median x drift x
    factor (candidate) x exp(b_u + noise e), b_u a user's own level (sd ``spread``).

    Per window and arm, the values above each threshold are a multinomial split of the
    window's requests by the arm's activity-weighted survival function (exact given the
    users, for Poisson arrivals); the reference moves with the window's control quantile,
    drawn from its order statistic's law (the production code computes it from buckets),
    and the margins come from each hour's design effect as the engine's do."""
    drift = np.ones(hours) if drift is None else drift
    line = Timeline(hours)
    windows = line.windows
    tail = 1.0 - quantile
    low = math.log(median) - 6 * (noise + spread)
    grid = np.linspace(low, math.log(median * 8) + 8 * (noise + spread), 600)
    log_drift_s = np.log(line.per_segment(drift))
    arms = []
    for _ in range(2):
        share = activity(rng, rows, heavy)
        levels = math.log(median) + rng.normal(0.0, spread, (rows, HEAVY_USERS))
        surv = _survival(levels, share, noise, grid)  # at drift 1 and factor 1
        n_w = rng.poisson(per_minute, (rows, windows))
        quarters = rng.multinomial(n_w, np.full(QUARTERS, 1.0 / QUARTERS))
        # The margins' per-user log latency sums, drawn alongside the windows' counts from
        # the same users (the margins read only their spread).
        n_us = rng.poisson(share[:, :, None] * per_minute * line.lengths[None, None, :])
        mu = levels[:, :, None] + log_drift_s[None, None, :]
        y_us = n_us * mu + np.sqrt(n_us) * noise * rng.standard_normal(n_us.shape)
        ss_s = (n_us * (mu**2 + noise**2)).sum(axis=1)
        spread_arm = _cumulative_clusters(y_us, n_us, ss_s)
        margin = change_evidence.quantile_margin_v(spread_arm, spread_arm.n, quantile, alpha / 4.0)
        arms.append((surv, quarters, line.per_window(line.previous(margin))))
    (surv_a, q_a, m_a), (surv_b, q_b, m_b) = arms
    steps = np.asarray(change_evidence.QUANTILE_STEPS)
    j = steps.size
    log_full = np.zeros((rows, windows, j))
    log_part = np.zeros((rows, windows, QUARTERS - 1, j))
    reference = np.full(rows, np.nan)
    log_drift_w = np.repeat(np.log(drift), HOUR)
    for w in range(windows):
        when = w + (np.arange(QUARTERS) + 0.5) / QUARTERS
        f = factor(when) if callable(factor) else np.full(QUARTERS, float(factor))
        shift_a = log_drift_w[w]
        known = np.isfinite(reference)
        t = np.where(known, reference, median)[:, None] * steps[None, :]
        bound = t * tolerance
        # P(above) at the thresholds: the survival function shifted by the drift (log scale).
        pa = _interp(surv_a, grid, np.log(t) - shift_a)
        above_a = _nested(rng, q_a[:, w, :], pa)
        above_b = np.concatenate(
            [
                _nested(rng, q_b[:, w, q : q + 1],
                        _interp(surv_b, grid, np.log(bound) - shift_a - math.log(f[q])))
                for q in range(QUARTERS)
            ],
            axis=1,
        )  # fmt: skip
        cum_na = np.cumsum(q_a[:, w, :], axis=1)
        cum_nb = np.cumsum(q_b[:, w, :], axis=1)
        cum_aa = np.cumsum(above_a, axis=1)
        cum_ab = np.cumsum(above_b, axis=1)
        for q in range(QUARTERS):
            le, _ = change_evidence.quantile_evidence(
                cum_na[:, q], cum_aa[:, q, :], cum_nb[:, q], cum_ab[:, q, :], tail=tail,
                margin_a=m_a[:, w], margin_b=m_b[:, w],
            )  # fmt: skip
            le = np.where(known[:, None], le, 0.0)
            if q == QUARTERS - 1:
                log_full[:, w, :] = le
            else:
                log_part[:, w, q, :] = le
        # The window's control quantile (its order statistic), then the moving reference.
        n = cum_na[:, -1]
        k = np.ceil(quantile * np.maximum(n, 1)).astype(np.int64)
        u = rng.beta(np.maximum(k, 1), np.maximum(n - k + 1, 1))
        level = _inverse(surv_a, grid, 1.0 - u) + shift_a
        value = np.exp(level)
        ok = n >= change_evidence.REFERENCE_MIN
        blended = np.exp(
            (1 - change_evidence.REFERENCE_RATE) * np.log(np.where(known, reference, value))
            + change_evidence.REFERENCE_RATE * np.log(value)
        )
        reference = np.where(ok, np.where(known, blended, value), reference)
    return looks(log_full, log_part, detector.log_weights(change_evidence.QUANTILE_WEIGHTS))


def _interp(surv: np.ndarray, grid: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Survival at log values x (rows, k), linear in the grid."""
    idx = np.clip(np.searchsorted(grid, x) - 1, 0, grid.size - 2)
    frac = np.clip((x - grid[idx]) / (grid[idx + 1] - grid[idx]), 0.0, 1.0)
    rows = np.arange(surv.shape[0])[:, None]
    return surv[rows, idx] * (1 - frac) + surv[rows, idx + 1] * frac


def _inverse(surv: np.ndarray, grid: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The log value whose survival is p, per row (surv decreases along the grid)."""
    idx = np.array([np.searchsorted(-surv[r], -p[r]) for r in range(surv.shape[0])])
    idx = np.clip(idx, 1, grid.size - 1)
    rows = np.arange(surv.shape[0])
    s0, s1 = surv[rows, idx - 1], surv[rows, idx]
    frac = np.clip((s0 - p) / np.where(s0 > s1, s0 - s1, 1.0), 0.0, 1.0)
    return grid[idx - 1] + frac * (grid[idx] - grid[idx - 1])


def _nested(rng: np.random.Generator, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Counts above increasing thresholds (survivals p, decreasing along the last axis) for
    n values per (row, quarter): (rows, quarters, k), nested by successive thinning."""
    rows, quarters = n.shape
    k = p.shape[1]
    out = np.empty((rows, quarters, k), dtype=np.int64)
    current = n
    prev = np.ones(rows)
    for i in range(k):
        cond = np.clip(p[:, i] / np.maximum(prev, 1e-300), 0.0, 1.0)
        current = rng.binomial(current, cond[:, None])
        out[:, :, i] = current
        prev = p[:, i]
    return out


def hours_for(age: float) -> int:
    """The hours a delay scenario simulates for a regression starting at minute ``age``."""
    return int(age // 60) + 1


def error_regression(
    rng: np.random.Generator,
    rows: int,
    age: float,
    *,
    detector_alpha: float,
    cumulative_alpha: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The error-rate delay scenario (tests/guardrails/stats/test_change_delay.py and
    bench/bench_stats.py): 3x errors at a 2 % base from minute ``age`` of a stage's life,
    1,500 requests a minute per arm, a diurnal drift, over the hours up to it. Returns the
    detector's statistics per rollout and look (tolerance 1.5x) and the cumulative test's
    rollbacks (``sim.error_rollbacks``)."""
    hours = hours_for(age)
    kw = dict(per_minute=1500, base=0.02, concentration=None, heavy=False,
              drift=diurnal(hours, 0.3))  # fmt: skip
    a = error_arm(rng, rows, hours, **kw)
    b = error_arm(rng, rows, hours, ratio=lambda t: np.where(t >= age, 3.0, 1.0), **kw)
    looks = error_looks(a, b, tolerance=1.5, alpha=detector_alpha)
    (na, ea, _), (nb, eb, _) = a.per_look(), b.per_look()
    cumulative = sim.error_rollbacks(
        sim.CountPaths.independent(ea, na), sim.CountPaths.independent(eb, nb),
        tolerance=1.5, alpha=cumulative_alpha, design=1_000_000,
    )  # fmt: skip
    return looks, cumulative
