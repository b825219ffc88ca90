"""The false-alarm harness of the change-detector simulations (test_change_detection*.py, a file
per metric so that pytest-xdist runs them on different workers): a guardrail alpha of 0.05 (the
detector's 0.025) over 7 simulated days at a look per 15 s, so a violation shows in 200
rollouts, drawn in chunks; the diurnal drift and traffic the arms share."""

from __future__ import annotations

from migrations_app.guardrails.stats import detector
from tests.guardrails.stats import sim, sim_changes

DAYS = 7
HOURS = 24 * DAYS
#: One guardrail of a one-guardrail plan: the detector gets half.
GUARDRAIL_ALPHA = 0.05
ALPHA = GUARDRAIL_ALPHA * detector.DETECTOR_SHARE
LOG_A = detector.log_threshold(alpha=ALPHA, planned_minutes=HOURS * 60)
ROLLOUTS = 200
CHUNK = 50


def alarms(make_stats) -> tuple[int, int]:
    """(rollouts with a false alarm, rollouts), in chunks."""
    hits = 0
    for start in range(0, ROLLOUTS, CHUNK):
        stats = make_stats(min(CHUNK, ROLLOUTS - start))
        hits += int((stats.max(axis=(1, 2)) >= LOG_A).sum())
    return hits, ROLLOUTS


def assert_within(hits: int, n: int, alpha: float = ALPHA) -> None:
    assert sim.rate_ok(hits, n, alpha), f"false alarms {hits}/{n} > {alpha}"


DRIFT = sim_changes.diurnal(HOURS, 0.3)
TRAFFIC = sim_changes.diurnal(HOURS, 0.5, phase=3.0)
