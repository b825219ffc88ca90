"""The change detectors in the engine (issue 20): each evaluation of a split stage folds the
stage's committed minute windows into the detectors, stores their states with the bounds,
reads only the windows after them next time, and a regression that starts after hours of
health rolls back with evidence (and a page) that says since when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from migrations_app.alerts import render
from migrations_app.alerts.message import AlertMessage
from migrations_app.guardrails import engine
from migrations_app.guardrails.stats import ArmAggregates, ClusterSums
from migrations_app.models import (
    AlertChannel,
    AlertDelivery,
    AuditEvent,
    Evaluation,
    PlanStage,
    PlanStatus,
    WindowAggregate,
)
from migrations_app.outcomes import aggregate_json, selectors
from tests.guardrails.conftest import put_totals, running_plan

START = datetime(2025, 6, 2, 4, 0, tzinfo=UTC)
ERRORS_ONLY = [
    {"metric": "error_rate", "tolerance_kind": "relative", "tolerance": 1.5, "action": "rollback"}
]
# One step of a day: healthy looks hold (the step is not over) instead of advancing.
DAY_STEP = [
    {"kind": "ab_split", "percent": 50.0, "steps": [], "min_duration_minutes": 1440, "min_samples": 1000},
    {"kind": "rollout", "percent": None, "steps": [100], "min_duration_minutes": 0, "min_samples": 1000},
]  # fmt: skip


def arm(rng: np.random.Generator, n: int, p: float) -> ArmAggregates:
    e = int(rng.binomial(n, p))
    return ArmAggregates(requests=n, errors=e, error_clusters=ClusterSums(n, e, e, n, e, e, n))


def split_plan():
    plan = running_plan(phases=DAY_STEP, guardrails=ERRORS_ONLY)
    PlanStage.objects.filter(pk=plan.current_stage_id).update(started_at=START)
    plan.refresh_from_db()
    return plan


def put_windows(plan, rng, minutes: range, *, regressed_from: int | None = None) -> None:
    """Minute windows as ingest leaves them (1,500 requests per arm, 2 % errors, 6 % on the
    candidate from ``regressed_from``), and the stage's running totals over all of them."""
    for m in minutes:
        bad = regressed_from is not None and m >= regressed_from
        for name, agg in (("control", arm(rng, 1500, 0.02)), ("candidate", arm(rng, 1500, 0.06 if bad else 0.02))):  # fmt: skip
            WindowAggregate.objects.create(
                stage=plan.current_stage, arm=name, window=START + timedelta(minutes=m),
                requests=agg.requests, errors=agg.errors, data=aggregate_json.to_json(agg),
            )  # fmt: skip
    rows = WindowAggregate.objects.filter(stage=plan.current_stage)
    totals = {
        name: ArmAggregates.merge(
            aggregate_json.from_json(d)
            for d in rows.filter(arm=name).values_list("data", flat=True)
        )  # fmt: skip
        for name in ("control", "candidate")
    }
    put_totals(plan, **totals)


@pytest.mark.django_db
def test_a_regression_after_ten_healthy_hours_rolls_back_and_says_since_when():
    plan = split_plan()
    rng = np.random.default_rng(3)
    put_windows(plan, rng, range(600), regressed_from=595)
    plan.alert_channels.add(
        AlertChannel.objects.create(name="hook", kind="webhook", url_env="T_HOOK_URL")
    )

    result = engine.plan_evaluate(plan_id=plan.pk, now=START + timedelta(minutes=600, seconds=30))

    assert (result.action, result.acted) == ("rollback", True)
    plan.refresh_from_db()
    assert plan.status == PlanStatus.ROLLED_BACK
    event = AuditEvent.objects.get(plan=plan, action="rollback")
    assert "error_rate: change detected: candidate error rate has been" in event.reason
    (guardrail,) = event.evidence["guardrails"]
    assert guardrail["wants"] == "rollback" and guardrail["change"]["fired"]
    assert guardrail["change"]["since"].startswith("2025-06-02T13:5")  # 9 h 55 min in
    assert any(n.startswith("over the whole stage") for n in guardrail["verdict"]["notes"])
    # The page queued for the plan's channel (as the outbox keeps it) carries the change point.
    (delivery,) = AlertDelivery.objects.filter(plan=plan)
    page = AlertMessage.from_dict(delivery.message)
    assert (
        page.guardrail is not None and page.guardrail.changed_since == guardrail["change"]["since"]
    )
    assert f"changed since {guardrail['change']['since']}" in render.render_text(page)
    # The detector's state is stored with the bounds: the windows that ended 2 min ago.
    stored = Evaluation.objects.get(pk=result.evaluation_id).bounds[engine.DETECTORS_KEY]
    assert stored["committed"] == 597 and stored["states"]["error_rate"]["windows"] == 598


@pytest.mark.django_db
def test_each_look_reads_only_the_windows_after_the_stored_state(monkeypatch):
    plan = split_plan()
    rng = np.random.default_rng(4)
    put_windows(plan, rng, range(300))
    asked = []
    real = selectors.stage_windows

    def spy(stage, *, since=None):
        asked.append(since)
        return real(stage, since=since)

    monkeypatch.setattr(engine, "stage_windows", spy)
    first = engine.plan_evaluate(plan_id=plan.pk, now=START + timedelta(minutes=300, seconds=20))
    assert first.action == "hold"  # healthy, the day's step is not over
    assert Evaluation.objects.get(pk=first.evaluation_id).bounds[engine.DETECTORS_KEY]["committed"] == 297  # fmt: skip

    put_windows(plan, rng, range(300, 310), regressed_from=300)
    second = engine.plan_evaluate(plan_id=plan.pk, now=START + timedelta(minutes=310, seconds=5))
    assert asked == [None, START + timedelta(minutes=298)]
    assert second.action == "rollback"
    bounds = Evaluation.objects.get(pk=second.evaluation_id).bounds
    assert bounds[engine.DETECTORS_KEY]["committed"] == 307
    assert bounds["error_rate"]["lower"] is not None or bounds["error_rate"]["upper"] is not None


@pytest.mark.django_db
def test_a_malformed_stored_state_starts_the_detector_afresh():
    plan = split_plan()
    rng = np.random.default_rng(5)
    put_windows(plan, rng, range(120))
    first = engine.plan_evaluate(plan_id=plan.pk, now=START + timedelta(minutes=120))
    Evaluation.objects.filter(pk=first.evaluation_id).update(
        bounds={engine.DETECTORS_KEY: {"committed": "x", "states": [1]}}
    )
    again = engine.plan_evaluate(plan_id=plan.pk, now=START + timedelta(minutes=121))
    assert again.action == "hold"
    stored = Evaluation.objects.get(pk=again.evaluation_id).bounds[engine.DETECTORS_KEY]
    assert stored["committed"] == 118 and stored["states"]["error_rate"]["windows"] == 119


@pytest.mark.django_db
def test_a_stage_with_no_control_arm_runs_no_detector():
    plan = running_plan(guardrails=ERRORS_ONLY, advances=0)
    PlanStage.objects.filter(pk=plan.current_stage_id).update(weight_bp=10_000)
    put_totals(plan, control=ArmAggregates(), candidate=arm(np.random.default_rng(6), 5000, 0.02))
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert engine.DETECTORS_KEY not in Evaluation.objects.get(pk=result.evaluation_id).bounds
