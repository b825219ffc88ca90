"""Text PostgreSQL cannot store (NUL, a lone surrogate) anywhere in a shadow sample, keys
included: that sample is rejected with its field and a stable code, the rest of its batch is
stored, and the batch never answers 500 (the SDK retries a 500, so one such sample would
stop all reporting from its process).

Posted over HTTP as JSON escapes (``\\u0000``, ``\\ud800``), as an SDK sends them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from migrations_app.api.keys import apikey_create
from migrations_app.models import ShadowSample
from tests.shadow.test_shadow import sample, shadow_plan

pytestmark = pytest.mark.django_db

BAD = ["\x00", "\ud800", "\udfff", "a\ud83d"]


def _set(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    target = event
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[part]
    target[parts[-1]] = value
    return event


# (how the sample is spoiled, the field the rejection must name)
CASES = [
    (lambda e, b: _set(e, "control.text", f"ok {b}"), "control.text"),
    (
        lambda e, b: _set(e, "request.messages", [{"role": "user", "content": f"x{b}"}]),
        "request.messages[0].content",
    ),
    (lambda e, b: _set(e, "request.params", {"stop": ["a", b]}), "request.params.stop[1]"),
    (
        lambda e, b: _set(
            e, "request.json_schema", {"type": "object", "properties": {f"k{b}": {}}}
        ),
        "request.json_schema.properties",
    ),
    (lambda e, b: _set(e, "plan", f"p{b}"), "plan"),
    (lambda e, b: _set(e, "id", f"i{b}"), "id"),
    (lambda e, b: _set(e, "decision_id", f"d{b}"), "decision_id"),
    (lambda e, b: _set(e, "unit", f"u{b}"), "unit"),
    (lambda e, b: _set(e, "control.error", b), "control.error"),
    (lambda e, b: _set(e, f"x{b}", 1), "sample"),
]


def _post_spoiled_then_good(spoil: Any, value: object, field: str) -> None:
    """Post a sample spoiled with ``value`` and a good one: only the first is refused, as
    ``field`` invalid, and only the good one is stored (200)."""
    plan = shadow_plan()
    key = apikey_create(name="reporter", scopes=["report"])[1]
    good, poisoned = sample(plan), spoil(sample(plan), value)
    response = Client(HTTP_AUTHORIZATION=f"Bearer {key}").post(
        "/api/v1/shadow-samples",
        data=json.dumps({"samples": [poisoned, good]}).encode(),
        content_type="application/json",
    )
    assert response.status_code == 200, response.content[:300]
    body = response.json()
    assert body["stored"] == 1
    assert [(r["index"], r["field"], r["code"]) for r in body["rejected"]] == [
        (0, field, "invalid")
    ]
    assert list(ShadowSample.objects.values_list("pk", flat=True)) == [good["id"]]


@pytest.mark.parametrize("bad", BAD, ids=[repr(b) for b in BAD])
@pytest.mark.parametrize("spoil,field", CASES, ids=[c[1] for c in CASES])
def test_unstorable_text_anywhere_rejects_that_sample_only(spoil, field: str, bad: str) -> None:
    _post_spoiled_then_good(spoil, bad, field)


@pytest.mark.parametrize("odd", [[], ["user"], {}, {"a": 1}], ids=repr)
@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        (
            lambda e, v: _set(e, "request.messages", [{"role": v, "content": "x"}]),
            "request.messages",
        ),
        (lambda e, v: _set(e, "control.error", v), "control.error"),
    ],
    ids=["role", "error"],
)
def test_a_role_or_error_that_is_a_list_or_object_rejects_that_sample_only(
    spoil, field: str, odd: object
) -> None:
    # Issue 14, 3e: an unhashable value met a set lookup (TypeError: the whole batch a 500).
    _post_spoiled_then_good(spoil, odd, field)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")], ids=repr)
def test_nan_or_infinity_in_a_response_format_rejects_that_sample_only(number: float) -> None:
    # Python's parser reads NaN and Infinity; jsonb refuses them (the whole batch was a 500).
    spoil = lambda e, v: _set(e, "request.json_schema", {"type": "number", "maximum": v})  # noqa: E731
    _post_spoiled_then_good(spoil, number, "request.json_schema")
