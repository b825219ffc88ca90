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
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from django.db import connection

from migrations_app.guardrails.segments import MAX_TOP_K, OTHER
from migrations_app.guardrails.stats import ArmAggregates, ClusterSums, MetricSums
from migrations_app.models import SegmentAggregate
from migrations_app.outcomes import aggregation, metric_rollup
from migrations_app.outcomes.aggregation import OutcomeFacts
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
    the :data:`CAPACITY` is free (first come, in key order), else ``other``. The stored
    values are read only for the groups with a value this process has not seen stored while
    the group had room (:data:`_seen`)."""
    if len(_seen) > 10_000:
        _seen.clear()  # bounded, whatever the number of stages
    # This batch's own view of its groups: a web process's other threads share _seen and may
    # clear it between two lookups (a group gone from it would be placed as if empty, past
    # the capacity, or be a KeyError).
    known = {key[:3]: _seen.get(key[:3]) for key in keys}
    unknown = {key[:3] for key in keys if key[3] != OTHER and _unseen(known[key[:3]], key[3])}
    if unknown:
        _lock_groups(unknown)
        found: dict[tuple[int, str, str], set[str]] = {group: set() for group in unknown}
        for s, a, d, v in SegmentAggregate.objects.filter(
            stage_id__in={g[0] for g in unknown}, dimension__in={g[2] for g in unknown}
        ).values_list("stage_id", "arm", "dimension", "value"):
            if (s, a, d) in found and v != OTHER:
                found[(s, a, d)].add(v)
        for group, values in found.items():
            known[group] = _seen[group] = frozenset(values)
    stored = {group: set(values or ()) for group, values in known.items()}
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


# Per process, each (stage, arm, dimension)'s values with rows of their own, as last read
# (``other`` aside). A row lives as long as its stage, so a value seen stored stays stored
# and a full group (:data:`CAPACITY` values) stays full: a batch whose values were all seen
# stored, or whose groups were seen full, is placed without reading. (The rows a batch
# creates are read by the next batch that needs them.)
_seen: dict[tuple[int, str, str], frozenset[str]] = {}


def _lock_groups(groups: set[tuple[int, str, str]]) -> None:
    """Serialise the batches that place values in the same groups with room, until they
    commit: each reads the values the others stored, so a group never gets more than
    :data:`CAPACITY` rows of its own whatever the number of batches in flight. A transaction
    advisory lock per group (by a CRC of its key: two groups sharing one only wait for each
    other), taken in key order after the unit totals and before the window rows, so every
    ingest transaction takes its locks in the same order. Only while groups fill up: a
    batch of values already seen stored, or of full groups, takes none. (SQLite, the embedded
    mode, runs one writer at a time.)"""
    if connection.vendor != "postgresql":
        return
    keys = sorted({zlib.crc32(f"{s}\x00{a}\x00{d}".encode()) - 2**31 for s, a, d in groups})
    with connection.cursor() as cursor:
        for key in keys:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_SPACE, key])


# The first key of the placement locks (pg_advisory_xact_lock's two-int form): "SEG".
_LOCK_SPACE = 0x534547


def _unseen(seen: frozenset[str] | None, value: str) -> bool:
    return seen is None or (value not in seen and len(seen) < CAPACITY)


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


def stage_segments(stage_id: int) -> dict[tuple[str, str], dict[str, ArmAggregates]]:
    """A stage's stored segments: (dimension, value) -> {arm: ArmAggregates}."""
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
