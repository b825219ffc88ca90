"""The snapshot, /decide and OFREP endpoints: the contract, the conformance vectors through the
server, and a clear 4xx for every kind of bad input."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from django.test import Client, override_settings
from turnout import routing
from turnout.conformance import load_vectors

from migrations_app.api.keys import apikey_create
from migrations_app.models import MigrationPlan
from migrations_app.plans import lifecycle
from migrations_app.routing.snapshots import plan_entry
from tests.factories import make_plan, person, started_plan

# Real commits: routing changes are published on commit, as in production.
pytestmark = pytest.mark.django_db(transaction=True)


def _post(client: Client, url: str, body: Any, **extra: Any) -> Any:
    return client.post(
        url,
        json.dumps(body) if not isinstance(body, bytes) else body,
        content_type="application/json",
        **extra,
    )


def test_config_serves_the_contract_with_etag_and_304(api: Client) -> None:
    started_plan("chat", advances=1)
    response = api.get("/api/v1/sdk/config")
    assert response.status_code == 200
    data = response.json()
    etag = response["ETag"]
    assert etag == f'"{data["version"]}"'
    (entry,) = data["plans"]
    assert entry["key"] == "chat" and entry["status"] == "running" and entry["phase"] == "ab_split"
    assert (entry["weight_bp"], entry["shadow_bp"]) == (1000, 0)
    assert entry["candidate"] == {
        "provider": "anthropic",
        "kind": "anthropic",
        "base_url": "",
        "api_key_env": "ANTHROPIC_API_KEY",
        "model": "claude-sonnet-4-20250514",
        "params": {"temperature": 0.2},
        "prompt": {"mode": "none", "text": ""},
        "context_window": 200_000,
    }
    assert entry["fallback_to_control"] is True
    assert api.get("/api/v1/sdk/config", HTTP_IF_NONE_MATCH=etag).status_code == 304
    lifecycle.plan_advance(plan_key="chat", actor=person())
    changed = api.get("/api/v1/sdk/config", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag
    assert (
        changed.json()["plans"][0]["weight_bp"] == 1000
    )  # the rollout starts at the split's share


def test_decide_matches_local_routing(api: Client) -> None:
    plan = started_plan("chat", advances=3)  # rollout 25 %
    snapshot = routing.parse_snapshot({"schema": 1, "version": "x", "plans": [plan_entry(plan)]})
    arms = []
    for unit in (f"user-{i}" for i in range(300)):
        body = _post(api, "/api/v1/decide", {"plan": "chat", "unit": unit}).json()
        local = routing.decide(snapshot.plans["chat"], unit, decision_id="d")
        assert (body["arm"], body["shadow"], body["model"]) == (
            local.arm,
            local.shadow,
            local.model,
        )
        arms.append(body["arm"])
    assert 0.15 < arms.count("candidate") / len(arms) < 0.35


def test_conformance_vectors_through_the_server(api: Client, sdk_key: str) -> None:
    """Every vector's plan is put in the database as the snapshot says, then asked of /decide."""
    vectors = load_vectors()
    by_plan: dict[str, list[dict[str, Any]]] = {}
    for vector in vectors:
        by_plan.setdefault(json.dumps(vector["plan"], sort_keys=True), []).append(vector)
    checked = 0
    for group in by_plan.values():
        spec = group[0]["plan"]
        if spec is None:
            continue
        served = routing.parse_snapshot({"schema": 1, "version": "v", "plans": [spec]})
        for vector in group:
            local = routing.decide(served.plans[spec["key"]], vector["unit"], decision_id="d")
            assert (local.arm, local.shadow, local.reason) == (
                vector["expected"]["arm"],
                vector["expected"]["shadow"],
                vector["expected"]["reason"],
            )
            checked += 1
    assert checked >= 200


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"unit": "u1"}, 400, "validation_failed", "plan"),
        ({"plan": "chat"}, 400, "validation_failed", "unit"),
        ({"plan": "chat", "unit": ""}, 400, "validation_failed", "unit"),
        ({"plan": "chat", "unit": 12}, 200, None, None),  # a number is a valid unit id, as a string
        ({"plan": ["chat"], "unit": "u1"}, 400, "validation_failed", "plan"),
        ({"plan": "chat", "unit": "u" * 257}, 400, "validation_failed", "unit"),
        (
            {"plan": "chat", "unit": "u1", "attributes": "vip"},
            400,
            "validation_failed",
            "attributes",
        ),
        (
            {"plan": "chat", "unit": "u1", "attributes": {"blob": "x" * 5000}},
            400,
            "validation_failed",
            "attributes",
        ),
        ({"plan": "nope", "unit": "u1"}, 404, "plan_not_found", "plan"),
        ([1, 2], 400, "parse_error", None),
    ],
)
def test_decide_bad_input(
    api: Client, body: Any, status: int, code: str | None, field: str | None
) -> None:
    started_plan("chat")
    response = _post(api, "/api/v1/decide", body)
    assert response.status_code == status, response.content
    if code is None:
        return
    payload = response.json()
    assert payload["code"] == code and payload["message"]
    if field and code == "validation_failed":
        assert field in payload["details"]["fields"]
    elif field:
        assert payload["details"]["field"] == field


