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
metric values and their units' moves to one ``PendingSegments`` row per stage, with its
windows' deltas (:func:`queue`); :func:`fold` computes the segments' deltas from every pending
row of a stage at once and adds them to the rows, and the windows' deltas to the window and
stage rows (window_rollup.py), deleting what it folded, in one transaction under the stage's
lock. A busy stage's segment rows are then rewritten about once a second per web
process (:data:`FOLD_SECONDS`, after an ingest commits) instead of on every batch, and the
work per segment is done once per fold, not once per batch. Every read of those rows folds
first (:func:`catch_up`), so what the guardrails test is never behind what ingest stored. The sums are the same either way: deltas add, and a unit's moves telescope.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from django.db import connection, transaction
from django.db.models import Max

from migrations_app.guardrails.segments import MAX_TOP_K, OTHER
from migrations_app.guardrails.stats import ArmAggregates, ClusterSums, MetricSums
from migrations_app.models import PendingSegments, SegmentAggregate
from migrations_app.outcomes import aggregation, metric_rollup, window_rollup
from migrations_app.outcomes.aggregation import OutcomeFacts
from migrations_app.outcomes.collector import collector_paused
from migrations_app.outcomes.event_checks import Invalid, unstorable_char
from migrations_app.outcomes.store import fast_path, lock_or_create, update_rows

# Values per (stage, arm, dimension) with rows of their own: twice the largest top_k, so the
# busiest values are among them unless they first appear after this many others.
CAPACITY = 2 * MAX_TOP_K

Key = tuple[int, str, str, str]  # stage, arm, dimension, value


