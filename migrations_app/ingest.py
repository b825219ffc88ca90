"""Ingest services: store the SDKs' outcomes and feedback, and fold them into the aggregates.

Exactly once: an event's client-made id is the primary key of its raw row, and the insert
is ``ON CONFLICT DO NOTHING RETURNING`` the ids it stored; only those are aggregated, in
the same transaction. A retried batch therefore stores and counts nothing twice, and a
batch that fails midway counts nothing at all.

No lock serialises plans: a batch locks the rows it adds to (its units' totals, its
windows, its stages' running totals), always in key order so that concurrent batches
cannot deadlock. Two batches of different plans share no row. The web processes that run
this scale out like any stateless worker; the upserts are the idempotent unit.

Feedback may arrive before its outcome (another service sends it, or the outcome batch is
still in an SDK buffer). It is stored and held, then counted when its outcome arrives; the
``turnout.apply_held_feedback`` task sweeps up the rare pair whose transactions crossed.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson
import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from turnout.client import ERROR_KINDS, FALLBACK_REASONS, FEEDBACK_SCALES

from migrations_app import aggregation, metrics
from migrations_app.aggregation import OutcomeFacts, UnitTotals
from migrations_app.batches import (
    MAX_ID_LENGTH,
    MAX_MS,
    MAX_UNIT_LENGTH,
    IngestResult,
    Invalid,
    Rejection,
    check_batch_size,
    events_of,
    finite_number,
    integer,
    is_text,
    number,
    text,
    timestamp,
)
from migrations_app.models import (
    Feedback,
    MigrationPlan,
    Outcome,
    StageAggregate,
    WindowAggregate,
)
from migrations_app.models import UnitTotals as UnitTotalsRow
from migrations_app.selectors import PlanInfo, plan_infos
from migrations_app.stats import ArmAggregates

ARMS = ("control", "candidate")
PLAN_KEY_LENGTH = 63


# --- outcomes ----------------------------------------------------------------------------


class _Outcome(NamedTuple):
    event_id: str
    plan_id: int
    run_id: int | None
    stage_id: int | None
    plan_version: int
    decision_id: str
    ts: datetime
    input_tokens: int | None
    output_tokens: int | None
    facts: OutcomeFacts
    fallback: str  # "" unless complete() answered from control for a candidate unit


def _parse_outcome(
    event: Any,
    plans: Mapping[str, PlanInfo],
    identity: Any,
    now: datetime,
    routes: dict[tuple[str, int], tuple[int | None, int | None, int | None]],
) -> _Outcome:
    """One event, checked field by field (the first bad field is the one named). ``routes``
    remembers, within the batch, the run and stage each (plan, version) was routed in."""
    if not isinstance(event, Mapping):
        raise Invalid("event", "invalid", "Each event must be an object.")
    event_id = text(event, "id", MAX_ID_LENGTH)
    decision_id = text(event, "decision_id", MAX_ID_LENGTH)
    key = text(event, "plan", PLAN_KEY_LENGTH)
    info = plans.get(key)
    plan_id = info.plan.pk if info is not None else None
    if plan_id is None or not identity.may_see(plan_id):
        raise Invalid("plan", "plan_not_found", f"No plan with key {key!r}.")
    assert info is not None
    version = integer(event, "plan_version", required=True, minimum=1)
    assert version is not None
    if version > info.plan.version:
        raise Invalid(
            "plan_version", "unknown_version", f"Plan {key!r} has no version {version} yet."
        )
    run_number = integer(event, "run", required=True)
    route = routes.get((key, version))
    if route is None:
        route = routes[(key, version)] = info.at(version)
    run_id, known_run, stage_id = route
    if (known_run or 0) != run_number:
        raise Invalid(
            "run", "run_mismatch", f"Plan {key!r} was at run {known_run or 0} at version {version}."
        )
    arm = event.get("arm")
    if arm not in ARMS:
        raise Invalid("arm", "invalid", "arm must be 'control' or 'candidate'.")
    unit = text(event, "unit", MAX_UNIT_LENGTH)
    ts = timestamp(event, now)
    latency = number(event, "latency_ms", required=True, maximum=MAX_MS)
    ttft = number(event, "ttft_ms", required=False, maximum=MAX_MS)
    error = event.get("error")
    if error is not None and (not isinstance(error, str) or error not in ERROR_KINDS):
        raise Invalid("error", "invalid", f"error must be null or one of {sorted(ERROR_KINDS)}.")
    input_tokens = integer(event, "input_tokens", required=False)
    output_tokens = integer(event, "output_tokens", required=False)
    fallback = event.get("fallback")
    if fallback is None:
        fallback = ""
    if fallback != "" and (not isinstance(fallback, str) or fallback not in FALLBACK_REASONS):
        raise Invalid(
            "fallback", "invalid", f"fallback must be null or one of {sorted(FALLBACK_REASONS)}."
        )
    if fallback and arm != "control":
        raise Invalid("fallback", "invalid", "A fallback is always answered by control.")
    assert latency is not None
    return _Outcome(
        event_id=event_id,
        plan_id=plan_id,
        run_id=run_id,
        stage_id=stage_id,
        plan_version=version,
        decision_id=decision_id,
        ts=ts,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        facts=OutcomeFacts(
            arm=arm,
            unit=unit,
            window=aggregation.window_start(ts),
            latency_ms=latency,
            ttft_ms=ttft,
            error=error or "",
            cost_usd=info.cost(arm, input_tokens, output_tokens),
        ),
        fallback=fallback,
    )


def outcomes_ingest(*, identity: Any, payload: Any) -> IngestResult:
    """Validate a batch of outcomes, store the good ones once, and aggregate them.

    ``identity`` is the API key (``may_see(plan_pk)``); an event for a plan the key may not
    see is rejected as unknown. Returns how many were stored, how many were duplicates of
    events already stored, and each rejected event's index, field and reason."""
    events = events_of(payload)
    check_batch_size(events)
    now = timezone.now()
    plans = _plan_infos(
        {
            e["plan"]
            for e in events
            if isinstance(e, Mapping) and is_text(e.get("plan"), PLAN_KEY_LENGTH)
        }
    )
    result = IngestResult()
    parsed: dict[str, _Outcome] = {}
    routes: dict[tuple[str, int], tuple[int | None, int | None, int | None]] = {}
    for index, event in enumerate(events):
        try:
            outcome = _parse_outcome(event, plans, identity, now, routes)
        except Invalid as bad:
            result.rejected.append(Rejection(index, bad.field, bad.code, bad.message))
            continue
        if outcome.event_id in parsed:
            result.duplicates += 1
        else:
            parsed[outcome.event_id] = outcome
    if parsed:
        with transaction.atomic():
            stored, held = _insert_outcomes(list(parsed.values()), now)
            new = [parsed[event_id] for event_id in stored]
            # Held feedback is claimed (locked) before the aggregate rows, as in every other
            # transaction that counts feedback: one lock order, no deadlock.
            claimed, _ = _claim_feedback(held)
            # A fallback (control answering a unit of the candidate's bucket) is stored, not
            # counted: in control's sample it would mix in the candidate's units and its
            # failed requests; the candidate's failure is its own outcome, counted.
            aggregate(
                [(o.stage_id, o.facts) for o in new if o.stage_id is not None and not o.fallback],
                claimed,
            )
        result.stored = len(stored)
        result.duplicates += len(parsed) - len(stored)
    metrics.count_ingest(
        "outcomes",
        stored=result.stored,
        duplicates=result.duplicates,
        rejected=[r.code for r in result.rejected],
        dropped=_dropped(payload),
    )
    return result


