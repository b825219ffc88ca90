"""Segments in the rollup (issue 16, item 6): a stage's running sums per arm and segment
(``SegmentAggregate``), in the ingest's transaction, after the unit totals.

Each outcome carrying segment values ({dimension: value}) adds its counts, buckets, sums and
per-request metrics to its segment's row per dimension, and its unit's cluster-sum change to
the segment its unit is in (a unit's segment is the one its first event in the batch names:
units do not move between tenants or languages, and if one does, its variance is booked where
it started). Feedback and metric values sent on their own carry no segment values: they are
joined to their outcome by decision id (feedback.counted_in) and add to the segments the
outcome carried, so the satisfaction guardrail and a metric's are tested per segment too; what
is not counted in the population (an excluded or overridden unit's) is in no segment either.

Bounded whatever the cardinality: per (stage, arm, dimension) at most :data:`CAPACITY` values
get rows of their own; a value arriving once they are taken adds to the ``other`` row. The
evaluation keeps the busiest ``top_k`` of the stored values and folds the rest into ``other``
(guardrails/segments.py), so a plan sees at most ``top_k + 1`` segments per dimension and the
table holds at most ``CAPACITY + 1`` rows per stage, arm and dimension. Late feedback and
values are placed as their outcome's value was: its own row when it has one, else ``other``.

Folded, not written per batch: an ingest transaction adds its segmented outcomes, feedback and
metric values and their units' moves to one ``PendingRollup`` row per stage, with its
windows' deltas (:func:`queue`); :func:`fold` computes the segments' deltas from every pending
row of a stage at once and adds them to the rows, and the windows' deltas to the window and
stage rows (window_rollup.py), deleting what it folded, in one transaction under the stage's
lock. A busy stage's segment rows are then rewritten about once a second per web
process (:data:`FOLD_SECONDS`, after an ingest commits) instead of on every batch, and the
work per segment is done once per fold, not once per batch. Every read of those rows folds
first (:func:`catch_up`), so what the guardrails test is never behind what ingest stored.
The sums are the same either way: deltas add, and a unit's moves telescope.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, replace
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from django.db import connection, transaction
from django.db.models import Max

from migrations_app.guardrails.segments import MAX_TOP_K, OTHER
from migrations_app.guardrails.stats import ArmAggregates, MetricSums
from migrations_app.models import PendingRollup, PendingSegments, SegmentAggregate
from migrations_app.outcomes import (
    aggregate_json,
    aggregation,
    segment_rows,
    unit_rows,
    window_rollup,
)
from migrations_app.outcomes.aggregation import OutcomeFacts
from migrations_app.outcomes.collector import collector_paused
from migrations_app.outcomes.event_checks import Invalid, unstorable_char
from migrations_app.outcomes.exact_sums import group_sums
from migrations_app.outcomes.metrics import count_fold_failure
from migrations_app.outcomes.store import fast_path, lock_or_create, update_rows

# Values per (stage, arm, dimension) with rows of their own: twice the largest top_k, so the
# busiest values are among them unless they first appear after this many others.
CAPACITY = 2 * MAX_TOP_K

Key = tuple[int, str, str, str]  # stage, arm, dimension, value


def segment_deltas(pending: segment_rows.Pending) -> dict[Key, ArmAggregates]:
    """Per stored segment, what the pending rows add: their outcomes' sums, their feedback's
    and metric values' sums (the segments of the outcome each was joined to, or came with),
    and their units' cluster-sum changes (a unit's moves in the segments of its first event
    here: its first outcome, else feedback, else metric value). Values are placed first
    (their own row, or ``other`` once :data:`CAPACITY` are taken), so the work is per stored
    row, not per distinct value; each part is summed for every segment in one pass."""
    if not pending.keys:
        return {}
    place = _placement(set(pending.keys))
    placed = sorted(set(place.values()))
    index = {key: i for i, key in enumerate(placed)}
    count = len(placed)
    # Each event's segments as placed rows (-1: none; the last entry maps -1 to -1).
    to_placed = np.array([index[place[key]] for key in pending.keys] + [-1], dtype=np.int64)
    event_keys = to_placed[pending.event_keys]
    outcomes, feedback, _ = pending.counts
    # A unit's segments: those of its first event here (np.unique's index is the first).
    units, first = np.unique(pending.event_units, return_index=True)

    def unit_keys(unit_ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        if not len(units):
            return np.full((len(unit_ids), segment_rows.SLOTS), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(units, unit_ids), len(units) - 1)
        found: npt.NDArray[np.int64] = event_keys[first[at]]
        return np.where((units[at] == unit_ids)[:, None], found, -1)

    rows, bounds = _members(event_keys[:outcomes], count)
    base = aggregation.outcome_sums(
        pending.latency, pending.ttft, pending.cost, pending.error, pending.errors, rows, bounds
    )
    rows, bounds = _members(unit_keys(pending.moved_units), count)
    moved = aggregation.cluster_sums(pending.moved_old, pending.moved_new, rows, bounds)
    moved_n = np.diff(bounds).tolist()
    rows, bounds = _members(event_keys[outcomes : outcomes + feedback], count)
    scores = pending.score
    rated = group_sums(np.column_stack([scores, scores * scores]), rows, bounds).tolist()
    rated_n = np.diff(bounds).tolist()
    # Metric values per (segment, metric): those the outcomes carried and those sent alone.
    width = max(len(pending.metrics), 1)
    carried = pending.carried
    value_segments = np.concatenate([event_keys[carried[:, 0]], event_keys[outcomes + feedback :]])
    value_metrics = np.concatenate([carried[:, 1], pending.value_metric])
    value_keys = np.where(value_segments >= 0, value_segments * width + value_metrics[:, None], -1)
    values = np.concatenate([pending.carried_value, pending.value])
    rows, bounds = _members(value_keys, count * width)
    named = group_sums(np.column_stack([values, values * values]), rows, bounds).tolist()
    named_n = np.diff(bounds).tolist()
    move_keys = unit_keys(pending.metric_units)
    metric_keys = np.where(move_keys >= 0, move_keys * width + pending.metric_moved[:, None], -1)
    rows, bounds = _members(metric_keys, count * width)
    old, new = pending.metric_old, pending.metric_new
    named_moves = aggregation.cluster_change_sums(
        old[:, 1], old[:, 0], new[:, 1], new[:, 0], rows, bounds
    )
    named_moved = np.diff(bounds).tolist()
    # The parts are disjoint (an outcome delta has no cluster sums, feedback or metrics; a
    # unit's move has cluster sums only; feedback and metric values their own fields): each
    # is set into the segment's delta, not summed field by field with the others.
    deltas: dict[Key, ArmAggregates] = {}
    for k, key in enumerate(placed):
        parts: dict[str, Any] = {}  # one ArmAggregates made per segment, not one per part
        if moved_n[k]:
            parts.update((name, getattr(moved[k], name)) for name in _CLUSTERS)
        if rated_n[k]:
            parts.update(zip(_FEEDBACK, (rated_n[k], *rated[k]), strict=True))
        metrics: dict[str, MetricSums] = {}
        for m, name in enumerate(pending.metrics):
            at = k * width + m
            if named_n[at]:
                metrics[name] = MetricSums(named_n[at], *named[at])
            if named_moved[at]:
                metrics[name] = replace(metrics.get(name, MetricSums()), clusters=named_moves[at])
        if metrics:
            parts["metrics"] = metrics
        deltas[key] = replace(base[k], **parts) if parts else base[k]
    return deltas


def _members(keys: npt.NDArray[np.int64], count: int) -> tuple[npt.NDArray[np.intp], list[int]]:
    """Items with groups (``keys``: a row of groups per item, -1 where none) as the groups
    ``0..count - 1``: each group's items, group after group, and where each group starts
    (and the end)."""
    flat = keys if keys.ndim == 2 else keys[:, None]
    items = np.repeat(np.arange(len(flat)), flat.shape[1])
    codes = flat.ravel()
    kept = codes >= 0
    items, codes = items[kept], codes[kept]
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=count)
    return items[order], [0, *np.cumsum(sizes).tolist()]


# The cluster sums a unit's move adds (aggregation.cluster_deltas sets these and no other).
_CLUSTERS = tuple(f.name for f in fields(ArmAggregates) if f.name.endswith("_clusters"))
# What feedback adds besides its units' cluster sums (aggregation.feedback_delta).
_FEEDBACK = ("feedback_n", "feedback_sum", "feedback_sum_sq")


def _placement(keys: set[Key]) -> dict[Key, Key]:
    """Where each (stage, arm, dimension, value) adds: its own row when it has one or one of
    the :data:`CAPACITY` is free (first come, in key order), else ``other``. Called by
    :func:`fold` only, under its stage lock: no other fold places values in these groups
    until it commits, so a group never gets more than :data:`CAPACITY` rows of its own."""
    groups = {key[:3] for key in keys}
    stored: dict[tuple[int, str, str], set[str]] = {group: set() for group in groups}
    for s, a, d, v in SegmentAggregate.objects.filter(
        stage_id__in={g[0] for g in groups}, dimension__in={g[2] for g in groups}
    ).values_list("stage_id", "arm", "dimension", "value"):
        if (s, a, d) in stored and v != OTHER:
            stored[(s, a, d)].add(v)
    place: dict[Key, Key] = {}
    for key in sorted(keys):
        group, value = key[:3], key[3]
        have = stored[group]
        if value != OTHER and value not in have:
            if len(have) >= CAPACITY:
                value = OTHER
            else:
                have.add(value)
        place[key] = (*group, value)
    return place


# A fold after an ingest commits: at most once per this many seconds per process and stage
# (the rows are rewritten once per fold, whatever the number of batches it folds).
FOLD_SECONDS = 1.0

log = logging.getLogger(__name__)


def queue(
    outcomes: Sequence[tuple[int, OutcomeFacts]],
    feedback: Sequence[tuple[int, OutcomeFacts, float]] = (),
    metric_values: Sequence[tuple[int, OutcomeFacts, str, float]] = (),
    *,
    units: unit_rows.UnitMoves,
    metric_units: unit_rows.MetricMoves | None = None,
    windows: Mapping[window_rollup.WindowKey, ArmAggregates] | None = None,
) -> None:
    """Add the segmented outcomes, feedback and metric values and their units' moves
    (segment_rows.py) and the windows' deltas to the stages' pending rows, in the caller's
    transaction, and fold them soon after it commits."""
    # Comprehensions, not a loop of appends: this runs per batch in the ingest transaction.
    kinds = (
        [(s, f) for s, f in outcomes if f.segments],
        [(s, f, score) for s, f, score in feedback if f.segments],
        [(s, f, name, value) for s, f, name, value in metric_values if f.segments],
    )
    segmented = {(s, f.arm, f.unit) for kind in kinds for s, f, *_ in kind}
    segment_stages = {s for s, *_ in segmented}
    events = {
        stage: (
            [f for s, f in kinds[0] if s == stage],
            [(f, score) for s, f, score in kinds[1] if s == stage],
            [(f, name, value) for s, f, name, value in kinds[2] if s == stage],
        )
        for stage in segment_stages
    }
    rows = {stage_id: segment_rows.raw(*parts) for stage_id, parts in events.items()}
    # The moves of the units with segment values here: the others are booked in no segment.
    both: tuple[tuple[Any, Any], ...] = (
        (units, segment_rows.add_moves), (metric_units, segment_rows.add_metric_moves)
    )  # fmt: skip
    for moves, add in both:
        if moves is None or not segmented:
            continue
        keys, old, new = moves
        moved = [i for i, key in enumerate(keys) if key[:3] in segmented]
        for stage_id in segment_stages:
            mine = [i for i in moved if keys[i][0] == stage_id] if len(rows) > 1 else moved
            add(rows[stage_id], [keys[i][1:] for i in mine], old[mine], new[mine])
    packed = window_rollup.pack(windows or {})
    stages = sorted({*rows, *packed})
    if not stages:
        return
    PendingRollup.objects.bulk_create([
        PendingRollup(
            stage_id=s,
            segments=segment_rows.pack(rows[s]) if s in rows else b"",
            windows=orjson.dumps(packed[s]) if s in packed else b"",
        )
        for s in stages
    ])  # fmt: skip
    # _fold_soon logs its own failures: a fold never fails the ingest that committed.
    transaction.on_commit(partial(_fold_soon, stages))


def fold(stage_ids: Iterable[int], *, wait: bool = True) -> None:
    """Add the stages' pending rows to their window, stage and segment rows and delete them,
    each chunk of at most :data:`FOLD_ROWS` rows and about :data:`FOLD_BYTES` in one
    transaction under each stage's lock (taken in stage order), so each pending row is folded
    once and the placement sees every value another fold placed. ``wait=False`` (after an
    ingest): one chunk, and a stage another fold holds is left to it (or to the next fold)."""
    stages = sorted(set(stage_ids))
    if not stages:
        return
    with collector_paused():
        _fold(stages, wait)


def _fold(stages: list[int], wait: bool) -> None:
    # A read folds the rows pending when it began (their ids up to the last one then), not
    # on while ingest commits more: it holds the stage's lock from its first chunk to its
    # caller's commit (the engine's evaluation), so no ingest's fold helps it meanwhile.
    upto = _NO_BOUND
    if wait:
        upto = PendingRollup.objects.filter(stage_id__in=stages).aggregate(m=Max("id"))["m"]
        if PendingSegments.objects.filter(stage_id__in=stages).exists():
            upto = _NO_BOUND  # rows of the code before (a rolling deploy): folded on to the end
        elif upto is None:
            return  # nothing pending, nor being folded (a fold's deleted rows show until it commits)
    more = _fold_chunk(stages, wait, upto)
    while wait and more:
        more = _fold_chunk(stages, wait, upto)


_NO_BOUND = 2**63 - 1  # the largest id (an ingest's fold: its one chunk, whatever is pending)


# Pending rows per fold transaction: what one fold holds in memory. A row holds one batch,
# up to TURNOUT_INGEST_MAX_BATCH events (1,000 by default, up to 100,000), so the rows are
# also bounded by their bytes: a chunk takes rows while those before them came to less than
# FOLD_BYTES (so at least one). 100 rows of 1,000 outcomes with 3 segment values are ~38 MB
# of JSON, and folding them in one ingest request took ~6 s and ~590 MB of Python heap
# (~780 MB of RSS); 8 MB of them (~21,000 outcomes) ~130 MB.
FOLD_ROWS = 100
FOLD_BYTES = 8 * 2**20


def _fold_chunk(stages: list[int], wait: bool, upto: int) -> bool:
    """One fold transaction: returns whether it may have left rows (it stopped at
    :data:`FOLD_ROWS` or :data:`FOLD_BYTES`)."""
    with transaction.atomic():
        stages = [stage_id for stage_id in stages if _lock_stage(stage_id, wait)]
        if not stages:
            return False
        _adopt_rows_of_the_code_before(stages)
        table = connection.ops.quote_name(PendingRollup._meta.db_table)
        with connection.cursor() as cursor:
            # DELETE first: on SQLite (the embedded mode) it takes the write lock that
            # serialises folds, before the placement reads.
            # The first FOLD_ROWS rows, cut where the bytes before a row reach FOLD_BYTES
            # (LENGTH reads a row's size, not its data: PostgreSQL stores it uncompressed).
            cursor.execute(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM (SELECT id, SUM(size) OVER "
                "(ORDER BY id) - size AS bytes_before FROM (SELECT id, "
                "LENGTH(segments) + LENGTH(windows) AS size "
                f"FROM {table} WHERE stage_id IN ({', '.join(['%s'] * len(stages))}) AND id <= "
                "%s ORDER BY id LIMIT %s) AS head) AS sized WHERE bytes_before < %s) "
                "RETURNING id, stage_id, segments, windows",
                [*stages, upto, FOLD_ROWS, FOLD_BYTES],
            )
            found = sorted(cursor.fetchall())
        window_rollup.merge(_unpack_windows(found))
        segmented = [(pk, stage_id, data) for pk, stage_id, data, _ in found if data]
        if segmented:
            merge_segments(segment_deltas(_unpack(segmented)))
        size = sum(len(data) + len(windows) for _, _, data, windows in found)
        return len(found) == FOLD_ROWS or size >= FOLD_BYTES


def _adopt_rows_of_the_code_before(stages: list[int]) -> None:
    """Move the stages' rows of the code before migration 0026 (``PendingSegments``: a segment
    part in its format, no window part) into ``PendingRollup``, to be folded with the rest, in
    the fold's transaction under the stages' locks (the code before, folding that table too,
    then finds them gone, or has folded them already)."""
    legacy = PendingSegments.objects.filter(stage_id__in=stages).order_by("pk")[:FOLD_ROWS]
    found = list(legacy.values_list("pk", "stage_id", "data"))
    if not found:
        return
    PendingSegments.objects.filter(pk__in=[pk for pk, _, _ in found]).delete()
    PendingRollup.objects.bulk_create(
        [PendingRollup(stage_id=s, segments=bytes(data), windows=b"") for _, s, data in found]
    )


def _fold_soon(stage_ids: Sequence[int]) -> None:
    """After an ingest commits: fold the stages this process has not folded for
    :data:`FOLD_SECONDS`, unless another fold holds them. Never fails the ingest (what is
    not folded now is folded by the next fold or read)."""
    now = time.monotonic()
    if len(_folded) > 10_000:
        _folded.clear()  # bounded, whatever the number of stages
    due = [s for s in stage_ids if now - _folded.get(s, -FOLD_SECONDS) >= FOLD_SECONDS]
    if not due:
        return
    for stage_id in due:
        _folded[stage_id] = now
    try:
        fold(due, wait=False)
    except Exception:
        log.exception("fold failed for stages %s; the next fold or read retries", due)
        count_fold_failure()


_folded: dict[int, float] = {}  # per process: when it last folded each stage


def _lock_stage(stage_id: int, wait: bool) -> bool:
    """The stage's fold lock until the transaction ends (PostgreSQL; SQLite runs one writer
    at a time). ``wait=False``: only if no other fold holds it. (The DELETE alone would make a
    second fold wait for the first's deleted rows; the lock says so, and lets an ingest's fold
    leave a busy stage at once instead of waiting.)"""
    if connection.vendor != "postgresql":
        return True
    lock = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {lock}(%s, %s)", [_LOCK_SPACE, _int4(stage_id)])
        # pg_advisory_xact_lock returns nothing: it has the lock once it returns.
        return wait or bool(cursor.fetchone()[0])


# The first key of the fold locks (pg_advisory_xact_lock's two-int form): "SEG".
_LOCK_SPACE = 0x534547


def _int4(value: int) -> int:
    """A stage id as the lock's second int (two stages sharing one only wait for each other)."""
    return (value + 2**31) % 2**32 - 2**31


