"""Batch ingest, shared by outcomes, feedback and shadow samples: per-event field checks that
name the field and a stable code, and the answer a batch gets (stored, duplicates, rejected).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from django.conf import settings
from turnout.contract import (
    MAX_ID_LENGTH,
    MAX_JSON_DEPTH,
    MAX_PLAN_KEY_LENGTH,
    MAX_TOKENS,
    TOKENS_HARD_CAP,
    RejectionCode,
)

from migrations_app.errors import DomainError, ValidationFailed
from migrations_app.plans.json_checks import UNSTORABLE, unstorable_paths

if TYPE_CHECKING:
    from migrations_app.outcomes.plan_info import PlanInfo

FUTURE_SLACK = timedelta(minutes=5)  # client clocks drift; more than this is a bad timestamp


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
        # A code of the contract (``RejectionCode``): ValueError here for any other.
        self.field, self.code, self.message = field, RejectionCode(code).value, message


# --- field checks ------------------------------------------------------------------------


def unstorable_char(value: str) -> str | None:
    """The first character of ``value`` PostgreSQL text cannot hold (NUL, a lone surrogate), or
    None. Every path that takes a unit or an id from a client checks it: a unit routed by
    /decide or OFREP must be one whose outcomes ingest can store."""
    found = UNSTORABLE.search(value)
    return found.group() if found else None


def unstorable_field(value: Any, top: str = "sample") -> str | None:
    """The field of the first string in parsed JSON ``value``, a key or a value at any depth,
    that PostgreSQL cannot store (:func:`unstorable_char`), or None. Keys are named by the
    object that holds them (``top`` for the value's own), items as ``name[i]``. For what is
    stored as JSON (jsonb refuses ``\\u0000`` and lone surrogates anywhere, keys included).
    One walk with the plan validation's (:func:`~migrations_app.plans.json_checks.unstorable_paths`)."""
    found = next(unstorable_paths(value, ""), None)
    return None if found is None else found or top


def is_text(value: Any, max_length: int) -> bool:
    """A string the database can store and compare: 1 to ``max_length`` characters, no NUL,
    no lone surrogate. (Check before a value goes into any query, even a lookup.)"""
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        return False
    # ASCII (every id and unit an SDK makes) has no surrogate: only a NUL to look for.
    return "\x00" not in value if value.isascii() else UNSTORABLE.search(value) is None


def storable(value: str) -> str:
    """``value`` without what PostgreSQL cannot store (NUL, lone surrogates): for text that
    comes from elsewhere (a model's answer) and must be kept, not refused."""
    return UNSTORABLE.sub("", value)


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


# A tuple, not ``dict | list``: the union is built anew on every evaluation, once per value
# walked, and /decide and OFREP walk every body.
_CONTAINERS = (dict, list)


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether parsed JSON nests containers more than ``limit`` deep. Walked with a stack of
    its own: recursion is exactly what such a value would overflow."""
    if not isinstance(value, _CONTAINERS):
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, _CONTAINERS))
    return False


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


def tokens(
    event: Mapping[str, Any], name: str, *, limit: int, what: str, field_name: str = ""
) -> int | None:
    """A token count: an integer from 0 to ``limit`` (the model's own limit, ``what`` says
    which) and :data:`TOKENS_HARD_CAP`; None when absent. Beyond the limit it is a unit
    mistake or a forged count, and priced it would swing the cost statistics."""
    field_name = field_name or name
    value = event.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(field_name, "invalid", f"{name} must be an integer.")
    if value < 0:
        raise Invalid(field_name, "out_of_range", f"{name} must not be negative.")
    cap = min(limit, TOKENS_HARD_CAP)
    if value > cap:
        raise Invalid(
            field_name, "over_model_limit", f"{name} {value} is more than {what} ({cap} tokens)."
        )
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


def plan_keys(events: Sequence[Any]) -> set[str]:
    """The plan keys a batch's events name that may go into a query (:func:`is_text`)."""
    return {
        e["plan"]
        for e in events
        if isinstance(e, Mapping) and is_text(e.get("plan"), MAX_PLAN_KEY_LENGTH)
    }


class SampleHeader(NamedTuple):
    sample_id: str
    decision_id: str
    info: PlanInfo
    run_id: int | None
    stage_id: int | None


def sample_header(event: Any, infos: Mapping[str, PlanInfo], identity: Any) -> SampleHeader:
    """The fields a shadow or judge sample opens with, checked in order (the first bad one is
    named): an object, nothing PostgreSQL cannot store anywhere in it (the sample is stored
    as JSON, where such text is refused anywhere: a 500 for the whole batch, which the SDK
    would resend for ever), its id and decision id, a plan the key may see, a version the
    plan has, and the run the plan was at in that version."""
    if not isinstance(event, Mapping):
        raise Invalid("sample", "invalid", "Each sample must be an object.")
    bad = unstorable_field(event)
    if bad is not None:
        raise Invalid(
            bad, "invalid", f"{bad} holds a NUL or a lone surrogate, which cannot be stored."
        )
    sample_id = text(event, "id", MAX_ID_LENGTH)
    decision_id = text(event, "decision_id", MAX_ID_LENGTH)
    key = text(event, "plan", MAX_PLAN_KEY_LENGTH)
    info = infos.get(key)
    if info is None or not identity.may_see(info.plan.pk):
        raise Invalid("plan", "plan_not_found", f"No plan with key {key!r}.")
    version = integer(event, "plan_version", required=True, minimum=1)
    assert version is not None
    if version > info.plan.version:
        raise Invalid("plan_version", "unknown_version", f"Plan {key!r} has no version {version}.")
    run_id, run_number, stage_id = info.at(version)
    if (run_number or 0) != integer(event, "run", required=True):
        raise Invalid("run", "run_mismatch", f"Plan {key!r} was at run {run_number or 0}.")
    return SampleHeader(sample_id, decision_id, info, run_id, stage_id)
