"""SDK API-key authentication, scopes and the per-key rate limit.

Keys are looked up once and remembered for ``KEY_CACHE_SECONDS``: the decision endpoints
serve thousands of requests a second and must not read the database for each. A revoked
key therefore keeps working for at most that long, which the README states.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from migrations_app import changes
from migrations_app.apikeys import apikey_authenticate
from migrations_app.models import ApiKey

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


def raw_key(headers: Any) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (OFREP accepts both)."""
    authorization = headers.get("Authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return headers.get("X-API-Key") or None


def identify(raw: str) -> KeyIdentity | None:
    now = time.monotonic()
    cached = _keys.get(raw)
    if cached is not None and cached[0] > now:
        return cached[1]
    key: ApiKey | None = apikey_authenticate(raw)
    identity = None
    if key is not None:
        plan_ids = frozenset(key.plans.values_list("pk", flat=True))
        identity = KeyIdentity(
            key.pk, key.name, key.prefix, frozenset(key.scopes), plan_ids or None
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
        raw = raw_key(request.headers)
        if raw is None:
            return None
        identity = identify(raw)
        if identity is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked API key.")
        return identity, None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="turnout"'


def has_scope(scope: str) -> type[permissions.BasePermission]:
    class HasScope(permissions.BasePermission):
        message = f"This API key lacks the {scope!r} scope."

        def has_permission(self, request: Request, view: Any) -> bool:
            user = request.user
            if not isinstance(user, KeyIdentity):
                raise exceptions.NotAuthenticated(
                    "An API key is required (Authorization: Bearer <key>)."
                )
            return scope in user.scopes

    return HasScope


# --- rate limit -----------------------------------------------------------------

_local_windows: dict[str, tuple[int, int]] = {}


def rate_limit_and_sequence(identity: KeyIdentity) -> tuple[int | None, int]:
    """Count this request against the key's per-second budget, and read the routing change
    sequence, in one Redis round trip. Returns (seconds to wait or None, sequence)."""
    limit = settings.TURNOUT_RATE_LIMIT_PER_KEY
    second = int(time.time())
    if settings.REDIS_URL:
        pipe = changes.redis_client().pipeline(transaction=False)
        pipe.get(changes.SEQUENCE_KEY)
        if limit:
            counter = f"turnout:rate:{identity.prefix}:{second}"
            pipe.incr(counter)
            pipe.expire(counter, 2)
        results = pipe.execute()
        sequence = int(results[0] or 0)
        count = int(results[1]) if limit else 0
    else:
        sequence = changes.current_sequence()
        window, count = _local_windows.get(identity.prefix, (second, 0))
        count = count + 1 if window == second else 1
        _local_windows[identity.prefix] = (second, count)
    if limit and count > limit:
        return 1, sequence
    return None, sequence
