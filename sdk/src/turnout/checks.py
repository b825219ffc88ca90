"""Answer checks: built-in per-request metrics computed from one answer, wherever Turnout sees
one (``Client.complete()`` for the answer it served, the shadow workers for both answers of a
pair, and later replays). Pure: no network, no model, no clock.

Each check is a metric of ``turnout.contract.ANSWER_CHECKS`` with its kind and direction:

- ``json_valid`` (rate): the answer parses as JSON (one Markdown fence tolerated), when JSON
  was asked for;
- ``schema_valid`` (rate): it parses and satisfies the plan's JSON Schema, when the plan
  gives one (validated with the ``jsonschema`` library, when installed);
- ``refusal`` (rate): it opens with a refusal (``turnout.compare.is_refusal``);
- ``empty_answer`` (rate): nothing but whitespace;
- ``truncated`` (rate): the model stopped at its output limit (finish reason ``length``),
  when the finish reason is known;
- ``answer_chars`` (mean): its length in characters (capped at ``MAX_ANSWER_CHARS``).

A call that produced no answer (a timeout, a rate limit, a filtered answer) has no checks:
it is an error, counted as one. An answer the adapter refused as ``invalid_output`` or
``empty_output`` still has its checks: those are exactly what they measure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from turnout.compare import is_refusal, parse_json
from turnout.contract import (
    CHECK_EMPTY,
    CHECK_JSON_VALID,
    CHECK_LENGTH,
    CHECK_REFUSAL,
    CHECK_SCHEMA_VALID,
    CHECK_TRUNCATED,
    MAX_ANSWER_CHARS,
    MAX_ANSWER_SCHEMA_BYTES,
    MAX_ANSWER_SCHEMA_DEPTH,
)
from turnout.targeting import RuleError, compile_regex

__all__ = ["CHECKED_ERRORS", "answer_checks", "schema_problems", "schema_validator"]

#: Error kinds whose call still returned an answer to check.
CHECKED_ERRORS = frozenset({"invalid_output", "empty_output"})

SchemaCheck = Callable[[Any], bool]


def answer_checks(
    text: str | None,
    *,
    error: str | None = None,
    finish_reason: str | None = None,
    json_expected: bool = False,
    schema: SchemaCheck | None = None,
) -> dict[str, int]:
    """The checks of one answer, ``{name: value}`` (see the module docstring); ``{}`` when
    the call produced no answer. ``schema`` is a :func:`schema_validator`."""
    if error is not None and error not in CHECKED_ERRORS:
        return {}
    text = text or ""
    out: dict[str, int] = {
        CHECK_REFUSAL: int(is_refusal(text)),
        CHECK_EMPTY: int(not text.strip()),
        CHECK_LENGTH: min(len(text), MAX_ANSWER_CHARS),
    }
    if finish_reason is not None:
        out[CHECK_TRUNCATED] = int(finish_reason == "length")
    if json_expected or schema is not None:
        ok, value = parse_json(text)
        if json_expected:
            out[CHECK_JSON_VALID] = int(ok)
        if schema is not None:
            out[CHECK_SCHEMA_VALID] = int(ok and schema(value))
    return out


def _depth(value: Any) -> int:
    """How deeply containers nest in ``value`` (an explicit stack: no recursion to overflow)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _remote_refs(value: Any) -> list[str]:
    """``$ref`` / ``$dynamicRef`` values that point outside the schema itself."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key in ("$ref", "$dynamicRef") and isinstance(child, str):
                    if not child.startswith("#"):
                        found.append(child)
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _patterns(value: Any) -> tuple[list[str], bool, bool]:
    """The schema's regular expressions (``pattern`` strings, ``patternProperties`` keys), and
    whether it has ``patternProperties`` and ``unevaluatedProperties`` anywhere."""
    found: list[str] = []
    has_pattern_properties = has_unevaluated = False
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key == "pattern" and isinstance(child, str):
                    found.append(child)
                elif key == "patternProperties" and isinstance(child, dict):
                    has_pattern_properties = True
                    found.extend(str(k) for k in child)
                elif key == "unevaluatedProperties":
                    has_unevaluated = True
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return found, has_pattern_properties, has_unevaluated


@lru_cache(maxsize=256)
def _regex(pattern: str) -> Callable[[str], bool]:
    """RE2 search for an answer schema's pattern (the targeting rules' compile_regex):
    linear in the answer, where Python's ``re`` (jsonschema's own) backtracks: the plausible
    ``^([a-z]+ ?)+$`` took 13 s on a 25-character answer, and doubles with each character,
    on the request path of ``complete()`` and in the shadow workers."""
    return compile_regex(pattern)


def _regex_problem(schema: Any) -> str:
    """Why the schema's regular expressions cannot be checked with RE2 ('' when they can)."""
    patterns, has_pattern_properties, has_unevaluated = _patterns(schema)
    for pattern in patterns:
        try:
            _regex(pattern)
        except RuleError as exc:
            return f"Pattern {pattern[:80]!r}: {exc.message} (RE2 syntax: no backreferences or lookaround)."
    if has_pattern_properties and has_unevaluated:
        return "patternProperties together with unevaluatedProperties is not supported here."
    return ""


