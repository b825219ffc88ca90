"""The engine on a plan whose guardrails include per-request metrics: a declared metric of the
application's and an answer check, tested with the plan's alpha split and unit-level sums."""

from __future__ import annotations

import pytest

from migrations_app.models import AuditEvent, Guardrail, MetricDefinition, PlanStatus
from tests.guardrails.conftest import evaluate_with, running_plan, with_metrics

pytestmark = pytest.mark.django_db


def test_a_drop_in_task_completion_rolls_back_with_the_metric_s_evidence():
    plan = running_plan()
    MetricDefinition.objects.create(plan=plan, name="task_completed")
    Guardrail.objects.create(
        plan=plan, metric="task_completed", tolerance_kind="absolute", tolerance=0.03
    )
    result = evaluate_with(
        plan,
        control=with_metrics(1, 6000, task_completed=0.80),
        candidate=with_metrics(2, 6000, task_completed=0.65),
    )
    assert (result.action, result.acted) == ("rollback", True)
    plan.refresh_from_db()
    assert plan.status == PlanStatus.ROLLED_BACK
    event = AuditEvent.objects.get(plan=plan, action="rollback")
    assert "task_completed: candidate task completed is -1" in event.reason
    verdict = next(g for g in event.evidence["guardrails"] if g["metric"] == "task_completed")
    assert verdict["verdict"]["status"] == "regressed"
    assert verdict["verdict"]["label"] == "task completed"
    assert verdict["verdict"]["upper"] < -0.03
    # Three guardrails share the plan's alpha.
    assert event.evidence["alphas"]["task_completed"] == pytest.approx(
        event.evidence["alphas"]["error_rate"]
    )
    assert len(event.evidence["alphas"]) == 3


def test_an_answer_check_guardrail_acts_as_it_is_told():
    """refusal needs no declaration (a built-in check); its guardrail pauses here."""
    plan = running_plan()
    Guardrail.objects.create(
        plan=plan, metric="refusal", tolerance_kind="absolute", tolerance=0.02, action="pause"
    )
    result = evaluate_with(
        plan,
        control=with_metrics(3, 6000, refusal=0.01),
        candidate=with_metrics(4, 6000, refusal=0.08),
    )
    assert (result.action, result.acted) == ("pause", True)


def test_a_healthy_candidate_on_the_metric_advances():
    plan = running_plan()
    MetricDefinition.objects.create(plan=plan, name="task_completed")
    Guardrail.objects.create(
        plan=plan, metric="task_completed", tolerance_kind="absolute", tolerance=0.05
    )
    result = evaluate_with(
        plan,
        control=with_metrics(5, 40_000, task_completed=0.8),
        candidate=with_metrics(6, 40_000, task_completed=0.8),
    )
    assert result.action == "advance", result
