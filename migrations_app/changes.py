"""Routing-change notifications: how a plan change reaches every connected SDK within a second.

A change is published on a Redis channel, so any web process can push it down its SSE
streams. Without Redis (the embedded default) the stream falls back to reading the
sequence from the database-backed cache.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)

CHANNEL = "turnout:routing-changes"
SEQUENCE_KEY = "turnout:routing-seq"


@lru_cache(maxsize=1)
def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(settings.REDIS_URL)


def current_sequence() -> int:
    if settings.REDIS_URL:
        return int(redis_client().get(SEQUENCE_KEY) or 0)
    return int(cache.get(SEQUENCE_KEY) or 0)


def publish_routing_change(plan_key: str, version: int) -> None:
    """Tell every web process that routing changed. Called after commit; never raises:
    SDKs also poll, so a lost notification delays a change, it does not lose it."""
    try:
        if settings.REDIS_URL:
            client = redis_client()
            sequence = int(client.incr(SEQUENCE_KEY))
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
