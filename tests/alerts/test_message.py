from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from migrations_app.alerts import AlertMessage, ExamplePair, build_test_message, render_text
from migrations_app.alerts.message import MAX_EXCERPT_CHARS

from .conftest import assert_snapshot, cannot_evaluate_message, recovered_message, rollback_message


@pytest.mark.parametrize("make", [rollback_message, recovered_message, cannot_evaluate_message])
def test_round_trips_through_json(make) -> None:
    message = make()
    stored = json.dumps(message.to_dict())
    assert AlertMessage.from_dict(json.loads(stored)) == message
    assert AlertMessage.from_dict(json.loads(stored)).to_dict() == message.to_dict()


def test_is_frozen_including_its_counts() -> None:
    message = rollback_message()
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.run = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        message.error_kinds_candidate["timeout"] = 0  # type: ignore[index]


def test_counts_most_frequent_first_and_copied() -> None:
    counts = {"timeout": 12, "server_error": 7, "rate_limit": 41}
    message = rollback_message(error_kinds_candidate=counts)
    counts["timeout"] = 999
    assert list(message.error_kinds_candidate.items()) == [
        ("rate_limit", 41),
        ("timeout", 12),
        ("server_error", 7),
    ]


def test_acted_at_is_normalised_to_utc_z() -> None:
    assert rollback_message(acted_at="2025-06-03T16:02:07.512+02:00").acted_at == (
        "2025-06-03T14:02:07Z"
    )
    with pytest.raises(ValueError):
        rollback_message(acted_at="2025-06-03T14:02:07")


@pytest.mark.parametrize(
    "overrides",
    [{"event": "exploded"}, {"severity": "page-everyone"}, {"dedup_key": ""}],
)
def test_rejects_unknown_values(overrides: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        rollback_message(**overrides)


def test_keeps_three_examples_with_capped_excerpts() -> None:
    pair = ExamplePair(prompt="p" * 5000, control="c", candidate="d")
    message = rollback_message(examples=[pair] * 5)
    assert len(message.examples) == 3
    assert len(message.examples[0].prompt) == MAX_EXCERPT_CHARS
    assert message.examples[0].prompt.endswith("…")


def test_headline_and_message_id() -> None:
    trigger, resolution = rollback_message(), recovered_message()
    assert trigger.headline == "support-chat rolled back: error_rate regressed"
    assert trigger.message_id == rollback_message().message_id
    assert trigger.message_id != resolution.message_id
    assert trigger.dedup_key == resolution.dedup_key == "turnout:support-chat:3:error_rate"
    assert rollback_message(reason="error_rate\nregressed").headline == trigger.headline


def test_test_message_never_folds_into_an_incident() -> None:
    first = build_test_message(
        plan_key="support-chat",
        plan_name="Support chat",
        run=3,
        dashboard_url="https://turnout.example.com/plans/support-chat/",
        now=datetime(2025, 6, 3, 14, 0, tzinfo=UTC),
    )
    later = build_test_message(
        plan_key="support-chat",
        plan_name="Support chat",
        run=3,
        dashboard_url="https://turnout.example.com/plans/support-chat/",
        now=datetime(2025, 6, 3, 14, 5, tzinfo=UTC),
    )
    same_second = build_test_message(
        plan_key="support-chat",
        plan_name="Support chat",
        run=3,
        dashboard_url="https://turnout.example.com/plans/support-chat/",
        now=datetime(2025, 6, 3, 14, 0, 0, 250_000, tzinfo=UTC),
    )
    assert first.event == "test" and first.severity == "info"
    assert len({first.dedup_key, later.dedup_key, same_second.dedup_key}) == 3
    assert first.dedup_key != rollback_message().dedup_key


def test_render_text_snapshot() -> None:
    assert_snapshot("text_rolled_back.txt", render_text(rollback_message()).encode())
    assert_snapshot("text_cannot_evaluate.txt", render_text(cannot_evaluate_message()).encode())
