"""The one JSON body parser of the plain-Django views (decide, OFREP, ingest) and the one check
of text PostgreSQL can store."""

from __future__ import annotations

import math

import pytest

from migrations_app.api.parsers import BodyNotJSON, BodyTooDeep, parse_json
from migrations_app.outcomes.event_checks import unstorable_char


def test_strict_json_and_what_only_pythons_parser_reads() -> None:
    assert parse_json(b'{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    # orjson refuses these; the contract is Python's parser, so they parse (and the checks after
    # the parser reject them field by field).
    assert math.isnan(parse_json(b'{"a": NaN}')["a"])
    assert parse_json(b'{"a": 1e400}')["a"] == math.inf
    assert parse_json(b'{"a": "\\ud800"}')["a"] == "\ud800"


@pytest.mark.parametrize("body", [b"{oops", b"\xff\xfe\x00garbage\x80", b"[" * 100_000])
def test_not_json(body: bytes) -> None:
    with pytest.raises(BodyNotJSON):
        parse_json(body)


def test_depth_bound_is_the_callers_choice() -> None:
    deep = b"[" * 65 + b"]" * 65
    with pytest.raises(BodyTooDeep):
        parse_json(deep)
    assert parse_json(b"[" * 64 + b"]" * 64) is not None
    assert parse_json(deep, max_depth=None) is not None  # ingest: each event's checks decide


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("plain", None),
        ("ünïcødé ✓ 🚀", None),
        ("a\x00b", "\x00"),
        ("x\ud800", "\ud800"),
        ("\udfff", "\udfff"),
    ],
)
def test_unstorable_char(text: str, found: str | None) -> None:
    assert unstorable_char(text) == found
