"""The home page at ``/``: every plan with its state (running, at which step, the engine's last
word) and what needs a person; who may see it; its queries do not grow with the plans."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from migrations_app.alerts import build_test_message, outbox
from migrations_app.guardrails import engine
from migrations_app.models import (
    AlertChannel,
    AlertDelivery,
    DeliveryStatus,
    Evaluation,
    MigrationPlan,
    PlanStage,
)
from migrations_app.plans import lifecycle
from tests.dashboard.data import feed, running_plan
from tests.dashboard.test_views import staff
from tests.factories import make_plan, make_user, person, started_plan

pytestmark = pytest.mark.django_db


def _row(page: str, key: str) -> str:
    return page.split(f'class="plan-row" data-plan="{key}"', 1)[1].split("</tr>", 1)[0]


def _attention(page: str) -> str:
    return page.split('id="attention"', 1)[1].split("</section>", 1)[0]


def test_anonymous_and_non_staff_are_sent_to_the_login() -> None:
    response = Client().get("/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    client = Client()
    client.force_login(make_user("bob", superuser=False))
    assert client.get("/").status_code == 302


def test_staff_without_the_view_permission_is_refused_and_sees_no_plan() -> None:
    make_plan("secret-plan")
    response = staff("stranger", operate=False, view=False).get("/")
    assert response.status_code == 403
    assert b"permission_denied" in response.content and b"secret-plan" not in response.content


def test_the_view_permission_is_enough() -> None:
    make_plan("p1")
    response = staff("viewer", operate=False).get("/")
    assert response.status_code == 200 and b'data-plan="p1"' in response.content


def test_no_plan_yet_says_what_a_plan_is() -> None:
    page = staff("viewer", operate=False).get("/").content.decode()
    assert 'id="no-plans"' in page and 'id="all-quiet"' in page
    assert re.search(r"<title>[^<]*Turnout</title>", page)


def test_each_plan_with_its_state_step_and_last_verdict() -> None:
    now = timezone.now()
    draft = make_plan("a-draft")
    started_plan("b-rollout", advances=3)  # shadow, split, rollout step 1 -> step 2
    split = running_plan("c-split")
    start = now - timedelta(minutes=40)
    for arm in ("control", "candidate"):
        feed(split.current_stage, start=start, minutes=40, per_minute=3, arm=arm, error_rate=0.0)
    engine.plan_evaluate(plan_id=split.pk)
    page = staff("viewer", operate=False).get("/").content.decode()

    row = _row(page, "b-rollout")
    assert 'data-status="running"' in row
    assert "rollout: candidate 25 %, control 75 %" in row
    assert "phase 3 of 3 (Gradual rollout), step 2 of 4" in row
    assert "no evaluation yet" in row

    row = _row(page, "c-split")
    assert "A/B split: candidate 50 %, control 50 %" in row
    assert "phase 1 of 2 (A/B split)" in row
    evaluation = Evaluation.objects.get(plan=split)
    assert f"{evaluation.action}: {evaluation.decision['reasons'][0]}" in row

    row = _row(page, "a-draft")
    assert "not started: all traffic on control" in row and "Draft" in row
    # Running plans first, drafts after.
    order = re.findall(r'class="plan-row" data-plan="([^"]+)"', page)
    assert order == ["b-rollout", "c-split", "a-draft"]
    assert draft.key in page


def test_what_needs_attention() -> None:
    now = timezone.now()
    paused = started_plan("paused-one")
    lifecycle.plan_pause(plan_key="paused-one", actor=person("olga"), reason="checking the EU")
    rolled = started_plan("rolled-one")
    lifecycle.plan_rollback(plan_key="rolled-one", actor=person("olga"), reason="p95 doubled")
    # Running for an hour without an evaluation and without a single outcome.
    quiet = running_plan("quiet-one", hours_ago=1)
    # A page that never reached on-call.
    channel = AlertChannel.objects.create(name="oncall-hook", kind="webhook", url_env="HOOK_URL")
    paused.alert_channels.add(channel)
    message = build_test_message(
        plan_key=paused.key, plan_name=paused.name, run=1, dashboard_url="", now=now
    )
    outbox.alert_enqueue(plan=paused, message=message, now=now)
    AlertDelivery.objects.filter(plan=paused).update(status=DeliveryStatus.FAILED)

    attention = _attention(staff("viewer", operate=False).get("/").content.decode())
    items = re.findall(
        r'<li class="attention-(\w+)" data-plan="([^"]+)">(.*?)</li>', attention, re.S
    )
    said = [(severity, key, re.sub(r"<[^>]+>|\s+", " ", text)) for severity, key, text in items]
    # Most urgent first.
    severities = [s for s, _, _ in said]
    assert severities == sorted(severities, key=("critical", "warning", "info").index)

    def find(key: str, title: str) -> tuple[str, str]:
        match = [(s, t) for s, k, t in said if k == key and title in t]
        assert match, (key, title, said)
        return match[0]

    severity, text = find("paused-one", "alert delivery failed")
    assert severity == "critical" and "oncall-hook" in text
    severity, text = find("rolled-one", "Rolled back")
    assert severity == "critical" and "by olga" in text and "p95 doubled" in text
    severity, text = find("paused-one", "Paused")
    assert severity == "warning" and "checking the EU" in text
    severity, text = find("quiet-one", "The engine is not evaluating")
    assert severity == "warning" and "No evaluation for 1 h" in text
    severity, text = find("quiet-one", "No traffic reported")
    assert severity == "warning"
    assert quiet.key and rolled.key


def test_a_step_waiting_for_a_person_and_a_guardrail_alert() -> None:
    manual = running_plan(
        "manual-one",
        phases=[
            {"kind": "ab_split", "percent": 50.0, "min_duration_minutes": 1, "min_samples": 10,
             "auto_advance": False},
            {"kind": "rollout", "steps": [100], "min_duration_minutes": 30, "min_samples": 100},
        ],
        guardrails=[],  # nothing to wait for but the step's minimums
    )  # fmt: skip
    start = timezone.now() - timedelta(minutes=30)
    for arm in ("control", "candidate"):
        feed(manual.current_stage, start=start, minutes=30, per_minute=20, arm=arm,
             error_rate=0.0, latency_ms=500)  # fmt: skip
    engine.plan_evaluate(plan_id=manual.pk)
    evaluation = Evaluation.objects.get(plan=manual)
    assert (evaluation.action, evaluation.decision["action"]) == ("hold", "advance"), (
        evaluation.decision["reasons"]
    )
    page = staff("viewer", operate=False).get("/").content.decode()
    assert "Ready to advance" in _attention(page)
    assert "ready to advance:" in _row(page, "manual-one")

    # The engine's alert (a cost guardrail says alert only): the page says so.
    Evaluation.objects.filter(pk=evaluation.pk).update(
        action="alert",
        decision={**evaluation.decision, "action": "alert", "alert": True,
                  "reasons": ["cost_per_request: candidate cost 1.4x control"]},
    )  # fmt: skip
    attention = _attention(staff("viewer2", operate=False).get("/").content.decode())
    assert "Guardrail alert" in attention and "cost_per_request: candidate cost 1.4x" in attention


def _plans(n: int, offset: int) -> None:
    """``n`` plans of every kind: running with traffic and an evaluation, paused, rolled back
    with a failed page, drafts."""
    now = timezone.now()
    channel, _ = AlertChannel.objects.get_or_create(
        name="hook", defaults={"kind": "webhook", "url_env": "HOOK_URL"}
    )
    for i in range(offset, offset + n):
        kind = i % 4
        key = f"plan-{i}"
        if kind == 3:
            make_plan(key)
            continue
        plan = running_plan(key)
        feed(plan.current_stage, start=now - timedelta(minutes=5), minutes=5, per_minute=2,
             arm="control")  # fmt: skip
        engine.plan_evaluate(plan_id=plan.pk)
        if kind == 1:
            lifecycle.plan_pause(plan_key=key, actor=person(), reason="look")
        if kind == 2:
            plan.alert_channels.add(channel)
            lifecycle.plan_rollback(plan_key=key, actor=person(), reason="bad")
            AlertDelivery.objects.filter(plan=plan).update(status=DeliveryStatus.FAILED)


def _count(client: Client, django_assert_max_num_queries: Any) -> int:
    with django_assert_max_num_queries(20) as captured:
        response = client.get("/")
    assert response.status_code == 200
    return len(captured.captured_queries)


def test_query_count_does_not_grow_with_the_plans(django_assert_max_num_queries: Any) -> None:
    client = staff("viewer", operate=False)
    _plans(4, 0)
    few = _count(client, django_assert_max_num_queries)
    _plans(12, 4)
    assert MigrationPlan.objects.count() == 16
    assert PlanStage.objects.count() >= 12
    many = _count(client, django_assert_max_num_queries)
    assert many == few, (few, many)
    page = client.get("/").content.decode()
    assert len(re.findall(r'class="plan-row"', page)) == 16
