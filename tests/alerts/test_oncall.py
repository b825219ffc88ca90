"""Engine evidence to a page: subject, dedup key, severity, the verdict and error kinds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from migrations_app.alerts import oncall
from migrations_app.guardrails.engine import _evidence
from migrations_app.guardrails.rules import GuardrailSpec, PlanSettings, StageState, evaluate_plan
from tests.guardrails.conftest import synthetic_arm

AT = datetime(2026, 11, 23, 14, 2, 7, tzinfo=UTC)


class _Stage:
    pk, kind, phase_index, step_index, weight_bp, started_at = 7, "ab_split", 1, 0, 5000, AT


class _Plan:
    version = 12


def evidence_for(control_rate: float, candidate_rate: float) -> dict:
    control = synthetic_arm(1, 20_000, error_rate=control_rate)
    candidate = synthetic_arm(2, 20_000, error_rate=candidate_rate)
    decision = evaluate_plan(
        guardrails=[GuardrailSpec("error_rate", 1.5), GuardrailSpec("latency_p95", 1.3)],
        settings=PlanSettings(),
        stage=StageState(expected_share=0.5),
        control=control,
        candidate=candidate,
    )
    return _evidence(_Plan(), _Stage(), decision, {"control": control, "candidate": candidate})


def page(action: str, evidence: dict, about: str | None = None):
    return oncall.alert_message(
        action=action, plan_key="support-chat", plan_name="Support chat", run=3,
        control_model="gpt-4o", candidate_model="claude-sonnet-4", evidence=evidence,
        reason="Rolled back by the engine", at=AT,
        dashboard_url="http://turnout/plans/support-chat/", about=about,
    )  # fmt: skip


def test_a_rollback_page_carries_the_regressed_guardrail_and_error_kinds():
    evidence = evidence_for(0.02, 0.06)
    message = page("rollback", evidence)
    assert (message.event, message.severity, message.resolve) == ("rolled_back", "critical", False)
    assert message.dedup_key == "turnout:support-chat:3:error_rate"
    assert message.guardrail is not None and message.guardrail.metric == "error_rate"
    assert message.guardrail.lower > 1.5
    assert "regressed" in message.guardrail.summary
    candidate_errors = evidence["arms"]["candidate"]["errors"]
    assert dict(message.error_kinds_candidate) == {"server_error": candidate_errors}
    assert message.acted_at == "2026-11-23T14:02:07Z"


def test_recovery_and_escalation_fold_into_the_rollback_incident():
    rollback = page("rollback", evidence_for(0.02, 0.06))
    recovered = page("recovered", {"arms": {}}, about="error_rate")
    escalated = page("escalated", {"arms": {}}, about="error_rate")
    assert rollback.dedup_key == recovered.dedup_key == escalated.dedup_key
    assert (recovered.event, recovered.severity, recovered.resolve) == ("recovered", "info", True)
    assert (escalated.event, escalated.severity) == ("escalated", "critical")


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        ({"circuit_breaker": True, "guardrails": []}, "circuit_breaker"),
        ({"sample_ratio": {"mismatch": True}, "guardrails": []}, "sample_ratio"),
        ({"guardrails": []}, "plan"),
    ],
)
def test_subject_without_a_guardrail(evidence, expected):
    assert oncall.subject(evidence) == expected


def test_a_rollback_page_is_about_the_guardrail_that_rolled_back():
    """Seen in make demo: the error rate only warned, p95 latency regressed and rolled back;
    the page must headline latency, not the first guardrail that asked for anything."""
    evidence = {
        "circuit_breaker": None,
        "guardrails": [
            {"metric": "error_rate", "wants": "alert"},
            {"metric": "cost_per_request", "wants": "pause"},
            {"metric": "latency_p95", "wants": "rollback"},
        ],
    }
    assert oncall.subject(evidence) == "latency_p95"
    evidence["guardrails"][2]["wants"] = "hold"
    assert oncall.subject(evidence) == "cost_per_request"
    assert oncall.subject({**evidence, "circuit_breaker": "candidate errors 30 %"}) == (
        "circuit_breaker"
    )


def test_an_exclusion_page_is_an_incident_of_its_own():
    """Seen in the suite under load: the error rate warned first (a page about error_rate),
    then the engine excluded tenant t3 on the same guardrail; that page had the warning's
    dedup key, folded into it, and no one heard which tenant left."""
    warning = evidence_for(0.02, 0.035)
    excluded = {**warning, "excluded": [{"dimension": "tenant", "value": "t3", "rules": [7]}]}
    assert page("alert", warning).dedup_key == "turnout:support-chat:3:error_rate"
    message = page("alert", excluded)
    assert message.dedup_key == "turnout:support-chat:3:error_rate:excluded:tenant=t3"
    assert message.guardrail is not None and message.guardrail.metric == "error_rate"
    # A rollback stays the guardrail's incident (its recovery page folds into it).
    assert page("rollback", excluded).dedup_key == "turnout:support-chat:3:error_rate"
