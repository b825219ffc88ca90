"""An uploaded JSONL file read into dataset items: one JSON object per line, blank lines
skipped, each line named by its number (from 1) in what is wrong with it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from turnout.contract import MAX_JSON_DEPTH

from migrations_app.datasets import validation
from migrations_app.datasets.validation import (
    MAX_FILE_BYTES,
    MAX_ITEMS,
    MAX_LINE_BYTES,
    Problem,
)
from migrations_app.errors import DomainError
from migrations_app.outcomes.event_checks import too_deep


def file_too_large(size: int) -> DomainError:
    return DomainError(
        f"The file is {size} bytes; a dataset file may be at most {MAX_FILE_BYTES} bytes "
        f"({MAX_FILE_BYTES // (1024 * 1024)} MiB). Split it.",
        code="payload_too_large",
        status=413,
        details={"field": "file", "max_bytes": MAX_FILE_BYTES},
    )


def read_lines(data: bytes) -> tuple[list[tuple[str, Any]], list[Problem]]:
    """The file's items as ``("line N", parsed JSON)``, and the lines that could not be read.
    Raises 413 past :data:`MAX_FILE_BYTES` and :func:`validation.too_many` past
    :data:`MAX_ITEMS` lines of content (before parsing any: the count alone refuses it)."""
    if len(data) > MAX_FILE_BYTES:
        raise file_too_large(len(data))
    if data.startswith(b"\xef\xbb\xbf"):  # a byte order mark, as some editors save UTF-8
        data = data[3:]
    lines = data.split(b"\n")
    count = sum(1 for line in lines if line.strip())
    if count > MAX_ITEMS:
        raise validation.too_many(count)
    rows: list[tuple[str, Any]] = []
    problems: list[Problem] = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        where = f"line {number}"
        if len(line) > MAX_LINE_BYTES:
            problems.append(
                Problem(where, "line", "invalid", f"A line may be at most {MAX_LINE_BYTES} bytes.")
            )
            continue
        try:
            # Python's parser: the contract's reading of JSON (api.parsers.parse_json's too).
            value = json.loads(line)
        # ValueError: bad JSON or bad UTF-8; RecursionError: nested past the parser's stack.
        except (ValueError, RecursionError) as exc:
            problems.append(Problem(where, "line", "invalid", f"Not valid JSON: {str(exc)[:200]}"))
            continue
        if too_deep(value, MAX_JSON_DEPTH):
            problems.append(
                Problem(where, "line", "invalid", f"JSON nested more than {MAX_JSON_DEPTH} deep.")
            )
            continue
        if not isinstance(value, Mapping):
            problems.append(Problem(where, "line", "invalid", "Each line is one JSON object."))
            continue
        rows.append((where, value))
    return rows, problems
