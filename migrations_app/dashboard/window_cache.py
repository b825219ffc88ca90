"""The window cache: the chart windows on PostgreSQL, a stage's window rows parsed once per clock hour, kept
in the process and re-read only when a row of that hour changes; bins merged with numpy.

Why a cache, and of rows rather than bins: a week of minute windows is 20,160 rows whose
bucket maps live in jsonb. Reading them costs PostgreSQL ~100-250 ms of jsonb work however
it is asked (text output, ``jsonb_each`` and a GROUP BY per bucket key measured slower
still), and Python as much again to parse them, on every page and on every 3-second poll.
Merged bins cannot be kept: the range starts at a minute that moves with the clock, so the
bins of the last 7 days move every minute. Rows do not: an hour of a stage is read once,
then only the current hour (and any hour a late batch touched) is read again.

Whether an hour changed is asked of PostgreSQL in one small query per page (no jsonb read):
per stage and hour, the row count, the sum of ``xmin`` (every committed row version carries
the id of the transaction that wrote it, so any write to any row of the hour by anyone moves
the sum: the row-version token Npgsql uses for optimistic concurrency) and the sums of
``requests`` and ``feedback_n`` (every outcome and every feedback adds to one of them: this
catches writes inside the reader's own transaction, where ``xmin`` does not move).

The figures are those of the portable path (``selectors.window_series_portable``), which the
tests hold this path to: integer sums exact (numpy's float accumulator is exact below 2**53),
float sums exactly rounded (``math.fsum``, as ``ArmAggregates.merge``), bucket and error-kind
keys kept when present with a zero count, as the portable path keeps them.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from django.db import connection

from migrations_app.guardrails.stats import ArmAggregates, Buckets

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

BLOCK_SECONDS = 3600
# Cached bucket entries (key, count) across all blocks, about 10 bytes each with the rows'
# arrays: ~30 MB at most per web process; a week of the bench's plan is 1.4 million.
MAX_CACHED_PAIRS = 3_000_000
# Bins x distinct keys merged in one dense table at most (8 bytes a cell, twice).
DENSE_CELLS = 2_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = 1_000_000

_TABLE = "migrations_app_windowaggregate"
# One statement (one snapshot, one round trip): the fingerprint of every hour of the stages
# in the range, then the rows of the hours whose fingerprint is not the one the process
# holds (an hour's fingerprint line has a NULL window). The rows carry only the parts a
# chart reads, as one small JSON text each; cluster sums and log sums stay in the database.
_SQL = f"""
WITH fp AS (
    SELECT stage_id, floor(extract(epoch FROM "window") / {BLOCK_SECONDS})::bigint AS block,
           count(*) AS n, sum(xmin::text::bigint) AS x, sum(requests) AS r,
           sum(feedback_n) AS f
    FROM {_TABLE}
    WHERE stage_id = ANY(%s) AND "window" >= %s AND "window" < %s
    GROUP BY 1, 2
), held AS (
    SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::numeric[],
                         %s::bigint[], %s::bigint[]) AS h(stage_id, block, n, x, r, f)
), stale AS (
    SELECT fp.stage_id, fp.block FROM fp
    LEFT JOIN held h ON (h.stage_id, h.block, h.n, h.x, h.r, h.f)
                      = (fp.stage_id, fp.block, fp.n, fp.x, fp.r, fp.f)
    WHERE h.stage_id IS NULL
)
SELECT stage_id, block, NULL::bigint, NULL::text, NULL::bigint, NULL::integer, NULL::integer,
       NULL::integer, NULL::double precision, NULL::integer, NULL::double precision, NULL::text
FROM fp
UNION ALL
SELECT s.stage_id, s.block, w.*
FROM stale s
CROSS JOIN LATERAL (  -- an index range scan per stale hour (window_unique)
    SELECT (extract(epoch FROM "window") * {_US})::bigint, arm, xmin::text::bigint,
           requests, errors, cost_n, cost_sum, feedback_n, feedback_sum,
           jsonb_build_array(data->'errors_by_kind', data->'latency'->'counts',
                             data->'latency'->'zero', data->'ttft'->'counts',
                             data->'ttft'->'zero')::text
    FROM {_TABLE}
    WHERE stage_id = s.stage_id AND "window" >= to_timestamp(s.block * {BLOCK_SECONDS})
      AND "window" < to_timestamp((s.block + 1) * {BLOCK_SECONDS})
    OFFSET 0  -- kept a subquery: flattened, the planner merge-joins every row to every hour
) w
"""

Fingerprint = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class _Sketch:
    """One bucket map per row, flattened: row i owns the lengths[i] keys after row i - 1's."""

    lengths: Ints
    # 32 bits are plenty (keys stay within +-40,000 for any double; counts are per minute)
    # and halve the cache.
    keys: npt.NDArray[np.int32]
    counts: npt.NDArray[np.int32]
    zero: Ints


