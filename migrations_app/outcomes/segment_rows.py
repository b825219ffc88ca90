"""A stage's pending segment row (``PendingSegments.data``, segment_rollup.py): what one ingest
transaction adds to the stage's segments, by columns, and the rows of a fold read back as one
set of columns.

A row (:class:`Raw`) holds its events (segmented outcomes, feedback and metric values: arm,
unit and up to three (dimension, value) pairs each), the outcomes' numbers, and the moves of
the events' units' totals (before and after). The strings are one JSON list per column, the
numbers raw little-endian arrays: ingest lists them and writes them without a Python object
per number or a dictionary look-up per string (it runs in the ingest transaction, after the
aggregate rows are locked); a fold turns the strings into indices (:func:`code`,
:class:`Columns`) and reads the numbers without an object per outcome.

Layout: ``MAGIC``, the header's length (4 bytes), the header (JSON: the string columns and
the moves' storage kinds), zero bytes to a multiple of 8, the float64 arrays of
:data:`_LAYOUT` in its order, then the moves' totals (:func:`_pack_moves`). Rows written
before this format (one JSON object, a tuple per event: they start with ``{``) are read by
:func:`read` too, into the same columns.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from migrations_app.outcomes.aggregation import UNIT_COLUMNS, OutcomeFacts

MAGIC = b"SEG\x02"
SLOTS = 3  # segment values per event at most (segment_rollup.parse_segments)
_UNIT_WIDTH = len(UNIT_COLUMNS)  # a unit's totals, as the unit totals' upsert returns them
_METRIC_WIDTH = 3  # a unit's metric sums: n, total, control_total (unit_rows.MetricMoves)

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


@dataclass
class Columns:
    """One row's columns. ``events``: (arm, unit, then :data:`SLOTS` indices into
    ``segments``, -1 past the event's values) of its outcomes, then its feedback, then its
    metric values (``counts``); ``ttft`` and ``cost`` are NaN where unknown; ``error`` an
    index into ``errors``, -1 for none; ``metric``: an index into ``metrics``."""

    arms: list[str]
    units: list[str]
    segments: list[tuple[str, str]]
    errors: list[str]
    metrics: list[str]
    counts: tuple[int, int, int]  # outcomes, feedback, metric values
    events: Ints  # (events, 2 + SLOTS)
    latency: Floats
    ttft: Floats
    cost: Floats
    error: Ints
    carried: Ints  # (values the outcomes carried, 2): outcome, metric
    carried_value: Floats
    score: Floats
    value_metric: Ints
    value: Floats
    moved: Ints  # (unit moves, 2): arm, unit
    moved_old: Floats  # (unit moves, _UNIT_WIDTH)
    moved_new: Floats
    metric_moved: Ints  # (metric moves, 3): arm, unit, metric
    metric_old: Floats  # (metric moves, 3)
    metric_new: Floats


@dataclass
class Raw:
    """A row as ingest writes it: per event (outcomes, then feedback, then metric values:
    ``counts``) its arm, unit and segment values ((dimension, value) pairs), per outcome its
    error ("" for none) and numbers (``ttft`` and ``cost`` NaN where unknown), the values
    the outcomes carried (``carried``: [outcome, metric]), the metric values' names, and the
    moves (keys, totals before and after). Strings go to the header as they are: ingest only
    lists them, a fold turns them into indices (:func:`code`)."""

    counts: tuple[int, int, int]
    arms: list[str]
    units: list[str]
    segments: list[Any]
    errors: list[str]
    carried: list[Any]
    value_metrics: list[str]
    latency: Floats
    ttft: Floats
    cost: Floats
    carried_value: Floats
    score: Floats
    value: Floats
    moved: list[Any]  # (arm, unit)
    moved_old: Floats  # (moves, _UNIT_WIDTH)
    moved_new: Floats
    metric_moved: list[Any]  # (arm, unit, metric)
    metric_old: Floats  # (metric moves, 3)
    metric_new: Floats


# (field, which count): the float64 arrays after the header, in order; then the moves'
# totals before and after, column by column (:func:`_pack_moves`).
_LAYOUT = (
    ("latency", "o"),
    ("ttft", "o"),
    ("cost", "o"),
    ("carried_value", "c"),
    ("score", "f"),
    ("value", "v"),
)


def raw(
    outcomes: Sequence[OutcomeFacts],
    feedback: Sequence[tuple[OutcomeFacts, float]] = (),
    values: Sequence[tuple[OutcomeFacts, str, float]] = (),
) -> Raw:
    """A row of some segmented outcomes, feedback and metric values (each with the facts of
    its outcome), without moves (:func:`add_moves`, :func:`add_metric_moves`): one list per
    column, no call per event (ingest makes one per batch, in its transaction)."""
    facts = [*outcomes, *(f for f, _ in feedback), *(f for f, *_ in values)]
    carried = [(i, m) for i, f in enumerate(outcomes) for m in f.metrics]
    none = np.zeros((0, 1))
    return Raw(
        counts=(len(outcomes), len(feedback), len(values)),
        arms=[f.arm for f in facts],
        units=[f.unit for f in facts],
        segments=[f.segments for f in facts],
        errors=[f.error for f in outcomes],
        carried=[(i, name) for i, (name, _) in carried],
        value_metrics=[name for _, name, _ in values],
        latency=np.array([f.latency_ms for f in outcomes], dtype=np.float64),
        ttft=np.array([f.ttft_ms for f in outcomes], dtype=np.float64),  # None: NaN
        cost=np.array([f.cost_usd for f in outcomes], dtype=np.float64),
        carried_value=np.array([value for _, (_, value) in carried], dtype=np.float64),
        score=np.array([score for _, score in feedback], dtype=np.float64),
        value=np.array([value for *_, value in values], dtype=np.float64),
        moved=[],
        moved_old=_floats(none, _UNIT_WIDTH),
        moved_new=_floats(none, _UNIT_WIDTH),
        metric_moved=[],
        metric_old=_floats(none, _METRIC_WIDTH),
        metric_new=_floats(none, _METRIC_WIDTH),
    )


def add_moves(r: Raw, keys: Sequence[Any], old: npt.ArrayLike, new: npt.ArrayLike) -> None:
    """The moves of the row's units' totals: keys (arm, unit), totals before and after."""
    r.moved = list(keys)
    r.moved_old, r.moved_new = _floats(old, _UNIT_WIDTH), _floats(new, _UNIT_WIDTH)


def add_metric_moves(r: Raw, keys: Sequence[Any], old: npt.ArrayLike, new: npt.ArrayLike) -> None:
    """The moves of the row's units' metric sums: keys (arm, unit, metric), before, after."""
    r.metric_moved = list(keys)
    r.metric_old, r.metric_new = _floats(old, _METRIC_WIDTH), _floats(new, _METRIC_WIDTH)


def code(r: Raw) -> Columns:
    """A row's columns with its strings as indices into lists of the distinct ones, checked as
    far as a fold relies on them. Raises ValueError, TypeError or KeyError for a row that is
    not one."""
    o, f, v = r.counts
    events = o + f + v
    if {len(r.arms), len(r.units), len(r.segments)} != {events} or len(r.errors) != o:
        raise ValueError("a row's columns have one item per event")
    if len(r.value_metrics) != v or len(r.carried) != len(r.carried_value):
        raise ValueError("a row's metric values have one name each")
    pairs = [(d, x) for s in r.segments for d, x in s]
    sizes = [len(s) for s in r.segments]
    if sizes and max(sizes) > SLOTS:
        raise ValueError(f"an event has at most {SLOTS} segment values")
    segments, codes = _encode(pairs)
    slots = np.full((events, SLOTS), -1, dtype=np.int64)
    if len(set(sizes)) == 1:  # every event with as many values (a plan's events mostly are)
        slots[:, : sizes[0]] = codes.reshape(events, sizes[0])
    elif pairs:
        owner = np.repeat(np.arange(events), sizes)
        starts = np.cumsum([0, *sizes[:-1]])
        slots[owner, np.arange(len(pairs)) - starts[owner]] = codes
    arms, arm_codes = _encode(r.arms)
    units, unit_codes = _encode(r.units)
    errors, error = _encode(r.errors, skip="")
    carried_at = [int(i) for i, _ in r.carried]
    if carried_at and not 0 <= min(carried_at) <= max(carried_at) < o:
        raise ValueError("a carried value's outcome is not in its row")
    metrics, metric_codes = _encode([name for _, name in r.carried] + r.value_metrics)
    arm_index = {a: i for i, a in enumerate(arms)}
    unit_index = {u: i for i, u in enumerate(units)}
    metric_index = {m: i for i, m in enumerate(metrics)}
    metric_moved = [
        (arm_index[a], unit_index[u], metric_index.setdefault(m, len(metric_index)))
        for a, u, m in r.metric_moved
    ]
    return Columns(
        arms=arms,
        units=units,
        segments=segments,
        errors=errors,
        metrics=list(metric_index),
        counts=(o, f, v),
        events=np.column_stack([arm_codes, unit_codes, slots]).reshape(-1, 2 + SLOTS),
        latency=r.latency,
        ttft=r.ttft,
        cost=r.cost,
        error=error,
        carried=np.column_stack(
            [np.array(carried_at, dtype=np.int64), metric_codes[: len(carried_at)]]
        ).reshape(-1, 2),
        carried_value=r.carried_value,
        score=r.score,
        value_metric=metric_codes[len(carried_at) :],
        value=r.value,
        moved=_ints([(arm_index[a], unit_index[u]) for a, u in r.moved], 2),
        moved_old=r.moved_old,
        moved_new=r.moved_new,
        metric_moved=_ints(metric_moved, 3),
        metric_old=r.metric_old,
        metric_new=r.metric_new,
    )


def _encode(items: Sequence[Any], skip: Any = None) -> tuple[list[Any], Ints]:
    """The distinct items in order of first appearance (but ``skip``), and each item's index
    among them (-1 for ``skip``): dict.fromkeys and map run in C, a setdefault per item not."""
    distinct = [x for x in dict.fromkeys(items) if x != skip]
    index = {x: i for i, x in enumerate(distinct)}
    if skip is not None:
        index[skip] = -1
    return distinct, np.fromiter(map(index.__getitem__, items), dtype=np.int64, count=len(items))


def _ints(rows: Sequence[Sequence[int]], width: int) -> Ints:
    return np.array(rows, dtype=np.int64).reshape(-1, width)


def _floats(rows: npt.ArrayLike | None, width: int) -> Floats:
    if rows is None:
        return np.zeros((0, width), dtype=np.float64)
    return np.asarray(rows, dtype=np.float64).reshape(-1, width)


def pack(r: Raw) -> bytes:
    """The row's bytes: the header (its strings and lengths), the float arrays of
    :data:`_LAYOUT`, then the moves' totals (:func:`_pack_moves`)."""
    units, metrics = _kinds(r.moved_old, r.moved_new), _kinds(r.metric_old, r.metric_new)
    header = orjson.dumps({
        "counts": r.counts, "arms": r.arms, "units": r.units, "segments": r.segments,
        "errors": r.errors, "carried": r.carried, "value_metrics": r.value_metrics,
        "moved": r.moved, "metric_moved": r.metric_moved, "moves": [units, metrics],
    })  # fmt: skip
    start = len(MAGIC) + 4 + len(header)
    parts = [MAGIC, struct.pack("<I", len(header)), header, b"\0" * (-start % 8)]
    parts += [np.ascontiguousarray(getattr(r, name), dtype="<f8").tobytes() for name, _ in _LAYOUT]
    parts += _pack_moves(units, r.moved_old, r.moved_new)
    parts += _pack_moves(metrics, r.metric_old, r.metric_new)
    return b"".join(parts)


