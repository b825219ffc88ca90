"""Hostile input to the plans API answers 4xx naming the field, never 500 (issue 14, item 3):
a lone surrogate or a NUL anywhere in a JSON body (the parser refuses it for the whole DRF API:
echoed in an error it made the renderer fail; stored it made PostgreSQL fail)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from migrations_app.api.keys import apikey_create
from tests.api.test_plans_crud import document
from tests.factories import make_plan

pytestmark = pytest.mark.django_db

BAD = ["\ud800", "\x00", "a\udfff"]


@pytest.fixture
def ci() -> Client:
    _, raw = apikey_create(name="ci", scopes=["plans", "admin"])
    return Client(HTTP_AUTHORIZATION=f"Bearer {raw}")


def _send(client: Client, method: str, url: str, body: Any) -> Any:
    # As a client sends them: JSON escapes (\\ud800, \\u0000).
    return getattr(client, method)(url, json.dumps(body).encode(), content_type="application/json")


def _spoil(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    target: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[parts[-1]] = value
    return doc


CASES = [
    ("phases.0.kind", "phases[0].kind"),
    ("control.prompt_mode", "control.prompt_mode"),
    ("control.params.stop", "control.params.stop"),
    ("name", "name"),
]


@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize(("where", "field"), CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("method", ["post", "put", "patch"])
def test_unstorable_text_in_a_plan_body_is_a_400_naming_the_field(
    ci: Client, method: str, where: str, field: str, bad: str
) -> None:
    make_plan("support-chat")
    doc = _spoil(document(), where, f"x{bad}")
    url = "/api/v1/plans" if method == "post" else "/api/v1/plans/support-chat"
    response = _send(ci, method, url, doc)
    assert response.status_code == 400, response.content[:300]
    body = response.json()
    assert body["code"] == "validation_failed"
    assert field in body["details"]["fields"], body


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_a_guardrail_choice_and_a_params_key(ci: Client, bad: str) -> None:
    doc = document(
        guardrails=[{"metric": "error_rate", "tolerance_kind": bad, "action": bad, "tolerance": 1}]
    )
    response = _send(ci, "post", "/api/v1/plans", doc)
    assert response.status_code == 400, response.content[:300]
    assert "guardrails[0].tolerance_kind" in response.json()["details"]["fields"]
    doc = document()
    doc["control"]["params"] = {f"a{bad}": 1}
    response = _send(ci, "post", "/api/v1/plans", doc)
    assert response.status_code == 400, response.content[:300]
    assert "control.params" in response.json()["details"]["fields"]


@pytest.mark.parametrize("bad", ["\ud800", "\x00", "x\udbff"], ids=repr)
def test_a_label_pair_that_cannot_be_stored_is_named(ci: Client, bad: str) -> None:
    make_plan("support-chat")
    for label in ({"pair": bad, "choice": "a"}, {"pair": "p", "choice": bad}):
        response = _send(ci, "post", "/api/v1/plans/support-chat/labels", {"labels": [label]})
        assert response.status_code == 400, response.content[:300]
        which = "pair" if label["pair"] == bad else "choice"
        assert f"labels[0].{which}" in response.json()["details"]["fields"]


@pytest.mark.parametrize(
    "params",
    [{"model": "gpt-4o"}, {"timeout": 1}, {"stream": True}, {"base_url": "http://x"},
     {"extra_headers": {"a": "b"}}, {"api_key": "sk-x"}],
    ids=lambda p: next(iter(p)),
)  # fmt: skip
@pytest.mark.parametrize("arm", ["control", "candidate"])
def test_arm_params_the_adapter_sets_itself_are_refused_at_save(
    ci: Client, arm: str, params: dict[str, Any]
) -> None:
    # Issue 14, item 4: saved, every call of that arm failed in the SDK's adapter.
    doc = document()
    doc[arm]["params"] = {"temperature": 0.2, **params}
    response = _send(ci, "post", "/api/v1/plans", doc)
    assert response.status_code == 400, response.content[:300]
    assert f"{arm}.params.{next(iter(params))}" in response.json()["details"]["fields"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"phases": [{"kind": "ab_split", "percent": 10, "min_samples": 2**31}]}, "min_samples"),
        (
            {"phases": [{"kind": "ab_split", "percent": 10, "min_duration_minutes": 10**30}]},
            "min_duration",
        ),
        (
            {
                "guardrails": [
                    {
                        "metric": "error_rate",
                        "tolerance_kind": "absolute",
                        "tolerance": 0.01,
                        "min_samples": 2**31,
                    }
                ]
            },
            "guardrails[0].min_samples",
        ),
    ],
    ids=["phase-min-samples", "phase-min-duration", "guardrail-min-samples"],
)
def test_a_count_past_its_column_is_a_400_not_a_500(
    ci: Client, patch: dict[str, Any], field: str
) -> None:
    """A count past the PositiveIntegerField's range was the database's DataError (a 500) on
    PUT/PATCH and in a plan file applied from CI; nothing is stored."""
    plan = make_plan("support-chat")
    version = plan.version
    response = _send(ci, "patch", "/api/v1/plans/support-chat", patch)
    assert response.status_code == 400, response.content[:300]
    fields = response.json()["details"]["fields"]
    assert any(field in name for name in fields), fields
    plan.refresh_from_db()
    assert plan.version == version


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"holdout_percent": True}, "holdout_percent"),
        ({"detector_arl_days": True}, "detector_arl_days"),
        ({"alpha": "0.05"}, "alpha"),
        (
            {
                "guardrails": [
                    {"metric": "error_rate", "tolerance_kind": "absolute", "tolerance": True}
                ]
            },
            "guardrails[0].tolerance",
        ),
        ({"phases": [{"kind": "ab_split", "percent": True}]}, "phases[0].percent"),
    ],
    ids=["holdout-true", "arl-true", "alpha-string", "tolerance-true", "percent-true"],
)
def test_a_boolean_or_string_is_not_a_number(ci: Client, patch: dict[str, Any], field: str) -> None:
    """``true`` was taken as 1 (a 1 % holdout, a 1-day detector) where the plan's JSON Schema
    says number; now it is refused by name, as plan validate refuses it offline."""
    make_plan("support-chat")
    response = _send(ci, "patch", "/api/v1/plans/support-chat?dry_run=true", patch)
    assert response.status_code == 400, response.content[:300]
    assert field in response.json()["details"]["fields"]
