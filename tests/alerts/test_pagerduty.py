from __future__ import annotations

import json

import pytest

from migrations_app.alerts import DeliveryError, PagerDutyChannel, Target, get_channel
from migrations_app.alerts.pagerduty import EVENTS_URL

from .conftest import (
    FIXED_NOW,
    Receiver,
    assert_snapshot,
    http_snapshot,
    recovered_message,
    rollback_message,
)

HEADERS = ["Content-Type", "User-Agent"]
ROUTING_KEY = "R0UT1NGKEY0000000000000000000000"


def accepted(receiver: Receiver) -> None:
    receiver.default.status = 202
    receiver.default.body = b'{"status":"success","message":"Event processed"}'


def test_trigger_then_resolve_with_the_same_dedup_key(receiver: Receiver) -> None:
    accepted(receiver)
    target = Target(url=receiver.url + "/v2/enqueue", secret=ROUTING_KEY)
    channel = get_channel("pagerduty")
    first = channel.deliver(rollback_message(), target, now=FIXED_NOW)
    second = channel.deliver(recovered_message(), target, now=FIXED_NOW)
    assert first.status_code == second.status_code == 202
    trigger, resolve = (json.loads(r.body) for r in receiver.requests)
    assert trigger["event_action"] == "trigger"
    assert resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] == "turnout:support-chat:3:error_rate"
    assert trigger["routing_key"] == resolve["routing_key"] == ROUTING_KEY
    assert_snapshot("pagerduty_trigger.http", http_snapshot(receiver.requests[0], HEADERS))
    assert_snapshot("pagerduty_resolve.http", http_snapshot(receiver.requests[1], HEADERS))


def test_trigger_carries_severity_evidence_and_link() -> None:
    prepared = PagerDutyChannel().build(
        rollback_message(), Target(secret=ROUTING_KEY), now=FIXED_NOW
    )
    assert prepared.url == EVENTS_URL
    event = json.loads(prepared.body)
    payload = event["payload"]
    assert payload["severity"] == "critical"
    assert payload["timestamp"] == "2025-06-03T14:02:07Z"
    assert payload["summary"].startswith("support-chat rolled back: error_rate regressed (")
    details = payload["custom_details"]
    assert details["guardrail"]["lower"] == 2.2
    assert details["error_kinds"]["candidate"] == {
        "rate_limit": 41,
        "timeout": 12,
        "server_error": 7,
    }
    assert len(details["examples"]) == 2
    assert event["links"] == [
        {"href": "https://turnout.example.com/plans/support-chat/runs/3/", "text": "Plan dashboard"}
    ]


@pytest.mark.parametrize("severity", ["critical", "error", "warning", "info"])
def test_severity_mapping(severity: str) -> None:
    prepared = PagerDutyChannel().build(
        rollback_message(severity=severity), Target(secret=ROUTING_KEY), now=FIXED_NOW
    )
    assert json.loads(prepared.body)["payload"]["severity"] == severity


def test_acknowledge_on_request() -> None:
    prepared = PagerDutyChannel().build(
        rollback_message(), Target(secret=ROUTING_KEY), now=FIXED_NOW, action="acknowledge"
    )
    assert json.loads(prepared.body) == {
        "routing_key": ROUTING_KEY,
        "event_action": "acknowledge",
        "dedup_key": "turnout:support-chat:3:error_rate",
    }


def test_without_routing_key_is_permanent() -> None:
    with pytest.raises(DeliveryError) as caught:
        PagerDutyChannel().build(rollback_message(), Target(), now=FIXED_NOW)
    assert caught.value.transient is False
