"""A dataset item's checks: each bad or hostile field refused with its path and a stable code,
a good item stored as normalised."""

from __future__ import annotations

from typing import Any

import pytest

from migrations_app.datasets import validation
from migrations_app.datasets.validation import MAX_MESSAGES, MAX_TAG_CHARS, MAX_TAGS, checked_item
from migrations_app.outcomes.event_checks import Invalid
from tests.datasets.conftest import item


def _user(content: Any = "hi") -> dict[str, Any]:
    return {"role": "user", "content": content}


def _refused(raw: Any, **kw: Any) -> Invalid:
    with pytest.raises(Invalid) as caught:
        checked_item(raw, **kw)
    return caught.value


def test_a_good_item_is_stored_normalised() -> None:
    raw = {
        "request": {
            "messages": [{"role": "system", "content": "Be brief."}, _user("Refund?")],
            "params": {"temperature": 0.3, "max_tokens": 200, "stop": ["\n\n"]},
            "json_schema": {"type": "object"},
        },
        "reference": "Yes.",
        "control_answer": "",
        "tags": ["billing", "fr", "billing"],
    }
    assert checked_item(raw) == {
        "request": {
            "messages": [{"role": "system", "content": "Be brief."}, _user("Refund?")],
            "params": {"temperature": 0.3, "max_tokens": 200, "stop": ["\n\n"]},
            "json_schema": {"type": "object"},
        },
        "reference": "Yes.",
        "control_answer": "",  # an empty recorded answer is not "none recorded"
        "tags": ["billing", "fr"],
    }
    assert checked_item(item()) == {
        "request": {"messages": [_user("Where is my order?")], "params": {}, "json_schema": None},
        "reference": None,
        "control_answer": None,
        "tags": [],
    }


@pytest.mark.parametrize(
    ("raw", "field", "code"),
    [
        ("just text", "item", "invalid"),
        ([1, 2], "item", "invalid"),
        ({}, "request", "required"),
        ({"request": "hi"}, "request", "required"),
        (item(extra=1), "extra", "invalid"),
        ({"request": {"messages": [_user()], "model": "gpt-5"}}, "request.model", "invalid"),
        ({"request": {"messages": []}}, "request.messages", "invalid"),
        ({"request": {"messages": "hi"}}, "request.messages", "invalid"),
        # roles outside {system, user, assistant}, including unhashable ones
        ({"request": {"messages": [{"role": "tool", "content": "x"}]}}, "request.messages", "invalid"),
        ({"request": {"messages": [{"role": ["user"], "content": "x"}]}}, "request.messages", "invalid"),
        ({"request": {"messages": [{"role": {"a": 1}, "content": "x"}]}}, "request.messages", "invalid"),
        # non-string content
        ({"request": {"messages": [_user(123)]}}, "request.messages", "invalid"),
        ({"request": {"messages": [_user(None)]}}, "request.messages", "invalid"),
        ({"request": {"messages": [_user([{"type": "text"}])]}}, "request.messages", "invalid"),
        ({"request": {"messages": [_user("x" * 100_001)]}}, "request.messages", "invalid"),
        ({"request": {"messages": [_user()] * (MAX_MESSAGES + 1)}}, "request.messages", "invalid"),
        # params outside the allowlist, or out of range
        ({"request": {"messages": [_user()], "params": {"api_key": "sk-x"}}}, "request.params.api_key", "param_not_allowed"),
        ({"request": {"messages": [_user()], "params": {"base_url": "http://evil"}}}, "request.params.base_url", "param_not_allowed"),
        ({"request": {"messages": [_user()], "params": {"n": 1000}}}, "request.params.n", "param_not_allowed"),
        ({"request": {"messages": [_user()], "params": {"model": "x"}}}, "request.params.model", "param_not_allowed"),
        ({"request": {"messages": [_user()], "params": {"temperature": 5}}}, "request.params.temperature", "invalid"),
        ({"request": {"messages": [_user()], "params": {"temperature": "hot"}}}, "request.params.temperature", "invalid"),
        ({"request": {"messages": [_user()], "params": {"max_tokens": 10**9}}}, "request.params.max_tokens", "invalid"),
        ({"request": {"messages": [_user()], "params": ["temperature"]}}, "request.params", "invalid"),
        # NUL bytes and lone surrogates, in values and keys
        ({"request": {"messages": [_user("a\x00b")]}}, "request.messages[0].content", "invalid"),
        (item(reference="\ud800"), "reference", "invalid"),
        (item(tags=["a\x00"]), "tags[0]", "invalid"),
        ({"request": {"messages": [_user()], "params": {"te\x00mp": 1}}}, "request.params", "invalid"),
        # tags: bounded count and size, printable strings
        (item(tags=["t"] * (MAX_TAGS + 1)), "tags", "invalid"),
        (item(tags="billing"), "tags", "invalid"),
        (item(tags=["x" * (MAX_TAG_CHARS + 1)]), "tags[0]", "invalid"),
        (item(tags=[""]), "tags[0]", "invalid"),
        (item(tags=[" padded"]), "tags[0]", "invalid"),
        (item(tags=["two\nlines"]), "tags[0]", "invalid"),
        (item(tags=[7]), "tags[0]", "invalid"),
        # reference and control answer: strings or null
        (item(reference=42), "reference", "invalid"),
        (item(control_answer={"text": "x"}), "control_answer", "invalid"),
        (item(reference="x" * 100_001), "reference", "invalid"),
        # a response format: a bounded object
        ({"request": {"messages": [_user()], "json_schema": "object"}}, "request.json_schema", "invalid"),
        ({"request": {"messages": [_user()], "json_schema": {"p": "x" * 40_000}}}, "request.json_schema", "invalid"),
        # NaN and Infinity: Python's parser reads them, jsonb refuses them (was a 500)
        ({"request": {"messages": [_user()], "json_schema": {"maximum": float("nan")}}}, "request.json_schema", "invalid"),
        ({"request": {"messages": [_user()], "json_schema": {"p": {"minimum": float("-inf")}}}}, "request.json_schema", "invalid"),
    ],
)  # fmt: skip
def test_bad_items_are_refused_naming_the_field(raw: Any, field: str, code: str) -> None:
    bad = _refused(raw)
    assert (bad.field, bad.code) == (field, code), bad.message
    assert bad.message


