"""Attributes in every decision path: /api/v1/decide, OFREP (every context field besides
targetingKey) and the SDK's local decide() give the same answer on the same snapshot; what
the server refuses (a 400 naming the field), and what the SDK does instead (no match)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import turnout
from django.test import Client
from django.utils import timezone
from turnout.contract import MAX_ATTRIBUTE_KEY_LENGTH, MAX_ATTRIBUTES

from migrations_app.plans import targeting as plan_targeting
from migrations_app.routing.snapshots import build_snapshot
from tests.factories import person, started_plan
from tests.sdk.conftest import free_port

pytestmark = pytest.mark.django_db(transaction=True)

RULES = [
    {"name": "regulated", "when": [{"attribute": "tenant", "op": "in", "values": ["bank"]}], "then": "exclude"},
    {"name": "qa tenant", "when": [{"attribute": "tenant", "op": "equals", "value": "qa"}], "then": "include"},
    {"name": "staff", "when": [{"attribute": "internal", "op": "equals", "value": True}], "then": "cohort", "cohort": "internal"},
    {"name": "new app", "when": [{"attribute": "app", "op": "semver_gte", "value": "2.0.0"},
                                 {"attribute": "email", "op": "regex", "value": "@beta\\.example$"}],
     "then": "cohort", "cohort": "beta"},
]  # fmt: skip
PHASES = [
    {
        "kind": "rollout",
        "percent": None,
        "steps": [
            {"cohort": "internal", "percent": 100},
            {"cohort": "beta", "percent": 50},
            5,
            100,
        ],
        "min_duration_minutes": 0,
        "min_samples": 0,
    }
]
CASES: list[tuple[str, dict[str, Any]]] = [
    ("u1", {}),
    ("u2", {"tenant": "bank", "internal": True}),
    ("u3", {"tenant": "qa", "internal": True}),
    ("u4", {"internal": True}),
    ("u5", {"internal": "true"}),  # a string is not a boolean: no match
    ("u6", {"app": "2.1.0", "email": "a@beta.example"}),
    ("u7", {"app": "2.1.0-rc.1", "email": "a@beta.example"}),
    ("u8", {"app": 2, "email": "a@beta.example"}),
    ("qa-forced", {"tenant": "bank"}),
] + [
    (f"user-{i}", {"tenant": "shop", "app": "2.0.0", "email": f"{i}@beta.example"})
    for i in range(40)
]


def _post(client: Client, url: str, body: Any) -> Any:
    data = json.dumps(body) if not isinstance(body, bytes) else body
    return client.post(url, data, content_type="application/json")


@pytest.fixture
def targeted() -> None:
    started_plan("chat", phases=PHASES, advances=1)  # internal at 100 %, beta at 50 %
    plan_targeting.rules_replace(plan_key="chat", rules=RULES, actor=person())
    plan_targeting.override_set(
        plan_key="chat", unit="qa-forced", arm="candidate",
        expires_at=timezone.now() + timedelta(hours=1), actor=person(),
    )  # fmt: skip


def test_decide_ofrep_and_the_sdk_give_the_same_answer(
    api: Client, targeted: None, tmp_path: Path
) -> None:
    lkg = tmp_path / "lkg.json"
    lkg.write_text(json.dumps(build_snapshot()))
    with turnout.Client(f"http://127.0.0.1:{free_port()}", "k", lkg_path=lkg, start_wait=2, stream=False) as sdk:  # fmt: skip
        seen = set()
        for unit, attributes in CASES:
            local = sdk.decide("chat", unit, attributes=attributes)
            served = _post(
                api, "/api/v1/decide", {"plan": "chat", "unit": unit, "attributes": attributes}
            )
            assert served.status_code == 200, served.content
            body = served.json()
            ofrep = _post(
                api,
                "/ofrep/v1/evaluate/flags/chat",
                {"context": {"targetingKey": unit, **attributes}},
            )
            assert ofrep.status_code == 200, ofrep.content
            flag = ofrep.json()
            expected = (local.arm, local.reason, local.cohort)
            assert (body["arm"], body["reason"], body["cohort"]) == expected, unit
            value = flag["value"]
            assert (flag["variant"], value["reason"], value["cohort"]) == expected, unit
            # OFREP's closed list of reasons: Turnout's own are a targeting match, named
            if local.reason in ("EXCLUDED", "OVERRIDE"):
                assert flag["reason"] == "TARGETING_MATCH"
                assert flag["metadata"]["turnoutReason"] == local.reason
            else:
                assert flag["reason"] == local.reason
            seen.add(expected)
    assert {
        ("control", "EXCLUDED", None),
        ("candidate", "OVERRIDE", None),
        ("candidate", "SPLIT", "internal"),
        ("control", "SPLIT", None),
    } <= seen
    # beta at 50 %: both arms among the 40 beta users, all split as beta
    assert {("candidate", "SPLIT", "beta"), ("control", "SPLIT", "beta")} <= seen


def test_bulk_ofrep_reads_the_context_as_attributes(api: Client, targeted: None) -> None:
    bank = _post(
        api, "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "u", "tenant": "bank"}}
    )
    staff = _post(
        api, "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "u", "internal": True}}
    )
    (bank_flag,) = bank.json()["flags"]
    (staff_flag,) = staff.json()["flags"]
    assert (
        bank_flag["value"]["reason"] == "EXCLUDED" and staff_flag["value"]["cohort"] == "internal"
    )
    # the same unit with other attributes is another answer: another ETag, another decision id
    assert bank["ETag"] != staff["ETag"]
    assert bank_flag["metadata"]["decisionId"] != staff_flag["metadata"]["decisionId"]
    again = api.post(
        "/ofrep/v1/evaluate/flags",
        json.dumps({"context": {"targetingKey": "u", "tenant": "bank"}}),
        content_type="application/json",
        HTTP_IF_NONE_MATCH=bank["ETag"],
    )
    assert again.status_code == 304


BAD_ATTRIBUTES = [
    ({"tenant": {"id": "acme"}}, "attributes.tenant", "string, number, boolean or null"),
    ({"tags": ["a", "b"]}, "attributes.tags", "string, number, boolean or null"),
    ({f"a{i}": i for i in range(MAX_ATTRIBUTES + 1)}, "attributes", f"At most {MAX_ATTRIBUTES} attributes"),
    ({"k" * (MAX_ATTRIBUTE_KEY_LENGTH + 1): 1}, "attributes", "1 to 64 characters"),
    ({"": 1}, "attributes", "1 to 64 characters"),
]  # fmt: skip


@pytest.mark.parametrize(("attributes", "field", "words"), BAD_ATTRIBUTES)
def test_decide_refuses_attributes_it_cannot_evaluate_naming_the_field(
    api: Client, targeted: None, attributes: dict[str, Any], field: str, words: str
) -> None:
    response = _post(api, "/api/v1/decide", {"plan": "chat", "unit": "u", "attributes": attributes})
    assert response.status_code == 400, response.content
    payload = response.json()
    assert payload["code"] == "validation_failed"
    assert words in payload["details"]["fields"][field][0], payload


@pytest.mark.parametrize(("attributes", "field", "words"), BAD_ATTRIBUTES)
def test_ofrep_refuses_the_same_context_as_invalid(
    api: Client, targeted: None, attributes: dict[str, Any], field: str, words: str
) -> None:
    context = {"targetingKey": "u", **attributes}
    for url in ("/ofrep/v1/evaluate/flags/chat", "/ofrep/v1/evaluate/flags"):
        response = _post(api, url, {"context": context})
        assert response.status_code == 400, response.content
        body = response.json()
        assert body["errorCode"] == "INVALID_CONTEXT" and words in body["errorDetails"]
        assert ("context" + field.removeprefix("attributes")) in body["errorDetails"]


@pytest.mark.parametrize(("attributes", "field", "words"), BAD_ATTRIBUTES)
def test_the_sdk_matches_nothing_on_them_and_never_raises(
    targeted: None, tmp_path: Path, attributes: dict[str, Any], field: str, words: str
) -> None:
    lkg = tmp_path / "lkg.json"
    lkg.write_text(json.dumps(build_snapshot()))
    with turnout.Client(f"http://127.0.0.1:{free_port()}", "k", lkg_path=lkg, start_wait=2, stream=False) as sdk:  # fmt: skip
        # with "internal": True the unit would be in the internal cohort (100 %)
        decision = sdk.decide("chat", "u", attributes={**attributes, "internal": True})
        if field == "attributes" and "At most" in words:
            assert (decision.cohort, decision.reason) == (None, "SPLIT")  # too many: none read
        else:
            assert decision.cohort == "internal"  # the bad one matches nothing, the rest is read
