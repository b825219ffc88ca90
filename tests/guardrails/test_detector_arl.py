"""The plan's ``detector_arl_days`` (issue 20) is the change detectors' average run length to a
false alarm the engine uses: where the step's planned length does not set a higher
threshold, a shorter run length gives a lower threshold (log A = log of the run length in
minute windows), stored with the detector's state."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from migrations_app.guardrails import engine
from migrations_app.guardrails.stats import ArmAggregates, ClusterSums
from migrations_app.models import Evaluation, PlanStage, WindowAggregate
from migrations_app.outcomes import aggregate_json
from tests.guardrails.conftest import put_totals, running_plan

START = datetime(2025, 6, 2, 4, 0, tzinfo=UTC)
ERRORS_ONLY = [
    {"metric": "error_rate", "tolerance_kind": "relative", "tolerance": 1.5, "action": "rollback"}
]
# A short planned step (5 min at the detector's alpha of 0.0125: its horizon H / (alpha / 2),
# 800 windows, is below a day's 1,440) that holds for its samples: the run length sets the
# threshold.
SHORT_STEP = [
    {"kind": "ab_split", "percent": 50.0, "steps": [], "min_duration_minutes": 5, "min_samples": 10**7},
    {"kind": "rollout", "percent": None, "steps": [100], "min_duration_minutes": 0, "min_samples": 1000},
]  # fmt: skip


def _windows(plan, minutes: int, *, bad_from: int, bad_rate: float) -> None:
    """Minute windows of 1,500 requests per arm at 2 % errors, the candidate at ``bad_rate``
    from minute ``bad_from``, and the stage's running totals over them."""
    rng = np.random.default_rng(20)
    totals: dict[str, list[ArmAggregates]] = {"control": [], "candidate": []}
    for m in range(minutes):
        for name in totals:
            p = bad_rate if name == "candidate" and m >= bad_from else 0.02
            n, e = 1500, int(rng.binomial(1500, p))
            agg = ArmAggregates(
                requests=n, errors=e, error_clusters=ClusterSums(n, e, e, n, e, e, n)
            )
            totals[name].append(agg)
            WindowAggregate.objects.create(
                stage=plan.current_stage, arm=name, window=START + timedelta(minutes=m),
                requests=n, errors=e, data=aggregate_json.to_json(agg),
            )  # fmt: skip
    put_totals(plan, **{name: ArmAggregates.merge(aggs) for name, aggs in totals.items()})


def _evaluate(arl_days: float) -> tuple[str, dict[str, Any]]:
    """The engine's action and its error-rate guardrail after 20 minutes of a split whose
    candidate turned 2.25x worse at minute 12 (tolerance 1.5x): the cumulative test does not
    see it yet; the detector's evidence lies between a day's threshold and a month's."""
    plan = running_plan(phases=SHORT_STEP, guardrails=ERRORS_ONLY, detector_arl_days=arl_days)
    PlanStage.objects.filter(pk=plan.current_stage_id).update(started_at=START)
    plan.refresh_from_db()
    _windows(plan, 20, bad_from=12, bad_rate=0.045)
    result = engine.plan_evaluate(plan_id=plan.pk, now=START + timedelta(minutes=20, seconds=30))
    (guardrail,) = Evaluation.objects.get(pk=result.evaluation_id).decision["guardrails"]
    return result.action, guardrail


@pytest.mark.django_db
def test_a_shorter_run_length_lowers_the_threshold_the_engine_uses() -> None:
    action, month = _evaluate(30)
    assert action == "hold", month
    assert month["verdict"]["status"] == "inconclusive" and "change" not in month
    action, day = _evaluate(1)
    assert action == "rollback", day
    assert day["change"]["fired"]
    assert day["change"]["log_threshold"] == pytest.approx(math.log(1440))  # a day of windows
    assert math.log(1440) < day["change"]["log_statistic"] < math.log(30 * 1440)
    assert any("one false alarm per 1 days" in note for note in day["verdict"]["notes"])