def segment_deltas(
    outcomes: Sequence[tuple[int, OutcomeFacts]],
    feedback: Sequence[tuple[int, OutcomeFacts, float]] = (),
    metric_values: Sequence[tuple[int, OutcomeFacts, str, float]] = (),
    *,
    units: UnitMoves,
    metric_units: metric_rollup.Moves | None = None,
) -> dict[Key, ArmAggregates]:
    """Per stored segment, what the batch adds: its outcomes' sums, its feedback's and
    metric values' sums (the segments of the outcome each was joined to, or came with), and
    its units' cluster-sum changes: ``units`` as the unit totals' upsert returned them,
    ``metric_units`` as the metric sums' (``metric_rollup.arm_deltas``). Values are placed
    first (their own row, or ``other`` once :data:`CAPACITY` are taken), so the work is per
    stored row, not per distinct value."""
    events = [*outcomes, *((s, f) for s, f, _ in feedback), *((s, f) for s, f, *_ in metric_values)]
    raw = {
        (stage_id, facts.arm, dimension, value)
        for stage_id, facts in events
        for dimension, value in facts.segments
    }
    if not raw:
        return {}
    place = _placement(raw)
    unit_segments: dict[tuple[int, str, str], list[Key]] = {}

    def placed(stage_id: int, facts: OutcomeFacts) -> list[Key]:
        keys = [place[(stage_id, facts.arm, d, v)] for d, v in facts.segments]
        unit_segments.setdefault((stage_id, facts.arm, facts.unit), keys)
        return keys

    rows: dict[Key, list[int]] = defaultdict(list)
    values: dict[Key, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, (stage_id, facts) in enumerate(outcomes):
        if facts.segments:
            for key in placed(stage_id, facts):
                rows[key].append(i)
                for name, value in facts.metrics:
                    values[key][name].append(value)
    scores: dict[Key, list[float]] = defaultdict(list)
    for stage_id, facts, score in feedback:
        if facts.segments:
            for key in placed(stage_id, facts):
                scores[key].append(score)
    for stage_id, facts, name, value in metric_values:
        if facts.segments:
            for key in placed(stage_id, facts):
                values[key][name].append(value)
    keys, old, new = units
    moves: dict[Key, list[int]] = defaultdict(list)
    for i, ukey in enumerate(keys):
        for key in unit_segments.get(ukey, ()):
            moves[key].append(i)
    clusters = aggregation.grouped_cluster_deltas(old, new, moves) if moves else {}
    # Each outcome is in one row per dimension: its logs and sketch keys are taken once.
    outcome_deltas = aggregation.grouped_outcome_deltas([f for _, f in outcomes], rows)
    metric_clusters = _metric_clusters(metric_units, unit_segments)
    # The parts are disjoint (an outcome delta has no cluster sums, feedback or metrics; a
    # unit's move has cluster sums only; feedback and metric values their own fields): each
    # is set into the segment's delta, not summed field by field with the others.
    deltas: dict[Key, ArmAggregates] = {}
    for key in {*outcome_deltas, *clusters, *scores, *values, *metric_clusters}:
        parts: dict[str, Any] = {}  # one ArmAggregates made per segment, not one per part
        moved = clusters.get(key)
        if moved is not None:
            parts.update((name, getattr(moved, name)) for name in _CLUSTERS)
        if key in scores:
            rated = aggregation.feedback_delta(scores[key])
            parts.update((name, getattr(rated, name)) for name in _FEEDBACK)
        named = {
            name: metric_rollup.value_sums(found) for name, found in values.get(key, {}).items()
        }
        for name, cluster in metric_clusters.get(key, {}).items():
            named[name] = replace(named.get(name, MetricSums()), clusters=cluster)
        if named:
            parts["metrics"] = named
        base = outcome_deltas.get(key)
        if base is None:
            deltas[key] = ArmAggregates(**parts)
        else:
            deltas[key] = replace(base, **parts) if parts else base
    return deltas


# The units' totals a batch moved: their keys (stage, arm, unit), and the totals before and
# after (one row each, columns as ``aggregation.UnitTotals.values()``).
UnitMoves = tuple[Sequence[tuple[int, str, str]], npt.NDArray[np.float64], npt.NDArray[np.float64]]


def _metric_clusters(
    moves: metric_rollup.Moves | None, unit_segments: Mapping[tuple[int, str, str], list[Key]]
) -> dict[Key, dict[str, ClusterSums]]:
    """Per segment and metric, the cluster-sum change of its units' metric sums (a unit is
    in the segments of its first event in the batch, as for the built-in sums)."""
    if moves is None:
        return {}
    keys, old, new = moves
    groups: dict[tuple[Key, str], list[int]] = defaultdict(list)
    for i, (stage_id, arm, unit, metric) in enumerate(keys):
        for key in unit_segments.get((stage_id, arm, unit), ()):
            groups[(key, metric)].append(i)
    out: dict[Key, dict[str, ClusterSums]] = defaultdict(dict)
    moved = aggregation.grouped_cluster_change(old[:, 1], old[:, 0], new[:, 1], new[:, 0], groups)
    for (key, metric), clusters in moved.items():
        out[key][metric] = clusters
    return out


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
    units: UnitMoves,
    metric_units: metric_rollup.Moves | None = None,
    windows: Mapping[window_rollup.WindowKey, ArmAggregates] | None = None,
) -> None:
    """Add what :func:`segment_deltas` would take (the segmented part of it) and the windows'
    deltas to the stages' pending rows, in the caller's transaction, and fold them soon after
    it commits."""
    parts: dict[int, dict[str, list[Any]]] = {}

    def part(stage_id: int, facts: OutcomeFacts) -> dict[str, list[Any]]:
        segmented.add((stage_id, facts.arm, facts.unit))
        found = parts.get(stage_id)
        if found is None:
            found = parts[stage_id] = {name: [] for name in _PARTS}
        return found

    segmented: set[tuple[int, str, str]] = set()
    for stage_id, f in outcomes:
        if f.segments:
            part(stage_id, f)["o"].append(
                (f.arm, f.unit, f.latency_ms, f.ttft_ms, f.error, f.cost_usd, f.metrics, f.segments)
            )
    for stage_id, f, score in feedback:
        if f.segments:
            part(stage_id, f)["f"].append((f.arm, f.unit, f.segments, score))
    for stage_id, f, name, value in metric_values:
        if f.segments:
            part(stage_id, f)["v"].append((f.arm, f.unit, f.segments, name, value))
    # The moves of the units with segment values here: the others are booked in no segment.
    for name, moves in (("u", units), ("m", metric_units)):
        keys, old, new = moves or ([], None, None)
        moved = [i for i, key in enumerate(keys) if key[:3] in segmented]
        for i, before, after in zip(moved, old[moved].tolist(), new[moved].tolist(), strict=True):
            stage_id, *key = keys[i]  # (arm, unit) or (arm, unit, metric)
            parts[stage_id][name].append((*key, before, after))
    packed = window_rollup.pack(windows or {})
    stages = sorted({*parts, *packed})
    if not stages:
        return
    PendingSegments.objects.bulk_create(
        [
            PendingSegments(
                stage_id=s,
                data=orjson.dumps(parts[s]) if s in parts else b"",
                windows=orjson.dumps(packed[s]) if s in packed else None,
            )
            for s in stages
        ]
    )
    # _fold_soon logs its own failures: a fold never fails the ingest that committed.
    transaction.on_commit(partial(_fold_soon, stages))