# How a column of the moves' totals is stored: "z" zero before and after (nothing stored),
# "s" the same before and after (once, float64), "i" whole numbers of int32's range (int32,
# before then after: the counts), "f" float64 before then after. Most of a row's bytes are
# its units' totals (ten columns before and after), and fewer bytes are less of ingest's CPU
# (the client escapes a row's bytes into its INSERT) and of PostgreSQL's.
def _kinds(old: Floats, new: Floats) -> str:
    both = np.concatenate([old, new])
    signed = np.signbit(both).any(axis=0)  # -0.0 stays -0.0: no "z" or "i" for it
    zero = ~both.any(axis=0) & ~signed
    same = ((old == new) & (np.signbit(old) == np.signbit(new))).all(axis=0)
    whole = ((both == np.floor(both)) & (both < 2**31)).all(axis=0) & ~signed
    return "".join(
        "z" if z else "s" if s else "i" if w else "f"
        for z, s, w in zip(zero.tolist(), same.tolist(), whole.tolist(), strict=True)
    )


def _pack_moves(kinds: str, old: Floats, new: Floats) -> list[bytes]:
    out = []
    for kind, a, b in zip(kinds, old.T, new.T, strict=True):
        if kind == "s":
            out.append(a.astype("<f8").tobytes())
        elif kind in "if":
            dtype = "<i4" if kind == "i" else "<f8"
            out += [a.astype(dtype).tobytes(), b.astype(dtype).tobytes()]
    return out


