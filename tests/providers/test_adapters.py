"""Every adapter against the simulator through the vendor's real SDK over HTTP: success with
and without usage, every error kind (mapped kind, transient flag, status), retries, timeouts,
streams and the prompt adapter. Parametrised over the adapter flavours in ``FLAVOURS``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from turnout.providers import NO_RETRY, Provider, Request
from turnout.routing import Prompt

from migrations_app.simulator import Simulator
from migrations_app.simulator.profiles import REFUSAL_TEXT

from .conftest import FLAVOURS, Sleeper

ASK = Request(
    messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    params={"temperature": 0.2},
)
ECHO = "You said: What is the capital of France?"

#: For each flavour's vendor: simulator error -> (kind, transient, HTTP status).
OPENAI_KINDS = {
    "rate_limited": ("rate_limited", True, 429),
    "quota": ("rate_limited", False, 429),
    "overloaded": ("overloaded", True, 503),
    "server_error": ("server_error", True, 500),
    "bad_request": ("bad_request", False, 400),
    "auth": ("auth", False, 401),
    "content_filter": ("content_filter", False, None),
    "connection": ("connection", True, None),
}
ANTHROPIC_KINDS = {
    "rate_limited": ("rate_limited", True, 429),
    # Anthropic says "credit balance too low" with a 400 invalid_request_error.
    "quota": ("bad_request", False, 400),
    "overloaded": ("overloaded", True, 529),
    "server_error": ("server_error", True, 500),
    "bad_request": ("bad_request", False, 400),
    "auth": ("auth", False, 401),
    "content_filter": ("content_filter", False, None),
    "connection": ("connection", True, None),
}
GEMINI_KINDS = {
    "rate_limited": ("rate_limited", True, 429),
    # A per-day QuotaFailure in a 429: not worth retrying.
    "quota": ("rate_limited", False, 429),
    "overloaded": ("overloaded", True, 503),
    "server_error": ("server_error", True, 500),
    "bad_request": ("bad_request", False, 400),
    # A bad Gemini key is a 400 INVALID_ARGUMENT whose ErrorInfo says API_KEY_INVALID.
    "auth": ("auth", False, 400),
    "content_filter": ("content_filter", False, None),
    "connection": ("connection", True, None),
}
EXPECTED = {
    "openai-chat": OPENAI_KINDS,
    "openai-responses": OPENAI_KINDS,
    "openai_compatible": OPENAI_KINDS,
    "anthropic": ANTHROPIC_KINDS,
    "gemini": GEMINI_KINDS,
}
CASES = [(flavour, kind) for flavour in FLAVOURS for kind in EXPECTED[flavour]]

Make = Callable[..., Provider]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_success_with_usage(make: Make, sim: Simulator, flavour: str) -> None:
    result = make(flavour).complete(ASK)

    assert result.ok and result.error is None
    assert result.text == ECHO
    assert result.finish_reason == "stop"
    # The simulator counts about four characters per token.
    assert result.input_tokens == -(-len("You are terse.What is the capital of France?") // 4)
    assert result.output_tokens == -(-len(ECHO) // 4)
    assert result.latency_ms > 0 and result.ttft_ms is None
    assert result.attempts == 1
    assert sim.stats()["models"]["model-a"]["requests"] == 1


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_success_without_usage_is_unknown_not_zero(
    make: Make, sim: Simulator, flavour: str
) -> None:
    sim.set_profile("model-a", {"usage": False})

    for request in (ASK, replace(ASK, stream=True)):
        result = make(flavour).complete(request)
        assert result.ok and result.text == ECHO
        assert result.input_tokens is None and result.output_tokens is None


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_stream_text_usage_and_time_to_first_token(
    make: Make, sim: Simulator, flavour: str
) -> None:
    sim.set_profile("model-a", {"stream_chunks": 5, "latency_median_ms": 60, "latency_p95_ms": 80})
    provider = make(flavour)

    streamed = provider.complete(replace(ASK, stream=True))
    whole = provider.complete(ASK)

    assert streamed.ok and streamed.text == whole.text == ECHO
    assert streamed.input_tokens == whole.input_tokens
    assert streamed.output_tokens == whole.output_tokens
    assert streamed.finish_reason == "stop"
    assert streamed.ttft_ms is not None and 0 < streamed.ttft_ms < streamed.latency_ms
    assert sim.last_request("model-a").stream is False  # type: ignore[union-attr]


@pytest.mark.parametrize(("flavour", "sim_kind"), CASES)
def test_each_error_kind_maps_to_its_kind_and_transience(
    make: Make, sim: Simulator, flavour: str, sim_kind: str
) -> None:
    kind, transient, status = EXPECTED[flavour][sim_kind]
    sim.set_profile("model-a", {"fail_next": [sim_kind]})

    result = make(flavour, retry=NO_RETRY).complete(ASK)

    assert (result.error, result.transient, result.status) == (kind, transient, status)
    assert not result.ok and result.attempts == 1
    if status is not None:
        assert result.error_message  # the vendor's own message, read from its error body
    assert sim.stats()["models"]["model-a"][sim_kind] == 1


@pytest.mark.parametrize(("flavour", "sim_kind"), CASES)
def test_retries_transient_kinds_only(
    make: Make, sim: Simulator, sleeper: Sleeper, flavour: str, sim_kind: str
) -> None:
    kind, transient, _ = EXPECTED[flavour][sim_kind]
    sim.set_profile("model-a", {"fail_next": [sim_kind]})

    result = make(flavour).complete(ASK)

    if transient:
        # One failure, one wait, then the answer: the user never saw the failure.
        assert result.ok and result.text == ECHO and result.attempts == 2
        assert len(sleeper.waits) == 1
        assert sim.stats()["models"]["model-a"]["requests"] == 2
    else:
        assert result.error == kind and result.attempts == 1 and sleeper.waits == []
        assert sim.stats()["models"]["model-a"]["requests"] == 1


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_retry_gives_up_after_the_attempt_cap(
    make: Make, sim: Simulator, sleeper: Sleeper, flavour: str
) -> None:
    sim.set_profile("model-a", {"errors": {"server_error": 1.0}})

    result = make(flavour).complete(ASK)

    assert result.error == "server_error" and result.transient and result.attempts == 3
    assert len(sleeper.waits) == 2
    # Full jitter: each wait is within [0, base * 2**n].
    assert 0 <= sleeper.waits[0] <= 0.05 and 0 <= sleeper.waits[1] <= 0.1
    assert sim.stats()["models"]["model-a"]["requests"] == 3


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_retry_after_is_honoured(
    make: Make, sim: Simulator, sleeper: Sleeper, flavour: str
) -> None:
    sim.set_profile("model-a", {"fail_next": ["rate_limited"], "retry_after_s": 0.75})

    result = make(flavour).complete(ASK)

    assert result.ok and result.attempts == 2
    assert sleeper.waits == [0.75]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_retry_after_beyond_the_time_budget_gives_up_at_once(
    make: Make, sim: Simulator, sleeper: Sleeper, flavour: str
) -> None:
    # The server asks for 9 s; the policy allows 5 s in total: waiting cannot help.
    sim.set_profile("model-a", {"fail_next": ["rate_limited"], "retry_after_s": 9})

    result = make(flavour).complete(ASK)

    assert result.error == "rate_limited" and result.transient and result.attempts == 1
    assert sleeper.waits == []


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_timeout(make: Make, sim: Simulator, sleeper: Sleeper, flavour: str) -> None:
    sim.set_profile("model-a", {"fail_next": ["timeout", "timeout"], "hang_ms": 3000})
    request = replace(ASK, timeout=0.2)

    once = make(flavour, retry=NO_RETRY).complete(request)
    assert (once.error, once.transient, once.status) == ("timeout", True, None)

    # A timeout is transient: the next attempt (the script has one more, then success) succeeds.
    retried = make(flavour).complete(request)
    assert retried.error == "timeout" or retried.ok
    assert retried.attempts >= 2


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_stream_content_filter_and_empty_answers(make: Make, sim: Simulator, flavour: str) -> None:
    provider = make(flavour)
    for stream in (False, True):
        request = replace(ASK, stream=stream)
        sim.set_profile("model-a", {"fail_next": ["content_filter"]})
        filtered = provider.complete(request)
        assert (filtered.error, filtered.transient) == ("content_filter", False)
        assert filtered.finish_reason == "content_filter"

        sim.set_profile("model-a", {"answer": "empty"})
        empty = provider.complete(request)
        assert empty.error == "empty_output" and empty.text == ""

        sim.set_profile("model-a", {"answer": "refusal"})
        refused = provider.complete(request)
        # A refusal is an answer (the comparison flags it), not an error.
        assert refused.ok and refused.text == REFUSAL_TEXT
        sim.reset()


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("stream", [False, True])
def test_json_asked_for_is_sent_and_checked(
    make: Make, sim: Simulator, flavour: str, stream: bool
) -> None:
    provider = make(flavour)
    request = replace(ASK, json_schema=SCHEMA, stream=stream)

    good = provider.complete(request)
    seen = sim.last_request("model-a")
    assert seen is not None and seen.json_wanted and seen.schema == SCHEMA
    assert good.ok
    assert good.text == '{"city": "What is the capital of France?", "population": 30}'

    sim.set_profile("model-a", {"answer": "degraded"})
    bad = provider.complete(request)
    assert (bad.error, bad.transient) == ("invalid_output", False)
    assert bad.text == good.text[: len(good.text) // 2]  # kept, so the pair can be read


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize(
    ("prompt", "system"),
    [
        (Prompt("none", "ignored"), "You are terse."),
        (Prompt("override", "Answer in French."), "Answer in French."),
        (
            Prompt("suffix", "At most three sentences."),
            "You are terse.\n\nAt most three sentences.",
        ),
    ],
)
def test_prompt_adapter_reaches_the_wire(
    make: Make, sim: Simulator, flavour: str, prompt: Prompt, system: str
) -> None:
    result = make(flavour, prompt=prompt).complete(ASK)

    seen = sim.last_request("model-a")
    assert result.ok and seen is not None
    assert seen.system == system
    assert seen.messages == ("What is the capital of France?",)
