"""Per-request metric values: checked against what the plan declares, carried by an outcome
(``metrics: {name: value}``) or sent on their own (``POST /api/v1/metrics``,
``client.metric()``), counted on their outcome.

A value sent on its own is stored once per event id, like feedback: counted at once when its
outcome is stored, held until it is otherwise (the ingest of that outcome picks it up in its
transaction; ``turnout.apply_held_metrics`` sweeps the pairs whose transactions crossed), and
purged when its outcome has not come after :data:`HELD_HOURS`. It counts only on
an outcome of a plan the sending key may write and, when the event named its plan, of that
plan; a value the outcome's plan turns out not to declare, or to bound otherwise, is refused
(kept with the reason, never counted).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.db import transaction
from django.utils import timezone
from turnout.contract import (
    ANSWER_CHECKS,
    MAX_ID_LENGTH,
    MAX_METRICS_PER_EVENT,
    MAX_PLAN_KEY_LENGTH,
    METRIC_NAME_PATTERN,
)

from migrations_app.models import MetricValue, MigrationPlan
from migrations_app.outcomes import metrics as counters
from migrations_app.outcomes.aggregation import OutcomeFacts
from migrations_app.outcomes.event_checks import (
    IngestResult,
    Invalid,
    Rejection,
    check_batch_size,
    events_of,
    is_text,
    text,
    timestamp,
)
from migrations_app.outcomes.feedback import (
    LINK_BATCH,
    counted_in,
    crossed,
    held_outcomes,
    key_scope,
    link_outcomes,
    stored_plans,
)
from migrations_app.outcomes.rollup import aggregate
from migrations_app.outcomes.store import db_datetime, insert_returning
from migrations_app.plans.metric_specs import MetricSpec
from migrations_app.plans.metrics import plan_metric_specs, specs_by_plan

_NAME = re.compile(METRIC_NAME_PATTERN)

# How long a value waits for its outcome: an SDK sends its outcomes within seconds, a retrying
# one within minutes; a day later the decision was never reported (or to another install).
HELD_HOURS = 24


def check_value(
    name: Any, value: Any, specs: Mapping[str, MetricSpec], *, checks_allowed: bool = True
) -> tuple[str, float]:
    """One metric value, checked: (name, value as a float), or :class:`Invalid` naming
    ``metrics.<name>`` and why (an undeclared name, a value that is not a finite number or
    outside the metric's bounds)."""
    # Whole-string match, declared or not: a name stored past the declaration's checks (the
    # ORM, SQL) is refused here, never written into the upsert's text (store._sums_added).
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        # A name too long is shown cut short; one with NUL or lone surrogates as "?".
        shown = name[:48] if isinstance(name, str) and is_text(name[:48], 48) else "?"
        raise Invalid(f"metrics.{shown}", "invalid", "A metric name is lowercase letters, "
                      "digits and underscores, starting with a letter (at most 48).")  # fmt: skip
    spec = specs.get(name)
    if spec is None or (not checks_allowed and name in ANSWER_CHECKS):
        why = (
            f"{name!r} is an answer check: Turnout computes it from the answer."
            if name in ANSWER_CHECKS
            else f"The plan does not declare a metric {name!r} (nor does the catalog)."
        )
        raise Invalid(f"metrics.{name}", "metric_not_declared", why)
    problem = spec.value_problem(value)
    if problem is not None:
        raise Invalid(f"metrics.{name}", *problem)
    return name, float(value)


def parse_metrics(raw: Any, specs: Mapping[str, MetricSpec]) -> tuple[tuple[str, float], ...]:
    """An outcome event's ``metrics`` object, every value checked (the first bad one named)."""
    if raw is None:
        return ()
    if type(raw) is not dict and not isinstance(raw, Mapping):  # JSON's are dicts
        raise Invalid("metrics", "invalid", "metrics must be an object {name: value}.")
    if len(raw) > MAX_METRICS_PER_EVENT:
        raise Invalid(
            "metrics", "out_of_range", f"At most {MAX_METRICS_PER_EVENT} metrics per event."
        )
    return tuple([check_value(name, value, specs) for name, value in raw.items()])


def metrics_json(values: tuple[tuple[str, float], ...]) -> str | None:
    """An outcome's metrics as its raw row stores them (jsonb), or None."""
    return orjson.dumps(dict(values)).decode() if values else None


# --- values sent on their own ----------------------------------------------------------


def _parse_event(event: Any, now: datetime) -> tuple[str, str, str | None, Any, Any, datetime]:
    if not isinstance(event, Mapping):
        raise Invalid("event", "invalid", "Each event must be an object.")
    event_id = text(event, "id", MAX_ID_LENGTH)
    decision_id = text(event, "decision_id", MAX_ID_LENGTH)
    plan = event.get("plan")
    if plan is not None and not is_text(plan, MAX_PLAN_KEY_LENGTH):
        raise Invalid("plan", "invalid", "plan must be a plan key.")
    if "name" not in event:
        raise Invalid("name", "required", "name is required.")
    if "value" not in event or event["value"] is None:
        raise Invalid("value", "required", "value is required.")
    return event_id, decision_id, plan, event["name"], event["value"], timestamp(event, now)


def metrics_ingest(*, identity: Any, payload: Any) -> IngestResult:
    """Store metric values once per event id; count each now if its outcome is stored, else
    hold it. A single event (an object with ``decision_id``) is a batch of one.

    A value is checked against the metrics its plan declares: the plan the event names (which
    the key must be able to write), else the plan of the decision's stored outcome, else
    (outcome not stored yet) every plan the key may write and the catalog, and checked again
    against its outcome's plan when the outcome arrives."""
    if isinstance(payload, Mapping) and "events" not in payload and "decision_id" in payload:
        payload = {"events": [payload]}
    events = events_of(payload)
    check_batch_size(events)
    now = timezone.now()
    result = IngestResult()
    parsed: list[tuple[int, tuple[str, str, str | None, Any, Any, datetime]]] = []
    for index, event in enumerate(events):
        try:
            parsed.append((index, _parse_event(event, now)))
        except Invalid as bad:
            result.rejected.append(Rejection(index, bad.field, bad.code, bad.message))
    plans = {
        p.key: p.pk
        for p in MigrationPlan.objects.filter(key__in={row[2] for _, row in parsed if row[2]})
    }
    stored_in = stored_plans({row[1] for _, row in parsed})
    specs = specs_by_plan({*plans.values(), *(pid for pids in stored_in.values() for pid in pids)})
    visible = _key_specs(identity)
    rows: dict[str, tuple[Any, ...]] = {}
    for index, (event_id, decision_id, plan_key, name, value, ts) in parsed:
        try:
            plan_id = None
            if plan_key is not None:
                plan_id = plans.get(plan_key)
                if plan_id is None or not identity.may_see(plan_id):
                    raise Invalid("plan", "plan_not_found", f"No plan with key {plan_key!r}.")
            owners = stored_in.get(decision_id, set())
            if plan_id is not None and owners and plan_id not in owners:
                raise Invalid(
                    "decision_id", "plan_not_found",
                    f"Decision {decision_id!r} is not in plan {plan_key!r}.",
                )  # fmt: skip
            if plan_id is None and owners:
                writable = [p for p in owners if identity.may_see(p)]
                if not writable:
                    raise Invalid(
                        "decision_id", "plan_not_found",
                        f"Decision {decision_id!r} is in no plan this key may report on.",
                    )  # fmt: skip
                plan_id = min(writable)
            if plan_id is not None:
                name, number = check_value(name, value, specs[plan_id], checks_allowed=False)
            else:
                name, number = _check_anywhere(name, value, visible)
        except Invalid as bad:
            result.rejected.append(Rejection(index, bad.field, bad.code, bad.message))
            continue
        if event_id in rows:
            result.duplicates += 1
            continue
        rows[event_id] = (event_id, decision_id, plan_id, name, number, db_datetime(ts))
    result.rejected.sort(key=lambda r: r.index)
    if rows:
        received = db_datetime(now)
        scope = key_scope(identity)
        with transaction.atomic():
            stored = insert_returning(
                MetricValue._meta.db_table,
                ["event_id", "decision_id", "plan_id", "name", "value", "ts", "received_at",
                 "plan_scope", "refused"],
                [(*row, received, scope, "") for row in rows.values()],
                "event_id",
                ("text", "text", "bigint", "text", "float8", "timestamptz", "timestamptz",
                 "jsonb", "text"),
            )  # fmt: skip
            if stored:
                claimed, _ = claim_metric_values(stored)
                aggregate([], [], claimed)
        result.stored = len(stored)
        result.duplicates += len(rows) - len(stored)
    counters.count_ingest("metrics", result)
    return result


def _key_specs(identity: Any) -> Callable[[str], list[MetricSpec]]:
    """Every declaration of a name among the plans the key may write and the catalog, for a
    value whose plan is not known yet (read on first use: most batches never need it)."""
    cache: dict[str, list[MetricSpec]] = {}
    loaded = False

    def lookup(name: str) -> list[MetricSpec]:
        nonlocal loaded
        if not loaded:
            plan_ids = getattr(identity, "plan_ids", None)
            ids = (
                list(MigrationPlan.objects.values_list("pk", flat=True))
                if plan_ids is None
                else list(plan_ids)
            )
            for specs in [plan_metric_specs(None), *specs_by_plan(ids).values()]:
                for key, spec in specs.items():
                    cache.setdefault(key, []).append(spec)
            loaded = True
        return cache.get(name, [])

    return lookup


def _check_anywhere(
    name: Any, value: Any, visible: Callable[[str], list[MetricSpec]]
) -> tuple[str, float]:
    """A value whose plan is not known yet: its name must be declared somewhere the key may
    write, and the value fit one of those declarations (its own plan's is checked later)."""
    candidates = visible(name) if isinstance(name, str) else []
    candidates = [s for s in candidates if s.source != "check"]
    if not candidates:
        return check_value(name, value, {}, checks_allowed=False)
    problem: Invalid | None = None
    for spec in candidates:
        try:
            return check_value(name, value, {name: spec}, checks_allowed=False)
        except Invalid as bad:
            problem = bad
    assert problem is not None
    raise problem


# --- held values meet their outcomes ----------------------------------------------------


def held_metric_values(decision_ids: Iterable[str]) -> list[str]:
    """Ids of values held for these decisions (not yet counted or refused)."""
    ids = set(decision_ids)
    if not ids:
        return []
    return list(
        MetricValue.objects.filter(
            decision_id__in=ids, outcome__isnull=True, refused=""
        ).values_list("pk", flat=True)
    )


def claim_metric_values(
    value_ids: Sequence[str],
) -> tuple[list[tuple[int, OutcomeFacts, str, float]], int]:
    """Lock the held values among ``value_ids`` whose outcome exists and link each to it, or
    mark it refused (another plan than the event named or the key may write, a name or value
    that plan does not declare). Returns what the caller aggregates in the same transaction
    and how many were linked. A fallback outcome comes first, as for feedback: the value is
    about control's answer, counted in neither arm."""
    if not value_ids:
        return [], 0
    held = list(
        MetricValue.objects.select_for_update()
        .filter(pk__in=value_ids, outcome__isnull=True, refused="")
        .order_by("pk")
        .values_list("pk", "decision_id", "plan_id", "plan_scope", "name", "value")
    )
    if not held:
        return [], 0
    outcomes = held_outcomes({row[1] for row in held})
    specs = specs_by_plan({o.plan_id for found in outcomes.values() for o in found})
    applied: list[tuple[int, OutcomeFacts, str, float]] = []
    links: dict[str, list[str]] = defaultdict(list)
    refused: dict[str, str] = {}
    for pk, decision_id, plan_id, scope, name, value in held:
        found = outcomes.get(decision_id)
        if not found:
            continue
        outcome = next(
            (
                o
                for o in found
                if (scope is None or o.plan_id in scope) and plan_id in (None, o.plan_id)
            ),
            None,
        )
        if outcome is None:
            refused[pk] = "its decision is in a plan the sending key (or event) does not name"
            continue
        try:
            check_value(name, value, specs[outcome.plan_id], checks_allowed=False)
        except Invalid as bad:
            refused[pk] = bad.message[:200]
            continue
        links[outcome.pk].append(pk)
        counted = counted_in(outcome)
        if counted is not None:
            applied.append((*counted, name, value))
    link_outcomes(MetricValue, links)
    MetricValue.objects.bulk_update(
        [MetricValue(pk=pk, refused=why) for pk, why in refused.items()],
        ["refused"],
        batch_size=LINK_BATCH,
    )
    return applied, sum(len(p) for p in links.values())


def apply_held_metric_values(*, limit: int = 5000) -> int:
    """The sweeper: values held while their outcome is already stored (their transactions
    crossed). Returns how many were linked."""
    ids = crossed(MetricValue, limit)
    if not ids:
        return 0
    with transaction.atomic():
        claimed, linked = claim_metric_values(ids)
        aggregate([], [], claimed)
    return linked


def purge_held_metric_values(*, now: datetime | None = None) -> int:
    """Delete held values whose outcome has not arrived within :data:`HELD_HOURS` of their
    receipt (a decision never reported, or reported to another install), and refused ones
    as old. Counted values stay for the raw retention period."""
    cutoff = (now or timezone.now()) - timedelta(hours=HELD_HOURS)
    return MetricValue.objects.filter(outcome__isnull=True, received_at__lt=cutoff).delete()[0]
