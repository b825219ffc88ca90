"""The closed loop after a rollback: recovered, or escalated once when control stays bad."""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from migrations_app.guardrails import engine
from migrations_app.models import (
    AlertChannel,
    AlertDelivery,
    AuditEvent,
    MigrationPlan,
    Outcome,
    PlanStage,
)
from migrations_app.outcomes import ingest
from tests.guardrails.conftest import error_arms, put_totals, running_plan
from tests.outcomes.conftest import Everyone, outcome

pytestmark = pytest.mark.django_db


def rolled_back() -> MigrationPlan:
    plan = running_plan()
    put_totals(plan, **error_arms(1, 20_000, control=0.02, candidate=0.06))
    assert engine.plan_evaluate(plan_id=plan.pk).acted
    plan.refresh_from_db()
    assert plan.status == "rolled_back" and plan.current_stage.kind == "recovery"
    return plan


def control_traffic(plan: MigrationPlan, n: int, error_rate: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Stamped now, not the helper's one second ago: a second before the rollback falls in the
    # window before the recovery stage's first one when the rollback came just after a minute
    # turned (the recovery check reads the stage's windows from its start on).
    events = [
        outcome(plan, ts=time.time(), error="server_error" if rng.random() < error_rate else None)
        for _ in range(n)
    ]
    assert ingest.outcomes_ingest(identity=Everyone(), payload={"events": events}).stored == n


def test_control_back_to_baseline_resolves_and_stops_watching():
    plan = rolled_back()
    assert engine.recovering_plan_ids() == [plan.pk]
    control_traffic(plan, 20, 0.0, seed=3)
    assert engine.plan_watch_recovery(plan_id=plan.pk) == "waiting"

    control_traffic(plan, 200, 0.02, seed=4)
    assert Outcome.objects.filter(stage=plan.current_stage).count() == 220
    assert engine.plan_watch_recovery(plan_id=plan.pk) == "recovered"
    event = AuditEvent.objects.get(plan=plan, action="recovered")
    assert event.actor_kind == "engine" and event.evidence["recent"]["requests"] == 220
    assert PlanStage.objects.get(pk=plan.current_stage_id).ended_at is not None
    assert engine.recovering_plan_ids() == []
    assert engine.plan_watch_recovery(plan_id=plan.pk) == "skipped"


def test_control_still_failing_escalates_once_after_the_plan_setting():
    plan = rolled_back()
    plan.alert_channels.add(AlertChannel.objects.create(name="pd", kind="pagerduty"))
    control_traffic(plan, 200, 0.3, seed=5)
    assert engine.plan_watch_recovery(plan_id=plan.pk) == "not_recovered"
    # As if the rollback had happened escalate_after_minutes ago, the traffic still flowing.
    PlanStage.objects.filter(pk=plan.current_stage_id).update(
        started_at=timezone.now() - timedelta(minutes=plan.escalate_after_minutes, seconds=1)
    )
    assert engine.plan_watch_recovery(plan_id=plan.pk) == "escalated"
    assert engine.plan_watch_recovery(plan_id=plan.pk) == "not_recovered"
    event = AuditEvent.objects.get(plan=plan, action="escalated")
    assert "control error rate" in event.reason and "server_error" in event.reason
    # paged again at a higher severity, under a key of its own (PagerDuty would otherwise
    # fold it into the open incident without paging anyone)
    page = AlertDelivery.objects.get(plan=plan, event="escalated")
    assert page.severity == "critical"
    assert page.dedup_key == f"turnout:{plan.key}:{plan.current_run.number}:error_rate:escalated"
    # the plan did not move: notes only
    plan_after = MigrationPlan.objects.get(pk=plan.pk)
    assert (plan_after.status, plan_after.version) == (plan.status, plan.version)


def test_recovery_after_an_escalation_resolves_both_pages():
    from migrations_app.plans import lifecycle

    plan = rolled_back()
    plan.alert_channels.add(AlertChannel.objects.create(name="pd", kind="pagerduty"))
    lifecycle.record_edit(
        plan, actor=lifecycle.ENGINE, action="escalated", reason="x", publish=False
    )
    control_traffic(plan, 200, 0.02, seed=7)
    assert engine.plan_watch_recovery(plan_id=plan.pk) == "recovered"
    keys = set(
        AlertDelivery.objects.filter(plan=plan, event="recovered").values_list(
            "dedup_key", flat=True
        )
    )
    base = f"turnout:{plan.key}:{plan.current_run.number}:error_rate"
    assert keys == {base, f"{base}:escalated"}
