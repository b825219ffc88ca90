"""The outbox: enqueue in the causing transaction, deliver once, retry, fail, fold repeats."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from migrations_app.alerts import delivery, outbox
from migrations_app.models import AlertAttempt, AlertChannel, AlertDelivery, MigrationPlan
from tests.alerts.conftest import Receiver, rollback_message
from tests.factories import make_plan

pytestmark = pytest.mark.django_db


def plan_with(*channels: AlertChannel) -> MigrationPlan:
    plan = make_plan()
    plan.alert_channels.set(channels)
    return plan


def webhook(name: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> AlertChannel:
    var = f"T_HOOK_{name.upper()}"  # a name TURNOUT_ALERT_VARS allows (TURNOUT_* never)
    monkeypatch.setenv(f"{var}_URL", f"{receiver.url}/{name}")
    monkeypatch.setenv(f"{var}_SECRET", "s3cret")
    return AlertChannel.objects.create(
        name=name, kind="webhook", url_env=f"{var}_URL", secret_env=f"{var}_SECRET"
    )


def deliver_until_settled(row: AlertDelivery) -> list[str]:
    """Run attempts as the task and its retries would, jumping the clock to each retry."""
    outcomes = []
    now = timezone.now()
    for _ in range(20):
        attempted = delivery.alert_deliver(delivery_id=row.pk, now=now)
        outcomes.append(attempted.outcome)
        if attempted.outcome != "retry":
            break
        now = timezone.now() + timedelta(seconds=attempted.retry_in + 0.01)
    return outcomes


def test_receiver_down_for_a_while_then_up_gets_it_once(receiver, monkeypatch):
    plan = plan_with(webhook("ops", receiver, monkeypatch))
    receiver.reply(503)
    receiver.reply(502)
    receiver.reply(429, headers={"Retry-After": "3"})
    [row] = outbox.alert_enqueue(plan=plan, message=rollback_message())

    assert deliver_until_settled(row) == ["retry", "retry", "retry", "delivered"]
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("delivered", 4)
    tries = list(AlertAttempt.objects.filter(delivery=row).values_list("ok", "status_code"))
    assert tries == [(False, 503), (False, 502), (False, 429), (True, 200)]
    assert len(receiver.requests) == 4
    body = json.loads(receiver.requests[-1].body)
    assert body["alert"]["dedup_key"] == "turnout:support-chat:3:error_rate"
    # a second task for the same row finds nothing to do
    assert delivery.alert_deliver(delivery_id=row.pk).outcome == "not_due"


def test_receiver_down_for_good_fails_after_the_limit_and_blocks_nobody(
    receiver, monkeypatch, settings
):
    settings.TURNOUT_ALERT_MAX_ATTEMPTS = 4
    dead = webhook("dead", receiver, monkeypatch)
    monkeypatch.setenv("T_HOOK_DEAD_URL", "http://127.0.0.1:9/nothing-listens")
    plan = plan_with(dead, webhook("live", receiver, monkeypatch))
    rows = outbox.alert_enqueue(plan=plan, message=rollback_message())
    by_channel = {row.channel.name: row for row in rows}

    assert deliver_until_settled(by_channel["live"]) == ["delivered"]
    assert deliver_until_settled(by_channel["dead"]) == ["retry", "retry", "retry", "failed"]
    failed = AlertDelivery.objects.get(pk=by_channel["dead"].pk)
    assert failed.status == "failed" and "connect" in failed.last_error.lower()
    assert AlertAttempt.objects.filter(delivery=failed).count() == 4


def test_a_permanent_error_fails_at_once(receiver, monkeypatch):
    plan = plan_with(webhook("ops", receiver, monkeypatch))
    receiver.reply(404)
    [row] = outbox.alert_enqueue(plan=plan, message=rollback_message())
    assert deliver_until_settled(row) == ["failed"]


def test_a_flapping_guardrail_pages_once(receiver, monkeypatch):
    plan = plan_with(webhook("ops", receiver, monkeypatch))
    warning = rollback_message(event="warning", severity="warning")
    created = [outbox.alert_enqueue(plan=plan, message=warning) for _ in range(20)]
    assert [len(c) for c in created] == [1] + [0] * 19
    row = AlertDelivery.objects.get(plan=plan)
    assert row.repeats == 19
    # a different event of the same incident is its own page
    assert len(outbox.alert_enqueue(plan=plan, message=rollback_message())) == 1


def test_the_dedup_window_ends(receiver, monkeypatch):
    plan = plan_with(webhook("ops", receiver, monkeypatch))
    outbox.alert_enqueue(plan=plan, message=rollback_message())
    later = timezone.now() + timedelta(minutes=31)
    assert len(outbox.alert_enqueue(plan=plan, message=rollback_message(), now=later)) == 1


def test_due_rows_are_found_by_the_sweeper(receiver, monkeypatch):
    plan = plan_with(webhook("ops", receiver, monkeypatch))
    [row] = outbox.alert_enqueue(plan=plan, message=rollback_message())
    assert delivery.alerts_due() == [row.pk]
    delivery.alert_deliver(delivery_id=row.pk)
    assert delivery.alerts_due() == []


def test_a_fresh_row_is_due_even_when_stamped_by_a_clock_ahead_of_the_worker(receiver, monkeypatch):
    plan = plan_with(webhook("ops", receiver, monkeypatch))
    ahead = timezone.now() + timedelta(minutes=2)
    [row] = outbox.alert_enqueue(plan=plan, message=rollback_message(), now=ahead)
    assert delivery.alert_deliver(delivery_id=row.pk).outcome == "delivered"
    assert len(receiver.requests) == 1


def test_a_row_in_flight_or_backing_off_is_not_due(receiver, monkeypatch):
    plan = plan_with(webhook("ops", receiver, monkeypatch))
    receiver.reply(503)
    [row] = outbox.alert_enqueue(plan=plan, message=rollback_message())
    assert delivery.alert_deliver(delivery_id=row.pk).outcome == "retry"
    # a duplicate task before the backoff is over sends nothing
    assert delivery.alert_deliver(delivery_id=row.pk).outcome == "not_due"
    assert len(receiver.requests) == 1