def _unpack_windows(
    rows: Iterable[tuple[int, int, Any, Any]],
) -> list[tuple[window_rollup.WindowKey, ArmAggregates]]:
    """The pending rows' window deltas (``(id, stage, segments, windows)``); an unreadable part
    is logged and left out, as an unreadable segments' part is (:func:`_unpack`)."""
    out: list[tuple[window_rollup.WindowKey, ArmAggregates]] = []
    for pk, stage_id, _, packed in rows:
        if not packed:
            continue
        try:
            out += window_rollup.unpack(stage_id, orjson.loads(bytes(packed)))
        except (ValueError, TypeError, KeyError) as bad:  # orjson's errors are ValueErrors
            log.error("pending window deltas %s of stage %s cannot be read, left out: %r",
                      pk, stage_id, bad)  # fmt: skip
            count_fold_failure()  # what was left out is seen where folds that fail are
    return out


def _unpack(rows: Iterable[tuple[int, int, Any]]) -> segment_rows.Pending:
    """The pending rows ``(id, stage, data)``, in the order they were written, as
    :func:`segment_deltas`' argument. A row that cannot be read (only a bug or a damaged
    database makes one) is logged and left out: kept, it would stop every later fold of its
    stage, and with it the stage's segment tests. Rows written before the columns (a tuple per
    event) may be pending when this code starts: segment_rows.read reads them into the same
    columns."""
    found = []
    for pk, stage_id, data in rows:
        try:
            found.append((stage_id, segment_rows.read(bytes(data))))
        except (ValueError, TypeError, KeyError) as bad:  # orjson's errors are ValueErrors
            log.error("pending segment row %s of stage %s cannot be read, left out: %r",
                      pk, stage_id, bad)  # fmt: skip
            count_fold_failure()
    return segment_rows.gather(found)


