"""The judge on shadow pairs (issue 15, item 3): each verdict becomes the pair's value of the
paired ``judge_preference`` metric (per unit, for the user-level variance), a verdict that
cannot be read is stored as unparsed and counted in neither direction, and the judge's calls
keep to their own daily budget, counted. Through the real pipeline, the vendor SDKs and the
provider simulator's simulated judge."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from turnout.providers import Adapters

from migrations_app.models import (
    JudgeSpend,
    ModelSpec,
    ProviderConnection,
    ShadowAggregate,
    ShadowSample,
)
from migrations_app.shadow import calls, pipeline
from migrations_app.shadow.judge import compare_answers
from migrations_app.shadow.selectors import paired_metrics
from migrations_app.simulator import Simulator
from tests.shadow.test_shadow import ingest, sample, shadow_plan

pytestmark = pytest.mark.django_db

CANDIDATE = "claude-sonnet-4-20250514"
JUDGE = "gpt-4o-mini-2024-07-18"
QUESTION = "My order 1234 never arrived."
GOOD = f"You said: {QUESTION}"  # what the simulator's echo answers, and control here


@pytest.fixture
def at_simulator(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    ProviderConnection.objects.filter(name="anthropic").update(base_url=sim.url)
    ProviderConnection.objects.filter(name="openai").update(base_url=f"{sim.url}/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-judge")
    monkeypatch.setattr(calls, "_adapters", Adapters())
    sim.set_profile(JUDGE, {"answer": "judge"})
    return sim


def judged_plan(**fields):
    return shadow_plan(judge_model=ModelSpec.objects.get(model_id=JUDGE), **fields)


def run(plan, n: int, units: int | None = None) -> list[str]:
    events = []
    for i in range(n):
        event = sample(plan, control={"text": GOOD, "latency_ms": 900.0, "error": None,
                                      "input_tokens": 40, "output_tokens": 12})  # fmt: skip
        if units:
            event["unit"] = f"user-{i % units}"
        events.append(event)
    ingest(*events)
    ids = [e["id"] for e in events]
    counts = pipeline.shadow_run(ids, call=calls.provider_call, compare=compare_answers)
    assert counts["done"] == n
    return ids


def checks_of(s: ShadowSample) -> dict[str, list[float]]:
    """The pair's answer checks as paired values, (control, candidate) for each check both have."""
    control, candidate = s.comparison["checks"]["control"], s.comparison["checks"]["candidate"]
    assert {"refusal", "empty_answer", "answer_chars"} <= set(control) & set(candidate)
    return {k: [float(control[k]), float(candidate[k])] for k in control if k in candidate}


def test_a_worse_candidate_becomes_a_paired_preference_per_unit(at_simulator: Simulator) -> None:
    """The candidate answers wrong 3 times in 4 (quality 0.25), the judge reads it right: the
    pairs' preference is the loss rate, kept per unit (5 users) for the variance."""
    at_simulator.set_profile(CANDIDATE, {"quality": 0.25})
    plan = judged_plan()
    run(plan, 40, units=5)
    stored = list(ShadowSample.objects.filter(plan=plan))
    scores = [s.comparison["judge"]["score"] for s in stored]
    assert set(scores) <= {-1.0, 0.0} and scores.count(-1.0) >= 20
    for s in stored:
        assert s.comparison["judge"]["candidate_position"] in ("A", "B")  # the order stored
        paired = s.comparison["paired"]
        assert paired["judge_preference"] == [0.0, s.comparison["judge"]["score"]]
        # beside it only the answer checks of both answers (tests/shadow/test_answer_checks.py)
        assert {k: v for k, v in paired.items() if k != "judge_preference"} == checks_of(s)
    pairs = paired_metrics(plan.current_stage)["judge_preference"]
    assert pairs.n == 40 and pairs.difference.total == sum(scores)
    assert pairs.difference.clusters.units == 5  # per user, not per pair
    assert pairs.control.total == 0.0
    data = ShadowAggregate.objects.get(stage=plan.current_stage).data
    assert data["judge_control"] == scores.count(-1.0) and data["judge_tie"] == scores.count(0.0)
    assert data["judge_decisive"] == data["judge_control"]
    assert 0 < data["judge_first"] < data["judge_decisive"]  # the order varies per pair


