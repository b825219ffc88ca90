"""What SDKs call: the plan snapshot (ETag/304), the change stream (SSE) and /decide for thin clients."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from turnout import routing

from migrations_app import changes
from migrations_app.api.auth import (
    ApiKeyAuthentication,
    KeyIdentity,
    has_scope,
    identify,
    rate_limit_and_sequence,
    raw_key,
)
from migrations_app.api.errors import error_body
from migrations_app.errors import NotFound
from migrations_app.snapshots import Served, served_snapshot

MAX_ATTRIBUTES_BYTES = 4096
HEARTBEAT_SECONDS = 15.0


def admit(identity: KeyIdentity) -> Served:
    """Apply the key's rate limit and return the snapshot it may see, from memory."""
    retry_after, sequence = rate_limit_and_sequence(identity)
    if retry_after is not None:
        raise exceptions.Throttled(wait=retry_after, detail="Over this key's decision rate limit.")
    return served_snapshot(identity.plan_ids, sequence)


def etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return etag in candidates or "*" in candidates


class ConfigView(APIView):
    """``GET /api/v1/sdk/config``: every plan this key may see, as SDKs evaluate it."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope("decide")]

    def get(self, request: Request) -> HttpResponse:
        served = admit(request.user)
        headers = {"ETag": served.etag, "Cache-Control": "no-cache"}
        if etag_matches(request.headers.get("If-None-Match"), served.etag):
            return HttpResponse(status=304, headers=headers)
        return HttpResponse(served.body, content_type="application/json", headers=headers)


class PingView(APIView):
    """``GET /api/v1/ping``: a constant answer through the full stack (no database, no Redis).
    A liveness probe, and the ceiling the decision endpoints are benchmarked against."""

    authentication_classes: list[type] = []
    permission_classes: list[type] = []

    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


class DecideInput(serializers.Serializer):
    plan = serializers.CharField(max_length=63)
    unit = serializers.CharField(max_length=256, trim_whitespace=False)
    attributes = serializers.DictField(required=False, default=dict)

    def validate_attributes(self, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, default=str)) > MAX_ATTRIBUTES_BYTES:
            raise serializers.ValidationError(
                f"At most {MAX_ATTRIBUTES_BYTES} bytes of attributes."
            )
        return value


class DecideView(APIView):
    """``POST /api/v1/decide``: the decision the SDK would make locally, for clients without it."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope("decide")]

    def post(self, request: Request) -> Response:
        if not isinstance(request.data, dict):
            raise exceptions.ParseError("The body must be a JSON object.")
        data = DecideInput(data=request.data)
        data.is_valid(raise_exception=True)
        served = admit(request.user)
        plan = served.parsed.plans.get(data.validated_data["plan"])
        if plan is None:
            raise NotFound(
                f"No plan with key {data.validated_data['plan']!r}.",
                code="plan_not_found",
                details={"field": "plan"},
            )
        decision = routing.decide(plan, data.validated_data["unit"], decision_id=uuid.uuid4().hex)
        return Response(decision.to_dict())


def _config_event(served: Served, event_id: int) -> bytes:
    """One ``config`` event carrying the snapshot itself (already serialised once per change)."""
    version = served.data["version"]
    return b'id: %d\nevent: config\ndata: {"version":"%s","snapshot":%s}\n\n' % (
        event_id,
        version.encode(),
        served.body,
    )


async def stream(request: HttpRequest) -> HttpResponse:
    """``GET /api/v1/sdk/stream``: Server-Sent Events, one ``config`` event per routing change.

    An async view under ASGI: an idle stream is a suspended coroutine, not a thread. Its few
    blocking calls run on the event loop's bounded executor (``thread_sensitive=False``): the
    default, one thread per request, would hold a database connection per open stream.
    """
    raw = raw_key(request.headers)
    if raw is None:
        return JsonResponse(error_body("unauthenticated", "An API key is required."), status=401)
    identity = await sync_to_async(identify, thread_sensitive=False)(raw)
    if identity is None:
        return JsonResponse(
            error_body("unauthenticated", "Unknown or revoked API key."), status=401
        )
    if "decide" not in identity.scopes:
        return JsonResponse(
            error_body("forbidden", "This API key lacks the 'decide' scope."), status=403
        )
    response = StreamingHttpResponse(
        _events(identity),
        content_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    return response


async def _events(identity: KeyIdentity) -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"
    pubsub = None
    try:
        if settings.REDIS_URL:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(settings.REDIS_URL)
            pubsub = client.pubsub()
            # Subscribe before reading the current version: a change in between is then not missed.
            await pubsub.subscribe(changes.CHANNEL)
        sequence = await sync_to_async(changes.current_sequence, thread_sensitive=False)()
        served = await sync_to_async(served_snapshot, thread_sensitive=False)(
            identity.plan_ids, sequence
        )
        version = served.data["version"]
        yield _config_event(served, sequence)
        while True:
            if pubsub is not None:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=HEARTBEAT_SECONDS
                )
                if message is None:
                    yield b": heartbeat\n\n"
                    continue
                sequence = int(json.loads(message["data"])["seq"])
            else:
                # Embedded mode has no pub/sub: look at the sequence twice a second.
                for _ in range(int(HEARTBEAT_SECONDS * 2)):
                    await asyncio.sleep(0.5)
                    latest = await sync_to_async(changes.current_sequence, thread_sensitive=False)()
                    if latest != sequence:
                        sequence = latest
                        break
                else:
                    yield b": heartbeat\n\n"
                    continue
            served = await sync_to_async(served_snapshot, thread_sensitive=False)(
                identity.plan_ids, sequence
            )
            if served.data["version"] != version:
                version = served.data["version"]
                yield _config_event(served, sequence)
    finally:
        if pubsub is not None:
            await pubsub.aclose()
            await client.aclose()
