"""The migration report, checked against the aggregates it was built from."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from migrations_app import engine, selectors, stats
from migrations_app.dashboard import format as fmt
from migrations_app.dashboard.report import plan_report
from migrations_app.models import PlanStatus, ShadowAggregate
from tests.dashboard.data import feed, running_plan
from tests.factories import make_plan, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def rolled_back():
    plan = running_plan("p1", hours_ago=2)
    start = timezone.now() - timedelta(minutes=90)
    for arm, latency, errors in (("control", 600.0, 0.01), ("candidate", 1500.0, 0.02)):
        feed(plan.current_stage, start=start, minutes=90, per_minute=20, arm=arm,
             latency_ms=latency, error_rate=errors)  # fmt: skip
    split = plan.current_stage
    assert engine.plan_evaluate(plan_id=plan.pk).acted
    plan.refresh_from_db()
    assert plan.status == PlanStatus.ROLLED_BACK
    return plan, split


def test_report_figures_are_the_aggregates_through_stats(rolled_back) -> None:
    plan, split = rolled_back
    report = plan_report(plan, now=timezone.now())
    assert report is not None and report.ended
    totals = selectors.stage_totals(split)
    control, candidate = totals["control"], totals["candidate"]
    rows = {m.metric: m for m in report.metrics}
    assert report.compared.control_requests == control.requests == 1800
    assert rows["error_rate"].control.value == control.errors / control.requests
    assert rows["error_rate"].candidate.value == candidate.errors / candidate.requests
    est, lo, hi = stats.quantile_interval(candidate.latency, 0.95, plan.alpha)
    assert (rows["latency_p95"].candidate.value, rows["latency_p95"].candidate.lower) == (est, lo)
    assert rows["latency_p95"].candidate.upper == hi
    guardrail = plan.guardrails.get(metric="latency_p95")
    expected = stats.evaluate_metric(
        "latency_p95", control, candidate, tolerance=guardrail.tolerance,
        tolerance_kind=guardrail.tolerance_kind, alpha=plan.alpha,
    )  # fmt: skip
    assert rows["latency_p95"].comparison == expected and expected.status == "regressed"
    assert rows["satisfaction"].control.value == control.feedback_sum / control.feedback_n
    assert rows["cost_per_request"].candidate.value == pytest.approx(0.002)
    # A metric with no guardrail has per-arm figures and no comparison.
    assert rows["latency_p50"].comparison is None
    assert [r.actor for r in report.rollbacks] == ["rollback engine"]
    assert report.rollbacks[0].reasons and "latency_p95" in " ".join(report.rollbacks[0].reasons)
    run = plan.runs.get()
    assert report.duration == run.ended_at - run.started_at


def test_report_page_and_markdown(rolled_back) -> None:
    plan, _ = rolled_back
    client = Client()
    client.force_login(make_user("olga"))
    html = client.get("/plans/p1/report").content.decode().replace("&#x27;", "'")
    report = plan_report(plan, now=timezone.now())
    for row in report.metrics:
        assert row.comparison_text in html
    assert report.rollbacks[0].reason in html
    assert fmt.duration(report.duration) in html

    md = client.get("/plans/p1/report?format=md")
    assert md["Content-Type"] == "text/markdown; charset=utf-8"
    text = md.content.decode()
    assert text.startswith("# Migration report: Test plan (`p1`)")
    assert "| model | `openai:gpt-4o-2024-08-06` | `anthropic:claude-sonnet-4-20250514` |" in text
    p95 = next(r for r in report.metrics if r.metric == "latency_p95")
    assert (
        f"| p95 latency | {p95.control_text} | {p95.candidate_text} | {p95.comparison_text} |"
        in text
    )
    assert "&lt;" not in text and "&#x27;" not in text  # Markdown is not HTML-escaped
    assert "\n- " in text.split("## Rollbacks", 1)[1]


def test_a_plan_never_started_has_no_report() -> None:
    make_plan("draft")
    client = Client()
    client.force_login(make_user("olga"))
    response = client.get("/plans/draft/report")
    assert response.status_code == 409 and b"plan_not_started" in response.content


def test_the_report_carries_the_shadow_comparison_of_every_run() -> None:
    plan = running_plan("p1", phases=None)  # the standard playbook: shadow first
    ShadowAggregate.objects.create(
        stage=plan.current_stage,
        data={"n": 40, "candidate_only": 3, "control_only": 1, "both": 0, "neither": 36,
              "normalized_match_n": 40, "normalized_match_sum": 10.0},
    )  # fmt: skip
    report = plan_report(plan, now=timezone.now())
    assert report is not None and report.shadow is not None
    assert (report.shadow.pairs, report.shadow.candidate_only) == (40, 3)
    client = Client()
    client.force_login(make_user("olga"))
    text = client.get("/plans/p1/report?format=md").content.decode()
    shadow = text.split("## Shadow comparison", 1)[1].split("## Rollbacks", 1)[0]
    assert "40 requests answered by both models" in shadow
    assert "the candidate failed on 3 where control answered" in shadow
    assert "| identical after normalising case, spacing, punctuation | 25.0% | 40 |" in shadow
    html = client.get("/plans/p1/report").content.decode()
    assert "40 requests answered by both models" in html
