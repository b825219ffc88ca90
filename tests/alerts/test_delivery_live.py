"""The outbox end to end through a real Celery worker on the real broker: retries scheduled by
the task itself, failure after the limit, a slow channel that holds up nobody, a task run
several times that delivers once, the sweeper picking up a lost enqueue, and a flapping
guardrail that pages once. ``test_outbox.py`` covers the same rules step by step without a
worker; here the task, its countdowns and its compare-and-set meet real concurrency."""

from __future__ import annotations

import json
import threading
from contextlib import AbstractContextManager

import pytest
from django.db import transaction

from controlplane.celery import app as celery_app
from migrations_app.alerts import outbox
from migrations_app.alerts.tasks import deliver_alert, sweep_alerts
from migrations_app.models import AlertAttempt, AlertChannel, AlertDelivery, MigrationPlan
from migrations_app.outcomes import metrics
from migrations_app.routing import changes
from tests.alerts.conftest import Receiver, rollback_message
from tests.conftest import celery_process, wait_for
from tests.factories import make_plan

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]
# How long to wait for the worker before reporting what it did; not a speed limit.
PATIENCE_SECONDS = 60.0
MAX_ATTEMPTS = 3


def rows() -> list[tuple[str, str, int, str]]:
    return list(
        AlertDelivery.objects.order_by("pk").values_list(
            "channel__name", "status", "attempts", "last_error"
        )
    )


def settled() -> bool:
    return not AlertDelivery.objects.filter(status="pending").exists()


def worker_idle() -> bool:
    """Nothing left for the worker: the queue is empty and it holds, runs and schedules
    nothing (asked in the order a task moves, so one in transit is seen somewhere)."""
    if changes.redis_client().llen("celery"):
        return False
    inspect = celery_app.control.inspect(timeout=1.0)
    for reply in (inspect.scheduled(), inspect.reserved(), inspect.active()):
        if not reply or any(reply.values()):
            return False
    return True


def live_worker(max_attempts: int = MAX_ATTEMPTS) -> AbstractContextManager[object]:
    """A real worker with a small attempt limit (the backoff is then about 1 s, then 2 s).
    Start it after the channels: it reads their URLs and secrets from its environment."""
    return celery_process(
        "worker", "--concurrency", "4", "--pool", "threads", "--without-gossip",
        "--without-mingle", log_name="celery-worker-alerts-delivery.log",
        extra_env={"TURNOUT_ALERT_MAX_ATTEMPTS": str(max_attempts)},
    )  # fmt: skip


def webhook(name: str, url: str, monkeypatch: pytest.MonkeyPatch) -> AlertChannel:
    # Set before the worker starts: it reads the URL and secret from its environment.
    var = f"T_LIVE_HOOK_{name.upper()}"  # a name TURNOUT_ALERT_VARS allows (TURNOUT_* never)
    monkeypatch.setenv(f"{var}_URL", url)
    monkeypatch.setenv(f"{var}_SECRET", "s3cret")
    return AlertChannel.objects.create(
        name=name, kind="webhook", url_env=f"{var}_URL", secret_env=f"{var}_SECRET"
    )


def plan_with(*channels: AlertChannel) -> MigrationPlan:
    plan = make_plan()
    plan.alert_channels.set(channels)
    return plan


def page(plan: MigrationPlan, **overrides: object) -> list[AlertDelivery]:
    """Enqueue as the engine does: inside the transaction of the action that causes it."""
    with transaction.atomic():
        return outbox.alert_enqueue(plan=plan, message=rollback_message(**overrides))


def failed_count() -> float:
    return metrics.read_counters().get("turnout_alert_deliveries|webhook|failed", 0.0)


