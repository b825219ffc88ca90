"""One validation: the admin's plan form and the plans API refuse the same invalid plans with the
same messages, each shown where it belongs (the API's path, the admin's row and field)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from migrations_app.api.keys import apikey_create
from migrations_app.models import AuditEvent, MigrationPlan, ModelSpec
from tests.factories import formset, make_plan, make_user

pytestmark = pytest.mark.django_db

GPT = "openai:gpt-4o-2024-08-06"
SONNET = "anthropic:claude-sonnet-4-20250514"
HAIKU = "anthropic:claude-3-5-haiku-20241022"

PHASES = [
    {"kind": "shadow", "percent": 10, "steps": [], "min_duration_minutes": 60, "min_samples": 500},
    {"kind": "rollout", "percent": None, "steps": [10, 50, 100], "min_duration_minutes": 30,
     "min_samples": 1000},
]  # fmt: skip
GUARDRAILS = [
    {"metric": "error_rate", "tolerance_kind": "relative", "tolerance": 1.5, "action": "rollback",
     "min_samples": 0},
]  # fmt: skip


def plan(**overrides: Any) -> dict[str, Any]:
    """One plan, written once, posted to both."""
    spec: dict[str, Any] = {
        "key": "checkout-bot",
        "name": "Checkout bot",
        "control": {"model": GPT, "params": {"temperature": 0.2}, "prompt_mode": "none",
                    "prompt_text": ""},
        "candidate": {"model": SONNET, "params": {"temperature": 0.2}, "prompt_mode": "none",
                      "prompt_text": ""},
        "phases": PHASES,
        "guardrails": GUARDRAILS,
        "alpha": 0.05,
        "redaction_patterns": [],
    }  # fmt: skip
    spec.update(overrides)
    return spec


def _pk(ref: str) -> int:
    provider, model_id = ref.split(":", 1)
    return ModelSpec.objects.get(provider__name=provider, model_id=model_id).pk


def _formset(prefix: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The admin's inline rows: steps as JSON, an empty field as "", in order, auto-advancing."""
    return formset(
        prefix,
        [
            {
                **{
                    name: json.dumps(value) if name == "steps" else ("" if value is None else value)
                    for name, value in row.items()
                },
                "order": i,
                "auto_advance": "on",
            }
            for i, row in enumerate(rows)
        ],
    )


def admin_post(spec: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "key": spec["key"],
        "name": spec["name"],
        "description": "",
        "alpha": spec["alpha"],
        "circuit_breaker_error_rate": "0.2",
        "circuit_breaker_min_requests": "50",
        "escalate_after_minutes": "10",
        "shadow_retention_days": "14",
        "redaction_patterns": json.dumps(spec["redaction_patterns"]),
        "fallback_to_control": "on",
        # What the page shows (a browser posts every field it shows): no holdout.
        "holdout_percent": "0",
        "holdout_watch_minutes": "60",
        "holdout_min_samples": "1000",
    }
    if "detector_arl_days" in spec:
        data["detector_arl_days"] = spec["detector_arl_days"]
    for arm in ("control", "candidate"):
        data[f"{arm}_model"] = _pk(spec[arm]["model"])
        data[f"{arm}_params"] = json.dumps(spec[arm]["params"])
        data[f"{arm}_prompt_mode"] = spec[arm]["prompt_mode"]
        data[f"{arm}_prompt_text"] = spec[arm]["prompt_text"]
    data.update(_formset("phases", spec["phases"]))
    data.update(_formset("guardrails", spec["guardrails"]))
    data.update(_formset("metric_definitions", []))
    data.update(_formset("targeting_rules", []))
    data.update(_formset("audit_events", []))
    return data


def admin_errors(response: Any) -> dict[str, list[str]]:
    """Every error on the admin's page, by where it shows: plan field, row field, list."""
    found: dict[str, list[str]] = {}
    form = response.context["adminform"].form
    for field, messages in form.errors.items():
        found.setdefault(field, []).extend(messages)
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        name = formset.prefix
        if formset.non_form_errors():
            found.setdefault(name, []).extend(formset.non_form_errors())
        for i, errors in enumerate(formset.errors):
            for field, messages in errors.items():
                found.setdefault(f"{name}[{i}].{field}", []).extend(messages)
    return found


