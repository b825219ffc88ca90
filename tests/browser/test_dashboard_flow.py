"""An engineer's session in a real browser against the real server stack: log in to the
admin, create a plan, start it, open its dashboard, watch it update as SDK traffic arrives
and the engine evaluates, roll it back with a reason, read the timeline entry."""

from __future__ import annotations

import random
from typing import Any

import pytest
from playwright.sync_api import expect
from turnout import Client as TurnoutClient

from migrations_app.api.keys import apikey_create
from migrations_app.guardrails import engine
from migrations_app.models import AuditEvent, MigrationPlan, PlanStatus
from tests.browser.conftest import shot
from tests.factories import make_user

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def send_traffic(url: str, key: str, plan: str, n: int) -> None:
    """``n`` requests decided and reported by the real SDK over HTTP."""
    rng = random.Random(7)
    with TurnoutClient(url, key, stream=False, flush_interval=0.2) as client:
        for i in range(n):
            decision = client.decide(plan, f"user-{i % 40}")
            assert decision.run == 1, decision  # the snapshot has the running plan
            client.report(
                decision,
                latency_ms=rng.uniform(300, 900),
                ttft_ms=rng.uniform(80, 200),
                input_tokens=400,
                output_tokens=150,
            )
        assert client.flush(timeout=10)
        assert client.rejected == 0


def test_create_start_watch_and_roll_back(live_server_factory: Any, browser_page: Any) -> None:
    server = live_server_factory()
    page = browser_page
    make_user("alice")
    _, sdk_key = apikey_create(name="app", scopes=["decide", "report"])

    # Log in to the admin.
    page.goto(f"{server.url}/admin/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "pw-alice")
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text("alice")

    # Create a plan: the standard playbook and guardrails come pre-filled.
    page.goto(f"{server.url}/admin/migrations_app/migrationplan/add/")
    page.fill("#id_key", "support-chat")
    page.fill("#id_name", "Support chat to Claude")
    page.select_option("#id_control_model", label="openai:gpt-4o-2024-08-06")
    page.select_option("#id_candidate_model", label="anthropic:claude-sonnet-4-20250514")
    shot(page, "01-create-plan")
    page.click("input[name=_continue]")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    plan = MigrationPlan.objects.get(key="support-chat")
    assert plan.phases.count() == 3 and plan.guardrails.count() == 4

    # Start it from the change page.
    page.click("a.lifecycle-start")
    page.fill("#id_reason", "first run")
    page.click("input[name=confirm]")
    expect(page.locator(".messagelist")).to_contain_text("start done.")

    # Its dashboard, linked from the change page.
    page.click("a.plan-dashboard-link")
    expect(page.locator("#plan-status")).to_have_text("Running")
    expect(page.locator("#position")).to_contain_text("shadow: 10 %")
    expect(page.locator("#stage-control")).to_have_text("0")
    expect(page.locator("#verdicts")).to_contain_text("No evaluation yet")
    shot(page, "02-dashboard-started")

    # Traffic arrives through the SDK; the page updates without a reload.
    page.evaluate("window.__not_reloaded = true")
    send_traffic(server.url, sdk_key, "support-chat", 300)
    expect(page.locator("#stage-control")).to_have_text("300")
    engine.plan_evaluate(plan_id=plan.pk)
    expect(page.locator("#verdicts")).to_contain_text("Engine's latest evaluation")
    expect(page.locator('#verdicts tr.verdict[data-metric="latency_p95"]')).to_be_visible()
    assert page.evaluate("window.__not_reloaded") is True
    shot(page, "03-dashboard-traffic")

    # Roll back: a confirmation, and no rollback without a reason.
    page.click("a.act-rollback")
    expect(page.locator("h1")).to_contain_text("Rollback support-chat?")
    page.click("button[name=confirm]")
    # The browser refuses an empty reason (the form field is required; the server checks too).
    expect(page.locator("#id_reason:invalid")).to_be_visible()
    expect(page.locator("h1")).to_contain_text("Rollback support-chat?")
    assert MigrationPlan.objects.get(pk=plan.pk).status == PlanStatus.RUNNING
    page.fill("#id_reason", "Answers are too long for the chat widget")
    shot(page, "04-rollback-confirm")
    page.click("button[name=confirm]")

    # Back on the dashboard: rolled back, and the timeline says who and why.
    expect(page.locator("#plan-status")).to_have_text("Rolled back")
    entry = page.locator("#timeline tr.event-rollback").first
    expect(entry).to_contain_text("alice")
    expect(entry.locator(".reason")).to_have_text("Answers are too long for the chat widget")
    shot(page, "05-dashboard-rolled-back")
    event = AuditEvent.objects.filter(plan=plan, action="rollback").get()
    assert (event.actor_label, event.actor_user.username) == ("alice", "alice")
