"""What each adapter puts on the wire: the vendor's field names for the system prompt, the
token limit, sampling params and JSON, as the simulator received them."""

from __future__ import annotations

from collections.abc import Callable

from turnout.providers import Provider, Request

from migrations_app.simulator import Simulator

ASK = Request(
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
    ],
    params={"temperature": 0.5, "max_tokens": 100},
)

Make = Callable[..., Provider]


def test_openai_chat_sends_messages_and_params_as_they_are(make: Make, sim: Simulator) -> None:
    make("openai-chat", params={"max_tokens": 50}).complete(ASK)

    body = sim.last_request("model-a").body  # type: ignore[union-attr]
    assert body["messages"] == [dict(m) for m in ASK.messages]
    # The arm's params win over the request's for the same key.
    assert body["max_tokens"] == 50 and body["temperature"] == 0.5
    assert "api" not in body


def test_openai_responses_maps_system_and_token_limit(make: Make, sim: Simulator) -> None:
    make("openai-responses").complete(ASK)

    body = sim.last_request("model-a").body  # type: ignore[union-attr]
    assert body["instructions"] == "Be brief."
    assert body["input"] == [dict(m) for m in ASK.messages[1:]]
    assert body["max_output_tokens"] == 100 and "max_tokens" not in body
    assert body["temperature"] == 0.5


def test_openai_json_without_schema_is_json_object_mode(make: Make, sim: Simulator) -> None:
    request = Request(messages=[{"role": "user", "content": "x"}], json_schema={})
    make("openai-chat").complete(request)
    assert sim.last_request("model-a").body["response_format"] == {"type": "json_object"}  # type: ignore[union-attr]
    make("openai-responses").complete(request)
    assert sim.last_request("model-a").body["text"] == {"format": {"type": "json_object"}}  # type: ignore[union-attr]


def test_anthropic_maps_system_max_tokens_and_sampling(make: Make, sim: Simulator) -> None:
    result = make("anthropic", params={"stop": "END"}).complete(ASK)

    body = sim.last_request("model-a").body  # type: ignore[union-attr]
    assert result.ok
    assert body["system"] == "Be brief."
    assert body["messages"] == [dict(m) for m in ASK.messages[1:]]
    assert body["max_tokens"] == 100
    assert body["temperature"] == 0.5  # through extra_body: anthropic 2.x no longer names it
    assert body["stop_sequences"] == ["END"]
    assert sim.last_request("model-a").system == "Be brief."  # type: ignore[union-attr]


def test_anthropic_max_tokens_has_a_default_and_no_system_when_none(
    make: Make, sim: Simulator
) -> None:
    make("anthropic").complete(Request(messages=[{"role": "user", "content": "Hi"}]))

    body = sim.last_request("model-a").body  # type: ignore[union-attr]
    assert body["max_tokens"] == 1024
    assert "system" not in body


def test_anthropic_json_uses_structured_outputs(make: Make, sim: Simulator) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}}
    result = make("anthropic").complete(
        Request(messages=[{"role": "user", "content": "Name a colour."}], json_schema=schema)
    )

    body = sim.last_request("model-a").body  # type: ignore[union-attr]
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert result.ok and result.text == '{"colour": "Name a colour."}'


def test_gemini_maps_system_roles_and_generation_config(make: Make, sim: Simulator) -> None:
    result = make("gemini", model="gemini-x", params={"top_k": 3}).complete(ASK)

    body = sim.last_request("gemini-x").body  # type: ignore[union-attr]
    assert result.ok
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert [(c["role"], c["parts"]) for c in body["contents"]] == [
        ("user", [{"text": "Hi"}]),
        ("model", [{"text": "Hello."}]),
        ("user", [{"text": "Name a colour."}]),
    ]
    assert body["generationConfig"] == {"temperature": 0.5, "maxOutputTokens": 100, "topK": 3}
    assert sim.stats()["models"]["gemini-x"]["route:gemini"] == 1


def test_gemini_json_and_an_unknown_param(make: Make, sim: Simulator) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}}
    provider = make("gemini", model="gemini-x")
    result = provider.complete(
        Request(messages=[{"role": "user", "content": "Name a colour."}], json_schema=schema)
    )
    config = sim.last_request("gemini-x").body["generationConfig"]  # type: ignore[union-attr]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema
    assert result.ok and result.text == '{"colour": "Name a colour."}'

    # A param Gemini does not know is refused before any call, and not retried.
    bad = make("gemini", model="gemini-y", params={"frequency_typo": 1}).complete(ASK)
    assert (bad.error, bad.transient, bad.attempts) == ("bad_request", False, 1)
    assert "gemini-y" not in sim.stats()["models"]