def merge_segments(deltas: Mapping[Key, ArmAggregates]) -> None:
    """Add ``deltas`` (placed by :func:`segment_deltas`) to the stored rows."""
    if not deltas:
        return
    merged = dict(deltas)
    keys = sorted(merged)
    if fast_path():
        rows = lock_or_create(
            SegmentAggregate, ("stage_id", "arm", "dimension", "value"),
            ("bigint", "text", "text", "text"), keys, {"requests": "0", "data": "'{}'::jsonb"},
        )  # fmt: skip
    else:
        SegmentAggregate.objects.bulk_create(
            [SegmentAggregate(stage_id=s, arm=a, dimension=d, value=v) for s, a, d, v in keys],
            ignore_conflicts=True,
        )
        rows = {
            (r.stage_id, r.arm, r.dimension, r.value): r
            for r in SegmentAggregate.objects.select_for_update()
            .filter(stage_id__in={k[0] for k in keys})
            .order_by("stage_id", "arm", "dimension", "value")
        }
    for key in keys:
        row = rows[key]
        row.data = aggregate_json.merge_json(row.data, merged[key])
        row.requests = row.data["requests"]
    update_rows(
        SegmentAggregate, [rows[k] for k in keys], ["data", "requests"], ("jsonb", "integer")
    )


