"""The change detectors over long steps (stats.changes): false alarms within the stated
guarantee over 7 simulated days at a look per 15 s, with heavy-tailed sticky users and a
diurnal drift shared by the arms; and a detection delay that does not grow with the stage's
age. Window-level simulation (sim_changes.py), the production e-values and scans.

The guarantee under test (README, "Change detection"): over a step of H planned minutes the
detector's chance of any false alarm is at most its share of the guardrail's alpha (half for
the e-processes, H / A, half for the users' margin). The false-alarm scenarios run a
guardrail alpha of 0.05 (the detector's 0.025), so a violation shows in 200 rollouts.

The means are in test_change_detection_means.py, p95 in test_change_detection_p95.py, the delay
by the stage's age in test_change_delay.py (a file each: pytest-xdist runs a file on one worker);
the harness is week.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from migrations_app.guardrails.stats import detector
from tests.guardrails.stats import sim_changes
from tests.guardrails.stats.week import ALPHA, DRIFT, HOURS, TRAFFIC, alarms, assert_within

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("ratio", [1.0, 1.5], ids=["aa", "at tolerance"])
@pytest.mark.parametrize("users", ["heavy, own propensities", "many alike"])
def test_error_rate_false_alarms_over_a_week(ratio, users):
    """200 requests per minute per arm for 7 days (2 million per arm),
    a 1.5x tolerance, errors at 2 % moved by a diurnal drift of +-30 % in both arms and the
    traffic by +-50 %. Heavy: Pareto activity over 2,000 users per arm (~45 effective), each
    with their own propensity (Beta, concentration 5); alike: every user at the base rate."""
    rng = np.random.default_rng(2001 if users.startswith("heavy") else 2002)
    concentration = 5.0 if users.startswith("heavy") else None
    heavy = users.startswith("heavy")

    def run(rows: int) -> np.ndarray:
        kw = dict(per_minute=200, base=0.02, concentration=concentration, heavy=heavy,
                  traffic=TRAFFIC, drift=DRIFT)  # fmt: skip
        a = sim_changes.error_arm(rng, rows, HOURS, **kw)
        b = sim_changes.error_arm(rng, rows, HOURS, ratio=ratio, **kw)
        return sim_changes.error_looks(a, b, tolerance=1.5, alpha=ALPHA)

    assert_within(*alarms(run))


def test_without_the_users_margin_heavy_users_raise_false_alarms():
    """The harness sees what the margin is for: the same heavy-user data at tolerance, with
    no margin, alarm far more often than alpha (one day suffices)."""
    rng = np.random.default_rng(2003)
    a = sim_changes.error_arm(rng, 100, 24, per_minute=200, base=0.02, drift=DRIFT[:24])
    b = sim_changes.error_arm(rng, 100, 24, per_minute=200, base=0.02, ratio=1.5,
                              drift=DRIFT[:24])  # fmt: skip
    stats = sim_changes.error_looks(a, b, tolerance=1.5, alpha=ALPHA, margins=False)
    log_a = detector.log_threshold(alpha=ALPHA, planned_minutes=24 * 60)
    assert (stats.max(axis=(1, 2)) >= log_a).mean() > 4 * ALPHA