@dataclass(frozen=True, slots=True)
class _Block:
    """The window rows of one stage in one clock hour, in (window, arm) order."""

    fingerprint: Fingerprint
    at_us: Ints  # window start, microseconds since the epoch
    arm: Ints  # index into arms
    arms: Sequence[str]
    ints: Ints  # columns: requests, errors, cost_n, feedback_n
    floats: Floats  # columns: cost_sum, feedback_sum
    latency: _Sketch
    ttft: _Sketch
    kind_rows: Ints  # error kinds: (row, name, count) triples, flattened
    kind_names: Sequence[str]
    kind_counts: Ints

    @property
    def pairs(self) -> int:
        return len(self.at_us) + len(self.latency.keys) + len(self.ttft.keys)


class _SketchBuilder:
    __slots__ = ("keys", "counts", "lengths", "zero")

    def __init__(self) -> None:
        self.keys: list[str] = []  # as stored: decimal strings, parsed all at once
        self.counts: list[int] = []
        self.lengths: list[int] = []
        self.zero: list[int] = []

    def add(self, counts: dict[str, int] | None, zero: int | None) -> None:
        if counts:
            self.keys.extend(counts)
            self.counts.extend(counts.values())
            self.lengths.append(len(counts))
        else:
            self.lengths.append(0)
        self.zero.append(zero or 0)

    def build(self) -> _Sketch:
        return _Sketch(
            lengths=np.array(self.lengths, dtype=np.int64),
            # One C parse of the joined keys: ~30x int() per key (a week is 1.4 million).
            keys=np.fromstring(",".join(self.keys), dtype=np.int32, sep=",")
            if self.keys
            else np.zeros(0, dtype=np.int32),
            counts=np.array(self.counts, dtype=np.int32),
            zero=np.array(self.zero, dtype=np.int64),
        )


def _build_block(rows: Sequence[tuple[Any, ...]]) -> _Block:
    at_us, arm_index, ints, floats = [], [], [], []
    arms: dict[str, int] = {}
    latency, ttft = _SketchBuilder(), _SketchBuilder()
    kind_rows: list[int] = []
    kind_names: list[str] = []
    kind_counts: list[int] = []
    xmin_sum = requests = feedback = 0
    for i, (_, _, at, arm, xmin, req, err, cost_n, cost_sum, fb_n, fb_sum, parts) in enumerate(
        rows
    ):  # fmt: skip
        kinds, lat, lat_zero, tt, tt_zero = orjson.loads(parts)
        at_us.append(at)
        arm_index.append(arms.setdefault(arm, len(arms)))
        ints.append((req, err, cost_n, fb_n))
        floats.append((cost_sum, fb_sum))
        latency.add(lat, lat_zero)
        ttft.add(tt, tt_zero)
        if kinds:
            for name, count in kinds.items():
                kind_rows.append(i)
                kind_names.append(name)
                kind_counts.append(count)
        xmin_sum += xmin
        requests += req
        feedback += fb_n
    return _Block(
        fingerprint=(len(rows), xmin_sum, requests, feedback),
        at_us=np.array(at_us, dtype=np.int64),
        arm=np.array(arm_index, dtype=np.int64),
        arms=tuple(arms),
        ints=np.array(ints, dtype=np.int64).reshape(-1, 4),
        floats=np.array(floats, dtype=np.float64).reshape(-1, 2),
        latency=latency.build(),
        ttft=ttft.build(),
        kind_rows=np.array(kind_rows, dtype=np.int64),
        kind_names=kind_names,
        kind_counts=np.array(kind_counts, dtype=np.int64),
    )


