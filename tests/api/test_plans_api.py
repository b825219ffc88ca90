"""On-call's API and CLI: status and lifecycle actions with an admin key and a reason."""

from __future__ import annotations

import io

import pytest
from django.test import Client
from turnout import cli

from migrations_app.api.keys import apikey_create
from migrations_app.models import AuditEvent, MigrationPlan
from migrations_app.plans import lifecycle
from tests.factories import make_plan, person, started_plan


@pytest.fixture
def admin_key(transactional_db: None) -> str:
    return apikey_create(name="oncall", scopes=["admin"])[1]


@pytest.fixture
def admin(admin_key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {admin_key}")


def test_rollback_with_a_reason_is_audited_as_the_key(admin: Client) -> None:
    plan = started_plan("chat")
    response = admin.post(
        "/api/v1/plans/chat/rollback",
        {"reason": "p95 doubled", "expected_version": plan.version},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "rolled_back"
    event = AuditEvent.objects.get(plan=plan, action="rollback")
    assert (event.actor_kind, event.actor_label, event.reason) == (
        "api",
        "api key oncall",
        "p95 doubled",
    )


def test_status_says_where_the_plan_is(admin: Client) -> None:
    started_plan("chat")
    body = admin.get("/api/v1/plans/chat").json()
    assert body["status"] == "running"
    assert body["phase"] == "shadow" and body["shadow_bp"] == 1000
    assert body["latest_evaluation"] is None


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/api/v1/plans/chat/rollback", {}, 400, "validation_failed"),
        ("/api/v1/plans/chat/rollback", {"reason": "  "}, 400, "validation_failed"),
        ("/api/v1/plans/chat/rollback", ["reason"], 400, "validation_failed"),
        ("/api/v1/plans/chat/pause", {"reason": "x", "expected_version": "two"}, 400, "validation_failed"),
        ("/api/v1/plans/chat/pause", {"reason": "x", "expected_version": 1}, 409, "version_conflict"),
        ("/api/v1/plans/chat/resume", {"reason": "x"}, 409, "illegal_transition"),
        ("/api/v1/plans/chat/explode", {"reason": "x"}, 404, "unknown_action"),
        ("/api/v1/plans/nope/pause", {"reason": "x"}, 404, "plan_not_found"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_code_and_change_nothing(
    admin: Client, path: str, body: object, status: int, code: str
) -> None:
    plan = started_plan("chat")
    response = admin.post(path, body, content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (status, code)
    after = MigrationPlan.objects.get(pk=plan.pk)
    assert (after.status, after.version) == (plan.status, plan.version)


def test_keys_without_the_admin_scope_or_the_plan_are_refused(sdk_key: str) -> None:
    started_plan("chat")
    other = started_plan("other")
    decide = Client(HTTP_AUTHORIZATION=f"Bearer {sdk_key}")
    assert (
        decide.post(
            "/api/v1/plans/chat/pause", {"reason": "x"}, content_type="application/json"
        ).status_code
        == 403
    )
    assert Client().get("/api/v1/plans/chat").status_code == 401
    restricted = apikey_create(name="team", scopes=["admin"], plans=[other])[1]
    team = Client(HTTP_AUTHORIZATION=f"Bearer {restricted}")
    assert team.get("/api/v1/plans/chat").json()["code"] == "plan_not_found"
    assert team.get("/api/v1/plans/other").status_code == 200


@pytest.mark.live
def test_the_cli_against_a_live_server(live_server_process: str, admin_key: str) -> None:
    started_plan("chat")
    base = ["--url", live_server_process, "--api-key", admin_key]
    out, err = io.StringIO(), io.StringIO()
    assert cli.main([*base, "status", "chat"], out, err) == 0
    assert "chat (Test plan): running" in out.getvalue()

    assert cli.main([*base, "pause", "chat", "--reason", "investigating"], out, err) == 0
    assert MigrationPlan.objects.get(key="chat").status == "paused"
    assert (
        cli.main(
            [*base, "resume", "chat", "--reason", "false alarm", "--expected-version", "1"],
            out,
            err,
        )
        == 1
    )
    assert "version_conflict" in err.getvalue()
    assert cli.main([*base, "rollback", "chat", "--reason", "bad answers"], out, err) == 0
    assert MigrationPlan.objects.get(key="chat").status == "rolled_back"
    assert (
        cli.main(["--url", "http://127.0.0.1:9", "--api-key", "x", "status", "chat"], out, err) == 3
    )


def test_start_answers_409_with_the_warnings_until_they_are_acknowledged(admin: Client) -> None:
    plan = make_plan("fresh")
    refused = admin.post(
        "/api/v1/plans/fresh/start", {"reason": "go"}, content_type="application/json"
    )
    assert refused.status_code == 409
    body = refused.json()
    assert body["code"] == "start_warnings"
    codes = body["details"]["acknowledge"]
    assert "no_alert_channel" in codes and "no_api_key" in codes
    assert {w["code"] for w in body["details"]["warnings"]} == set(codes)
    assert all(w["message"] for w in body["details"]["warnings"])
    assert MigrationPlan.objects.get(pk=plan.pk).status == "draft"
    partial = admin.post(
        "/api/v1/plans/fresh/start",
        {"reason": "go", "acknowledge": codes[:1]},
        content_type="application/json",
    )
    assert partial.status_code == 409 and partial.json()["code"] == "start_warnings"
    started = admin.post(
        "/api/v1/plans/fresh/start",
        {"reason": "go", "acknowledge": codes, "expected_version": plan.version},
        content_type="application/json",
    )
    assert started.status_code == 200, started.content
    assert started.json()["status"] == "running" and started.json()["run"] == 1
    event = AuditEvent.objects.get(plan=plan, action="start")
    assert (event.actor_kind, event.evidence["acknowledged"]) == ("api", codes)


def test_start_refuses_an_impossible_plan_and_a_restart_by_a_key(admin: Client) -> None:
    from migrations_app.models import PlanPhase

    plan = make_plan("backwards")
    PlanPhase.objects.filter(plan=plan, kind="ab_split").update(percent=50.0)
    response = admin.post(
        "/api/v1/plans/backwards/start",
        {"reason": "go", "acknowledge": ["no_alert_channel"]},
        content_type="application/json",
    )
    assert (response.status_code, response.json()["code"]) == (409, "plan_not_startable")
    (problem,) = response.json()["details"]["problems"]
    assert problem["code"] == "candidate_share_drops" and "Phase 3 (rollout)" in problem["message"]
    rolled = started_plan("rolled")
    lifecycle.plan_rollback(plan_key=rolled.key, actor=person(), reason="bad")
    again = admin.post(
        "/api/v1/plans/rolled/start", {"reason": "retry", "acknowledge": []},
        content_type="application/json",
    )  # fmt: skip
    assert (again.status_code, again.json()["code"]) == (409, "person_required")
    assert MigrationPlan.objects.get(pk=rolled.pk).status == "rolled_back"


@pytest.mark.parametrize(
    "body",
    [
        {"reason": "go", "acknowledge": "no_api_key"},
        {"reason": "go", "acknowledge": [1, 2]},
        {"reason": "go", "acknowledge": ["x" * 65]},
        {"reason": "go", "acknowledge": ["no_api_key"] * 51},
    ],
)
def test_start_with_a_bad_acknowledge_is_a_400(admin: Client, body: object) -> None:
    plan = make_plan("fresh")
    response = admin.post("/api/v1/plans/fresh/start", body, content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (400, "validation_failed")
    assert "acknowledge" in response.json()["details"]["fields"]
    assert MigrationPlan.objects.get(pk=plan.pk).status == "draft"