# PlanInfo per plan key, remembered by each process: a plan's version history only grows, so
# the cached one answers for every version it knows as long as the plan (pk) and its current
# version are unchanged, which one indexed query checks per batch. Prices are re-read at
# least every PLAN_CACHE_SECONDS (a catalog price edit applies within that time).
PLAN_CACHE_SECONDS = 60.0
_plan_cache: dict[str, tuple[float, PlanInfo]] = {}


def _plan_infos(keys: set[str]) -> dict[str, PlanInfo]:
    if not keys:
        return {}
    now = time.monotonic()
    current = dict(
        (key, (pk, version))
        for key, pk, version in MigrationPlan.objects.filter(key__in=keys).values_list(
            "key", "pk", "version"
        )
    )
    found: dict[str, PlanInfo] = {}
    stale: set[str] = set()
    for key, (pk, version) in current.items():
        cached = _plan_cache.get(key)
        if (
            cached is not None
            and cached[0] > now
            and (cached[1].plan.pk, cached[1].plan.version) == (pk, version)
        ):
            found[key] = cached[1]
        else:
            stale.add(key)
    if stale:
        if len(_plan_cache) > 10_000:
            _plan_cache.clear()  # bounded, whatever the number of plans
        for key, info in plan_infos(stale).items():
            _plan_cache[key] = (now + PLAN_CACHE_SECONDS, info)
            found[key] = info
    return found


