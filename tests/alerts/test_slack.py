from __future__ import annotations

import json

import pytest

from migrations_app.alerts import DeliveryError, SlackChannel, Target, get_channel

from .conftest import (
    FIXED_NOW,
    Receiver,
    assert_snapshot,
    cannot_evaluate_message,
    http_snapshot,
    rollback_message,
)

HEADERS = ["Content-Type", "User-Agent"]
PATH = "/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX"


def test_rollback_payload_snapshot(receiver: Receiver) -> None:
    result = get_channel("slack").deliver(
        rollback_message(), Target(url=receiver.url + PATH), now=FIXED_NOW
    )
    assert result.status_code == 200
    assert result.response_excerpt == "ok"
    assert result.latency_ms > 0
    [request] = receiver.requests
    assert_snapshot("slack_rolled_back.http", http_snapshot(request, HEADERS))


def test_cannot_evaluate_payload_snapshot(receiver: Receiver) -> None:
    get_channel("slack").deliver(
        cannot_evaluate_message(), Target(url=receiver.url + PATH), now=FIXED_NOW
    )
    [request] = receiver.requests
    assert_snapshot("slack_cannot_evaluate.http", http_snapshot(request, HEADERS))


def test_blocks_carry_the_evidence_and_escape_user_text() -> None:
    prepared = SlackChannel().build(rollback_message(), Target(url="https://x"), now=FIXED_NOW)
    payload = json.loads(prepared.body)
    assert [block["type"] for block in payload["blocks"]] == [
        "header",
        "section",
        "section",
        "context",
        "section",
        "section",
        "actions",
    ]
    everything = prepared.body.decode()
    assert "rate_limit 41" in everything and "anthropic:claude-sonnet-4" in everything
    # Answer text must not turn into Slack markup (links, mentions).
    assert "<b>" not in everything and "&lt;b&gt;" in everything
    button = payload["blocks"][-1]["elements"][0]
    assert button["url"] == "https://turnout.example.com/plans/support-chat/runs/3/"
    assert payload["text"].startswith("support-chat rolled back: error_rate regressed\n")


def test_header_stays_within_slack_limit() -> None:
    prepared = SlackChannel().build(
        rollback_message(reason="x" * 400), Target(url="https://x"), now=FIXED_NOW
    )
    header = json.loads(prepared.body)["blocks"][0]["text"]["text"]
    assert len(header) == 150


def test_without_url_is_permanent() -> None:
    with pytest.raises(DeliveryError) as caught:
        SlackChannel().build(rollback_message(), Target(), now=FIXED_NOW)
    assert caught.value.transient is False
