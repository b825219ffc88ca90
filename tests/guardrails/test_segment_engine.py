"""The engine with segments (issue 16, item 6): a plan with segment dimensions tests every
guardrail per segment; a regressed segment rolls the plan back, or (segment_on_regression =
exclude) is excluded by a targeting rule the engine adds (audited, the SDKs' snapshot has it:
its units get control), the alert names it and the run continues; the excluded segment is not
tested again; the busiest top_k values are tested, the rest as 'other'. Satisfaction and a
declared metric are tested per segment too: feedback and metric values count in their
outcome's segment (from real ingest here)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pytest
from django.test import Client
from turnout import routing

from migrations_app.guardrails import engine, segment_engine
from migrations_app.guardrails.stats import ArmAggregates
from migrations_app.models import (
    AlertChannel,
    AlertDelivery,
    AuditEvent,
    Evaluation,
    Guardrail,
    MetricDefinition,
    MigrationPlan,
    SegmentAggregate,
)
from migrations_app.outcomes import aggregate_json, feedback, ingest, metric_values
from migrations_app.routing.snapshots import plan_entry
from tests.factories import make_user
from tests.guardrails.conftest import put_totals, running_plan, synthetic_arm
from tests.outcomes.conftest import Everyone, outcome

pytestmark = pytest.mark.django_db


def put_segments(
    plan: MigrationPlan, dimension: str, parts: dict[str, tuple[ArmAggregates, ArmAggregates]]
) -> None:
    """The stage's segment rows for ``dimension`` and the population as their sum."""
    stage = MigrationPlan.objects.get(pk=plan.pk).current_stage
    SegmentAggregate.objects.filter(stage=stage, dimension=dimension).delete()
    for value, (control, candidate) in parts.items():
        for arm, agg in (("control", control), ("candidate", candidate)):
            SegmentAggregate.objects.create(
                stage=stage, arm=arm, dimension=dimension, value=value,
                requests=agg.requests, data=aggregate_json.to_json(agg),
            )  # fmt: skip
    put_totals(
        plan,
        control=ArmAggregates.merge(c for c, _ in parts.values()),
        candidate=ArmAggregates.merge(t for _, t in parts.values()),
    )


def segmented_plan(**fields: Any) -> MigrationPlan:
    plan = running_plan()
    plan.alert_channels.add(AlertChannel.objects.create(name="pd", kind="pagerduty"))
    MigrationPlan.objects.filter(pk=plan.pk).update(segment_dimensions=["lang"], **fields)
    return MigrationPlan.objects.get(pk=plan.pk)


def staff_client() -> Client:
    client = Client()
    client.force_login(make_user("admin"))
    return client


def langs(ja_error_rate: float) -> dict[str, tuple[ArmAggregates, ArmAggregates]]:
    return {
        "en": (synthetic_arm(1, 30_000, error_rate=0.02), synthetic_arm(2, 30_000, error_rate=0.02)),
        "de": (synthetic_arm(3, 10_000, error_rate=0.02), synthetic_arm(4, 10_000, error_rate=0.02)),
        "ja": (synthetic_arm(5, 6_000, error_rate=0.02), synthetic_arm(6, 6_000, error_rate=ja_error_rate)),
    }  # fmt: skip


def test_a_regressed_segment_rolls_back_by_default_naming_it() -> None:
    plan = segmented_plan()
    put_segments(plan, "lang", langs(0.06))
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert (result.action, result.acted) == ("rollback", True)
    event = AuditEvent.objects.get(plan=plan, action="rollback")
    assert "segment lang=ja regressed" in event.reason
    ja = next(s for s in event.evidence["segments"] if s["value"] == "ja")
    assert ja["tested"] and ja["wants"] == "rollback"
    page = AlertDelivery.objects.get(plan=plan)
    assert "lang=ja" in str(page.message)


