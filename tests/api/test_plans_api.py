"""On-call's API and CLI: status and lifecycle actions with an admin key and a reason."""

from __future__ import annotations

import io

import pytest
from django.test import Client
from turnout import cli

from migrations_app import plans
from migrations_app.apikeys import apikey_create
from migrations_app.models import AuditEvent, MigrationPlan
from tests.factories import make_plan, person


@pytest.fixture
def admin_key(transactional_db: None) -> str:
    return apikey_create(name="oncall", scopes=["admin"])[1]


@pytest.fixture
def admin(admin_key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {admin_key}")


def running(key: str) -> MigrationPlan:
    plan = make_plan(key)
    plans.plan_start(plan_key=key, actor=person())
    return MigrationPlan.objects.get(pk=plan.pk)


def test_rollback_with_a_reason_is_audited_as_the_key(admin: Client) -> None:
    plan = running("chat")
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
    running("chat")
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
    plan = running("chat")
    response = admin.post(path, body, content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (status, code)
    after = MigrationPlan.objects.get(pk=plan.pk)
    assert (after.status, after.version) == (plan.status, plan.version)


def test_keys_without_the_admin_scope_or_the_plan_are_refused(sdk_key: str) -> None:
    running("chat")
    other = running("other")
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


def test_the_cli_against_a_live_server(live_server_process: str, admin_key: str) -> None:
    running("chat")
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
