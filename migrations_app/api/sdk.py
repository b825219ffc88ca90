"""What SDKs call: the plan snapshot (ETag/304), the change stream (SSE) and /decide for thin clients."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.request import Request
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
from migrations_app.api.errors import error_body, error_response, json_response, sized
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


_PING = b'{"status":"ok"}'


@csrf_exempt
def ping(request: HttpRequest) -> HttpResponse:
    """``GET /api/v1/ping``: a constant answer through the same stack as the decision endpoints
    (no database, no Redis). A liveness probe, and the ceiling they are benchmarked against."""
    if request.method not in ("GET", "HEAD"):
        return _not_allowed(request, "GET")
    return sized(HttpResponse(_PING, content_type="application/json"))


# /decide is a plain Django view, not DRF: DRF's request wrapping, content negotiation and a
# serializer deep-copied per request cost 2-3x the decision itself. It keeps DRF's contract:
# the same status codes, error codes and field messages, in the same order of checks
# (authentication, scope, body, fields, rate limit, plan).

_REQUIRED = "This field is required."


def _text(data: dict[str, Any], name: str, max_length: int, *, trim: bool) -> tuple[str, str]:
    """A string field as DRF's CharField reads it (numbers become their text): (value, error)."""
    if name not in data:
        return "", _REQUIRED
    value = data[name]
    if value is None:
        return "", "This field may not be null."
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return "", "Not a valid string."
    text = value if isinstance(value, str) else str(value)
    if trim:
        text = text.strip()
    if text == "":
        return "", "This field may not be blank."
    if len(text) > max_length:
        return "", f"Ensure this field has no more than {max_length} characters."
    if "\x00" in text:
        return "", "Null characters are not allowed."
    if not text.isascii():
        # Python's parser lets lone surrogates (``"\ud800"``) through, and mmh3 (5.3.1)
        # segfaults hashing one: DRF's CharField refused them, and so does this.
        surrogate = next((c for c in text if "\ud800" <= c <= "\udfff"), None)
        if surrogate is not None:
            return "", f"Surrogate characters are not allowed: U+{ord(surrogate):X}."
    return text, ""


def _attributes_error(data: dict[str, Any]) -> str:
    value = data.get("attributes", _EMPTY_ATTRIBUTES)
    if value is None:
        return "This field may not be null."
    if not isinstance(value, dict):
        return f'Expected a dictionary of items but got type "{type(value).__name__}".'
    if value and len(json.dumps(value, default=str)) > MAX_ATTRIBUTES_BYTES:
        return f"At most {MAX_ATTRIBUTES_BYTES} bytes of attributes."
    return ""


_EMPTY_ATTRIBUTES: dict[str, Any] = {}


def _not_allowed(request: HttpRequest, allowed: str) -> HttpResponse:
    return error_response(
        "method_not_allowed",
        f'Method "{request.method}" not allowed.',
        status=405,
        headers={"Allow": allowed},
    )


def _unauthenticated(message: str) -> HttpResponse:
    return error_response(
        "unauthenticated",
        message,
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="turnout"'},
    )


def parse_json_body(request: HttpRequest) -> tuple[Any, HttpResponse | None]:
    """The JSON body as DRF's JSONParser takes it: 415 for another media type, an empty body
    as ``{}``, ``parse_error`` for what is not JSON."""
    body = request.body
    if not body:
        return {}, None
    media_type = request.META.get("CONTENT_TYPE", "")
    if media_type.split(";", 1)[0].strip().lower() != "application/json":
        return None, error_response(
            "unsupported_media_type",
            f'Unsupported media type "{media_type}" in request.',
            status=415,
        )
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError:
        pass
    try:
        # orjson refuses what Python's parser accepts (NaN, integers over 64 bits): the
        # contract is Python's, so it decides.
        return json.loads(body), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, error_response("parse_error", f"JSON parse error - {exc}", status=400)


@csrf_exempt
def decide(request: HttpRequest) -> HttpResponse:
    """``POST /api/v1/decide``: the decision the SDK would make locally, for clients without it."""
    if request.method != "POST":
        return _not_allowed(request, "POST, OPTIONS")
    raw = raw_key(request.META)
    if raw is None:
        return _unauthenticated("An API key is required (Authorization: Bearer <key>).")
    identity = identify(raw)
    if identity is None:
        return _unauthenticated("Unknown or revoked API key.")
    if "decide" not in identity.scopes:
        return error_response("forbidden", "This API key lacks the 'decide' scope.", status=403)
    data, refused = parse_json_body(request)
    if refused is not None:
        return refused
    if not isinstance(data, dict):
        return error_response("parse_error", "The body must be a JSON object.", status=400)
    plan_key, plan_error = _text(data, "plan", 63, trim=True)
    unit, unit_error = _text(data, "unit", 256, trim=False)
    attributes_error = _attributes_error(data)
    if plan_error or unit_error or attributes_error:
        fields = {
            name: [error]
            for name, error in (
                ("plan", plan_error),
                ("unit", unit_error),
                ("attributes", attributes_error),
            )
            if error
        }
        return error_response(
            "validation_failed", "The request is not valid.", {"fields": fields}, status=400
        )
    retry_after, sequence = rate_limit_and_sequence(identity)
    if retry_after is not None:
        return error_response(
            "rate_limited",
            "Over this key's decision rate limit.",
            status=429,
            headers={"Retry-After": str(retry_after)},
        )
    plan = served_snapshot(identity.plan_ids, sequence).parsed.plans.get(plan_key)
    if plan is None:
        return error_response(
            "plan_not_found", f"No plan with key {plan_key!r}.", {"field": "plan"}, status=404
        )
    decision = routing.decide(plan, unit, decision_id=uuid.uuid4().hex)
    return json_response(decision.to_dict())


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
    raw = raw_key(request.META)
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
