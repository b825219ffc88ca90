"""Before a plan starts, Turnout says what will not work: one computation (plans.start_checks) used by
the service, the admin, the dashboard and the API (tests/api/test_plans_api.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from migrations_app.api.keys import apikey_create
from migrations_app.errors import DomainError, IllegalTransition
from migrations_app.models import (
    AlertChannel,
    AuditEvent,
    MigrationPlan,
    ModelSpec,
    PlanPhase,
    PlanRun,
)
from migrations_app.plans import lifecycle, start_checks
from migrations_app.plans.phases import PhaseRule
from migrations_app.plans.start_checks import Connection, StartFacts, evaluate
from tests.factories import make_plan, make_user, person

# --- the rules, pure ------------------------------------------------------------

SHADOW, SPLIT, ROLLOUT = (
    PhaseRule("shadow", 10.0, ()),
    PhaseRule("ab_split", 10.0, ()),
    PhaseRule("rollout", None, (10.0, 50.0, 100.0)),
)


def facts(**overrides: Any) -> StartFacts:
    """A plan nothing is wrong with."""
    base = StartFacts(
        phases=(SHADOW, SPLIT, ROLLOUT),
        phase_errors=(),
        guardrail_metrics=("error_rate", "satisfaction"),
        has_judge=True,
        alert_channels=(("oncall", True),),
        connections=(
            Connection("control", "openai", "OPENAI_API_KEY", True, ""),
            Connection("candidate", "anthropic", "ANTHROPIC_API_KEY", True, ""),
            Connection("judge", "openai", "OPENAI_API_KEY", True, ""),
        ),
        decide_keys=1,
    )
    return replace(base, **overrides)


def codes(findings: tuple[start_checks.Finding, ...]) -> list[str]:
    return [f.code for f in findings]


def test_a_sound_plan_has_nothing_to_say() -> None:
    assert evaluate(facts()) == start_checks.StartChecks()


def test_no_enabled_alert_channel_pages_nobody() -> None:
    (warning,) = evaluate(facts(alert_channels=())).warnings
    assert warning.code == "no_alert_channel" and "a rollback would page nobody" in warning.message
    (disabled,) = evaluate(facts(alert_channels=(("ops", False),))).warnings
    assert "its channels ops are disabled" in disabled.message


def test_a_provider_key_unset_here_matters_for_what_the_workers_call() -> None:
    candidate_unset = (
        Connection("control", "openai", "OPENAI_API_KEY", False, ""),  # apps call control
        Connection("candidate", "anthropic", "ANTHROPIC_API_KEY", False, ""),
    )
    (warning,) = evaluate(facts(connections=candidate_unset, has_judge=False,
                                guardrail_metrics=("error_rate",))).warnings  # fmt: skip
    assert warning.code == "provider_key_unset"
    assert warning.message.startswith("ANTHROPIC_API_KEY is not set in this process")
    assert "the candidate (anthropic)" in warning.message
    # Without a shadow phase Turnout calls no model itself.
    no_shadow = facts(connections=candidate_unset, phases=(SPLIT, ROLLOUT))
    assert evaluate(no_shadow).warnings == ()


def test_no_api_key_that_sees_the_plan() -> None:
    (warning,) = evaluate(facts(decide_keys=0)).warnings
    assert warning.code == "no_api_key" and "no SDK will receive its routing" in warning.message


def test_a_shadow_phase_without_a_judge_cannot_test_the_answers() -> None:
    (warning,) = evaluate(facts(has_judge=False)).warnings
    assert warning.code == "shadow_without_judge"
    assert "the satisfaction guardrail cannot be tested in shadow" in warning.message
    assert evaluate(facts(has_judge=False, guardrail_metrics=("error_rate",))).warnings == ()
    assert evaluate(facts(has_judge=False, phases=(SPLIT, ROLLOUT))).warnings == ()


def test_impossible_plans_are_problems() -> None:
    assert codes(evaluate(facts(phases=())).problems) == ["no_phases"]
    lowered = evaluate(
        facts(phases=(PhaseRule("ab_split", 25.0, ()), PhaseRule("rollout", None, (5.0, 100.0))))
    )
    (problem,) = lowered.problems
    assert problem.code == "candidate_share_drops" and "Phase 2 (rollout)" in problem.message
    refused = (Connection("candidate", "evil", "SECRET_KEY", True, "api_key_env: reserved"),)
    (problem,) = evaluate(facts(connections=refused)).problems
    assert problem.code == "provider_refused" and "'evil'" in problem.message


def test_every_warning_at_once_and_what_to_acknowledge() -> None:
    checks = evaluate(
        facts(
            alert_channels=(), decide_keys=0, has_judge=False, guardrail_metrics=("satisfaction",)
        )
    )
    assert checks.warning_codes == ["no_alert_channel", "no_api_key", "shadow_without_judge"]
    assert checks.unacknowledged(["no_alert_channel", "no_api_key"]) == checks.warnings[-1:]


# --- the service ----------------------------------------------------------------


@pytest.fixture
def sound_plan(monkeypatch: pytest.MonkeyPatch) -> MigrationPlan:
    """A draft plan with nothing to warn about: a channel, a decide key, a judge, the keys."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    plan = make_plan("sound")
    plan.alert_channels.add(AlertChannel.objects.create(name="oncall", kind="email",
                                                        recipients="oncall@example.com"))  # fmt: skip
    MigrationPlan.objects.filter(pk=plan.pk).update(
        judge_model=ModelSpec.objects.get(model_id="gpt-4o-2024-08-06")
    )
    apikey_create(name="app", scopes=["decide", "report"], plans=[plan])
    return MigrationPlan.objects.get(pk=plan.pk)


