"""The change detectors' families (:mod:`changes` folds them): one family of per-window
e-values per kind of metric, the users' margins on their nulls, and the quantile family's
thresholds read from many windows' buckets at once.

Has the candidate become worse than tolerance since some recent window? :mod:`changes` runs
the e-detector of :mod:`detector` over the stage's minute windows, with one family per kind:

- ``rate`` (0/1 values, relative tolerance: the error rate, an application's rate): given a
  window's events in both arms, the candidate's share of them is binomial with
  q = theta w / (1 + theta w) (w the window's candidate/control request ratio) for Poisson
  traffic, and the likelihood ratio of q_j against the null's boundary q_0 is an e-value for
  every ratio on the null's side (monotone likelihood ratio), free of control's rate: drift
  shared by the arms cancels window by window (Lindon & Malek 2011.03567 condition the same
  way). With Bernoulli requests the exact law given the total (Fisher's noncentral
  hypergeometric) is tighter than the binomial, which keeps it conservative.
- ``mean`` (means, and rates with an absolute tolerance): the window's contrast of means
  against the null's boundary (Fieller's for a ratio), Gaussian likelihood ratios against a
  few effect sizes, variances from the stage's per-request spread.
- ``quantile`` (p95 / p99 latency, time to first token): the null "candidate's q-quantile
  <= tolerance x control's" lies inside "control exceeds t at least 1 - q of the time" OR
  "the candidate exceeds tolerance x t at most 1 - q of the time", for every threshold t
  (if control exceeds t less often, its quantile is below t, so the candidate's is below
  tolerance x t). The smaller of the two sides' binomial likelihood ratios is an e-value for
  that union, whatever the distributions; the thresholds are multiples of a reference
  control quantile carried from earlier windows (predictable), so drift moves them along.

Users, not requests. The windows' e-values are valid given which users sit in each arm; but
users are sticky and differ (their own error rates, latencies, habits), so an arm's realised
rate differs from the population's by a *persistent* offset that no amount of data removes.
The stage's cluster sums measure it: the jackknife variance over units minus the
request-level one is the between-user part, and with users' shares of traffic as steady in
a recent stretch as over the stage it is the same for any stretch (in relative terms). The
null is widened by a one-sided bound on that offset (:func:`ratio_margin`,
:func:`quantile_margin`: Student's t on Kish's effective units at half the detector's alpha);
the simulation suite checks it with the heavy-tailed users and diurnal drift of the
cumulative tests. A heavy user who appears only in the last stretch is weighed as the stage
weighs them: the README says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special

from migrations_app.guardrails.stats.inputs import (
    _KEY_MULTIPLIER,
    ArmAggregates,
    Buckets,
    FloatArray,
    RatioArm,
    bucket_bounds,
    bucket_value,
)
from migrations_app.guardrails.stats.quantiles import design_effect, latency_spread
from migrations_app.guardrails.stats.sequences import ratio_cluster_variance, welch_df
from migrations_app.guardrails.stats.verdicts import Harm, ToleranceKind

Family = Literal["rate", "mean", "quantile"]

# The alternatives each family mixes over, with their weights. Rates: multiples of the null
# ratio (the tolerance, widened by the margin); most weight at 2x, a candidate twice as bad
# as the tolerance allows (3x errors against 1.5x). Means: multiples of the tolerance's size
# beyond the boundary. Quantiles: thresholds as multiples of the reference control quantile,
# from just above it to where a doubled quantile still shows.
RATE_GRID = (1.25, 1.6, 2.0, 2.5, 3.2)
RATE_WEIGHTS = (0.1, 0.2, 0.4, 0.2, 0.1)
MEAN_GRID = (0.5, 1.0, 2.0, 4.0)
MEAN_WEIGHTS = (0.2, 0.4, 0.25, 0.15)
QUANTILE_STEPS = (1.05, 1.15, 1.3, 1.5)
QUANTILE_WEIGHTS = (0.2, 0.3, 0.3, 0.2)

#: Beyond this margin (log units for a ratio) the detector is blind anyway; capped so the
#: null's boundary stays a finite number.
MAX_MARGIN = 30.0

#: The quantile sides' alternatives: control's share above t as a multiple of the tail
#: (below 1: its quantile is below t), the candidate's above its bound (above 1).
QUANTILE_CONTROL_ALTERNATIVES = (0.4, 0.7)
QUANTILE_CANDIDATE_ALTERNATIVES = (1.6, 2.5)

#: Control values a window needs before its quantile moves the reference.
REFERENCE_MIN = 40
#: How fast the reference follows the windows' control quantiles (log scale, per window).
REFERENCE_RATE = 0.2


# --- per-window e-values ---------------------------------------------------------------


def rate_evidence(
    n_a: npt.ArrayLike,
    y_a: npt.ArrayLike,
    n_b: npt.ArrayLike,
    y_b: npt.ArrayLike,
    *,
    limit: npt.ArrayLike,
    harm: Harm,
) -> tuple[FloatArray, FloatArray]:
    """(log e-values (..., alternatives), sums (..., alternatives, 4)) of windows of counts.

    ``limit``: the null's boundary ratio candidate/control (already widened by the margin):
    the null is ratio <= limit when more is worse, >= limit when less is."""
    na, ya, nb, yb = (np.asarray(v, dtype=np.float64)[..., None] for v in (n_a, y_a, n_b, y_b))
    lim = np.asarray(limit, dtype=np.float64)[..., None]
    grid = np.asarray(RATE_GRID)
    thetas = lim * (grid if harm == "increase" else 1.0 / grid)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where((na > 0) & (nb > 0), nb / np.maximum(na, 1.0), 0.0)
        # log q_j / q_0 and log (1 - q_j) / (1 - q_0), q = theta w / (1 + theta w), in a form
        # that stays finite for the widest nulls.
        other = np.log1p(lim * w) - np.log1p(thetas * w)
        log_e = yb * (np.log(thetas / lim) + other) + ya * other
    log_e = np.where(w > 0, log_e, 0.0)
    return np.asarray(log_e, dtype=np.float64), _sums(na, ya, nb, yb, len(RATE_GRID))


def mean_evidence(
    n_a: npt.ArrayLike,
    s_a: npt.ArrayLike,
    n_b: npt.ArrayLike,
    s_b: npt.ArrayLike,
    *,
    var_a: npt.ArrayLike,
    var_b: npt.ArrayLike,
    limit: npt.ArrayLike,
    kind: ToleranceKind,
    harm: Harm,
    size: npt.ArrayLike,
) -> tuple[FloatArray, FloatArray]:
    """(log e-values, sums) of windows of sums: Gaussian likelihood ratios of the contrast
    (candidate mean - limit x control mean, or minus limit for an absolute tolerance)
    against effect sizes :data:`MEAN_GRID` x ``size`` on the harmful side."""
    na, sa, nb, sb = (np.asarray(v, dtype=np.float64)[..., None] for v in (n_a, s_a, n_b, s_b))
    va, vb, lim, sz = (
        np.asarray(v, dtype=np.float64)[..., None] for v in (var_a, var_b, limit, size)
    )
    sign = 1.0 if harm == "increase" else -1.0
    deltas = sz * np.asarray(MEAN_GRID)
    with np.errstate(divide="ignore", invalid="ignore"):
        ma, mb = sa / np.maximum(na, 1.0), sb / np.maximum(nb, 1.0)
        if kind == "relative":
            contrast = mb - lim * ma
            var = vb / np.maximum(nb, 1.0) + lim * lim * va / np.maximum(na, 1.0)
        else:
            contrast = mb - ma - lim
            var = vb / np.maximum(nb, 1.0) + va / np.maximum(na, 1.0)
        log_e = (deltas * sign * contrast - deltas * deltas / 2.0) / var
    ok = (na > 0) & (nb > 0) & (var > 0) & np.isfinite(log_e)
    return np.asarray(np.where(ok, log_e, 0.0)), _sums(na, sa, nb, sb, len(MEAN_GRID))


def quantile_evidence(
    n_a: npt.ArrayLike,
    above_a: npt.ArrayLike,
    n_b: npt.ArrayLike,
    above_b: npt.ArrayLike,
    *,
    tail: float,
    margin_a: npt.ArrayLike = 0.0,
    margin_b: npt.ArrayLike = 0.0,
) -> tuple[FloatArray, FloatArray]:
    """(log e-values, sums) per threshold: ``above_a[..., i]`` control values above t_i,
    ``above_b[..., i]`` candidate values above its bound for t_i (tolerance x t_i, or t_i +
    tolerance); ``tail`` = 1 - the quantile. The e-value is the smaller of "control exceeds
    t_i less often than tail - margin_a" and "the candidate exceeds its bound more often
    than tail + margin_b", each a binomial likelihood ratio against the halved or doubled
    share."""
    na, nb = (np.asarray(v, dtype=np.float64)[..., None] for v in (n_a, n_b))
    aa, ab = (np.asarray(v, dtype=np.float64) for v in (above_a, above_b))
    ma, mb = (np.asarray(v, dtype=np.float64)[..., None] for v in (margin_a, margin_b))
    p_a = np.clip(tail - ma, 1e-6, 0.5)
    p_b = np.clip(tail + mb, 1e-6, 0.5)
    # Each side mixes two alternatives equally (a mixture of e-values is one): how far
    # control's share falls below the tail, or the candidate's rises above it, depends on
    # the threshold and the distributions' shapes.
    side_a = _binomial_mixture(aa, na, p_a, QUANTILE_CONTROL_ALTERNATIVES)
    side_b = _binomial_mixture(ab, nb, p_b, QUANTILE_CANDIDATE_ALTERNATIVES)
    ok = (na > 0) & (nb > 0)
    log_e = np.where(ok, np.minimum(side_a, side_b), 0.0)
    sums = np.stack(np.broadcast_arrays(na, aa, nb, ab), axis=-1)
    return np.asarray(log_e, dtype=np.float64), np.asarray(sums, dtype=np.float64)


def _binomial_mixture(
    k: FloatArray, n: FloatArray, p0: FloatArray, factors: Sequence[float]
) -> FloatArray:
    """log of the average over alternatives p0 x factor of the binomial likelihood ratio."""
    logs = []
    for f in factors:
        p1 = np.clip(p0 * f, 1e-9, 1 - 1e-9)
        logs.append(k * np.log(p1 / p0) + (n - k) * np.log((1 - p1) / (1 - p0)))
    return np.asarray(np.logaddexp.reduce(np.stack(logs), axis=0) - math.log(len(factors)))


def _sums(na: FloatArray, ya: FloatArray, nb: FloatArray, yb: FloatArray, j: int) -> FloatArray:
    stacked = np.stack(np.broadcast_arrays(na, ya, nb, yb), axis=-1)  # (..., 1, 4)
    return np.asarray(np.repeat(stacked, j, axis=-2), dtype=np.float64)


# --- the persistent offset of sticky users --------------------------------------------


def ratio_margin(
    control: RatioArm,
    candidate: RatioArm,
    *,
    relative: bool,
    alpha: float,
    rate: bool,
) -> FloatArray:
    """One-sided bound (at ``alpha``) on how far the arms' users alone move the comparison:
    log units for a relative tolerance, the metric's units for an absolute one.

    Per arm, the between-user variance of the mean Y/N: the jackknife over units
    (:func:`ratio_cluster_variance`) minus the request-level variance, relative to the mean
    squared for a ratio; the bound is Student's t on the arms' Welch-combined Kish degrees
    of freedom times the root of their sum. 0 when users do not differ."""
    parts = []
    for arm in (control, candidate):
        y, n, ss = (np.asarray(v, dtype=np.float64) for v in (arm.y, arm.n, arm.sum_sq))
        with np.errstate(invalid="ignore", divide="ignore"):
            n1 = np.maximum(n, 1.0)
            m = y / n1
            if rate:
                pc = (y + 0.5) / (n + 0.5)
                iid = pc * (1.0 - pc) / n1
            else:
                iid = np.maximum(ss / n1 - m * m, 0.0) / np.maximum(n1 - 1.0, 1.0)
            var, df = ratio_cluster_variance(arm, iid)
            between = np.maximum(var - iid, 0.0)
            if relative:
                mc = (y + 0.5) / (n + 0.5) if rate else m
                between = np.where(mc != 0, between / np.where(mc != 0, mc * mc, 1.0), 0.0)
        parts.append((np.where(n > 1, between, 0.0), df))
    (pa, da), (pb, db) = parts
    df = welch_df(pa, da, pb, db)
    t = -special.stdtrit(np.minimum(df, 1e7), alpha)
    return np.asarray(np.where(pa + pb > 0, t * np.sqrt(pa + pb), 0.0), dtype=np.float64)


def quantile_margin(arm: ArmAggregates, source: str, quantile: float, alpha: float) -> float:
    """Bound (at ``alpha``) on how far the arm's users alone move its share of values above a
    threshold near its ``quantile`` (:func:`quantile_margin_v` on its latency sums)."""
    which: Literal["latency", "ttft"] = "ttft" if source == "ttft" else "latency"
    n = arm.ttft.total if which == "ttft" else arm.latency.total
    return float(quantile_margin_v(latency_spread(arm, which), n, quantile, alpha))


def quantile_margin_v(
    spread: RatioArm, n: npt.ArrayLike, quantile: float, alpha: float
) -> FloatArray:
    """:func:`quantile_margin` over arrays: the design effect D of :func:`design_effect` (from
    how the units' log latencies cluster) says the share above a threshold varies D times a
    binomial's, D - 1 of it between users; the bound is the normal quantile times its root."""
    nn = np.maximum(np.asarray(n, dtype=np.float64), 1.0)
    d = design_effect(spread, quantile, alpha)
    tail = 1.0 - quantile
    between = np.maximum(d - 1.0, 0.0) * tail * (1.0 - tail) / nn
    return np.asarray(float(special.ndtri(1.0 - alpha)) * np.sqrt(between), dtype=np.float64)


# --- many windows' buckets at once (the quantile family) ---------------------------


#: Composite sort key of a window's bucket: window << _SHIFT | (key + _OFFSET). Bucket keys of
#: any double lie within +-36,000 (1 % buckets), so both fit an int64 with room to spare.
_SHIFT = 21
_OFFSET = 1 << 20


@dataclass(frozen=True, slots=True)
class _Flat:
    """Many windows' buckets in flat arrays sorted by (window, key): keys, counts, the
    cumulative count, the composite key, each window's slice, zero count and total."""

    keys: npt.NDArray[np.int64]
    cum: FloatArray
    composite: npt.NDArray[np.int64]
    starts: npt.NDArray[np.int64]
    ends: npt.NDArray[np.int64]
    zero: FloatArray
    total: FloatArray


def _flat(buckets: Sequence[Buckets]) -> _Flat:
    k = len(buckets)
    sizes = np.fromiter((len(x.counts) for x in buckets), dtype=np.int64, count=k)
    keys = np.fromiter(chain.from_iterable(x.counts.keys() for x in buckets), dtype=np.int64)
    counts = np.fromiter(chain.from_iterable(x.counts.values() for x in buckets), dtype=np.float64)
    window = np.repeat(np.arange(k, dtype=np.int64), sizes)
    composite = (window << _SHIFT) | (keys + _OFFSET)
    if composite.size > 1 and not bool((composite[1:] > composite[:-1]).all()):
        order = np.argsort(composite, kind="stable")
        keys, counts, composite = keys[order], counts[order], composite[order]
    ends = np.cumsum(sizes)
    zero = np.fromiter((x.zero_count for x in buckets), dtype=np.float64, count=k)
    cum = np.cumsum(counts)
    total = np.concatenate([[0.0], cum])[ends] - np.concatenate([[0.0], cum])[ends - sizes] + zero
    return _Flat(keys, cum, composite, ends - sizes, ends, zero, total)


def _above(f: _Flat, thresholds: FloatArray, *, straddle: bool) -> FloatArray:
    """(windows, thresholds) values above each window's thresholds (:func:`count_above`):
    the buckets from the first key whose upper edge is above t (straddle) or whose lower edge
    is at least t, found on the exact edges near the key t falls in."""
    finite = np.isfinite(thresholds)
    t = np.where(finite, thresholds, 1.0)
    guess = np.floor(np.log2(np.maximum(t, 1e-300)) * _KEY_MULTIPLIER).astype(np.int64) - 2
    candidates = guess[..., None] + np.arange(6)
    lower, upper = bucket_bounds(candidates)
    inside = upper > t[..., None] if straddle else lower >= t[..., None]
    first = guess + np.argmax(inside, axis=-1)  # edges grow with the key: the first is exact
    k = len(f.starts)
    windows = np.arange(k, dtype=np.int64)[:, None]
    at = np.searchsorted(f.composite, (windows << _SHIFT) | (first + _OFFSET), side="left")
    cum = np.concatenate([[0.0], f.cum])
    above = cum[f.ends][:, None] - cum[np.maximum(at, f.starts[:, None])]
    return np.where(finite, above, 0.0)


def _window_quantiles(f: _Flat, k: int, quantile: float) -> FloatArray:
    """Each window's control quantile as :func:`next_reference` reads it (NaN where that
    leaves the reference alone: fewer than REFERENCE_MIN values, or none above zero)."""
    base = np.concatenate([[0.0], f.cum])[f.starts]
    target = np.maximum(1.0, np.ceil(quantile * f.total)) - f.zero
    idx = np.maximum(np.searchsorted(f.cum, base + target, side="left"), f.starts)
    ok = (f.total >= REFERENCE_MIN) & (idx < f.ends)
    out = np.full(k, np.nan)
    out[ok] = [bucket_value(int(f.keys[i])) for i in idx[ok]]
    return out


def _moved(reference: float | None, value: float) -> float:
    if reference is None or not reference > 0:
        return value
    return math.exp((1 - REFERENCE_RATE) * math.log(reference) + REFERENCE_RATE * math.log(value))


def count_above(buckets: Buckets, value: float, *, straddle: bool) -> int:
    """Values above ``value``; a bucket containing it counts as above when ``straddle``."""
    keys, counts = buckets.arrays()
    if keys.size == 0:
        return 0
    lower, upper = bucket_bounds(keys)
    above = upper > value if straddle else lower >= value
    return int(counts[above].sum())


def next_reference(reference: float | None, control: Buckets, quantile: float) -> float | None:
    """The control quantile the next window's thresholds start from: a moving average (log
    scale) of the windows' control quantiles, so shared drift moves the thresholds along;
    built only from windows already seen, so every window's e-value stays valid."""
    n = control.total
    if n < REFERENCE_MIN:
        return reference
    keys, counts = control.arrays()
    cum = np.cumsum(counts) + control.zero_count
    idx = int(np.searchsorted(cum, max(1, math.ceil(quantile * n))))
    if idx >= keys.size:
        return reference
    return _moved(reference, bucket_value(int(keys[idx])))
