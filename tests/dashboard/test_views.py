"""The dashboard's pages: who may see and act, what the page says, and that every action
goes through the lifecycle services (compare-and-set, audited)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from migrations_app.dashboard import chart_series
from migrations_app.dashboard.costs import MINUTES_PER_MONTH, PROJECTION_WINDOW, cost_projection
from migrations_app.guardrails import engine, stats
from migrations_app.models import (
    AuditEvent,
    MigrationPlan,
    PlanStatus,
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
)
from migrations_app.outcomes.aggregation import window_start
from migrations_app.outcomes.selectors import stage_totals
from tests.dashboard.data import feed, running_plan
from tests.factories import make_plan, make_user

pytestmark = pytest.mark.django_db


def staff(username: str, *, operate: bool, view: bool = True) -> Client:
    user = make_user(username, superuser=False)
    user.is_staff = True
    user.save()
    codenames = [
        c
        for c, wanted in (("view_migrationplan", view), ("operate_migrationplan", operate))
        if wanted
    ]
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


PAGES = ("/plans/p1/", "/plans/p1/live", "/plans/p1/report", "/plans/p1/report?format=md")


def test_staff_without_the_view_permission_sees_no_dashboard_report_or_pairs() -> None:
    """The pages hold production prompts and answers (the shadow pairs): staff status is not
    enough, the plan's view permission is needed, for reading and for acting alike."""
    plan = running_plan("p1")
    for client in (
        staff("stranger", operate=False, view=False),
        staff("doer", operate=True, view=False),
    ):
        for path in PAGES:
            response = client.get(path)
            assert response.status_code == 403, path
            assert b"permission_denied" in response.content and b"p1" not in response.content
        confirm = client.get(f"/plans/p1/act/pause?version={plan.version}")
        assert confirm.status_code == 403
        act = client.post("/plans/p1/act/pause", {"version": plan.version, "reason": "x"})
        assert act.status_code == 403
    assert MigrationPlan.objects.get(key="p1").status == PlanStatus.RUNNING


def test_the_view_permission_is_enough_to_read_everything() -> None:
    running_plan("p1")
    viewer = staff("viewer", operate=False)
    for path in PAGES:
        assert viewer.get(path).status_code in (200, 409), path  # 409: the report of no run


def test_anonymous_and_non_staff_are_sent_to_the_login() -> None:
    running_plan("p1")
    for path in ("/plans/p1/", "/plans/p1/live", "/plans/p1/report", "/plans/p1/act/pause"):
        response = Client().get(path)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    plain = make_user("bob", superuser=False)
    client = Client()
    client.force_login(plain)
    assert client.get("/plans/p1/").status_code == 302


def test_viewer_without_the_operate_permission_sees_no_buttons_and_cannot_act() -> None:
    running_plan("p1")
    viewer = staff("viewer", operate=False)
    page = viewer.get("/plans/p1/")
    assert page.status_code == 200
    assert b"/act/rollback" not in page.content and b"needs the operate permission" in page.content
    response = viewer.post("/plans/p1/act/pause", {"version": "2", "reason": "x"})
    assert response.status_code == 403 and b"permission_denied" in response.content
    assert MigrationPlan.objects.get(key="p1").status == PlanStatus.RUNNING


def test_rollback_needs_a_reason_then_goes_through_the_service_and_is_audited() -> None:
    plan = running_plan("p1")
    operator = staff("olga", operate=True)
    page = operator.get("/plans/p1/")
    assert f'href="/plans/p1/act/rollback?version={plan.version}"'.encode() in page.content
    confirm = operator.get(f"/plans/p1/act/rollback?version={plan.version}")
    assert confirm.status_code == 200 and b"(required)" in confirm.content

    empty = operator.post("/plans/p1/act/rollback", {"version": plan.version, "reason": " "})
    assert empty.status_code == 400
    assert MigrationPlan.objects.get(key="p1").status == PlanStatus.RUNNING

    done = operator.post(
        "/plans/p1/act/rollback", {"version": plan.version, "reason": "p95 doubled in EU"}
    )
    assert done.status_code == 302 and done["Location"] == "/plans/p1/"
    plan.refresh_from_db()
    assert plan.status == PlanStatus.ROLLED_BACK
    event = AuditEvent.objects.filter(plan=plan).order_by("-pk").first()
    assert (event.action, event.actor_label, event.reason) == (
        "rollback",
        "olga",
        "p95 doubled in EU",
    )
    timeline = operator.get("/plans/p1/").content.decode()
    assert "p95 doubled in EU" in timeline and "rollback: 1 done" not in timeline


def test_acting_on_a_plan_that_moved_since_is_refused_and_changes_nothing() -> None:
    plan = running_plan("p1")
    operator = staff("olga", operate=True)
    stale = plan.version
    assert operator.post("/plans/p1/act/pause", {"version": stale, "reason": ""}).status_code == 302
    assert operator.post("/plans/p1/act/resume", {"version": stale + 1}).status_code == 302
    response = operator.post("/plans/p1/act/rollback", {"version": stale, "reason": "old page"})
    assert response.status_code == 409 and b"version_conflict" in response.content
    assert MigrationPlan.objects.get(key="p1").status == PlanStatus.RUNNING