@pytest.mark.django_db
def test_the_sound_plan_fixture_has_no_findings(sound_plan: MigrationPlan) -> None:
    assert start_checks.start_checks(sound_plan) == start_checks.StartChecks()


@pytest.mark.django_db
def test_start_refuses_unacknowledged_warnings_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    plan = make_plan("warned")
    with pytest.raises(DomainError) as caught:
        lifecycle.plan_start(plan_key=plan.key, actor=person(), acknowledged=["no_alert_channel"])
    assert (caught.value.code, caught.value.status) == ("start_warnings", 409)
    details = caught.value.details
    assert details["acknowledge"] == ["no_alert_channel", "no_api_key", "shadow_without_judge"]
    assert {w["code"] for w in details["warnings"]} == set(details["acknowledge"])
    after = MigrationPlan.objects.get(pk=plan.pk)
    assert (after.status, after.version) == ("draft", plan.version)
    assert not PlanRun.objects.filter(plan=plan).exists()
    started = lifecycle.plan_start(
        plan_key=plan.key, actor=person(), acknowledged=details["acknowledge"]
    )
    assert started.status == "running"
    event = AuditEvent.objects.get(plan=plan, action="start")
    assert event.evidence["acknowledged"] == details["acknowledge"]
    assert [w["code"] for w in event.evidence["start_warnings"]] == details["acknowledge"]


@pytest.mark.django_db
def test_a_script_that_asked_nobody_starts_and_the_warnings_are_recorded() -> None:
    plan = make_plan("scripted")
    lifecycle.plan_start(plan_key=plan.key, actor=person())
    event = AuditEvent.objects.get(plan=plan, action="start")
    assert event.evidence["acknowledged"] is None and event.evidence["start_warnings"]


@pytest.mark.django_db
def test_an_impossible_plan_is_refused_whoever_asks(sound_plan: MigrationPlan) -> None:
    # Saved before the rule existed (or written around the forms): the split at 25 % and the
    # rollout starting at 10 %.
    PlanPhase.objects.filter(plan=sound_plan, kind="ab_split").update(percent=25.0)
    for acknowledged in (None, ["no_alert_channel"]):
        with pytest.raises(DomainError) as caught:
            lifecycle.plan_start(plan_key=sound_plan.key, actor=person(), acknowledged=acknowledged)
        assert (caught.value.code, caught.value.status) == ("plan_not_startable", 409)
        (problem,) = caught.value.details["problems"]
        assert problem["code"] == "candidate_share_drops"
    assert MigrationPlan.objects.get(pk=sound_plan.pk).status == "draft"


@pytest.mark.django_db
def test_an_api_key_starts_a_draft_but_not_a_rolled_back_plan(sound_plan: MigrationPlan) -> None:
    key = lifecycle.Actor.for_api_key("oncall")
    started = lifecycle.plan_start(plan_key=sound_plan.key, actor=key, acknowledged=[])
    assert started.status == "running"
    lifecycle.plan_rollback(plan_key=sound_plan.key, actor=key, reason="bad")
    with pytest.raises(IllegalTransition) as caught:
        lifecycle.plan_start(plan_key=sound_plan.key, actor=key, acknowledged=[])
    assert caught.value.code == "person_required"
    assert (
        lifecycle.plan_start(plan_key=sound_plan.key, actor=person(), acknowledged=[]).status
        == "running"
    )


# --- the admin and the dashboard ------------------------------------------------


