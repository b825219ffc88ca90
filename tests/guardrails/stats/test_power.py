"""Power and the peeking harness (reference/statistics.md, suite items 1 and 3).

Power runs at the standard plan's per-guardrail alpha (0.05 / 4), 2,000 rollouts each.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from migrations_app.guardrails import stats
from tests.guardrails.stats import sim

ALPHA = 0.05 / 4
R = 2000


def by(decisions: np.ndarray, ns: np.ndarray, n: int) -> float:
    return float(decisions[:, ns <= n].any(axis=1).mean())


# --- 1. the harness detects peeking ----------------------------------------------------


def naive_false_alarms(looks: int, seed: int, rollouts: int = 40_000) -> tuple[float, float]:
    """A/A: the difference of two arms' means (unit variance, equal batches per look), a
    fixed-sample z-test at alpha 0.05 after every batch."""
    rng = np.random.default_rng(seed)
    diff = rng.standard_normal((rollouts, looks), dtype=np.float32)
    z = np.cumsum(diff, axis=1) / np.sqrt(np.arange(1, looks + 1, dtype=np.float32))
    one_sided = float((z > 1.6449).any(axis=1).mean())
    two_sided = float((np.abs(z) > 1.96).any(axis=1).mean())
    return one_sided, two_sided


def test_harness_detects_peeking():
    """Armitage, McPherson & Rowe (1969). K=5: 0.142 is the *two-sided* 0.05 figure; the
    one-sided 0.05 test peeks its way to 0.129 at K=5 (0.1289 from 2e5 Gaussian paths),
    and to 0.360 at K=240 (the reference's 0.367 is within 0.01 of it)."""
    one5, two5 = naive_false_alarms(5, 1)
    one240, _ = naive_false_alarms(240, 2)
    assert abs(two5 - 0.142) <= 0.01, two5
    assert abs(one5 - 0.129) <= 0.01, one5
    assert abs(one240 - 0.367) <= 0.01, one240


# --- 3. power --------------------------------------------------------------------------


def error_power(ratio: float, per_look: int, seed: int, design: int = 0):
    """Decisions of the error-rate guardrail (tolerance 1.5x, 2 % base) and the per-arm n at
    each look; ``design`` is the step's minimum sample per arm (0: none)."""
    a, b = error_paths(ratio, per_look, seed)
    return sim.error_rollbacks(a, b, tolerance=1.5, alpha=ALPHA, design=design), a.n[0]


def error_paths(ratio: float, per_look: int, seed: int) -> tuple[sim.CountPaths, sim.CountPaths]:
    rng = np.random.default_rng(seed)
    return sim.iid_counts(rng, R, per_look, 0.02), sim.iid_counts(rng, R, per_look, 0.02 * ratio)


# The standard plan's step minimum in these targets: 12k requests per arm.
STEP_MINIMUM = 12_000


@pytest.mark.parametrize("design", [0, STEP_MINIMUM])
def test_error_rate_3x_by_3k(design):
    """Before any step minimum is reached only the sequence acts: at alpha / 3 when the step
    has a minimum (measured 0.95), at alpha when it has none (0.98)."""
    d, ns = error_power(3.0, 13, 31, design)
    assert by(d, ns, 3000) >= 0.9


def test_error_rate_2x_by_12k():
    """Target: >= 0.9 by 12k per arm, at the standard plan's 0.0125 for this guardrail.

    Measured (2,000 rollouts, seed 32; 0.05 in brackets, a one-guardrail plan):
      Fieller confidence sequence alone (no step minimum)   0.76 (0.89)
        (on the Wald variance; with the null floor of stats.rate_ratio_bounds 0.72,
        test_unequal_arms.py; the look's figure below is unchanged)
      log-risk-ratio sequence, the previous acting test     0.71 (0.87)
      count e-process, 30 log-spaced ratios (stats)         0.67 (0.82)
      oracle SPRT that knows the true ratio, 2.0 vs 1.5     0.83 (0.92)
      one fixed-sample test at 12k, all alpha there         0.93 (0.98)
    The last is the Neyman-Pearson ceiling for any level-0.0125 test of the data up to 12k
    per arm (checked below), so the target is reachable, but only by committing most of the
    alpha to that sample: a test that stays valid at every look without a horizon spends
    alpha on every look and tops out near the oracle SPRT. Weighted Bonferroni (this
    guardrail at 0.025 of the plan's 0.05) lifts the sequence only to 0.83, and tuning N*
    from 5k to 12k-24k adds 0.02 (0.78) while slowing early detection. What reaches it is
    the confirmatory look at the step's minimum sample (2/3 of the alpha there, the
    sequence at 1/3): 0.91, with 3x by 3k still 0.95 (above). Without a step minimum the
    guardrail keeps the sequence alone: 0.76 by 12k, 0.89 by 16k, 0.92 by 17k."""
    d, ns = error_power(2.0, 100, 32, STEP_MINIMUM)
    assert by(d, ns, 12_000) >= 0.9
    alone, _ = error_power(2.0, 100, 32)
    assert by(alone, ns, 12_000) >= 0.7
    assert by(alone, ns, 24_000) >= 0.9


def test_error_rate_2x_ceiling_and_the_e_process():
    """The figures the previous test's docstring rests on: the fixed-sample exact binomial
    test at 12k per arm (conditional on the errors, candidate share 0.6 at the tolerance)
    is the most any test can do, and the count e-process stays below the sequence."""
    a, b = error_paths(2.0, 100, 32)
    at = int(np.searchsorted(a.n[0], 12_000))
    errors = a.e[:, at] + b.e[:, at]
    ceiling = float((b.e[:, at] > sps.binom.isf(ALPHA, errors, 0.6)).mean())
    assert 0.9 <= ceiling <= 0.95, ceiling
    ns = a.n[0]
    e_process = sim.error_e_process(a, b, tolerance=1.5) >= np.log(1 / ALPHA)
    sequence = sim.error_rollbacks(a, b, tolerance=1.5, alpha=ALPHA)
    assert by(e_process, ns, 12_000) < by(sequence, ns, 12_000) < 0.9


@pytest.mark.parametrize(("factor", "n", "per_look"), [(2.0, 1500, 7), (1.6, 6000, 25)])
def test_p95_power(factor, n, per_look):
    """Lognormal latency (sigma 0.5, median 800 ms), tolerance 1.3x."""
    rng = np.random.default_rng(33)
    dist = sim.lognormal(0.5)
    d, ns = sim.quantile_rollbacks(
        rng, R, p=0.95, control=dist, candidate=dist, candidate_factor=factor,
        tolerance=1.3, alpha=ALPHA, m_per_look=per_look,
    )  # fmt: skip
    assert by(d, ns, n) >= 0.9


def test_satisfaction_drop_by_1k_feedbacks():
    """Thumbs up 80 % -> 50 %, tolerance a drop of 0.1."""
    rng = np.random.default_rng(34)
    a = sim.binary_draws(rng, R, 5, 0.8)
    b = sim.binary_draws(rng, R, 5, 0.5)
    d = sim.mean_rollbacks(
        *a, *b, alpha=ALPHA, log_ratio=False, limit=-0.1, harm="decrease",
        min_n=stats.MIN_FEEDBACK_PER_ARM,
    )  # fmt: skip
    assert by(d, a[0][0], 1000) >= 0.9
