"""The simulator's pure parts: profile validation, the latency distribution, answer generators."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from migrations_app.simulator.profiles import (
    REFUSAL_TEXT,
    Profile,
    Prompted,
    chunks,
    count_tokens,
    generate,
)

ASKED = Prompted(model="m", system="", messages=("first", "the last question here"))


def test_latency_draws_have_the_configured_median_and_p95() -> None:
    profile = Profile(latency_median_ms=200, latency_p95_ms=600)
    rng = random.Random(1)
    draws = sorted(profile.latency_s(rng) * 1000 for _ in range(20_000))

    assert statistics.median(draws) == pytest.approx(200, rel=0.03)
    assert draws[int(0.95 * len(draws))] == pytest.approx(600, rel=0.05)


def test_error_draws_follow_the_rates() -> None:
    profile = Profile(errors={"rate_limited": 0.1, "server_error": 0.3})
    rng = random.Random(2)
    draws = [profile.draw_error(rng) for _ in range(20_000)]

    assert draws.count("rate_limited") / len(draws) == pytest.approx(0.1, abs=0.01)
    assert draws.count("server_error") / len(draws) == pytest.approx(0.3, abs=0.015)
    assert draws.count(None) / len(draws) == pytest.approx(0.6, abs=0.015)


@pytest.mark.parametrize(
    "changes",
    [
        {"answer": "poetry"},
        {"errors": {"meltdown": 0.1}},
        {"errors": {"timeout": 1.5}},
        {"errors": {"timeout": 0.6, "auth": 0.6}},
        {"fail_next": ["nope"]},
        {"latency_median_ms": 50, "latency_p95_ms": 10},
        {"ttft_fraction": 2},
        {"stream_chunks": 0},
        {"colour": "blue"},
    ],
)
def test_bad_profiles_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Profile().updated(changes)


def test_answer_generators() -> None:
    rng = random.Random(0)
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    as_json = Prompted(model="m", system="", messages=("hi",), json_wanted=True, schema=schema)

    assert generate(Profile(answer="echo"), ASKED, rng) == "You said: the last question here"
    assert generate(Profile(answer="canned", text="Fixed."), ASKED, rng) == "Fixed."
    assert generate(Profile(answer="refusal"), ASKED, rng) == REFUSAL_TEXT
    assert generate(Profile(answer="empty"), ASKED, rng) == ""
    assert json.loads(generate(Profile(answer="json"), ASKED, rng)) == {
        "answer": "the last question here", "ok": True,
    }  # fmt: skip
    # JSON asked for: JSON shaped by the schema, whatever the text generator.
    assert json.loads(generate(Profile(answer="canned"), as_json, rng)) == {"n": 2, "tags": ["hi"]}

    degraded = generate(Profile(answer="degraded"), ASKED, rng)
    assert sorted(degraded.split()) == sorted("You said: the".split())
    broken = generate(Profile(answer="degraded"), as_json, rng)
    with pytest.raises(ValueError):
        json.loads(broken)


def test_chunks_and_token_counts() -> None:
    assert chunks("abcdefghij", 3) == ["abcd", "efgh", "ij"]
    assert "".join(chunks("hello world", 4)) == "hello world"
    assert chunks("", 4) == []
    assert (count_tokens(""), count_tokens("abc"), count_tokens("abcde")) == (0, 1, 2)
