"""Redaction runs on RE2 only (issue 14, MUST 1): a plan's pattern such as ``(a+)+$`` met a
prompt of 34 a's and a '!' and pinned a worker under Python's backtracking ``re``. RE2 is
linear whatever the pattern; what it cannot compile is refused at save, by pattern."""

from __future__ import annotations

import json
import random
import re

import pytest
import re2
from django.test import Client

from migrations_app.api.keys import apikey_create
from migrations_app.models import ShadowSample
from migrations_app.plans.checks import validate_redaction_patterns
from migrations_app.shadow import redaction
from migrations_app.shadow.redaction import redactor
from tests.shadow.test_shadow import sample, shadow_plan

EXPLOSIVE = "(a+)+$"
# What Python's re takes 2^34 steps on with EXPLOSIVE.
HOSTILE = "a" * 34 + "!"


def test_every_redaction_pattern_is_compiled_by_re2() -> None:
    redaction._rules.cache_clear()
    rules, phone, own, broken = redaction._rules((EXPLOSIVE, r"order \d+"))
    compiled = [p for p, _ in rules] + [phone, *own]
    assert len(own) == 2 and not broken
    assert all(isinstance(p, re2._Regexp) for p in compiled), [type(p) for p in compiled]


def test_the_explosive_pattern_redacts_what_it_matches_and_leaves_the_rest() -> None:
    redact = redactor([EXPLOSIVE])
    assert redact(HOSTILE) == HOSTILE
    assert redact("b" + "a" * 5000) == "b[redacted]"


# The phone pattern as it was with Python's lookarounds: the RE2 version must agree with it.
OLD_PHONE = re.compile(r"(?<![\w.])\+?\d[\d ().-]{7,}\d(?![\w.])")


def test_phones_are_masked_as_the_lookaround_pattern_did() -> None:
    rng = random.Random(14)
    alphabet = "0123456789 ().-+a_.,\n"
    texts = [
        "call +1 415 555 0100",
        "555-123-4567 555-123-4567.x 12345678901a (415) 555-0100, v1.2.3456789012",
        "x1234567890 1234567890 1234567890",
    ]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(40))) for _ in range(3000)]
    phone = re2.compile(redaction.PHONE)
    for text in texts:
        assert redaction._mask_phones(phone, text) == OLD_PHONE.sub("[phone]", text), text


def test_a_stored_pattern_re2_refuses_masks_the_whole_text() -> None:
    # Saved before the validation used RE2: fail closed rather than leak.
    assert redactor([r"(?<=a)b"])("my secret") == "[redacted]"


def test_a_lone_surrogate_in_an_answer_does_not_break_redaction() -> None:
    assert redactor([])("ok \ud800 mail me at a@b.io") == "ok ? mail me at [email]"


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        ([EXPLOSIVE, r"order \d+"], {}),
        ([r"ok", r"(?<=a)b"], {"redaction_patterns[1]": "RE2 cannot compile it"}),
        ([r"(a)\1"], {"redaction_patterns[0]": "RE2 cannot compile it"}),
        (["x" * 257], {"redaction_patterns[0]": "over the limit of 256"}),
        (["a"] * 51, {"redaction_patterns": "At most 50 patterns"}),
        ("a", {"redaction_patterns": "A list of regular expressions"}),
    ],
)
def test_the_setting_is_checked_with_re2_naming_each_pattern(
    patterns: object, expected: dict[str, str]
) -> None:
    problems = validate_redaction_patterns(patterns)
    assert sorted(problems) == sorted(expected)
    for path, message in expected.items():
        assert message in problems[path][0]


@pytest.mark.django_db
def test_a_hostile_sample_is_stored_redacted_under_the_explosive_pattern() -> None:
    plan = shadow_plan(redaction_patterns=[EXPLOSIVE])
    key = apikey_create(name="reporter", scopes=["report"])[1]
    event = sample(plan)
    event["control"]["text"] = HOSTILE
    event["request"]["messages"][1]["content"] = "b" + "a" * 40
    response = Client(HTTP_AUTHORIZATION=f"Bearer {key}").post(
        "/api/v1/shadow-samples",
        data=json.dumps({"samples": [event]}).encode(),
        content_type="application/json",
    )
    assert response.status_code == 200, response.content[:300]
    assert response.json()["stored"] == 1
    stored = ShadowSample.objects.get(pk=event["id"])
    assert stored.control["text"] == HOSTILE
    assert stored.request["messages"][1]["content"] == "b[redacted]"
