"""Replay statistics (replay.stats): items are the units. Unit tests on constructed sums, and a
coverage simulation: items with known, heterogeneous success probabilities, R = 3 repeats; the
item-clustered interval covers the true mean rate at its nominal level, and a per-call interval
(every call a unit) does not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from migrations_app.guardrails.stats import RatioArm
from migrations_app.replay import stats
from migrations_app.replay.stats import Gate, Interval

SIMS = 4000
LEVEL = 0.95
# Three binomial standard errors of a coverage estimated from SIMS replays.
MC_TOLERANCE = 3.0 * math.sqrt(LEVEL * (1 - LEVEL) / SIMS)


def replays(
    rng: np.random.Generator, sims: int, items: int, repeats: int, a: float, b: float
) -> tuple[np.ndarray, np.ndarray]:
    """(per-item success probabilities, successes per item and repeat): sims x items (x R)."""
    p = rng.beta(a, b, size=(sims, items))
    calls = rng.random((sims, items, repeats)) < p[..., None]
    return p, calls.astype(np.float64)


def clustered_arm(values: np.ndarray) -> RatioArm:
    """The item sums of many replays at once (values: sims x items x repeats)."""
    y = values.sum(axis=2)
    n = np.full_like(y, values.shape[2])
    sq = (values * values).sum(axis=2)
    return RatioArm(
        y.sum(1), n.sum(1), sq.sum(1), np.full(len(y), y.shape[1]),
        (y * y).sum(1), (y * n).sum(1), (n * n).sum(1),
        (y * y * n).sum(1), (y * n * n).sum(1), (n * n * n).sum(1),
    )  # fmt: skip


def naive_bounds(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wald interval counting every call as an independent observation (what not to do)."""
    flat = values.reshape(len(values), -1)
    m = flat.mean(axis=1)
    se = flat.std(axis=1, ddof=1) / math.sqrt(flat.shape[1])
    z = float(special.ndtri(1 - (1 - LEVEL) / 2))
    return m - z * se, m + z * se


def coverage(lower: np.ndarray, upper: np.ndarray, truth: float) -> float:
    return float(np.mean((lower <= truth) & (truth <= upper)))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("items", "a", "b", "seed"),
    [
        (200, 0.5, 0.5, 1),  # items from very easy to very hard: ICC 0.5
        (50, 2.0, 1.0, 2),  # a small dataset, mostly easy items
        (30, 6.0, 1.5, 3),  # thirty items, a rate near 0.8
    ],
)
def test_clustered_interval_covers_true_rate_and_per_call_does_not(items, a, b, seed):
    rng = np.random.default_rng(seed)
    _, values = replays(rng, SIMS, items, 3, a, b)
    truth = a / (a + b)
    _, lo, hi = stats.interval_bounds(
        clustered_arm(values), kind="rate", low=0.0, high=1.0, level=LEVEL
    )
    clustered = coverage(lo, hi, truth)
    assert clustered >= LEVEL - MC_TOLERANCE, clustered
    # Nominal, not needlessly wide: within a point and a half above the level.
    assert clustered <= LEVEL + 0.015, clustered
    if a + b < 5:  # heterogeneous items (ICC >= 1/6): the per-call interval under-covers
        nlo, nhi = naive_bounds(values)
        naive = coverage(nlo, nhi, truth)
        assert naive < LEVEL - 4 * MC_TOLERANCE, naive


@pytest.mark.slow
def test_paired_difference_covers_true_difference():
    """Candidate minus control per item and repeat: the two share the item's difficulty (the
    candidate's probability is control's shifted on the logit scale), the difference's interval
    covers the true mean difference."""
    rng = np.random.default_rng(7)
    items, repeats = 80, 3
    logit = rng.normal(0.8, 1.5, size=(SIMS, items))
    p_control = special.expit(logit)
    p_candidate = special.expit(logit - 0.3)
    control = (rng.random((SIMS, items, repeats)) < p_control[..., None]).astype(float)
    candidate = (rng.random((SIMS, items, repeats)) < p_candidate[..., None]).astype(float)
    # The true mean difference of the item population, by a large independent draw.
    big = rng.normal(0.8, 1.5, size=2_000_000)
    truth = float(np.mean(special.expit(big - 0.3) - special.expit(big)))
    _, lo, hi = stats.interval_bounds(
        clustered_arm(candidate - control), kind="mean", low=-1.0, high=1.0, level=LEVEL
    )
    covered = coverage(lo, hi, truth)
    assert LEVEL - MC_TOLERANCE <= covered <= LEVEL + 0.015, covered


