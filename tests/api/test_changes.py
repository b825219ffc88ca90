"""The routing-change follower: each web process keeps the routing sequence in memory (the
database row re-read every second, Redis pub/sub for speed), so the decision endpoints make
no query or Redis round trip for it, and the database decides what is current."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from django.db import OperationalError, transaction
from django.test import override_settings

from migrations_app.models import RoutingState
from migrations_app.routing import changes
from tests.conftest import eventually

pytestmark = pytest.mark.django_db(transaction=True)
needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="pub/sub needs Redis")


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


def committed_elsewhere() -> int:
    """A change recorded by another process: in the database, no message."""
    return changes._bump()


@needs_redis
def test_a_published_change_reaches_the_follower_before_any_poll(
    follower: changes._Follower, other_process: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert eventually(lambda: following(follower))
    follower.close()
    monkeypatch.setattr(changes, "POLL_SECONDS", 3600.0)  # only pub/sub can bring it now
    assert eventually(lambda: following(follower))
    assert eventually(lambda: any(t.name.endswith("listen") for t in follower._threads))
    time.sleep(0.2)  # let the listener subscribe (a message before that is for the poll)
    sequence = committed_elsewhere()
    other_process.publish(changes.channel(), json.dumps({"seq": sequence, "what": "t"}))
    assert eventually(lambda: follower.get() == sequence)
    assert following(follower)  # served from memory, not read per request


def test_a_change_whose_message_was_lost_is_found_in_the_database(
    follower: changes._Follower,
) -> None:
    assert eventually(lambda: following(follower))
    sequence = committed_elsewhere()  # no message at all
    assert eventually(lambda: follower.get() == sequence)


def test_without_any_redis_the_follower_follows_the_database(
    follower: changes._Follower,
) -> None:
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):  # nothing listens there
        assert eventually(lambda: following(follower))
        sequence = committed_elsewhere()
        assert eventually(lambda: follower.get() == sequence)


def test_a_database_restored_to_an_older_sequence_is_followed_down(
    follower: changes._Follower,
) -> None:
    assert eventually(lambda: following(follower))
    sequence = committed_elsewhere()
    assert eventually(lambda: follower.get() == sequence)
    RoutingState.objects.filter(pk=changes.ROW).update(sequence=sequence - 5)
    assert eventually(lambda: follower.get() == sequence - 5)


def test_memory_is_trusted_only_while_the_poller_confirms_it(
    follower: changes._Follower,
) -> None:
    assert eventually(lambda: following(follower))
    # The poller vouches for at most TRUST_SECONDS ahead: a poller that stalls stops being
    # believed that soon after.
    assert follower.trusted_until - time.monotonic() <= changes.TRUST_SECONDS
    follower.close()
    sequence = committed_elsewhere()
    # Not following: every read is a query, so it is never stale.
    assert follower.get() == sequence


def test_database_unreachable_serves_the_last_known_sequence(
    follower: changes._Follower, monkeypatch: pytest.MonkeyPatch
) -> None:
    follower.sequence = 41

    def unreachable() -> int:
        raise OperationalError("down")

    monkeypatch.setattr(changes, "current_sequence", unreachable)
    monkeypatch.setattr(follower, "_ensure_threads", lambda: None)
    assert follower.get() == 41


def test_a_hung_database_holds_up_one_request_per_backoff_not_every_one(
    follower: changes._Follower, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each direct read may wait for the database; after a failed one the process's other
    requests serve the last sequence without trying for a while."""
    follower.sequence = 7
    tries: list[float] = []

    def unreachable() -> int:
        tries.append(time.monotonic())
        raise OperationalError("no answer")

    monkeypatch.setattr(changes, "current_sequence", unreachable)
    monkeypatch.setattr(follower, "_ensure_threads", lambda: None)  # no poller to trust
    assert [follower.get() for _ in range(1000)] == [7] * 1000
    assert len(tries) == 1
    follower._direct_after = 0.0  # the backoff is over: the next request tries again
    assert follower.get() == 7 and len(tries) == 2


def test_redis_client_timeouts_bound_a_request() -> None:
    kwargs = changes.redis_client().connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] == changes.CONNECT_TIMEOUT
    assert kwargs["socket_timeout"] == changes.COMMAND_TIMEOUT


def test_own_publication_is_visible_to_the_next_request_at_once() -> None:
    assert eventually(lambda: following(changes._follower))
    changes.routing_changed("plan chat v9")
    # No wait: the poller may not have read it yet, saw() already did.
    assert changes.followed_sequence() == changes.current_sequence()


def test_a_change_recorded_in_a_transaction_that_rolls_back_never_happened() -> None:
    before = committed_elsewhere()
    with pytest.raises(RuntimeError), transaction.atomic():
        changes.routing_changed("doomed")
        raise RuntimeError("the change fails after recording it")
    assert changes.current_sequence() == before
    assert changes._follower.sequence != before + 1


@needs_redis
def test_the_channel_is_this_redis_databases_alone(
    follower: changes._Follower, other_process: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pub/sub ignores the database number: an install on another database of the same Redis
    must not move this one's routing."""
    here = changes.channel()
    # Another database than the suite's own, whichever that is.
    other = 8 if here == "turnout:7:routing-changes" else 7
    with override_settings(REDIS_URL=f"redis://127.0.0.1:6379/{other}"):
        elsewhere = changes.channel()
    with override_settings(REDIS_URL=f"unix:///run/redis.sock?db={other}"):
        assert changes.channel() == elsewhere == f"turnout:{other}:routing-changes"
    assert here != elsewhere and here.endswith("routing-changes")
    monkeypatch.setattr(changes, "POLL_SECONDS", 3600.0)
    assert eventually(lambda: following(follower))
    time.sleep(0.2)  # subscribed
    start = follower.get()
    for name in (elsewhere, "turnout:routing-changes"):
        other_process.publish(name, json.dumps({"seq": start + 1000, "what": "other install"}))
    sequence = committed_elsewhere()
    other_process.publish(here, json.dumps({"seq": sequence, "what": "this install"}))
    assert eventually(lambda: follower.get() == sequence)  # ours arrived, theirs did not


def test_every_waiter_on_a_loop_wakes_on_one_change() -> None:
    assert eventually(lambda: following(changes._follower))
    seen = changes.followed_sequence()

    async def waiters() -> list[int]:
        waiting = [asyncio.create_task(changes.next_change(seen, 30.0)) for _ in range(50)]
        await asyncio.sleep(0.05)
        await asyncio.to_thread(changes.routing_changed, "plan chat v1")
        return await asyncio.gather(*waiting)

    woken = asyncio.run(waiters())
    assert set(woken) == {changes.current_sequence()} and seen not in woken


def test_a_waiter_returns_the_same_value_after_its_timeout() -> None:
    seen = changes.followed_sequence()
    assert asyncio.run(changes.next_change(seen, 0.05)) == seen


@pytest.mark.live
def test_a_forked_child_follows_on_its_own() -> None:
    assert eventually(lambda: following(changes._follower))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: as a gunicorn worker forked from a preloaded master
        try:
            os.close(read)
            result: list[bool] = []

            def child() -> None:
                # On a thread of its own, so on database connections of its own: the main
                # thread's connection is the parent's socket.
                alive = eventually(lambda: following(changes._follower))
                sequence = committed_elsewhere()
                result.extend([alive, eventually(lambda: changes._follower.get() == sequence)])

            body = threading.Thread(target=child)
            body.start()
            body.join()
            os.write(write, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    assert json.loads(result) == [True, True]
