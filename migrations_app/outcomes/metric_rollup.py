"""Per-request metrics rolled up, in the caller's transaction: each unit's running sums per metric
(``MetricUnitTotals``) and what they add to the windows' and stages' ``ArmAggregates.metrics``.

A unit's change becomes a cluster-sum delta as for the built-in metrics ((Y+y)^2 - Y^2 and so
on, Y the unit's sum of values and N its count), so the sums stay additive and the
statistics get the unit-level variance. Shadow pairs go through :func:`paired_deltas`, with
the unit's control and candidate sums and their difference.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from migrations_app.guardrails.stats import ArmAggregates, ClusterSums, MetricSums, PairedSums
from migrations_app.models import MetricUnitTotals
from migrations_app.outcomes.aggregation import cluster_change, grouped_cluster_change
from migrations_app.outcomes.store import upsert_adding

WindowKey = tuple[int, datetime, str]  # stage, window, arm
UnitKey = tuple[int, str, str, str]  # stage, arm, unit, metric
# A unit's change in one metric: values, their sum, (paired only) control's sum.
Change = tuple[int, float, float]
# The units' sums a batch moved: their keys, and each one's (n, total, control_total) before
# and after (:func:`upsert_units`).
Moves = tuple[list[UnitKey], np.ndarray, np.ndarray]

_COLUMNS = ("stage_id", "arm", "unit", "metric", "n", "total", "control_total")
_TYPES = ("bigint", "text", "text", "text", "integer", "float8", "float8")


def value_sums(values: Sequence[float]) -> MetricSums:
    """Count, sum and sum of squares of some values (no cluster sums: see below)."""
    return MetricSums(len(values), math.fsum(values), math.fsum(v * v for v in values))


def upsert_units(changes: Mapping[UnitKey, Change]) -> Moves:
    """Add each change to its unit's sums (``store.upsert_adding``). Returns the keys and each
    one's (n, total, control_total) before and after."""
    if not changes:
        return [], np.zeros((0, 3)), np.zeros((0, 3))
    rows = upsert_adding(
        MetricUnitTotals._meta.db_table, _COLUMNS[:4], _COLUMNS[4:], _TYPES, changes
    )
    found: list[UnitKey] = [(int(row[0]), row[1], row[2], row[3]) for row in rows]
    after = [(float(row[4]), float(row[5]), float(row[6])) for row in rows]
    new = np.array(after, dtype=np.float64).reshape(-1, 3)
    added = np.array([changes[key] for key in found], dtype=np.float64).reshape(-1, 3)
    return found, new - added, new


def arm_deltas(
    values: Sequence[tuple[WindowKey, str, str, float]],
) -> tuple[dict[WindowKey, list[ArmAggregates]], Moves]:
    """The window deltas of some metric values ``(window key, unit, metric, value)``: the
    values' sums per window and metric, and each unit's cluster-sum change, booked in the
    window of its first value here (only a stage's sum of windows is ever tested). Also the
    units' moves, which the segments' cluster sums are made of (segment_rollup.py)."""
    out: dict[WindowKey, list[ArmAggregates]] = defaultdict(list)
    if not values:
        return out, upsert_units({})
    per_window: dict[WindowKey, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    changes: dict[UnitKey, list[float]] = defaultdict(list)
    first: dict[UnitKey, WindowKey] = {}
    for wkey, unit, metric, value in values:
        per_window[wkey][metric].append(value)
        ukey = (wkey[0], wkey[2], unit, metric)
        changes[ukey].append(value)
        first.setdefault(ukey, wkey)
    for wkey, named in per_window.items():
        out[wkey].append(ArmAggregates(metrics={m: value_sums(v) for m, v in named.items()}))
    keys, old, new = upsert_units({key: (len(v), math.fsum(v), 0.0) for key, v in changes.items()})
    groups: dict[tuple[WindowKey, str], list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[(first[key], key[3])].append(i)
    moved = grouped_cluster_change(old[:, 1], old[:, 0], new[:, 1], new[:, 0], groups)
    for (wkey, metric), clusters in moved.items():
        out[wkey].append(ArmAggregates(metrics={metric: MetricSums(clusters=clusters)}))
    return out, (keys, old, new)


def paired_deltas(
    stage_id: int, pairs: Sequence[tuple[str, Mapping[str, tuple[float, float]]]]
) -> dict[str, PairedSums]:
    """A shadow stage's pairs ``(unit, {metric: (control value, candidate value)})`` as
    :class:`PairedSums` deltas per metric: both arms' and the difference's sums, with each
    unit's cluster-sum change (its ``paired`` row holds the unit's control and candidate
    sums over its pairs)."""
    values: dict[str, list[tuple[float, float]]] = defaultdict(list)
    changes: dict[UnitKey, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for unit, checks in pairs:
        for metric, (a, b) in checks.items():
            values[metric].append((a, b))
            change = changes[(stage_id, "paired", unit, metric)]
            change[0] += 1
            change[1] += b
            change[2] += a
    if not values:
        return {}
    keys, old, new = upsert_units({k: (int(v[0]), v[1], v[2]) for k, v in changes.items()})
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        rows_of[key[3]].append(i)
    out: dict[str, PairedSums] = {}
    for metric, items in values.items():
        a = [x for x, _ in items]
        b = [y for _, y in items]
        d = [y - x for x, y in items]
        o, n = old[rows_of[metric]], new[rows_of[metric]]
        out[metric] = PairedSums(
            control=_with(value_sums(a), cluster_change(o[:, 2], o[:, 0], n[:, 2], n[:, 0])),
            candidate=_with(value_sums(b), cluster_change(o[:, 1], o[:, 0], n[:, 1], n[:, 0])),
            difference=_with(
                value_sums(d),
                cluster_change(o[:, 1] - o[:, 2], o[:, 0], n[:, 1] - n[:, 2], n[:, 0]),
            ),
        )
    return out


def _with(sums: MetricSums, clusters: ClusterSums) -> MetricSums:
    return MetricSums(sums.n, sums.total, sums.sum_sq, clusters)


def merge_paired_json(stored: Mapping[str, Any] | None, delta: Mapping[str, PairedSums]) -> dict:
    """A shadow aggregate's ``metrics`` plus the paired deltas, in storage form."""
    out = dict(stored or {})
    for metric, sums in delta.items():
        out[metric] = PairedSums.merge((PairedSums.from_dict(out.get(metric)), sums)).to_dict()
    return out
