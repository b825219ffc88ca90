"""Power and the peeking harness (reference/statistics.md, suite items 1 and 3).

Power runs at the standard plan's per-guardrail alpha (0.05 / 4), 2,000 rollouts each.
"""

from __future__ import annotations

import numpy as np
import pytest

from migrations_app import stats as S
from tests.stats import sim

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


def error_power(ratio: float, per_look: int, seed: int, looks: int = sim.LOOKS):
    rng = np.random.default_rng(seed)
    a = sim.iid_counts(rng, R, per_look, 0.02)
    b = sim.iid_counts(rng, R, per_look, 0.02 * ratio)
    return sim.error_rollbacks(a, b, tolerance=1.5, alpha=ALPHA), a.n[0]


def test_error_rate_3x_by_3k():
    d, ns = error_power(3.0, 13, 31)
    assert by(d, ns, 3000) >= 0.9


def test_error_rate_2x_by_12k_and_24k():
    """Target: >= 0.9 by 12k per arm. Not met by any valid test at this alpha: even the
    oracle SPRT that knows the true ratio (2.0 vs tolerance 1.5) crosses 1/alpha = 80 by
    12k per arm with probability ~0.83 (Brownian approximation, log-LR drift 6.6 with
    variance 13.2). The mixture sequence measures ~0.72 (0.87 at alpha 0.05, a one-guardrail
    plan) and reaches 0.9 by ~17-18k per arm (0.87 at 16k, 0.92 at 18k); asserted at 24k."""
    d, ns = error_power(2.0, 100, 32)
    assert by(d, ns, 12_000) >= 0.65
    assert by(d, ns, 24_000) >= 0.9


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
        min_n=S.MIN_FEEDBACK_PER_ARM,
    )  # fmt: skip
    assert by(d, a[0][0], 1000) >= 0.9