class _Cache:
    """Blocks by (stage, hour), least recently used dropped past MAX_CACHED_PAIRS. Shared by
    a process's threads; a block is immutable, so only the map needs the lock."""

    def __init__(self, max_pairs: int) -> None:
        self.max_pairs = max_pairs
        self._blocks: OrderedDict[tuple[int, int], _Block] = OrderedDict()
        self._pairs = 0
        self._lock = threading.Lock()

    def held(self, stage_ids: Sequence[int], blocks: range) -> dict[tuple[int, int], _Block]:
        """The blocks held for these stages and hours (marked as just used)."""
        out = {}
        with self._lock:
            for stage_id in stage_ids:
                for block in blocks:
                    key = (stage_id, block)
                    found = self._blocks.get(key)
                    if found is not None:
                        self._blocks.move_to_end(key)
                        out[key] = found
        return out

    def put(self, key: tuple[int, int], block: _Block) -> None:
        with self._lock:
            old = self._blocks.pop(key, None)
            if old is not None:
                self._pairs -= old.pairs
            self._blocks[key] = block
            self._pairs += block.pairs
            while self._pairs > self.max_pairs and len(self._blocks) > 1:
                _, dropped = self._blocks.popitem(last=False)
                self._pairs -= dropped.pairs

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._pairs = 0

    def __len__(self) -> int:
        return len(self._blocks)


CACHE = _Cache(MAX_CACHED_PAIRS)


