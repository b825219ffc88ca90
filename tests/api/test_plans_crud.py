"""The plans API: create, read, replace, patch and delete plans as documents, under the one plan
validation, the lifecycle's freeze, compare-and-set on the version, keys' scopes and plans."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from django.test import Client

from migrations_app.api.keys import apikey_create
from migrations_app.models import AlertChannel, AuditEvent, MigrationPlan
from tests.factories import make_plan, started_plan

pytestmark = pytest.mark.django_db

GPT = "openai:gpt-4o-2024-08-06"
SONNET = "anthropic:claude-sonnet-4-20250514"
HAIKU = "anthropic:claude-3-5-haiku-20241022"


def _client(scopes: list[str], plans: list[MigrationPlan] | None = None) -> Client:
    _, raw = apikey_create(name="ci-" + "-".join(scopes), scopes=scopes, plans=plans)
    return Client(HTTP_AUTHORIZATION=f"Bearer {raw}")


@pytest.fixture
def ci() -> Client:
    return _client(["plans"])


def document(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "key": "support-chat",
        "name": "Support chat: GPT-4o to Claude Sonnet 4",
        "control": {"model": GPT, "params": {"temperature": 0.2, "max_tokens": 1024}},
        "candidate": {"model": SONNET, "params": {"temperature": 0.2, "max_tokens": 1024}},
        "phases": [
            {"kind": "shadow", "percent": 10, "min_duration_minutes": 60, "min_samples": 500},
            {"kind": "rollout", "steps": [10, 50, 100]},
        ],
    }
    doc.update(overrides)
    return doc


def _put(client: Client, doc: dict[str, Any], key: str | None = None, query: str = "") -> Any:
    return client.put(
        f"/api/v1/plans/{key or doc['key']}{query}", doc, content_type="application/json"
    )


def test_create_read_and_list(ci: Client) -> None:
    response = ci.post("/api/v1/plans", document(), content_type="application/json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["created"] and body["changed"] and not body["dry_run"]
    spec = body["plan"]["spec"]
    assert spec["control"] == {
        "model": GPT,
        "params": {"temperature": 0.2, "max_tokens": 1024},
        "prompt_mode": "none",
        "prompt_text": "",
    }
    assert [p["kind"] for p in spec["phases"]] == ["shadow", "rollout"]
    assert spec["phases"][1]["min_samples"] == 1000  # a row's default
    # No guardrails given: the default guardrail set's.
    assert [g["metric"] for g in spec["guardrails"]] == [
        "error_rate",
        "latency_p95",
        "satisfaction",
        "cost_per_request",
    ]
    assert spec["alpha"] == 0.05 and spec["judge_model"] is None
    plan = MigrationPlan.objects.get(key="support-chat")
    event = AuditEvent.objects.get(plan=plan)
    assert (event.action, event.actor_kind, event.actor_label) == (
        "create",
        "api",
        "api key ci-plans",
    )
    read = ci.get("/api/v1/plans/support-chat").json()
    assert read["status"] == "draft" and read["spec"] == spec
    listed = ci.get("/api/v1/plans").json()["plans"]
    assert [p["key"] for p in listed] == ["support-chat"]
    assert listed[0]["status"] == "draft" and "spec" not in listed[0]


def test_a_template_and_a_guardrail_set_are_copied_into_the_plan(ci: Client) -> None:
    doc = document(template="careful", guardrail_set="standard")
    del doc["phases"]
    spec = ci.post("/api/v1/plans", doc, content_type="application/json").json()["plan"]["spec"]
    assert [p["kind"] for p in spec["phases"]] == ["shadow", "ab_split", "rollout"]
    assert spec["phases"][2]["steps"] == [5, 10, 25, 50, 100]
    assert spec["phases"][2]["auto_advance"] is False
    assert len(spec["guardrails"]) == 4  # the named set, not the template's (strict: 5)
    # Copied: a later edit of the template changes no plan.
    from migrations_app.models import PlanTemplate

    PlanTemplate.objects.filter(name="careful").update(phases=[{"kind": "shadow", "percent": 1}])
    assert ci.get("/api/v1/plans/support-chat").json()["spec"]["phases"] == spec["phases"]
    # The default guardrail set is removed by an empty list.
    bare = document(key="bare", guardrails=[])
    assert (
        ci.post("/api/v1/plans", bare, content_type="application/json").json()["plan"]["spec"][
            "guardrails"
        ]
        == []
    )


def test_put_writes_only_what_differs_and_twice_changes_nothing(ci: Client) -> None:
    assert _put(ci, document()).status_code == 201  # PUT creates a missing plan
    plan = MigrationPlan.objects.get(key="support-chat")
    changed = document(
        alpha=0.02,
        phases=[{"kind": "shadow", "percent": 20}, {"kind": "rollout", "steps": [10, 50, 100]}],
    )
    response = _put(ci, changed)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["changed"] and not body["created"]
    assert {c["path"] for c in body["changes"]} == {
        "phases[0].percent",
        "phases[0].min_duration_minutes",
        "phases[0].min_samples",
        "alpha",
    }
    assert body["plan"]["version"] == plan.version + 1
    edit = AuditEvent.objects.filter(plan=plan, action="edit").get()
    assert edit.actor_label == "api key ci-plans"
    assert set(edit.evidence["changed"]) == {c["path"] for c in body["changes"]}
    # The same document again: nothing written, no version, no audit event, and it says so.
    again = _put(ci, changed).json()
    assert (again["changed"], again["changes"], again["plan"]["version"]) == (
        False,
        [],
        plan.version + 1,
    )
    assert AuditEvent.objects.filter(plan=plan).count() == 2


def test_patch_merges_into_the_plans_document(ci: Client) -> None:
    make_plan("chat")
    before = ci.get("/api/v1/plans/chat").json()["spec"]
    patch = {"alpha": 0.02, "candidate": {"params": {"temperature": 0.7}}, "description": None}
    response = ci.patch("/api/v1/plans/chat", patch, content_type="application/json")
    assert response.status_code == 200, response.content
    after = response.json()["plan"]["spec"]
    assert after["alpha"] == 0.02
    assert after["candidate"]["params"] == {"temperature": 0.7}
    assert after["candidate"]["model"] == before["candidate"]["model"]
    assert after["phases"] == before["phases"] and after["guardrails"] == before["guardrails"]
    assert {c["path"] for c in response.json()["changes"]} == {
        "alpha",
        "candidate.params.temperature",
    }


def test_dry_run_says_what_would_change_and_writes_nothing(ci: Client) -> None:
    make_plan("chat")
    version = MigrationPlan.objects.get(key="chat").version
    response = ci.patch(
        "/api/v1/plans/chat?dry_run=true", {"alpha": 0.03}, content_type="application/json"
    )
    assert response.status_code == 200
    assert response.json()["changes"] == [{"path": "alpha", "from": 0.05, "to": 0.03}]
    assert MigrationPlan.objects.get(key="chat").version == version
    new = ci.post("/api/v1/plans?dry_run=1", document(), content_type="application/json")
    assert new.status_code == 200 and new.json()["created"] and new.json()["plan"] is None
    assert not MigrationPlan.objects.filter(key="support-chat").exists()


def test_delete_a_draft_but_never_a_plan_that_ran(ci: Client) -> None:
    make_plan("draft")
    started_plan("live")
    assert ci.delete("/api/v1/plans/draft").status_code == 204
    assert not MigrationPlan.objects.filter(key="draft").exists()
    refused = ci.delete("/api/v1/plans/live")
    assert (refused.status_code, refused.json()["code"]) == (409, "illegal_transition")
    assert MigrationPlan.objects.filter(key="live").exists()
    assert ci.delete("/api/v1/plans/draft").json()["code"] == "plan_not_found"


def test_routing_fields_are_frozen_while_a_run_is_live(ci: Client) -> None:
    plan = started_plan("live")
    spec = ci.get("/api/v1/plans/live").json()["spec"]
    moved = copy.deepcopy(spec)
    moved["candidate"]["params"]["temperature"] = 0.9
    moved["phases"][1]["min_samples"] = 3000
    moved["alpha"] = 0.01
    response = _put(ci, moved)
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "illegal_transition"
    assert set(body["details"]["fields"]) == {
        "candidate.params.temperature",
        "phases[1].min_samples",
        "alpha",  # what the run's tests may spend is frozen with them
    }
    assert "frozen" in body["details"]["fields"]["phases[1].min_samples"][0].lower()
    after = MigrationPlan.objects.get(pk=plan.pk)
    assert (after.version, after.alpha) == (plan.version, plan.alpha)
    # What neither routes nor sets the statistics may change while it runs.
    settings_only = copy.deepcopy(spec)
    settings_only["escalate_after_minutes"] = 45
    assert _put(ci, settings_only).status_code == 200
    assert MigrationPlan.objects.get(pk=plan.pk).escalate_after_minutes == 45


def test_expected_version_is_compare_and_set(ci: Client) -> None:
    plan = make_plan("chat")
    stale = {"alpha": 0.03, "expected_version": plan.version + 5}
    response = ci.patch("/api/v1/plans/chat", stale, content_type="application/json")
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "version_conflict"
    assert (body["details"]["version"], body["details"]["expected_version"]) == (
        plan.version,
        plan.version + 5,
    )
    fresh = {"alpha": 0.03, "expected_version": plan.version}
    assert ci.patch("/api/v1/plans/chat", fresh, content_type="application/json").status_code == 200
    assert ci.delete(f"/api/v1/plans/chat?expected_version={plan.version}").status_code == 409
    assert MigrationPlan.objects.filter(key="chat").exists()


def test_scopes_and_a_keys_plans() -> None:
    mine = make_plan("mine")
    make_plan("theirs")
    for scopes in (["decide"], ["report"], ["decide", "report"]):
        client = _client(scopes)
        assert client.get("/api/v1/plans").status_code == 403
        assert (
            client.post("/api/v1/plans", document(), content_type="application/json").status_code
            == 403
        )
    oncall = _client(["admin"])  # reads, does not write
    assert oncall.get("/api/v1/plans/mine").status_code == 200
    response = oncall.patch("/api/v1/plans/mine", {"alpha": 0.02}, content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (403, "forbidden")
    limited = _client(["plans"], plans=[mine])
    assert [p["key"] for p in limited.get("/api/v1/plans").json()["plans"]] == ["mine"]
    assert limited.get("/api/v1/plans/theirs").status_code == 404
    assert (
        limited.patch(
            "/api/v1/plans/theirs", {"alpha": 0.02}, content_type="application/json"
        ).status_code
        == 404
    )
    assert limited.delete("/api/v1/plans/theirs").status_code == 404
    assert (
        limited.patch(
            "/api/v1/plans/mine", {"alpha": 0.02}, content_type="application/json"
        ).status_code
        == 200
    )
    created = limited.post("/api/v1/plans", document(), content_type="application/json")
    assert (created.status_code, created.json()["code"]) == (403, "forbidden")
    assert _put(limited, document()).status_code == 403
    assert not MigrationPlan.objects.filter(key="support-chat").exists()
    assert Client().get("/api/v1/plans").status_code == 401


def test_alert_channels_by_name_never_their_secrets(ci: Client) -> None:
    AlertChannel.objects.create(
        name="oncall", kind="webhook", url_env="ONCALL_URL", secret_env="ONCALL_SECRET"
    )
    spec = ci.post(
        "/api/v1/plans", document(alert_channels=["oncall"]), content_type="application/json"
    ).json()["plan"]["spec"]
    assert spec["alert_channels"] == ["oncall"]
    assert "ONCALL" not in str(spec)
    channels = ci.get("/api/v1/alert-channels").json()["alert_channels"]
    assert channels == [{"name": "oncall", "kind": "webhook", "enabled": True}]


BAD: list[tuple[dict[str, Any], dict[str, str]]] = [
    # shape: the serializer
    ({"typo": 1}, {"typo": "Unknown field"}),
    ({"control": {"model": GPT, "temprature": 0.2}}, {"control.temprature": "Unknown field"}),
    (
        {"phases": [{"kind": "rollout", "steps": [5, "x"]}]},
        {"phases[0].steps[1]": "a candidate percentage above 0"},
    ),
    ({"phases": [{"kind": "canary"}]}, {"phases[0].kind": "not a valid choice"}),
    ({"alpha": "high"}, {"alpha": "valid number"}),
    ({"alpha": 0.5}, {"alpha": "less than or equal to 0.2"}),
    ({"key": "Not A Key!"}, {"key": "Lowercase letters"}),
    ({"control": {"model": "gpt-4o"}}, {"control.model": "does not match"}),
    ({"phases": "shadow"}, {"phases": "list"}),
    ({"name": ""}, {"name": "blank"}),
    # meaning: the plan validation (the admin's)
    ({"candidate": {"model": "openai:gpt-9"}}, {"candidate.model": "not in the model catalog"}),
    (
        {"candidate": {"model": GPT, "params": {"temperature": 0.2, "max_tokens": 1024}}},
        {"candidate.model": "The candidate must differ from the control"},
    ),
    (
        {"control": {"model": GPT, "params": {"temperature": 7}}},
        {"control.params": "temperature must be"},
    ),
    (
        {"candidate": {"model": HAIKU, "params": {"max_tokens": 9000}}},
        {"candidate.params": "exceeds the model's maximum output of 8192"},
    ),
    (
        {"candidate": {"model": SONNET, "prompt_mode": "suffix"}},
        {"candidate.prompt_text": "needs its text"},
    ),
    ({"phases": []}, {"phases": "Add at least one phase."}),
    (
        {"phases": [{"kind": "rollout", "steps": [5, 50, 25]}]},
        {"phases[0].steps[2]": "strictly increasing"},
    ),
    (
        {"phases": [{"kind": "rollout", "steps": [5, 150]}]},
        {"phases[0].steps[1]": "above 0 and at most 100"},
    ),
    ({"phases": [{"kind": "ab_split", "percent": 100}]}, {"phases[0].percent": "use a rollout"}),
    ({"phases": [{"kind": "shadow"}]}, {"phases[0].percent": "shadow sample rate"}),
    (
        {"phases": [{"kind": "ab_split", "percent": 25}, {"kind": "rollout", "steps": [5, 100]}]},
        {"phases": "Phase 2 (rollout) starts at 5 %"},
    ),
    (
        {"guardrails": [{"metric": "latency_p95", "tolerance_kind": "relative", "tolerance": 0.8}]},
        {"guardrails[0].tolerance": "A relative tolerance is a ratio above 1"},
    ),
    (
        {
            "guardrails": [
                {"metric": "satisfaction", "tolerance_kind": "relative", "tolerance": 1.2}
            ]
        },
        {"guardrails[0].tolerance_kind": "Satisfaction tolerances are absolute"},
    ),
    (
        {
            "guardrails": [{"metric": "error_rate", "tolerance_kind": "relative", "tolerance": 1.5}]
            * 2
        },
        {"guardrails[1].metric": "One guardrail per metric."},
    ),
    ({"redaction_patterns": ["(unclosed"]}, {"redaction_patterns[0]": "missing ): (unclosed"}),
    ({"redaction_patterns": ["(?<=a)b"]}, {"redaction_patterns[0]": "RE2 cannot compile it"}),
    ({"redaction_patterns": ["x" * 257]}, {"redaction_patterns[0]": "over the limit of 256"}),
    ({"alert_channels": ["nowhere"]}, {"alert_channels[0]": "No alert channel named 'nowhere'"}),
    ({"judge_model": "openai:gpt-9"}, {"judge_model": "not in the model catalog"}),
    ({"template": "nope"}, {"template": "No template named 'nope'"}),
    ({"guardrail_set": "nope"}, {"guardrail_set": "No guardrail set named 'nope'"}),
    ({"circuit_breaker_error_rate": 2}, {"circuit_breaker_error_rate": "less than or equal to 1"}),
    (
        {"control": {"model": GPT, "prompt_mode": "prepend"}},
        {"control.prompt_mode": "not a valid choice"},
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD)
def test_every_invalid_plan_is_refused_naming_its_fields(
    ci: Client, overrides: dict[str, Any], expected: dict[str, str]
) -> None:
    make_plan("existing")
    doc = document(**overrides)
    for method, path in (
        ("post", "/api/v1/plans"),
        ("put", f"/api/v1/plans/{doc.get('key', 'x')}"),
    ):
        response = getattr(ci, method)(path, doc, content_type="application/json")
        assert response.status_code == 400, (method, response.content)
        body = response.json()
        assert body["code"] == "validation_failed"
        fields = body["details"]["fields"]
        for path_, fragment in expected.items():
            assert path_ in fields, (method, fields)
            assert any(fragment in m for m in fields[path_]), (method, fields[path_])
    assert list(MigrationPlan.objects.values_list("key", flat=True)) == ["existing"]
    assert AuditEvent.objects.count() == 1


def test_a_body_that_is_not_an_object_and_a_key_that_is_not_the_urls(ci: Client) -> None:
    for body in ("[]", '"plan"', "3"):  # JSON, but not an object
        response = ci.post("/api/v1/plans", body, content_type="application/json")
        assert (response.status_code, response.json()["code"]) == (400, "validation_failed")
    other = _put(ci, document(), key="other-key")
    assert other.status_code == 400 and "key" in other.json()["details"]["fields"]
    bad_flag = ci.post("/api/v1/plans?dry_run=maybe", document(), content_type="application/json")
    assert bad_flag.json()["details"]["fields"] == {"dry_run": ["true or false."]}
    assert not MigrationPlan.objects.exists()
