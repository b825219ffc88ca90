"""Segments in the rollup (issue 16, item 6): a stage's running sums per arm and segment
(``SegmentAggregate``), in the ingest's transaction, after the unit totals.

Each outcome carrying segment values ({dimension: value}) adds its counts, buckets and sums to
its segment's row per dimension, and its unit's cluster-sum change to the segment its unit is
in (a unit's segment is the one its first outcome in the batch names: units do not move
between tenants or languages, and if one does, its variance is booked where it started).

Bounded whatever the cardinality: per (stage, arm, dimension) at most :data:`CAPACITY` values
get rows of their own; a value arriving once they are taken adds to the ``other`` row. The
evaluation keeps the busiest ``top_k`` of the stored values and folds the rest into ``other``
(guardrails/segments.py), so a plan sees at most ``top_k + 1`` segments per dimension and the
table holds at most ``CAPACITY + 1`` rows per stage, arm and dimension. Feedback and
per-request metrics are not kept per segment (satisfaction and a metric's guardrails are
tested on the population only).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from migrations_app.guardrails.segments import MAX_TOP_K, OTHER
from migrations_app.guardrails.stats import ArmAggregates
from migrations_app.models import SegmentAggregate
from migrations_app.outcomes import aggregation
from migrations_app.outcomes.aggregation import OutcomeFacts
from migrations_app.outcomes.event_checks import Invalid, unstorable_char
from migrations_app.outcomes.store import fast_path, lock_or_create, update_rows

# Values per (stage, arm, dimension) with rows of their own: twice the largest top_k, so the
# busiest values are among them unless they first appear after this many others.
CAPACITY = 2 * MAX_TOP_K

Key = tuple[int, str, str, str]  # stage, arm, dimension, value


def segment_deltas(
    outcomes: Sequence[tuple[int, OutcomeFacts]],
    unit_keys: Sequence[tuple[int, str, str]],
    old: npt.NDArray[np.float64],
    new: npt.NDArray[np.float64],
) -> dict[Key, ArmAggregates]:
    """Per stored segment, what the batch adds: its outcomes' sums, and its units'
    cluster-sum changes (``unit_keys`` and ``old`` / ``new`` as the unit totals' upsert
    returned them). Values are placed first (their own row, or ``other`` once
    :data:`CAPACITY` are taken), so the work is per stored row, not per distinct value."""
    raw = {
        (stage_id, facts.arm, dimension, value)
        for stage_id, facts in outcomes
        for dimension, value in facts.segments
    }
    if not raw:
        return {}
    place = _placement(raw)
    rows: dict[Key, list[int]] = defaultdict(list)
    unit_segments: dict[tuple[int, str, str], list[Key]] = {}
    for i, (stage_id, facts) in enumerate(outcomes):
        if not facts.segments:
            continue
        keys = [place[(stage_id, facts.arm, d, v)] for d, v in facts.segments]
        for key in keys:
            rows[key].append(i)
        unit_segments.setdefault((stage_id, facts.arm, facts.unit), keys)
    moves: dict[Key, list[int]] = defaultdict(list)
    for i, ukey in enumerate(unit_keys):
        for key in unit_segments.get(ukey, ()):
            moves[key].append(i)
    clusters = aggregation.grouped_cluster_deltas(old, new, moves)
    # Each outcome is in one row per dimension: its logs and sketch keys are taken once.
    outcome_deltas = aggregation.grouped_outcome_deltas([f for _, f in outcomes], rows)
    # Each unit's segments are among its outcomes' (``rows``), and the two parts are
    # disjoint (an outcome delta has no cluster sums, a cluster delta nothing else): the
    # cluster sums are set into the outcome delta, not summed field by field with it.
    deltas: dict[Key, ArmAggregates] = {}
    for key, delta in outcome_deltas.items():
        moved = clusters.get(key)
        if moved is not None:
            delta = replace(delta, **{name: getattr(moved, name) for name in _CLUSTERS})
        deltas[key] = delta
    return deltas


# The cluster sums a unit's move adds (aggregation.cluster_deltas sets these and no other).
_CLUSTERS = tuple(f.name for f in fields(ArmAggregates) if f.name.endswith("_clusters"))


def _placement(keys: set[Key]) -> dict[Key, Key]:
    """Where each (stage, arm, dimension, value) adds: its own row when it has one or one of
    the :data:`CAPACITY` is free (first come, in key order), else ``other``."""
    stored: dict[tuple[int, str, str], set[str]] = defaultdict(set)
    for s, a, d, v in SegmentAggregate.objects.filter(
        stage_id__in={k[0] for k in keys}
    ).values_list("stage_id", "arm", "dimension", "value"):
        stored[(s, a, d)].add(v)
    place: dict[Key, Key] = {}
    for key in sorted(keys):
        group, value = key[:3], key[3]
        have = stored[group]
        if value not in have and value != OTHER:
            if len(have - {OTHER}) >= CAPACITY:
                value = OTHER
            else:
                have.add(value)
        place[key] = (*group, value)
    return place


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