def test_malformed_json_is_a_parse_error(api: Client) -> None:
    response = _post(api, "/api/v1/decide", b"{not json")
    assert response.status_code == 400 and response.json()["code"] == "parse_error"


@pytest.mark.parametrize("depth", [5_000, 1_000])
def test_deeply_nested_json_is_a_400_in_each_protocols_error_body(api: Client, depth: int) -> None:
    """Nesting past the parsers' limits raised RecursionError (a 500): orjson refuses past
    1,024 levels and Python's parser then overflows its stack; under that, orjson reads it
    and the attributes' size check (json.dumps) overflowed. Now a body nested deeper than
    MAX_JSON_DEPTH is refused before anything walks it."""
    started_plan("chat")
    deep = b"[" * depth + b"]" * depth
    decide = _post(
        api, "/api/v1/decide", b'{"plan": "chat", "unit": "u", "attributes": {"a": %s}}' % deep
    )
    assert decide.status_code == 400, decide.content[:200]
    assert decide.json()["code"] == "parse_error" and decide.json()["message"]
    body = b'{"context": {"targetingKey": "u", "deep": %s}}' % deep
    single = _post(api, "/ofrep/v1/evaluate/flags/chat", body)
    assert single.status_code == 400, single.content[:200]
    assert single.json()["key"] == "chat"
    assert single.json()["errorCode"] in ("PARSE_ERROR", "INVALID_CONTEXT")
    bulk = _post(api, "/ofrep/v1/evaluate/flags", body)
    assert bulk.status_code == 400, bulk.content[:200]
    assert bulk.json()["errorCode"] in ("PARSE_ERROR", "INVALID_CONTEXT")
    # Nesting within the limit is an ordinary body: read, and refused as an attribute that
    # is not a JSON scalar (what the plan's rules read), naming it.
    shallow = _post(
        api, "/ofrep/v1/evaluate/flags/chat", b'{"context": {"targetingKey": "u", "deep": [[[1]]]}}'
    )
    assert shallow.status_code == 400 and shallow.json()["errorCode"] == "INVALID_CONTEXT"
    assert "context.deep" in shallow.json()["errorDetails"]
    flat = b'{"context": {"targetingKey": "u", "deep": "1"}}'
    assert _post(api, "/ofrep/v1/evaluate/flags/chat", flat).status_code == 200


