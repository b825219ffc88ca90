"""The plan-level rules with change detection (change_rules.with_change), pure: a regression that
starts after hours of health rolls back while the running totals still look fine, the verdict
says since when, and the detector respects the guardrail's minimum and alert-only setting."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from migrations_app.guardrails import rules
from migrations_app.guardrails.stats import ArmAggregates, ClusterSums, changes, detector

START = datetime(2025, 6, 2, 4, 0, tzinfo=UTC)
GUARDRAILS = [rules.GuardrailSpec("error_rate", 1.5, "relative")]
STAGE = rules.StageState(mode="split", expected_share=0.5, min_samples=0)


def counts(rng: np.random.Generator, n: int, p: float) -> ArmAggregates:
    e = int(rng.binomial(n, p))
    return ArmAggregates(requests=n, errors=e, error_clusters=ClusterSums(n, e, e, n, e, e, n))


def stage(rng, healthy: int, regressed: int) -> list[changes.Window]:
    return [
        changes.Window(
            w, counts(rng, 1500, 0.02), counts(rng, 1500, 0.06 if w >= healthy else 0.02)
        )
        for w in range(healthy + regressed)
    ]


def look(windows, guardrails=GUARDRAILS, states=None):
    control = ArmAggregates.merge(w.control for w in windows)
    candidate = ArmAggregates.merge(w.candidate for w in windows)
    given = changes.Windows(
        committed=windows[:-2], recent=windows[-2:], stage_start=START,
        states=states or {}, planned_minutes=600,
    )  # fmt: skip
    return rules.evaluate_plan(
        guardrails=guardrails, settings=rules.PlanSettings(), stage=STAGE, control=control,
        candidate=candidate, windows=given,
    )  # fmt: skip


def test_a_late_regression_rolls_back_while_the_totals_look_fine():
    rng = np.random.default_rng(7)
    windows = stage(rng, 600, 5)
    decision = look(windows)
    (result,) = decision.results
    assert decision.action == "rollback"
    assert result.wants == "rollback" and result.verdict.status == "regressed"
    assert (
        result.verdict.summary.startswith("change detected: candidate error rate has been")
        and "since 14:0" in result.verdict.summary
    )
    assert any(n.startswith("over the whole stage: ") for n in result.verdict.notes)
    assert result.change is not None and result.change.at.startswith("2025-06-02T14:0")
    assert result.to_dict()["change"]["since"] == result.change.at
    # The running totals alone: not regressed (10 h of health dilute 5 minutes of 3x).
    alone = rules.evaluate_plan(
        guardrails=GUARDRAILS, settings=rules.PlanSettings(), stage=STAGE,
        control=ArmAggregates.merge(w.control for w in windows),
        candidate=ArmAggregates.merge(w.candidate for w in windows),
    )  # fmt: skip
    assert alone.action != "rollback" and not alone.detectors
    # The detector's state covers the committed windows only.
    assert decision.detectors["error_rate"].committed == 602


def test_a_healthy_stage_hands_back_the_state_and_advances():
    rng = np.random.default_rng(8)
    decision = look(stage(rng, 300, 0))
    assert decision.action == "advance"
    (result,) = decision.results
    assert result.change is None and "change" not in result.to_dict()
    state = decision.detectors["error_rate"]
    assert state.windows == 298 and detector.DetectorState.from_dict(state.to_dict()) == state


def test_below_the_guardrails_minimum_the_detector_only_watches():
    rng = np.random.default_rng(9)
    watched = [rules.GuardrailSpec("error_rate", 1.5, "relative", min_samples=10_000_000)]
    decision = look(stage(rng, 600, 5), guardrails=watched)
    assert decision.action == "hold" and decision.results[0].change is None


def test_an_alert_only_guardrail_alerts_on_a_change():
    rng = np.random.default_rng(10)
    alerting = [rules.GuardrailSpec("error_rate", 1.5, "relative", alert_only="judge untrusted")]
    decision = look(stage(rng, 600, 5), guardrails=alerting)
    assert decision.action == "alert" and decision.results[0].verdict.status == "regressed"
