"""The holdout on real rows: the engine enters it from the last step, watches it with the
holdout's own criteria, completes (releasing it) without a regression, rolls back on one;
the snapshot, a person's advance, the plan validation and the admin follow."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from migrations_app.guardrails import engine
from migrations_app.models import AuditEvent, Evaluation, MigrationPlan, PlanStage, PlanStatus
from migrations_app.plans import lifecycle
from migrations_app.plans.validation import plan_check
from migrations_app.routing.snapshots import plan_entry
from tests.factories import person
from tests.guardrails.conftest import (
    FAST_PHASES,
    evaluate_with,
    put_totals,
    running_plan,
    synthetic_arm,
)

WATCH = {"holdout_percent": 2.0, "holdout_watch_minutes": 30, "holdout_min_samples": 3000}


def held_plan(**holdout: Any) -> MigrationPlan:
    """A running plan with a holdout, walked by the engine through its three stages (A/B
    50 %, rollout 50 %, 100 %) into the holdout."""
    plan = running_plan()
    MigrationPlan.objects.filter(pk=plan.pk).update(**{**WATCH, **holdout})
    for step in range(3):
        result = evaluate_with(
            plan,
            control=synthetic_arm(10 + step, 40_000, error_rate=0.02),
            candidate=synthetic_arm(20 + step, 40_000, error_rate=0.02),
        )
        assert (result.action, result.acted) == ("advance", True)
    plan.refresh_from_db()
    return plan


def watch(plan: MigrationPlan, control: int, candidate_rate: float, minutes: float):
    """Evaluate the holdout stage with ``control`` holdout requests (the candidate 49x as
    many), ``minutes`` after it began."""
    put_totals(
        plan,
        control=synthetic_arm(31, control, error_rate=0.02),
        candidate=synthetic_arm(32, control * 49, error_rate=candidate_rate),
    )
    plan.refresh_from_db()
    now = plan.current_stage.started_at + timedelta(minutes=minutes)
    return engine.plan_evaluate(plan_id=plan.pk, now=now)


@pytest.mark.django_db
def test_the_last_step_leads_into_the_holdout_not_to_complete():
    plan = held_plan()
    stage = plan.current_stage
    assert plan.status == PlanStatus.RUNNING
    assert (plan.phase_index, plan.step_index) == (len(FAST_PHASES), 0)
    assert (stage.kind, stage.weight_bp, stage.cohort) == ("holdout", 9_800, "")
    entry = plan_entry(plan)
    assert (entry["phase"], entry["weight_bp"], entry.get("cohorts")) == ("holdout", 9_800, None)
    assert list(
        AuditEvent.objects.filter(plan=plan, actor_kind="engine").values_list("action", flat=True)
    ) == ["advance", "advance", "advance"]


@pytest.mark.django_db
def test_the_watch_holds_until_its_samples_and_duration_then_completes():
    plan = held_plan()
    # Enough samples, not yet the duration; then the duration, not the samples.
    assert watch(plan, 4_000, 0.02, minutes=10).action == "hold"
    assert watch(plan, 1_000, 0.02, minutes=40).action == "hold"
    result = watch(plan, 4_000, 0.02, minutes=40)
    assert (result.action, result.acted) == ("advance", True)
    plan.refresh_from_db()
    assert plan.status == PlanStatus.COMPLETED
    event = AuditEvent.objects.filter(plan=plan).latest("pk")
    assert event.action == "complete"
    assert "the holdout watch ended without a regression" in event.reason
    # Released: a completed plan serves the candidate to everyone.
    assert plan_entry(plan)["status"] == "completed"
    assert PlanStage.objects.get(plan=plan, kind="holdout").ended_at is not None


@pytest.mark.django_db
def test_an_inconclusive_bound_does_not_keep_the_watch_waiting():
    """1,500 holdout requests cannot prove the error ratio below 1.5 (the split stages did
    that); the watch only has to see no regression."""
    plan = held_plan(holdout_min_samples=1_500)
    result = watch(plan, 1_500, 0.02, minutes=31)
    assert result.action == "advance"
    reasons = Evaluation.objects.get(pk=result.evaluation_id).decision["reasons"]
    assert any(r.startswith("error_rate:") for r in reasons)  # noted, not waited for
    plan.refresh_from_db()
    assert plan.status == PlanStatus.COMPLETED


@pytest.mark.django_db
def test_a_regression_after_100_percent_rolls_back_in_the_watch():
    plan = held_plan()
    result = watch(plan, 4_000, 0.06, minutes=5)
    assert (result.action, result.acted) == ("rollback", True)
    plan.refresh_from_db()
    assert plan.status == PlanStatus.ROLLED_BACK
    event = AuditEvent.objects.get(plan=plan, action="rollback")
    assert event.evidence["stage"]["kind"] == "holdout"
    assert event.reason.startswith("Rolled back by the engine: error_rate:")


@pytest.mark.django_db
def test_without_a_holdout_the_last_step_completes():
    plan = running_plan()
    for step in range(3):
        evaluate_with(
            plan,
            control=synthetic_arm(10 + step, 40_000, error_rate=0.02),
            candidate=synthetic_arm(20 + step, 40_000, error_rate=0.02),
        )
    plan.refresh_from_db()
    assert plan.status == PlanStatus.COMPLETED


@pytest.mark.django_db
def test_a_person_advancing_the_last_step_enters_the_holdout():
    plan = running_plan()
    MigrationPlan.objects.filter(pk=plan.pk).update(**WATCH)
    for _ in range(3):
        plan = lifecycle.plan_advance(plan_key=plan.key, actor=person())
    assert plan.current_stage.kind == "holdout"
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.plan_advance(plan_key=plan.key, actor=person())
    plan = lifecycle.plan_complete(plan_key=plan.key, actor=person())
    assert plan.status == PlanStatus.COMPLETED


def _values(**extra: Any) -> dict[str, Any]:
    return {
        "key": "held",
        "name": "Held",
        "control_model": "openai:gpt-4o-2024-08-06",
        "candidate_model": "anthropic:claude-sonnet-4-20250514",
        "phases": FAST_PHASES,
        **extra,
    }


@pytest.mark.django_db
def test_the_plan_validation_checks_the_holdout_with_the_phases():
    assert plan_check(_values(**WATCH)).ok
    split_last = [FAST_PHASES[0]]
    check = plan_check(_values(phases=split_last, **WATCH))
    assert list(check.errors) == ["holdout_percent"]
    assert "last rollout step at 100 %" in check.errors["holdout_percent"][0]
    check = plan_check(_values(holdout_percent=25.0, holdout_watch_minutes=0))
    assert set(check.errors) == {"holdout_percent", "holdout_watch_minutes"}
    assert len(check.errors["holdout_percent"]) == 1  # once, not again by the model field


@pytest.mark.django_db
def test_the_holdout_is_frozen_while_a_run_is_live():
    from migrations_app.plans.edits import plan_edit

    plan = running_plan()
    plan.holdout_percent = 5.0
    with pytest.raises(lifecycle.IllegalTransition) as exc:
        plan_edit(plan=plan, fields=["holdout_percent"], expected_version=plan.version)
    assert "holdout_percent" in exc.value.message
    plan.refresh_from_db()
    assert plan.holdout_percent == 0.0


@pytest.mark.django_db
def test_the_admin_form_shows_and_checks_the_holdout(client):
    from tests.factories import make_user

    client.force_login(make_user("admin-h"))
    plan = running_plan()
    page = client.get(f"/admin/migrations_app/migrationplan/{plan.pk}/change/")
    assert page.status_code == 200
    assert b"Holdout after the last step" in page.content
    assert b"holdout_percent" in page.content


@pytest.mark.django_db
def test_the_dashboard_shows_the_holdout_stage(client):
    from tests.factories import make_user

    client.force_login(make_user("viewer-h"))
    plan = held_plan()
    page = client.get(f"/plans/{plan.key}/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "holdout watch: candidate 98 %, control 2 %" in text
    assert "complete the migration" in text