def _dropped(payload: Any) -> int:
    client = payload.get("client") if isinstance(payload, Mapping) else None
    dropped = client.get("dropped") if isinstance(client, Mapping) else None
    if isinstance(dropped, int) and not isinstance(dropped, bool) and 0 < dropped < 2**31:
        return dropped
    return 0


# PostgreSQL gets a batch's rows as one JSON parameter (an array of row arrays) that the
# statement unpacks with typed casts: one short statement whatever the batch size, serialised
# by orjson. The portable form (one placeholder per value) spends more time building and
# adapting the query than the database spends storing the rows (bench/bench_ingest.py).
# Numbers survive exactly (shortest repr in, float8in out); datetimes go as RFC 3339 with
# microseconds and offset.
# Tests switch this off to run the portable path on PostgreSQL too; SQLite (the embedded
# mode) always takes it.
FAST_PATH = True


def _fast() -> bool:
    return FAST_PATH and connection.vendor == "postgresql"


def _pg_cursor() -> Any:
    """A psycopg cursor on Django's connection, inside its transaction, binding parameters on
    the server: the batch's JSON travels as a parameter instead of being escaped into the SQL
    text (Django's cursors bind on the client), and psycopg prepares a statement used often."""
    connection.ensure_connection()
    # Django opens its connections with ClientCursor as the factory: ask for a plain one.
    return psycopg.Cursor(connection.connection)


def _json_rows(pg_types: Sequence[str]) -> str:
    """A SELECT of typed columns from the JSON parameter made by :func:`_json_param`."""
    columns = ", ".join(
        f"(r->{i})::{t}" if t == "jsonb" else f"(r->>{i})::{t}" for i, t in enumerate(pg_types)
    )
    return f"SELECT {columns} FROM jsonb_array_elements(%s::jsonb) AS r"


def _json_param(rows: Any) -> str:
    return orjson.dumps(rows).decode()


