"""The admin: a plan is created with the standard playbook, validated, and moved through its
lifecycle by the services, with the audit trail on its page."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from migrations_app.models import ApiKey, AuditEvent, MigrationPlan, ModelSpec
from migrations_app.plans.start_checks import start_checks
from tests.factories import formset, make_plan, make_user

pytestmark = pytest.mark.django_db


def _plan_post(**overrides: Any) -> dict[str, Any]:
    gpt = ModelSpec.objects.get(model_id="gpt-4o-2024-08-06")
    sonnet = ModelSpec.objects.get(model_id="claude-sonnet-4-20250514")
    data: dict[str, Any] = {
        "key": "checkout-bot",
        "name": "Checkout bot",
        "description": "",
        "control_model": gpt.pk,
        "control_params": '{"temperature": 0.2}',
        "control_prompt_mode": "none",
        "control_prompt_text": "",
        "candidate_model": sonnet.pk,
        "candidate_params": '{"temperature": 0.2}',
        "candidate_prompt_mode": "suffix",
        "candidate_prompt_text": "Be brief.",
        "alpha": "0.05",
        "circuit_breaker_error_rate": "0.2",
        "circuit_breaker_min_requests": "50",
        "escalate_after_minutes": "10",
        "shadow_budget_usd_per_day": "25.00",
        "shadow_retention_days": "14",
        "redaction_patterns": '["order-\\\\d+"]',
        "fallback_to_control": "on",
    }
    data.update(overrides.pop("plan", {}))
    phases = overrides.pop(
        "phases",
        [
            {
                "order": 0,
                "kind": "shadow",
                "percent": "10",
                "steps": "[]",
                "min_duration_minutes": 60,
                "min_samples": 500,
                "auto_advance": "on",
            },
            {
                "order": 1,
                "kind": "rollout",
                "percent": "",
                "steps": "[5, 25, 50, 100]",
                "min_duration_minutes": 30,
                "min_samples": 1000,
                "auto_advance": "on",
            },
        ],
    )
    guardrails = overrides.pop(
        "guardrails",
        [
            {
                "metric": "error_rate",
                "tolerance_kind": "relative",
                "tolerance": "1.5",
                "action": "rollback",
                "min_samples": 0,
            }
        ],
    )
    data.update(formset("phases", phases))
    data.update(formset("guardrails", guardrails))
    data.update(formset("metric_definitions", []))
    data.update(formset("targeting_rules", []))
    data.update(formset("audit_events", []))
    return data


def test_add_page_starts_from_the_standard_playbook(admin_client: Client) -> None:
    page = admin_client.get(reverse("admin:migrations_app_migrationplan_add")).content.decode()
    assert 'name="phases-TOTAL_FORMS" value="3"' in page
    assert 'name="phases-2-steps"' in page and "[10, 25, 50, 100]" in page
    assert 'name="guardrails-TOTAL_FORMS" value="4"' in page


def test_create_a_plan_in_the_admin(admin_client: Client) -> None:
    response = admin_client.post(reverse("admin:migrations_app_migrationplan_add"), _plan_post())
    assert response.status_code == 302, response.content.decode()[:3000]
    plan = MigrationPlan.objects.get(key="checkout-bot")
    assert [(p.kind, p.steps) for p in plan.phases.all()] == [
        ("shadow", []),
        ("rollout", [5, 25, 50, 100]),
    ]
    assert plan.guardrails.get().tolerance == 1.5
    assert plan.status == "draft" and plan.owner.username == "admin"
    assert AuditEvent.objects.get(plan=plan).action == "create"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {
                "plan": {
                    "candidate_model": "",
                    "candidate_prompt_mode": "none",
                    "candidate_prompt_text": "",
                }
            },
            "This field is required.",
        ),
        (
            {
                "plan": {
                    "candidate_prompt_mode": "none",
                    "candidate_prompt_text": "",
                    "candidate_params": '{"temperature": 0.2}',
                    "candidate_model": None,
                }
            },
            "",
        ),
        (
            {"plan": {"candidate_params": '{"temperature": 7}'}},
            "temperature must be a number from 0.0 to 2.0.",
        ),
        (
            {
                "phases": [
                    {
                        "order": 0,
                        "kind": "rollout",
                        "percent": "",
                        "steps": "[5, 50, 25]",
                        "min_duration_minutes": 30,
                        "min_samples": 10,
                    }
                ]
            },
            "Steps must be strictly increasing.",
        ),
        (
            {
                "phases": [
                    {
                        "order": 0,
                        "kind": "ab_split",
                        "percent": "150",
                        "steps": "[]",
                        "min_duration_minutes": 30,
                        "min_samples": 10,
                    }
                ]
            },
            "candidate share must be a percentage above 0 and at most 100",
        ),
        (
            {
                "guardrails": [
                    {
                        "metric": "latency_p95",
                        "tolerance_kind": "relative",
                        "tolerance": "0.8",
                        "action": "rollback",
                        "min_samples": 0,
                    }
                ]
            },
            "A relative tolerance is a ratio above 1",
        ),
        (
            {
                "guardrails": [
                    {
                        "metric": "satisfaction",
                        "tolerance_kind": "relative",
                        "tolerance": "1.2",
                        "action": "rollback",
                        "min_samples": 0,
                    }
                ]
            },
            "Satisfaction tolerances are absolute drops",
        ),
        ({"phases": []}, "Add at least one phase."),
        (
            {
                "phases": [
                    {
                        "order": 0,
                        "kind": "ab_split",
                        "percent": "25",
                        "steps": "[]",
                        "min_duration_minutes": 30,
                        "min_samples": 10,
                    },
                    {
                        "order": 1,
                        "kind": "rollout",
                        "percent": "",
                        "steps": "[5, 50, 100]",
                        "min_duration_minutes": 30,
                        "min_samples": 10,
                    },
                ]
            },
            "Phase 2 (rollout) starts at 5 % on the candidate, below the 25 % of phase 1 (A/B split)",
        ),
        ({"plan": {"key": "Not A Key!"}}, "Lowercase letters, digits"),
        ({"plan": {"redaction_patterns": '["(unclosed"]'}}, "missing ): (unclosed"),
        ({"plan": {"redaction_patterns": '["(?<=a)b"]'}}, "RE2 cannot compile it"),
        ({"plan": {"redaction_patterns": '{"a": 1}'}}, "A list of regular expressions"),
    ],
)
def test_a_bad_plan_gets_field_errors_and_nothing_is_saved(
    admin_client: Client, overrides: dict[str, Any], message: str
) -> None:
    if overrides.get("plan", {}).get("candidate_model", 0) is None:
        # Same model, same params and prompt as the control: not a migration.
        overrides["plan"]["candidate_model"] = ModelSpec.objects.get(
            model_id="gpt-4o-2024-08-06"
        ).pk
        message = "The candidate must differ from the control"
    response = admin_client.post(
        reverse("admin:migrations_app_migrationplan_add"), _plan_post(**overrides)
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not MigrationPlan.objects.exists()
    assert not AuditEvent.objects.exists()


def _act(client: Client, plan: MigrationPlan, action: str, reason: str = "") -> Any:
    plan.refresh_from_db()
    url = reverse("admin:migrations_app_migrationplan_act", args=[action]) + f"?ids={plan.pk}"
    data: dict[str, Any] = {"reason": reason, f"version-{plan.pk}": plan.version}
    if action == "start":  # the warnings the confirmation page showed, accepted
        data[f"acknowledge-{plan.pk}"] = start_checks(plan).warning_codes
    return client.post(url, data)


def test_lifecycle_from_the_admin_with_the_audit_trail(admin_client: Client) -> None:
    plan = make_plan("admin-walk")
    change_url = reverse("admin:migrations_app_migrationplan_change", args=[plan.pk])
    assert "lifecycle-start" in admin_client.get(change_url).content.decode()
    for action, reason in [
        ("start", ""),
        ("advance", "shadow looks fine"),
        ("pause", "holiday"),
        ("resume", ""),
        ("rollback", "p95 doubled"),
    ]:
        assert _act(admin_client, plan, action, reason).status_code == 302
    plan.refresh_from_db()
    assert plan.status == "rolled_back"
    page = admin_client.get(change_url).content.decode()
    assert "p95 doubled" in page and "shadow looks fine" in page
    assert "lifecycle-start" in page and "lifecycle-advance" not in page
    # Routing fields are frozen while a run lives, editable again after the rollback.
    assert 'name="candidate_model"' in page
    assert list(AuditEvent.objects.filter(plan=plan).values_list("action", flat=True))[:5] == [
        "rollback",
        "resume",
        "pause",
        "advance",
        "start",
    ]


def test_rollback_without_reason_is_refused_and_changes_nothing(admin_client: Client) -> None:
    plan = make_plan("no-reason")
    _act(admin_client, plan, "start")
    response = _act(admin_client, plan, "rollback", "")
    assert response.status_code == 200 and "This field is required." in response.content.decode()
    plan.refresh_from_db()
    assert plan.status == "running"


def test_a_stale_page_cannot_act(admin_client: Client) -> None:
    plan = make_plan("stale")
    _act(admin_client, plan, "start")
    plan.refresh_from_db()
    url = reverse("admin:migrations_app_migrationplan_act", args=["advance"]) + f"?ids={plan.pk}"
    response = admin_client.post(
        url, {"reason": "", f"version-{plan.pk}": plan.version - 1}, follow=True
    )
    assert "changed since you looked" in response.content.decode()
    assert MigrationPlan.objects.get(pk=plan.pk).version == plan.version


def test_running_plan_routing_fields_are_read_only(admin_client: Client) -> None:
    plan = make_plan("frozen")
    _act(admin_client, plan, "start")
    page = admin_client.get(
        reverse("admin:migrations_app_migrationplan_change", args=[plan.pk])
    ).content.decode()
    assert 'name="candidate_model"' not in page and 'name="phases-TOTAL_FORMS"' in page


def test_acting_needs_the_operate_permission() -> None:
    viewer = make_user("viewer", superuser=False)
    viewer.is_staff = True
    viewer.save()
    from django.contrib.auth.models import Permission

    viewer.user_permissions.add(Permission.objects.get(codename="view_migrationplan"))
    client = Client()
    client.force_login(viewer)
    plan = make_plan("guarded")
    assert (
        client.get(reverse("admin:migrations_app_migrationplan_change", args=[plan.pk])).status_code
        == 200
    )
    response = _act(client, plan, "start")
    assert response.status_code == 403
    assert MigrationPlan.objects.get(pk=plan.pk).status == "draft"


def test_api_key_is_shown_once_and_stored_hashed(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:migrations_app_apikey_add"),
        {"name": "web", "scopes": ["decide", "report"], "all_plans": "on"},
        follow=True,
    )
    page = response.content.decode()
    assert "Copy this key now" in page
    key = ApiKey.objects.get(name="web")
    plaintext = page.split('<code id="new-api-key">')[1].split("<")[0].strip()
    assert plaintext.startswith(f"tk_{key.prefix}_")
    assert plaintext not in str(ApiKey.objects.filter(pk=key.pk).values().get())
    assert sorted(key.scopes) == ["decide", "report"]
    from migrations_app.api.keys import apikey_authenticate

    assert apikey_authenticate(plaintext) == key
    assert apikey_authenticate(plaintext[:-1] + "x") is None


def test_send_a_test_alert_and_see_it_in_the_outbox(admin_client: Client) -> None:
    from migrations_app.models import AlertChannel, AlertDelivery

    admin_client.post(reverse("admin:migrations_app_migrationplan_add"), _plan_post())
    plan = MigrationPlan.objects.get(key="checkout-bot")
    assert plan.redaction_patterns == ["order-\\d+"] and plan.shadow_retention_days == 14
    plan.alert_channels.add(AlertChannel.objects.create(name="ops", kind="slack", url_env="X"))
    response = admin_client.post(
        reverse("admin:migrations_app_migrationplan_changelist"),
        {"action": "send_test_alert", "_selected_action": [plan.pk]},
        follow=True,
    )
    assert "Queued 1 test alert(s)" in response.content.decode()
    row = AlertDelivery.objects.get(plan=plan)
    assert (row.event, row.severity) == ("test", "info")
    page = admin_client.get(reverse("admin:migrations_app_alertdelivery_change", args=[row.pk]))
    assert page.status_code == 200 and row.dedup_key in page.content.decode()
    listing = admin_client.get(reverse("admin:migrations_app_alertdelivery_changelist"))
    assert "checkout-bot" in listing.content.decode()
