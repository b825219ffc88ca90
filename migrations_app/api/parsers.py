"""The API's request parsers: :func:`parse_json` for the plain-Django views (decide, OFREP,
ingest), and DRF's ``DEFAULT_PARSER_CLASSES`` for the rest."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any

import orjson
from rest_framework import parsers
from rest_framework.exceptions import ParseError, ValidationError
from turnout.contract import MAX_JSON_DEPTH

from migrations_app.outcomes.event_checks import (
    too_deep,
    unstorable_field,
)


class BodyNotJSON(ValueError):
    """The body is not JSON (or not UTF-8, or nested past the parser's own stack)."""


class BodyTooDeep(ValueError):
    """The body is JSON nested deeper than the caller allows."""


def parse_json(body: bytes, *, max_depth: int | None = MAX_JSON_DEPTH) -> Any:
    """The body as the contract reads JSON: Python's parser. orjson first, for speed; what it
    refuses and Python's parser reads (NaN and Infinity literals, numbers past a double, lone
    surrogates) is then read by Python's, and the field checks after this refuse it where it
    matters. Nesting deeper than ``max_depth`` is refused (None: the caller's checks bound what
    they walk themselves), as is nesting past the parser's stack (RecursionError)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            data = json.loads(body)
        # ValueError covers bad JSON and bad UTF-8, and integers beyond Python's digit limit.
        except (ValueError, RecursionError) as exc:
            raise BodyNotJSON(str(exc) or type(exc).__name__) from None
    if max_depth is not None and too_deep(data, max_depth):
        raise BodyTooDeep(f"nested more than {max_depth} levels deep")
    return data


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser with nesting bounded. DRF's catches ValueError only: a body nested
    past Python's parser stack raised RecursionError, a 500; and one within it could still
    overflow whatever walks it recursively afterwards (a serializer, an encoder).

    A NUL or a lone surrogate anywhere in the body (a key or a value) is refused with 400
    naming the field, before any view reads it: PostgreSQL stores neither, and a lone
    surrogate echoed in an error message made the renderer fail (UnicodeEncodeError, a 500)."""

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
        if too_deep(data):
            raise ParseError(f"JSON parse error - nested more than {MAX_JSON_DEPTH} levels deep.")
        bad = unstorable_field(data, top="body")
        if bad is not None:
            raise ValidationError(
                {bad: ["Holds a NUL or a lone surrogate, which cannot be stored."]}
            )
        return data
