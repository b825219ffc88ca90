"""The AlertChannel admin: "send test alert" goes through the outbox to the selected channel
only, and reaches its receiver through a real worker; destinations are shown as their host
only; a channel may name only the variables TURNOUT_ALERT_VARS allows (when saved and when
delivering)."""

from __future__ import annotations

import json
import time

import pytest
from django.test import Client
from django.urls import reverse

from migrations_app.alerts import delivery
from migrations_app.models import AlertChannel, AlertDelivery, DeliveryStatus
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
    off = AlertChannel.objects.create(name="off", kind="slack", url_env="T_OFF_URL", enabled=False)
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
    lonely = AlertChannel.objects.create(name="lonely", kind="slack", url_env="T_LONELY_URL")
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


@pytest.mark.live
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


CHANNEL_ADD = "admin:migrations_app_alertchannel_add"


def _refused(client: Client, data: dict[str, str], field: str, message: str) -> None:
    """The admin's add form answers again (200) with ``message`` on ``field`` only, and no
    channel is saved."""
    response = client.post(reverse(CHANNEL_ADD), data)
    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == [field]
    assert message in response.content.decode()
    assert not AlertChannel.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("url_env", "DATABASE_URL", "one of Turnout&#x27;s own settings"),
        ("url_env", "REDIS_URL", "one of Turnout&#x27;s own settings"),
        ("secret_env", "SECRET_KEY", "one of Turnout&#x27;s own settings"),
        ("secret_env", "TURNOUT_METRICS_TOKEN", "one of Turnout&#x27;s own settings"),
        ("url_env", "HOME", "TURNOUT_ALERT_VARS allows"),
        ("secret_env", "AWS_SECRET_ACCESS_KEY_ID", "TURNOUT_ALERT_VARS allows"),
    ],
)
def test_the_admin_refuses_a_channel_naming_a_secret_it_may_not(
    admin_client: Client, field: str, value: str, message: str
) -> None:
    data = {"name": "x", "kind": "webhook", "url_env": "OPS_HOOK_URL",
            "secret_env": "OPS_HOOK_SECRET", "recipients": "", "enabled": "on",
            field: value}  # fmt: skip
    _refused(admin_client, data, field, message)


@pytest.mark.django_db
def test_the_admin_saves_an_allowed_channel(admin_client: Client) -> None:
    data = {"name": "x", "kind": "pagerduty", "url_env": "", "secret_env": "PD_ROUTING_KEY",
            "recipients": "", "enabled": "on"}  # fmt: skip
    assert admin_client.post(reverse(CHANNEL_ADD), data).status_code == 302
    assert AlertChannel.objects.get(name="x").secret_env == "PD_ROUTING_KEY"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("redis://:hunter2@cache.internal:6379/0", "redis://cache.internal:6379/…"),
        ("https://user:pw@hooks.example.com/T/B/X", "https://hooks.example.com/…"),
        ("https://hooks.example.com", "https://hooks.example.com/…"),
        ("sk-live-0123456789abcdef", "(set, not a URL)"),
        ("hunter2@db/x", "(set, not a URL)"),
    ],
)
def test_the_destination_shows_the_host_of_a_url_and_nothing_else(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch, value: str, shown: str
) -> None:
    monkeypatch.setenv("T_WHERE_URL", value)
    AlertChannel.objects.create(name="ops", kind="webhook", url_env="T_WHERE_URL")
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert f"$T_WHERE_URL → {shown}" in page
    for secret in ("hunter2", "pw@", "0123456789abcdef", "/T/B/X"):
        assert secret not in page


@pytest.mark.django_db
def test_a_channel_saved_before_the_rule_does_not_show_or_use_the_secret(
    admin_client: Client, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row written before the allowlist existed (or before it was narrowed): the admin does
    not read the variable, and the outbox fails the page at once without sending anything."""
    monkeypatch.setenv("T_SAFE_HOOK_URL", f"{receiver.url}/hook")
    monkeypatch.setenv("DATABASE_URL", "https://user:hunter2@db.internal/turnout")
    bad = AlertChannel.objects.create(
        name="bad", kind="webhook", url_env="T_SAFE_HOOK_URL", secret_env="SECRET_KEY"
    )
    leak = AlertChannel.objects.create(name="leak", kind="slack", url_env="DATABASE_URL")
    page = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "db.internal" not in page and "hunter2" not in page
    assert "$DATABASE_URL → (not allowed)" in page
    plan = make_plan()
    plan.alert_channels.set([bad, leak])
    send_test(admin_client, bad, leak)
    for row in AlertDelivery.objects.all():
        assert delivery.alert_deliver(delivery_id=row.pk).outcome == "failed"
        row.refresh_from_db()
        assert row.status == DeliveryStatus.FAILED
        assert "Turnout's own settings" in row.last_error
    assert receiver.requests == []


# --- what each kind needs to deliver (review defect L6) -----------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kind", "given", "field", "message"),
    [
        ("webhook", {"url_env": "OPS_HOOK_URL"}, "secret_env", "A webhook is signed"),
        ("webhook", {"secret_env": "OPS_HOOK_SECRET"}, "url_env", "the webhook&#x27;s URL"),
        ("slack", {}, "url_env", "the Slack incoming webhook URL"),
        ("pagerduty", {"url_env": "PD_URL"}, "secret_env", "the PagerDuty routing key"),
        ("email", {}, "recipients", "at least one address"),
    ],
)
def test_the_admin_refuses_a_channel_that_cannot_deliver(
    admin_client: Client, kind: str, given: dict[str, str], field: str, message: str
) -> None:
    data = {"name": "x", "kind": kind, "url_env": "", "secret_env": "", "recipients": "",
            "enabled": "on", **given}  # fmt: skip
    _refused(admin_client, data, field, message)


@pytest.mark.django_db
def test_the_admin_saves_a_signed_webhook(admin_client: Client) -> None:
    data = {"name": "x", "kind": "webhook", "url_env": "OPS_HOOK_URL",
            "secret_env": "OPS_HOOK_SECRET", "recipients": "", "enabled": "on"}  # fmt: skip
    assert admin_client.post(reverse(CHANNEL_ADD), data).status_code == 302
    assert AlertChannel.objects.get(name="x").secret_env == "OPS_HOOK_SECRET"
