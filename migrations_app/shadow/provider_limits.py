"""Per-provider call limits shared by every worker: calls at once, and calls per second.

A vendor's limits are per account, not per worker process, so the workers share one count in
Redis. Calls in flight are members of a sorted set scored by their lease's end: a worker that
dies mid-call leaks its slot for one lease at most, never forever. The calls-per-second budget
is a counter per second. Both are checked and taken in one Lua script, on Redis's own clock
(``TIME``), so workers with skewed clocks agree and two workers cannot both take the last slot.

Without Redis (the embedded default) the limits hold per process.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from migrations_app.routing import changes

log = logging.getLogger(__name__)

SLOTS_KEY = "turnout:provider:{name}:inflight"
RATE_KEY = "turnout:provider:{name}:second"

# KEYS[1]: the in-flight set; KEYS[2]: the per-second counter's prefix.
# ARGV: token, lease seconds, concurrency (0: none), calls per second (0: none).
# Returns 1 (taken), 0 (no free slot), -1 (this second's budget spent).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
local rate = tonumber(ARGV[4])
if rate > 0 then
  local counter = KEYS[2] .. ':' .. t[1]
  if tonumber(redis.call('GET', counter) or '0') >= rate then return -1 end
  redis.call('INCR', counter)
  redis.call('EXPIRE', counter, 2)
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
"""


@dataclass(frozen=True, slots=True)
class Limit:
    """A provider's limits: ``concurrency`` calls at once and ``per_second`` calls a second
    (``None``: no per-second limit) across all workers."""

    name: str
    concurrency: int
    per_second: int | None = None


class SlotTimeout(Exception):
    """No slot came free in time: the call was not made (it is not the vendor's failure)."""


_local_lock = threading.Lock()
_local: dict[str, tuple[threading.BoundedSemaphore, list[float]]] = {}


@lru_cache(maxsize=1)
def _acquire_script() -> Any:
    """The script, registered once per process on its Redis client (redis-py loads it into
    Redis by hash on first use, again after a Redis restart)."""
    return changes.redis_client().register_script(_ACQUIRE)


def _try_redis(limit: Limit, token: str, lease: float) -> int:
    script = _acquire_script()
    return int(
        script(
            keys=[SLOTS_KEY.format(name=limit.name), RATE_KEY.format(name=limit.name)],
            args=[token, lease, limit.concurrency, limit.per_second or 0],
        )
    )


def _release_redis(limit: Limit, token: str) -> None:
    changes.redis_client().zrem(SLOTS_KEY.format(name=limit.name), token)


def _local_state(limit: Limit) -> tuple[threading.BoundedSemaphore, list[float]]:
    with _local_lock:
        if limit.name not in _local:
            _local[limit.name] = (threading.BoundedSemaphore(limit.concurrency), [])
        return _local[limit.name]


def _try_local(limit: Limit) -> int:
    semaphore, starts = _local_state(limit)
    if not semaphore.acquire(blocking=False):
        return 0
    if limit.per_second:
        with _local_lock:
            now = time.monotonic()
            starts[:] = [s for s in starts if s > now - 1.0]
            if len(starts) >= limit.per_second:
                semaphore.release()
                return -1
            starts.append(now)
    return 1


@contextmanager
def provider_slot(limit: Limit, *, lease: float, wait: float) -> Iterator[None]:
    """Hold one of the provider's call slots for the body; wait at most ``wait`` seconds for
    one (then :class:`SlotTimeout`). ``lease`` bounds how long a dead worker's slot stays
    taken: make it longer than the call's timeout."""
    token = uuid.uuid4().hex
    shared = bool(settings.REDIS_URL)
    deadline = time.monotonic() + wait
    delay = 0.005
    while True:
        try:
            taken = _try_redis(limit, token, lease) if shared else _try_local(limit)
        except RedisError as exc:  # no shared count to keep: the call waits for Redis
            raise SlotTimeout(f"the shared call limits are unreachable: {exc}") from exc
        if taken == 1:
            break
        if time.monotonic() >= deadline:
            raise SlotTimeout(f"no free call slot for provider {limit.name!r} in {wait:g} s")
        # Jittered, growing waits: many workers waiting on one provider do not poll in step.
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.1)
    try:
        yield
    finally:
        if shared:
            try:
                _release_redis(limit, token)
            except Exception:  # the slot's lease frees it: a lost release costs one lease
                log.warning("could not release a %s call slot", limit.name, exc_info=True)
        else:
            _local_state(limit)[0].release()


def in_flight(name: str) -> int:
    """Calls to the provider holding a slot now, across all workers (Redis only)."""
    client = changes.redis_client()
    key = SLOTS_KEY.format(name=name)
    now = client.time()
    client.zremrangebyscore(key, "-inf", now[0] + now[1] / 1e6)
    return int(client.zcard(key))
