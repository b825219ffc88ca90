"""The plan form without JSON (``/plans/new``): typed params, steps as a list of percentages,
every error beside its field, the one validation service's messages, the preview before
saving, and who may use it."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from migrations_app.api.plan_serializers import MAX_PHASES
from migrations_app.dashboard import plan_forms
from migrations_app.dashboard.plan_forms import PhaseForm
from migrations_app.models import AuditEvent, MigrationPlan, ModelSpec, Outcome
from migrations_app.plans.preview import MINUTES_PER_MONTH
from migrations_app.plans.validation import plan_check
from tests.dashboard.data import feed, running_plan
from tests.factories import formset, make_plan, make_user

pytestmark = pytest.mark.django_db

GPT4O = "gpt-4o-2024-08-06"
SONNET = "claude-sonnet-4-20250514"


def staff(username: str, *codenames: str) -> Client:
    user = make_user(username, superuser=False)
    user.is_staff = True
    user.save()
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def maker(username: str = "mia") -> Client:
    return staff(username, "view_migrationplan", "add_migrationplan", "operate_migrationplan")


PHASES = [
    {"kind": "shadow", "percent": "10", "steps": "", "min_duration_minutes": "60",
     "min_samples": "500", "auto_advance": "on"},
    {"kind": "ab_split", "percent": "10", "steps": "", "min_duration_minutes": "120",
     "min_samples": "2000", "auto_advance": "on"},
    {"kind": "rollout", "percent": "", "steps": "10, 25, 50, 100", "min_duration_minutes": "30",
     "min_samples": "1000", "auto_advance": "on"},
]  # fmt: skip
GUARDRAILS = [
    {"metric": "error_rate", "tolerance_kind": "relative", "tolerance": "1.5",
     "action": "rollback", "min_samples": "0"},
    {"metric": "latency_p95", "tolerance_kind": "relative", "tolerance": "1.3",
     "action": "rollback", "min_samples": "0"},
]  # fmt: skip


def post_data(**overrides: Any) -> dict[str, Any]:
    """What the page posts for a good plan: nothing but typed values and choices."""
    data: dict[str, Any] = {
        "key": "support-chat",
        "name": "Support chat to Claude",
        "description": "",
        "control_model": ModelSpec.objects.get(model_id=GPT4O).pk,
        "control_temperature": "0.2",
        "control_max_tokens": "800",
        "control_top_p": "",
        "control_response_format": "",
        "control_params_extra": "",
        "control_prompt_mode": "none",
        "control_prompt_text": "",
        "candidate_model": ModelSpec.objects.get(model_id=SONNET).pk,
        "candidate_temperature": "0.2",
        "candidate_max_tokens": "800",
        "candidate_top_p": "0.9",
        "candidate_response_format": "",
        "candidate_params_extra": "",
        "candidate_prompt_mode": "suffix",
        "candidate_prompt_text": "Answer in at most three sentences.",
        "judge_model": "",
        "alpha": "0.05",
        "circuit_breaker_error_rate": "0.2",
        "circuit_breaker_min_requests": "50",
        "escalate_after_minutes": "10",
        "shadow_budget_usd_per_day": "25",
        "shadow_retention_days": "14",
        "fallback_to_control": "on",
        "traffic_rpm": "",
        "traffic_input_tokens": "",
        "traffic_output_tokens": "",
        "template": "standard-chat",
    }
    phases = overrides.pop("phases", PHASES)
    guardrails = overrides.pop("guardrails", GUARDRAILS)
    data.update(overrides)
    data.update(formset("phases", phases))
    data.update(formset("guardrails", guardrails))
    return data


def errors_of(page: str, field_id: str) -> list[str]:
    """The messages shown right beside the input with this id."""
    block = re.search(
        rf'<ul class="errorlist field-errors" id="{field_id}-errors">(.*?)</ul>', page, re.S
    )
    return re.findall(r"<li>(.*?)</li>", block.group(1), re.S) if block else []


# --- who may use it --------------------------------------------------------------------------


def test_anonymous_is_sent_to_the_login_and_staff_needs_view_and_add() -> None:
    response = Client().get("/plans/new")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert staff("viewer", "view_migrationplan").get("/plans/new").status_code == 403
    assert staff("adder", "add_migrationplan").get("/plans/new").status_code == 403
    refused = staff("viewer2", "view_migrationplan").post("/plans/new", post_data(create="1"))
    assert refused.status_code == 403 and not MigrationPlan.objects.exists()
    assert maker().get("/plans/new").status_code == 200


def test_the_preview_is_post_only_and_saves_nothing() -> None:
    client = maker()
    assert client.get("/plans/new/preview").status_code == 405
    response = client.post("/plans/new/preview", post_data(create="1"))
    assert response.status_code == 200 and not MigrationPlan.objects.exists()


# --- the form ----------------------------------------------------------------------------------


def test_the_form_starts_from_the_standard_template_with_the_catalogs_prices() -> None:
    page = maker().get("/plans/new").content.decode()
    assert 'name="phases-TOTAL_FORMS" value="3"' in page
    assert 'name="phases-2-steps" value="10, 25, 50, 100"' in page
    assert 'name="guardrails-TOTAL_FORMS" value="4"' in page
    # Models from the catalog, each with its prices and context window.
    assert (
        "GPT-4o (openai:gpt-4o-2024-08-06) · $2.50 in / $10.00 out per 1M tokens · "
        "128k context · 16.384k max output"
    ) in page
    assert "Claude Sonnet 4 (anthropic:claude-sonnet-4-20250514) · $3.00 in / $15.00 out" in page
    # Params are typed fields; JSON is an escape hatch, folded away.
    for name in ("temperature", "max_tokens", "top_p", "response_format"):
        assert f'name="control_{name}"' in page and f'name="candidate_{name}"' in page
    assert re.search(r"<details>\s*<summary[^>]*>Other params, as JSON", page)
    assert "New plan · Turnout" in page


def test_a_plan_made_without_json() -> None:
    client = maker("mia")
    data = post_data(create="1", candidate_response_format="json_object")
    response = client.post("/plans/new", data)
    assert response.status_code == 302, errors_in(response)
    assert response["Location"] == "/plans/support-chat/"
    plan = MigrationPlan.objects.get(key="support-chat")
    assert plan.status == "draft" and plan.owner.username == "mia"
    assert plan.control_params == {"temperature": 0.2, "max_tokens": 800}
    assert plan.candidate_params == {
        "temperature": 0.2, "max_tokens": 800, "top_p": 0.9,
        "response_format": {"type": "json_object"},
    }  # fmt: skip
    assert (plan.candidate_prompt_mode, plan.candidate_prompt_text) == (
        "suffix", "Answer in at most three sentences.",
    )  # fmt: skip
    phases = list(plan.phases.values("kind", "percent", "steps", "min_duration_minutes"))
    assert phases == [
        {"kind": "shadow", "percent": 10.0, "steps": [], "min_duration_minutes": 60},
        {"kind": "ab_split", "percent": 10.0, "steps": [], "min_duration_minutes": 120},
        {"kind": "rollout", "percent": None, "steps": [10.0, 25.0, 50.0, 100.0],
         "min_duration_minutes": 30},
    ]  # fmt: skip
    assert sorted(plan.guardrails.values_list("metric", flat=True)) == ["error_rate", "latency_p95"]
    assert float(plan.shadow_budget_usd_per_day) == 25.0
    event = AuditEvent.objects.get(plan=plan)
    assert (event.action, event.actor_label) == ("create", "mia")


def test_create_and_start_goes_to_the_start_confirmation() -> None:
    response = maker().post("/plans/new", post_data(create_start="1"))
    plan = MigrationPlan.objects.get(key="support-chat")
    assert response.status_code == 302
    assert response["Location"] == f"/plans/support-chat/act/start?version={plan.version}"
    assert plan.status == "draft"  # started only once the person confirms


def errors_in(response: Any) -> list[str]:
    return re.findall(r'class="errorlist[^"]*"[^>]*>(.*?)</ul>', response.content.decode(), re.S)


def test_every_error_is_beside_its_field_and_nothing_is_saved() -> None:
    data = post_data(
        create="1",
        key="Support Chat!",
        name="",
        control_temperature="3",
        candidate_max_tokens="100000",  # Claude Sonnet 4 writes at most 64,000
        phases=[
            PHASES[0],
            {**PHASES[1], "percent": "100"},
            {**PHASES[2], "steps": "10, 50, 25"},
        ],
        guardrails=[GUARDRAILS[0], {**GUARDRAILS[1], "tolerance": "0.9"}],
    )
    response = maker().post("/plans/new", data)
    assert response.status_code == 400 and not MigrationPlan.objects.exists()
    page = response.content.decode()
    assert errors_of(page, "id_key") and "Lowercase letters" in errors_of(page, "id_key")[0]
    assert errors_of(page, "id_name")
    assert errors_of(page, "id_control_temperature") == [
        "temperature must be a number from 0.0 to 2.0."
    ]
    assert errors_of(page, "id_candidate_max_tokens") == [
        "max_tokens 100000 exceeds the model&#x27;s maximum output of 64000."
    ]
    assert errors_of(page, "id_phases-1-percent") == [
        "An A/B split keeps some control traffic: use a rollout to reach 100 %."
    ]
    assert errors_of(page, "id_phases-2-steps") == ["Steps must be strictly increasing."]
    assert errors_of(page, "id_guardrails-1-tolerance") == [
        "A relative tolerance is a ratio above 1 and at most 10, e.g. 1.5."
    ]
    # The fields without a problem carry no error.
    assert not errors_of(page, "id_candidate_temperature")
    assert not errors_of(page, "id_phases-0-percent") and not errors_of(
        page, "id_guardrails-0-tolerance"
    )
    # The preview says how many, and the rows it cannot read are left out of it.
    assert 'id="preview-problems"' in page


def test_the_messages_are_the_validation_services_own() -> None:
    """One validation: the form shows exactly what plan_check says for the same plan."""
    data = post_data(
        create="1", control_temperature="3", guardrails=[{**GUARDRAILS[0], "tolerance": "0.5"}]
    )
    page = maker().post("/plans/new", data).content.decode()
    forms_ = plan_forms.bind(data)
    assert forms_.parsed()
    expected = plan_check(plan_forms.plan_values(forms_)).errors
    assert set(expected) == {"control.params", "guardrails[0].tolerance"}
    assert errors_of(page, "id_control_temperature") == expected["control.params"]
    assert errors_of(page, "id_guardrails-0-tolerance") == expected["guardrails[0].tolerance"]


def test_a_candidate_share_that_drops_is_said_on_the_phases() -> None:
    data = post_data(
        create="1", phases=[{**PHASES[1], "percent": "50"}, {**PHASES[2], "steps": "10, 100"}]
    )
    page = maker().post("/plans/new", data).content.decode()
    message = errors_of(page, "phases")
    assert message and "would move back from the candidate to control" in message[0]


def test_what_does_not_parse_is_said_beside_it() -> None:
    data = post_data(
        create="1",
        control_temperature="warm",
        phases=[PHASES[0], PHASES[1], {**PHASES[2], "steps": "10, half, 100"}],
        candidate_params_extra="{seed: 7",
    )
    response = maker().post("/plans/new", data)
    page = response.content.decode()
    assert response.status_code == 400 and not MigrationPlan.objects.exists()
    assert errors_of(page, "id_control_temperature") == ["Enter a number."]
    assert "&#x27;half&#x27; is not a number" in errors_of(page, "id_phases-2-steps")[0]
    assert errors_of(page, "id_candidate_params_extra")[0].startswith("Not JSON")


def test_the_json_escape_hatch_adds_params_without_a_field() -> None:
    client = maker()
    clash = client.post(
        "/plans/new", post_data(create="1", control_params_extra='{"temperature": 1}')
    )
    assert errors_of(clash.content.decode(), "id_control_params_extra") == [
        "Set temperature with the field(s) above."
    ]
    listed = client.post("/plans/new", post_data(create="1", control_params_extra="[1, 2]"))
    assert errors_of(listed.content.decode(), "id_control_params_extra")
    done = client.post("/plans/new", post_data(create="1", control_params_extra='{"seed": 7}'))
    assert done.status_code == 302
    assert MigrationPlan.objects.get().control_params == {
        "temperature": 0.2, "max_tokens": 800, "seed": 7,
    }  # fmt: skip


def test_params_nested_past_the_parser_are_an_error_not_a_500() -> None:
    data = post_data(create="1", control_params_extra="[" * 5000 + "]" * 5000)
    response = maker().post("/plans/new", data)
    assert response.status_code == 400 and not MigrationPlan.objects.exists()
    assert errors_of(response.content.decode(), "id_control_params_extra") == [
        "Not JSON: nested too deeply."
    ]


def test_steps_read_as_people_write_them() -> None:
    assert plan_forms.parse_steps("5, 25, 50, 100") == [5, 25, 50, 100]
    assert plan_forms.parse_steps("5% 25%  50 ;100") == [5, 25, 50, 100]
    assert plan_forms.parse_steps("") == []
    assert plan_forms.steps_text([5.0, 12.5, 100]) == "5, 12.5, 100"


def test_a_taken_key_is_said_on_the_key() -> None:
    make_plan("support-chat")
    response = maker().post("/plans/new", post_data(create="1"))
    assert response.status_code == 400
    assert errors_of(response.content.decode(), "id_key") == [
        "A plan with key &#x27;support-chat&#x27; exists."
    ]


def test_choosing_another_template_replaces_the_rows_and_keeps_the_rest() -> None:
    data = post_data(use_template="1", template="careful", key="kept-key")
    page = maker().post("/plans/new", data).content.decode()
    assert 'name="phases-2-steps" value="5, 10, 25, 50, 100"' in page
    assert 'value="kept-key"' in page
    assert 'name="guardrails-TOTAL_FORMS" value="5"' in page  # the "strict" set
    assert not MigrationPlan.objects.exists()


def test_hostile_row_counts_get_a_clear_error_not_a_500() -> None:
    data = post_data(create="1")
    data["phases-TOTAL_FORMS"] = "100000"
    built = []
    original = PhaseForm.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(1)
        original(self, *args, **kwargs)

    with mock.patch.object(PhaseForm, "__init__", counted):
        response = maker().post("/plans/new", data)
    assert response.status_code == 400 and not MigrationPlan.objects.exists()
    # No more forms built than the API takes phases (Django's own cap: 1,000, ~7 s of CPU),
    # and the page's empty form (the template of a new row).
    assert 0 < len(built) <= MAX_PHASES + 1
    data = post_data(create="1", control_temperature="nan", candidate_top_p="1e400")
    page = maker("mia2").post("/plans/new", data).content.decode()
    assert errors_of(page, "id_control_temperature") == ["Enter a number."]
    assert errors_of(page, "id_candidate_top_p") == ["Enter a number."]


# --- the preview ------------------------------------------------------------------------------


def test_the_preview_at_a_typed_traffic() -> None:
    data = post_data(traffic_rpm="100", traffic_input_tokens="1000", traffic_output_tokens="500")
    page = maker().post("/plans/new/preview", data).content.decode()
    # The timeline with its minimums and how long each stage takes at this traffic.
    stages = re.findall(r'<li class="stage stage-(\w+)" data-stage="(\d+)">', page)
    assert [k for k, _ in stages] == ["shadow", "ab_split"] + ["rollout"] * 4
    assert "at least 2 h and 2,000 requests on each arm; about 3 h 20 min at this traffic" in page
    assert "At least 5 h from start to 100 %; about 7 h 40 min at this traffic" in page
    # GPT-4o at 1,000 in / 500 out: $0.0075 a request; Claude Sonnet 4: $0.0105.
    month = 100 * MINUTES_PER_MONTH
    assert f"${month * 0.0075:,.0f}" in page and f"${month * 0.0105:,.0f}" in page
    assert "+40 %" in page and "(as you typed)" in page
    assert "budget $25.00" in page
    assert "if the candidate&#x27;s p95 latency is more than 1.3× control&#x27;s." in page


def test_the_preview_uses_the_traffic_turnout_saw_on_the_control_model() -> None:
    plan = running_plan("live-one")  # GPT-4o -> Claude Sonnet 4, a 50 % split
    now = timezone.now()
    feed(plan.current_stage, start=now - timedelta(minutes=30), minutes=30, per_minute=4,
         arm="control")  # fmt: skip
    Outcome.objects.bulk_create(
        Outcome(event_id=f"e{i}", plan=plan, run=plan.current_run, stage=plan.current_stage,
                plan_version=plan.version, decision_id=f"d{i}", arm="control", unit=f"u{i}",
                ts=now - timedelta(minutes=1), window=now, latency_ms=500.0,
                input_tokens=900 + 200 * (i % 2), output_tokens=300, received_at=now)
        for i in range(10)
    )  # fmt: skip
    page = maker().post("/plans/new/preview", post_data()).content.decode()
    # 120 requests over the half hour since the first window (a minute boundary): ~4 a minute.
    rate = re.search(
        r"([\d.]+) requests a minute, 1,000 input and 300 output tokens a request", page
    )
    assert rate and 3.8 <= float(rate.group(1)) <= 4.0, page.split('id="preview-cost"')[1][:400]
    assert "what Turnout saw on GPT-4o in the last hour: 120 requests" in page
    # No traffic on the model chosen as control: the person is asked for it.
    other = post_data(control_model=ModelSpec.objects.get(model_id="o3-2025-04-16").pk)
    page = maker("mia3").post("/plans/new/preview", other).content.decode()
    assert "Turnout saw no traffic on o3 in the last hour" in page
