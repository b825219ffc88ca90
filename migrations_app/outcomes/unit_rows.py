"""Each unit's running totals in a stage and arm (``UnitTotals`` rows), upserted by addition in
one statement per batch: the built-in sums (``aggregation.UnitTotals``) and the per-request
metrics' (``{metric: [n, sum]}``; a shadow stage's ``paired`` arm ``[n, candidate's sum,
control's sum]``), which the database adds key by key with ``turnout_add_sums``. Returns the
units' totals before and after, which their cluster sums are made of.

One row per unit holds both, so a batch with metrics writes as many rows as one without: a
row of its own per unit and metric cost about as much again as the unit's row
(bench/bench_ingest.py --metrics 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from migrations_app.models import UnitTotals as UnitTotalsRow
from migrations_app.outcomes import aggregation
from migrations_app.outcomes.store import upsert_adding

UnitKey = tuple[int, str, str]  # stage, arm, unit
MetricKey = tuple[int, str, str, str]  # stage, arm, unit, metric
# Some rows' keys and their totals before and after: the built-in ones (columns as
# ``aggregation.UnitTotals.values()``), or one metric's (n, sum, control's sum).
UnitMoves = tuple[list[UnitKey], npt.NDArray[np.float64], npt.NDArray[np.float64]]
MetricMoves = tuple[list[MetricKey], npt.NDArray[np.float64], npt.NDArray[np.float64]]

_FIELDS = tuple(name for name, _ in aggregation.UNIT_COLUMNS)
_TYPES = ("bigint", "text", "text", *(kind for _, kind in aggregation.UNIT_COLUMNS))
_ZERO = (0,) * len(_FIELDS)

# PostgreSQL's merge of two metric objects (migration 0027 creates it): a key of ``delta``
# absent from ``stored`` is added as it is, a key of both gets the elementwise sum (two or
# three numbers: [n, sum] or [n, sum, control's sum]). Sums go through float8 both ways, and
# jsonb keeps a float8's shortest exact text, so they add as Python adds them.
ADD_SUMS_SQL = """
CREATE OR REPLACE FUNCTION turnout_add_sums(stored jsonb, delta jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    name text;
    more jsonb;
    had jsonb;
BEGIN
    FOR name, more IN SELECT * FROM jsonb_each(delta) LOOP
        had := stored -> name;
        IF had IS NOT NULL THEN
            IF jsonb_array_length(more) = 3 OR jsonb_array_length(had) = 3 THEN
                more := jsonb_build_array(
                    (had ->> 0)::float8 + (more ->> 0)::float8,
                    (had ->> 1)::float8 + (more ->> 1)::float8,
                    coalesce((had ->> 2)::float8, 0) + coalesce((more ->> 2)::float8, 0));
            ELSE
                more := jsonb_build_array(
                    (had ->> 0)::float8 + (more ->> 0)::float8,
                    (had ->> 1)::float8 + (more ->> 1)::float8);
            END IF;
        END IF;
        stored := stored || jsonb_build_object(name, more);
    END LOOP;
    RETURN stored;
END $$
"""


def add_sums(stored: Mapping[str, Sequence[float]], delta: Mapping[str, Sequence[float]]) -> dict:
    """What ``turnout_add_sums`` does, in Python: SQLite's (the embedded mode) and the tests'."""
    out = {name: list(sums) for name, sums in stored.items()}
    for name, more in delta.items():
        had = out.get(name)
        if had is None:
            out[name] = list(more)
            continue
        width = max(len(had), len(more))
        had, more = [*had, 0.0][:width], [*more, 0.0][:width]
        out[name] = [float(a) + float(b) for a, b in zip(had, more, strict=True)]
    return out


def add_sums_json(stored: str | None, delta: str | None) -> str:
    """:func:`add_sums` over JSON text, as SQLite calls it."""
    return orjson.dumps(add_sums(_loads(stored) or {}, _loads(delta) or {})).decode()


def connect_sqlite(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created``: give an SQLite connection ``turnout_add_sums``."""
    if connection.vendor == "sqlite":
        connection.connection.create_function(
            "turnout_add_sums", 2, add_sums_json, deterministic=True
        )


def upsert(
    builtin: Mapping[UnitKey, Sequence[float]],
    metrics: Mapping[UnitKey, Mapping[str, Sequence[float]]],
) -> tuple[UnitMoves, MetricMoves]:
    """Add each unit's built-in change (``aggregation.UnitTotals.values()``) and metric sums to
    its row, creating the rows that are missing. Returns the built-in moves of the units in
    ``builtin`` and the moves of every (unit, metric) in ``metrics``: (n, sum, control's sum)
    before and after."""
    keys = builtin.keys() | metrics.keys()
    if not keys:
        return ([], _no_moves(len(_FIELDS)), _no_moves(len(_FIELDS))), (
            [],
            _no_moves(3),
            _no_moves(3),
        )
    # The metrics column only when some unit moves a metric: a batch without costs no merge.
    with_metrics = any(metrics.values())
    columns, types = _FIELDS, _TYPES
    if with_metrics:
        columns, types = (*_FIELDS, "metrics"), (*_TYPES, "jsonb")
    changes = {
        key: (*builtin.get(key, _ZERO), *((metrics.get(key, {}),) if with_metrics else ()))
        for key in keys
    }
    rows = upsert_adding(
        UnitTotalsRow._meta.db_table, ("stage_id", "arm", "unit"), columns, types, changes
    )
    width = len(_FIELDS)
    found: list[UnitKey] = []
    after: list[Any] = []
    metric_keys: list[MetricKey] = []
    metric_after: list[Any] = []
    metric_added: list[Any] = []
    for row in rows:
        key = (int(row[0]), row[1], row[2])
        if key in builtin:
            found.append(key)
            after.append(row[3 : 3 + width])
        moved = metrics.get(key)
        if moved:
            stored = _loads(row[3 + width])
            metric_keys += [(*key, name) for name in moved]
            metric_after += [stored[name] for name in moved]
            metric_added += moved.values()
    new_totals = np.array(after, dtype=np.float64).reshape(-1, width)
    added_totals = np.array([builtin[key] for key in found], dtype=np.float64).reshape(-1, width)
    new_sums = _three_columns(metric_after)
    return (
        (found, new_totals - added_totals, new_totals),
        (metric_keys, new_sums - _three_columns(metric_added), new_sums),
    )


def _three_columns(sums: list[Any]) -> npt.NDArray[np.float64]:
    """Sums of two numbers ([n, sum]) or three ([n, sum, control's sum]) as rows of three."""
    out = np.zeros((len(sums), 3))
    if len({len(s) for s in sums}) == 1:
        out[:, : len(sums[0])] = np.array(sums, dtype=np.float64)
    else:
        for i, s in enumerate(sums):
            out[i, : len(s)] = s
    return out


def _loads(value: Any) -> Any:
    # psycopg hands Django's connections jsonb as text (Django parses JSONField itself).
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _no_moves(width: int) -> npt.NDArray[np.float64]:
    return np.zeros((0, width))