# (overrides, the API's path -> the admin's place)
CASES: list[tuple[dict[str, Any], dict[str, str]]] = [
    ({"candidate": plan()["control"]}, {"candidate.model": "candidate_model"}),
    (
        {"control": {**plan()["control"], "params": {"temperature": 7}}},
        {"control.params": "control_params"},
    ),
    (
        {"candidate": {**plan()["candidate"], "model": HAIKU, "params": {"max_tokens": 9000}}},
        {"candidate.params": "candidate_params"},
    ),
    (
        {"candidate": {**plan()["candidate"], "prompt_mode": "suffix"}},
        {"candidate.prompt_text": "candidate_prompt_text"},
    ),
    (
        {"phases": [PHASES[0], {**PHASES[1], "steps": [10, 50, 25]}]},
        {"phases[1].steps[2]": "phases[1].steps"},
    ),
    (
        {"phases": [PHASES[0], {**PHASES[1], "steps": [10, 150]}]},
        {"phases[1].steps[1]": "phases[1].steps"},
    ),
    (
        {"phases": [{**PHASES[0], "kind": "ab_split", "percent": 100}]},
        {"phases[0].percent": "phases[0].percent"},
    ),
    (
        {"phases": [{**PHASES[0], "kind": "ab_split", "percent": 25}, PHASES[1]]},
        {"phases": "phases"},
    ),
    ({"phases": []}, {"phases": "phases"}),
    (
        {"guardrails": [{**GUARDRAILS[0], "metric": "latency_p95", "tolerance": 0.8}]},
        {"guardrails[0].tolerance": "guardrails[0].tolerance"},
    ),
    (
        {"guardrails": [{**GUARDRAILS[0], "metric": "satisfaction", "tolerance": 1.2}]},
        {"guardrails[0].tolerance_kind": "guardrails[0].tolerance_kind"},
    ),
    ({"guardrails": GUARDRAILS * 2}, {"guardrails[1].metric": "guardrails[1].metric"}),
    ({"redaction_patterns": ["(unclosed"]}, {"redaction_patterns[0]": "redaction_patterns"}),
    ({"alpha": 0.5}, {"alpha": "alpha"}),
    ({"detector_arl_days": 400}, {"detector_arl_days": "detector_arl_days"}),
    ({"detector_arl_days": 0.5}, {"detector_arl_days": "detector_arl_days"}),
    # Text the database cannot store (issue 14, 3b): the API's parser and the validation the
    # admin runs name the same path with the same message.
    (
        {"control": {**plan()["control"], "params": {"stop": ["\x00"]}}},
        {"control.params.stop[0]": "control_params"},
    ),
    (
        {"candidate": {**plan()["candidate"], "params": {"a\x00": 1}}},
        {"candidate.params": "candidate_params"},
    ),
    ({"redaction_patterns": ["\x00"]}, {"redaction_patterns[0]": "redaction_patterns"}),
    ({"redaction_patterns": ["x\ud800"]}, {"redaction_patterns[0]": "redaction_patterns"}),
    (
        {"control": {**plan()["control"], "params": "\ud800"}},
        {"control.params": "control_params"},
    ),
    (
        {"phases": [PHASES[0], {**PHASES[1], "steps": [10, "\ud800"]}]},
        {"phases[1].steps[1]": "phases[1].steps"},
    ),
    ({"key": "existing"}, {"key": "key"}),
]


@pytest.mark.parametrize(("overrides", "places"), CASES)
def test_the_admin_and_the_api_refuse_the_same_plans_with_the_same_messages(
    overrides: dict[str, Any], places: dict[str, str]
) -> None:
    make_plan("existing")
    spec = plan(**overrides)
    admin = Client()
    admin.force_login(make_user("admin"))
    page = admin.post(reverse("admin:migrations_app_migrationplan_add"), admin_post(spec))
    assert page.status_code == 200, "the admin saved an invalid plan"
    on_page = admin_errors(page)

    _, raw = apikey_create(name="ci", scopes=["plans"])
    response = Client(HTTP_AUTHORIZATION=f"Bearer {raw}").post(
        "/api/v1/plans", spec, content_type="application/json"
    )
    assert response.status_code == 400, response.content
    in_api = response.json()["details"]["fields"]

    assert set(in_api) == set(places), in_api
    for path, place in places.items():
        assert sorted(on_page.get(place, [])) == sorted(in_api[path]), (place, on_page)
    # Nothing else on either side: one validation, one set of messages.
    assert sorted(m for ms in on_page.values() for m in ms) == sorted(
        m for ms in in_api.values() for m in ms
    )
    assert list(MigrationPlan.objects.values_list("key", flat=True)) == ["existing"]
    assert AuditEvent.objects.count() == 1


def test_the_admin_saves_the_detectors_run_length_and_defaults_it() -> None:
    admin = Client()
    admin.force_login(make_user("admin"))
    add = reverse("admin:migrations_app_migrationplan_add")
    page = admin.post(add, admin_post(plan(detector_arl_days=7)))
    assert page.status_code == 302, admin_errors(page)
    assert MigrationPlan.objects.get(key="checkout-bot").detector_arl_days == 7.0
    page = admin.post(add, admin_post(plan(key="no-arl-given")))
    assert page.status_code == 302, admin_errors(page)
    assert MigrationPlan.objects.get(key="no-arl-given").detector_arl_days == 30.0
