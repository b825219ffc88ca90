"""Routing-change notifications: how a plan change reaches every connected SDK within a second.

A change is published on a Redis channel, so any web process can push it down its SSE
streams. Without Redis (the embedded default) the stream falls back to reading the
sequence from the database-backed cache.

The decision endpoints need the sequence on every request (it keys the in-memory snapshot),
so each web process follows it from a listener thread instead of reading Redis per request:
see ``followed_sequence``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)

CHANNEL = "turnout:routing-changes"
SEQUENCE_KEY = "turnout:routing-seq"

# The listener re-reads the sequence key this often even when messages flow: a lost pub/sub
# message, a Redis restart or a flushed key then costs at most this long, inside the
# one-second propagation contract (DESIGN invariant 7).
RESYNC_SECONDS = 0.5
# A followed value older than this is not trusted: the request reads Redis itself, as it did
# before the follower existed. The listener refreshes it every RESYNC_SECONDS at worst.
TRUST_SECONDS = 1.0


# A request never waits long on Redis: an unreachable one (a failover, a dropped route) must
# cost a decision at most this, and the callers fall back to what the process knows.
CONNECT_TIMEOUT = 0.25
COMMAND_TIMEOUT = 1.0
# While the follower is not trusted, a request reads the sequence itself at most this often
# after a failed read; the others serve the last known snapshot without waiting.
DIRECT_READ_BACKOFF = 0.5


@lru_cache(maxsize=1)
def redis_client() -> Any:
    """The process's Redis client (one connection pool; redis-py makes a fresh pool in a
    forked child)."""
    import redis

    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
    )


def current_sequence() -> int:
    """The sequence as Redis (or the embedded cache) holds it now: one round trip."""
    if settings.REDIS_URL:
        return int(redis_client().get(SEQUENCE_KEY) or 0)
    return int(cache.get(SEQUENCE_KEY) or 0)


class _Follower:
    """This process's copy of the routing-change sequence, kept by one daemon thread that
    subscribes to ``CHANNEL`` and re-reads ``SEQUENCE_KEY`` every ``RESYNC_SECONDS``.

    Messages only ever raise the value (two publishers may deliver out of order); the periodic
    read sets it outright, which is how a reset sequence (a flushed Redis) is picked up.
    The thread is started lazily, and again in a forked child (gunicorn workers, Celery
    prefork): threads do not survive ``fork()``, and a lock held by one at that moment would
    stay held in the child, so the child starts from a fresh state (``_after_fork``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._generation = 0  # a listener runs while its generation is current
        self.sequence = 0
        self.trusted_until = 0.0  # monotonic; 0: not following
        self._published = 0  # bumped by saw(): a resync read in flight may predate it
        self._warn_after = 0.0
        self._direct_after = 0.0  # monotonic; after a failed direct read, not before this

    def get(self) -> int:
        now = time.monotonic()
        if now < self.trusted_until or now < self._direct_after:
            return self.sequence
        self._ensure_thread()
        try:
            sequence = current_sequence()
        except Exception:
            # Redis is unreachable: keep deciding from the last snapshot this process holds
            # rather than failing every decision; the listener catches up when Redis is back.
            self._direct_after = now + DIRECT_READ_BACKOFF
            if now >= self._warn_after:  # once in a while, not once per decision
                self._warn_after = now + 10.0
                log.warning("routing sequence unreadable; serving the last known snapshot")
            return self.sequence
        self.sequence = sequence
        return sequence

    def saw(self, sequence: int) -> None:
        """A change this process published itself: visible to its own next request at once."""
        with self._lock:
            self.sequence = max(self.sequence, sequence)
            self._published += 1

    def close(self) -> None:
        """Stop following (the listener exits within ``RESYNC_SECONDS``); ``get`` restarts it."""
        with self._lock:
            self._generation += 1
            self._thread = None
            self.trusted_until = 0.0

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._thread = None
        self._generation += 1
        self.trusted_until = 0.0

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._generation += 1
            self.trusted_until = 0.0
            self._thread = threading.Thread(
                target=self._run,
                args=(self._generation,),
                name="turnout-routing-follower",
                daemon=True,
            )
            self._thread.start()

    def _run(self, generation: int) -> None:
        import redis

        while self._generation == generation:
            client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5.0)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                # Subscribe before reading the key: a change in between is then not missed.
                pubsub.subscribe(CHANNEL)
                resync_at = 0.0
                while self._generation == generation:
                    now = time.monotonic()
                    if now >= resync_at:
                        published = self._published
                        sequence = int(client.get(SEQUENCE_KEY) or 0)
                        with self._lock:
                            # Outright unless this process published meanwhile (the read may
                            # then be older than the value saw() set).
                            if self._published == published:
                                self.sequence = sequence
                            else:
                                self.sequence = max(self.sequence, sequence)
                        resync_at = now + RESYNC_SECONDS
                    if self._generation == generation:
                        self.trusted_until = now + TRUST_SECONDS
                    message = pubsub.get_message(timeout=RESYNC_SECONDS / 2)
                    if message is not None and message["type"] == "message":
                        self.saw(int(json.loads(message["data"])["seq"]))
            except Exception:
                self.trusted_until = 0.0
                log.warning("routing-change listener lost Redis; retrying in 1 s", exc_info=True)
                time.sleep(1.0)
            finally:
                try:
                    pubsub.close()
                    client.close()
                except Exception:  # closing a dead connection: nothing left to do
                    pass


_follower = _Follower()
os.register_at_fork(after_in_child=_follower._after_fork)


def followed_sequence() -> int:
    """The routing-change sequence without a Redis round trip on the hot path.

    Up to date within milliseconds of a change (pub/sub), and never staler than
    ``RESYNC_SECONDS`` while the listener runs; when it does not, this reads Redis (one
    round trip) like ``current_sequence``. Without Redis it is ``current_sequence``.
    """
    if not settings.REDIS_URL:
        return current_sequence()
    return _follower.get()


def publish_routing_change(plan_key: str, version: int) -> None:
    """Tell every web process that routing changed. Called after commit; never raises:
    SDKs also poll, so a lost notification delays a change, it does not lose it."""
    try:
        if settings.REDIS_URL:
            client = redis_client()
            sequence = int(client.incr(SEQUENCE_KEY))
            _follower.saw(sequence)
            client.publish(
                CHANNEL, json.dumps({"seq": sequence, "plan": plan_key, "version": version})
            )
        else:
            try:
                sequence = cache.incr(SEQUENCE_KEY)
            except ValueError:
                cache.set(SEQUENCE_KEY, 1, timeout=None)
    except Exception:  # a notification must never undo a committed plan change
        log.exception("could not publish the routing change of %s v%s", plan_key, version)