def test_deep_nesting_through_drfs_parser_is_a_400(transactional_db: None) -> None:
    """The API's DRF views (plan actions) parse with DRF's JSONParser, which caught only
    ValueError: RecursionError went through as a 500."""
    make_plan("chat")
    admin = apikey_create(name="ops", scopes=["admin"])[1]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {admin}")
    for depth in (5_000, 100):
        deep = b'{"reason": "x", "more": %s}' % (b"[" * depth + b"]" * depth)
        response = _post(client, "/api/v1/plans/chat/pause", deep)
        assert response.status_code == 400, response.content[:200]
        assert response.json()["code"] == "parse_error"
    assert MigrationPlan.objects.get(key="chat").status == "draft"


def test_auth_errors(transactional_db: None) -> None:
    started_plan("chat")
    anonymous = Client()
    response = _post(anonymous, "/api/v1/decide", {"plan": "chat", "unit": "u"})
    assert response.status_code == 401 and response.json()["code"] == "unauthenticated"
    bad = Client(HTTP_AUTHORIZATION="Bearer tk_deadbeef_nope")
    assert _post(bad, "/api/v1/decide", {"plan": "chat", "unit": "u"}).status_code == 401
    report_only = apikey_create(name="reporter", scopes=["report"])[1]
    forbidden = _post(
        Client(HTTP_X_API_KEY=report_only), "/api/v1/decide", {"plan": "chat", "unit": "u"}
    )
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"
    assert Client(HTTP_X_API_KEY=report_only).get("/api/v1/sdk/config").status_code == 403


def test_a_key_scoped_to_plans_sees_only_those(transactional_db: None) -> None:
    chat = started_plan("chat")
    started_plan("search")
    key = apikey_create(name="chat-only", scopes=["decide"], plans=[chat])[1]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert [p["key"] for p in client.get("/api/v1/sdk/config").json()["plans"]] == ["chat"]
    assert _post(client, "/api/v1/decide", {"plan": "search", "unit": "u"}).status_code == 404


