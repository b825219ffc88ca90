"""The change detectors' delay from a regression to the rolling-back look does not grow with
the stage's age (stats.changes; the window-level simulation of sim_changes.py, the production
e-values and scans)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from migrations_app.guardrails.stats import detector
from tests.guardrails.stats import sim, sim_changes

pytestmark = pytest.mark.slow

# The bench's plan: four guardrails at 0.05 over three stages, and a split step planned for
# 600 minutes with a minimum sample it does not reach here; the detector gets half of a
# guardrail's alpha, the cumulative test the other half (the error rate's sequence a third of
# that, its confirmatory look the rest). What rolls back is either test: the cumulative one is
# the e-process started with the stage, and a regression 30 s in falls inside the detector's
# first window, so the guardrail's delay is compared with the detector's on a fresh stage.

STAGE_ALPHA = 0.05 / 4 / 3
BENCH_ALPHA = STAGE_ALPHA * detector.DETECTOR_SHARE
CUMULATIVE_ALPHA = STAGE_ALPHA - BENCH_ALPHA
BENCH_LOG_A = detector.log_threshold(alpha=BENCH_ALPHA, planned_minutes=600)
AGES = (0.5, 60.0, 1440.0)  # minutes healthy before the regression (30 s, 1 h, 24 h)
ROWS = 60


def first_look(alarmed: np.ndarray) -> np.ndarray:
    """(rows, looks) -> the first alarming look per rollout, or -1."""
    return np.where(alarmed.any(axis=1), alarmed.argmax(axis=1), -1)


def delays(run, ages=(0.0, *AGES)) -> dict[float, float]:
    """Median seconds from the regression to the first alarm (looks every 15 s), by the
    stage's age at the regression (0: present from the start, the detector alone)."""
    out = {}
    for age in ages:
        alarmed = run(age)
        if age == 0.0:
            alarmed = alarmed[0]
        else:
            alarmed = alarmed[0] | alarmed[1]
        first = first_look(alarmed)
        seconds = np.where(first >= 0, (first + 1) * 15.0 - age * 60.0, np.inf)
        assert (seconds > 0).all(), f"age {age}: an alarm before the regression"
        out[age] = float(np.median(seconds))
        assert math.isfinite(out[age]), f"age {age}: most rollouts never alarmed"
    print("median seconds to alarm by the stage's age (minutes):", out)
    return out


def assert_flat(by_age: dict[float, float]) -> None:
    fresh = by_age[0.0]
    for age in by_age:
        assert by_age[age] <= 1.2 * fresh, f"delay {by_age} grows with age"


def detector_alarms(stats: np.ndarray) -> np.ndarray:
    return stats.reshape(stats.shape[0], -1) >= BENCH_LOG_A


@pytest.mark.timeout(1200)
def test_error_rate_delay_does_not_grow_with_the_stages_age():
    """3x errors at a 2 % base, the bench's traffic (25 requests/s per arm)."""
    rng = np.random.default_rng(2031)

    def run(age: float) -> tuple[np.ndarray, np.ndarray]:
        stats, cumulative = sim_changes.error_regression(
            rng, ROWS, age, detector_alpha=BENCH_ALPHA, cumulative_alpha=CUMULATIVE_ALPHA
        )
        return detector_alarms(stats), cumulative

    assert_flat(delays(run))


@pytest.mark.timeout(1200)
def test_mean_metric_delay_does_not_grow_with_the_stages_age():
    """A score dropping by twice its 0.1 tolerance, 100 values per minute per arm, users
    with their own habits (sd 0.05)."""
    rng = np.random.default_rng(2033)

    def run(age: float) -> tuple[np.ndarray, np.ndarray]:
        hours = sim_changes.hours_for(age)
        kw = dict(per_minute=100, level=0.7, spread=0.05, noise=0.3, heavy=False,
                  drift=0.05 * (sim_changes.diurnal(hours, 1.0) - 1.0))  # fmt: skip
        a = sim_changes.mean_arm(rng, ROWS, hours, **kw)
        b = sim_changes.mean_arm(rng, ROWS, hours,
                                 shift=lambda t: np.where(t >= age, -0.2, 0.0), **kw)  # fmt: skip
        stats = sim_changes.mean_looks(a, b, tolerance=0.1, harm="decrease", alpha=BENCH_ALPHA)
        cumulative = sim.mean_rollbacks(
            *a.per_look(), *b.per_look(), alpha=CUMULATIVE_ALPHA, log_ratio=False, limit=-0.1,
            harm="decrease", min_n=50,
        )  # fmt: skip
        return detector_alarms(stats), cumulative

    assert_flat(delays(run))


@pytest.mark.timeout(1200)
def test_p95_delay_does_not_grow_with_the_stages_age():
    """p95 latency doubled, 400 requests per minute per arm, a diurnal latency drift shared.
    The detector alone at 1 h and 24 h (the cumulative test can only be faster)."""
    rng = np.random.default_rng(2032)

    def run(age: float) -> tuple[np.ndarray, np.ndarray]:
        hours = sim_changes.hours_for(age)
        stats = sim_changes.quantile_looks(
            rng, ROWS, hours, per_minute=400, spread=0.0,
            factor=lambda t: np.where(t >= age, 2.0, 1.0), tolerance=1.3,
            alpha=BENCH_ALPHA, drift=sim_changes.diurnal(hours, 0.2),
        )  # fmt: skip
        alarmed = detector_alarms(stats)
        return alarmed, np.zeros_like(alarmed)

    assert_flat(delays(run, ages=(0.0, 60.0, 1440.0)))
