"""Ingest while Redis is away: the outcomes are committed before the metrics counters are
touched, so a Redis failure there must not turn a stored batch into a 500 (the SDK would
resend what was stored). The counts of the batches taken meanwhile reach Redis when it is
back. Against a Redis this test starts, kills and starts again itself."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client

from migrations_app.api.keys import apikey_create
from migrations_app.models import Outcome
from migrations_app.outcomes import metrics
from migrations_app.routing import changes
from tests.conftest import eventually, free_port
from tests.outcomes.conftest import outcome, split_plan
from tests.outcomes.test_api import post

pytestmark = [pytest.mark.django_db, pytest.mark.live]

STORED = "turnout_ingest_events|outcomes|stored"


class OwnRedis:
    """redis-server on a free port, its append-only file fsynced on every write, so that a
    SIGKILL loses nothing it acknowledged."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--dir", str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        probe = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        assert eventually(lambda: _answers(probe), timeout=20)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def counter(self, field: str) -> float:
        value = redis.Redis.from_url(self.url).hget(metrics.HASH_KEY, field)
        return float(value or 0)


def _answers(client: Any) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def own_redis(tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    settings.REDIS_URL = server.url
    changes.redis_client.cache_clear()
    monkeypatch.setattr(metrics, "RETRY_SECONDS", 0.0)  # try Redis again at the next count
    try:
        yield server
    finally:
        server.kill()
        changes.redis_client.cache_clear()


def test_a_stored_batch_is_answered_200_while_redis_is_down_and_counted_when_it_is_back(
    own_redis: OwnRedis,
) -> None:
    plan = split_plan()
    reporter = Client(
        HTTP_AUTHORIZATION=f"Bearer {apikey_create(name='app', scopes=['report'])[1]}"
    )
    assert post(reporter, "/api/v1/outcomes", {"events": [outcome(plan)] * 1}).status_code == 200
    assert own_redis.counter(STORED) == 1

    own_redis.kill()
    during = [outcome(plan) for _ in range(3)]
    response = post(reporter, "/api/v1/outcomes", {"events": during})
    assert response.status_code == 200, response.content[:300]
    assert response.json()["stored"] == 3
    rating = {"id": "fb-1", "decision_id": during[0]["decision_id"], "score": 1, "ts": 1e9}
    assert post(reporter, "/api/v1/feedback", rating).status_code == 200

    own_redis.start()
    after = post(reporter, "/api/v1/outcomes", {"events": [outcome(plan)]})
    assert after.status_code == 200
    # Every batch stored is counted once: the one before, the three during, the one after.
    assert eventually(lambda: own_redis.counter(STORED) == Outcome.objects.count() == 5)


def test_a_scrape_while_redis_is_down_answers_what_the_database_knows(
    own_redis: OwnRedis,
) -> None:
    own_redis.kill()
    response = Client().get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    text = response.content.decode()
    assert "turnout_counters_available 0.0" in text
    assert "turnout_feedback_held" in text
    assert "turnout_ingest_events_total" not in text  # left out, not shown as zero
    own_redis.start()
    assert "turnout_counters_available 1.0" in Client().get("/metrics").content.decode()
