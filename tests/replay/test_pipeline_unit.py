"""One replay unit (replay.pipeline.run_unit) with the call and the judge as functions: what is
called, the values each answer gets, and which errors are outages (never a failing candidate)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from migrations_app.models import DatasetItem, MigrationPlan, ModelSpec, ReplayCall, ReplayRun
from migrations_app.replay.pipeline import Outage, run_unit
from migrations_app.shadow.pipeline import CandidateResult


def _call(*, recorded: str | None, fresh: bool = False) -> ReplayCall:
    # Prices apart, so a cost booked to the wrong arm's model shows: $1 / $2 per million
    # tokens for the candidate, $10 / $20 for control.
    candidate = ModelSpec(input_price_per_mtok=Decimal("1"), output_price_per_mtok=Decimal("2"))
    control = ModelSpec(input_price_per_mtok=Decimal("10"), output_price_per_mtok=Decimal("20"))
    plan = MigrationPlan(
        key="p", answer_schema=None, candidate_model=candidate, control_model=control
    )
    run = ReplayRun(pk=1, plan=plan, fresh_baseline=fresh)
    item = DatasetItem(
        index=0, request={"messages": [{"role": "user", "content": "2+2?"}]}, reference="4",
        control_answer=recorded,
    )  # fmt: skip
    return ReplayCall(pk=5, replay=run, item=item, index=0, repeat=0)


def _arms(answers: dict[str, CandidateResult]) -> tuple[Any, list[str]]:
    called: list[str] = []

    def call_arm(plan: Any, arm: str, request: Any) -> CandidateResult:
        called.append(arm)
        return answers[arm]

    return call_arm, called


def _answer(text: str, error: str | None = None) -> CandidateResult:
    # 500 tokens in, 250 out: $0.001 at the candidate's prices, $0.01 at control's.
    return CandidateResult(
        text=text, latency_ms=10.0, error=error, input_tokens=500, output_tokens=250
    )


def test_recorded_control_is_not_called_and_the_judge_scores_the_pair():
    call_arm, called = _arms({"candidate": _answer("5")})
    seen: list[Any] = []

    def judge(pair: Any, result: CandidateResult) -> dict[str, Any]:
        seen.append((pair.control["text"], result.text, pair.pk))
        return {"winner": "control", "score": -1, "reason": "5 is wrong"}

    unit = run_unit(_call(recorded="4"), call_arm=call_arm, judge=judge)
    assert called == ["candidate"]
    assert seen == [("4", "5", "replay-1-5")]
    cand, ctrl = unit.values["candidate"], unit.values["control"]
    assert cand["exact_match"] == 0.0 and ctrl["exact_match"] == 1.0
    assert cand["agreement"] == 0.0 and cand["judge_preference"] == -1.0
    assert unit.judge["reason"] == "5 is wrong" and unit.cost == pytest.approx(0.001)


def test_fresh_baseline_calls_control_first():
    call_arm, called = _arms({"control": _answer("4"), "candidate": _answer("4")})
    unit = run_unit(_call(recorded="4", fresh=True), call_arm=call_arm, judge=lambda p, r: None)
    assert called == ["control", "candidate"]
    assert unit.values["candidate"]["agreement"] == 1.0
    assert unit.cost == pytest.approx(0.011)  # both calls, each at its own model's prices
    assert "judge_preference" not in unit.values["candidate"]


@pytest.mark.parametrize(("error", "transient"), [("server_error", True), ("timeout", True),
                                                  ("rate_limited", True), ("auth", False)])  # fmt: skip
def test_provider_errors_are_outages(error, transient):
    call_arm, _ = _arms({"candidate": _answer("", error)})
    with pytest.raises(Outage) as raised:
        run_unit(_call(recorded="4"), call_arm=call_arm, judge=lambda p, r: None)
    assert raised.value.transient is transient and error in raised.value.reason


def test_an_outage_of_control_is_an_outage_too():
    call_arm, called = _arms({"control": _answer("", "overloaded"), "candidate": _answer("4")})
    with pytest.raises(Outage):
        run_unit(_call(recorded=None), call_arm=call_arm, judge=lambda p, r: None)
    assert called == ["control"]


def test_an_answer_the_model_got_wrong_is_evaluated_not_an_outage():
    """invalid_output is the model's own failure: the answer checks count it."""
    call_arm, _ = _arms({"candidate": _answer("{not json", "invalid_output")})
    unit = run_unit(_call(recorded="4"), call_arm=call_arm, judge=lambda p, r: None)
    assert unit.values["candidate"]["exact_match"] == 0.0