def test_an_action_the_status_does_not_allow_is_a_409_with_its_code() -> None:
    plan = running_plan("p1")
    operator = staff("olga", operate=True)
    response = operator.post("/plans/p1/act/resume", {"version": plan.version})
    assert response.status_code == 409 and b"illegal_transition" in response.content


def test_bad_input_gets_a_4xx_with_a_code_and_the_field() -> None:
    running_plan("p1")
    operator = staff("olga", operate=True)
    unknown = operator.get("/plans/p1/act/complete")  # complete stays in the admin
    assert unknown.status_code == 404 and b"unknown_action" in unknown.content
    # "²" is a digit to str.isdigit and not to int(): it was a 500.
    for hours in ("abc", "0", "100000", "-1", "\u00b2", "9" * 5000):
        response = operator.get(f"/plans/p1/?hours={hours}")
        assert response.status_code == 400, hours
        assert b"invalid_range" in response.content and b"hours" in response.content
    assert operator.get("/plans/nope/").status_code == 404
    no_version = operator.post("/plans/p1/act/pause", {"reason": "x"})
    assert no_version.status_code == 400
    for version in ("\u00b2", "1" * 5000):
        assert operator.get(f"/plans/p1/act/pause?version={version}").status_code == 200
        bad = operator.post("/plans/p1/act/pause", {"version": version, "reason": "x"})
        assert bad.status_code == 400, version
    assert operator.get("/plans/p1/report?format=pdf").status_code == 400


def test_posting_without_the_csrf_token_is_refused() -> None:
    plan = running_plan("p1")
    user = make_user("olga")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post("/plans/p1/act/pause", {"version": plan.version, "reason": "x"})
    assert response.status_code == 403
    assert MigrationPlan.objects.get(key="p1").status == PlanStatus.RUNNING


def test_the_page_shows_position_verdicts_charts_costs_and_the_timeline() -> None:
    plan = running_plan("p1", hours_ago=2)
    start = timezone.now() - timedelta(minutes=90)
    for arm, latency in (("control", 600.0), ("candidate", 1500.0)):
        feed(
            plan.current_stage, start=start, minutes=90, per_minute=20, arm=arm, latency_ms=latency
        )
    operator = staff("olga", operate=True)
    before = operator.get("/plans/p1/").content.decode()
    # Where: the split in words, what comes next and what it waits for.
    assert "A/B split: candidate 50 %, control 50 %" in before
    assert "Next: <strong>rollout: candidate 100 %" in before
    assert "No evaluation yet" in before

    result = engine.plan_evaluate(plan_id=plan.pk)
    assert (result.action, result.acted) == ("rollback", True)
    html = operator.get("/plans/p1/").content.decode().replace("&#x27;", "'")
    assert "recovery: all traffic on control" in html and "Next:" not in html
    # Verdicts: the sentence the engine stored, word for word.
    evaluation = plan.evaluations.get(pk=result.evaluation_id)
    latency = next(g for g in evaluation.decision["guardrails"] if g["metric"] == "latency_p95")
    assert latency["verdict"]["status"] == "regressed"
    assert latency["verdict"]["summary"] in html
    assert '<span class="status status-regressed">regressed</span>' in html
    # Charts: six per-arm charts and one bound chart per guardrail, inline SVG.
    names = re.findall(r'data-chart="([\w-]+)"', html)
    assert names[:6] == ["requests", "errors", "latency", "ttft", "satisfaction", "cost"]
    assert {f"bound-{g.metric}" for g in plan.guardrails.all()} <= set(names)
    assert html.count("<svg") == len(names)
    assert "http://" not in html.split("<body>", 1)[1].replace("http://www.w3.org/2000/svg", "")
    # Costs per arm, and the timeline: the person's start, the engine's rollback and why.
    assert html.count("<tr data-arm=") == 2
    assert 'class="event event-start"' in html
    rollback = html[html.index('class="event event-rollback"') :]
    assert "rollback engine" in rollback[:600] and "Rolled back by the engine" in rollback[:2000]


def test_cost_projection_is_the_last_hours_rate_times_the_priced_cost() -> None:
    plan = running_plan("p1", hours_ago=3)
    now = timezone.now()
    start = window_start(now - timedelta(minutes=59))
    feed(plan.current_stage, start=start, minutes=60, per_minute=30, arm="control", cost_usd=0.002)
    feed(
        plan.current_stage, start=start, minutes=60, per_minute=10, arm="candidate", cost_usd=0.005
    )
    stages = {plan.current_stage.pk: plan.current_stage}
    costs = {c.arm: c for c in cost_projection(plan, stages, now=now)}
    minutes = (now - (now - PROJECTION_WINDOW)).total_seconds() / 60
    month = MINUTES_PER_MONTH
    assert costs["control"].cost_per_request == pytest.approx(0.002)
    assert costs["control"].monthly_at_current_split == pytest.approx(
        1800 / minutes * month * 0.002
    )
    assert costs["candidate"].monthly_if_all_traffic == pytest.approx(
        2400 / minutes * month * 0.005
    )
    assert costs["candidate"].model == plan.candidate_model.model_id