def test_an_unparsable_verdict_is_stored_and_counted_in_neither_direction(
    at_simulator: Simulator,
) -> None:
    at_simulator.set_profile(JUDGE, {"answer": "judge", "judge_unparsable": 1.0})
    at_simulator.set_profile(CANDIDATE, {"quality": 0.0})
    plan = judged_plan()
    run(plan, 6)
    for s in ShadowSample.objects.filter(plan=plan):
        verdict = s.comparison["judge"]
        assert (verdict["winner"], verdict["error"], verdict["score"]) == (
            "invalid", "unparsable", None,
        )  # fmt: skip
        # no preference for the pair; its answers are still checked (both answered)
        assert s.comparison["paired"] == checks_of(s)
    data = ShadowAggregate.objects.get(stage=plan.current_stage).data
    assert data["judge_unparsed"] == 6 and data["n"] == 6
    assert "judge_control" not in data and "judge_candidate" not in data
    assert "judge_preference" not in paired_metrics(plan.current_stage)


def today(plan) -> JudgeSpend:
    return JudgeSpend.objects.get(plan=plan, day=datetime.now(UTC).date())


def test_the_judges_calls_are_counted_and_cost_what_their_tokens_say(
    at_simulator: Simulator,
) -> None:
    plan = judged_plan()
    run(plan, 10)
    spend = today(plan)
    verdicts = [s.comparison["judge"] for s in ShadowSample.objects.filter(plan=plan)]
    judge = ModelSpec.objects.get(model_id=JUDGE)
    real = sum(
        (v["input_tokens"] * float(judge.input_price_per_mtok)
         + v["output_tokens"] * float(judge.output_price_per_mtok)) / 1e6
        for v in verdicts
    )  # fmt: skip
    assert (spend.calls, spend.skipped) == (10, 0)
    assert spend.cost_usd == pytest.approx(real)  # reservations settled to the real cost
    assert at_simulator.stats()["models"][JUDGE]["requests"] == 10


def test_the_judge_stops_at_its_daily_budget(at_simulator: Simulator) -> None:
    """Room for about three calls: the others are not made, their pairs are still compared
    and counted, without a verdict; the day's row says how many were skipped. (A judge priced
    so that one call costs dollars: the budget is set in cents.)"""
    judge = ModelSpec.objects.get(model_id=JUDGE)
    ModelSpec.objects.filter(pk=judge.pk).update(
        input_price_per_mtok=Decimal("10000"), output_price_per_mtok=Decimal("10000")
    )
    probe = judged_plan()  # a reservation's size, measured on an unlimited plan first
    run(probe, 1)
    one_call = JudgeSpend.objects.get(plan=probe).cost_usd
    assert one_call > 0.5
    plan = judged_plan(judge_budget_usd_per_day=Decimal(f"{one_call * 3.5:.2f}"))
    before = at_simulator.stats()["models"][JUDGE]["requests"]
    run(plan, 10)
    spend = today(plan)
    made = at_simulator.stats()["models"][JUDGE]["requests"] - before
    assert 2 <= made <= 4 and spend.calls == made and spend.skipped == 10 - made
    assert spend.cost_usd <= float(plan.judge_budget_usd_per_day) + one_call
    budget = [
        s
        for s in ShadowSample.objects.filter(plan=plan)
        if s.comparison["judge"]["error"] == "budget"
    ]
    assert len(budget) == 10 - made
    assert all(s.comparison["judge"]["winner"] == "invalid" for s in budget)
    data = ShadowAggregate.objects.get(stage=plan.current_stage).data
    assert data["n"] == 10 and data["judge_budget"] == 10 - made
    assert paired_metrics(plan.current_stage)["judge_preference"].n == made