def _insert_returning(
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    key: str,
    pg_types: Sequence[str],
) -> list[Any]:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING key``: the keys it stored. (PostgreSQL
    and SQLite >= 3.35 both speak it; the ORM's bulk_create cannot say which rows were new.)

    Rows go in key order (the key is the first column): two batches sharing events then wait
    for each other in the same order instead of deadlocking."""
    qn = connection.ops.quote_name
    rows = sorted(rows, key=lambda row: row[0])
    if _fast():
        with _pg_cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {qn(table)} ({', '.join(qn(c) for c in columns)}) "
                f"{_json_rows(pg_types)} "
                f"ON CONFLICT ({qn(key)}) DO NOTHING RETURNING {qn(key)}",
                [_json_param(rows)],
            )
            return [r[0] for r in cursor.fetchall()]
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    stored: list[Any] = []
    # Stay well under SQLite's and PostgreSQL's bound-parameter limits.
    chunk = max(1, 30_000 // len(columns))
    with connection.cursor() as cursor:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            cursor.execute(
                f"INSERT INTO {qn(table)} ({', '.join(qn(c) for c in columns)}) "
                f"VALUES {', '.join([one] * len(part))} "
                f"ON CONFLICT ({qn(key)}) DO NOTHING RETURNING {qn(key)}",
                [value for row in part for value in row],
            )
            stored.extend(r[0] for r in cursor.fetchall())
    return stored


def _dt(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _insert_outcomes(outcomes: Sequence[_Outcome], now: datetime) -> tuple[list[str], list[str]]:
    """Store the outcomes not stored yet. Returns their ids and the ids of feedback held for
    their decisions (on PostgreSQL found by the same statement, one round trip fewer)."""
    columns = [
        "event_id", "plan_id", "run_id", "stage_id", "plan_version", "decision_id", "arm",
        "unit", "ts", "window", "latency_ms", "ttft_ms", "error", "input_tokens",
        "output_tokens", "cost_usd", "received_at", "fallback",
    ]  # fmt: skip
    if _fast():  # orjson writes the datetimes itself; no per-value adaptation
        fast_rows = [
            (
                o.event_id,
                o.plan_id,
                o.run_id,
                o.stage_id,
                o.plan_version,
                o.decision_id,
                o.facts.arm,
                o.facts.unit,
                o.ts,
                o.facts.window,
                o.facts.latency_ms,
                o.facts.ttft_ms,
                o.facts.error,
                o.input_tokens,
                o.output_tokens,
                o.facts.cost_usd,
                now,
                o.fallback,
            )  # fmt: skip
            for o in outcomes
        ]
        qn = connection.ops.quote_name
        with _pg_cursor() as cursor:
            cursor.execute(
                f"WITH stored AS (INSERT INTO {qn(Outcome._meta.db_table)} "
                f"({', '.join(qn(c) for c in columns)}) {_json_rows(_OUTCOME_TYPES)} "
                "ON CONFLICT (event_id) DO NOTHING RETURNING event_id, decision_id) "
                f"SELECT s.event_id, f.event_id FROM stored AS s "
                f"LEFT JOIN {qn(Feedback._meta.db_table)} AS f "
                "ON f.decision_id = s.decision_id AND f.outcome_id IS NULL",
                # key order: batches sharing events wait for each other, never deadlock
                [_json_param(sorted(fast_rows, key=lambda row: row[0]))],
            )
            found = cursor.fetchall()
        return list(dict.fromkeys(r[0] for r in found)), [r[1] for r in found if r[1]]
    received = _dt(now)
    rows = [
        (
            o.event_id,
            o.plan_id,
            o.run_id,
            o.stage_id,
            o.plan_version,
            o.decision_id,
            o.facts.arm,
            o.facts.unit,
            _dt(o.ts),
            _dt(o.facts.window),
            o.facts.latency_ms,
            o.facts.ttft_ms,
            o.facts.error,
            o.input_tokens,
            o.output_tokens,
            o.facts.cost_usd,
            received,
            o.fallback,
        )  # fmt: skip
        for o in outcomes
    ]
    stored = _insert_returning(Outcome._meta.db_table, columns, rows, "event_id", _OUTCOME_TYPES)
    decisions = {o.event_id: o.decision_id for o in outcomes}
    return stored, _held_feedback({decisions[event_id] for event_id in stored})


_OUTCOME_TYPES = (
    "text", "bigint", "bigint", "bigint", "integer", "text", "text", "text", "timestamptz",
    "timestamptz", "float8", "float8", "text", "integer", "integer", "float8", "timestamptz",
    "text",
)  # fmt: skip


# --- feedback ----------------------------------------------------------------------------


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


def feedback_ingest(*, payload: Any) -> IngestResult:
    """Store feedback once per event id; count it now if its outcome is known, else hold it.
    A single event (an object with ``decision_id``) is accepted as a batch of one."""
    if isinstance(payload, Mapping) and "events" not in payload and "decision_id" in payload:
        payload = {"events": [payload]}
    events = events_of(payload)
    check_batch_size(events)
    now = timezone.now()
    result = IngestResult()
    parsed: dict[str, tuple[str, str, float, float, str, datetime]] = {}
    for index, event in enumerate(events):
        try:
            row = _parse_feedback(event, now)
        except Invalid as bad:
            result.rejected.append(Rejection(index, bad.field, bad.code, bad.message))
            continue
        if row[0] in parsed:
            result.duplicates += 1
        else:
            parsed[row[0]] = row
    if parsed:
        received = _dt(now)
        with transaction.atomic():
            stored = _insert_returning(
                Feedback._meta.db_table,
                ["event_id", "decision_id", "score", "raw_score", "scale", "ts", "received_at"],
                [(*r[:5], _dt(r[5]), received) for r in parsed.values()],
                "event_id",
                ("text", "text", "float8", "float8", "text", "timestamptz", "timestamptz"),
            )
            if stored:
                _apply_feedback(stored)
        result.stored = len(stored)
        result.duplicates += len(parsed) - len(stored)
    metrics.count_ingest(
        "feedback",
        stored=result.stored,
        duplicates=result.duplicates,
        rejected=[r.code for r in result.rejected],
        dropped=0,
    )
    return result


def _held_feedback(decision_ids: set[str]) -> list[str]:
    """Ids of feedback held for these decisions (not yet counted)."""
    if not decision_ids:
        return []
    return list(
        Feedback.objects.filter(decision_id__in=decision_ids, outcome__isnull=True).values_list(
            "pk", flat=True
        )
    )


def _apply_feedback(feedback_ids: Sequence[str]) -> int:
    """Count held feedback whose outcome exists; returns how many were applied. Call inside
    a transaction: the rows are locked, so each feedback is counted exactly once even when
    an ingest and the sweeper reach it at the same time."""
    claimed, linked = _claim_feedback(feedback_ids)
    aggregate([], claimed)
    return linked


def _claim_feedback(
    feedback_ids: Sequence[str],
) -> tuple[list[tuple[int, OutcomeFacts, float]], int]:
    """Lock the held feedback among ``feedback_ids`` whose outcome exists and link it to that
    outcome. Returns what the caller must aggregate in the same transaction (feedback whose
    outcome is in a stage) and how many were linked."""
    if not feedback_ids:
        return [], 0
    held = list(
        Feedback.objects.select_for_update()
        .filter(pk__in=feedback_ids, outcome__isnull=True)
        .order_by("pk")
        .values_list("pk", "decision_id", "score")
    )
    if not held:
        return [], 0
    # A decision reported twice (two outcome events) gets its feedback on the first, except
    # that a fallback comes first: the user rated control's answer, which counts in neither
    # arm (as the fallback itself does not).
    outcomes: dict[str, Outcome] = {}
    for outcome in (
        Outcome.objects.filter(decision_id__in={d for _, d, _ in held})
        .order_by("-fallback", "ts", "pk")
        .only("pk", "decision_id", "stage_id", "arm", "unit", "window", "fallback")
    ):
        outcomes.setdefault(outcome.decision_id, outcome)
    applied: list[tuple[int, OutcomeFacts, float]] = []
    links: dict[str, list[str]] = defaultdict(list)
    for pk, decision_id, score in held:
        outcome = outcomes.get(decision_id)
        if outcome is None:
            continue
        links[outcome.pk].append(pk)
        if outcome.stage_id is not None and not outcome.fallback:
            facts = OutcomeFacts(outcome.arm, outcome.unit, outcome.window, 0.0, None, "", None)
            applied.append((outcome.stage_id, facts, score))
    for outcome_pk, pks in links.items():
        Feedback.objects.filter(pk__in=pks).update(outcome_id=outcome_pk)
    return applied, sum(len(p) for p in links.values())


def apply_held_feedback(*, limit: int = 5000) -> int:
    """The sweeper: feedback held while its outcome is already stored (their transactions
    crossed). Returns how many were applied."""
    ids = list(
        Feedback.objects.filter(
            outcome__isnull=True,
            decision_id__in=Outcome.objects.values("decision_id"),
        ).values_list("pk", flat=True)[:limit]
    )
    if not ids:
        return 0
    with transaction.atomic():
        return _apply_feedback(ids)


# --- aggregation writes ------------------------------------------------------------------


def aggregate(
    outcomes: Sequence[tuple[int, OutcomeFacts]],
    feedback: Sequence[tuple[int, OutcomeFacts, float]],
) -> None:
    """Fold new outcomes and newly applied feedback into unit totals, windows and stage
    totals. Inside the caller's transaction. Shadow results come in here too, as the
    candidate's outcomes in a shadow stage."""
    if not outcomes and not feedback:
        return
    by_window: dict[tuple[int, datetime, str], list[OutcomeFacts]] = defaultdict(list)
    # Per unit, in one pass (hundreds of units per batch): requests, errors, known costs, and
    # the window of its first event in the batch. The unit's cluster-sum change is booked in
    # that window: only the stage's sum of windows is ever tested, so any of them will do.
    units: dict[tuple[int, str, str], tuple[list[int], list[float], tuple[int, datetime, str]]]
    units = {}
    for stage_id, facts in outcomes:
        wkey = (stage_id, facts.window, facts.arm)
        by_window[wkey].append(facts)
        ukey = (stage_id, facts.arm, facts.unit)
        unit = units.get(ukey)
        if unit is None:
            unit = units[ukey] = ([0, 0], [], wkey)
        unit[0][0] += 1
        if facts.error:
            unit[0][1] += 1
        if facts.cost_usd is not None:
            unit[1].append(facts.cost_usd)
    deltas: dict[tuple[int, datetime, str], list[ArmAggregates]] = defaultdict(list)
    for key, rows in by_window.items():
        deltas[key].append(aggregation.outcome_delta(rows))
    changes: dict[tuple[int, str, str], UnitTotals] = {
        key: UnitTotals(counts[0], counts[1], len(costs), math.fsum(costs))
        for key, (counts, costs, _) in units.items()
    }
    unit_window = {key: window for key, (_, _, window) in units.items()}
    scores: dict[tuple[int, datetime, str], list[float]] = defaultdict(list)
    feedback_units: dict[tuple[int, str, str], list[float]] = defaultdict(list)
    for stage_id, facts, score in feedback:
        wkey = (stage_id, facts.window, facts.arm)
        ukey = (stage_id, facts.arm, facts.unit)
        scores[wkey].append(score)
        feedback_units[ukey].append(score)
        unit_window.setdefault(ukey, wkey)
    for wkey, values in scores.items():
        deltas[wkey].append(aggregation.feedback_delta(values))
    for ukey, values in feedback_units.items():
        changes[ukey] = changes.get(ukey, UnitTotals()) + UnitTotals(
            feedback_n=len(values), feedback_sum=math.fsum(values)
        )
    keys, old, new = _upsert_unit_totals(changes)
    moves: dict[tuple[int, datetime, str], list[int]] = defaultdict(list)
    for i, ukey in enumerate(keys):
        moves[unit_window[ukey]].append(i)
    for wkey, indices in moves.items():
        deltas[wkey].append(aggregation.cluster_deltas(old[indices], new[indices]))
    window_deltas = {key: ArmAggregates.merge(items) for key, items in deltas.items()}
    _merge_windows(window_deltas)
    stage_deltas: dict[tuple[int, str], list[ArmAggregates]] = defaultdict(list)
    for (stage_id, _, arm), delta in window_deltas.items():
        stage_deltas[(stage_id, arm)].append(delta)
    _merge_stages({key: ArmAggregates.merge(items) for key, items in stage_deltas.items()})


_UNIT_FIELDS = ("requests", "errors", "cost_n", "cost_sum", "feedback_n", "feedback_sum")
_UNIT_TYPES = (  # stage_id, arm, unit, *_UNIT_FIELDS
    "bigint",
    "text",
    "text",
    "integer",
    "integer",
    "integer",
    "float8",
    "integer",
    "float8",
)


def _upsert_unit_totals(
    changes: Mapping[tuple[int, str, str], UnitTotals],
) -> tuple[list[tuple[int, str, str]], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Add each change to its unit's totals in one statement per chunk. Returns the units and
    their totals before and after (one row each, columns as ``UnitTotals.values()``). Rows
    are written in key order, so concurrent batches lock in the same order."""
    qn = connection.ops.quote_name
    table = qn(UnitTotalsRow._meta.db_table)
    columns = ["stage_id", "arm", "unit", *_UNIT_FIELDS]
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    updates = ", ".join(f"{qn(f)} = {table}.{qn(f)} + EXCLUDED.{qn(f)}" for f in _UNIT_FIELDS)
    keys = sorted(changes)
    found: list[tuple[int, str, str]] = []
    totals: list[Sequence[float]] = []
    chunk = len(keys) if _fast() else 2000
    upsert = (
        f"INSERT INTO {table} ({', '.join(qn(c) for c in columns)}) "
        f"{{source}} "
        f"ON CONFLICT ({qn('stage_id')}, {qn('arm')}, {qn('unit')}) DO UPDATE SET {updates} "
        f"RETURNING {', '.join(qn(c) for c in columns)}"
    )
    with _pg_cursor() if _fast() else connection.cursor() as cursor:
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            rows = [(*key, *changes[key].values()) for key in part]
            if _fast():
                source = _json_rows(_UNIT_TYPES)
                params: list[Any] = [_json_param(rows)]
            else:
                source = f"VALUES {', '.join([one] * len(part))}"
                params = [value for row in rows for value in row]
            cursor.execute(upsert.format(source=source), params)
            for row in cursor.fetchall():
                found.append(row[:3])
                totals.append(row[3:])
    new = np.array(totals, dtype=np.float64).reshape(-1, len(_UNIT_FIELDS))
    added = np.array([changes[key].values() for key in found], dtype=np.float64)
    return found, new - added.reshape(new.shape), new


def _merge_windows(deltas: Mapping[tuple[int, datetime, str], ArmAggregates]) -> None:
    keys = sorted(deltas)
    if _fast():
        rows = _lock_or_create(
            WindowAggregate, ("stage_id", "window", "arm"), ("bigint", "timestamptz", "text"),
            keys, _WINDOW_BLANK,
        )  # fmt: skip
    else:
        WindowAggregate.objects.bulk_create(
            [WindowAggregate(stage_id=s, window=w, arm=a) for s, w, a in keys],
            ignore_conflicts=True,
        )
        rows = {
            (row.stage_id, row.window, row.arm): row
            for row in WindowAggregate.objects.select_for_update()
            .filter(stage_id__in={k[0] for k in keys}, window__in={k[1] for k in keys})
            .order_by("stage_id", "window", "arm")
        }
    changed = []
    for key in keys:
        row = rows[key]
        row.data = data = aggregation.merge_json(row.data, deltas[key])
        for column in _WINDOW_COLUMNS:  # the columns charts group by copy the data
            setattr(row, column, data[column])
        changed.append(row)
    _update_rows(WindowAggregate, changed, [*_WINDOW_COLUMNS, "data"], _WINDOW_TYPES)


_WINDOW_COLUMNS = (
    "requests",
    "errors",
    "latency_sum",
    "cost_n",
    "cost_sum",
    "feedback_n",
    "feedback_sum",
)
_WINDOW_TYPES = ("integer", "integer", "float8", "integer", "float8", "integer", "float8", "jsonb")
# A new row's columns, as SQL (the models' defaults live in Python, not in the database).
_WINDOW_BLANK = {**{c: "0" for c in _WINDOW_COLUMNS}, "data": "'{}'::jsonb"}
_STAGE_BLANK = {"requests": "0", "data": "'{}'::jsonb", "updated_at": "now()"}


class _Row:
    """A locked aggregate row as the fast path reads it (id and data); the merge then sets
    the columns to write, like on a model instance."""

    def __init__(self, pk: int, data: Any) -> None:
        self.pk = pk
        self.data = orjson.loads(data) if isinstance(data, str) else data


def _lock_or_create(
    model: Any,
    key_fields: Sequence[str],
    key_types: Sequence[str],
    keys: Sequence[tuple[Any, ...]],
    blank: Mapping[str, str],
) -> dict[tuple[Any, ...], Any]:
    """Each key's row, created blank where missing and locked, in one statement: an upsert
    whose conflict branch rewrites only a key column (to itself), which takes the row lock
    and returns the row. Keys are sorted, so concurrent batches lock in the same order."""
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    names = ", ".join(qn(n) for n in (*key_fields, *blank))
    keys_sql = ", ".join(qn(f) for f in key_fields)
    select = _json_rows(key_types).replace(" FROM ", f", {', '.join(blank.values())} FROM ", 1)
    first = qn(key_fields[0])
    with _pg_cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({names}) {select} "
            f"ON CONFLICT ({keys_sql}) DO UPDATE SET {first} = EXCLUDED.{first} "
            f"RETURNING id, {keys_sql}, data",
            [_json_param([list(k) for k in keys])],
        )
        return {tuple(found): _Row(pk, data) for pk, *found, data in cursor.fetchall()}


def _update_rows(
    model: Any, rows: Sequence[Any], fields: Sequence[str], pg_types: Sequence[str]
) -> None:
    """Write ``fields`` of rows already locked and changed in memory: on PostgreSQL one
    ``UPDATE ... FROM`` the JSON parameter, elsewhere a save per row."""
    if not rows:
        return
    if not _fast():
        for row in rows:
            row.save(update_fields=fields)
        return
    qn = connection.ops.quote_name
    names = ", ".join(qn(f) for f in fields)
    sets = ", ".join(f"{qn(f)} = v.{qn(f)}" for f in fields)
    values = [
        [row.pk, *(getattr(row, f) for f in fields)] for row in sorted(rows, key=lambda r: r.pk)
    ]
    with _pg_cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(model._meta.db_table)} AS t SET {sets} "
            f"FROM ({_json_rows(('bigint', *pg_types))}) AS v(id, {names}) WHERE t.id = v.id",
            [_json_param(values)],
        )


def _merge_stages(deltas: Mapping[tuple[int, str], ArmAggregates]) -> None:
    keys = sorted(deltas)
    if _fast():
        rows = _lock_or_create(
            StageAggregate, ("stage_id", "arm"), ("bigint", "text"), keys, _STAGE_BLANK
        )
    else:
        StageAggregate.objects.bulk_create(
            [StageAggregate(stage_id=s, arm=a) for s, a in keys], ignore_conflicts=True
        )
        rows = {
            (row.stage_id, row.arm): row
            for row in StageAggregate.objects.select_for_update()
            .filter(stage_id__in={k[0] for k in keys})
            .order_by("stage_id", "arm")
        }
    now = timezone.now()
    for key in keys:
        row = rows[key]
        row.data = aggregation.merge_json(row.data, deltas[key])
        row.requests = row.data["requests"]
        row.updated_at = now  # neither path's write applies auto_now
    _update_rows(
        StageAggregate,
        [rows[key] for key in keys],
        ["data", "requests", "updated_at"],
        ("jsonb", "integer", "timestamptz"),
    )


# --- retention ---------------------------------------------------------------------------


def outcomes_purge(*, now: datetime | None = None, batch: int = 10_000) -> int:
    """Delete raw outcomes and feedback older than the retention period, in batches (short
    transactions, no long lock). Aggregates are kept. Returns how many rows were deleted."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.TURNOUT_RAW_RETENTION_DAYS)
    deleted = 0
    for model in (Feedback, Outcome):
        while True:
            pks = list(model.objects.filter(ts__lt=cutoff).values_list("pk", flat=True)[:batch])
            if not pks:
                break
            deleted += model.objects.filter(pk__in=pks).delete()[0]
    return deleted
