"""Shadow sample ingest: ``POST /api/v1/shadow-samples`` checked field by field, redacted and
stored once (the client-made id is the primary key); the new ones are enqueued after commit.
Samples of a plan that is not in a stage at their version are stored as skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson
from django.db import transaction
from django.utils import timezone
from turnout.contract import (
    ERROR_KINDS,
    MAX_CONTENT_CHARS,
    MAX_JSON_DEPTH,
    MAX_MS,
    MAX_SCHEMA_BYTES,
    MAX_UNIT_LENGTH,
    ROLES,
)

from migrations_app.models import (
    ShadowSample,
    ShadowStatus,
)
from migrations_app.outcomes import metrics
from migrations_app.outcomes.event_checks import (
    IngestResult,
    Invalid,
    Rejection,
    check_batch_size,
    events_of,
    number,
    plan_keys,
    sample_header,
    text,
    timestamp,
    tokens,
    too_deep,
)
from migrations_app.outcomes.plan_info import plan_infos
from migrations_app.shadow import tasks as shadow_tasks
from migrations_app.shadow.calls import plan_param_problems
from migrations_app.shadow.redaction import redactor


def checked_messages(request: Mapping[str, Any]) -> list[dict[str, str]]:
    """A request's ``messages``, checked (roles, text, sizes), or :class:`Invalid`."""
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("request.messages", "invalid", "request.messages must be a non-empty list.")
    out = []
    for m in messages:
        # A role that is a list or an object is unhashable: checked as a string first.
        if (
            not isinstance(m, Mapping)
            or not isinstance(m.get("role"), str)
            or m["role"] not in ROLES
        ):
            raise Invalid(
                "request.messages", "invalid", f"Each message needs a role in {sorted(ROLES)}."
            )
        content = m.get("content")
        if not isinstance(content, str) or len(content) > MAX_CONTENT_CHARS:
            raise Invalid(
                "request.messages",
                "invalid",
                f"Message content must be a string of at most {MAX_CONTENT_CHARS} characters.",
            )
        out.append({"role": m["role"], "content": content})
    return out


def redacted_messages(
    request: Mapping[str, Any], redact: Callable[[str], str]
) -> list[dict[str, str]]:
    """A request's ``messages``, checked (:func:`checked_messages`), their contents redacted."""
    return [{"role": m["role"], "content": redact(m["content"])} for m in checked_messages(request)]


def _bounded_schema(schema: Any) -> bool:
    """An object small and shallow enough to store (encoded recursively) and send on. orjson
    refuses integers past 64 bits, which Python's parser reads: such a schema is refused too.
    So is one with NaN or Infinity (the parser reads them too, orjson writes them as null and
    PostgreSQL's jsonb refuses them): what is stored must read back as it came."""
    if not isinstance(schema, Mapping) or too_deep(schema):
        return False
    try:
        encoded = orjson.dumps(schema)
    except orjson.JSONEncodeError:
        return False
    return len(encoded) <= MAX_SCHEMA_BYTES and orjson.loads(encoded) == schema


def _parse(event: Any, infos: Mapping[str, Any], identity: Any, now: datetime) -> dict[str, Any]:
    sample_id, decision_id, info, run_id, stage_id = sample_header(event, infos, identity)
    unit = text(event, "unit", MAX_UNIT_LENGTH)
    ts = timestamp(event, now)
    request = event.get("request")
    if not isinstance(request, Mapping):
        raise Invalid("request", "required", "request is required (messages, params).")
    params = request.get("params", {})
    if not isinstance(params, Mapping):
        raise Invalid("request.params", "invalid", "request.params must be an object.")
    for name, code, message in plan_param_problems(info.plan, params):
        raise Invalid(f"request.params.{name}", code, message)
    schema = request.get("json_schema")
    if schema is not None and not _bounded_schema(schema):
        raise Invalid(
            "request.json_schema",
            "invalid",
            f"request.json_schema must be an object of at most {MAX_SCHEMA_BYTES} bytes, "
            f"nested at most {MAX_JSON_DEPTH} levels, its numbers finite.",
        )
    control = event.get("control")
    if not isinstance(control, Mapping):
        raise Invalid("control", "required", "control is required (the production answer).")
    answer = control.get("text", "")
    if not isinstance(answer, str) or len(answer) > MAX_CONTENT_CHARS:
        raise Invalid("control.text", "invalid", "control.text must be a string.")
    error = control.get("error")
    if error is not None and (not isinstance(error, str) or error not in ERROR_KINDS):
        raise Invalid(
            "control.error",
            "invalid",
            f"control.error must be null or one of {sorted(ERROR_KINDS)}.",
        )
    redact = redactor(info.plan.redaction_patterns or [])
    limits = info.limits["control"]
    return {
        "sample_id": sample_id,
        "plan_id": info.plan.pk,
        "run_id": run_id,
        "stage_id": stage_id,
        "decision_id": decision_id,
        "unit": unit,
        "created_at": ts,
        "request": {
            "messages": redacted_messages(request, redact),
            "params": dict(params),
            "json_schema": dict(schema) if schema is not None else None,
        },
        "control": {
            "text": redact(answer),
            "latency_ms": number(control, "latency_ms", required=True, maximum=MAX_MS),
            "ttft_ms": number(control, "ttft_ms", required=False, maximum=MAX_MS),
            "error": error,
            "input_tokens": tokens(
                control,
                "input_tokens",
                limit=limits.context_window,
                what=limits.context_window_what,
                field_name="control.input_tokens",
            ),
            "output_tokens": tokens(
                control,
                "output_tokens",
                limit=limits.max_output,
                what=limits.max_output_what,
                field_name="control.output_tokens",
            ),
        },
    }


def shadow_samples_ingest(*, identity: Any, payload: Any) -> IngestResult:
    """Validate, redact and store a batch of shadow samples once each; enqueue the new ones.
    Samples of a plan that is not in a stage at their version are stored as skipped."""
    samples = events_of(payload, "samples")
    check_batch_size(samples)
    now = timezone.now()
    infos = plan_infos(plan_keys(samples))
    result = IngestResult()
    parsed: dict[str, dict[str, Any]] = {}
    for index, event in enumerate(samples):
        try:
            row = _parse(event, infos, identity, now)
        except Invalid as bad:
            result.rejected.append(Rejection(index, bad.field, bad.code, bad.message))
            continue
        if row["sample_id"] in parsed:
            result.duplicates += 1
        else:
            parsed[row["sample_id"]] = row
    if parsed:
        with transaction.atomic():
            existing = set(
                ShadowSample.objects.filter(pk__in=list(parsed)).values_list("pk", flat=True)
            )
            new = [r for sid, r in parsed.items() if sid not in existing]
            ShadowSample.objects.bulk_create(
                [
                    ShadowSample(
                        **r,
                        status=ShadowStatus.PENDING if r["stage_id"] else ShadowStatus.SKIPPED,
                        skip_reason="" if r["stage_id"] else "the plan was not running",
                    )
                    for r in new
                ],
                ignore_conflicts=True,  # a concurrent retry of this batch: claims decide
            )
            ids = [r["sample_id"] for r in new if r["stage_id"]]
            if ids:
                # Robust: a broker that is down must not turn a committed batch into a 500
                # (the SDK would resend it); the sweeper enqueues pending samples later.
                transaction.on_commit(lambda: shadow_tasks.enqueue_shadow_samples(ids), robust=True)
        result.stored = len(new)
        result.duplicates += len(existing)
    metrics.count_ingest("shadow", result)
    return result