def test_too_deep_a_json_schema_is_refused() -> None:
    schema: dict[str, Any] = {}
    for _ in range(80):
        schema = {"items": schema}
    bad = _refused({"request": {"messages": [_user()], "json_schema": schema}})
    assert bad.field == "request.json_schema"


def test_a_set_made_for_a_plan_takes_only_what_its_candidate_takes() -> None:
    # Anthropic takes no seed and temperature up to 1; OpenAI takes both.
    seeded = {"request": {"messages": [_user()], "params": {"seed": 7}}}
    assert checked_item(seeded)["request"]["params"] == {"seed": 7}
    assert checked_item(seeded, kind="openai")["request"]["params"] == {"seed": 7}
    bad = _refused(seeded, kind="anthropic")
    assert (bad.field, bad.code) == ("request.params.seed", "param_not_allowed")
    warm = {"request": {"messages": [_user()], "params": {"temperature": 1.5}}}
    assert checked_item(warm)  # some provider takes 1.5
    assert _refused(warm, kind="anthropic").field == "request.params.temperature"


def test_every_problem_of_a_set_is_named_by_its_place() -> None:
    rows = [
        ("items[0]", item()),
        ("items[1]", item(tags=[1])),
        ("items[2]", {"request": {"messages": [_user()], "params": {"api_key": "x"}}}),
    ]
    items, problems = validation.checked_items(rows)
    assert len(items) == 1
    assert [(p.where, p.field, p.code) for p in problems] == [
        ("items[1]", "tags[0]", "invalid"),
        ("items[2]", "request.params.api_key", "param_not_allowed"),
    ]
    refusal = validation.refused(problems)
    assert refusal.code == "validation_failed" and refusal.status == 400
    assert set(refusal.details["fields"]) == {"items[1] tags[0]", "items[2] request.params.api_key"}
    assert refusal.details["problem_count"] == 2
    assert "Nothing was stored" in refusal.message


@pytest.mark.parametrize(
    "name", ["Upper", "-lead", "", "a" * 64, "has space", "sl/ash", "new\n", "nul\x00", 7, None]
)
def test_dataset_names_are_slug_like_and_bounded(name: Any) -> None:
    assert validation.name_problem(name)


def test_good_names_pass() -> None:
    assert validation.name_problem("support-week_2.v1") is None
    assert validation.name_problem("a" * 63) is None
