"""A routing change committed while Redis is unreachable still reaches every SDK: the database
is the source of truth, Redis only makes propagation fast. The test runs a Redis server of its
own, so it can take it away and bring it back without touching the shared one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import turnout
from django.test import override_settings

from migrations_app.api.keys import apikey_create
from migrations_app.plans import lifecycle
from migrations_app.routing import changes
from tests.conftest import eventually
from tests.factories import person, started_plan
from tests.processes import RedisServer

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]
UNITS = [f"user-{i}" for i in range(200)]
# Bounded waits for what must happen (nothing here asserts a speed): the SDKs below poll every
# 0.3 s or hold a stream, and the server re-reads the database every second.
WITHIN = 30.0


def _reasons(client: turnout.Client) -> set[str]:
    return {client.decide("chat", unit).reason for unit in UNITS}


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    # This process publishes the changes its services make: to the test's Redis too.
    with override_settings(REDIS_URL=server.url):
        changes.redis_client.cache_clear()
        try:
            yield server
        finally:
            changes.redis_client.cache_clear()
            server.stop()
    changes.redis_client.cache_clear()


@pytest.fixture
def key(transactional_db: None) -> str:
    return apikey_create(name="sdk", scopes=["decide", "report"])[1]


@pytest.fixture
def split_plan(transactional_db: None) -> str:
    return started_plan("chat", advances=1).key  # A/B split: reason SPLIT


def _config_reason(url: str, key: str) -> Any:
    answer = httpx.get(f"{url}/api/v1/sdk/config", headers={"Authorization": f"Bearer {key}"})
    return {p["key"]: p["status"] for p in answer.json()["plans"]}["chat"]


def test_a_change_made_while_redis_is_down_reaches_every_sdk(
    own_redis: RedisServer, live_server_factory: Any, key: str, split_plan: str
) -> None:
    server = live_server_factory({"REDIS_URL": own_redis.url})
    with (
        turnout.Client(server.url, key, poll_interval=3600) as streaming,
        turnout.Client(server.url, key, stream=False, poll_interval=0.3) as polling,
    ):
        assert _reasons(streaming) == _reasons(polling) == {"SPLIT"}
        own_redis.stop()
        lifecycle.plan_pause(plan_key="chat", actor=person(), reason="Redis is away")
        # Committed to PostgreSQL; the notification could not be sent. The server finds the
        # change in the database: the polling SDK gets it from /config, the streaming one is
        # pushed it on the stream it holds.
        assert eventually(lambda: _config_reason(server.url, key) == "paused", timeout=WITHIN)
        assert eventually(lambda: "SPLIT" not in _reasons(polling), timeout=WITHIN)
        assert eventually(lambda: "SPLIT" not in _reasons(streaming), timeout=WITHIN)
        # Redis comes back (a restart: empty): changes flow again.
        own_redis.start()
        lifecycle.plan_resume(plan_key="chat", actor=person(), reason="Redis is back")
        assert eventually(lambda: _reasons(streaming) == {"SPLIT"}, timeout=WITHIN)
        assert eventually(lambda: _reasons(polling) == {"SPLIT"}, timeout=WITHIN)


def test_a_change_made_while_redis_is_down_reaches_sdks_after_it_returns(
    own_redis: RedisServer, live_server_factory: Any, key: str, split_plan: str
) -> None:
    """The server started while Redis was away and has never reached it: routing still moves."""
    own_redis.stop()
    server = live_server_factory({"REDIS_URL": own_redis.url})
    with turnout.Client(server.url, key, poll_interval=3600) as streaming:
        assert _reasons(streaming) == {"SPLIT"}
        lifecycle.plan_pause(plan_key="chat", actor=person())
        assert eventually(lambda: "SPLIT" not in _reasons(streaming), timeout=WITHIN)
        own_redis.start()
        lifecycle.plan_resume(plan_key="chat", actor=person())
        assert eventually(lambda: _reasons(streaming) == {"SPLIT"}, timeout=WITHIN)
