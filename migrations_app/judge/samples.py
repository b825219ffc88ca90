"""The pointwise judge's samples: ``POST /api/v1/judge-samples`` checked field by field, redacted
and stored once (the client-made id is the primary key); the new ones are enqueued after commit.

In a split or rollout stage the SDK sends the answers of a share of each arm's requests (the
plan's ``judge_sample_percent``, as ``judge_bp`` in its snapshot). A sample whose plan has no
judge, or that belongs to no split stage (a shadow stage, a stopped plan), is stored as skipped
with the reason and never judged.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone
from turnout.contract import (
    MAX_CONTENT_CHARS,
    MAX_UNIT_LENGTH,
)

from migrations_app.judge import tasks as judge_tasks
from migrations_app.models import Arm, JudgeSample, PlanStage, ShadowStatus
from migrations_app.outcomes import metrics
from migrations_app.outcomes.event_checks import (
    IngestResult,
    Invalid,
    Rejection,
    check_batch_size,
    events_of,
    plan_keys,
    sample_header,
    text,
    timestamp,
)
from migrations_app.outcomes.plan_info import PlanInfo, plan_infos
from migrations_app.shadow.redaction import redactor
from migrations_app.shadow.samples import redacted_messages


def _parse(
    event: Any, infos: Mapping[str, PlanInfo], identity: Any, now: datetime
) -> dict[str, Any]:
    sample_id, decision_id, info, run_id, stage_id = sample_header(event, infos, identity)
    arm = event.get("arm")
    if arm not in Arm.values:
        raise Invalid("arm", "invalid", "arm is control or candidate.")
    unit = text(event, "unit", MAX_UNIT_LENGTH)
    ts = timestamp(event, now)
    request = event.get("request")
    if not isinstance(request, Mapping):
        raise Invalid("request", "required", "request is required (messages).")
    answer = event.get("answer")
    if not isinstance(answer, str) or not answer or len(answer) > MAX_CONTENT_CHARS:
        raise Invalid(
            "answer",
            "invalid",
            f"answer must be a non-empty string of at most {MAX_CONTENT_CHARS}.",
        )
    redact = redactor(info.plan.redaction_patterns or [])
    return {
        "sample_id": sample_id,
        "plan_id": info.plan.pk,
        "run_id": run_id,
        "stage_id": stage_id,
        "arm": arm,
        "decision_id": decision_id,
        "unit": unit,
        "created_at": ts,
        "request": {"messages": redacted_messages(request, redact)},
        "answer": redact(answer),
    }


def _skip_reason(row: Mapping[str, Any], info: PlanInfo, kinds: Mapping[int, str]) -> str:
    """Why a stored sample will never be judged ("": it will be)."""
    if info.plan.judge_model_id is None:
        return "the plan has no judge model"
    stage = row["stage_id"]
    if stage is None:
        return "the plan was not running"
    if kinds.get(stage) == "shadow":
        return "a shadow stage: the pairs are judged there"
    return ""


def judge_samples_ingest(*, identity: Any, payload: Any) -> IngestResult:
    """Validate, redact and store a batch of judge samples once each; enqueue the new ones
    for the pointwise judge. Samples that will never be judged are stored as skipped, with
    the reason (a stale snapshot's, a plan without a judge)."""
    events = events_of(payload, "samples")
    check_batch_size(events)
    now = timezone.now()
    infos = plan_infos(plan_keys(events))
    result = IngestResult()
    parsed: dict[str, dict[str, Any]] = {}
    plans: dict[str, PlanInfo] = {}
    for index, event in enumerate(events):
        try:
            row = _parse(event, infos, identity, now)
        except Invalid as bad:
            result.rejected.append(Rejection(index, bad.field, bad.code, bad.message))
            continue
        if row["sample_id"] in parsed:
            result.duplicates += 1
        else:
            parsed[row["sample_id"]] = row
            plans[row["sample_id"]] = infos[event["plan"]]
    if parsed:
        stages = {r["stage_id"] for r in parsed.values() if r["stage_id"]}
        kinds = dict(PlanStage.objects.filter(pk__in=stages).values_list("pk", "kind"))
        with transaction.atomic():
            existing = set(
                JudgeSample.objects.filter(pk__in=list(parsed)).values_list("pk", flat=True)
            )
            new = []
            for sid, row in parsed.items():
                if sid in existing:
                    continue
                why = _skip_reason(row, plans[sid], kinds)
                status = ShadowStatus.SKIPPED if why else ShadowStatus.PENDING
                new.append(JudgeSample(**row, status=status, skip_reason=why))
            JudgeSample.objects.bulk_create(new, ignore_conflicts=True)
            ids = [s.sample_id for s in new if s.status == ShadowStatus.PENDING]
            if ids:
                # Robust: a broker that is down must not turn a committed batch into a 500;
                # the sweeper enqueues pending samples later.
                transaction.on_commit(lambda: judge_tasks.enqueue_judge_samples(ids), robust=True)
        result.stored = len(new)
        result.duplicates += len(existing)
    metrics.count_ingest("judge", result)
    return result
