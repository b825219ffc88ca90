"""A Redis that stops answering (SIGSTOP: connections are accepted, nothing is answered) must
not take the API down. Every Redis use on a request path (the Celery publish after an ingest's
commit, a lifecycle action's routing notification, the metrics counters) waits a bounded time
(REDIS_CONNECT_TIMEOUT, REDIS_SOCKET_TIMEOUT) and then degrades as when Redis is down: the
request still succeeds, the sweepers enqueue what was not, the database carries the change.
Against real gunicorn and a Redis the test starts, stops and continues itself."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from django.db import transaction
from kombu.exceptions import OperationalError

from migrations_app.alerts import outbox
from migrations_app.alerts import tasks as alert_tasks
from migrations_app.api.keys import apikey_create
from migrations_app.models import AlertChannel, AlertDelivery, MigrationPlan, ShadowSample
from tests.alerts.conftest import rollback_message
from tests.factories import make_plan, started_plan
from tests.processes import RedisServer

# Without the bounds a request waits on the hung Redis for ever (kombu reads the publish's
# reply with no timeout: the test sat 300 s on one); with them, seconds. This is the watchdog
# that turns a hang into a failure, not a speed asserted.
WATCHDOG = 60.0


@pytest.fixture
def hung_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def _sample(plan: MigrationPlan) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "decision_id": uuid.uuid4().hex,
        "plan": plan.key,
        "run": plan.current_run.number,
        "plan_version": plan.version,
        "unit": f"user-{uuid.uuid4().hex[:8]}",
        "ts": time.time(),
        "request": {"messages": [{"role": "user", "content": "hi"}], "params": {}},
        "control": {"text": "hello", "latency_ms": 100.0, "input_tokens": 5, "output_tokens": 5},
    }


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_a_hung_redis_costs_requests_a_bounded_wait_never_a_hang_or_a_5xx(
    hung_redis: RedisServer, gunicorn_factory: Any
) -> None:
    plan = started_plan("chat")  # the shadow phase: samples are enqueued for the pipeline
    other = started_plan("other")
    key = apikey_create(name="ops", scopes=["report", "admin"])[1]
    server = gunicorn_factory({"REDIS_URL": hung_redis.url, "CELERY_BROKER_URL": hung_redis.url})
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=WATCHDOG) as http:
        # Connections to Redis made and pooled while it answers: the hang hits them mid-use.
        for _ in range(4):
            warm = http.post("/api/v1/shadow-samples", json={"samples": [_sample(plan)]})
            assert warm.status_code == 200 and warm.json()["stored"] == 1
        assert hung_redis.proc is not None
        os.kill(hung_redis.proc.pid, signal.SIGSTOP)

        def call(method: str, path: str, body: Any) -> tuple[int | str, float]:
            started = time.monotonic()
            try:
                status: int | str = http.request(method, path, json=body).status_code
            except httpx.TimeoutException:
                status = "no answer"
            return status, round(time.monotonic() - started, 1)

        # More requests at once than the server has threads (2 workers x 2): a hang in each
        # would leave none for the next.
        calls = [("POST", "/api/v1/shadow-samples", {"samples": [_sample(plan)]}) for _ in range(6)]
        calls.append(("POST", f"/api/v1/plans/{other.key}/pause", {"reason": "redis test"}))
        with ThreadPoolExecutor(len(calls)) as pool:
            answers = list(pool.map(lambda c: call(*c), calls))
        ping = call("GET", "/api/v1/ping", None)
        metrics = call("GET", "/metrics", None)
    # (status, seconds) of each: the seconds say what the bounds cost when this fails.
    assert [status for status, _ in answers] == [200] * 7, answers
    assert ping[0] == 200 and metrics[0] == 200, (ping, metrics)
    print("(status, seconds) with Redis hung:", answers, ping, metrics)
    assert ShadowSample.objects.count() == 10  # stored; the sweeper enqueues them later
    assert MigrationPlan.objects.get(pk=other.pk).status == "paused"


@pytest.mark.django_db(transaction=True)
def test_an_alert_whose_task_cannot_be_published_is_queued_and_the_action_stands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The action that pages (a rollback, the admin's test alert) has committed when the
    delivery task is published: a broker that fails then must not fail the action (a 500 in
    the admin, an evaluation task in error). The row waits; sweep_alerts delivers it."""

    def broker_away(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("Timeout reading from socket")

    monkeypatch.setattr(alert_tasks.deliver_alert, "delay", broker_away)
    plan = make_plan()
    plan.alert_channels.set([AlertChannel.objects.create(name="ops", kind="webhook")])
    with transaction.atomic():
        [row] = outbox.alert_enqueue(plan=plan, message=rollback_message())
    assert AlertDelivery.objects.get(pk=row.pk).status == "pending"
