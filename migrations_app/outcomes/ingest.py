"""Outcome ingest: check a batch of the SDKs' outcomes, store the good ones once, and roll them up
into the aggregates (``rollup``) in the same transaction.

Exactly once: an event's client-made id is the primary key of its raw row, and the insert
is ``ON CONFLICT DO NOTHING RETURNING`` the ids it stored; only those are aggregated, in
the same transaction. A retried batch therefore stores and counts nothing twice, and a
batch that fails midway counts nothing at all.

No lock serialises plans: a batch locks the rows it adds to (its units' totals, its
windows, its stages' running totals), always in key order so that concurrent batches
cannot deadlock. Two batches of different plans share no row. The web processes that run
this scale out like any stateless worker; the upserts are the idempotent unit.

An outcome picks up the feedback held for its decision (``feedback``) in its transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.utils import timezone
from turnout.contract import (
    ERROR_KINDS,
    FALLBACK_REASONS,
    MAX_ID_LENGTH,
    MAX_MS,
    MAX_PLAN_KEY_LENGTH,
    MAX_UNIT_LENGTH,
    REASON_ERROR,
    REASON_EXCLUDED,
    REASON_OVERRIDE,
    REASONS,
)
from turnout.targeting import valid_cohort

from migrations_app.models import (
    Feedback,
    MetricValue,
    MigrationPlan,
    Outcome,
    Uncounted,
)
from migrations_app.outcomes import aggregation, metrics
from migrations_app.outcomes.aggregation import OutcomeFacts
from migrations_app.outcomes.collector import collector_paused
from migrations_app.outcomes.event_checks import (
    IngestResult,
    Invalid,
    Rejection,
    check_batch_size,
    events_of,
    integer,
    number,
    plan_keys,
    text,
    timestamp,
    tokens,
)
from migrations_app.outcomes.feedback import claim_feedback, held_feedback
from migrations_app.outcomes.metric_values import (
    claim_metric_values,
    held_metric_values,
    metrics_json,
    parse_metrics,
)
from migrations_app.outcomes.plan_info import PlanInfo, plan_infos
from migrations_app.outcomes.rollup import aggregate
from migrations_app.outcomes.segment_rollup import parse_segments
from migrations_app.outcomes.store import (
    db_datetime,
    fast_path,
    insert_returning,
    json_param,
    json_rows,
    pg_cursor,
)
from migrations_app.plans.metric_specs import MetricSpec
from migrations_app.plans.metrics import specs_by_plan

ARMS = ("control", "candidate")


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
    cohort: str  # the cohort a targeting rule put the unit in, "" for none
    uncounted: str  # why it counts in neither arm (models.Uncounted), "" when it counts


def _parse_outcome(
    event: Any,
    plans: Mapping[str, PlanInfo],
    identity: Any,
    now: datetime,
    routes: dict[tuple[str, int], tuple[int | None, int | None, int | None]],
    metric_specs: Callable[[int], Mapping[str, MetricSpec]],
) -> _Outcome:
    """One event, checked field by field (the first bad field is the one named). ``routes``
    remembers, within the batch, the run and stage each (plan, version) was routed in."""
    if type(event) is not dict and not isinstance(event, Mapping):  # JSON's are dicts
        raise Invalid("event", "invalid", "Each event must be an object.")
    event_id = text(event, "id", MAX_ID_LENGTH)
    decision_id = text(event, "decision_id", MAX_ID_LENGTH)
    key = event.get("plan")
    # A key found among the batch's plans passed is_text already: the batch's plans are read
    # only for keys that did (event_checks.plan_keys), matched exactly by the database.
    info = plans.get(key) if type(key) is str else None
    if info is None:
        key = text(event, "plan", MAX_PLAN_KEY_LENGTH)
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
    limits = info.limits[arm]
    input_tokens = tokens(
        event, "input_tokens", limit=limits.context_window, what=limits.context_window_what
    )
    output_tokens = tokens(
        event, "output_tokens", limit=limits.max_output, what=limits.max_output_what
    )
    fallback = event.get("fallback")
    if fallback is None:
        fallback = ""
    if fallback != "" and (not isinstance(fallback, str) or fallback not in FALLBACK_REASONS):
        raise Invalid(
            "fallback", "invalid", f"fallback must be null or one of {sorted(FALLBACK_REASONS)}."
        )
    if fallback and arm != "control":
        raise Invalid("fallback", "invalid", "A fallback is always answered by control.")
    raw_metrics = event.get("metrics")
    metrics = parse_metrics(raw_metrics, metric_specs(plan_id)) if raw_metrics is not None else ()
    cohort, uncounted = _targeting(event, stage_id, info)
    segments = parse_segments(event.get("segments"), info.plan.segment_dimensions or ())
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
            metrics=metrics,
            segments=segments,
        ),
        fallback=fallback,
        cohort=cohort,
        uncounted=uncounted,
    )


# The decision's reason, as the SDK reports it for decisions served but not compared.
_UNCOUNTED = {
    REASON_EXCLUDED: Uncounted.EXCLUDED,
    REASON_OVERRIDE: Uncounted.OVERRIDE,
    REASON_ERROR: Uncounted.ERROR,
}


def _targeting(event: Mapping[str, Any], stage_id: int | None, info: PlanInfo) -> tuple[str, str]:
    """The outcome's cohort, and why it is counted in neither arm: its decision excluded the
    unit, a QA override chose the arm, the SDK could not read the plan's targeting, or its
    cohort is not the population its stage compares (a cohort-first step compares only its
    cohort; a general step only the units no cohort rule took, whose split it sets)."""
    reason = event.get("reason")
    if reason is not None and (not isinstance(reason, str) or reason not in REASONS):
        raise Invalid("reason", "invalid", f"reason must be null or one of {sorted(REASONS)}.")
    cohort = event.get("cohort")
    if cohort is None:
        cohort = ""
    if cohort != "" and not valid_cohort(cohort):
        raise Invalid("cohort", "invalid", "cohort must be null or a cohort's name.")
    uncounted = _UNCOUNTED.get(reason or "", "")
    if not uncounted and stage_id is not None and info.stage_cohorts.get(stage_id, "") != cohort:
        uncounted = Uncounted.OTHER_COHORT
    return cohort, str(uncounted)


def outcomes_ingest(*, identity: Any, payload: Any) -> IngestResult:
    """Validate a batch of outcomes, store the good ones once, and aggregate them.

    ``identity`` is the API key (``may_see(plan_pk)``); an event for a plan the key may not
    see is rejected as unknown. Returns how many were stored, how many were duplicates of
    events already stored, and each rejected event's index, field and reason."""
    with collector_paused():
        return _outcomes_ingest(identity, payload)


