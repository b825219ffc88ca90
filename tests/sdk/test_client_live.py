"""The SDK client against the real server (uvicorn, PostgreSQL, Redis pub/sub)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import turnout

from migrations_app.api.keys import apikey_create
from migrations_app.plans import lifecycle
from tests.conftest import eventually, free_port
from tests.factories import make_plan, person

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]
UNITS = [f"user-{i}" for i in range(200)]


def _arms(client: turnout.Client, plan: str = "chat") -> set[str]:
    return {client.decide(plan, unit).arm for unit in UNITS}


@pytest.fixture
def key(transactional_db: None) -> str:
    return apikey_create(name="sdk", scopes=["decide", "report"])[1]


@pytest.fixture
def running_plan(transactional_db: None) -> str:
    plan = make_plan("chat")
    lifecycle.plan_start(plan_key=plan.key, actor=person())  # shadow phase: everyone on control
    return plan.key


def test_a_change_reaches_a_connected_client_through_sse(
    live_server_process: str, key: str, running_plan: str
) -> None:
    with turnout.Client(live_server_process, key, poll_interval=3600) as client:
        assert _arms(client) == {"control"}
        shadowed = [client.decide("chat", u) for u in UNITS]
        assert any(d.shadow for d in shadowed) and all(d.reason == "SPLIT" for d in shadowed)
        lifecycle.plan_complete(plan_key="chat", actor=person(), reason="ship it")
        # Polling is an hour away: only the stream can bring this.
        assert eventually(lambda: _arms(client) == {"candidate"})


def test_with_the_stream_down_polling_brings_the_change(
    live_server_process: str, key: str, running_plan: str
) -> None:
    with turnout.Client(live_server_process, key, stream=False, poll_interval=0.3) as client:
        assert _arms(client) == {"control"}
        lifecycle.plan_complete(plan_key="chat", actor=person())
        assert eventually(lambda: _arms(client) == {"candidate"})


def test_server_down_serves_the_last_known_good_snapshot(
    live_server_factory: Any, key: str, running_plan: str, tmp_path: Path
) -> None:
    lkg = tmp_path / "turnout-snapshot.json"
    server = live_server_factory()
    lifecycle.plan_complete(plan_key="chat", actor=person())
    with turnout.Client(server.url, key, lkg_path=lkg) as client:
        assert _arms(client) == {"candidate"}
    assert lkg.exists()
    server.stop()
    started = time.monotonic()
    with turnout.Client(server.url, key, lkg_path=lkg, start_wait=0.5) as client:
        assert time.monotonic() - started < 10  # bounded wait, not a hang
        assert _arms(client) == {"candidate"}
        assert client.decide("unknown-plan", "u").reason == "DEFAULT"
    # Nothing at all (no server, no file): the arm named in code.
    fallback = turnout.arm("openai", "gpt-4o-mini")
    with turnout.Client(f"http://127.0.0.1:{free_port()}", key, start_wait=0.2) as client:
        decision = client.decide("chat", "u", default=fallback)
        assert (decision.arm, decision.model, decision.reason) == (
            "control",
            "gpt-4o-mini",
            "DEFAULT",
        )


def test_after_fork_the_child_keeps_receiving_changes(
    live_server_process: str, key: str, running_plan: str
) -> None:
    client = turnout.Client(live_server_process, key, poll_interval=3600)
    read_end, write_end = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: wait for the parent's change, report what it sees
        status = 1
        try:
            os.close(read_end)
            os.read(go_read, 1)
            seen = eventually(lambda: _arms(client) == {"candidate"})
            decided = client.decide("chat", "u").decision_id
            os.write(write_end, b"ok" if seen and len(decided) == 32 else b"no")
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    time.sleep(1.0)  # let the child's refresher reconnect its stream
    lifecycle.plan_complete(plan_key="chat", actor=person())
    os.write(go_write, b"x")
    answer = os.read(read_end, 2)
    os.waitpid(pid, 0)
    assert answer == b"ok"
    assert eventually(lambda: _arms(client) == {"candidate"})
    client.close()


def test_the_real_openfeature_ofrep_client_agrees_with_decide(
    live_server_process: str, key: str, running_plan: str
) -> None:
    from openfeature import api
    from openfeature.contrib.provider.ofrep import OFREPProvider
    from openfeature.evaluation_context import EvaluationContext

    lifecycle.plan_advance(plan_key="chat", actor=person())  # A/B 10 %
    api.set_provider(
        OFREPProvider(
            live_server_process, headers_factory=lambda: {"Authorization": f"Bearer {key}"}
        )
    )
    of_client = api.get_client()
    with turnout.Client(live_server_process, key) as client:
        candidates = 0
        for i in range(1000):
            unit = f"user-{i}"
            details = of_client.get_object_details(
                "chat", {}, EvaluationContext(targeting_key=unit)
            )
            local = client.decide("chat", unit)
            assert details.error_code is None, details.error_message
            assert (details.variant, details.value["model"], details.reason) == (
                local.arm,
                local.model,
                "SPLIT",
            )
            candidates += local.arm == "candidate"
        assert 50 < candidates < 150


def test_the_ofrep_client_backs_off_after_429(
    live_server_factory: Any, key: str, running_plan: str
) -> None:
    from openfeature import api
    from openfeature.contrib.provider.ofrep import OFREPProvider
    from openfeature.evaluation_context import EvaluationContext

    server = live_server_factory({"TURNOUT_RATE_LIMIT_PER_KEY": "5"})
    provider = OFREPProvider(server.url, headers_factory=lambda: {"X-API-Key": key})
    api.set_provider(provider)
    of_client = api.get_client()
    errors = []
    for i in range(20):
        details = of_client.get_object_details("chat", {}, EvaluationContext(targeting_key=f"u{i}"))
        errors.append(details.error_message or "")
    assert any("Rate limited, retry after: 1" in e for e in errors)
    # After a 429 the client stops calling until Retry-After has passed: it pauses itself.
    assert any("paused due to TooManyRequests" in e for e in errors)
    assert provider.retry_after is not None
