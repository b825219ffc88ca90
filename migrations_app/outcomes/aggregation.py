"""From raw outcomes and feedback to the sums the statistics read (pure: no ORM, no clock).

Ingest turns a batch into *deltas*: per (stage, arm, window) an :class:`ArmAggregates`
holding the batch's counts, bucket counts and sums, and per (stage, arm, unit) the change
in that unit's running totals. A unit's change becomes a cluster-sum delta through
:func:`cluster_delta` ((Y+y)**2 - Y**2 and so on), which is what keeps user-level
variance additive across windows (``stats.ClusterSums``). The caller merges deltas into
stored rows by addition, so batches may arrive in any order and the result is the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar, get_type_hints

import numpy as np
import numpy.typing as npt

from migrations_app.guardrails.stats import (
    CLUSTER_MOMENTS,
    MAPPING,
    ArmAggregates,
    Buckets,
    ClusterSums,
    bucket_keys,
)
from migrations_app.outcomes.exact_sums import group_sums

WINDOW_SECONDS = 60

K = TypeVar("K")
FloatArray = npt.NDArray[np.float64]


class OutcomeFacts(NamedTuple):
    """What one outcome contributes (already validated, cost already priced). A named tuple:
    ingest makes one per event, and a tuple is the cheapest immutable record to make."""

    arm: str
    unit: str
    window: datetime
    latency_ms: float
    ttft_ms: float | None
    error: str
    cost_usd: float | None
    # The per-request metrics the outcome carried, checked: ((name, value), ...).
    metrics: tuple[tuple[str, float], ...] = ()
    # The unit's segment values, checked: ((dimension, value), ...) (segment_rollup.py).
    segments: tuple[tuple[str, str], ...] = ()


class UnitTotals(NamedTuple):
    """A unit's running totals in one stage and arm (mirrors the UnitTotals model, whose
    columns have these names and :data:`UNIT_COLUMNS` types). ``latency_log1p`` and
    ``ttft_log1p`` are sums of log(1 + ms) over ``latency_n`` and ``ttft_n`` requests: the
    latency tests read how much a unit's latencies cluster from them
    (``stats.design_effect``). They have their own counts, not ``requests``: a stage that
    began before they were recorded has them for its later requests only, and its
    clustering is then measured on those. A named tuple, made once per unit of every batch:
    a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``."""

    requests: int = 0
    errors: int = 0
    cost_n: int = 0
    cost_sum: float = 0.0
    feedback_n: int = 0
    feedback_sum: float = 0.0
    latency_n: int = 0
    latency_log1p: float = 0.0
    ttft_n: int = 0
    ttft_log1p: float = 0.0

    def __add__(self, other: tuple[Any, ...]) -> UnitTotals:  # type: ignore[override]
        """Field by field (not the tuples joined)."""
        return UnitTotals(*(a + b for a, b in zip(self, other, strict=True)))


#: (column, PostgreSQL type) of each UnitTotals field, in order.
UNIT_COLUMNS = tuple(
    (name, "integer" if kind is int else "float8")
    for name, kind in get_type_hints(UnitTotals).items()  # resolved: ForwardRefs otherwise
)


def unit_totals(outcomes: Iterable[OutcomeFacts]) -> UnitTotals:
    """What some outcomes of one unit add to its totals."""
    rows = outcomes if isinstance(outcomes, list) else list(outcomes)
    if len(rows) == 1:  # most units in a batch: the same sums without the lists
        r = rows[0]
        cost, ttft = r.cost_usd, r.ttft_ms
        return UnitTotals(
            requests=1,
            errors=1 if r.error else 0,
            cost_n=0 if cost is None else 1,
            cost_sum=0.0 if cost is None else cost + 0.0,  # math.fsum([x]) is x + 0.0
            latency_n=1,
            latency_log1p=_log1p(r.latency_ms) + 0.0,
            ttft_n=0 if ttft is None else 1,
            ttft_log1p=0.0 if ttft is None else _log1p(ttft) + 0.0,
        )
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    ttfts = [r.ttft_ms for r in rows if r.ttft_ms is not None]
    return UnitTotals(
        requests=len(rows),
        errors=sum(1 for r in rows if r.error),
        cost_n=len(costs),
        cost_sum=math.fsum(costs),
        latency_n=len(rows),
        latency_log1p=math.fsum(_log1p(r.latency_ms) for r in rows),
        ttft_n=len(ttfts),
        ttft_log1p=math.fsum(_log1p(v) for v in ttfts),
    )


def _log1p(ms: float) -> float:
    return math.log1p(max(ms, 0.0))


def window_start(ts: datetime) -> datetime:
    """The window (minute) an event at ``ts`` falls in."""
    return ts.replace(second=0, microsecond=0)


def outcome_delta(facts: Iterable[OutcomeFacts]) -> ArmAggregates:
    """Counts, buckets and sums of some outcomes of one arm and window (no cluster sums:
    those come from :func:`cluster_delta`)."""
    rows = list(facts)
    return grouped_outcome_deltas(rows, {0: range(len(rows))})[0]


def grouped_outcome_deltas(
    facts: Sequence[OutcomeFacts], groups: Mapping[K, Sequence[int]]
) -> dict[K, ArmAggregates]:
    """:func:`outcome_delta` of each group of ``facts`` (``groups``: key -> indices), with
    each outcome's logs, squares and sketch keys computed once for the batch rather than
    once per group it is in (a batch's segments: each outcome is in one per dimension).
    Every sum is exactly rounded (``math.fsum``'s, by ``exact_sums.group_sums``), so a
    group's delta does not depend on which other groups there are or on the order of its
    outcomes."""
    if len(facts) < _FEW_OUTCOMES:
        return _row_deltas(facts, groups)
    keys = list(groups)
    rows, bounds = _flatten(groups, keys)
    names: dict[str, int] = {}
    nan = math.nan
    deltas = outcome_sums(
        np.array([r.latency_ms for r in facts], dtype=np.float64),
        np.array([nan if r.ttft_ms is None else r.ttft_ms for r in facts], dtype=np.float64),
        np.array([nan if r.cost_usd is None else r.cost_usd for r in facts], dtype=np.float64),
        np.array([names.setdefault(r.error, len(names)) if r.error else -1 for r in facts]),
        list(names),
        rows,
        bounds,
    )
    return dict(zip(keys, deltas, strict=True))


def outcome_sums(
    latency: FloatArray,
    ttft: FloatArray,
    cost: FloatArray,
    errors: npt.NDArray[np.int64],
    kinds: Sequence[str],
    rows: npt.NDArray[np.intp],
    bounds: Sequence[int],
) -> list[ArmAggregates]:
    """:func:`outcome_delta` of each group of outcomes given by columns (``ttft`` and
    ``cost`` NaN where unknown, ``errors`` an index into ``kinds`` or -1): group ``g`` is
    ``rows[bounds[g]:bounds[g + 1]]``. Each outcome's logs, squares and sketch keys are
    computed once, however many groups it is in, and every group's sums in one pass."""
    groups = len(bounds) - 1
    # The logs are math's, one outcome at a time: numpy's may differ in the last bit.
    log, log1p = math.log, math.log1p
    values = latency.tolist()
    timed = ~np.isnan(ttft)
    costed = ~np.isnan(cost)
    ttfts = np.zeros(len(ttft))
    ttfts[timed] = ttft[timed]
    ttft_logs = np.zeros(len(ttft))
    ttft_log1p = np.zeros(len(ttft))
    present = ttfts[timed].tolist()
    ttft_logs[timed] = [log(v) if v > 0 else 0.0 for v in present]
    ttft_log1p[timed] = [log1p(v) if v > 0 else 0.0 for v in present]
    latency_log1p = np.array([log1p(v) if v > 0 else 0.0 for v in values])
    costs = np.where(costed, cost, 0.0)
    table = np.column_stack([
        latency, [log(v) if v > 0 else 0.0 for v in values], latency_log1p,
        latency_log1p * latency_log1p, ttfts, ttft_logs, ttft_log1p, ttft_log1p * ttft_log1p,
        costs, costs * costs, timed, costed,
    ]).astype(np.float64, copy=False)  # fmt: skip
    sums = group_sums(table, rows, bounds).tolist()
    edges = np.asarray(bounds, dtype=np.intp)
    sizes = edges[1:] - edges[:-1]
    member = np.repeat(np.arange(groups), sizes)  # each row's group, in rows' order
    latency_buckets = _grouped_buckets(latency, member, rows, groups)
    in_timed = timed[rows]
    ttft_buckets = _grouped_buckets(ttfts, member[in_timed], rows[in_timed], groups, timed)
    by_kind = _grouped_kinds(errors, kinds, member, rows, groups)
    out = []
    for g, (size, s) in enumerate(zip(sizes.tolist(), sums, strict=True)):
        found = by_kind[g]
        out.append(ArmAggregates(
            requests=size,
            errors=sum(found.values()),
            errors_by_kind=found,
            latency=latency_buckets[g],
            latency_sum=s[0],
            latency_log_sum=s[1],
            ttft=ttft_buckets[g],
            ttft_sum=s[4],
            ttft_log_sum=s[5],
            latency_log1p_n=size,
            latency_log1p_sum=s[2],
            latency_log1p_sum_sq=s[3],
            ttft_log1p_n=int(s[10]),
            ttft_log1p_sum=s[6],
            ttft_log1p_sum_sq=s[7],
            cost_n=int(s[11]),
            cost_sum=s[8],
            cost_sum_sq=s[9],
        ))  # fmt: skip
    return out


# Fewer outcomes than this: :func:`_row_deltas` (numpy's calls cost more than they save).
_FEW_OUTCOMES = 256


def _row_deltas(
    facts: Sequence[OutcomeFacts], groups: Mapping[K, Sequence[int]]
) -> dict[K, ArmAggregates]:
    """:func:`grouped_outcome_deltas` outcome by outcome: faster than numpy's calls for the
    few outcomes of a window (ingest's :func:`outcome_delta`, per window and batch)."""
    latency = [r.latency_ms for r in facts]
    log1p = [_log1p(v) for v in latency]
    per: list[tuple[Any, ...]] = []  # (latency, log, log1p, log1p^2, bucket key | None)
    keys = _sketch_keys(latency)
    for v, lp, key in zip(latency, log1p, keys, strict=True):
        per.append((v, math.log(v) if v > 0 else None, lp, lp * lp, key))
    ttft_rows = [i for i, r in enumerate(facts) if r.ttft_ms is not None]
    ttft: dict[int, tuple[Any, ...]] = {}
    ttft_values = [float(facts[i].ttft_ms or 0.0) for i in ttft_rows]
    for i, v, key in zip(ttft_rows, ttft_values, _sketch_keys(ttft_values), strict=True):
        lp = _log1p(v)
        ttft[i] = (v, math.log(v) if v > 0 else None, lp, lp * lp, key)
    out: dict[K, ArmAggregates] = {}
    for group, indices in groups.items():
        if len(indices) == 1:  # most segments of a batch
            i = indices[0]
            out[group] = _one_outcome(per[i], ttft.get(i), facts[i].cost_usd, facts[i].error)
            continue
        rows = [per[i] for i in indices]
        ttfts = [ttft[i] for i in indices if i in ttft]
        costs = [c for i in indices if (c := facts[i].cost_usd) is not None]
        kinds: dict[str, int] = {}
        for i in indices:
            error = facts[i].error
            if error:
                kinds[error] = kinds.get(error, 0) + 1
        out[group] = ArmAggregates(
            requests=len(rows),
            errors=sum(kinds.values()),
            errors_by_kind=kinds,
            latency=_buckets(rows),
            latency_sum=math.fsum(r[0] for r in rows),
            latency_log_sum=math.fsum(r[1] for r in rows if r[1] is not None),
            ttft=_buckets(ttfts),
            ttft_sum=math.fsum(r[0] for r in ttfts),
            ttft_log_sum=math.fsum(r[1] for r in ttfts if r[1] is not None),
            latency_log1p_n=len(rows),
            latency_log1p_sum=math.fsum(r[2] for r in rows),
            latency_log1p_sum_sq=math.fsum(r[3] for r in rows),
            ttft_log1p_n=len(ttfts),
            ttft_log1p_sum=math.fsum(r[2] for r in ttfts),
            ttft_log1p_sum_sq=math.fsum(r[3] for r in ttfts),
            cost_n=len(costs),
            cost_sum=math.fsum(costs),
            cost_sum_sq=math.fsum(c * c for c in costs),
        )
    return out


def _one_outcome(
    row: tuple[Any, ...], ttft: tuple[Any, ...] | None, cost: float | None, error: str
) -> ArmAggregates:
    """:func:`grouped_outcome_deltas`' delta of a group of one outcome, without the lists:
    the same values (``math.fsum([x])`` is ``x + 0.0``, ``math.fsum([])`` is 0.0)."""
    return ArmAggregates(
        requests=1,
        errors=1 if error else 0,
        errors_by_kind={error: 1} if error else {},
        latency=_buckets((row,)),
        latency_sum=row[0] + 0.0,
        latency_log_sum=0.0 if row[1] is None else row[1] + 0.0,
        ttft=Buckets() if ttft is None else _buckets((ttft,)),
        ttft_sum=0.0 if ttft is None else ttft[0] + 0.0,
        ttft_log_sum=0.0 if ttft is None or ttft[1] is None else ttft[1] + 0.0,
        latency_log1p_n=1,
        latency_log1p_sum=row[2] + 0.0,
        latency_log1p_sum_sq=row[3] + 0.0,
        ttft_log1p_n=0 if ttft is None else 1,
        ttft_log1p_sum=0.0 if ttft is None else ttft[2] + 0.0,
        ttft_log1p_sum_sq=0.0 if ttft is None else ttft[3] + 0.0,
        cost_n=0 if cost is None else 1,
        cost_sum=0.0 if cost is None else cost + 0.0,
        cost_sum_sq=0.0 if cost is None else cost * cost + 0.0,
    )


def _sketch_keys(values: Sequence[float]) -> list[int | None]:
    """Each value's sketch bucket key (None: the zero bucket), as ``Buckets.from_values``
    places it."""
    if not values:
        return []
    arr = np.asarray(values, dtype=np.float64)
    positive = arr > MAPPING.min_possible
    keys = np.zeros(len(values), dtype=np.int64)
    keys[positive] = bucket_keys(arr[positive])
    key_list: list[int] = keys.tolist()
    kept: list[bool] = positive.tolist()
    return [k if p else None for k, p in zip(key_list, kept, strict=True)]


def _buckets(rows: Sequence[tuple[Any, ...]]) -> Buckets:
    counts: dict[int, int] = {}
    zero = 0
    for row in rows:
        key = row[4]
        if key is None:
            zero += 1
        else:
            counts[key] = counts.get(key, 0) + 1
    return Buckets(counts=dict(sorted(counts.items())), zero_count=zero) if rows else Buckets()


def _flatten(
    groups: Mapping[Any, Sequence[int]], keys: Sequence[Any]
) -> tuple[npt.NDArray[np.intp], list[int]]:
    """The groups' indices, group after group, and where each group starts (and the end)."""
    sizes = [len(groups[key]) for key in keys]
    rows = np.fromiter((i for key in keys for i in groups[key]), dtype=np.intp, count=sum(sizes))
    return rows, [0, *np.cumsum(sizes, dtype=np.intp).tolist()]


def _grouped_buckets(
    values: npt.ArrayLike,
    member: npt.NDArray[np.intp],
    rows: npt.NDArray[np.intp],
    groups: int,
    counted: npt.NDArray[np.bool_] | None = None,
) -> list[Buckets]:
    """Per group, the sketch buckets of its rows' ``values`` (``member``: each row's group),
    as ``Buckets.from_values`` places them; a group with no row gets ``Buckets()``."""
    out = [Buckets()] * groups
    if not len(rows):
        return out
    arr = np.asarray(values, dtype=np.float64)
    positive = arr > MAPPING.min_possible
    if counted is not None:
        positive &= counted
    keys = np.zeros(len(arr), dtype=np.int64)
    keys[positive] = bucket_keys(arr[positive])
    inside = positive[rows]
    zeros = np.bincount(member[~inside], minlength=groups).tolist()
    found = keys[rows[inside]]
    low = int(found.min()) if len(found) else 0
    span = (int(found.max()) - low + 1) if len(found) else 1
    codes, counts = np.unique(member[inside] * span + (found - low), return_counts=True)
    group_of = codes // span
    edges = np.searchsorted(group_of, np.arange(groups + 1)).tolist()
    bucket = (codes % span + low).tolist()
    count = counts.tolist()
    sizes = np.bincount(member, minlength=groups).tolist()
    for g in range(groups):
        a, b = edges[g], edges[g + 1]
        if sizes[g]:
            out[g] = Buckets(
                counts=dict(zip(bucket[a:b], count[a:b], strict=True)), zero_count=zeros[g]
            )
    return out


def _grouped_kinds(
    codes: npt.NDArray[np.int64],
    kinds: Sequence[str],
    member: npt.NDArray[np.intp],
    rows: npt.NDArray[np.intp],
    groups: int,
) -> list[dict[str, int]]:
    """Per group, its rows' errors by kind (``codes``: an index into ``kinds``, -1 none)."""
    out: list[dict[str, int]] = [{} for _ in range(groups)]
    if not kinds or not len(rows):
        return out
    found = codes[rows]
    erred = found >= 0
    width = len(kinds)
    pairs, counts = np.unique(member[erred] * width + found[erred], return_counts=True)
    for pair, count in zip(pairs.tolist(), counts.tolist(), strict=True):
        out[pair // width][kinds[pair % width]] = count
    return out


def feedback_delta(scores: Iterable[float]) -> ArmAggregates:
    """Feedback counts and sums (scores already normalised to [0, 1])."""
    values = list(scores)
    return ArmAggregates(
        feedback_n=len(values),
        feedback_sum=math.fsum(values),
        feedback_sum_sq=math.fsum(v * v for v in values),
    )


# The (Y, N) columns of each cluster sum among a unit's totals.
_CLUSTER_FIELDS = {
    "error_clusters": ("errors", "requests"),
    "cost_clusters": ("cost_sum", "cost_n"),  # cost per costed request
    "feedback_clusters": ("feedback_sum", "feedback_n"),  # score per feedback
    "feedback_rate_clusters": ("feedback_n", "requests"),  # feedbacks per request
    "latency_clusters": ("latency_log1p", "latency_n"),  # log(1 + ms) per request
    "ttft_clusters": ("ttft_log1p", "ttft_n"),
}
_COLUMN = {name: i for i, (name, _) in enumerate(UNIT_COLUMNS)}
_CLUSTER_COLUMNS = {name: (_COLUMN[y], _COLUMN[n]) for name, (y, n) in _CLUSTER_FIELDS.items()}


def cluster_deltas(old: npt.ArrayLike, new: npt.ArrayLike) -> ArmAggregates:
    """The cluster-sum change when units' totals move from ``old`` to ``new`` (one row per
    unit, columns as :class:`UnitTotals`' fields): per cluster sum, (Y+y)**2 - Y**2 and so on
    for every moment of ``stats.CLUSTER_MOMENTS``, summed over the units exactly rounded,
    and the units seen for the first time."""
    units = np.asarray(old, dtype=np.float64).reshape(-1, len(UNIT_COLUMNS)).shape[0]
    return grouped_cluster_deltas(old, new, {0: range(units)})[0]


def grouped_cluster_deltas(
    old: npt.ArrayLike, new: npt.ArrayLike, groups: Mapping[K, Sequence[int]]
) -> dict[K, ArmAggregates]:
    """:func:`cluster_deltas` of each group of rows (``groups``: key -> row indices), the
    same sums, with each unit's moments computed once for the batch rather than per group
    (a batch's segments or windows are many small groups of its units), and every group's
    sums in one pass (``exact_sums.group_sums``)."""
    keys = list(groups)
    rows, bounds = _flatten(groups, keys)
    return dict(zip(keys, cluster_sums(old, new, rows, bounds), strict=True))


def cluster_sums(
    old: npt.ArrayLike, new: npt.ArrayLike, rows: npt.NDArray[np.intp], bounds: Sequence[int]
) -> list[ArmAggregates]:
    """:func:`cluster_deltas` of each group of units' moves: group ``g`` is
    ``rows[bounds[g]:bounds[g + 1]]``, every group's sums in one pass."""
    before = np.asarray(old, dtype=np.float64).reshape(-1, len(UNIT_COLUMNS))
    after = np.asarray(new, dtype=np.float64).reshape(-1, len(UNIT_COLUMNS))
    columns = []  # per cluster sum: whether each unit is new, then its moments' changes
    for y, n in _CLUSTER_COLUMNS.values():
        y0, n0, y1, n1 = before[:, y], before[:, n], after[:, y], after[:, n]
        columns += [(n0 == 0) & (n1 != 0), *_moment_changes(y0, n0, y1, n1)]
    table = np.column_stack(columns).astype(np.float64, copy=False)
    sums = group_sums(table, rows, bounds).tolist()
    width = 1 + len(CLUSTER_MOMENTS)
    names = list(_CLUSTER_COLUMNS)
    out = []
    for s in sums:
        moved: dict[str, Any] = {
            name: ClusterSums(int(s[i * width]), *s[i * width + 1 : (i + 1) * width])
            for i, name in enumerate(names)
        }
        out.append(ArmAggregates(**moved))
    return out


def cluster_change(
    y0: npt.NDArray[np.float64],
    n0: npt.NDArray[np.float64],
    y1: npt.NDArray[np.float64],
    n1: npt.NDArray[np.float64],
) -> ClusterSums:
    """The cluster sums' change when units move from (y0, n0) to (y1, n1), exactly rounded
    (one (Y, N) pair per unit: a per-request metric's, a paired difference's)."""
    return ClusterSums(
        int(np.count_nonzero((n0 == 0) & (n1 != 0))),
        *(math.fsum(change.tolist()) for change in _moment_changes(y0, n0, y1, n1)),
    )


def grouped_cluster_change(
    y0: npt.NDArray[np.float64],
    n0: npt.NDArray[np.float64],
    y1: npt.NDArray[np.float64],
    n1: npt.NDArray[np.float64],
    groups: Mapping[K, Sequence[int]],
) -> dict[K, ClusterSums]:
    """:func:`cluster_change` of each group of units (``groups``: key -> indices), the same
    sums, with the moments computed once for all units rather than once per group (a batch's
    metric sums move in many small groups: per window and metric, per segment and metric)."""
    keys = list(groups)
    rows, bounds = _flatten(groups, keys)
    return dict(zip(keys, cluster_change_sums(y0, n0, y1, n1, rows, bounds), strict=True))


def cluster_change_sums(
    y0: FloatArray,
    n0: FloatArray,
    y1: FloatArray,
    n1: FloatArray,
    rows: npt.NDArray[np.intp],
    bounds: Sequence[int],
) -> list[ClusterSums]:
    """:func:`cluster_change` of each group of units: group ``g`` is
    ``rows[bounds[g]:bounds[g + 1]]``, every group's sums in one pass."""
    table = np.column_stack([(n0 == 0) & (n1 != 0), *_moment_changes(y0, n0, y1, n1)])
    sums = group_sums(table.astype(np.float64, copy=False), rows, bounds).tolist()
    return [ClusterSums(int(s[0]), *s[1:]) for s in sums]


def _moment_changes(
    y0: npt.NDArray[np.float64],
    n0: npt.NDArray[np.float64],
    y1: npt.NDArray[np.float64],
    n1: npt.NDArray[np.float64],
) -> list[npt.NDArray[np.float64]]:
    """Per unit, how each term of ``stats.CLUSTER_MOMENTS`` moves from (y0, n0) to (y1, n1)."""
    return [m1 - m0 for m1, m0 in zip(_moments(y1, n1), _moments(y0, n0), strict=True)]


def _moments(y: npt.NDArray[np.float64], n: npt.NDArray[np.float64]) -> tuple[Any, ...]:
    """Per unit, the terms of ``stats.CLUSTER_MOMENTS`` (same order)."""
    yy, yn, nn = y * y, y * n, n * n
    return yy, yn, nn, yy * n, yn * n, nn * n


def cluster_delta(old: UnitTotals, new: UnitTotals) -> ArmAggregates:
    """The cluster-sum change when one unit's totals move from ``old`` to ``new``."""
    return cluster_deltas([old], [new])