def test_interval_from_item_sums_matches_t_on_item_means():
    """With every item repeated R times the clustered interval is Student's t on the item
    means, a little wider (the jackknife's small-sample inflation, about 1 + 1/G)."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=60).astype(float)
    est = stats.interval(stats.item_sums(y, np.full(60, 3.0)), kind="rate")
    means = y / 3
    se = means.std(ddof=1) / math.sqrt(60)
    t = float(-special.stdtrit(59, 0.025))
    assert est.estimate == pytest.approx(means.mean())
    assert est.items == 60 and est.values == 180
    half = (est.upper - est.lower) / 2
    assert t * se <= half <= t * se * 1.03


def test_identical_answers_do_not_claim_certainty():
    """Every item valid on every repeat: the lower bound stays below 1 (the per-value floor),
    fewer items give a lower one."""
    many = stats.interval(stats.item_sums(np.full(500, 3.0), np.full(500, 3.0)), kind="rate")
    few = stats.interval(stats.item_sums(np.full(20, 3.0), np.full(20, 3.0)), kind="rate")
    assert many.estimate == 1.0 and many.upper == 1.0
    assert few.lower < many.lower < 1.0
    assert many.lower > 0.99  # 1,500 valid answers out of 1,500 clear a 99 % gate
    assert few.lower < 0.99  # 60 do not: the gate would stay inconclusive


def _iv(lo: float, hi: float, items: int = 100) -> Interval:
    return Interval((lo + hi) / 2, lo, hi, items, items * 3, LEVEL)


@pytest.mark.parametrize(
    ("gate", "lo", "hi", "outcome"),
    [
        (Gate("json_valid", 0.99), 0.992, 0.999, "pass"),
        (Gate("json_valid", 0.99), 0.95, 0.98, "fail"),
        (Gate("json_valid", 0.99), 0.985, 0.995, "inconclusive"),
        (Gate("judge_preference", -0.05), -0.04, 0.1, "pass"),
        (Gate("judge_preference", -0.05), -0.3, -0.06, "fail"),
        (Gate("exact_match", -0.02, versus_control=True), -0.01, 0.02, "pass"),
        (Gate("exact_match", -0.02, versus_control=True), -0.05, 0.0, "inconclusive"),
        (Gate("cost", 0.01, direction="at_most"), 0.002, 0.009, "pass"),
        (Gate("cost", 0.01, direction="at_most"), 0.011, 0.02, "fail"),
        (Gate("cost", 0.01, direction="at_most"), 0.005, 0.02, "inconclusive"),
    ],
)
def test_gate_verdicts(gate, lo, hi, outcome):
    verdict = stats.gate_verdict(gate, _iv(lo, hi), dataset_items=100)
    assert verdict.outcome == outcome
    assert verdict.to_dict()["outcome"] == outcome


def test_gate_not_evaluated_when_items_are_missing():
    """An outage that left a quarter of the items uncalled is not a verdict on the candidate,
    even when what was measured would fail."""
    gate = Gate("json_valid", 0.99)
    missing = stats.gate_verdict(gate, _iv(0.5, 0.6, items=75), dataset_items=100)
    assert missing.outcome == "not_evaluated" and "75 of 100" in missing.reason
    assert stats.gate_verdict(gate, None, dataset_items=100).outcome == "not_evaluated"
    assert stats.gate_verdict(gate, _iv(0.995, 1, items=3), dataset_items=3).outcome == (
        "not_evaluated"
    )


def test_phase_outcome_orders_fail_then_not_evaluated_then_inconclusive():
    def v(outcome: str) -> stats.GateVerdict:
        return stats.GateVerdict(Gate("m", 0.5), outcome, None, "")  # type: ignore[arg-type]

    assert stats.phase_outcome([v("pass"), v("pass")]) == "pass"
    assert stats.phase_outcome([v("pass"), v("inconclusive")]) == "inconclusive"
    assert stats.phase_outcome([v("inconclusive"), v("not_evaluated")]) == "not_evaluated"
    assert stats.phase_outcome([v("not_evaluated"), v("fail")]) == "fail"
    assert stats.phase_outcome([]) == "inconclusive"


def test_flip_stability():
    s = stats.flip_stability([0, 3, 1, 2, 1, 0], [3, 3, 3, 3, 1, 0])
    assert (s.stable, s.flipped) == (2, 2)
    assert s.flip_share == 0.5
    assert stats.flip_stability([], []).flip_share == 0.0
