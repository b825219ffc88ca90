"""The engine on real rows: what it decides, what it stores, how it acts, and races."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from migrations_app.guardrails import engine
from migrations_app.models import AuditEvent, Evaluation, PlanStatus
from migrations_app.plans import lifecycle
from tests.factories import person
from tests.guardrails.conftest import (
    FAST_PHASES,
    error_arms,
    evaluate_with,
    put_totals,
    running_plan,
    synthetic_arm,
)


@pytest.mark.django_db
def test_a_tripled_error_rate_rolls_back_with_the_evidence():
    plan = running_plan()
    result = evaluate_with(plan, **error_arms(1, 20_000, control=0.02, candidate=0.06))

    assert (result.action, result.acted) == ("rollback", True)
    plan.refresh_from_db()
    assert plan.status == PlanStatus.ROLLED_BACK
    event = AuditEvent.objects.filter(plan=plan, action="rollback").get()
    assert event.actor_kind == "engine"
    assert event.reason.startswith("Rolled back by the engine: error_rate:")
    assert event.evidence["evaluation_id"] == result.evaluation_id
    candidate = event.evidence["arms"]["candidate"]
    assert candidate["requests"] == 20_000 and 1_000 < candidate["errors"] < 1_400
    assert candidate["errors_by_kind"] == {"server_error": candidate["errors"]}
    error_rate = next(g for g in event.evidence["guardrails"] if g["metric"] == "error_rate")
    assert error_rate["verdict"]["status"] == "regressed"
    assert error_rate["verdict"]["lower"] > 1.5  # the ratio's lower bound is past tolerance
    evaluation = Evaluation.objects.get(pk=result.evaluation_id)
    assert evaluation.acted and evaluation.action == "rollback"
    assert evaluation.candidate_requests == 20_000

    # Absorbing: later evaluations do nothing; only a person starts a new run.
    again = engine.plan_evaluate(plan_id=plan.pk)
    assert again.skipped == "plan is rolled_back"


@pytest.mark.django_db
def test_a_healthy_candidate_advances_step_by_step_then_completes():
    plan = running_plan()
    seen = []
    for step in range(3):  # A/B 50 %, rollout 50 %, rollout 100 %
        result = evaluate_with(
            plan,
            control=synthetic_arm(10 + step, 40_000, error_rate=0.02),
            candidate=synthetic_arm(20 + step, 40_000, error_rate=0.02),
        )
        plan.refresh_from_db()
        seen.append((result.action, result.acted, plan.status, plan.phase_index, plan.step_index))
    assert seen == [
        ("advance", True, "running", 1, 0),
        ("advance", True, "running", 1, 1),
        ("advance", True, "completed", 1, 1),
    ]
    assert list(
        AuditEvent.objects.filter(plan=plan, actor_kind="engine")
        .order_by("pk")
        .values_list("action", flat=True)
    ) == ["advance", "advance", "complete"]


@pytest.mark.django_db
def test_not_enough_data_holds_and_is_stored():
    plan = running_plan()
    result = evaluate_with(plan, **error_arms(3, 200, control=0.02, candidate=0.02))
    assert (result.action, result.acted) == ("hold", False)
    evaluation = Evaluation.objects.get(pk=result.evaluation_id)
    assert "error rate: not enough data yet" in " ".join(evaluation.decision["reasons"])
    plan.refresh_from_db()
    assert plan.status == PlanStatus.RUNNING


@pytest.mark.django_db
def test_a_step_without_auto_advance_waits_for_a_person():
    phases = [dict(p) for p in FAST_PHASES]
    phases[0]["auto_advance"] = False
    plan = running_plan(phases=phases)
    result = evaluate_with(plan, **error_arms(5, 40_000, control=0.02, candidate=0.02))
    assert (result.action, result.acted) == ("hold", False)
    assert Evaluation.objects.get(pk=result.evaluation_id).decision["action"] == "advance"


@pytest.mark.django_db
def test_the_circuit_breaker_rolls_back_at_once():
    plan = running_plan()
    result = evaluate_with(plan, **error_arms(7, 60, control=0.0, candidate=0.5))
    assert (result.action, result.acted) == ("rollback", True)
    assert "circuit breaker" in AuditEvent.objects.get(plan=plan, action="rollback").reason


@pytest.mark.django_db
def test_bounds_only_tighten_across_evaluations():
    plan = running_plan()
    put_totals(plan, **error_arms(9, 3_000, control=0.02, candidate=0.02))
    first = Evaluation.objects.get(pk=engine.plan_evaluate(plan_id=plan.pk).evaluation_id)
    # Fewer data: wider fresh bounds.
    put_totals(plan, **error_arms(9, 800, control=0.02, candidate=0.02))
    second = Evaluation.objects.get(pk=engine.plan_evaluate(plan_id=plan.pk).evaluation_id)
    looked = {m: b for m, b in first.bounds.items() if m != engine.DETECTORS_KEY}
    # A first look with no finite bound would leave nothing to keep and the loop nothing to test.
    assert any(b["upper"] is not None for b in looked.values()), looked
    for metric, bounds in looked.items():
        assert (second.bounds[metric]["upper"] or 1e300) <= (bounds["upper"] or 1e300)
        assert (second.bounds[metric]["lower"] or -1e300) >= (bounds["lower"] or -1e300)


@pytest.mark.django_db(transaction=True)
def test_two_evaluations_at_once_act_once():
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL")
    plan = running_plan()
    put_totals(plan, **error_arms(11, 20_000, control=0.02, candidate=0.06))
    barrier = threading.Barrier(4)
    results = []

    def evaluate() -> None:
        barrier.wait()
        try:
            results.append(engine.plan_evaluate(plan_id=plan.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=evaluate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.acted for r in results) == 1
    assert AuditEvent.objects.filter(plan=plan, action="rollback").count() == 1
    plan.refresh_from_db()
    assert plan.status == PlanStatus.ROLLED_BACK


@pytest.mark.django_db
def test_a_person_who_acted_first_wins():
    plan = running_plan()
    put_totals(plan, **error_arms(13, 20_000, control=0.02, candidate=0.06))
    lifecycle.plan_pause(plan_key=plan.key, actor=person())
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert result.skipped == "plan is paused"
    assert not AuditEvent.objects.filter(plan=plan, actor_kind="engine").exists()


@pytest.mark.django_db
def test_at_full_rollout_the_step_completes_on_samples_and_only_the_breaker_acts():
    plan = running_plan()
    for _ in range(2):
        lifecycle.plan_advance(plan_key=plan.key, actor=person())  # -> rollout 100 %
    plan.refresh_from_db()
    assert plan.current_stage.weight_bp == 10_000
    put_totals(plan, candidate=synthetic_arm(15, 500, error_rate=0.02))
    held = engine.plan_evaluate(plan_id=plan.pk)
    assert held.action == "hold"  # 500 of the step's 1000 samples
    put_totals(plan, candidate=synthetic_arm(15, 1_500, error_rate=0.02))
    done = engine.plan_evaluate(plan_id=plan.pk)
    assert (done.action, done.acted) == ("advance", True)
    plan.refresh_from_db()
    assert plan.status == PlanStatus.COMPLETED


@pytest.mark.django_db
def test_at_full_rollout_the_circuit_breaker_still_rolls_back():
    plan = running_plan()
    for _ in range(2):
        lifecycle.plan_advance(plan_key=plan.key, actor=person())
    put_totals(plan, candidate=synthetic_arm(16, 1_500, error_rate=0.4))
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert (result.action, result.acted) == ("rollback", True)


@pytest.mark.django_db
def test_in_shadow_the_paired_error_test_decides():
    from migrations_app.models import ShadowAggregate

    plan = running_plan(
        phases=[{"kind": "shadow", "percent": 10.0, "steps": [], "min_duration_minutes": 0,
                 "min_samples": 100_000}, *FAST_PHASES],
    )  # fmt: skip
    put_totals(
        plan,
        control=synthetic_arm(17, 30_000, error_rate=0.02),
        candidate=synthetic_arm(18, 3_000, error_rate=0.02),  # unpaired: looks the same
    )
    ShadowAggregate.objects.create(
        stage=plan.current_stage,
        data={"n": 3_000, "neither": 2_720, "control_only": 20, "candidate_only": 200, "both": 60},
    )
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert (result.action, result.acted) == ("rollback", True)
    evaluation = Evaluation.objects.get(pk=result.evaluation_id)
    error_rate = next(g for g in evaluation.decision["guardrails"] if g["metric"] == "error_rate")
    assert error_rate["verdict"]["n_candidate"] == 3_000
