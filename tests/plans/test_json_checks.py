"""One walk finds the text PostgreSQL cannot store in JSON: the plan validation's paths
(plans/json_checks.unstorable_paths) and the API body's and ingest's field
(outcomes/event_checks.unstorable_field) name the same place."""

from __future__ import annotations

import pytest

from migrations_app.outcomes.event_checks import unstorable_field
from migrations_app.plans.json_checks import unstorable, unstorable_paths

SAMPLE = {
    "ok": "fine",
    "params": {"stop": ["a", "b\x00"], "bad\ud800key": 1},
    "list": [{"x": "\udfff"}],
}


def test_paths_with_prefix_a_bad_key_before_its_objects_values() -> None:
    assert list(unstorable_paths(SAMPLE, "control")) == [
        "control.params",
        "control.params.stop[1]",
        "control.list[0].x",
    ]


def test_paths_from_the_root() -> None:
    assert list(unstorable_paths(SAMPLE, "")) == ["params", "params.stop[1]", "list[0].x"]
    assert list(unstorable_paths(["\x00"], "")) == ["[0]"]


def test_field_is_the_first_path_or_top() -> None:
    assert unstorable_field(SAMPLE, top="body") == "params"
    assert unstorable_field({"a": {"b": ["\x00"]}}, top="body") == "a.b[0]"
    assert unstorable_field({"\x00": 1}, top="body") == "body"
    assert unstorable_field("\ud800") == "sample"
    assert unstorable_field({"a": [1, 2.5, None, True, "ok"]}) is None


@pytest.mark.parametrize(
    ("text", "bad"),
    [("", False), ("plain é 😀", False), ("a\x00", True), ("\ud800", True), ("\udfff", True)],
)
def test_unstorable(text: str, bad: bool) -> None:
    assert unstorable(text) is bad