# A pending row's parts: outcomes, feedback, metric values, unit moves, metric unit moves.
_PARTS = ("o", "f", "v", "u", "m")


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
        upto = PendingSegments.objects.filter(stage_id__in=stages).aggregate(m=Max("id"))["m"]
        if upto is None:
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
        table = connection.ops.quote_name(PendingSegments._meta.db_table)
        with connection.cursor() as cursor:
            # DELETE first: on SQLite (the embedded mode) it takes the write lock that
            # serialises folds, before the placement reads.
            # The first FOLD_ROWS rows, cut where the bytes before a row reach FOLD_BYTES
            # (LENGTH reads a row's size, not its data: PostgreSQL stores it uncompressed).
            cursor.execute(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM (SELECT id, SUM(size) OVER "
                "(ORDER BY id) - size AS bytes_before FROM (SELECT id, "
                "LENGTH(data) + COALESCE(LENGTH(windows), 0) AS size "
                f"FROM {table} WHERE stage_id IN ({', '.join(['%s'] * len(stages))}) AND id <= "
                "%s ORDER BY id LIMIT %s) AS head) AS sized WHERE bytes_before < %s) "
                "RETURNING id, stage_id, data, windows",
                [*stages, upto, FOLD_ROWS, FOLD_BYTES],
            )
            found = sorted(cursor.fetchall())
        window_rollup.merge(_unpack_windows(found))
        segmented = [(pk, stage_id, data) for pk, stage_id, data, _ in found if data]
        if segmented:
            outcomes, feedback, values, units, metric_units = _unpack(segmented)
            merge_segments(
                segment_deltas(outcomes, feedback, values, units=units, metric_units=metric_units)
            )
        size = sum(len(data) + len(windows or b"") for _, _, data, windows in found)
        return len(found) == FOLD_ROWS or size >= FOLD_BYTES


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
        log.exception("segment fold failed for stages %s; the next fold or read retries", due)


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


# The window of the outcomes a fold rebuilds: segments have none (only their stage's sums).
_NO_WINDOW = datetime(1970, 1, 1, tzinfo=UTC)


def _unpack_windows(
    rows: Iterable[tuple[int, int, Any, Any]],
) -> list[tuple[window_rollup.WindowKey, ArmAggregates]]:
    """The pending rows' window deltas (``(id, stage, data, windows)``); an unreadable part
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
    return out


def _unpack(rows: Iterable[tuple[int, int, Any]]) -> tuple[Any, ...]:
    """The pending rows ``(id, stage, data)``, in the order they were written, as
    :func:`segment_deltas`' arguments. A row that cannot be read (only a bug or a damaged
    database makes one) is logged and left out: kept, it would stop every later fold of its
    stage, and with it the stage's segment tests."""
    outcomes: list[tuple[int, OutcomeFacts]] = []
    feedback: list[tuple[int, OutcomeFacts, float]] = []
    values: list[tuple[int, OutcomeFacts, str, float]] = []
    units: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    metric_units: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    for pk, stage_id, data in rows:
        try:
            row = _unpack_row(stage_id, data)
        except (ValueError, TypeError, KeyError) as bad:  # orjson's errors are ValueErrors
            log.error("pending segment row %s of stage %s cannot be read, left out: %r",
                      pk, stage_id, bad)  # fmt: skip
            continue
        outcomes += row[0]
        feedback += row[1]
        values += row[2]
        for into, part in ((units, row[3]), (metric_units, row[4])):
            for items, found in zip(into, part, strict=True):
                items += found
    return (
        outcomes,
        feedback,
        values,
        (units[0], *(np.array(v, dtype=np.float64).reshape(-1, _UNIT_WIDTH) for v in units[1:])),
        (
            metric_units[0],
            *(np.array(v, dtype=np.float64).reshape(-1, 3) for v in metric_units[1:]),
        ),
    )


