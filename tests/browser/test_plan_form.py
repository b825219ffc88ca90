"""A new engineer in a real browser against the real server stack: from the home page, a plan
made from nothing to started without typing JSON (errors shown beside their fields first),
then finding the way back: the home page, the admin's plan list at a laptop's width, and a new
API key copied with its button. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from migrations_app.api.keys import apikey_create
from migrations_app.models import ApiKey, MigrationPlan, ModelSpec
from tests.browser.conftest import shot
from tests.factories import make_plan, make_user

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

LAPTOP = {"width": 1366, "height": 768}


def log_in(page: Any, url: str, username: str) -> None:
    page.goto(f"{url}/admin/login/?next=/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"pw-{username}")
    page.click("input[type=submit]")


def field_error(page: Any, field_id: str) -> Any:
    """The error list right beside an input, as the page lays it out."""
    return page.locator(f"#{field_id}-errors")


def test_a_plan_from_nothing_to_started_without_json(
    live_server_factory: Any, browser_page: Any
) -> None:
    server = live_server_factory()
    page = browser_page
    page.set_viewport_size(LAPTOP)
    make_user("alice")
    apikey_create(name="app", scopes=["decide", "report"])
    gpt = ModelSpec.objects.get(model_id="gpt-4o-2024-08-06")
    sonnet = ModelSpec.objects.get(model_id="claude-sonnet-4-20250514")

    # The home page is where one starts: no plan yet, and a way to make one.
    log_in(page, server.url, "alice")
    expect(page).to_have_url(f"{server.url}/")
    expect(page.locator("#no-plans")).to_be_visible()
    page.click("header a.new-plan")
    expect(page.locator("h1")).to_have_text("New plan")
    # The template's phases and guardrails are there already.
    expect(page.locator("tr.phase-row")).to_have_count(3)
    expect(page.locator("tr.guardrail-row")).to_have_count(4)

    # A first try with three mistakes: no name, a temperature out of range, steps going down.
    page.fill("#id_key", "support-chat")
    page.select_option("#id_control_model", str(gpt.pk))
    page.fill("#id_control_temperature", "0.2")
    page.fill("#id_control_max_tokens", "800")
    page.select_option("#id_candidate_model", str(sonnet.pk))
    page.fill("#id_candidate_temperature", "3")
    page.fill("#id_phases-2-steps", "10, 50, 25")
    # The preview follows the form: the chosen models side by side, with their prices.
    expect(page.locator("#preview-models")).to_contain_text("Claude Sonnet 4")
    expect(page.locator("#preview-models")).to_contain_text("$15.00")
    page.click("#create-start")

    expect(field_error(page, "id_name")).to_be_visible()
    expect(field_error(page, "id_candidate_temperature")).to_have_text(
        "temperature must be a number from 0.0 to 2.0."
    )
    expect(field_error(page, "id_phases-2-steps")).to_have_text(
        "Steps must be strictly increasing."
    )
    expect(field_error(page, "id_control_temperature")).to_have_count(0)
    expect(page.locator("#preview-problems")).to_contain_text("3 problems")
    # What was typed is still there.
    expect(page.locator("#id_key")).to_have_value("support-chat")
    expect(page.locator("#id_control_max_tokens")).to_have_value("800")
    shot(page, "plan-form-errors")
    assert not MigrationPlan.objects.exists()

    # Fixed; the traffic typed in for the cost; one more guardrail added as a row.
    page.fill("#id_name", "Support chat to Claude")
    page.fill("#id_candidate_temperature", "0.3")
    page.fill("#id_phases-2-steps", "10, 25, 50, 100")
    page.click("#add-guardrail")
    expect(page.locator("tr.guardrail-row")).to_have_count(5)
    page.select_option("#id_guardrails-4-metric", "latency_p99")
    page.fill("#id_guardrails-4-tolerance", "1.5")
    page.fill("#id_traffic_rpm", "100")
    page.fill("#id_traffic_input_tokens", "1000")
    page.fill("#id_traffic_output_tokens", "500")
    # Before saving: the timeline with its minimums, the cost, the guardrails in words.
    expect(page.locator("#preview-timeline li.stage")).to_have_count(6)
    expect(page.locator("#preview-duration")).to_contain_text("At least 5 h from start to 100 %")
    expect(page.locator("#cost-table")).to_contain_text("+40 %")
    expect(page.locator("#preview-guardrails")).to_contain_text(
        "p99 latency is more than 1.5× control's"
    )
    expect(page.locator("#preview-problems")).to_have_count(0)
    shot(page, "plan-form-preview")
    # Leave the last field first and let the preview settle. Right after a full-page
    # screenshot, the focus change of a click moved the page back to where the field had
    # scrolled it (143 px), under the pointer, and the click missed the button (without the
    # screenshot, a mouse down on the button with the field focused did not move the page).
    page.locator("#id_traffic_output_tokens").blur()
    page.wait_for_load_state("networkidle")

    # Create and start: the confirmation says what will not work, the person confirms.
    page.click("#create-start")
    expect(page.locator("h1")).to_contain_text("Start support-chat?")
    expect(page.locator("#start-warnings")).to_contain_text("a rollback would page nobody")
    page.click("button[name=confirm]")
    expect(page.locator("#plan-status")).to_have_text("Running")
    expect(page.locator("#position")).to_contain_text("shadow: 10 %")
    plan = MigrationPlan.objects.get(key="support-chat")
    assert plan.status == "running"
    assert plan.control_params == {"temperature": 0.2, "max_tokens": 800}
    assert plan.candidate_params == {"temperature": 0.3}
    assert list(plan.phases.values_list("steps", flat=True))[2] == [10, 25, 50, 100]
    assert plan.guardrails.filter(metric="latency_p99", tolerance=1.5).exists()

    # Back home: the plan, running, in its first phase.
    page.click("header a.brand")
    row = page.locator('tr.plan-row[data-plan="support-chat"]')
    expect(row).to_contain_text("Running")
    expect(row.locator(".where")).to_contain_text("shadow: 10 % of control requests")
    expect(row.locator(".step")).to_have_text("phase 1 of 3 (Shadow)")
    shot(page, "home")


def test_finding_the_way_at_a_laptops_width(live_server_factory: Any, browser_page: Any) -> None:
    server = live_server_factory()
    page = browser_page
    page.set_viewport_size(LAPTOP)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    make_user("alice")
    for key in ("checkout-bot-with-a-longer-key", "faq-answers", "support-chat"):
        make_plan(key, name=f"Migrate {key.replace('-', ' ')} from GPT-4o to Claude Sonnet 4")
    log_in(page, server.url, "alice")

    # The admin says Turnout, and its plan list shows every dashboard link in full.
    page.goto(f"{server.url}/admin/migrations_app/migrationplan/")
    expect(page.locator("#site-name")).to_have_text("Turnout")
    expect(page).to_have_title("Select migration plan to change | Turnout")
    links = page.locator("a.plan-dashboard")
    expect(links).to_have_count(3)
    for i in range(3):
        box = links.nth(i).bounding_box()
        assert box is not None and box["x"] + box["width"] <= LAPTOP["width"], box
        # Not clipped by the list's scrolling box: the link is what is at its centre.
        hit = page.evaluate(
            "([x, y]) => document.elementFromPoint(x, y)?.className",
            [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
        )
        assert hit == "plan-dashboard", hit
    shot(page, "admin-plan-list-1366")

    # A new API key: its scopes in words, and a button that copies it.
    page.goto(f"{server.url}/admin/migrations_app/apikey/add/")
    page.fill("#id_name", "web")
    page.check("input[name=scopes][value=decide]")
    page.check("input[name=scopes][value=report]")
    page.check("#id_all_plans")
    page.click("input[name=_save]")
    shown = page.locator("#new-api-key")
    expect(shown).to_be_visible()
    secret = shown.inner_text()
    assert secret.startswith(f"tk_{ApiKey.objects.get(name='web').prefix}_")
    page.click("button[data-copy='#new-api-key']")
    expect(page.locator("button[data-copy='#new-api-key']")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    expect(page.locator("td.field-scopes_shown").first).to_have_text("decide, report")
    shot(page, "admin-new-api-key")
