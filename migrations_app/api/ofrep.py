"""OFREP (OpenFeature Remote Evaluation Protocol 0.3.0): every plan as an object-valued flag.

Its error format is the protocol's own, not the project's: ``{"key", "errorCode",
"errorDetails"}`` on 400/404, no body on 401/403, ``Retry-After`` in whole seconds on 429
(the real Python provider parses integers or HTTP dates only). See reference/ofrep.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from turnout import routing, targeting
from turnout.contract import (
    MAX_OFREP_BODY_BYTES,
    MAX_UNIT_LENGTH,
    REASON_EXCLUDED,
    REASON_OVERRIDE,
)

from migrations_app.api.auth import KeyIdentity, identify, rate_limit_and_sequence, raw_key
from migrations_app.api.errors import json_response
from migrations_app.api.parsers import BodyNotJSON, BodyTooDeep, parse_json
from migrations_app.api.sdk import etag_matches
from migrations_app.outcomes.event_checks import (
    unstorable_char,
)
from migrations_app.routing.snapshots import Served, served_snapshot


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


def _context(request: HttpRequest, key: str | None) -> tuple[str, dict[str, Any]] | HttpResponse:
    """The unit (``context.targetingKey``) and the attributes (every other field), checked."""
    if len(request.body) > MAX_OFREP_BODY_BYTES:
        return _failure(
            key, "INVALID_CONTEXT", f"The request body is over {MAX_OFREP_BODY_BYTES} bytes."
        )
    try:
        body = parse_json(request.body or b"{}")
    except BodyNotJSON as exc:
        return _failure(key, "PARSE_ERROR", f"The body is not JSON: {exc}.")
    except BodyTooDeep as exc:
        return _failure(key, "INVALID_CONTEXT", f"The context is {exc}.")
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
    if not isinstance(unit, str) or len(unit) > MAX_UNIT_LENGTH or unstorable_char(unit):
        return _failure(
            key,
            "INVALID_CONTEXT",
            f"context.targetingKey must be a string of at most {MAX_UNIT_LENGTH} characters, "
            "without NUL or lone surrogates.",
        )
    # Every other field is an attribute the plan's rules read, as /decide's attributes are.
    attributes = {name: value for name, value in context.items() if name != "targetingKey"}
    problems = targeting.attribute_problems(attributes)
    if problems:
        field, message = problems[0]
        where = "context" + field.removeprefix("attributes")
        return _failure(key, "INVALID_CONTEXT", f"{where}: {message}")
    return unit, attributes


# OFREP's reasons are a closed list (the Python provider refuses others): Turnout's own are
# served as TARGETING_MATCH, named in the metadata; the value keeps them as /decide does.
_OFREP_REASON = {REASON_EXCLUDED: "TARGETING_MATCH", REASON_OVERRIDE: "TARGETING_MATCH"}


def _evaluation(
    plan: routing.PlanSnapshot,
    unit: str,
    decision_id: str,
    attributes: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    decision = routing.decide(plan, unit, decision_id=decision_id, attributes=attributes, now=now)
    metadata: dict[str, Any] = {
        "planVersion": decision.plan_version,
        "run": decision.run,
        "decisionId": decision_id,
    }
    if decision.phase:
        metadata["phase"] = decision.phase
    if decision.cohort:
        metadata["cohort"] = decision.cohort
    reason = _OFREP_REASON.get(decision.reason, decision.reason)
    if reason != decision.reason:
        metadata["turnoutReason"] = decision.reason
    return {
        "key": plan.key,
        "reason": reason,
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
    unit, attributes = context
    plan = served.parsed.plans.get(key)
    if plan is None:
        return _failure(key, "FLAG_NOT_FOUND", f"No plan with key {key!r}.", status=404)
    return json_response(_evaluation(plan, unit, uuid.uuid4().hex, attributes, time.time()))


def _bulk_decision_id(version: str, unit: str, attributes: str, plan_key: str) -> str:
    message = f"{version}\x00{unit}\x00{attributes}\x00{plan_key}".encode("utf-8", "surrogatepass")
    return hmac.new(_id_key(), message, hashlib.sha256).hexdigest()[:32]


@lru_cache(maxsize=1)
def _id_key() -> bytes:
    return hashlib.sha256(b"turnout-ofrep-decision-id\x00" + settings.SECRET_KEY.encode()).digest()


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
    unit, attributes = context
    canonical = json.dumps(attributes, sort_keys=True, separators=(",", ":"), default=str)
    # Same snapshot, unit and attributes give the same answers, but for a QA override that
    # expires meanwhile: the ETag names the answers themselves (evaluating is cheaper than the
    # request). The decision ids are derived from the same inputs, so that a cached bulk
    # answer stays self-consistent, but keyed with the server's secret: feedback names an
    # answer by its id, and one id (or the unit and version) must not tell another.
    version = served.data["version"]
    now = time.time()
    flags = [
        _evaluation(
            plan, unit, _bulk_decision_id(version, unit, canonical, plan.key), attributes, now
        )
        for plan in served.parsed.plans.values()
    ]
    answers = "\x00".join(
        f"{f['key']}:{f['variant']}:{f['value']['reason']}:{f['value']['cohort']}" for f in flags
    )
    digest = hashlib.sha256(
        f"{version}\x00{unit}\x00{canonical}\x00{answers}".encode("utf-8", "surrogatepass")
    ).hexdigest()
    etag = f'"{digest[:32]}"'
    if etag_matches(request.headers.get("If-None-Match"), etag):
        return HttpResponse(status=304, headers={"ETag": etag})
    return json_response(
        {"flags": flags, "metadata": {"version": served.data["version"]}}, headers={"ETag": etag}
    )