def catch_up(stage_ids: Iterable[int] | None = None, *, wait: bool = True) -> bool:
    """Before a read of window, stage or segment rows: fold what ingest had committed for
    these stages (for every stage when ``None``). One query when nothing is pending.
    ``wait=False`` (the dashboard's pages): one chunk per stage, and a stage whose fold another
    holds (an evaluation, an ingest) is read as folded so far instead of waited for.

    Returns whether the fold succeeded. One that fails is logged and counted
    (``turnout_fold_failures_total`` in ``/metrics``, beside the pending rows' count and the
    oldest's age), and the read goes on with the sums folded so far: inside a transaction
    the fold runs in a savepoint, so the caller's transaction goes on; outside one each chunk
    commits on its own. Nothing is lost either way: the rows stay pending for the next fold."""
    pending = [PendingRollup.objects.all(), PendingSegments.objects.all()]
    if stage_ids is not None:
        ids = list(stage_ids)
        pending = [rows.filter(stage_id__in=ids) for rows in pending]
    rollup, legacy = (rows.values_list("stage_id", flat=True) for rows in pending)
    stages = sorted(set(rollup.union(legacy)))  # one query (UNION: each stage once)
    if not stages:
        return True
    try:
        if connection.in_atomic_block:
            with transaction.atomic():
                fold(stages, wait=wait)
        else:
            fold(stages, wait=wait)
    except Exception:
        log.exception("fold failed for stages %s: read as folded so far", stages)
        count_fold_failure()
        return False
    return True


