"""Feedback: a user's rating of one answer, stored once per event id and counted on its outcome.

Feedback may arrive before its outcome (another service sends it, or the outcome batch is
still in an SDK buffer). It is stored and held, then counted when its outcome arrives; the
``turnout.apply_held_feedback`` task sweeps up the rare pair whose transactions crossed. It
counts only on a decision of a plan the sending key may write.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from django.db import transaction
from django.utils import timezone
from turnout.contract import FEEDBACK_SCALES, MAX_ID_LENGTH

from migrations_app.models import (
    Feedback,
    Outcome,
)
from migrations_app.outcomes import metrics
from migrations_app.outcomes.aggregation import OutcomeFacts
from migrations_app.outcomes.event_checks import (
    IngestResult,
    Invalid,
    Rejection,
    check_batch_size,
    events_of,
    finite_number,
    text,
    timestamp,
)
from migrations_app.outcomes.rollup import aggregate
from migrations_app.outcomes.store import db_datetime, fast_path, insert_returning

# Feedback linked to its outcomes per UPDATE statement (bounded: one CASE arm per row).
LINK_BATCH = 1000


def normalise_score(score: float, scale: str) -> float:
    """Thumbs (-1 or 1) and five stars (1..5) on one [0, 1] scale."""
    return (score + 1) / 2 if scale == "thumbs" else (score - 1) / 4


def _parse_feedback(event: Any, now: datetime) -> tuple[str, str, float, float, str, datetime]:
    if not isinstance(event, Mapping):
        raise Invalid("event", "invalid", "Each event must be an object.")
    event_id = text(event, "id", MAX_ID_LENGTH)
    decision_id = text(event, "decision_id", MAX_ID_LENGTH)
    scale = event.get("scale", "thumbs")
    if not isinstance(scale, str) or scale not in FEEDBACK_SCALES:
        raise Invalid("scale", "invalid", f"scale must be one of {sorted(FEEDBACK_SCALES)}.")
    score = event.get("score")
    if score is None:
        raise Invalid("score", "required", "score is required.")
    if not finite_number(score):
        raise Invalid("score", "invalid", "score must be a number.")
    if (scale == "thumbs" and score not in (-1, 1)) or (scale == "five" and not 1 <= score <= 5):
        allowed = "-1 or 1" if scale == "thumbs" else "1 to 5"
        raise Invalid("score", "out_of_range", f"score must be {allowed} on the {scale} scale.")
    score = float(score)
    return event_id, decision_id, normalise_score(score, scale), score, scale, timestamp(event, now)


def feedback_ingest(*, identity: Any, payload: Any) -> IngestResult:
    """Store feedback once per event id; count it now if its outcome is known, else hold it.
    A single event (an object with ``decision_id``) is accepted as a batch of one.

    ``identity`` is the API key (``may_see(plan_pk)`` and ``plan_ids``, None for every plan):
    feedback counts only on a decision of a plan the key may write. One whose decision is
    already stored in another plan is rejected (``plan_not_found``, as an outcome for that
    plan would be); one held for a decision not stored yet keeps the key's plans and is
    refused, never counted, if its outcome arrives in another plan."""
    if isinstance(payload, Mapping) and "events" not in payload and "decision_id" in payload:
        payload = {"events": [payload]}
    events = events_of(payload)
    check_batch_size(events)
    now = timezone.now()
    result = IngestResult()
    parsed: dict[str, tuple[int, tuple[str, str, float, float, str, datetime]]] = {}
    for index, event in enumerate(events):
        try:
            row = _parse_feedback(event, now)
        except Invalid as bad:
            result.rejected.append(Rejection(index, bad.field, bad.code, bad.message))
            continue
        if row[0] in parsed:
            result.duplicates += 1
        else:
            parsed[row[0]] = (index, row)
    for event_id in _elsewhere(identity, {row[1] for _, row in parsed.values()}, parsed):
        index, row = parsed.pop(event_id)
        result.rejected.append(
            Rejection(
                index,
                "decision_id",
                "plan_not_found",
                f"Decision {row[1]!r} is in no plan this key may report on.",
            )
        )
    result.rejected.sort(key=lambda r: r.index)
    if parsed:
        received = db_datetime(now)
        scope = key_scope(identity)
        with transaction.atomic():
            stored = insert_returning(
                Feedback._meta.db_table,
                [
                    "event_id", "decision_id", "score", "raw_score", "scale", "ts",
                    "received_at", "plan_scope", "refused",
                ],
                [(*r[:5], db_datetime(r[5]), received, scope, "") for _, r in parsed.values()],
                "event_id",
                (
                    "text", "text", "float8", "float8", "text", "timestamptz", "timestamptz",
                    "jsonb", "text",
                ),
            )  # fmt: skip
            if stored:
                _apply_feedback(stored)
        result.stored = len(stored)
        result.duplicates += len(parsed) - len(stored)
    metrics.count_ingest("feedback", result)
    return result


def key_scope(identity: Any) -> Any:
    """The key's plans as a feedback or metric value row keeps them (``plan_scope``): a sorted
    list of plan ids, or None for every plan (a JSON string on the portable path, which binds
    values one by one)."""
    plan_ids = getattr(identity, "plan_ids", None)
    scope = None if plan_ids is None else sorted(plan_ids)
    if fast_path() or scope is None:
        return scope
    return orjson.dumps(scope).decode()


def _elsewhere(
    identity: Any, decision_ids: set[str], parsed: Mapping[str, tuple[int, tuple[Any, ...]]]
) -> list[str]:
    """Event ids of feedback whose decision is stored only in plans the key may not write
    (one query, on the decision index; none when the key may write every plan)."""
    if not decision_ids or getattr(identity, "plan_ids", None) is None:
        return []
    plans_of = stored_plans(decision_ids)
    return [
        event_id
        for event_id, (_, row) in parsed.items()
        if plans_of.get(row[1]) and not any(identity.may_see(p) for p in plans_of[row[1]])
    ]


def stored_plans(decision_ids: set[str]) -> dict[str, set[int]]:
    """The plans whose stored outcomes carry each decision id (one indexed query)."""
    found: dict[str, set[int]] = defaultdict(set)
    if decision_ids:
        for decision_id, plan_id in Outcome.objects.filter(
            decision_id__in=decision_ids
        ).values_list("decision_id", "plan_id"):
            found[decision_id].add(plan_id)
    return found


def held_feedback(decision_ids: set[str]) -> list[str]:
    """Ids of feedback held for these decisions (not yet counted)."""
    if not decision_ids:
        return []
    return list(
        Feedback.objects.filter(
            decision_id__in=decision_ids, outcome__isnull=True, refused=""
        ).values_list("pk", flat=True)
    )


def _apply_feedback(feedback_ids: Sequence[str]) -> int:
    """Count held feedback whose outcome exists; returns how many were applied. Call inside
    a transaction: the rows are locked, so each feedback is counted exactly once even when
    an ingest and the sweeper reach it at the same time."""
    claimed, linked = claim_feedback(feedback_ids)
    aggregate([], claimed)
    return linked


def held_outcomes(decision_ids: set[str]) -> dict[str, list[Outcome]]:
    """The stored outcomes of these decisions, per decision in the order late feedback and
    metric values take them: a decision reported twice (two outcome events) gets them on the
    first, except that a fallback comes first (the user rated control's answer, which counts
    in neither arm, as the fallback itself does not)."""
    outcomes: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in (
        Outcome.objects.filter(decision_id__in=decision_ids)
        .order_by("-fallback", "ts", "pk")
        .only(
            "pk",
            "decision_id",
            "plan_id",
            "stage_id",
            "arm",
            "unit",
            "window",
            "fallback",
            "uncounted",
            "segments",
        )
    ):
        outcomes[outcome.decision_id].append(outcome)
    return outcomes


def counted_in(outcome: Outcome) -> tuple[int, OutcomeFacts] | None:
    """Where late feedback or a late metric value of ``outcome`` adds: its stage, and its arm,
    unit, window and segment values; None when the outcome is not counted (out of a stage, a
    fallback, excluded, overridden, ...), nor then is what comes late.

    The segment values are the outcome's, as ingest checked and stored them: what comes late
    is joined to its outcome here, so it needs none of its own (one source of truth, and a
    rating sent by another service counts in the segment of the answer it rates)."""
    if outcome.stage_id is None or outcome.fallback or outcome.uncounted:
        return None
    segments = tuple(outcome.segments.items()) if outcome.segments else ()
    return outcome.stage_id, OutcomeFacts(
        outcome.arm, outcome.unit, outcome.window, 0.0, None, "", None, segments=segments
    )


def link_outcomes(model: Any, links: Mapping[Any, list[str]]) -> None:
    """Set the outcome of held rows of ``model`` (Feedback, MetricValue): ``links`` maps an
    outcome's pk to theirs. One statement for the batch (a CASE per row), not one per
    outcome: a batch names as many outcomes as it has events (tests/outcomes/test_queries.py)."""
    model.objects.bulk_update(
        [model(pk=pk, outcome_id=outcome_pk) for outcome_pk, pks in links.items() for pk in pks],
        ["outcome"],
        batch_size=LINK_BATCH,
    )


def claim_feedback(
    feedback_ids: Sequence[str],
) -> tuple[list[tuple[int, OutcomeFacts, float]], int]:
    """Lock the held feedback among ``feedback_ids`` whose outcome exists and link it to that
    outcome, if the outcome's plan is one the sending key could write (``plan_scope``); mark
    it refused otherwise. Returns what the caller must aggregate in the same transaction
    (feedback whose outcome is in a stage) and how many were linked."""
    if not feedback_ids:
        return [], 0
    held = list(
        Feedback.objects.select_for_update()
        .filter(pk__in=feedback_ids, outcome__isnull=True, refused="")
        .order_by("pk")
        .values_list("pk", "decision_id", "score", "plan_scope")
    )
    if not held:
        return [], 0
    outcomes = held_outcomes({row[1] for row in held})
    applied: list[tuple[int, OutcomeFacts, float]] = []
    links: dict[str, list[str]] = defaultdict(list)
    refused: list[str] = []
    for pk, decision_id, score, scope in held:
        found = outcomes.get(decision_id)
        if not found:
            continue
        # The first outcome in a plan the key could write (a decision id is the client's
        # to make: another plan's outcome may carry the same one).
        outcome = next((o for o in found if scope is None or o.plan_id in scope), None)
        if outcome is None:
            refused.append(pk)
            continue
        links[outcome.pk].append(pk)
        counted = counted_in(outcome)
        if counted is not None:
            applied.append((*counted, score))
    link_outcomes(Feedback, links)
    if refused:
        Feedback.objects.filter(pk__in=refused).update(
            refused="its decision is in a plan the sending key may not report on"
        )
    return applied, sum(len(p) for p in links.values())


def apply_held_feedback(*, limit: int = 5000) -> int:
    """The sweeper: feedback held while its outcome is already stored (their transactions
    crossed). Returns how many were applied."""
    ids = crossed(Feedback, limit)
    if not ids:
        return 0
    with transaction.atomic():
        return _apply_feedback(ids)


def crossed(model: Any, limit: int) -> list[str]:
    """Ids of held rows of ``model`` (Feedback, MetricValue) whose outcome is already stored
    (their transactions crossed), at most ``limit``: what the sweepers claim."""
    return list(
        model.objects.filter(
            outcome__isnull=True,
            refused="",
            decision_id__in=Outcome.objects.values("decision_id"),
        ).values_list("pk", flat=True)[:limit]
    )
