"""OFREP (OpenFeature Remote Evaluation Protocol 0.3.0): every plan as an object-valued flag.

Its error format is the protocol's own, not the project's: ``{"key", "errorCode",
"errorDetails"}`` on 400/404, no body on 401/403, ``Retry-After`` in whole seconds on 429
(the real Python provider parses integers or HTTP dates only). See reference/ofrep.md.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from turnout import routing

from migrations_app.api.auth import KeyIdentity, identify, rate_limit_and_sequence, raw_key
from migrations_app.api.errors import json_response
from migrations_app.api.sdk import etag_matches
from migrations_app.snapshots import Served, served_snapshot

MAX_BODY_BYTES = 16_384


class _Refused(Exception):
    def __init__(self, response: HttpResponse) -> None:
        self.response = response


def _failure(key: str | None, code: str, details: str, status: int = 400) -> HttpResponse:
    body: dict[str, Any] = {"errorCode": code, "errorDetails": details}
    if key is not None:
        body = {"key": key, **body}
    return json_response(body, status=status)


def _admit(request: HttpRequest) -> tuple[KeyIdentity, Served]:
    raw = raw_key(request.META)
    identity = identify(raw) if raw else None
    if identity is None:
        raise _Refused(HttpResponse(status=401))
    if "decide" not in identity.scopes:
        raise _Refused(HttpResponse(status=403))
    retry_after, sequence = rate_limit_and_sequence(identity)
    if retry_after is not None:
        raise _Refused(HttpResponse(status=429, headers={"Retry-After": str(retry_after)}))
    return identity, served_snapshot(identity.plan_ids, sequence)


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson refuses what Python's parser accepts (NaN, integers over 64 bits): the
        # contract is Python's, so it decides.
        return json.loads(raw)


def _utf8(text: str) -> bool:
    """False for a lone surrogate, which Python's parser lets through (``"\\ud800"``) and
    mmh3 (5.3.1) segfaults hashing."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _context(request: HttpRequest, key: str | None) -> dict[str, Any] | HttpResponse:
    if len(request.body) > MAX_BODY_BYTES:
        return _failure(key, "INVALID_CONTEXT", f"The request body is over {MAX_BODY_BYTES} bytes.")
    try:
        body = _parse(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        return _failure(key, "PARSE_ERROR", f"The body is not JSON: {exc}.")
    if not isinstance(body, dict):
        return _failure(key, "PARSE_ERROR", "The body must be a JSON object with a 'context'.")
    context = body.get("context", {})
    if not isinstance(context, dict):
        return _failure(key, "INVALID_CONTEXT", "'context' must be an object.")
    unit = context.get("targetingKey")
    if unit is None or unit == "":
        return _failure(
            key,
            "TARGETING_KEY_MISSING",
            "context.targetingKey names the unit to route (a user id).",
        )
    if not isinstance(unit, str) or len(unit) > 256 or not _utf8(unit):
        return _failure(
            key,
            "INVALID_CONTEXT",
            "context.targetingKey must be a string of at most 256 characters.",
        )
    return context


def _evaluation(plan: routing.PlanSnapshot, unit: str, decision_id: str) -> dict[str, Any]:
    decision = routing.decide(plan, unit, decision_id=decision_id)
    metadata: dict[str, Any] = {
        "planVersion": decision.plan_version,
        "run": decision.run,
        "decisionId": decision_id,
    }
    if decision.phase:
        metadata["phase"] = decision.phase
    return {
        "key": plan.key,
        "reason": decision.reason,
        "variant": decision.arm,
        "value": decision.to_dict(),
        "metadata": metadata,
    }


@csrf_exempt
@require_POST
def evaluate_flag(request: HttpRequest, key: str) -> HttpResponse:
    """``POST /ofrep/v1/evaluate/flags/{key}``: one plan's decision for ``context.targetingKey``."""
    try:
        _, served = _admit(request)
    except _Refused as refused:
        return refused.response
    context = _context(request, key)
    if isinstance(context, HttpResponse):
        return context
    plan = served.parsed.plans.get(key)
    if plan is None:
        return _failure(key, "FLAG_NOT_FOUND", f"No plan with key {key!r}.", status=404)
    return json_response(_evaluation(plan, context["targetingKey"], uuid.uuid4().hex))


@csrf_exempt
@require_POST
def evaluate_flags(request: HttpRequest) -> HttpResponse:
    """``POST /ofrep/v1/evaluate/flags``: every plan the key may see, cacheable with ETag."""
    try:
        _, served = _admit(request)
    except _Refused as refused:
        return refused.response
    context = _context(request, None)
    if isinstance(context, HttpResponse):
        return context
    unit = context["targetingKey"]
    # Same snapshot and same unit give the same answers: that is what the ETag names. The
    # decision ids are derived from it so that a cached bulk answer stays self-consistent.
    digest = hashlib.sha256(f"{served.data['version']}\x00{unit}".encode()).hexdigest()
    etag = f'"{digest[:32]}"'
    if etag_matches(request.headers.get("If-None-Match"), etag):
        return HttpResponse(status=304, headers={"ETag": etag})
    flags = [
        _evaluation(plan, unit, f"{digest[:16]}{index:04x}")
        for index, plan in enumerate(served.parsed.plans.values())
    ]
    return json_response(
        {"flags": flags, "metadata": {"version": served.data["version"]}}, headers={"ETag": etag}
    )
