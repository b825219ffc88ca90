"""Each unit's running totals in a stage and arm (``UnitTotals`` rows), upserted by addition in
one statement per batch: the built-in sums (``aggregation.UnitTotals``) and the per-request
metrics' (``{metric: [n, sum]}``; a shadow stage's ``paired`` arm ``[n, candidate's sum,
control's sum]``), which the upsert adds key by key (``store.upsert_adding``). Returns the
units' totals before and after, which their cluster sums are made of.

One row per unit holds both, so a batch with metrics writes as many rows as one without: a
row of its own per unit and metric cost about as much again as the unit's row
(bench/bench_ingest.py --metrics 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from migrations_app.models import UnitTotals as UnitTotalsRow
from migrations_app.outcomes import aggregation
from migrations_app.outcomes.store import loads, sums_layout, upsert_adding

UnitKey = tuple[int, str, str]  # stage, arm, unit
MetricKey = tuple[int, str, str, str]  # stage, arm, unit, metric
# Some rows' keys and their totals before and after: the built-in ones (columns as
# ``aggregation.UnitTotals``), or one metric's (n, sum, control's sum).
UnitMoves = tuple[list[UnitKey], npt.NDArray[np.float64], npt.NDArray[np.float64]]
MetricMoves = tuple[list[MetricKey], npt.NDArray[np.float64], npt.NDArray[np.float64]]

_FIELDS = tuple(name for name, _ in aggregation.UNIT_COLUMNS)
_TYPES = ("bigint", "text", "text", *(kind for _, kind in aggregation.UNIT_COLUMNS))
_ZERO = (0,) * len(_FIELDS)


def upsert(
    builtin: Mapping[UnitKey, Sequence[float]],
    metrics: Mapping[UnitKey, Mapping[str, Sequence[float]]],
) -> tuple[UnitMoves, MetricMoves]:
    """Add each unit's built-in change (``aggregation.UnitTotals``) and metric sums to
    its row, creating the rows that are missing. Returns the built-in moves of the units in
    ``builtin`` and the moves of every (unit, metric) in ``metrics``: (n, sum, control's sum)
    before and after."""
    keys = builtin.keys() | metrics.keys()
    # The metrics column only when some unit moves a metric: a batch without costs no merge.
    layout = sums_layout(metrics.values()) if any(metrics.values()) else None
    columns, types = _FIELDS, _TYPES
    if layout:
        columns, types = (*_FIELDS, "metrics"), (*_TYPES, "jsonb")
    changes = {
        key: (*builtin.get(key, _ZERO), *((metrics.get(key, {}),) if layout else ()))
        for key in keys
    }
    rows = upsert_adding(
        UnitTotalsRow._meta.db_table, ("stage_id", "arm", "unit"), columns, types, changes, layout
    )
    width = len(_FIELDS)
    end = 3 + width
    found: list[UnitKey] = []
    after: list[Any] = []
    # A row's metric sums come back as an array, ``wide`` numbers per name of the batch:
    # each moved (unit, metric) is found at its offset among them.
    names, _, wide = layout or ((), 0, 0)
    offset = {name: i * wide for i, name in enumerate(names)}
    span = len(names) * wide
    metric_keys: list[MetricKey] = []
    metric_after: list[Any] = []
    at: list[int] = []
    metric_added: list[Any] = []
    for row in rows:  # hundreds of rows a batch: plain tuples, one lookup each
        key = row[:3]
        if key in builtin:
            found.append(key)
            after.append(row[3:end])
        moved = metrics.get(key)
        if moved:
            base = len(metric_after) * span
            metric_after.append(loads(row[end]))
            for name, sums in moved.items():
                metric_keys.append((*key, name))
                at.append(base + offset[name])
                metric_added.append(sums)
    new_totals = _array(after, width)
    added_totals = _array([builtin[key] for key in found], width)
    new_sums = np.zeros((len(at), 3))
    if at:
        stored = _array(metric_after, span).reshape(-1)
        new_sums[:, :wide] = stored[np.add.outer(np.asarray(at, dtype=np.intp), np.arange(wide))]
    return (
        (found, new_totals - added_totals, new_totals),
        (metric_keys, new_sums - _three_columns(metric_added), new_sums),
    )


def _three_columns(sums: list[Any]) -> npt.NDArray[np.float64]:
    """Sums of two numbers ([n, sum]) or three ([n, sum, control's sum]) as rows of three."""
    out = np.zeros((len(sums), 3))
    if len({len(s) for s in sums}) == 1:
        out[:, : len(sums[0])] = _array(sums, len(sums[0]))
    else:
        for i, s in enumerate(sums):
            out[i, : len(s)] = s
    return out


def _array(rows: Sequence[Sequence[float]], width: int) -> npt.NDArray[np.float64]:
    """Rows of ``width`` numbers as a 2-D array: read flat, about twice as fast as
    ``np.array`` of the rows, which checks each row's length and type."""
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.float64, count=len(rows) * width)
    return flat.reshape(-1, width)
