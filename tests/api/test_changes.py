"""The routing-change follower: each web process keeps the change sequence in memory from a
listener thread, so the decision endpoints make no Redis round trip for it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from migrations_app import changes
from tests.conftest import eventually

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="the follower follows Redis")


@pytest.fixture
def other_process() -> Iterator[redis.Redis]:
    """A connection of its own, as another web process or the Celery worker has."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def follower() -> Iterator[changes._Follower]:
    follower = changes._Follower()
    yield follower
    follower.close()


def following(follower: changes._Follower) -> bool:
    follower.get()
    return time.monotonic() < follower.trusted_until


def test_a_change_published_elsewhere_reaches_the_follower(
    follower: changes._Follower, other_process: redis.Redis
) -> None:
    assert eventually(lambda: following(follower))
    sequence = int(other_process.incr(changes.SEQUENCE_KEY))
    other_process.publish(changes.CHANNEL, json.dumps({"seq": sequence, "plan": "p", "version": 1}))
    assert eventually(lambda: follower.get() == sequence)
    assert following(follower)  # served from memory, not read per request


def test_a_lost_message_and_a_reset_sequence_are_caught_up_by_the_resync(
    follower: changes._Follower, other_process: redis.Redis
) -> None:
    assert eventually(lambda: following(follower))
    other_process.incrby(changes.SEQUENCE_KEY, 7)  # no message: as if it were lost
    moved = int(other_process.get(changes.SEQUENCE_KEY) or 0)
    assert eventually(lambda: follower.get() == moved)
    # A flushed Redis starts the sequence again from nothing: the follower goes down with it
    # (the snapshot is keyed by the value, so any change of it rebuilds).
    other_process.set(changes.SEQUENCE_KEY, 3)
    try:
        assert eventually(lambda: follower.get() == 3)
    finally:
        other_process.set(changes.SEQUENCE_KEY, moved + 1)


def test_memory_is_trusted_only_while_the_listener_confirms_it(
    follower: changes._Follower, other_process: redis.Redis
) -> None:
    assert eventually(lambda: following(follower))
    # The listener vouches for at most TRUST_SECONDS ahead: a listener that stalls stops
    # being believed that soon after.
    assert follower.trusted_until - time.monotonic() <= changes.TRUST_SECONDS
    follower.close()
    other_process.incrby(changes.SEQUENCE_KEY, 5)
    # Not following: every read is a Redis round trip, so it is never stale.
    assert follower.get() == int(other_process.get(changes.SEQUENCE_KEY) or 0)


def test_redis_unreachable_serves_the_last_known_sequence(
    follower: changes._Follower, monkeypatch: pytest.MonkeyPatch
) -> None:
    follower.sequence = 41

    def unreachable() -> int:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(changes, "current_sequence", unreachable)
    assert follower.get() == 41


def test_a_hung_redis_holds_up_one_request_per_backoff_not_every_one(
    follower: changes._Follower, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each direct read may wait up to the client's timeouts; after a failed one the
    process's other requests serve the last sequence without trying for a while."""
    follower.sequence = 7
    tries: list[float] = []

    def unreachable() -> int:
        tries.append(time.monotonic())
        raise redis.TimeoutError("no answer")

    monkeypatch.setattr(changes, "current_sequence", unreachable)
    monkeypatch.setattr(follower, "_ensure_thread", lambda: None)  # no listener to trust
    follower.trusted_until = 0.0
    assert [follower.get() for _ in range(1000)] == [7] * 1000
    assert len(tries) == 1
    follower._direct_after = 0.0  # the backoff is over: the next request tries again
    assert follower.get() == 7 and len(tries) == 2
    client = changes.redis_client()
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] == changes.CONNECT_TIMEOUT
    assert kwargs["socket_timeout"] == changes.COMMAND_TIMEOUT


def test_own_publication_is_visible_to_the_next_request_at_once(
    other_process: redis.Redis,
) -> None:
    assert eventually(lambda: following(changes._follower))
    changes.publish_routing_change("chat", 9)
    # No wait: the listener may not have seen the message yet, saw() already did.
    assert changes.followed_sequence() == int(other_process.get(changes.SEQUENCE_KEY) or 0)


def test_a_forked_child_follows_on_its_own(other_process: redis.Redis) -> None:
    assert eventually(lambda: following(changes._follower))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: as a gunicorn worker forked from a preloaded master
        try:
            os.close(read)
            alive = eventually(lambda: following(changes._follower))
            sequence = int(redis.Redis.from_url(settings.REDIS_URL).incr(changes.SEQUENCE_KEY))
            redis.Redis.from_url(settings.REDIS_URL).publish(
                changes.CHANNEL, json.dumps({"seq": sequence, "plan": "p", "version": 1})
            )
            seen = eventually(lambda: changes._follower.get() == sequence)
            os.write(write, json.dumps([alive, seen]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    assert json.loads(result) == [True, True]
