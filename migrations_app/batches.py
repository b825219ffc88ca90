"""Batch ingest, shared by outcomes, feedback and shadow samples: per-event field checks that
name the field and a stable code, and the answer a batch gets (stored, duplicates, rejected).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings

from migrations_app.errors import DomainError, ValidationFailed

MAX_ID_LENGTH = 64
MAX_UNIT_LENGTH = 256
MAX_MS = 24 * 3600 * 1000.0  # a request that took a day is a unit mistake, not a latency
MAX_TOKENS = 2**31 - 1
FUTURE_SLACK = timedelta(minutes=5)  # client clocks drift; more than this is a bad timestamp
# PostgreSQL text cannot hold NUL, and a lone surrogate (valid in JSON's \ud800) has no UTF-8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    field: str
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "field": self.field,
            "code": self.code,
            "message": self.message,
        }


@dataclass(slots=True)
class IngestResult:
    stored: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stored": self.stored,
            "duplicates": self.duplicates,
            "rejected": [r.to_dict() for r in self.rejected],
        }


class Invalid(Exception):
    """One event's problem: the field at fault, a stable code, words for a person."""

    def __init__(self, field: str, code: str, message: str) -> None:
        super().__init__(message)
        self.field, self.code, self.message = field, code, message


# --- field checks ------------------------------------------------------------------------


def is_text(value: Any, max_length: int) -> bool:
    """A string the database can store and compare: 1 to ``max_length`` characters, no NUL,
    no lone surrogate. (Check before a value goes into any query, even a lookup.)"""
    return (
        isinstance(value, str)
        and 0 < len(value) <= max_length
        and _UNSTORABLE.search(value) is None
    )


def text(event: Mapping[str, Any], name: str, max_length: int) -> str:
    value = event.get(name)
    if value is None:
        raise Invalid(name, "required", f"{name} is required.")
    if not is_text(value, max_length):
        raise Invalid(
            name,
            "invalid",
            f"{name} must be a string of 1 to {max_length} characters, without NUL or lone"
            " surrogates.",
        )
    return value


def finite_number(value: Any) -> bool:
    """A JSON number that is not NaN or infinite. (Python's json reads the literals NaN and
    Infinity; ``math.isfinite`` would overflow on a 400-digit integer, which compares fine.)"""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def number(event: Mapping[str, Any], name: str, *, required: bool, maximum: float) -> float | None:
    value = event.get(name)
    if value is None:
        if required:
            raise Invalid(name, "required", f"{name} is required.")
        return None
    if not finite_number(value):
        raise Invalid(name, "invalid", f"{name} must be a number.")
    if not 0 <= value <= maximum:
        raise Invalid(name, "out_of_range", f"{name} must be between 0 and {maximum:g}.")
    return float(value)


def integer(event: Mapping[str, Any], name: str, *, required: bool, minimum: int = 0) -> int | None:
    value = event.get(name)
    if value is None:
        if required:
            raise Invalid(name, "required", f"{name} is required.")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(name, "invalid", f"{name} must be an integer.")
    if not minimum <= value <= MAX_TOKENS:
        raise Invalid(name, "out_of_range", f"{name} must be between {minimum} and {MAX_TOKENS}.")
    return value


_bounds: tuple[datetime, float, float] | None = None


def _ts_bounds(now: datetime) -> tuple[float, float]:
    """(earliest, latest) acceptable event time in epoch seconds, computed once per batch
    (a batch passes one ``now`` to every event's check)."""
    global _bounds
    cached = _bounds
    if cached is None or cached[0] is not now:
        retention = timedelta(days=settings.TURNOUT_RAW_RETENTION_DAYS)
        cached = (now, (now - retention).timestamp(), (now + FUTURE_SLACK).timestamp())
        _bounds = cached
    return cached[1], cached[2]


def timestamp(event: Mapping[str, Any], now: datetime) -> datetime:
    seconds = number(event, "ts", required=True, maximum=4e9)
    assert seconds is not None
    earliest, latest = _ts_bounds(now)
    if seconds > latest:
        raise Invalid("ts", "out_of_range", "ts is in the future; check the client's clock.")
    if seconds < earliest:
        raise Invalid("ts", "out_of_range", "ts is older than the retention period.")
    return datetime.fromtimestamp(seconds, tz=UTC)


def events_of(payload: Any, key: str = "events") -> list[Any]:
    """The batch's list under ``key``, or a 400 naming it."""
    events = payload.get(key) if isinstance(payload, Mapping) else None
    if not isinstance(events, list):
        raise ValidationFailed(
            f"The body must be an object with a '{key}' list.",
            details={"field": key, "fields": {key: ["A list."]}},
        )
    return events


def check_batch_size(events: Sequence[Any]) -> None:
    limit = settings.TURNOUT_INGEST_MAX_BATCH
    if len(events) > limit:
        raise DomainError(
            f"A batch holds at most {limit} events; this one has {len(events)}.",
            code="batch_too_large",
            status=413,
            details={"field": "events", "max": limit},
        )