def test_a_regressed_segment_is_excluded_and_the_run_continues() -> None:
    plan = segmented_plan(segment_on_regression="exclude")
    version = plan.version
    put_segments(plan, "lang", langs(0.06))
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert result.action == "hold" and not result.acted
    plan.refresh_from_db()
    assert plan.status == "running" and plan.version == version + 1
    # The SDKs' snapshot excludes the segment: a Japanese user gets control, EXCLUDED.
    snapshot = routing.parse_plan(plan_entry(plan))
    d = routing.decide(snapshot, "u1", decision_id="d", attributes={"lang": "ja"})
    assert (d.arm, d.reason) == ("control", "EXCLUDED")
    assert (
        routing.decide(snapshot, "u1", decision_id="d", attributes={"lang": "en"}).reason == "SPLIT"
    )
    audit = AuditEvent.objects.get(plan=plan, action="targeting")
    assert audit.actor_kind == "engine" and "Segment lang=ja regressed" in audit.reason
    evaluation = Evaluation.objects.get(pk=result.evaluation_id)
    assert any("excluded" in r for r in evaluation.decision["reasons"])
    page = AlertDelivery.objects.get(plan=plan)
    assert "lang=ja" in str(page.message)
    assert segment_engine.excluded_segments(plan) == {("lang", "ja")}
    # The dashboard's per-segment table: each segment's estimate, bounds and verdict.
    page = staff_client().get(f"/plans/{plan.key}/live").content.decode()
    assert 'data-segment="lang=ja" data-metric="error_rate"' in page
    assert "Excluded by this evaluation: <strong>lang=ja</strong>" in page
    assert "regressed" in page
    # The next evaluation does not test the excluded segment again, and goes on (the stage's
    # population still holds ja's earlier requests: inconclusive here, no rollback).
    again = engine.plan_evaluate(plan_id=plan.pk)
    evaluation = Evaluation.objects.get(pk=again.evaluation_id)
    assert {s["value"] for s in evaluation.decision["segments"]} == {"en", "de"}
    assert again.action in ("hold", "advance"), evaluation.decision["reasons"]
    assert AuditEvent.objects.filter(plan=plan, action="targeting").count() == 1


def test_healthy_segments_advance() -> None:
    plan = segmented_plan()
    put_segments(plan, "lang", langs(0.02))
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert (result.action, result.acted) == ("advance", True)
    evaluation = Evaluation.objects.get(pk=result.evaluation_id)
    assert len(evaluation.decision["segments"]) == 3
    assert evaluation.decision["segment_alphas"]["error_rate"] == pytest.approx(
        0.05 / 2 / 3 * 0.5 / 21
    )


def test_other_regressed_rolls_back_even_when_excluding() -> None:
    plan = segmented_plan(segment_on_regression="exclude", segment_top_k=2)
    put_segments(plan, "lang", langs(0.06))  # ja is the least busy: it is 'other'
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert (result.action, result.acted) == ("rollback", True)
    event = AuditEvent.objects.get(plan=plan, action="rollback")
    assert "segment lang=other regressed" in event.reason


def test_a_segment_with_no_room_for_its_exclusion_rolls_back() -> None:
    """With the plan's rule list at the cap (50), the engine's exclusion rule was refused by
    the rule validation: every evaluation raised and the regressed segment was never acted on.
    Where its rules do not fit, the segment rolls the plan back instead."""
    from turnout.contract import MAX_RULES

    from migrations_app.models import TargetingRule

    plan = segmented_plan(segment_on_regression="exclude")
    TargetingRule.objects.bulk_create(
        TargetingRule(
            plan=plan, order=i, name=f"beta {i}", result="include",
            conditions=[{"attribute": "tenant", "op": "equals", "value": f"t{i}"}],
        )
        for i in range(MAX_RULES)
    )  # fmt: skip
    put_segments(plan, "lang", langs(0.06))
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert (result.action, result.acted) == ("rollback", True)
    assert (
        "segment lang=ja regressed" in AuditEvent.objects.get(plan=plan, action="rollback").reason
    )
    assert TargetingRule.objects.filter(plan=plan).count() == MAX_RULES
    assert not AuditEvent.objects.filter(plan=plan, action="targeting").exists()


# --- satisfaction and declared metrics per segment, from real ingest ------------------------


