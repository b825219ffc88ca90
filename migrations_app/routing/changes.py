"""Routing changes: how a change committed to the database reaches every connected SDK.

The database is the source of truth. Every change to what SDKs route on (a plan's lifecycle
and edits, a provider connection, a catalog model) moves ``RoutingState.sequence``, one row:
in the change's own transaction (``routing_changed``), so the change and its record commit
together. Each process that serves SDKs follows that number from two
background threads: one re-reads the row every ``POLL_SECONDS``, the other hears the new value
at once on a Redis pub/sub channel. Redis makes propagation fast (milliseconds); a lost
message, a Redis outage or a flushed Redis cost at most ``POLL_SECONDS``, and a change
committed while Redis was unreachable is not lost.

The decision endpoints need the sequence on every request (it keys the in-memory snapshot)
and read it from memory (``followed_sequence``). The SSE streams of a process all wait on the
same follower (``next_change``): one Redis subscription per process, however many streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F

log = logging.getLogger(__name__)

# The one RoutingState row.
ROW = 1
# How often every following process re-reads the sequence from the database: the longest a
# change waits when its Redis message was lost or Redis is down.
POLL_SECONDS = 1.0
# A followed value is trusted this long after the last database read that confirmed it; past
# that (the poller stalled or the database is away) a request reads the sequence itself.
TRUST_SECONDS = 3.0

# A request never waits long on Redis: an unreachable one (a failover, a dropped route) must
# cost a decision at most this, and the callers fall back to what the process knows.
CONNECT_TIMEOUT = 0.25
COMMAND_TIMEOUT = 1.0
# While the follower is not trusted, a request reads the sequence itself at most this often
# after a failed read; the others serve the last known snapshot without waiting.
DIRECT_READ_BACKOFF = 0.5
# How long the listener blocks on one read of its subscription (it checks for close() between).
LISTEN_WAIT = 0.5
# After a lost connection the listener tries Redis again this often (the poller carries on).
RECONNECT_SECONDS = 1.0


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


def channel() -> str:
    """The pub/sub channel of this install. Redis channels ignore the database number, so two
    installs (or test runs) sharing one Redis on different databases would hear each other's
    changes on a fixed name: the name carries the database number."""
    from redis.connection import parse_url

    database = parse_url(settings.REDIS_URL).get("db", 0) if settings.REDIS_URL else 0
    return f"turnout:{database}:routing-changes"


def current_sequence() -> int:
    """The sequence as the database holds it now: one query."""
    from migrations_app.models import RoutingState

    value = RoutingState.objects.filter(pk=ROW).values_list("sequence", flat=True).first()
    return int(value or 0)


def _bump() -> int:
    from migrations_app.models import RoutingState

    with transaction.atomic():
        if not RoutingState.objects.filter(pk=ROW).update(sequence=F("sequence") + 1):
            # The first change ever, or the row was emptied: start from the clock, so that a
            # recreated row never repeats a value a process still keys a snapshot by.
            RoutingState.objects.get_or_create(
                pk=ROW, defaults={"sequence": time.time_ns() // 1_000_000}
            )
            RoutingState.objects.filter(pk=ROW).update(sequence=F("sequence") + 1)
        return int(RoutingState.objects.values_list("sequence", flat=True).get(pk=ROW))


def routing_changed(what: str) -> None:
    """Record a change to what SDKs route on, in the caller's transaction, and tell every
    following process once it commits. Call it inside the transaction that makes the change:
    then the change and its record commit together, or neither does. (The row is locked until
    that commit: call it last in the transaction, as it serialises routing changes.) Several
    changes in one transaction (a price import) are recorded once."""
    conn = transaction.get_connection()
    if conn.in_atomic_block and any(
        getattr(callback, "_routing_change", False) for _, callback, _ in conn.run_on_commit
    ):
        return  # this transaction has recorded a change already (and not rolled it back)
    sequence = _bump()

    def notify() -> None:
        _notify(sequence, what)

    notify._routing_change = True  # type: ignore[attr-defined]
    transaction.on_commit(notify)


def _catalog_edited(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    if not raw:  # fixtures loading rows as they were
        routing_changed(f"{sender._meta.model_name} {instance.pk}")


def connect_catalog_edits() -> None:
    """Every snapshot carries each arm's provider connection (kind, base URL, key variable) and
    model (id, context window): an edit of either is a routing change, whichever path saves it
    (the admin, the price import, a shell). Called once, when the app is ready."""
    from django.db.models.signals import post_delete, post_save

    for model in ("migrations_app.ProviderConnection", "migrations_app.ModelSpec"):
        for signal, name in ((post_save, "save"), (post_delete, "delete")):
            signal.connect(_catalog_edited, sender=model, dispatch_uid=f"routing-{model}-{name}")


def _notify(sequence: int, what: str) -> None:
    _follower.saw(sequence)
    if not settings.REDIS_URL:
        return  # every process finds it in the database within POLL_SECONDS
    import redis

    try:
        redis_client().publish(channel(), json.dumps({"seq": sequence, "what": what}))
    except (redis.RedisError, OSError) as exc:
        # Committed and recorded: the other processes read it from the database instead.
        log.warning("routing change %s (%s) not published: %r", sequence, what, exc)


# --- following -----------------------------------------------------------------------------


class _Follower:
    """This process's copy of the routing sequence: a poller thread re-reads the database row
    every ``POLL_SECONDS`` and a listener thread takes the new value from Redis pub/sub as
    soon as it is published.

    Messages only ever raise the value (two publishers may deliver out of order); the periodic
    read sets it outright, which is how a database restored to an older state is picked up.
    The threads start lazily, and again in a forked child (gunicorn workers, Celery prefork):
    threads do not survive ``fork()``, and a lock held by one at that moment would stay held in
    the child, so the child starts from a fresh state (``_after_fork``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.sequence = 0
        self.trusted_until = 0.0  # monotonic; 0: the poller has not confirmed the value
        self._published = 0  # bumped by saw(): a database read in flight may predate it
        self._warn_after = 0.0
        self._direct_after = 0.0  # monotonic; after a failed direct read, not before this

    def get(self) -> int:
        now = time.monotonic()
        if now < self.trusted_until or now < self._direct_after:
            return self.sequence
        self._ensure_threads()
        try:
            sequence = current_sequence()
        except DatabaseError:
            # The database is unreachable: keep deciding from the last snapshot this process
            # holds rather than failing every decision; the poller catches up when it is back.
            self._direct_after = now + DIRECT_READ_BACKOFF
            if now >= self._warn_after:  # once in a while, not once per decision
                self._warn_after = now + 10.0
                log.warning("routing sequence unreadable; serving the last known snapshot")
            return self.sequence
        self._set(sequence, outright=True, published=None)
        return sequence

    def peek(self) -> int:
        """The followed value, without any I/O (for code on an event loop)."""
        self._ensure_threads()
        return self.sequence

    def saw(self, sequence: int) -> None:
        """A value published (by this process, or heard from Redis): visible to the next
        request at once."""
        with self._lock:
            self._published += 1
        self._set(sequence, outright=False, published=None)

    def close(self) -> None:
        """Stop following and wait for the threads to end (``get`` starts them again)."""
        with self._lock:
            stop, threads = self._stop, self._threads
            self._stop, self._threads = threading.Event(), []
            self.trusted_until = 0.0
        stop.set()
        for thread in threads:
            thread.join(timeout=5.0)

    def _set(self, sequence: int, *, outright: bool, published: int | None) -> None:
        with self._lock:
            before = self.sequence
            if outright and (published is None or published == self._published):
                self.sequence = sequence
            else:
                # This process published meanwhile: the read may be older than what saw() set.
                self.sequence = max(self.sequence, sequence)
            moved = self.sequence != before
        if moved:
            _wake_loops()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self.trusted_until = 0.0

    def _ensure_threads(self) -> None:
        if self._threads and all(t.is_alive() for t in self._threads):
            return
        with self._lock:
            if self._threads and all(t.is_alive() for t in self._threads):
                return
            self._stop.set()  # a half-dead pair: end the survivor, start both afresh
            self._stop = stop = threading.Event()
            self.trusted_until = 0.0
            targets = [self._poll] + ([self._listen] if settings.REDIS_URL else [])
            self._threads = [
                threading.Thread(
                    target=target,
                    args=(stop,),
                    name=f"turnout-routing-{target.__name__.strip('_')}",
                    daemon=True,
                )
                for target in targets
            ]
            for thread in self._threads:
                thread.start()

    def _poll(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                published = self._published
                try:
                    sequence = current_sequence()
                except DatabaseError as exc:
                    self.trusted_until = 0.0
                    self._warn("database", exc)
                    connection.close()  # this thread's connection: reconnect next time
                else:
                    self._set(sequence, outright=True, published=published)
                    if not stop.is_set():
                        self.trusted_until = time.monotonic() + TRUST_SECONDS
                stop.wait(POLL_SECONDS)
        finally:
            connection.close()

    def _listen(self, stop: threading.Event) -> None:
        import redis

        while not stop.is_set():
            client = redis.Redis.from_url(
                settings.REDIS_URL,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=5.0,
                health_check_interval=15,
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(channel())
                while not stop.is_set():
                    message = pubsub.get_message(timeout=LISTEN_WAIT)
                    if message is not None and message["type"] == "message":
                        self._heard(message["data"])
            except (redis.RedisError, OSError) as exc:
                self._warn("redis", exc)
                stop.wait(RECONNECT_SECONDS)
            finally:
                try:
                    pubsub.close()
                    client.close()
                except (redis.RedisError, OSError):  # closing a dead connection
                    pass

    def _heard(self, data: bytes) -> None:
        try:
            sequence = int(json.loads(data)["seq"])
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring a malformed routing-change message: %r", data[:200])
            return
        self.saw(sequence)

    def _warn(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now >= self._warn_after:  # once in a while, not once a second
            self._warn_after = now + 10.0
            log.warning("routing-change follower: %s unreachable (%r); retrying", what, exc)


_follower = _Follower()
os.register_at_fork(after_in_child=_follower._after_fork)


def followed_sequence() -> int:
    """The routing-change sequence without a database query or Redis round trip on the hot
    path: from memory while the poller confirms it (it re-reads every ``POLL_SECONDS``, and
    pub/sub brings a change within milliseconds); otherwise one query, as ``current_sequence``.
    """
    return _follower.get()


def stop_following() -> None:
    """Stop this process's follower threads (they close their database connection)."""
    _follower.close()


# --- waiting on an event loop ----------------------------------------------------------------

# One asyncio.Event per event loop that has streams waiting, replaced once set: the follower's
# threads set it through the loop (asyncio objects are not thread-safe).
_loop_events: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}
_loops_lock = threading.Lock()


def _wake_loops() -> None:
    with _loops_lock:
        waiting = list(_loop_events.items())
    for loop, event in waiting:
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop has closed
            with _loops_lock:
                _loop_events.pop(loop, None)


def _loop_event(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    with _loops_lock:
        event = _loop_events.get(loop)
        if event is None or event.is_set():
            event = _loop_events[loop] = asyncio.Event()
        return event


async def next_change(seen: int, timeout: float) -> int:
    """The followed sequence as soon as it differs from ``seen``, or as it is after ``timeout``
    seconds. No I/O on the loop, and no connection of its own: every waiter of a process
    shares the follower."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, timeout)
    while True:
        # The event before the value: a change after this read sets the event we wait on.
        event = _loop_event(loop)
        current = _follower.peek()
        remaining = deadline - loop.time()
        if current != seen or remaining <= 0:
            return current
        try:
            await asyncio.wait_for(event.wait(), remaining)
        except TimeoutError:
            return _follower.peek()