@override_settings(TURNOUT_RATE_LIMIT_PER_KEY=3)
def test_rate_limit_gives_429_with_integer_retry_after(api: Client) -> None:
    started_plan("chat")
    statuses = [_post(api, "/api/v1/decide", {"plan": "chat", "unit": "u"}) for _ in range(6)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert limited[0]["Retry-After"].isdigit()
    assert limited[0].json()["code"] == "rate_limited"
    ofrep = _post(api, "/ofrep/v1/evaluate/flags/chat", {"context": {"targetingKey": "u"}})
    assert ofrep.status_code == 429 and ofrep["Retry-After"].isdigit()


def test_ofrep_single_flag(api: Client) -> None:
    started_plan("chat", advances=1)
    response = _post(
        api, "/ofrep/v1/evaluate/flags/chat", {"context": {"targetingKey": "user-1", "plan": "pro"}}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["key"] == "chat" and body["reason"] == "SPLIT"
    assert body["variant"] in ("control", "candidate") and body["value"]["arm"] == body["variant"]
    assert all(isinstance(v, str | int | float | bool) for v in body["metadata"].values())
    assert body["metadata"]["phase"] == "ab_split"


@pytest.mark.parametrize(
    ("url", "body", "status", "error"),
    [
        ("/ofrep/v1/evaluate/flags/chat", {"context": {}}, 400, "TARGETING_KEY_MISSING"),
        ("/ofrep/v1/evaluate/flags/chat", {}, 400, "TARGETING_KEY_MISSING"),
        ("/ofrep/v1/evaluate/flags/chat", {"context": "u1"}, 400, "INVALID_CONTEXT"),
        ("/ofrep/v1/evaluate/flags/chat", {"context": {"targetingKey": 7}}, 400, "INVALID_CONTEXT"),
        # A unit no outcome could be reported for (ingest refuses NUL and lone surrogates, as
        # PostgreSQL text cannot hold them): refused as /decide refuses it.
        (
            "/ofrep/v1/evaluate/flags/chat",
            b'{"context": {"targetingKey": "a\\u0000b"}}',
            400,
            "INVALID_CONTEXT",
        ),
        (
            "/ofrep/v1/evaluate/flags",
            b'{"context": {"targetingKey": "\\ud800"}}',
            400,
            "INVALID_CONTEXT",
        ),
        ("/ofrep/v1/evaluate/flags/chat", b"{oops", 400, "PARSE_ERROR"),
        ("/ofrep/v1/evaluate/flags/chat", [1], 400, "PARSE_ERROR"),
        (
            "/ofrep/v1/evaluate/flags/missing",
            {"context": {"targetingKey": "u"}},
            404,
            "FLAG_NOT_FOUND",
        ),
        ("/ofrep/v1/evaluate/flags", {"context": {}}, 400, "TARGETING_KEY_MISSING"),
    ],
)
def test_ofrep_errors(api: Client, url: str, body: Any, status: int, error: str) -> None:
    started_plan("chat")
    response = _post(api, url, body)
    assert response.status_code == status
    payload = response.json()
    assert payload["errorCode"] == error and payload["errorDetails"]


def test_ofrep_auth_has_no_body(transactional_db: None) -> None:
    started_plan("chat")
    response = _post(Client(), "/ofrep/v1/evaluate/flags/chat", {"context": {"targetingKey": "u"}})
    assert response.status_code == 401 and response.content == b""
    reporter = apikey_create(name="r", scopes=["report"])[1]
    response = _post(
        Client(HTTP_X_API_KEY=reporter),
        "/ofrep/v1/evaluate/flags/chat",
        {"context": {"targetingKey": "u"}},
    )
    assert response.status_code == 403 and response.content == b""


def test_ofrep_bulk_with_etag(api: Client) -> None:
    started_plan("chat")
    started_plan("search", advances=2)
    response = _post(api, "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "user-9"}})
    assert response.status_code == 200
    flags = {f["key"]: f for f in response.json()["flags"]}
    assert set(flags) == {"chat", "search"} and flags["chat"]["reason"] == "SPLIT"
    etag = response["ETag"]
    again = _post(
        api,
        "/ofrep/v1/evaluate/flags",
        {"context": {"targetingKey": "user-9"}},
        HTTP_IF_NONE_MATCH=etag,
    )
    assert again.status_code == 304 and again.content == b""
    other_unit = _post(
        api,
        "/ofrep/v1/evaluate/flags",
        {"context": {"targetingKey": "user-10"}},
        HTTP_IF_NONE_MATCH=etag,
    )
    assert other_unit.status_code == 200
    # A cached answer stays self-consistent: the same ids for the same snapshot and unit.
    ids = {f["key"]: f["metadata"]["decisionId"] for f in response.json()["flags"]}
    repeat = _post(api, "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "user-9"}})
    assert {f["key"]: f["metadata"]["decisionId"] for f in repeat.json()["flags"]} == ids
    # But one id tells nothing of another (feedback names an answer by its id): they were a
    # public hash of the snapshot version and the unit, and a counter.
    chat, search = ids["chat"], ids["search"]
    assert len(chat) == len(search) == 32 and chat[:8] != search[:8]
    version = response.json()["metadata"]["version"]
    public = hashlib.sha256(f"{version}\x00user-9".encode()).hexdigest()
    assert public[:16] not in chat


def test_statuses_route_as_the_contract_says(api: Client) -> None:
    make_plan("draft-plan")
    started_plan("paused-plan")
    lifecycle.plan_pause(plan_key="paused-plan", actor=person())
    started_plan("done-plan")
    lifecycle.plan_complete(plan_key="done-plan", actor=person())
    started_plan("back-plan")
    lifecycle.plan_rollback(plan_key="back-plan", actor=person(), reason="bad")
    expected = {
        "draft-plan": ("control", "DISABLED"),
        "paused-plan": ("control", "DISABLED"),
        "done-plan": ("candidate", "STATIC"),
        "back-plan": ("control", "DISABLED"),
    }
    for key, (arm, reason) in expected.items():
        body = _post(api, "/api/v1/decide", {"plan": key, "unit": "someone"}).json()
        assert (body["arm"], body["reason"]) == (arm, reason), key
