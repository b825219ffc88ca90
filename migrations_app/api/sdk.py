"""What SDKs call: the plan snapshot (ETag/304), the change stream (SSE) and /decide for thin clients."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.views import APIView
from turnout import routing, targeting
from turnout.contract import (
    MAX_ATTRIBUTES_BYTES,
    MAX_PLAN_KEY_LENGTH,
    MAX_UNIT_LENGTH,
    STREAM_PATH,
    STREAM_URL_HEADER,
)

from migrations_app.api.auth import (
    ApiKeyAuthentication,
    KeyIdentity,
    has_scope,
    identify,
    rate_limit_and_sequence,
    raw_key,
)
from migrations_app.api.errors import error_body, error_response, json_response, sized
from migrations_app.api.parsers import BodyNotJSON, BodyTooDeep, parse_json
from migrations_app.outcomes.event_checks import (
    unstorable_char,
)
from migrations_app.routing import changes
from migrations_app.routing.snapshots import Served, served_snapshot

HEARTBEAT_SECONDS = 15.0
# An open stream looks its key up again this often (through the process's key cache, which
# holds a key for auth.KEY_CACHE_SECONDS): a revoked key's stream ends within the sum.
KEY_RECHECK_SECONDS = 5.0
# The last event of a stream whose key was revoked (or lost the scope): then the stream ends.
_ENDED = (
    b'event: error\ndata: {"code":"unauthenticated","message":"Unknown or revoked API key."}\n\n'
)


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
            return _advertise(request, HttpResponse(status=304, headers=headers))
        return _advertise(
            request, HttpResponse(served.body, content_type="application/json", headers=headers)
        )


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
    bad = unstorable_char(text)
    if bad == "\x00":
        return "", "Null characters are not allowed."
    if bad is not None:
        # Python's parser lets lone surrogates (``"\ud800"``) through; DRF's CharField refused
        # them, and ingest refuses them (PostgreSQL text has no UTF-8 for one): a unit no
        # outcome could be reported for is not routed.
        return "", f"Surrogate characters are not allowed: U+{ord(bad):X}."
    return text, ""


def _attributes_errors(data: dict[str, Any]) -> dict[str, str]:
    """The attributes' problems by field (``attributes`` or ``attributes.<name>``): what the
    rules read must be what every SDK reads (turnout.targeting.attribute_problems)."""
    value = data.get("attributes", _EMPTY_ATTRIBUTES)
    if value is None:
        return {"attributes": "This field may not be null."}
    if not isinstance(value, dict):
        return {
            "attributes": f'Expected a dictionary of items but got type "{type(value).__name__}".'
        }
    if not value:
        return {}
    errors: dict[str, str] = {}
    for field, message in targeting.attribute_problems(value):
        errors.setdefault(field, message)
    if not errors and len(json.dumps(value, default=str)) > MAX_ATTRIBUTES_BYTES:
        errors["attributes"] = f"At most {MAX_ATTRIBUTES_BYTES} bytes of attributes."
    return errors


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
        data = parse_json(body)
    except BodyNotJSON as exc:
        return None, error_response("parse_error", f"JSON parse error - {exc}", status=400)
    except BodyTooDeep as exc:
        # Within the parsers' limits but past what the checks after them may walk (the
        # attributes' size is measured by encoding them).
        return None, error_response("parse_error", f"JSON parse error - {exc}.", status=400)
    return data, None


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
    plan_key, plan_error = _text(data, "plan", MAX_PLAN_KEY_LENGTH, trim=True)
    unit, unit_error = _text(data, "unit", MAX_UNIT_LENGTH, trim=False)
    attributes_errors = _attributes_errors(data)
    if plan_error or unit_error or attributes_errors:
        fields = {
            name: [error] for name, error in (("plan", plan_error), ("unit", unit_error)) if error
        }
        fields.update((name, [error]) for name, error in attributes_errors.items())
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
    decision = routing.decide(
        plan,
        unit,
        decision_id=uuid.uuid4().hex,
        attributes=data.get("attributes"),
        now=time.time(),
    )
    return json_response(decision.to_dict())


def _config_event(served: Served, event_id: int) -> bytes:
    """One ``config`` event carrying the snapshot itself (already serialised once per change)."""
    version = served.data["version"]
    return b'id: %d\nevent: config\ndata: {"version":"%s","snapshot":%s}\n\n' % (
        event_id,
        version.encode(),
        served.body,
    )


async def stream(request: HttpRequest) -> HttpResponseBase:
    """``GET /api/v1/sdk/stream``: Server-Sent Events, one ``config`` event per routing change.

    Served by the ASGI stream server only: an idle stream there is a suspended coroutine. Under
    WSGI (gunicorn) each stream would hold a worker thread for as long as the SDK stays
    connected, and a few SDKs would take the API down, so the WSGI app answers at once with
    421 and where the stream is (``TURNOUT_STREAM_URL``); the SDK then follows it, or polls.

    The view's few blocking calls run on the event loop's bounded executor
    (``thread_sensitive=False``): the default, one thread per request, would hold a database
    connection per open stream.
    """
    if not isinstance(request, ASGIRequest):
        return stream_not_served_here(request)
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
    return StreamingHttpResponse(
        _events(raw, identity),
        content_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def stream_not_served_here(request: HttpRequest) -> HttpResponse:
    """421 Misdirected Request: this server does not hold streams; the body and the
    ``Turnout-Stream-URL`` header say where they are, when that is known."""
    where = stream_url(request)
    message = "The change stream is not served by this server"
    message += f"; it is at {where}{STREAM_PATH}." if where else "; poll /api/v1/sdk/config."
    response = JsonResponse(
        error_body("stream_not_served_here", message, {"stream_url": where or None}), status=421
    )
    return _advertise(request, response)


def stream_url(request: HttpRequest) -> str | None:
    """Where SDKs reach the stream server: ``TURNOUT_STREAM_URL`` when set; else, when the
    stream server's port is known (``TURNOUT_STREAM_PORT``, which ``make run`` sets), the host
    this request reached the API by, on that port. That host is one the SDK can reach, wherever
    it runs: a fixed loopback address (what ``make run`` advertised) is not, from elsewhere.
    Behind a proxy that moves the stream to another host or path, set the URL."""
    if settings.TURNOUT_STREAM_URL:
        return str(settings.TURNOUT_STREAM_URL)
    if not settings.TURNOUT_STREAM_PORT:
        return None
    host = request.get_host()  # checked against ALLOWED_HOSTS
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return f"{request.scheme}://{name}:{settings.TURNOUT_STREAM_PORT}"


def _advertise(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    where = stream_url(request)
    if where:
        response[STREAM_URL_HEADER] = where
    return response


async def _events(raw: str, identity: KeyIdentity) -> AsyncIterator[bytes]:
    """The stream's body. Every stream of the process waits on the one routing-change follower
    (``changes.next_change``: no connection of its own), and re-checks its key every
    ``KEY_RECHECK_SECONDS``: a revoked key's stream ends then."""
    yield b"retry: 1000\n\n"
    sequence = await sync_to_async(changes.followed_sequence, thread_sensitive=False)()
    served = await sync_to_async(served_snapshot, thread_sensitive=False)(
        identity.plan_ids, sequence
    )
    version = served.data["version"]
    yield _config_event(served, sequence)
    loop = asyncio.get_running_loop()
    heartbeat_at = loop.time() + HEARTBEAT_SECONDS
    recheck_at = loop.time() + KEY_RECHECK_SECONDS
    while True:
        latest = await changes.next_change(sequence, min(heartbeat_at, recheck_at) - loop.time())
        if loop.time() >= recheck_at:
            recheck_at = loop.time() + KEY_RECHECK_SECONDS
            fresh = await sync_to_async(identify, thread_sensitive=False)(raw)
            if fresh is None or "decide" not in fresh.scopes:
                yield _ENDED
                return
            if fresh.plan_ids != identity.plan_ids:
                identity, sequence = fresh, -1  # its plans changed: rebuild for the new list
        if latest != sequence:
            sequence = latest
            served = await sync_to_async(served_snapshot, thread_sensitive=False)(
                identity.plan_ids, sequence
            )
            if served.data["version"] != version:
                version = served.data["version"]
                heartbeat_at = loop.time() + HEARTBEAT_SECONDS
                yield _config_event(served, sequence)
                continue
        if loop.time() >= heartbeat_at:
            heartbeat_at = loop.time() + HEARTBEAT_SECONDS
            yield b": heartbeat\n\n"