def _blocks(stage_ids: Sequence[int], since: datetime, until: datetime) -> list[_Block]:
    """The blocks of the hours [since, until) touches: the process's own where their rows
    have not changed since, read otherwise. One query."""
    # Whole hours, as the blocks hold them (a part of an hour would never match its block).
    hour = timedelta(seconds=BLOCK_SECONDS)
    first = _EPOCH + (since - _EPOCH) // hour * hour
    last = _EPOCH - (_EPOCH - until) // hour * hour
    held = CACHE.held(stage_ids, range((first - _EPOCH) // hour, (last - _EPOCH) // hour))
    columns: list[list[int]] = [[] for _ in range(6)]
    for key, cached in held.items():
        for column, value in zip(columns, (*key, *cached.fingerprint), strict=True):
            column.append(value)
    # The planner overestimates the hours (it has no statistics on the hour of a window),
    # costs the statement past jit_above_cost and spends ~300 ms compiling it: JIT off for
    # this statement (SET LOCAL, in the statement's own implicit transaction; to the end of
    # the caller's if there is one). Two statements in one call needs client-side binding,
    # Django's default; with server-side binding the statement runs as it is.
    sql = _SQL
    if not connection.settings_dict.get("OPTIONS", {}).get("server_side_binding"):
        sql = "SET LOCAL jit = off;\n" + _SQL
    with connection.cursor() as cursor:
        cursor.execute(sql, [list(stage_ids), first, last, *columns])
        if sql is not _SQL:
            cursor.nextset()
        rows = cursor.fetchall()
    # No ORDER BY: the figures do not depend on the order of rows within an hour, and UNION
    # ALL promises no order between its parts (an hour's rows may come before its line).
    hours: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
    for row in rows:
        block_rows = hours.setdefault((row[0], row[1]), [])
        if row[2] is not None:  # not the hour's fingerprint line: one of its rows
            block_rows.append(row)
    out = []
    for key in sorted(hours):
        if hours[key]:  # its rows came back: the held block (if any) is stale
            block = _build_block(hours[key])
            CACHE.put(key, block)
            out.append(block)
        else:
            out.append(held[key])
    return out


def _merge_sketch(
    sketches: Sequence[_Sketch], row_code: Ints, groups: int
) -> tuple[list[dict[int, int]], Ints]:
    """Per group, the bucket-wise sum of its rows' maps, and the zero counts."""
    lengths = np.concatenate([s.lengths for s in sketches])
    keys = np.concatenate([s.keys for s in sketches])
    counts = np.concatenate([s.counts for s in sketches])
    zero_rows = np.concatenate([s.zero for s in sketches])
    inside = row_code >= 0
    zero = np.bincount(row_code[inside], weights=zero_rows[inside], minlength=groups)
    out: list[dict[int, int]] = [{} for _ in range(groups)]
    pair_code = np.repeat(row_code, lengths)
    keep = pair_code >= 0
    keys, counts, pair_code = keys[keep], counts[keep], pair_code[keep]
    if keys.size:
        # Keys to dense ranks without a sort: a presence table over the keys' range.
        low = int(keys.min())
        present = np.zeros(int(keys.max()) - low + 1, dtype=bool)
        present[keys - low] = True
        distinct = np.flatnonzero(present) + low
        rank = (np.cumsum(present) - 1)[keys - low]
        cell = pair_code * distinct.size + rank
        size = groups * distinct.size
        if size <= DENSE_CELLS:  # the page's case: <= 400 bins of some hundred keys
            sums = np.bincount(cell, weights=counts, minlength=size).reshape(groups, -1)
            seen = np.bincount(cell, minlength=size).reshape(groups, -1) > 0
            for g in np.flatnonzero(seen.any(axis=1)).tolist():
                where = seen[g]
                out[g] = dict(
                    zip(
                        distinct[where].tolist(),
                        sums[g, where].astype(np.int64).tolist(),
                        strict=True,
                    )
                )
        else:  # many bins (a caller's small step over a long range): sort, memory O(pairs)
            cells, inverse = np.unique(cell, return_inverse=True)
            total = np.bincount(inverse, weights=counts).astype(np.int64)
            group, key = np.divmod(cells, distinct.size)
            starts = np.flatnonzero(np.diff(group, prepend=-1)).tolist() + [cells.size]
            for a, b in zip(starts, starts[1:], strict=False):
                out[int(group[a])] = dict(
                    zip(distinct[key[a:b]].tolist(), total[a:b].tolist(), strict=True)
                )
    return out, zero.astype(np.int64)


def window_series(
    stage_ids: Sequence[int], *, since: datetime, until: datetime, step_minutes: int
) -> dict[str, list[tuple[datetime, ArmAggregates]]]:
    """``selectors.window_series`` on PostgreSQL: the same bins, the same figures."""
    series: dict[str, list[tuple[datetime, ArmAggregates]]] = {}
    blocks = _blocks(stage_ids, since, until)
    if not blocks:
        return series
    step_us = step_minutes * 60 * _US
    since_us = (since - _EPOCH) // timedelta(microseconds=1)
    until_us = (until - _EPOCH) // timedelta(microseconds=1)
    at_us = np.concatenate([b.at_us for b in blocks])
    arms = sorted({a for b in blocks for a in b.arms})
    arm_code = np.concatenate(
        [np.array([arms.index(a) for a in b.arms], dtype=np.int64)[b.arm] for b in blocks]
    )
    bins = max(1, -(-(until_us - since_us) // step_us))
    groups = len(arms) * bins
    inside = (at_us >= since_us) & (at_us < until_us)
    row_code = np.where(inside, arm_code * bins + (at_us - since_us) // step_us, -1)
    code = row_code[inside]
    rows_per_group = np.bincount(code, minlength=groups)
    ints = np.concatenate([b.ints for b in blocks])[inside]
    int_sums = [
        np.bincount(code, weights=ints[:, j], minlength=groups).astype(np.int64).tolist()
        for j in range(4)
    ]
    # Exactly rounded float sums per group: rows in group order, one fsum per group.
    order = np.argsort(code, kind="stable")
    floats = np.concatenate([b.floats for b in blocks])[inside][order]
    bounds = np.concatenate(([0], np.cumsum(rows_per_group))).tolist()
    cost_col, feedback_col = floats[:, 0].tolist(), floats[:, 1].tolist()
    latency, latency_zero = _merge_sketch([b.latency for b in blocks], row_code, groups)
    ttft, ttft_zero = _merge_sketch([b.ttft for b in blocks], row_code, groups)
    kinds: list[dict[str, int]] = [{} for _ in range(groups)]
    offset = 0
    for b in blocks:
        if b.kind_names:
            for g, name, count in zip(
                row_code[b.kind_rows + offset].tolist(),
                b.kind_names,
                b.kind_counts.tolist(),
                strict=True,
            ):
                if g >= 0:
                    kinds[g][name] = kinds[g].get(name, 0) + count
        offset += len(b.at_us)
    step = timedelta(minutes=step_minutes)
    requests, errors, cost_n, feedback_n = int_sums
    lat_zero, tt_zero = latency_zero.tolist(), ttft_zero.tolist()
    for g in np.flatnonzero(rows_per_group).tolist():
        arm, index = divmod(g, bins)
        lo, hi = bounds[g], bounds[g + 1]
        series.setdefault(arms[arm], []).append(
            (
                since + index * step,
                ArmAggregates(
                    requests=requests[g],
                    errors=errors[g],
                    errors_by_kind=kinds[g],
                    latency=Buckets(counts=latency[g], zero_count=lat_zero[g]),
                    ttft=Buckets(counts=ttft[g], zero_count=tt_zero[g]),
                    cost_n=cost_n[g],
                    cost_sum=math.fsum(cost_col[lo:hi]),
                    feedback_n=feedback_n[g],
                    feedback_sum=math.fsum(feedback_col[lo:hi]),
                ),
            )
        )
    return series
