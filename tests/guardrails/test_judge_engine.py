"""The engine and the judge's guardrails on real rows (issue 15, items 3-4): a shadow stage's
paired preference is tested like any paired metric, and what the engine may do with its
verdict depends on whether people's labels say the judge can be trusted."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from django.utils import timezone

from migrations_app.guardrails import engine
from migrations_app.guardrails.stats import PairedSums
from migrations_app.models import (
    AuditEvent,
    JudgeLabel,
    ModelSpec,
    PlanStatus,
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
)
from tests.factories import started_plan

pytestmark = pytest.mark.django_db

SHADOW = [
    {"kind": "shadow", "percent": 100.0, "steps": [], "min_duration_minutes": 0, "min_samples": 0},
    {"kind": "ab_split", "percent": 50.0, "steps": [], "min_duration_minutes": 0, "min_samples": 100},
]  # fmt: skip
JUDGE_GUARDRAIL = {
    "metric": "judge_preference", "tolerance_kind": "absolute", "tolerance": 0.05,
    "action": "rollback",
}  # fmt: skip


def judged_plan(**fields):
    plan = started_plan(
        phases=SHADOW,
        guardrails=[JUDGE_GUARDRAIL],
        judge_model=ModelSpec.objects.get(model_id="gpt-4o-mini-2024-07-18"),
        **fields,
    )
    assert plan.current_stage.kind == "shadow"
    return plan


def put_preferences(plan, net: float, n: int = 3000, users: int = 1500, seed: int = 1) -> None:
    """The stage's paired aggregate as the pipeline leaves it: n verdicts with net ``net``."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    s = np.where(u < (0.6 + net) / 2, 1.0, np.where(u < 0.6, -1.0, 0.0))
    sums = PairedSums.from_values(
        [str(i) for i in rng.integers(0, users, n)], [0.0] * n, s.tolist()
    )
    ShadowAggregate.objects.update_or_create(
        stage=plan.current_stage,
        defaults={"data": {"n": n, "metrics": {"judge_preference": sums.to_dict()}}},
    )


def label_pairs(plan, count: int, *, agree: bool = True) -> None:
    """``count`` done pairs the judge called for control, each labelled by a person (the same
    verdict, or the candidate's when ``agree`` is false)."""
    now = timezone.now()
    for i in range(count):
        winner = ("control", "candidate", "tie")[i % 3]
        sample = ShadowSample.objects.create(
            sample_id=uuid.uuid4().hex, plan=plan, run=plan.current_run, stage=plan.current_stage,
            decision_id=uuid.uuid4().hex, unit=f"u{i}", request={"messages": []},
            control={"text": "a"}, candidate={"text": "b"}, status=ShadowStatus.DONE,
            comparison={"judge": {"winner": winner, "judge_winner": "A", "score": 0.0}},
            created_at=now, completed_at=now,
        )  # fmt: skip
        choice = (
            winner
            if agree
            else {"control": "candidate", "candidate": "tie", "tie": "control"}[winner]
        )
        JudgeLabel.objects.create(
            sample=sample, plan=plan, run=plan.current_run, labeller="alice", choice=choice,
            candidate_position="A", created_at=now,
        )  # fmt: skip


def test_an_untrusted_judge_only_alerts_and_says_why():
    plan = judged_plan()
    put_preferences(plan, net=-0.3)
    label_pairs(plan, 12)
    result = engine.plan_evaluate(plan_id=plan.pk)
    plan.refresh_from_db()
    assert (result.action, result.acted, plan.status) == ("alert", False, PlanStatus.RUNNING)
    evaluation = plan.evaluations.get(pk=result.evaluation_id)
    guardrail = evaluation.decision["guardrails"][0]
    assert guardrail["verdict"]["status"] == "regressed" and guardrail["wants"] == "alert"
    why = "12 of the 50 human labels the plan asks for"
    assert any(why in note for note in guardrail["verdict"]["notes"])
    judge = evaluation.decision["judge"]
    assert judge["labels"] == 12 and judge["trusted"] is False and why in judge["why"]


def test_a_trusted_judge_rolls_back():
    plan = judged_plan()
    put_preferences(plan, net=-0.3)
    label_pairs(plan, 60)
    result = engine.plan_evaluate(plan_id=plan.pk)
    plan.refresh_from_db()
    assert (result.action, result.acted, plan.status) == ("rollback", True, PlanStatus.ROLLED_BACK)
    event = AuditEvent.objects.get(plan=plan, action="rollback")
    assert event.reason.startswith(
        "Rolled back by the engine: judge_preference: candidate net judge preference is"
    )
    assert event.evidence["judge"]["trusted"] is True and event.evidence["judge"]["kappa"] == 1.0


def test_labels_that_disagree_keep_the_judge_from_acting():
    plan = judged_plan()
    put_preferences(plan, net=-0.3)
    label_pairs(plan, 90, agree=False)
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert result.action == "alert"
    judge = plan.evaluations.get(pk=result.evaluation_id).decision["judge"]
    assert judge["labels"] == 90 and judge["kappa"] < 0 and "agrees too little" in judge["why"]


def test_an_untrusted_judge_does_not_hold_an_otherwise_finished_shadow():
    """Without enough pairs its trusted guardrail would hold; below the floor it does not."""
    plan = judged_plan()
    put_preferences(plan, net=0.0, n=10, users=10)
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert (result.action, result.acted) == ("advance", True)
    plan.refresh_from_db()
    assert plan.current_stage.kind == "ab_split"


def test_a_judge_guardrail_without_a_judge_model_only_alerts():
    plan = judged_plan()
    plan.judge_model = None
    plan.save(update_fields=["judge_model"])
    put_preferences(plan, net=-0.3)
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert result.action == "alert"
    notes = plan.evaluations.get(pk=result.evaluation_id).decision["guardrails"][0]["verdict"][
        "notes"
    ]
    assert any("the plan has no judge model" in note for note in notes)
