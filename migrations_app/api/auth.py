"""SDK API-key authentication, scopes and the per-key rate limit.

Keys are looked up once and remembered for ``KEY_CACHE_SECONDS``: the decision endpoints
serve thousands of requests a second and must not read the database for each. A revoked
key therefore keeps working for at most that long, which the README states.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from migrations_app.api.keys import apikey_authenticate, apikey_plan_ids
from migrations_app.models import ApiKey
from migrations_app.routing import changes

log = logging.getLogger(__name__)

KEY_CACHE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    """What a request authenticated as: enough to authorise it without touching the database."""

    pk: int
    name: str
    prefix: str
    scopes: frozenset[str]
    plan_ids: frozenset[int] | None  # None: every plan

    is_authenticated = True

    def may_see(self, plan_pk: int) -> bool:
        return self.plan_ids is None or plan_pk in self.plan_ids


_keys: dict[str, tuple[float, KeyIdentity | None]] = {}
_keys_lock = threading.Lock()


def raw_key(meta: Mapping[str, Any]) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (OFREP accepts both).

    Reads ``request.META``: ``request.headers`` would build a dict of every header first.
    """
    authorization = meta.get("HTTP_AUTHORIZATION", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return meta.get("HTTP_X_API_KEY") or None


def identify(raw: str) -> KeyIdentity | None:
    now = time.monotonic()
    cached = _keys.get(raw)
    if cached is not None and cached[0] > now:
        return cached[1]
    key: ApiKey | None = apikey_authenticate(raw)
    identity = None
    if key is not None:
        identity = KeyIdentity(
            key.pk, key.name, key.prefix, frozenset(key.scopes), apikey_plan_ids(key)
        )
    with _keys_lock:
        if len(_keys) > 10_000:
            _keys.clear()  # bounded: a flood of made-up keys must not grow memory
        _keys[raw] = (now + KEY_CACHE_SECONDS, identity)
    return identity


def forget_keys() -> None:
    with _keys_lock:
        _keys.clear()


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[KeyIdentity, None] | None:
        raw = raw_key(request.META)
        if raw is None:
            return None
        identity = identify(raw)
        if identity is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked API key.")
        return identity, None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="turnout"'


def has_scope(scope: str, *others: str) -> type[permissions.BasePermission]:
    """A permission: the key has ``scope`` (or one of ``others``)."""
    wanted = (scope, *others)

    class HasScope(permissions.BasePermission):
        message = f"This API key lacks the {' or '.join(map(repr, wanted))} scope."

        def has_permission(self, request: Request, view: Any) -> bool:
            user = request.user
            if not isinstance(user, KeyIdentity):
                raise exceptions.NotAuthenticated(
                    "An API key is required (Authorization: Bearer <key>)."
                )
            return any(s in user.scopes for s in wanted)

    return HasScope


# --- rate limit -----------------------------------------------------------------
#
# The limit is per key per second, across every web process, approximately: each process
# admits requests against its own count plus the shared Redis counter for that second as it
# last read it, and adds its count to Redis in batches of ``_batch(limit)`` requests (one
# INCRBY round trip per batch, not per request). The request that completes a batch is
# admitted only if the counter it gets back is within the limit. Once a key has spent its
# budget, each process learns so by its next batch at the latest, so a key gets at most
# ``limit + processes * batch`` decisions in a second (batch = 1 % of the limit: 2,000/s
# admits at most 2,040 on two workers); with batch 1 (limits under 200/s) every request is
# one INCR and the limit is exact. With Redis unreachable each process keeps enforcing the
# limit on its own count (a key then gets up to processes * limit), and tries Redis again
# after a second.

RATE_WINDOW_KEY = "turnout:rate:{prefix}:{second}"


def _batch(limit: int) -> int:
    return max(1, limit // 100)


class _Window:
    """One key's budget in one second, as this process sees it."""

    __slots__ = ("second", "shared", "pending", "inflight", "retry_at")

    def __init__(self, second: int) -> None:
        self.second = second
        self.shared = (
            0  # the Redis counter at the last sync (this process's flushed share included)
        )
        self.pending = 0  # admitted here since, not yet added to Redis
        self.inflight = 0  # being added to Redis right now
        self.retry_at = 0.0  # after a Redis failure, do not try again before this


_windows: dict[str, _Window] = {}
_windows_lock = threading.Lock()


def _sync(prefix: str, second: int, count: int) -> int:
    key = RATE_WINDOW_KEY.format(prefix=prefix, second=second)
    pipe = changes.redis_client().pipeline(transaction=False)
    pipe.incrby(key, count)
    pipe.expire(key, 2)
    return int(pipe.execute()[0])


def rate_limited(identity: KeyIdentity) -> int | None:
    """Count one decision against the key's per-second budget: None if admitted, else the
    whole seconds to wait (``Retry-After``)."""
    limit = settings.TURNOUT_RATE_LIMIT_PER_KEY
    if not limit:
        return None
    now = time.time()
    second = int(now)
    prefix = identity.prefix
    with _windows_lock:
        window = _windows.get(prefix)
        if window is None or window.second != second:
            if len(_windows) > 10_000:
                _windows.clear()  # bounded, as the key cache is
            window = _windows[prefix] = _Window(second)
        if window.shared + window.inflight + window.pending >= limit:
            return 1
        window.pending += 1
        if not settings.REDIS_URL or window.pending < _batch(limit) or now < window.retry_at:
            return None
        count, window.pending = window.pending, 0
        window.inflight += count
    try:
        shared = _sync(prefix, second, count)
    except Exception:
        log.warning("rate-limit counter unreachable; limiting per process", exc_info=True)
        with _windows_lock:
            window.inflight -= count
            window.pending += count
            window.retry_at = now + 1.0
        return None
    with _windows_lock:
        window.inflight -= count
        window.shared = max(window.shared, shared)
    return 1 if shared > limit else None


def forget_windows() -> None:
    with _windows_lock:
        _windows.clear()


def rate_limit_and_sequence(identity: KeyIdentity) -> tuple[int | None, int]:
    """The rate-limit verdict (seconds to wait or None) and the routing-change sequence that
    keys the in-memory snapshot; neither needs a Redis round trip on most requests."""
    return rate_limited(identity), changes.followed_sequence()