def _read_moves(
    data: bytes, offset: int, kinds: str, rows: int, width: int
) -> tuple[Floats, Floats, int]:
    if len(kinds) != width or set(kinds) - set("zsif"):
        raise ValueError(f"a row's moves have {width} columns")
    old = np.zeros((rows, width), dtype=np.float64)
    new = np.zeros((rows, width), dtype=np.float64)
    for j, kind in enumerate(kinds):
        if kind == "z":
            continue
        dtype = "<i4" if kind == "i" else "<f8"
        for target in (old, new) if kind != "s" else (old,):
            column = np.frombuffer(data, dtype=dtype, count=rows, offset=offset)
            offset += column.nbytes
            target[:, j] = column
        if kind == "s":
            new[:, j] = old[:, j]
    return old, new, offset


def read(data: bytes) -> Columns:
    """A row's columns, of either format. Raises ValueError, TypeError or KeyError for a row
    that is not one (only a bug or a damaged database makes one)."""
    return code(read_raw(data))


def read_raw(data: bytes) -> Raw:
    """A row as it was written (:func:`pack`, or a row of the format before)."""
    if not data.startswith(MAGIC):
        return _read_tuples(orjson.loads(data))
    (size,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    header = orjson.loads(data[start : start + size])
    o, f, v = (int(n) for n in header["counts"])
    carried, moved, metric_moved = header["carried"], header["moved"], header["metric_moved"]
    lengths = {"o": o, "f": f, "v": v, "c": len(carried)}
    offset = start + size + (-(start + size) % 8)
    arrays: dict[str, Any] = {}
    for name, count in _LAYOUT:
        arrays[name] = np.frombuffer(data, dtype="<f8", count=lengths[count], offset=offset)
        offset += arrays[name].nbytes
        arrays[name] = arrays[name].astype(np.float64)
    unit_kinds, metric_kinds = header["moves"]
    arrays["moved_old"], arrays["moved_new"], offset = _read_moves(
        data, offset, unit_kinds, len(moved), _UNIT_WIDTH
    )
    arrays["metric_old"], arrays["metric_new"], offset = _read_moves(
        data, offset, metric_kinds, len(metric_moved), _METRIC_WIDTH
    )
    if offset != len(data):
        raise ValueError("a row's arrays do not fill it")
    return Raw(
        counts=(o, f, v),
        arms=header["arms"],
        units=header["units"],
        segments=header["segments"],
        errors=header["errors"],
        carried=carried,
        value_metrics=header["value_metrics"],
        moved=moved,
        metric_moved=metric_moved,
        **arrays,
    )


def _read_tuples(part: Any) -> Raw:
    """A row of the format before (one JSON object, a tuple per event, written by ingest
    until this format): the same row."""
    o, f, v = part["o"], part["f"], part["v"]
    for events, width in ((o, 8), (f, 4), (v, 5)):
        if any(len(e) != width for e in events):
            raise ValueError(f"an event of the format before is a tuple of {width}")
    nan = float("nan")
    moves = []
    for name, width in (("u", _UNIT_WIDTH), ("m", _METRIC_WIDTH)):
        keys, old, new = [], [], []
        for *key, before, after in part[name]:
            if len(before) != width or len(after) != width:
                raise ValueError(f"a unit's moves have {width} values")
            keys.append(key)
            old.append(before)
            new.append(after)
        moves.append((keys, _floats(old, width), _floats(new, width)))
    carried = [(i, m) for i, row in enumerate(o) for m in row[6]]
    return Raw(
        counts=(len(o), len(f), len(v)),
        arms=[e[0] for e in o] + [e[0] for e in f] + [e[0] for e in v],
        units=[e[1] for e in o] + [e[1] for e in f] + [e[1] for e in v],
        segments=[e[7] for e in o] + [e[2] for e in f] + [e[2] for e in v],
        errors=[e[4] for e in o],
        carried=[(i, name) for i, (name, _) in carried],
        value_metrics=[e[3] for e in v],
        latency=np.array([float(e[2]) for e in o], dtype=np.float64),
        ttft=np.array([nan if e[3] is None else e[3] for e in o], dtype=np.float64),
        cost=np.array([nan if e[5] is None else e[5] for e in o], dtype=np.float64),
        carried_value=np.array([value for _, (_, value) in carried], dtype=np.float64),
        score=np.array([float(e[3]) for e in f], dtype=np.float64),
        value=np.array([float(e[4]) for e in v], dtype=np.float64),
        moved=moves[0][0],
        moved_old=moves[0][1],
        moved_new=moves[0][2],
        metric_moved=moves[1][0],
        metric_old=moves[1][1],
        metric_new=moves[1][2],
    )


Key = tuple[int, str, str, str]  # stage, arm, dimension, value


@dataclass
class Pending:
    """The rows of one fold as one set of columns: their events in the order a fold has
    always read them (every row's outcomes, then every row's feedback, then every row's
    metric values), each with its segments (indices into ``keys``, -1 past its values) and
    its unit (one number per stage, arm and unit); the outcomes' numbers; the moves."""

    keys: list[Key]
    counts: tuple[int, int, int]
    event_keys: Ints  # (events, SLOTS)
    event_units: Ints
    latency: Floats
    ttft: Floats
    cost: Floats
    error: Ints
    errors: list[str]
    metrics: list[str]
    carried: Ints  # (n, 2): outcome (of all), metric
    carried_value: Floats
    score: Floats
    value_metric: Ints
    value: Floats
    moved_units: Ints
    moved_old: Floats
    moved_new: Floats
    metric_units: Ints
    metric_moved: Ints  # metric
    metric_old: Floats
    metric_new: Floats


def gather(rows: Sequence[tuple[int, Columns]]) -> Pending:
    """The rows ``(stage, columns)``, in the order they were written, as one :class:`Pending`."""
    keys: dict[Key, int] = {}
    units: dict[tuple[int, str], int] = {}
    arms: dict[str, int] = {}
    errors: dict[str, int] = {}
    metrics: dict[str, int] = {}
    parts: dict[str, list[Any]] = {name: [] for name in _GATHERED}
    events: tuple[list[Any], list[Any], list[Any]] = ([], [], [])  # per kind: (keys, units)
    outcomes = 0
    for stage_id, c in rows:
        arm_ids = np.array([arms.setdefault(a, len(arms)) for a in c.arms], dtype=np.int64)
        unit_ids = np.array(
            [units.setdefault((stage_id, u), len(units)) for u in c.units], dtype=np.int64
        )
        # A (stage, arm, unit) as one number: the unit's, then the arm's in the low bits.
        ukey = (unit_ids[:, None] << 16) + arm_ids[None, :]
        # The (arm, segment) pairs the events name, and nothing else: a key placed is a row.
        ev = c.events
        width = len(c.segments) + 1
        named = np.unique(np.repeat(ev[:, 0], SLOTS) * width + ev[:, 2:].ravel())
        table = np.full((len(c.arms), width), -1, dtype=np.int64)  # last column: no value
        for code in named.tolist():
            arm, segment = divmod(code, width)
            if segment < len(c.segments):
                d, v = c.segments[segment]
                table[arm, segment] = keys.setdefault((stage_id, c.arms[arm], d, v), len(keys))
        ev_keys = table[ev[:, :1], ev[:, 2:]] if len(ev) else np.zeros((0, SLOTS), np.int64)
        ev_units = ukey[ev[:, 1], ev[:, 0]] if len(ev) else np.zeros(0, np.int64)
        o, f, _ = c.counts
        for kind, (a, b) in enumerate(((0, o), (o, o + f), (o + f, len(ev)))):
            events[kind].append((ev_keys[a:b], ev_units[a:b]))
        error_ids = np.array([errors.setdefault(e, len(errors)) for e in c.errors] + [-1])
        metric_ids = np.array([metrics.setdefault(m, len(metrics)) for m in c.metrics] + [-1])
        parts["latency"].append(c.latency)
        parts["ttft"].append(c.ttft)
        parts["cost"].append(c.cost)
        parts["error"].append(error_ids[c.error])
        parts["carried"].append(
            np.column_stack([c.carried[:, 0] + outcomes, metric_ids[c.carried[:, 1]]])
        )
        parts["carried_value"].append(c.carried_value)
        parts["score"].append(c.score)
        parts["value_metric"].append(metric_ids[c.value_metric])
        parts["value"].append(c.value)
        empty = np.zeros(0, np.int64)
        parts["moved_units"].append(ukey[c.moved[:, 1], c.moved[:, 0]] if len(c.moved) else empty)
        parts["moved_old"].append(c.moved_old)
        parts["moved_new"].append(c.moved_new)
        mm = c.metric_moved
        parts["metric_units"].append(ukey[mm[:, 1], mm[:, 0]] if len(mm) else empty)
        parts["metric_moved"].append(metric_ids[mm[:, 2]])
        parts["metric_old"].append(c.metric_old)
        parts["metric_new"].append(c.metric_new)
        outcomes += o
    joined = {name: _join(parts[name], _GATHERED[name]) for name in _GATHERED}
    return Pending(
        keys=list(keys),
        counts=(outcomes, sum(len(k) for k, _ in events[1]), sum(len(k) for k, _ in events[2])),
        event_keys=_join([k for kind in events for k, _ in kind], SLOTS),
        event_units=_join([u for kind in events for _, u in kind], 1),
        errors=list(errors),
        metrics=list(metrics),
        **joined,
    )


# The columns gathered row after row, and their widths.
_GATHERED = {
    "latency": 1, "ttft": 1, "cost": 1, "error": 1, "carried": 2, "carried_value": 1,
    "score": 1, "value_metric": 1, "value": 1, "moved_units": 1, "moved_old": _UNIT_WIDTH,
    "moved_new": _UNIT_WIDTH, "metric_units": 1, "metric_moved": 1, "metric_old": 3,
    "metric_new": 3,
}  # fmt: skip


def _join(arrays: Sequence[Any], width: int) -> Any:
    if not arrays:
        return np.zeros((0, width) if width > 1 else 0)
    joined = np.concatenate(arrays)
    return joined.reshape(-1, width) if width > 1 else joined