def _unpack_row(stage_id: int, data: Any) -> tuple[Any, ...]:
    """One pending row's parts, checked as far as a fold relies on them (the shapes; the
    values were checked at ingest)."""
    part = orjson.loads(bytes(data))
    outcomes = [
        (stage_id, OutcomeFacts(
            arm, unit, _NO_WINDOW, float(latency), ttft, error, cost,
            tuple((n, v) for n, v in metrics), tuple((d, v) for d, v in segments),
        ))
        for arm, unit, latency, ttft, error, cost, metrics, segments in part["o"]
    ]  # fmt: skip
    feedback = [
        (stage_id, _joined(arm, unit, segments), float(score))
        for arm, unit, segments, score in part["f"]
    ]
    values = [
        (stage_id, _joined(arm, unit, segments), name, float(value))
        for arm, unit, segments, name, value in part["v"]
    ]
    units: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    for arm, unit, before, after in part["u"]:
        if len(before) != _UNIT_WIDTH or len(after) != _UNIT_WIDTH:
            raise ValueError(f"a unit's totals have {_UNIT_WIDTH} values")
        units[0].append((stage_id, arm, unit))
        units[1].append(before)
        units[2].append(after)
    metric_units: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    for arm, unit, metric, before, after in part["m"]:
        if len(before) != 3 or len(after) != 3:
            raise ValueError("a unit's metric sums have 3 values")
        metric_units[0].append((stage_id, arm, unit, metric))
        metric_units[1].append(before)
        metric_units[2].append(after)
    return outcomes, feedback, values, units, metric_units


def _joined(arm: str, unit: str, segments: Sequence[Sequence[str]]) -> OutcomeFacts:
    """The outcome a feedback or metric value was joined to, as far as segments read it."""
    return OutcomeFacts(
        arm, unit, _NO_WINDOW, 0.0, None, "", None, (), tuple((d, v) for d, v in segments)
    )


_UNIT_WIDTH = len(
    aggregation.UNIT_COLUMNS
)  # a unit's totals, as the unit totals' upsert returns them


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
        row.data = aggregation.merge_json(row.data, merged[key])
        row.requests = row.data["requests"]
    update_rows(
        SegmentAggregate, [rows[k] for k in keys], ["data", "requests"], ("jsonb", "integer")
    )


def catch_up(stage_ids: Iterable[int] | None = None) -> None:
    """Before a read of window, stage or segment rows: fold what ingest had committed for
    these stages (for every stage when ``None``). One query when nothing is pending. A fold
    that fails is logged and the read goes on with the sums folded so far: the fold runs in
    a savepoint, so the caller's transaction goes on (an evaluation must not stop at a
    fold's failure; ingest's next fold or the next read retries it)."""
    pending = PendingSegments.objects.all()
    if stage_ids is not None:
        pending = pending.filter(stage_id__in=list(stage_ids))
    stages = list(pending.values_list("stage_id", flat=True).distinct())
    if not stages:
        return
    try:
        with transaction.atomic():
            fold(stages)
    except Exception:
        log.exception("fold failed for stages %s: read as folded so far", stages)


def stage_segments(stage_id: int) -> dict[tuple[str, str], dict[str, ArmAggregates]]:
    """A stage's segments: (dimension, value) -> {arm: ArmAggregates}, with everything
    ingest had committed for it when the read began (:func:`catch_up`)."""
    catch_up([stage_id])
    out: dict[tuple[str, str], dict[str, ArmAggregates]] = defaultdict(dict)
    for arm, dimension, value, data in SegmentAggregate.objects.filter(
        stage_id=stage_id
    ).values_list("arm", "dimension", "value", "data"):
        out[(dimension, value)][arm] = aggregation.from_json(data)
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