def _operator(username: str) -> Client:
    user = make_user(username, superuser=False)
    user.is_staff = True
    user.save()
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_migrationplan", "operate_migrationplan"])
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_the_admin_start_page_lists_the_warnings_and_starts_once_confirmed() -> None:
    plan = make_plan("admin-start")
    client = _operator("olga")
    url = reverse("admin:migrations_app_migrationplan_act", args=["start"]) + f"?ids={plan.pk}"
    page = client.get(url).content.decode()
    assert "a rollback would page nobody" in page and "no SDK will receive its routing" in page
    assert f'name="acknowledge-{plan.pk}" value="no_alert_channel"' in page
    # A page that showed fewer warnings than there are now starts nothing.
    stale = client.post(url, {"reason": "", f"version-{plan.pk}": plan.version,
                              f"acknowledge-{plan.pk}": ["no_alert_channel"]}, follow=True)  # fmt: skip
    assert "needs your confirmation" in stale.content.decode()
    assert MigrationPlan.objects.get(pk=plan.pk).status == "draft"
    codes_shown = ["no_alert_channel", "no_api_key", "shadow_without_judge", "provider_key_unset"]
    done = client.post(url, {"reason": "", f"version-{plan.pk}": plan.version,
                             f"acknowledge-{plan.pk}": codes_shown})  # fmt: skip
    assert done.status_code == 302
    assert MigrationPlan.objects.get(pk=plan.pk).status == "running"


@pytest.mark.django_db
def test_the_admin_does_not_offer_to_start_an_impossible_plan() -> None:
    plan = make_plan("admin-impossible")
    PlanPhase.objects.filter(plan=plan, kind="shadow").update(order=5)  # shadow after the rollout
    client = _operator("olga")
    url = reverse("admin:migrations_app_migrationplan_act", args=["start"]) + f"?ids={plan.pk}"
    page = client.get(url).content.decode()
    assert "cannot start" in page and "Phase 3 (shadow) sends every user to control" in page
    assert 'name="confirm"' not in page
    client.post(url, {"reason": "", f"version-{plan.pk}": plan.version})
    assert MigrationPlan.objects.get(pk=plan.pk).status == "draft"


@pytest.mark.django_db
def test_the_dashboard_offers_start_with_the_same_warnings() -> None:
    plan = make_plan("dash-start")
    client = _operator("olga")
    page = client.get(f"/plans/{plan.key}/").content.decode()
    assert f'href="/plans/{plan.key}/act/start?version={plan.version}"' in page
    confirm = client.get(f"/plans/{plan.key}/act/start?version={plan.version}").content.decode()
    assert "a rollback would page nobody" in confirm
    assert 'name="acknowledge" value="no_api_key"' in confirm
    refused = client.post(f"/plans/{plan.key}/act/start",
                          {"version": plan.version, "acknowledge": ["no_api_key"]})  # fmt: skip
    assert refused.status_code == 409
    body = refused.content.decode()
    assert "start_warnings" in body and 'name="acknowledge" value="no_alert_channel"' in body
    assert MigrationPlan.objects.get(pk=plan.pk).status == "draft"
    shown = start_checks.start_checks(plan).warning_codes
    done = client.post(
        f"/plans/{plan.key}/act/start", {"version": plan.version, "acknowledge": shown}
    )
    assert done.status_code == 302
    assert MigrationPlan.objects.get(pk=plan.pk).status == "running"


@pytest.mark.django_db
def test_a_channel_that_cannot_deliver_is_not_a_working_channel(
    sound_plan: MigrationPlan,
) -> None:
    """Review defect L6: an unsigned webhook (saved before the rule, by a script) pages nobody;
    start says so instead of counting it."""
    unsigned = AlertChannel.objects.create(name="hook", kind="webhook", url_env="OPS_HOOK_URL")
    sound_plan.alert_channels.set([unsigned])
    (warning,) = start_checks.start_checks(sound_plan).warnings
    assert warning.code == "no_alert_channel"
    assert "hook cannot deliver (secret_env: A webhook is signed" in warning.message
    signed = AlertChannel.objects.create(
        name="signed", kind="webhook", url_env="OPS_HOOK_URL", secret_env="OPS_HOOK_SECRET"
    )
    sound_plan.alert_channels.add(signed)
    assert start_checks.start_checks(sound_plan) == start_checks.StartChecks()


@pytest.mark.django_db
def test_a_replay_gate_on_the_judge_needs_a_judge_model() -> None:
    """The README's replay example gates on judge_preference: without a judge model no answer
    is judged, the gate is inconclusive whatever the candidate does, and the replay could
    never pass. Refused at the start, by phase and field; with a judge it starts."""
    from tests.replay.test_replay_api import _dataset, _plan

    _dataset()
    gates = [
        {"metric": "exact_match", "threshold": 0.8},
        {"metric": "judge_preference", "threshold": -0.05},
    ]
    plan = _plan(gates=gates)
    with pytest.raises(DomainError) as refused:
        lifecycle.plan_start(plan_key=plan.key, actor=person())
    assert refused.value.code == "plan_not_startable"
    assert "Phase 1 (replay): replay.gates: judge_preference needs the plan's judge model" in (
        str(refused.value.details)
    )
    plan.refresh_from_db()
    assert plan.status == "draft"
    plan.judge_model = plan.candidate_model
    plan.save(update_fields=["judge_model"])
    assert not [
        p for p in start_checks.start_checks(plan).problems if "judge_preference" in p.message
    ]
