"""Per-request metrics rolled up, in the caller's transaction: what they add to each unit's
running sums per metric (``UnitTotals.metrics``, upserted with the unit's other totals by
unit_rows.py) and to the windows' and stages' ``ArmAggregates.metrics``.

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

from migrations_app.guardrails.stats import ArmAggregates, ClusterSums, MetricSums, PairedSums
from migrations_app.outcomes import unit_rows
from migrations_app.outcomes.aggregation import (
    OutcomeFacts,
    cluster_change,
    grouped_cluster_change,
)

WindowKey = tuple[int, datetime, str]  # stage, window, arm


def value_sums(values: Sequence[float]) -> MetricSums:
    """Count, sum and sum of squares of some values (no cluster sums: see below)."""
    return MetricSums(len(values), math.fsum(values), math.fsum(v * v for v in values))


class ArmValues:
    """The metric values of some outcomes and late values, split the two ways they are rolled
    up: the values' sums per window and metric (:attr:`windows`), and each unit's change per
    metric (:attr:`units`, ``{(stage, arm, unit): {metric: [n, sum]}}``, for
    ``unit_rows.upsert``), whose cluster-sum change :meth:`deltas` books in one window of
    the unit's here (its first outcome's, as for the built-in totals: only a stage's sum of
    windows is ever tested).

    The outcomes come grouped as rollup.aggregate groups them, by window and by unit (with the
    unit's window): each value costs a lookup by its metric's name, and a unit with one
    outcome in the batch (most of them) its values as they are. ``late``: values counted on
    outcomes stored before, ``(window key, unit, metric, value)``."""

    def __init__(
        self,
        by_window: Mapping[WindowKey, Sequence[OutcomeFacts]],
        by_unit: Mapping[unit_rows.UnitKey, tuple[Sequence[OutcomeFacts], WindowKey]],
        late: Sequence[tuple[WindowKey, str, str, float]] = (),
    ) -> None:
        windows: dict[tuple[WindowKey, str], list[float]] = {}
        for wkey, rows in by_window.items():
            for metric, values in _by_name(rows).items():
                windows[(wkey, metric)] = values
        # Late values by unit: such a unit's sums are made of its values in the batch and them.
        late_by_unit: dict[unit_rows.UnitKey, list[tuple[WindowKey, str, float]]] = {}
        for wkey, unit, metric, value in late:
            windows.setdefault((wkey, metric), []).append(value)
            late_by_unit.setdefault((wkey[0], wkey[2], unit), []).append((wkey, metric, value))
        units: dict[unit_rows.UnitKey, dict[str, list[float]]] = {}
        first: dict[unit_rows.UnitKey, WindowKey] = {}
        for ukey, (rows, wkey) in by_unit.items():
            extra = late_by_unit.pop(ukey, ())
            if len(rows) == 1 and not extra:
                if rows[0].metrics:  # checked values are floats: the sum of one is itself
                    units[ukey] = {metric: [1, value] for metric, value in rows[0].metrics}
                    first[ukey] = wkey
                continue
            named = _by_name(rows)
            for _, metric, value in extra:
                named.setdefault(metric, []).append(value)
            if named:
                units[ukey] = _unit_sums(named)
                first[ukey] = wkey
        for ukey, extra in late_by_unit.items():  # units with late values only
            named = {}
            for _, metric, value in extra:
                named.setdefault(metric, []).append(value)
            units[ukey] = _unit_sums(named)
            first[ukey] = extra[0][0]
        self.first = first
        self.windows = windows
        self.units = units

    def deltas(self, moves: unit_rows.MetricMoves) -> dict[WindowKey, list[ArmAggregates]]:
        """The window deltas, one per window: each metric's values' sums there, with the
        cluster-sum changes of the units booked there (``moves``: what ``unit_rows.upsert``
        returned for :attr:`units`)."""
        sums: dict[WindowKey, dict[str, MetricSums]] = defaultdict(dict)
        for (wkey, metric), values in self.windows.items():
            sums[wkey][metric] = value_sums(values)
        keys, old, new = moves
        groups: dict[tuple[WindowKey, str], list[int]] = defaultdict(list)
        first = self.first
        for i, key in enumerate(keys):
            groups[(first[key[:3]], key[3])].append(i)
        moved = grouped_cluster_change(old[:, 1], old[:, 0], new[:, 1], new[:, 0], groups)
        for (wkey, metric), clusters in moved.items():
            found = sums[wkey].get(metric)
            sums[wkey][metric] = (
                MetricSums(clusters=clusters) if found is None else _with(found, clusters)
            )
        return {wkey: [ArmAggregates(metrics=named)] for wkey, named in sums.items()}


def _by_name(rows: Sequence[OutcomeFacts]) -> dict[str, list[float]]:
    """The metric values some outcomes carry, by metric (in the order met)."""
    named: dict[str, list[float]] = {}
    for facts in rows:
        for metric, value in facts.metrics:
            seen = named.get(metric)
            if seen is None:
                named[metric] = [value]
            else:
                seen.append(value)
    return named


def _unit_sums(named: Mapping[str, list[float]]) -> dict[str, list[float]]:
    return {metric: [len(values), math.fsum(values)] for metric, values in named.items()}


def paired_deltas(
    stage_id: int, pairs: Sequence[tuple[str, Mapping[str, tuple[float, float]]]]
) -> dict[str, PairedSums]:
    """A shadow stage's pairs ``(unit, {metric: (control value, candidate value)})`` as
    :class:`PairedSums` deltas per metric: both arms' and the difference's sums, with each
    unit's cluster-sum change (its ``paired`` row holds the unit's control and candidate
    sums over its pairs)."""
    values: dict[str, list[tuple[float, float]]] = defaultdict(list)
    changes: dict[unit_rows.UnitKey, dict[str, list[float]]] = defaultdict(dict)
    for unit, checks in pairs:
        for metric, (a, b) in checks.items():
            values[metric].append((a, b))
            change = changes[(stage_id, "paired", unit)].setdefault(metric, [0, 0.0, 0.0])
            change[0] += 1
            change[1] += b
            change[2] += a
    if not values:
        return {}
    _, (keys, old, new) = unit_rows.upsert({}, changes)
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