def test_window_series_bins_sum_to_the_stage_totals() -> None:
    plan = running_plan("p1", hours_ago=3)
    start = timezone.now() - timedelta(minutes=150)
    feed(plan.current_stage, start=start, minutes=150, per_minute=7, arm="control", error_rate=0.1)
    since = window_start(start)
    series = chart_series.window_series(
        [plan.current_stage.pk], since=since, until=timezone.now(), step_minutes=15
    )
    totals = stage_totals(plan.current_stage)["control"]
    points = series["control"]
    assert len(points) == 10
    assert sum(a.requests for _, a in points) == totals.requests == 150 * 7
    assert sum(a.errors for _, a in points) == totals.errors
    merged = stats.Buckets.merge(a.latency for _, a in points)
    assert merged == totals.latency
    assert series["candidate"] == []


def test_live_partial_is_the_changing_part_only() -> None:
    running_plan("p1")
    response = staff("olga", operate=True).get("/plans/p1/live")
    body = response.content.decode()
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    assert body.lstrip().startswith('<div class="live-body"') and "<html" not in body


def test_a_draft_plan_has_a_page_with_nothing_to_chart_yet() -> None:
    make_plan("draft")
    html = staff("olga", operate=True).get("/plans/draft/").content.decode()
    assert "not started: all traffic on control" in html
    assert "No evaluation yet" in html and "No traffic yet." in html
    where = html.split('id="where"', 1)[1].split("</section>", 1)[0]
    assert re.findall(r"/act/(\w+)", where) == ["start"]  # a draft can only be started


def test_shadow_pairs_are_shown_side_by_side_escaped_with_their_scores() -> None:
    plan = running_plan("p1")
    now = timezone.now()
    for i, (candidate, comparison) in enumerate(
        (
            (
                {"text": "<b>Sure</b>, it ships Monday."},
                {"normalized_match": False, "similarity": 0.61},
            ),
            ({"error": "timeout"}, {}),
        )
    ):
        ShadowSample.objects.create(
            sample_id=f"s{i}", plan=plan, run=plan.current_run, stage=plan.current_stage,
            decision_id=f"d{i}", unit="u1", status=ShadowStatus.DONE,
            request={"messages": [{"role": "user", "content": f"When does order {i} ship?"}]},
            control={"text": "It ships on Monday."}, candidate=candidate, comparison=comparison,
            created_at=now, completed_at=now + timedelta(seconds=i),
        )  # fmt: skip
    html = staff("olga", operate=True).get("/plans/p1/").content.decode()
    section = html.split('id="shadow"', 1)[1].split("</section>", 1)[0]
    assert section.count('class="shadow-pair"') == 2
    # Newest first: the failed answer, then the compared one.
    assert section.index("no answer: timeout") < section.index("&lt;b&gt;Sure&lt;/b&gt;")
    assert "similarity: 0.61" in section and "normalized_match: no" in section
    assert "When does order 0 ship?" in section and "<b>Sure" not in section


def test_the_shadow_comparison_sums_the_runs_shadow_stages_and_the_judge_reads_in_words() -> None:
    plan = running_plan("p1", phases=None)  # the standard playbook: shadow first
    assert plan.current_stage.kind == "shadow"
    ShadowAggregate.objects.create(
        stage=plan.current_stage,
        data={
            "n": 200, "neither": 190, "candidate_only": 7, "control_only": 2, "both": 1,
            "exact_match_n": 200, "exact_match_sum": 50.0,
            "similarity_n": 200, "similarity_sum": 150.0,
            "judge_score_n": 100, "judge_score_sum": -12.0,
        },
    )  # fmt: skip
    now = timezone.now()
    ShadowSample.objects.create(
        sample_id="s1", plan=plan, run=plan.current_run, stage=plan.current_stage,
        decision_id="d1", unit="u1", status=ShadowStatus.DONE,
        request={"messages": [{"role": "user", "content": "Hi"}]},
        control={"text": "Hello"}, candidate={"text": "Hey"},
        comparison={"similarity": 0.0, "judge_score": -1.0, "json_diff": {"added": ["a"]},
                    "judge": {"winner": "control", "reason": "It greets properly."}},
        created_at=now, completed_at=now,
    )  # fmt: skip
    html = staff("olga", operate=True).get("/plans/p1/").content.decode()
    summary = html.split('id="shadow-summary"', 1)[1].split("</section>", 1)[0]
    assert "200 requests answered by both models" in summary
    assert "<td>candidate failed where control answered</td><td>7</td>" in summary
    assert "<td>answers identical</td><td>25.0%</td><td>200</td>" in summary
    assert "<td>0.75</td><td>200</td>" in summary  # mean similarity
    assert "<td>-0.12</td><td>100</td>" in summary  # the judge leans to control
    pairs = html.split('id="shadow"', 1)[1].split("</section>", 1)[0]
    assert "judge: control: It greets properly." in pairs
    assert "json_diff" not in pairs and "json diff: 1 added, 0 removed, 0 changed" in pairs
    assert "judge_score" not in pairs