def test_receiver_down_for_a_while_then_up_gets_it_once(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_with(webhook("ops", f"{receiver.url}/ops", monkeypatch))
    receiver.reply(503)
    receiver.reply(429, headers={"Retry-After": "1"})
    with live_worker(max_attempts=5):
        [row] = page(plan)
        wait_for(settled, rows)
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("delivered", 3)
    tries = list(AlertAttempt.objects.filter(delivery=row).values_list("ok", "status_code"))
    assert tries == [(False, 503), (False, 429), (True, 200)]
    assert all(t.latency_ms > 0 for t in AlertAttempt.objects.filter(delivery=row))
    assert len(receiver.requests) == 3
    # the same signed message each time: the receiver can dedup on the alert id
    bodies = {json.loads(r.body)["alert"]["dedup_key"] for r in receiver.requests}
    assert bodies == {"turnout:support-chat:3:error_rate"}


def test_receiver_down_for_good_fails_after_the_limit_and_the_other_channel_delivers(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = webhook("dead", "http://127.0.0.1:9/nothing-listens", monkeypatch)
    live = webhook("live", f"{receiver.url}/live", monkeypatch)
    plan = plan_with(dead, live)
    failed_before = failed_count()
    with live_worker():
        page(plan)
        wait_for(settled, rows)
    by_channel = {r.channel.name: r for r in AlertDelivery.objects.select_related("channel")}
    assert (by_channel["live"].status, by_channel["live"].attempts) == ("delivered", 1)
    assert (by_channel["dead"].status, by_channel["dead"].attempts) == ("failed", MAX_ATTEMPTS)
    assert "connect" in by_channel["dead"].last_error.lower()
    dead_tries = AlertAttempt.objects.filter(delivery=by_channel["dead"])
    assert [t.ok for t in dead_tries] == [False] * MAX_ATTEMPTS
    assert {t.status_code for t in dead_tries} == {None}
    assert [r.path for r in receiver.requests] == ["/live"]
    # counted for /metrics (the counters live in Redis, shared with the worker)
    assert failed_count() - failed_before == 1


def test_a_slow_channel_holds_up_nobody(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_receiver = Receiver()
    gate = threading.Event()
    slow_receiver.default.gate = gate
    try:
        slow = webhook("slow", f"{slow_receiver.url}/slow", monkeypatch)
        fast = webhook("fast", f"{receiver.url}/fast", monkeypatch)
        plan = plan_with(slow, fast)
        with live_worker():
            page(plan)
            wait_for(lambda: len(slow_receiver.requests) == 1, rows)
            wait_for(
                lambda: AlertDelivery.objects.filter(channel=fast, status="delivered").exists(),
                rows,
            )
            # the fast channel is through while the slow receiver still holds its request
            assert AlertDelivery.objects.get(channel=slow).status == "pending"
            gate.set()
            wait_for(settled, rows)
    finally:
        gate.set()
        slow_receiver.close()
    assert {r[1] for r in rows()} == {"delivered"}
    assert len(slow_receiver.requests) == 1 and len(receiver.requests) == 1


def test_the_task_run_several_times_delivers_once(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_with(webhook("ops", f"{receiver.url}/ops", monkeypatch))
    gate = threading.Event()
    receiver.default.gate = gate  # the first attempt is in flight while the others arrive
    try:
        with live_worker():
            [row] = page(plan)
            for _ in range(5):  # a redelivered message, the sweeper, a retry: all at once
                deliver_alert.delay(row.pk)
            sweep_alerts.delay()
            wait_for(lambda: len(receiver.requests) >= 1, rows)
            gate.set()
            wait_for(settled, rows)
            # every duplicate has run: none may have sent it again
            wait_for(worker_idle, rows)
    finally:
        gate.set()
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("delivered", 1)
    assert len(receiver.requests) == 1
    assert AlertAttempt.objects.filter(delivery=row).count() == 1


def test_the_sweeper_delivers_a_row_whose_enqueue_was_lost(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_with(webhook("ops", f"{receiver.url}/ops", monkeypatch))
    with monkeypatch.context() as patch:
        # The commit happened, the message to the broker did not (process killed in between).
        patch.setattr(transaction, "on_commit", lambda func, **kwargs: None)
        [row] = page(plan)
    with live_worker():
        sweep_alerts.delay()
        wait_for(settled, rows)
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("delivered", 1)
    assert [r.path for r in receiver.requests] == ["/ops"]


def test_a_flapping_guardrail_pages_once_through_the_worker(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_with(webhook("ops", f"{receiver.url}/ops", monkeypatch))
    with live_worker():
        # every 15 s evaluation warns again; some repeats land after the page went out
        for _ in range(20):
            page(plan, event="warning", severity="warning")
        wait_for(settled, rows)
        deliver_alert.apply_async((AlertDelivery.objects.get().pk,)).get(timeout=PATIENCE_SECONDS)
    row = AlertDelivery.objects.get()
    assert (row.status, row.repeats) == ("delivered", 19)
    assert len(receiver.requests) == 1
    assert json.loads(receiver.requests[0].body)["alert"]["event"] == "warning"