def _re2_validator(cls: Any) -> Any:
    """``cls`` with ``pattern``, ``patternProperties`` and ``additionalProperties`` matching
    with RE2 (:func:`_regex`) instead of Python's ``re``; the rest is jsonschema's own."""
    from jsonschema import ValidationError, validators

    def pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Any:
        if validator.is_type(instance, "string") and not _regex(patrn)(instance):
            yield ValidationError(f"{instance[:80]!r} does not match {patrn!r}")

    def pattern_properties(validator: Any, given: Any, instance: Any, schema: Any) -> Any:
        if not validator.is_type(instance, "object"):
            return
        for patrn, subschema in given.items():
            for key, value in instance.items():
                if _regex(patrn)(key):
                    yield from validator.descend(value, subschema, path=key, schema_path=patrn)

    def additional_properties(validator: Any, extra: Any, instance: Any, schema: Any) -> Any:
        if not validator.is_type(instance, "object"):
            return
        named = schema.get("properties", {})
        searches = [_regex(p) for p in schema.get("patternProperties", {})]
        extras = [k for k in instance if k not in named and not any(s(k) for s in searches)]
        if validator.is_type(extra, "object"):
            for key in extras:
                yield from validator.descend(instance[key], extra, path=key)
        elif not extra and extras:
            yield ValidationError(f"Additional properties are not allowed ({extras[0]!r}, ...)")

    mine = {
        "pattern": pattern,
        "patternProperties": pattern_properties,
        "additionalProperties": additional_properties,
    }
    return validators.extend(cls, {k: v for k, v in mine.items() if k in cls.VALIDATORS})


def schema_problems(schema: Any) -> list[str]:
    """Why ``schema`` cannot be a plan's answer schema (empty list: it can).

    A JSON object of at most ``MAX_ANSWER_SCHEMA_BYTES`` encoded and
    ``MAX_ANSWER_SCHEMA_DEPTH`` levels, whose references stay inside it (a worker must never
    fetch a URL a schema names), whose patterns RE2 compiles (answers are matched in linear
    time), and a valid JSON Schema by its own dialect's metaschema
    (``jsonschema``'s ``check_schema``; draft 2020-12 when it names none)."""
    if not isinstance(schema, dict):
        return ['A JSON Schema here is a JSON object, e.g. {"type": "object"}.']
    try:
        encoded = json.dumps(schema, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return ["The schema is not plain JSON."]
    if len(encoded.encode()) > MAX_ANSWER_SCHEMA_BYTES:
        return [f"The schema is larger than {MAX_ANSWER_SCHEMA_BYTES} bytes."]
    if _depth(schema) > MAX_ANSWER_SCHEMA_DEPTH:
        return [f"The schema nests deeper than {MAX_ANSWER_SCHEMA_DEPTH} levels."]
    remote = _remote_refs(schema)
    if remote:
        return [f"References must stay inside the schema ('#/...'): {remote[0]!r} does not."]
    try:
        from jsonschema import exceptions, validators
    except ImportError:  # pragma: no cover - the server always has it
        return ["The jsonschema library is not installed here."]
    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return [f"Not a valid JSON Schema at {where}: {exc.message}"]
    regex_problem = _regex_problem(schema)
    return [regex_problem] if regex_problem else []


@lru_cache(maxsize=64)
def _compiled(encoded: str) -> SchemaCheck | None:
    try:
        from jsonschema import validators
    except ImportError:
        return None
    schema = json.loads(encoded)
    if schema_problems(schema):
        return None
    validator = _re2_validator(validators.validator_for(schema))(schema)

    def check(value: Any) -> bool:
        try:
            return bool(validator.is_valid(value))
        except Exception:  # a pathological value (e.g. nesting past the recursion limit)
            return False

    return check


def schema_validator(schema: Mapping[str, Any] | None) -> SchemaCheck | None:
    """A check of parsed answers against ``schema``, compiled once per distinct schema; None
    without a schema, with one that :func:`schema_problems` refuses, or without the
    ``jsonschema`` library (then ``schema_valid`` is not reported)."""
    if not schema:
        return None
    try:
        encoded = json.dumps(schema, sort_keys=True, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return None
    return _compiled(encoded)
