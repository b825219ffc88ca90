"""The AlertChannel admin: "send test alert" goes through the outbox to the selected channel
only, and reaches its receiver through a real worker; destinations are shown masked."""

from __future__ import annotations

import json
import time

import pytest
from django.test import Client
from django.urls import reverse

from migrations_app.models import AlertChannel, AlertDelivery
from tests.alerts.conftest import Receiver
from tests.conftest import celery_process
from tests.factories import make_plan

CHANGELIST = "admin:migrations_app_alertchannel_changelist"


def send_test(client: Client, *channels: AlertChannel) -> str:
    response = client.post(
        reverse(CHANGELIST),
        {"action": "send_test_alert", "_selected_action": [c.pk for c in channels]},
        follow=True,
    )
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.django_db
def test_a_test_alert_goes_to_the_selected_channel_only(admin_client: Client) -> None:
    ops = AlertChannel.objects.create(name="ops", kind="slack", url_env="T_OPS_URL")
    other = AlertChannel.objects.create(name="other", kind="slack", url_env="T_OTHER_URL")
    off = AlertChannel.objects.create(name="off", kind="slack", url_env="T_OFF", enabled=False)
    plan = make_plan()
    plan.alert_channels.set([ops, other, off])
    page = send_test(admin_client, ops, off)
    assert "Queued 2 test alert(s)" in page
    rows = AlertDelivery.objects.order_by("channel__name")
    assert [(r.channel.name, r.event, r.severity, r.plan_id) for r in rows] == [
        ("off", "test", "info", plan.pk),  # a disabled channel can be checked before use
        ("ops", "test", "info", plan.pk),
    ]
    assert rows[0].message["plan_key"] == plan.key
    # a second test is a new page, not a repeat folded into the first
    send_test(admin_client, ops)
    assert AlertDelivery.objects.filter(channel=ops).count() == 2


@pytest.mark.django_db
def test_a_channel_no_plan_uses_is_not_sent_and_says_why(admin_client: Client) -> None:
    lonely = AlertChannel.objects.create(name="lonely", kind="slack", url_env="T_LONELY")
    page = send_test(admin_client, lonely)
    assert "Not sent to lonely: add the channel to a plan first." in page
    assert not AlertDelivery.objects.exists()


@pytest.mark.django_db
def test_the_destination_is_shown_without_the_secret_path(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_SLACK_URL", "https://hooks.slack.com/services/T000/B000/XXXXsecret")
    AlertChannel.objects.create(name="ops", kind="slack", url_env="T_SLACK_URL")
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "$T_SLACK_URL → https://hooks.slack.com/…" in page
    assert "XXXXsecret" not in page and "T000" not in page


@pytest.mark.django_db(transaction=True)
def test_a_test_alert_reaches_the_receiver_through_the_worker(
    admin_client: Client, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_HOOK_URL", f"{receiver.url}/hook")
    monkeypatch.setenv("T_HOOK_SECRET", "hook-secret")
    hook = AlertChannel.objects.create(
        name="hook", kind="webhook", url_env="T_HOOK_URL", secret_env="T_HOOK_SECRET"
    )
    plan = make_plan()
    plan.alert_channels.add(hook)
    with celery_process(
        "worker", "--concurrency", "2", "--pool", "threads", "--without-gossip",
        "--without-mingle", log_name="celery-worker-alerts-admin.log",
    ):  # fmt: skip
        send_test(admin_client, hook)
        deadline = time.monotonic() + 60.0  # patience, not a speed limit
        while not AlertDelivery.objects.filter(status="delivered").exists():
            assert time.monotonic() < deadline, list(AlertDelivery.objects.values())
            time.sleep(0.05)
    [request] = receiver.requests
    body = json.loads(request.body)
    assert (body["alert"]["event"], body["alert"]["plan_key"]) == ("test", plan.key)
