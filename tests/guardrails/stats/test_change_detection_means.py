"""The change detector's false alarms on a mean metric over 7 simulated days (the guarantee and
the harness: test_change_detection.py, week.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.guardrails.stats import sim_changes
from tests.guardrails.stats.week import ALPHA, HOURS, alarms, assert_within

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("shift", [0.0, -0.1], ids=["aa", "at tolerance"])
def test_mean_metric_false_alarms_over_a_week(shift):
    """A score on [0, 1] (satisfaction-like), 50 values per minute per arm, each heavy user
    with their own habit (sd 0.15) and noise 0.3, a diurnal drift of +-0.05 shared; the
    tolerance is a drop of 0.1."""
    rng = np.random.default_rng(2011)
    drift = 0.05 * (sim_changes.diurnal(HOURS, 1.0) - 1.0)

    def run(rows: int) -> np.ndarray:
        kw = dict(per_minute=50, level=0.7, spread=0.15, noise=0.3, drift=drift)
        a = sim_changes.mean_arm(rng, rows, HOURS, **kw)
        b = sim_changes.mean_arm(rng, rows, HOURS, shift=shift, **kw)
        return sim_changes.mean_looks(a, b, tolerance=0.1, harm="decrease", alpha=ALPHA)

    assert_within(*alarms(run))
