"""The shadow pipeline's candidate call through the real vendor SDK, against the simulator:
the plan's arm as the snapshot gives it, the provider's shared call limit, and what happens
when the workers cannot call the candidate at all."""

from __future__ import annotations

import pytest
from turnout.providers import Adapters

from migrations_app.models import (
    ModelSpec,
    ProviderConnection,
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
)
from migrations_app.shadow import calls, claims, pipeline, provider_limits
from migrations_app.shadow.judge import compare_answers
from migrations_app.simulator import Simulator
from tests.shadow.test_shadow import ingest, same, sample, shadow_plan

pytestmark = pytest.mark.django_db

CANDIDATE = "claude-sonnet-4-20250514"


@pytest.fixture
def candidate_at_simulator(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    ProviderConnection.objects.filter(name="anthropic").update(base_url=sim.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setattr(calls, "_adapters", Adapters())  # adapters for this simulator
    return sim


def test_the_candidate_is_called_through_its_adapter_with_the_arms_settings(
    candidate_at_simulator: Simulator,
) -> None:
    plan = shadow_plan(
        candidate_params={"temperature": 0.7, "max_tokens": 300},
        candidate_prompt_mode="suffix",
        candidate_prompt_text="Answer in one sentence.",
    )
    events = [sample(plan) for _ in range(12)]
    ingest(*events)
    counts = pipeline.shadow_run([e["id"] for e in events], call=calls.provider_call, compare=same)
    assert counts == {
        "claimed": 12, "done": 12, "lost": 0, "released": 0, "skipped": 0, "failed": 0
    }  # fmt: skip
    assert candidate_at_simulator.stats()["models"][CANDIDATE]["requests"] == 12

    wire = candidate_at_simulator.last_request(CANDIDATE)
    assert wire is not None
    # The system prompt with the arm's suffix; the candidate's own params win over the app's.
    assert wire.system == "You are a support agent.\n\nAnswer in one sentence."
    assert wire.body["temperature"] == 0.7 and wire.body["max_tokens"] == 300
    stored = ShadowSample.objects.get(pk=events[0]["id"])
    assert stored.status == ShadowStatus.DONE
    assert stored.candidate["text"] and stored.candidate["error"] is None
    assert stored.candidate["input_tokens"] > 0 and stored.candidate["output_tokens"] > 0
    # Priced from the catalog ($3 in, $15 out per 1M tokens for Claude Sonnet 4).
    expected = (
        stored.candidate["input_tokens"] * 3.0 + stored.candidate["output_tokens"] * 15.0
    ) / 1e6
    assert stored.candidate_cost_usd == pytest.approx(expected)
    assert ShadowAggregate.objects.get(stage=plan.current_stage).data["n"] == 12


def test_vendor_errors_are_candidate_failures(candidate_at_simulator: Simulator) -> None:
    candidate_at_simulator.set_profile(CANDIDATE, {"fail_next": ["auth"]})  # not retried
    plan = shadow_plan()
    event = sample(plan)
    ingest(event)
    pipeline.shadow_run([event["id"]], call=calls.provider_call, compare=same)
    stored = ShadowSample.objects.get(pk=event["id"])
    assert (stored.status, stored.candidate["error"]) == (ShadowStatus.DONE, "auth")
    assert ShadowAggregate.objects.get(stage=plan.current_stage).data["candidate_only"] == 1


def test_calls_stay_inside_the_providers_shared_limit(candidate_at_simulator: Simulator) -> None:
    ProviderConnection.objects.filter(name="anthropic").update(max_concurrent_calls=3)
    candidate_at_simulator.set_profile(CANDIDATE, {"latency_median_ms": 40, "latency_p95_ms": 60})
    plan = shadow_plan()
    events = [sample(plan) for _ in range(24)]
    ingest(*events)
    counts = pipeline.shadow_run(
        [e["id"] for e in events], call=calls.provider_call, compare=same, concurrency=12
    )
    assert counts["done"] == 24
    assert 2 <= candidate_at_simulator.stats()["peak_in_flight"] <= 3


def test_no_free_slot_gives_the_sample_back_untouched(
    candidate_at_simulator: Simulator, settings
) -> None:
    settings.TURNOUT_SHADOW_LEASE_SECONDS = 0.4  # the slot wait is a quarter of the lease
    ProviderConnection.objects.filter(name="anthropic").update(max_concurrent_calls=1)
    provider_limits._try_redis(provider_limits.Limit("anthropic", 1), "another-worker", 30.0)
    try:
        plan = shadow_plan()
        event = sample(plan)
        ingest(event)
        counts = pipeline.shadow_run([event["id"]], call=calls.provider_call, compare=same)
    finally:
        provider_limits._release_redis(provider_limits.Limit("anthropic", 1), "another-worker")
    assert counts["released"] == 1
    stored = ShadowSample.objects.get(pk=event["id"])
    assert (stored.status, stored.lease_until, stored.candidate_cost_usd) == (
        ShadowStatus.PENDING,
        None,
        None,
    )
    assert candidate_at_simulator.stats()["requests"] == 0
    # The next attempt, with the slot free, completes it.
    again = pipeline.shadow_run([event["id"]], call=calls.provider_call, compare=same)
    assert again["done"] == 1


def test_a_candidate_the_workers_cannot_call_is_skipped_with_the_reason(
    candidate_at_simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    plan = shadow_plan()
    event = sample(plan)
    ingest(event)
    counts = pipeline.shadow_run([event["id"]], call=calls.provider_call, compare=same)
    assert counts["skipped"] == 1
    stored = ShadowSample.objects.get(pk=event["id"])
    assert stored.status == ShadowStatus.SKIPPED
    assert "ANTHROPIC_API_KEY" in stored.skip_reason
    assert not ShadowAggregate.objects.filter(stage=plan.current_stage).exists()


def test_the_plans_judge_says_which_answer_is_better_in_a_random_order(
    candidate_at_simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulator's judge always says "A" (the first allowed value of the verdict's
    schema): a judge with total position bias. Randomising the order cancels it: the
    candidate wins exactly when it was shown first, about half the pairs."""
    ProviderConnection.objects.filter(name="openai").update(
        base_url=f"{candidate_at_simulator.url}/v1"
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-judge")
    judge = ModelSpec.objects.get(model_id="gpt-4o-mini-2024-07-18")
    plan = shadow_plan(judge_model=judge)
    events = [sample(plan) for _ in range(40)]
    ingest(*events)
    counts = pipeline.shadow_run(
        [e["id"] for e in events], call=calls.provider_call, compare=compare_answers
    )
    assert counts["done"] == 40
    assert candidate_at_simulator.stats()["models"][judge.model_id]["requests"] == 40
    verdicts = [s.comparison["judge"] for s in ShadowSample.objects.filter(plan=plan)]
    for v in verdicts:
        assert v["judge_winner"] == "A"
        assert v["winner"] == ("candidate" if v["candidate_position"] == "A" else "control")
    first = sum(v["candidate_position"] == "A" for v in verdicts)
    assert 10 <= first <= 30
    data = ShadowAggregate.objects.get(stage=plan.current_stage).data
    assert data["judge_score_n"] == 40
    assert data["judge_score_sum"] == pytest.approx(first - (40 - first))


def test_a_judge_that_cannot_be_called_leaves_the_pair_counted(
    candidate_at_simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = ModelSpec.objects.get(model_id="gpt-4o-mini-2024-07-18")
    plan = shadow_plan(judge_model=judge)
    event = sample(plan)
    ingest(event)
    pipeline.shadow_run([event["id"]], call=calls.provider_call, compare=compare_answers)
    stored = ShadowSample.objects.get(pk=event["id"])
    assert stored.status == ShadowStatus.DONE
    assert stored.comparison["judge"]["error"] == "not_called"
    assert "OPENAI_API_KEY" in stored.comparison["judge"]["reason"]
    data = ShadowAggregate.objects.get(stage=plan.current_stage).data
    assert data["n"] == 1 and "judge_score_n" not in data
    assert data["similarity_n"] == 1


def stored_sample(plan, params: dict) -> str:
    """A sample as a report key could store it before params were checked at ingest."""
    event = sample(plan)
    ingest(event)
    ShadowSample.objects.filter(pk=event["id"]).update(
        request={**event["request"], "params": params}
    )
    return str(event["id"])


def test_a_sample_with_params_the_vendor_sdk_refuses_fails_alone_without_a_call(
    candidate_at_simulator: Simulator,
) -> None:
    """``{"timeout": 1}`` went to the vendor SDK as a second ``timeout`` keyword: TypeError,
    and the batch's other answers (called and paid for) were thrown away, again at each
    sweep. The worker checks a stored sample's params too: the bad one fails, unsent."""
    plan = shadow_plan()
    bad = stored_sample(plan, {"timeout": 1, "temperature": 0.3})
    good = [e["id"] for e in (sample(plan) for _ in range(5)) if ingest(e).stored]
    counts = pipeline.shadow_run([bad, *good], call=calls.provider_call, compare=same)
    assert counts["done"] == 5 and counts["failed"] == 1
    assert candidate_at_simulator.stats()["models"][CANDIDATE]["requests"] == 5
    failed = ShadowSample.objects.get(pk=bad)
    assert failed.status == ShadowStatus.FAILED
    assert "timeout" in failed.skip_reason and failed.candidate_cost_usd is None
    assert ShadowAggregate.objects.get(stage=plan.current_stage).data["n"] == 5
    assert claims.shadow_sweep() == []  # nothing left for the sweeper to repeat


def test_the_applications_max_tokens_reaches_the_candidate_at_most_its_maximum_output(
    candidate_at_simulator: Simulator,
) -> None:
    """A sample's max_tokens (the application's own setting for control) is replayed to a
    candidate whose arm sets none, lowered to the candidate model's maximum output."""
    plan = shadow_plan(candidate_params={"temperature": 0.7})
    ceiling = plan.candidate_model.max_output_tokens
    for sent, expected in ((77, 77), (ceiling + 1000, ceiling)):
        event = sample(plan)
        event["request"]["params"] = {"max_tokens": sent}
        assert ingest(event).stored == 1
        pipeline.shadow_run([event["id"]], call=calls.provider_call, compare=same)
        wire = candidate_at_simulator.last_request(CANDIDATE)
        assert wire is not None and wire.body["max_tokens"] == expected