def _outcomes_ingest(identity: Any, payload: Any) -> IngestResult:
    events = events_of(payload)
    check_batch_size(events)
    now = timezone.now()
    plans = _plan_infos(plan_keys(events))
    result = IngestResult()
    parsed: dict[str, _Outcome] = {}
    routes: dict[tuple[str, int], tuple[int | None, int | None, int | None]] = {}
    specs: dict[int, Mapping[str, MetricSpec]] = {}

    def metric_specs(plan_id: int) -> Mapping[str, MetricSpec]:
        # Read once per batch, and only when some event carries metrics.
        if not specs:
            specs.update(specs_by_plan(info.plan.pk for info in plans.values()))
        return specs[plan_id]

    for index, event in enumerate(events):
        try:
            outcome = _parse_outcome(event, plans, identity, now, routes, metric_specs)
        except Invalid as bad:
            result.rejected.append(Rejection(index, bad.field, bad.code, bad.message))
            continue
        if outcome.event_id in parsed:
            result.duplicates += 1
        else:
            parsed[outcome.event_id] = outcome
    if parsed:
        with transaction.atomic():
            stored, held, held_values = _insert_outcomes(list(parsed.values()), now)
            new = [parsed[event_id] for event_id in stored]
            # Held feedback and metric values are claimed (locked) before the aggregate rows,
            # as in every other transaction that counts them: one lock order, no deadlock.
            claimed, _ = claim_feedback(held)
            values, _ = claim_metric_values(held_values)
            # A fallback (control answering a unit of the candidate's bucket) is stored, not
            # counted: in control's sample it would mix in the candidate's units and its
            # failed requests; the candidate's failure is its own outcome, counted. So are
            # the targeting's uncounted ones: excluded and overridden units are not in the
            # split, and another cohort's units were split at another weight.
            aggregate(
                [
                    (o.stage_id, o.facts)
                    for o in new
                    if o.stage_id is not None and not o.fallback and not o.uncounted
                ],
                claimed,
                values,
            )
        result.stored = len(stored)
        result.duplicates += len(parsed) - len(stored)
    metrics.count_ingest("outcomes", result, dropped=_dropped(payload))
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
    current = {key: (pk, version) for key, pk, version in _plan_versions(sorted(keys))}
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


