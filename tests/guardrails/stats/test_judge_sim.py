"""The judge's guardrails by simulation (reference/quality.md, "Targets for the simulation
suite"): false rollbacks under heavy-tailed user clustering, A/A and exactly at the tolerance,
and the power figures. 2,000 rollouts x 240 looks per scenario, at the standard plan's
per-guardrail alpha (0.05 / 4), through the kernels the engine runs (the per-request metric
tests' stats.paired_difference_kernel and stats.difference_kernel, with judge.measures'
value ranges).

Users: the suite's heavy-tailed scenario (sim.heavy_requests: Pareto activity of shape 1.1
over 2,000 users per arm, ~43 effective users at 2,400 pairs), each user with their own lean
(the judge prefers the candidate on some users' questions and control on others') or their
own question difficulty. The power targets are met under lighter clustering (Pareto shape 2:
~540 effective users among 1,500 pairs); under the heavy tail the guardrail is honest
instead of powerful, as the error-rate guardrail is (README).
"""

from __future__ import annotations

import numpy as np
import pytest

from migrations_app.guardrails import stats
from migrations_app.judge.measures import PREFERENCE_MEASURE, SCORE_MEASURE
from tests.guardrails.stats import sim

pytestmark = pytest.mark.slow

ALPHA = 0.05 / 4
R = 2000
TOLERANCE_PREFERENCE = 0.05  # "the candidate may lose at most five points net"
TOLERANCE_SCORE = 0.1  # points on the 1-5 rubric
MODERATE = 2.0  # Pareto shape of the power scenarios' activity


def assert_valid(decisions: np.ndarray, alpha: float = ALPHA) -> float:
    hits = int(decisions.any(axis=1).sum())
    rate = hits / decisions.shape[0]
    assert sim.rate_ok(hits, decisions.shape[0], alpha), f"false rollback {rate:.4f} > {alpha}"
    return rate


def preference_rollbacks(paths: sim.UnitPaths) -> np.ndarray:
    """Per rollout and look: does the preference guardrail say regressed?"""
    _, _, hi = stats.paired_difference_kernel(
        paths.arm(), alpha=ALPHA, value_range=PREFERENCE_MEASURE.value_range
    )
    return (paths.n >= stats.MIN_METRIC_SAMPLES) & (hi < -TOLERANCE_PREFERENCE)


def score_rollbacks(control: sim.UnitPaths, candidate: sim.UnitPaths) -> np.ndarray:
    _, _, hi = stats.difference_kernel(
        control.arm(), candidate.arm(), kind="mean", alpha=ALPHA,
        value_range=SCORE_MEASURE.value_range,
    )  # fmt: skip
    enough = np.minimum(control.n, candidate.n) >= stats.MIN_METRIC_SAMPLES
    return enough & (hi < -TOLERANCE_SCORE)


def power_by(decisions: np.ndarray, ns: np.ndarray, n: float) -> float:
    return float(decisions[:, ns <= n].any(axis=1).mean())


def samples_at(decisions: np.ndarray, ns: np.ndarray, power: float = 0.9) -> float:
    """The smallest n per arm by which ``power`` of the rollouts have rolled back (inf: never
    within the run)."""
    first = sim.first_look(decisions)
    hit = np.sort(np.where(first >= 0, ns[np.maximum(first, 0)], np.inf))
    return float(hit[int(np.ceil(power * hit.size)) - 1])


# --- the paired preference (shadow) ------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("net", "seed"), [(0.0, 81), (-TOLERANCE_PREFERENCE, 82)])
def test_preference_false_rollbacks_under_heavy_tailed_users(net, seed):
    """A/A (the judge is indifferent) and exactly at the tolerance (net -5 points): measured
    0.000 and 0.0035 against 0.0125 (seeds 81, 82)."""
    paths = sim.heavy_preferences(np.random.default_rng(seed), R, net=net, per_look=10)
    assert_valid(preference_rollbacks(paths))


@pytest.mark.timeout(600)
def test_preference_false_rollbacks_with_many_pairs_per_look():
    """At the tolerance with 6,000 pairs per rollout (25 a look): the looks go on for longer
    and the heavy users pile up more pairs each."""
    paths = sim.heavy_preferences(
        np.random.default_rng(83), R, net=-TOLERANCE_PREFERENCE, per_look=25
    )
    assert_valid(preference_rollbacks(paths))


@pytest.mark.timeout(600)
def test_preference_power_by_1500_pairs():
    """Target: a true net preference of -0.15 against a 0.05 tolerance is rolled back by
    1,500 pairs in >= 90 % of rollouts. Measured 0.94 (seed 84) with users of Pareto(2)
    activity, ~540 effective among 1,500 pairs (0.0025 at the tolerance, seed 85). Under the
    heavy tail (~43 effective users) 0.44 by 1,500 and 0.52 by 2,400 (next test): a few dozen
    users with their own leans carry the verdicts, and the guardrail holds rather than
    guess."""
    paths = sim.heavy_preferences(
        np.random.default_rng(84), R, net=-0.15, per_look=10, shape=MODERATE
    )
    decisions = preference_rollbacks(paths)
    assert power_by(decisions, paths.n[0], 1500) >= 0.9
    # The same guardrail never rolls back the same users' verdicts at the tolerance.
    at_tolerance = sim.heavy_preferences(
        np.random.default_rng(85), R, net=-TOLERANCE_PREFERENCE, per_look=10, shape=MODERATE
    )
    assert_valid(preference_rollbacks(at_tolerance))


@pytest.mark.timeout(600)
def test_preference_under_the_heavy_tail_is_honest_not_powerful():
    heavy = sim.heavy_preferences(np.random.default_rng(86), R, net=-0.15, per_look=10)
    decisions = preference_rollbacks(heavy)
    assert 0.2 <= power_by(decisions, heavy.n[0], 1500) < 0.9


# --- the pointwise score (split and rollout) ---------------------------------------------


@pytest.fixture(scope="module")
def score_control() -> sim.UnitPaths:
    return sim.heavy_scores(np.random.default_rng(91), R)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("shift", "seed"), [(0.0, 92), (-TOLERANCE_SCORE, 93)])
def test_score_false_rollbacks_under_heavy_tailed_users(score_control, shift, seed):
    """A/A and exactly at the tolerance (-0.1 on the 1-5 scale): measured 0.0005 and 0.0025."""
    candidate = sim.heavy_scores(np.random.default_rng(seed), R, shift=shift)
    assert_valid(score_rollbacks(score_control, candidate))


@pytest.mark.timeout(600)
def test_score_power_samples_at_90_percent():
    """Effect -0.3 against a 0.1 tolerance: the samples per arm by which 90 % of rollouts
    have rolled back (reference/quality.md asks for the figure). Measured 1,590 scored
    answers per arm with Pareto(2) activity (seed 94); bench/bench_judge.py prints it for
    other activity laws too."""
    rng = np.random.default_rng(94)
    control = sim.heavy_scores(rng, R, shape=MODERATE)
    candidate = sim.heavy_scores(rng, R, shift=-0.3, shape=MODERATE)
    decisions = score_rollbacks(control, candidate)
    assert samples_at(decisions, control.n[0]) <= 2000
