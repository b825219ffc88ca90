"""What a dataset item may hold, checked field by field, and the caps on a whole set.

An item (a JSONL line, or one of ``POST /api/v1/datasets``' ``items``)::

    {"request": {"messages": [{"role": "user", "content": "..."}],
                 "params": {"temperature": 0.2}, "json_schema": {...}},
     "reference": "...", "control_answer": "...", "tags": ["billing", "fr"]}

Only ``request.messages`` is required. The request is held to a shadow sample's rules (the
same checks: roles, text sizes, a bounded JSON schema), params to what a shadow sample may set
(``turnout.providers.params``): for a set made for a plan, what its candidate's provider
takes; otherwise what some provider kind takes (the replay keeps, per candidate, only what
that candidate takes, as the shadow worker does). No other key is accepted anywhere.

Problems are collected for every item (up to :data:`MAX_PROBLEMS`) and named by the item's
place: ``line 4`` in a file, ``items[3]`` in a body. Nothing is stored from a set with any.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from turnout.contract import MAX_CONTENT_CHARS, MAX_JSON_DEPTH, MAX_SCHEMA_BYTES
from turnout.providers.params import INVALID, NOT_ALLOWED, SAMPLE_PARAMS, sample_param_problems

from migrations_app.errors import DomainError, ValidationFailed
from migrations_app.models import DATASET_NAME
from migrations_app.outcomes.event_checks import Invalid, unstorable_field
from migrations_app.plans.json_checks import unstorable
from migrations_app.shadow.samples import _bounded_schema, checked_messages

#: Items one dataset may hold.
MAX_ITEMS = 10_000
#: An uploaded JSONL file, in bytes (10 MiB).
MAX_FILE_BYTES = 10 * 1024 * 1024
#: One line of an uploaded file, in bytes (a request of a few long messages fits).
MAX_LINE_BYTES = 1024 * 1024
#: Messages in one item's request.
MAX_MESSAGES = 200
#: Tags on one item, and the characters of one tag.
MAX_TAGS = 16
MAX_TAG_CHARS = 64
MAX_DESCRIPTION_CHARS = 2000
#: Problems reported for one set (the rest are counted, not listed).
MAX_PROBLEMS = 100

ITEM_KEYS = frozenset({"request", "reference", "control_answer", "tags"})
REQUEST_KEYS = frozenset({"messages", "params", "json_schema"})


@dataclass(frozen=True)
class Problem:
    """One item's problem: where (``line 4`` / ``items[3]``), the field, a stable code
    (``turnout.contract.RejectionCode``) and words for a person."""

    where: str
    field: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {
            "where": self.where,
            "field": self.field,
            "code": self.code,
            "message": self.message,
        }


def _params(params: Any, kind: str | None, arm_params: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise Invalid("request.params", INVALID, "request.params must be an object.")
    if kind is not None:
        for name, code, message in sample_param_problems(kind, arm_params, params):
            raise Invalid(f"request.params.{name}", code, message)
        return dict(params)
    allowed = sorted({name for checks in SAMPLE_PARAMS.values() for name in checks})
    for name, value in params.items():
        checks = [c[name] for c in SAMPLE_PARAMS.values() if isinstance(name, str) and name in c]
        if not checks:
            shown = str(name)[:64]
            raise Invalid(
                f"request.params.{shown}",
                NOT_ALLOWED,
                f"A dataset item may not set {shown!r}; allowed: {allowed}.",
            )
        problems = [check(value) for check in checks]
        if all(problems):
            raise Invalid(f"request.params.{name}", INVALID, f"{name} {problems[0]}.")
    return dict(params)


def _text_or_none(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > MAX_CONTENT_CHARS):
        raise Invalid(
            name, INVALID, f"{name} must be null or a string of at most {MAX_CONTENT_CHARS} chars."
        )
    return value


def tag_problem(tag: Any) -> str | None:
    """Why ``tag`` is not a tag, or None."""
    if (
        not isinstance(tag, str)
        or not 0 < len(tag) <= MAX_TAG_CHARS
        or not tag.isprintable()
        or tag != tag.strip()
        or unstorable(tag)
    ):
        return f"A tag is 1 to {MAX_TAG_CHARS} printable characters, no surrounding spaces."
    return None


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TAGS:
        raise Invalid("tags", INVALID, f"tags must be a list of at most {MAX_TAGS} strings.")
    tags: list[str] = []
    for i, tag in enumerate(value):
        if problem := tag_problem(tag):
            raise Invalid(f"tags[{i}]", INVALID, problem)
        if tag not in tags:
            tags.append(tag)
    return tags


def checked_item(
    raw: Any, *, kind: str | None = None, arm_params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One item as it is stored (``request``, ``reference``, ``control_answer``, ``tags``),
    or :class:`Invalid` naming its first problem. ``kind``: the candidate's provider kind, when
    the set is made for a plan (its params then checked for that kind alone)."""
    if not isinstance(raw, Mapping):
        raise Invalid("item", INVALID, "An item is a JSON object with a request.")
    if bad := unstorable_field(raw, top="item"):
        raise Invalid(bad, INVALID, "Holds a NUL or a lone surrogate, which cannot be stored.")
    for key in raw:
        if key not in ITEM_KEYS:
            raise Invalid(
                str(key)[:64], INVALID, f"Unknown field; an item holds {sorted(ITEM_KEYS)}."
            )
    request = raw.get("request")
    if not isinstance(request, Mapping):
        raise Invalid("request", "required", "request is required (messages, params).")
    for key in request:
        if key not in REQUEST_KEYS:
            raise Invalid(
                f"request.{str(key)[:64]}",
                INVALID,
                f"Unknown field; a request holds {sorted(REQUEST_KEYS)}.",
            )
    messages = request.get("messages")
    if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
        raise Invalid("request.messages", INVALID, f"At most {MAX_MESSAGES} messages.")
    schema = request.get("json_schema")
    if schema is not None and not _bounded_schema(schema):
        raise Invalid(
            "request.json_schema",
            INVALID,
            f"request.json_schema must be an object of at most {MAX_SCHEMA_BYTES} bytes, "
            f"nested at most {MAX_JSON_DEPTH} levels, its numbers finite.",
        )
    return {
        "request": {
            "messages": checked_messages(request),
            "params": _params(request.get("params", {}), kind, arm_params or {}),
            "json_schema": dict(schema) if schema is not None else None,
        },
        "reference": _text_or_none(raw, "reference"),
        "control_answer": _text_or_none(raw, "control_answer"),
        "tags": _tags(raw.get("tags")),
    }