def _plan_versions(keys: Sequence[str]) -> list[tuple[str, int, int]]:
    """(key, pk, version) of the plans with these keys: in SQL of its own, as every batch asks
    (0.23 ms against the ORM's 0.50 ms to make and run it)."""
    qn = connection.ops.quote_name
    meta = MigrationPlan._meta
    key, version = (qn(meta.get_field(name).column) for name in ("key", "version"))
    pk = qn(meta.pk.column)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {key}, {pk}, {version} FROM {qn(meta.db_table)} "
            f"WHERE {key} IN ({', '.join(['%s'] * len(keys))})",
            list(keys),
        )
        return list(cursor.fetchall())


def _dropped(payload: Any) -> int:
    client = payload.get("client") if isinstance(payload, Mapping) else None
    dropped = client.get("dropped") if isinstance(client, Mapping) else None
    if isinstance(dropped, int) and not isinstance(dropped, bool) and 0 < dropped < 2**31:
        return dropped
    return 0


def _insert_outcomes(
    outcomes: Sequence[_Outcome], now: datetime
) -> tuple[list[str], list[str], list[str]]:
    """Store the outcomes not stored yet. Returns their ids, and the ids of feedback and of
    metric values held for their decisions (on PostgreSQL found by the same statement, one
    round trip fewer)."""
    columns = [
        "event_id", "plan_id", "run_id", "stage_id", "plan_version", "decision_id", "arm",
        "unit", "ts", "window", "latency_ms", "ttft_ms", "error", "input_tokens",
        "output_tokens", "cost_usd", "received_at", "fallback", "metrics", "cohort", "uncounted",
        "segments",
    ]  # fmt: skip
    if fast_path():  # orjson writes the datetimes itself; no per-value adaptation
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
                dict(o.facts.metrics) if o.facts.metrics else None,
                o.cohort,
                o.uncounted,
                dict(o.facts.segments) if o.facts.segments else None,
            )  # fmt: skip
            for o in outcomes
        ]
        qn = connection.ops.quote_name
        with pg_cursor() as cursor:
            cursor.execute(
                f"WITH stored AS (INSERT INTO {qn(Outcome._meta.db_table)} "
                f"({', '.join(qn(c) for c in columns)}) {json_rows(_OUTCOME_TYPES)} "
                "ON CONFLICT (event_id) DO NOTHING RETURNING event_id, decision_id) "
                f"SELECT s.event_id, f.event_id, NULL FROM stored AS s "
                f"LEFT JOIN {qn(Feedback._meta.db_table)} AS f "
                "ON f.decision_id = s.decision_id AND f.outcome_id IS NULL AND f.refused = '' "
                f"UNION ALL SELECT s.event_id, NULL, m.event_id FROM stored AS s "
                f"JOIN {qn(MetricValue._meta.db_table)} AS m "
                "ON m.decision_id = s.decision_id AND m.outcome_id IS NULL AND m.refused = ''",
                # key order: batches sharing events wait for each other, never deadlock
                [json_param(sorted(fast_rows, key=lambda row: row[0]))],
            )
            found = cursor.fetchall()
        return (
            list(dict.fromkeys(r[0] for r in found)),
            [r[1] for r in found if r[1]],
            [r[2] for r in found if r[2]],
        )
    received = db_datetime(now)
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
            db_datetime(o.ts),
            db_datetime(o.facts.window),
            o.facts.latency_ms,
            o.facts.ttft_ms,
            o.facts.error,
            o.input_tokens,
            o.output_tokens,
            o.facts.cost_usd,
            received,
            o.fallback,
            metrics_json(o.facts.metrics),
            o.cohort,
            o.uncounted,
            metrics_json(o.facts.segments),  # type: ignore[arg-type]
        )  # fmt: skip
        for o in outcomes
    ]
    stored = insert_returning(Outcome._meta.db_table, columns, rows, "event_id", _OUTCOME_TYPES)
    decisions = {o.event_id: o.decision_id for o in outcomes}
    new = {decisions[event_id] for event_id in stored}
    return stored, held_feedback(new), held_metric_values(new)


_OUTCOME_TYPES = (
    "text", "bigint", "bigint", "bigint", "integer", "text", "text", "text", "timestamptz",
    "timestamptz", "float8", "float8", "text", "integer", "integer", "float8", "timestamptz",
    "text", "jsonb", "text", "text", "jsonb",
)  # fmt: skip