def send_traffic(
    plan: MigrationPlan, later: str, rates: dict[str, dict[str, tuple[int, float]]]
) -> None:
    """Outcomes with their unit's language (two requests per unit) through ingest, then for
    each one ``later``: a thumbs rating (``feedback``) or a ``task_completed`` value sent on
    its own (``metric``), good with the given probability. ``rates``: lang -> arm ->
    (requests, probability)."""
    rng = np.random.default_rng(7)
    outcomes, extra = [], []
    for lang, arms in rates.items():
        for arm, (n, good) in arms.items():
            for i in range(n):
                event = outcome(
                    plan, arm=arm, unit=f"{lang}-{arm}-{i // 2}", segments={"lang": lang}
                )
                outcomes.append(event)
                hit = bool(rng.random() < good)
                base = {
                    "id": uuid.uuid4().hex,
                    "decision_id": event["decision_id"],
                    "ts": time.time() - 1,
                }
                if later == "feedback":
                    extra.append({**base, "score": 1 if hit else -1, "scale": "thumbs"})
                else:
                    extra.append({**base, "name": "task_completed", "value": int(hit)})
    send = feedback.feedback_ingest if later == "feedback" else metric_values.metrics_ingest
    for start in range(0, len(outcomes), 1000):
        batch = {"events": outcomes[start : start + 1000]}
        assert ingest.outcomes_ingest(identity=Everyone(), payload=batch).stored == len(
            batch["events"]
        )
    for start in range(0, len(extra), 1000):
        batch = {"events": extra[start : start + 1000]}
        assert send(identity=Everyone(), payload=batch).stored == len(batch["events"])


# The population drops by 0.14 (inside the tolerance of 0.2); Japanese users by 0.5.
JA_REGRESSES = {
    "en": {"control": (2500, 0.8), "candidate": (2500, 0.8)},
    "ja": {"control": (1000, 0.8), "candidate": (1000, 0.3)},
}


def population_verdict(evidence: dict[str, Any], metric: str) -> dict[str, Any]:
    return next(g["verdict"] for g in evidence["guardrails"] if g["metric"] == metric)


def test_a_segment_whose_satisfaction_regresses_rolls_back_while_the_population_is_fine() -> None:
    """Feedback counts in its outcome's segment (joined by decision id at ingest), and the
    satisfaction guardrail is tested per segment: a language whose users rate the candidate
    far worse rolls the plan back, named, though the population's drop is inside the
    tolerance."""
    plan = segmented_plan()
    ingest._plan_cache.clear()
    Guardrail.objects.create(
        plan=plan, metric="satisfaction", tolerance_kind="absolute", tolerance=0.2
    )
    send_traffic(plan, "feedback", JA_REGRESSES)
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert (result.action, result.acted) == ("rollback", True)
    event = AuditEvent.objects.get(plan=plan, action="rollback")
    assert "segment lang=ja regressed: satisfaction" in event.reason
    assert population_verdict(event.evidence, "satisfaction")["status"] != "regressed"
    ja = next(s for s in event.evidence["segments"] if s["value"] == "ja")
    verdict = next(g["verdict"] for g in ja["guardrails"] if g["metric"] == "satisfaction")
    assert verdict["status"] == "regressed" and verdict["upper"] < -0.2
    en = next(s for s in event.evidence["segments"] if s["value"] == "en")
    assert (
        next(g for g in en["guardrails"] if g["metric"] == "satisfaction")["verdict"]["status"]
        != "regressed"
    )
    assert "lang=ja" in str(AlertDelivery.objects.get(plan=plan).message)


def test_a_segment_whose_declared_rate_metric_regresses_is_excluded() -> None:
    """A declared rate metric sent on its own (``client.metric()``) counts in its outcome's
    segment: its guardrail is tested per segment, and with ``exclude`` the regressed
    language is excluded while the population (inside its tolerance) goes on."""
    plan = segmented_plan(segment_on_regression="exclude")
    ingest._plan_cache.clear()
    MetricDefinition.objects.create(plan=plan, name="task_completed")
    Guardrail.objects.create(
        plan=plan, metric="task_completed", tolerance_kind="absolute", tolerance=0.2
    )
    send_traffic(plan, "metric", JA_REGRESSES)
    result = engine.plan_evaluate(plan_id=plan.pk)
    assert result.action == "hold" and not result.acted
    evaluation = Evaluation.objects.get(pk=result.evaluation_id)
    assert population_verdict(evaluation.decision, "task_completed")["status"] != "regressed"
    assert any(
        "segment lang=ja regressed, excluded" in r and "task_completed" in r
        for r in evaluation.decision["reasons"]
    ), evaluation.decision["reasons"]
    assert segment_engine.excluded_segments(plan) == {("lang", "ja")}
    plan.refresh_from_db()
    assert plan.status == "running"
