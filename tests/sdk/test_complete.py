"""Client.complete() against the provider simulator (real vendor SDKs over HTTP) and the
stand-in control plane: the requests the simulator received, and the outcomes and shadow
samples the client sent."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import turnout
from turnout import routing
from turnout.errors import SnapshotError
from turnout.providers import RetryPolicy

from migrations_app.simulator import Simulator
from tests.sdk.conftest import FakeTurnout, plan_entry

CONTROL = "sim-control"
CANDIDATE = "sim-candidate"
KEY_ENV = "TURNOUT_TEST_SIM_KEY"
# Two attempts, waits of at most 20 ms: the retry policy as in production, only shorter.
RETRY = RetryPolicy(max_attempts=2, base_s=0.01, max_backoff_s=0.02, max_total_s=5.0)
HELLO = [{"role": "user", "content": "What is the capital of France?"}]

MakeClient = Callable[..., turnout.Client]


def sim_arm(
    sim: Simulator,
    model: str,
    kind: str = "openai",
    *,
    prompt: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    context_window: int | None = None,
    key_env: str = KEY_ENV,
) -> dict[str, Any]:
    arm: dict[str, Any] = {
        "provider": kind,
        "kind": kind,
        "base_url": sim.url + ("" if kind in ("anthropic", "gemini") else "/v1"),
        "api_key_env": key_env,
        "model": model,
        "params": params or {},
        "prompt": prompt or {"mode": "none", "text": ""},
    }
    if context_window is not None:
        arm["context_window"] = context_window
    return arm


@pytest.fixture
def setup(
    fake: FakeTurnout, make_client: MakeClient, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., turnout.Client]:
    """``setup(weight_bp=..., shadow_bp=..., candidate=..., fallback=...)``: the plan "chat"
    with both arms at the simulator, and a client holding its snapshot."""
    monkeypatch.setenv(KEY_ENV, "sk-sim")

    def build(
        *,
        weight_bp: int = 0,
        shadow_bp: int = 0,
        status: str = "running",
        control: dict[str, Any] | None = None,
        candidate: dict[str, Any] | None = None,
        fallback: bool | None = None,
        answer_schema: dict[str, Any] | None = None,
    ) -> turnout.Client:
        entry = plan_entry(status=status, weight_bp=weight_bp, shadow_bp=shadow_bp)
        if answer_schema is not None:
            entry["answer_schema"] = answer_schema
        entry["control"] = control or sim_arm(sim, CONTROL)
        entry["candidate"] = candidate or sim_arm(sim, CANDIDATE)
        if fallback is not None:
            entry["fallback_to_control"] = fallback
        fake.set_plans([entry])
        client = make_client(stream=False, provider_retry=RETRY)
        assert client.snapshot_version == fake.version
        return client

    return build


def sent(client: turnout.Client, fake: FakeTurnout, kind: str = "outcomes") -> list[dict[str, Any]]:
    assert client.flush(5.0)
    return list(fake.stored[kind])


def requests_for(sim: Simulator, model: str) -> int:
    return int(sim.stats()["models"].get(model, {}).get("requests", 0))


# --- the arm the decision names ------------------------------------------------------------


def test_control_served(setup: Any, sim: Simulator, fake: FakeTurnout) -> None:
    client = setup(weight_bp=0)
    answer = client.complete("chat", "user-1", messages=HELLO)
    assert answer.ok and answer.text == "You said: What is the capital of France?"
    assert str(answer) == answer.text
    assert (answer.arm, answer.model, answer.fell_back) == ("control", CONTROL, False)
    assert answer.decision.arm == "control" and answer.decision.reason == "SPLIT"
    assert sim.last_request(CONTROL).last == HELLO[0]["content"]  # type: ignore[union-attr]
    assert requests_for(sim, CANDIDATE) == 0
    (outcome,) = sent(client, fake)
    result = answer.result
    assert result is not None and result.input_tokens is not None
    assert outcome["arm"] == "control" and outcome["error"] is None and "fallback" not in outcome
    assert outcome["decision_id"] == answer.decision_id and outcome["unit"] == "user-1"
    assert (outcome["input_tokens"], outcome["output_tokens"]) == (
        result.input_tokens,
        result.output_tokens,
    )
    assert outcome["latency_ms"] == pytest.approx(result.latency_ms) and outcome["latency_ms"] > 0
    assert fake.stored["shadow"] == []


def test_candidate_served_through_its_own_vendor(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    client = setup(weight_bp=10_000, candidate=sim_arm(sim, CANDIDATE, "anthropic"))
    answer = client.complete("chat", "user-2", messages=HELLO)
    assert answer.ok and (answer.arm, answer.model) == ("candidate", CANDIDATE)
    assert answer.text.endswith("capital of France?")
    assert sim.stats()["models"][CANDIDATE]["route:anthropic"] == 1
    assert requests_for(sim, CONTROL) == 0
    (outcome,) = sent(client, fake)
    assert outcome["arm"] == "candidate" and outcome["error"] is None
    assert outcome["input_tokens"] == answer.results[0].input_tokens is not None


def test_the_arms_prompt_adjustment_and_params_are_applied(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    control = sim_arm(sim, CONTROL, prompt={"mode": "override", "text": "You are terse."})
    candidate = sim_arm(
        sim,
        CANDIDATE,
        prompt={"mode": "suffix", "text": "Answer in French."},
        params={"max_tokens": 77, "temperature": 0.1},
    )
    client = setup(weight_bp=5_000, control=control, candidate=candidate)
    messages = [{"role": "system", "content": "You are helpful."}, *HELLO]
    units = {client.decide("chat", f"u{i}").arm: f"u{i}" for i in range(50)}
    params = {"temperature": 0.9, "top_p": 0.5}
    on_candidate = client.complete("chat", units["candidate"], messages=messages, params=params)
    on_control = client.complete("chat", units["control"], messages=messages, params=params)
    assert on_candidate.arm == "candidate" and on_control.arm == "control"
    seen = sim.last_request(CANDIDATE)
    assert seen is not None and seen.system == "You are helpful.\n\nAnswer in French."
    # The arm's params win over the application's; the application's fill the rest.
    assert (seen.body["max_tokens"], seen.body["temperature"], seen.body["top_p"]) == (77, 0.1, 0.5)
    seen = sim.last_request(CONTROL)
    assert seen is not None and seen.system == "You are terse."
    assert (seen.body["temperature"], seen.body["top_p"]) == (0.9, 0.5)


def test_a_shadow_decision_sends_the_request_with_the_production_answer(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    control = sim_arm(sim, CONTROL, prompt={"mode": "suffix", "text": "Be brief."})
    client = setup(weight_bp=0, shadow_bp=10_000, control=control)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    answer = client.complete(
        "chat", "user-3", messages=HELLO, params={"temperature": 0.3}, json_schema=schema
    )
    assert answer.ok and answer.arm == "control" and answer.decision.shadow
    assert requests_for(sim, CANDIDATE) == 0  # the server's workers call the candidate
    (sample,) = sent(client, fake, "shadow")
    # The application's request, not control's adjusted one: the worker applies the
    # candidate's own adjustment.
    assert sample["request"] == {
        "messages": HELLO,
        "params": {"temperature": 0.3},
        "json_schema": schema,
    }
    assert sample["decision_id"] == answer.decision_id and sample["unit"] == "user-3"
    control_side = sample["control"]
    assert control_side["text"] == answer.text and '"city"' in answer.text
    assert control_side["error"] is None
    assert control_side["input_tokens"] == answer.results[0].input_tokens
    assert control_side["latency_ms"] == pytest.approx(answer.results[0].latency_ms)
    (outcome,) = fake.stored["outcomes"]
    assert outcome["arm"] == "control" and outcome["decision_id"] == answer.decision_id


def test_no_shadow_sample_without_a_shadow_decision(setup: Any, fake: FakeTurnout) -> None:
    client = setup(weight_bp=0, shadow_bp=0)
    assert client.complete("chat", "user-3", messages=HELLO).ok
    assert len(sent(client, fake)) == 1 and fake.stored["shadow"] == []


def test_streaming_measures_the_time_to_first_token(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    client = setup(weight_bp=0)
    answer = client.complete("chat", "user-4", messages=HELLO, stream=True)
    seen = sim.last_request(CONTROL)
    assert answer.ok and seen is not None and seen.stream
    (outcome,) = sent(client, fake)
    assert outcome["ttft_ms"] is not None and 0 < outcome["ttft_ms"] <= outcome["latency_ms"]


# --- fallback ----------------------------------------------------------------------------


def test_a_transient_candidate_failure_falls_back_and_both_are_recorded(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    client = setup(weight_bp=10_000)
    sim.set_profile(CANDIDATE, {"errors": {"server_error": 1.0}})
    answer = client.complete("chat", "user-5", messages=HELLO)
    assert answer.ok and answer.text == "You said: What is the capital of France?"
    assert (answer.arm, answer.model, answer.decision.arm) == ("control", CONTROL, "candidate")
    assert answer.fell_back and answer.fallback_reason == turnout.FALLBACK_CANDIDATE_ERROR
    failed, served = answer.results
    assert (failed.error, failed.transient, failed.attempts) == ("server_error", True, 2)
    assert served.ok and served.model == CONTROL
    assert requests_for(sim, CANDIDATE) == 2 and requests_for(sim, CONTROL) == 1
    candidate, fallback = sent(client, fake)
    # The candidate's failure, counted as its error...
    assert (candidate["arm"], candidate["error"]) == ("candidate", "server_error")
    assert "fallback" not in candidate
    # ...and control's answer, marked so that the server counts it in neither arm.
    assert (fallback["arm"], fallback["error"], fallback["fallback"]) == (
        "control",
        None,
        "candidate_error",
    )
    assert fallback["decision_id"] == candidate["decision_id"] == answer.decision_id
    assert fallback["unit"] == candidate["unit"] == "user-5"
    assert fallback["input_tokens"] == served.input_tokens is not None


def test_a_non_transient_candidate_failure_is_returned_without_fallback(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    client = setup(weight_bp=10_000)
    # A 429 that says the account is out of credit: rate_limited, but not worth retrying.
    sim.set_profile(CANDIDATE, {"errors": {"quota": 1.0}})
    answer = client.complete("chat", "user-6", messages=HELLO)
    assert not answer.ok and answer.text == "" and not answer.fell_back
    assert (answer.error, answer.arm) == ("rate_limited", "candidate")
    assert "quota" in answer.error_message
    (result,) = answer.results
    assert not result.transient and result.attempts == 1
    assert requests_for(sim, CONTROL) == 0
    (outcome,) = sent(client, fake)
    assert (outcome["arm"], outcome["error"]) == ("candidate", "rate_limited")


def test_an_invalid_json_answer_is_not_a_reason_to_fall_back(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    client = setup(weight_bp=10_000)
    sim.set_profile(CANDIDATE, {"answer": "degraded"})
    answer = client.complete("chat", "user-6", messages=HELLO, json_schema={})
    assert answer.error == "invalid_output" and answer.text == "" and not answer.fell_back
    assert answer.results[0].text  # the unparsable answer is kept in the result
    assert requests_for(sim, CONTROL) == 0
    assert [o["error"] for o in sent(client, fake)] == ["invalid_output"]


def test_with_the_fallback_setting_off_the_candidates_error_is_returned(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    client = setup(weight_bp=10_000, fallback=False)
    assert client.snapshot.plans["chat"].fallback_to_control is False
    sim.set_profile(CANDIDATE, {"errors": {"overloaded": 1.0}})
    answer = client.complete("chat", "user-7", messages=HELLO)
    assert (answer.error, answer.arm, answer.fell_back) == ("overloaded", "candidate", False)
    assert answer.results[0].transient and requests_for(sim, CONTROL) == 0
    (outcome,) = sent(client, fake)
    assert (outcome["arm"], outcome["error"]) == ("candidate", "overloaded")


def test_both_arms_failed_is_a_completion_with_the_error(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    client = setup(weight_bp=10_000)
    sim.set_profile(CANDIDATE, {"errors": {"server_error": 1.0}})
    sim.set_profile(CONTROL, {"errors": {"overloaded": 1.0}})
    answer = client.complete("chat", "user-8", messages=HELLO)
    assert not answer.ok and answer.text == ""
    assert (answer.error, answer.arm, answer.fallback_reason) == (
        "overloaded",
        "control",
        "candidate_error",
    )
    assert [r.error for r in answer.results] == ["server_error", "overloaded"]
    assert [(o["arm"], o["error"], o.get("fallback")) for o in sent(client, fake)] == [
        ("candidate", "server_error", None),
        ("control", "overloaded", "candidate_error"),
    ]


def test_a_missing_key_is_an_auth_error_not_an_exception(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    candidate = sim_arm(sim, CANDIDATE, key_env="TURNOUT_TEST_UNSET_KEY")
    client = setup(weight_bp=10_000, candidate=candidate)
    answer = client.complete("chat", "user-9", messages=HELLO)
    assert (answer.error, answer.results[0].attempts) == ("auth", 0)
    assert "TURNOUT_TEST_UNSET_KEY" in answer.error_message
    assert requests_for(sim, CANDIDATE) == requests_for(sim, CONTROL) == 0
    assert [(o["arm"], o["error"]) for o in sent(client, fake)] == [("candidate", "auth")]


# --- context window ------------------------------------------------------------------------


def test_a_prompt_over_the_candidates_window_goes_to_control(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    # 50 tokens is 200 characters; the candidate's suffix (9 characters) counts too.
    candidate = sim_arm(
        sim, CANDIDATE, prompt={"mode": "suffix", "text": "Be brief."}, context_window=50
    )
    client = setup(weight_bp=10_000, candidate=candidate)
    fits = [{"role": "user", "content": "x" * 191}]  # 191 + 9 = 200 characters: 50 tokens
    too_long = [{"role": "user", "content": "x" * 192}]  # 201 characters: 51 tokens
    assert turnout.estimate_tokens([{"role": "system", "content": "Be brief."}, *fits]) == 50
    answer = client.complete("chat", "user-10", messages=fits)
    assert answer.arm == "candidate" and requests_for(sim, CANDIDATE) == 1
    answer = client.complete("chat", "user-10", messages=too_long)
    assert answer.ok and answer.arm == "control" and answer.decision.arm == "candidate"
    assert answer.fallback_reason == turnout.FALLBACK_CONTEXT_WINDOW
    assert len(answer.results) == 1 and answer.results[0].model == CONTROL
    assert requests_for(sim, CANDIDATE) == 1 and requests_for(sim, CONTROL) == 1
    # One outcome for the long prompt: control's answer, marked; no candidate error.
    served_fit, long_prompt = sent(client, fake)
    assert (served_fit["arm"], served_fit["error"]) == ("candidate", None)
    assert (long_prompt["arm"], long_prompt["error"], long_prompt["fallback"]) == (
        "control",
        None,
        "context_window",
    )


def test_the_window_applies_with_the_fallback_setting_off(setup: Any, sim: Simulator) -> None:
    client = setup(
        weight_bp=10_000, fallback=False, candidate=sim_arm(sim, CANDIDATE, context_window=5)
    )
    answer = client.complete("chat", "user-11", messages=HELLO)  # 30 characters: 8 tokens
    assert answer.arm == "control" and answer.fallback_reason == "context_window"
    assert requests_for(sim, CANDIDATE) == 0


def test_a_shadowed_prompt_too_long_for_the_candidate_is_not_sampled(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    client = setup(shadow_bp=10_000, candidate=sim_arm(sim, CANDIDATE, context_window=5))
    answer = client.complete("chat", "user-12", messages=HELLO)
    assert answer.ok and answer.decision.shadow and answer.arm == "control"
    (outcome,) = sent(client, fake)
    # Counted in neither arm: a candidate unit's long prompt would not be counted either.
    assert (outcome["arm"], outcome["fallback"]) == ("control", "context_window")
    assert fake.stored["shadow"] == []


def test_a_control_units_prompt_too_long_for_the_candidate_counts_in_neither_arm(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    client = setup(weight_bp=0, candidate=sim_arm(sim, CANDIDATE, context_window=5))
    short = client.complete("chat", "user-13", messages=[{"role": "user", "content": "hi"}])
    long = client.complete("chat", "user-13", messages=[{"role": "user", "content": "x" * 40}])
    assert short.arm == long.arm == "control" and not long.fell_back
    counted, excluded = sent(client, fake)
    assert "fallback" not in counted
    assert (excluded["arm"], excluded["fallback"]) == ("control", "context_window")


# --- no plan, bad arguments, adapters ------------------------------------------------------


def test_an_unknown_plan_uses_the_default_arm_and_reports_nothing(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    client = setup()
    default = turnout.arm("openai", CONTROL, base_url=sim.url + "/v1", api_key_env=KEY_ENV)
    answer = client.complete("no-such-plan", "u", messages=HELLO, default=default)
    assert answer.ok and answer.spec == default and answer.decision.reason == "DEFAULT"
    nothing = client.complete("no-such-plan", "u", messages=HELLO)
    assert (nothing.error, nothing.results, nothing.spec) == ("bad_request", (), None)
    assert requests_for(sim, CONTROL) == 1
    assert sent(client, fake) == [] and client.dropped == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"messages": "hello"}, TypeError),
        ({"messages": []}, ValueError),
        ({"messages": [{"role": "tool", "content": "x"}]}, ValueError),
        ({"messages": [{"role": "user", "content": 3}]}, TypeError),
        ({"messages": ["hello"]}, TypeError),
        ({"messages": HELLO, "params": "hot"}, TypeError),
        ({"messages": HELLO, "json_schema": "object"}, TypeError),
        ({"messages": HELLO, "timeout": 0}, ValueError),
        ({"messages": HELLO, "stream": "yes"}, TypeError),
        ({"messages": HELLO, "default": "gpt-4o"}, TypeError),
    ],
)
def test_bad_arguments_raise(
    setup: Any, sim: Simulator, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    client = setup()
    with pytest.raises(error):
        client.complete("chat", "u", **kwargs)
    assert sim.stats()["requests"] == 0


def test_one_adapter_per_arm_shared_by_threads_and_closed_with_the_client(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    client = setup(weight_bp=5_000)
    answers: list[turnout.Completion] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(5):
            answer = client.complete("chat", f"user-{n}-{i}", messages=HELLO)
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 40 and all(a.ok for a in answers)
    assert {a.arm for a in answers} == {"control", "candidate"}
    adapters = list(client._providers._kept.values())
    assert sorted(a.model for a in adapters) == sorted([CONTROL, CANDIDATE])
    assert len(sent(client, fake)) == 40
    client.close()
    assert client._providers._kept == {}
    assert all(a.client.is_closed() for a in adapters)  # type: ignore[attr-defined]
    # A closed client still answers, with adapters made for the call and closed after it.
    assert client.complete("chat", "late", messages=HELLO).ok
    assert client._providers._kept == {}


# --- the snapshot fields complete() reads ---------------------------------------------------


def test_snapshot_fields_are_optional_and_checked() -> None:
    old = plan_entry()
    plan = routing.parse_plan(old)
    assert plan.fallback_to_control is True and plan.candidate.context_window is None
    assert "context_window" not in plan.candidate.to_dict()
    new = {**old, "fallback_to_control": False}
    new["candidate"] = {**old["candidate"], "context_window": 200_000}
    plan = routing.parse_plan(new)
    assert plan.fallback_to_control is False and plan.candidate.context_window == 200_000
    assert plan.candidate.to_dict()["context_window"] == 200_000
    assert routing.parse_plan(new).candidate == plan.candidate
    for bad in (0, -1, "big", True, 1.5):
        broken = {**old, "candidate": {**old["candidate"], "context_window": bad}}
        with pytest.raises(SnapshotError) as caught:
            routing.parse_plan(broken)
        assert caught.value.details["field"] == "chat.candidate.context_window"
    with pytest.raises(SnapshotError):
        routing.parse_plan({**old, "fallback_to_control": "yes"})


# --- the answer checks go with the outcome (issue 15) --------------------------------------


def test_the_served_answer_s_checks_travel_as_the_outcome_s_metrics(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    client = setup(weight_bp=0)
    answer = client.complete("chat", "user-1", messages=HELLO)
    (outcome,) = sent(client, fake)
    assert outcome["metrics"] == {
        "refusal": 0, "empty_answer": 0, "answer_chars": len(answer.text), "truncated": 0,
    }  # fmt: skip


def test_json_and_the_plan_s_schema_are_checked(
    setup: Any, sim: Simulator, fake: FakeTurnout
) -> None:
    schema = {"type": "object", "required": ["answer"]}
    client = setup(weight_bp=10_000, answer_schema=schema)
    sim.set_profile(CANDIDATE, {"answer": "degraded"})
    client.complete("chat", "user-6", messages=HELLO, json_schema={})
    sim.set_profile(CANDIDATE, {"answer": "refusal"})
    client.complete("chat", "user-7", messages=HELLO)
    degraded, refused = sent(client, fake)
    assert degraded["error"] == "invalid_output"
    assert (degraded["metrics"]["json_valid"], degraded["metrics"]["schema_valid"]) == (0, 0)
    assert refused["metrics"]["refusal"] == 1 and refused["metrics"]["schema_valid"] == 0
    assert "json_valid" not in refused["metrics"]  # JSON was not asked for


def test_a_call_with_no_answer_has_no_checks(setup: Any, sim: Simulator, fake: FakeTurnout) -> None:
    client = setup(weight_bp=10_000, fallback=False)
    sim.set_profile(CANDIDATE, {"errors": {"overloaded": 1.0}})
    client.complete("chat", "user-8", messages=HELLO)
    (outcome,) = sent(client, fake)
    assert outcome["error"] == "overloaded" and "metrics" not in outcome