def stage_segments(stage_id: int) -> dict[tuple[str, str], dict[str, ArmAggregates]]:
    """A stage's segments: (dimension, value) -> {arm: ArmAggregates}, with everything
    ingest had committed for it when the read began (:func:`catch_up`)."""
    catch_up([stage_id])
    out: dict[tuple[str, str], dict[str, ArmAggregates]] = defaultdict(dict)
    for arm, dimension, value, data in SegmentAggregate.objects.filter(
        stage_id=stage_id
    ).values_list("arm", "dimension", "value", "data"):
        out[(dimension, value)][arm] = aggregate_json.from_json(data)
    return dict(out)


def parse_segments(raw: Any, dimensions: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """An outcome's ``segments`` as ingest stores them: the plan's dimensions only, in their
    order (a dimension the plan does not declare is left out). Raises :class:`Invalid` for
    something no SDK sends."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise Invalid("segments", "invalid", "segments must be an object of {dimension: value}.")
    if len(raw) > 3:
        raise Invalid("segments", "invalid", f"At most 3 segment values, got {len(raw)}.")
    found = []
    for name in dimensions:
        if name not in raw:
            continue
        value = raw[name]
        # A NUL or a lone surrogate cannot be stored (a lone one was a 500 for the batch).
        if not isinstance(value, str) or not 0 < len(value) <= 64 or unstorable_char(value):
            raise Invalid(
                f"segments.{name}", "invalid", "A segment value is a string of 1-64 characters."
            )
        found.append((name, value))
    return tuple(found)
