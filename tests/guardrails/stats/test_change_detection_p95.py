"""The change detector's false alarms on p95 latency over 2 simulated days (the guarantee and
the harness: test_change_detection.py, week.py)."""

from __future__ import annotations

import numpy as np
import pytest

from migrations_app.guardrails.stats import detector
from tests.guardrails.stats import sim_changes
from tests.guardrails.stats.week import ALPHA, assert_within

pytestmark = pytest.mark.slow


QUANTILE_DAYS = 2


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("factor", [1.0, 1.3], ids=["aa", "at tolerance"])
def test_p95_false_alarms_over_two_days(factor):
    """p95 latency, 100 requests per minute per arm, heavy users each with their own typical
    latency (sd 0.3 in log scale), a +-20 % diurnal latency drift shared; tolerance 1.3x.
    Two days: the quantile simulation steps window by window."""
    hours = 24 * QUANTILE_DAYS
    rng = np.random.default_rng(2021)
    log_a = detector.log_threshold(alpha=ALPHA, planned_minutes=hours * 60)
    hits = 0
    rows = 100
    stats = sim_changes.quantile_looks(
        rng, rows, hours, per_minute=100, spread=0.3, factor=factor, tolerance=1.3,
        alpha=ALPHA, drift=sim_changes.diurnal(hours, 0.2),
    )  # fmt: skip
    hits = int((stats.max(axis=(1, 2)) >= log_a).sum())
    assert_within(hits, rows)
