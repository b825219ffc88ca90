"""The change streams of a stream server: all of a process's streams share one Redis
subscription (its routing-change follower), and a revoked key's open stream is closed."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.test import override_settings
from django.utils import timezone

from migrations_app.api.keys import apikey_create
from migrations_app.models import ApiKey
from migrations_app.plans import lifecycle
from migrations_app.routing import changes
from tests.factories import person, started_plan
from tests.processes import RedisServer

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]
STREAMS = 50
# Bounded waits for what must happen; none of them is a speed asserted. A revoked key's stream
# ends within the key cache (10 s) plus the stream's re-check period (5 s).
WITHIN = 60.0


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


class Reader:
    """One SSE connection read on a thread: its config events, and whether it has ended."""

    def __init__(self, url: str, key: str) -> None:
        self.configs: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, key), daemon=True)
        self._thread.start()

    def _read(self, url: str, key: str) -> None:
        try:
            with httpx.stream(
                "GET",
                f"{url}/api/v1/sdk/stream",
                headers={"Authorization": f"Bearer {key}"},
                timeout=httpx.Timeout(10.0, read=None),
            ) as response:
                event = ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and event == "config":
                        self.configs.put(json.loads(line.split(":", 1)[1]))
                    elif not line:
                        event = ""
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    def next_config(self) -> dict[str, Any]:
        return self.configs.get(timeout=WITHIN)


def test_every_stream_of_a_process_shares_one_subscription(
    own_redis: RedisServer, live_server_factory: Any, key: str
) -> None:
    started_plan("chat")
    server = live_server_factory({"REDIS_URL": own_redis.url})
    readers = [Reader(server.url, key) for _ in range(STREAMS)]
    first = {reader.next_config()["version"] for reader in readers}  # all connected
    assert len(first) == 1
    connections = own_redis.clients()
    # The follower's subscription, and at most a couple of pooled command connections: a
    # connection per stream would be 50 more.
    assert len(connections) <= 4, [c.get("cmd") for c in connections]
    assert sum(c.get("cmd") == "subscribe" or c.get("sub") == "1" for c in connections) == 1
    # The one subscription wakes every stream.
    lifecycle.plan_complete(plan_key="chat", actor=person())
    assert {reader.next_config()["version"] for reader in readers} - first
    assert len(own_redis.clients()) <= 4


def test_a_revoked_keys_open_stream_is_closed(live_server_factory: Any, key: str) -> None:
    server = live_server_factory()
    other = apikey_create(name="other", scopes=["decide"])[1]
    revoked, kept = Reader(server.url, key), Reader(server.url, other)
    revoked.next_config()
    kept.next_config()
    ApiKey.objects.filter(name="sdk").update(revoked_at=timezone.now())
    assert revoked.ended.wait(WITHIN), "the revoked key's stream is still open"
    assert not kept.ended.is_set()
    answer = httpx.get(
        f"{server.url}/api/v1/sdk/stream", headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status_code == 401