def checked_items(
    raws: Iterable[tuple[str, Any]],
    *,
    kind: str | None = None,
    arm_params: Mapping[str, Any] | None = None,
    problems: list[Problem] | None = None,
) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Each ``(where, raw item)`` checked: the items, and every problem found (appended to
    ``problems`` when given: a file's unreadable lines come first)."""
    problems = [] if problems is None else problems
    items = []
    for where, raw in raws:
        try:
            items.append(checked_item(raw, kind=kind, arm_params=arm_params))
        except Invalid as bad:
            problems.append(Problem(where, bad.field, bad.code, bad.message))
    return items, problems


def too_many(count: int) -> DomainError:
    """413 ``batch_too_large``: a set past :data:`MAX_ITEMS`."""
    return DomainError(
        f"A dataset holds at most {MAX_ITEMS} items; this one has {count}. Split it.",
        code="batch_too_large",
        status=413,
        details={"field": "items", "max_items": MAX_ITEMS},
    )


def refused(problems: Sequence[Problem]) -> ValidationFailed:
    """400 ``validation_failed`` naming each problem (``details.problems``, and
    ``details.fields`` keyed ``"<where> <field>"``)."""
    shown = list(problems[:MAX_PROBLEMS])
    first = shown[0]
    more = f" ({len(problems)} problems in all)" if len(problems) > 1 else ""
    return ValidationFailed(
        f"{first.where}: {first.field}: {first.message}{more} Nothing was stored.",
        details={
            "fields": {f"{p.where} {p.field}": [p.message] for p in shown},
            "problems": [p.to_dict() for p in shown],
            "problem_count": len(problems),
        },
    )


def empty() -> ValidationFailed:
    return ValidationFailed(
        "A dataset needs at least one item.",
        details={"fields": {"items": ["At least one item."]}},
    )


def name_problem(name: Any) -> str | None:
    """Why ``name`` is not a dataset name, or None (the model's DATASET_NAME rule; matched
    whole, so a trailing newline is not taken)."""
    if not isinstance(name, str) or unstorable(name) or DATASET_NAME.regex.fullmatch(name) is None:
        return str(DATASET_NAME.message)
    return None
