"""The migration report's before/after table carries the per-request metrics (issue 15, item 5):
each metric either arm has values of, with both arms' means and, where the plan guards it, the
engine's own test of it in words."""

from __future__ import annotations

import pytest
from django.utils import timezone

from migrations_app.dashboard.report import plan_report
from migrations_app.models import Guardrail, MetricDefinition
from tests.guardrails.conftest import put_totals, running_plan, with_metrics

pytestmark = pytest.mark.django_db


def test_the_report_shows_each_metric_and_the_guardrails_verdict() -> None:
    plan = running_plan()
    MetricDefinition.objects.create(plan=plan, name="task_completed")
    Guardrail.objects.create(
        plan=plan, metric="task_completed", tolerance_kind="absolute", tolerance=0.03
    )
    put_totals(
        plan,
        control=with_metrics(1, 6000, task_completed=0.80, refusal=0.01),
        candidate=with_metrics(2, 6000, task_completed=0.65, refusal=0.01),
    )
    report = plan_report(plan, now=timezone.now())
    assert report is not None
    rows = {m.metric: m for m in report.metrics}
    task, refusal = rows["task_completed"], rows["refusal"]
    assert [m.metric for m in report.metrics][-2:] == ["task_completed", "refusal"]  # guarded first
    assert task.label == "task completed" and task.unit == "%"
    assert task.control.n == task.candidate.n == 6000
    assert task.control.value == pytest.approx(0.80, abs=0.02)
    assert task.candidate.value == pytest.approx(0.65, abs=0.02)
    assert task.comparison is not None and task.comparison.status == "regressed"
    assert "task completed" in task.comparison_text
    assert refusal.comparison is None
    assert refusal.comparison_text == "no guardrail on this metric"
