"""turnout.checks: the answer checks on known answers, and the plan schema's own checks."""

from __future__ import annotations

import pytest
from turnout.checks import answer_checks, schema_problems, schema_validator
from turnout.contract import ANSWER_CHECKS, MAX_ANSWER_CHARS, MAX_ANSWER_SCHEMA_DEPTH

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
}


def test_every_check_is_in_the_contract():
    out = answer_checks("{}", finish_reason="stop", json_expected=True,
                        schema=schema_validator(SCHEMA))  # fmt: skip
    assert set(out) == set(ANSWER_CHECKS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"city": "Oslo", "days": 3}', {"json_valid": 1, "schema_valid": 1}),
        ('```json\n{"city": "Oslo", "days": 3}\n```', {"json_valid": 1, "schema_valid": 1}),
        ('{"city": "Oslo", "days": 0}', {"json_valid": 1, "schema_valid": 0}),
        ('{"city": "Oslo"}', {"json_valid": 1, "schema_valid": 0}),
        ("Oslo, 3 days", {"json_valid": 0, "schema_valid": 0}),
        ("[[[[[[" * 5000, {"json_valid": 0, "schema_valid": 0}),
    ],
)
def test_json_and_schema(text, expected):
    out = answer_checks(text, json_expected=True, schema=schema_validator(SCHEMA))
    assert {k: out[k] for k in expected} == expected


def test_refusal_empty_truncated_length():
    assert answer_checks("I'm sorry, but I can't help with that.")["refusal"] == 1
    assert answer_checks("Sure: the answer is 4.")["refusal"] == 0
    assert answer_checks("   \n")["empty_answer"] == 1
    assert answer_checks("abc", finish_reason="length")["truncated"] == 1
    assert answer_checks("abc", finish_reason="stop")["truncated"] == 0
    # An unknown finish reason is not "not truncated": the check is left out.
    assert "truncated" not in answer_checks("abc")
    assert answer_checks("héllo")["answer_chars"] == 5
    assert answer_checks("x" * (MAX_ANSWER_CHARS + 5))["answer_chars"] == MAX_ANSWER_CHARS


def test_json_checks_only_when_asked():
    out = answer_checks("not json")
    assert "json_valid" not in out and "schema_valid" not in out


def test_no_answer_no_checks_but_a_refused_answer_is_checked():
    assert answer_checks("", error="timeout") == {}
    assert answer_checks("", error="content_filter") == {}
    bad = answer_checks("nope", error="invalid_output", json_expected=True)
    assert bad["json_valid"] == 0
    assert answer_checks("", error="empty_output")["empty_answer"] == 1


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "objekt"}, "Not a valid JSON Schema at type"),
        ({"properties": {"a": {"pattern": "(["}}}, "properties/a/pattern"),
        ({"$ref": "https://example.com/schema.json"}, "References must stay inside"),
        ({"$defs": {"a": {"$dynamicRef": "file:///etc/passwd"}}}, "References must stay"),
        ([{"type": "object"}], "JSON object"),
        ({"enum": ["x" * 40_000]}, "larger than"),
    ],
)
def test_schemas_that_are_refused(schema, words):
    problems = schema_problems(schema)
    assert problems and words in problems[0], problems
    assert schema_validator(schema) is None


def test_a_schema_nested_too_deep_is_refused():
    schema: dict = {"type": "object"}
    for _ in range(MAX_ANSWER_SCHEMA_DEPTH):
        schema = {"type": "object", "properties": {"a": schema}}
    assert "deeper" in schema_problems(schema)[0]


def test_local_references_are_fine():
    schema = {"$defs": {"n": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/$defs/n"}}
    assert schema_problems(schema) == []
    check = schema_validator(schema)
    assert check is not None and check([1, 2]) and not check(["a"])


class _NoPythonRe:
    """Stands in for ``re`` inside jsonschema: any backtracking search fails the test."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"jsonschema used Python's re.{name} on an answer")


WORDS = {
    "type": "object",
    "properties": {"name": {"type": "string", "pattern": "^([a-z]+ ?)+$"}},
    "patternProperties": {"^x_": {"type": "integer"}},
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ('{"name": "ab cd"}', 1),
        ('{"name": "ab cd", "x_1": 3}', 1),
        ('{"name": "ab cd", "x_1": "three"}', 0),  # patternProperties' subschema
        ('{"name": "ab cd", "y": 1}', 0),  # additionalProperties
        ('{"name": "' + "a" * 40 + '!"}', 0),  # Python's re: hours of backtracking
        ('{"name": "' + "a" * 100_000 + '"}', 1),
    ],
)
def test_schema_patterns_are_matched_with_re2_not_backtracking(
    monkeypatch: pytest.MonkeyPatch, text: str, valid: int
) -> None:
    """A plausible answer schema pattern, ``^([a-z]+ ?)+$``, took 13 s with jsonschema's
    Python ``re`` on a 25-character answer (and doubles per character): an answer a user can
    provoke stalled complete()'s request path and the shadow workers. RE2 matches in linear
    time, with the same results for pattern, patternProperties and additionalProperties."""
    import jsonschema._keywords
    import jsonschema._utils

    monkeypatch.setattr(jsonschema._keywords, "re", _NoPythonRe())
    monkeypatch.setattr(jsonschema._utils, "re", _NoPythonRe())
    assert answer_checks(text, schema=schema_validator(WORDS))["schema_valid"] == valid


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "string", "pattern": "(a)\\1"}, "backreferences"),
        ({"type": "string", "pattern": "(?=a)b"}, "lookaround"),
        ({"patternProperties": {"(?!x)": {}}}, "RE2"),
        ({"type": "string", "pattern": "x" * 300}, "over 256"),
        ({"patternProperties": {"^a": {}}, "unevaluatedProperties": False}, "not supported"),
    ],
)
def test_schema_patterns_re2_cannot_run_are_refused(schema: dict, words: str) -> None:
    """Refused when the plan is saved (the server's schema_problems), naming the pattern."""
    problems = schema_problems(schema)
    assert problems and words in problems[0], problems
    assert schema_validator(schema) is None
