"""A stage's pending segment row (``PendingSegments.data``, segment_rollup.py): what one ingest
transaction adds to the stage's segments, by columns, and the rows of a fold read back as one
set of columns.

A row holds its events (segmented outcomes, feedback and metric values: arm, unit and up to
three segment values each, as indices into the row's lists of arms, units and (dimension,
value) pairs), the outcomes' numbers, and the moves of the events' units' totals (before and
after). The strings are JSON, the numbers raw little-endian arrays: ingest writes them without
making a Python object per number, and a fold reads them without making one per outcome.

Layout: ``MAGIC``, the header's length (4 bytes), the header (JSON: the lists and the columns'
lengths), zero bytes to a multiple of 8, then the float64 arrays and the int32 arrays of
:data:`_LAYOUT`, in its order. Rows written before this format (one JSON object, a tuple per
event: they start with ``{``) are read by :func:`read` too, into the same columns.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from migrations_app.outcomes.aggregation import UNIT_COLUMNS, OutcomeFacts

MAGIC = b"SEG\x02"
SLOTS = 3  # segment values per event at most (segment_rollup.parse_segments)
_UNIT_WIDTH = len(UNIT_COLUMNS)  # a unit's totals, as the unit totals' upsert returns them
_METRIC_WIDTH = 3  # a unit's metric sums: n, total, control_total (metric_rollup.Moves)

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


# (field, dtype, columns per item, which count): the arrays after the header, in order; then
# the moves' totals before and after, column by column (:func:`_pack_moves`).
_LAYOUT = (
    ("latency", "<f8", 1, "o"),
    ("ttft", "<f8", 1, "o"),
    ("cost", "<f8", 1, "o"),
    ("carried_value", "<f8", 1, "c"),
    ("score", "<f8", 1, "f"),
    ("value", "<f8", 1, "v"),
    ("events", "<i4", 2 + SLOTS, "e"),
    ("error", "<i4", 1, "o"),
    ("carried", "<i4", 2, "c"),
    ("value_metric", "<i4", 1, "v"),
    ("moved", "<i4", 2, "u"),
    ("metric_moved", "<i4", 3, "m"),
)


def columns(
    outcomes: Sequence[OutcomeFacts],
    feedback: Sequence[tuple[OutcomeFacts, float]] = (),
    values: Sequence[tuple[OutcomeFacts, str, float]] = (),
) -> Columns:
    """A row's columns for some segmented outcomes, feedback and metric values (each with
    the facts of its outcome), without moves (:func:`add_moves`, :func:`add_metric_moves`).
    One pass per column, not one call per event: ingest makes one of these per batch."""
    facts = [*outcomes, *(f for f, _ in feedback), *(f for f, *_ in values)]
    sizes = [len(f.segments) for f in facts]
    if sizes and max(sizes) > SLOTS:
        raise ValueError(f"an event has at most {SLOTS} segment values")
    pairs = [p for f in facts for p in f.segments]
    segments, codes = _encode(pairs)
    slots = np.full((len(facts), SLOTS), -1, dtype=np.int64)
    if len(set(sizes)) == 1:  # every event with as many values (a plan's events mostly are)
        slots[:, : sizes[0]] = codes.reshape(len(facts), sizes[0])
    else:
        owner = np.repeat(np.arange(len(facts)), sizes)
        starts = np.cumsum([0, *sizes[:-1]])
        slots[owner, np.arange(len(pairs)) - starts[owner]] = codes
    arms, arm_codes = _encode([f.arm for f in facts])
    units, unit_codes = _encode([f.unit for f in facts])
    events = np.column_stack([arm_codes, unit_codes, slots]).reshape(-1, 2 + SLOTS)
    errors, error = _encode([f.error for f in outcomes], skip="")
    carried_at = [(i, m) for i, f in enumerate(outcomes) for m in f.metrics]
    metrics, metric_codes = _encode(
        [name for _, (name, _) in carried_at] + [name for _, name, _ in values]
    )
    carried = np.column_stack(
        [np.array([i for i, _ in carried_at], dtype=np.int64), metric_codes[: len(carried_at)]]
    ).reshape(-1, 2)
    none = np.zeros((0, 1))
    return Columns(
        arms=arms,
        units=units,
        segments=segments,
        errors=errors,
        metrics=metrics,
        counts=(len(outcomes), len(feedback), len(values)),
        events=events,
        latency=np.array([f.latency_ms for f in outcomes], dtype=np.float64),
        ttft=np.array([f.ttft_ms for f in outcomes], dtype=np.float64),  # None: NaN
        cost=np.array([f.cost_usd for f in outcomes], dtype=np.float64),
        error=error,
        carried=carried,
        carried_value=np.array([value for _, (_, value) in carried_at], dtype=np.float64),
        score=np.array([score for _, score in feedback], dtype=np.float64),
        value_metric=metric_codes[len(carried_at) :],
        value=np.array([value for *_, value in values], dtype=np.float64),
        moved=_ints([], 2),
        moved_old=_floats(none, _UNIT_WIDTH),
        moved_new=_floats(none, _UNIT_WIDTH),
        metric_moved=_ints([], 3),
        metric_old=_floats(none, _METRIC_WIDTH),
        metric_new=_floats(none, _METRIC_WIDTH),
    )


def _encode(items: Sequence[Any], skip: Any = None) -> tuple[list[Any], Ints]:
    """The distinct items in order of first appearance (but ``skip``), and each item's index
    among them (-1 for ``skip``): dict.fromkeys and map run in C, a setdefault per item not."""
    distinct = [x for x in dict.fromkeys(items) if x != skip]
    index = {x: i for i, x in enumerate(distinct)}
    if skip is not None:
        index[skip] = -1
    return distinct, np.fromiter(map(index.__getitem__, items), dtype=np.int64, count=len(items))


def add_moves(
    c: Columns, keys: Sequence[Sequence[str]], old: npt.ArrayLike, new: npt.ArrayLike
) -> None:
    """The moves of the row's units' totals: keys (arm, unit) of its events' units, totals
    before and after."""
    arms = {a: i for i, a in enumerate(c.arms)}
    units = {u: i for i, u in enumerate(c.units)}
    c.moved = _ints([(arms[arm], units[unit]) for arm, unit in keys], 2)
    c.moved_old, c.moved_new = _floats(old, _UNIT_WIDTH), _floats(new, _UNIT_WIDTH)


def add_metric_moves(
    c: Columns, keys: Sequence[Sequence[str]], old: npt.ArrayLike, new: npt.ArrayLike
) -> None:
    """The moves of the row's units' metric sums: keys (arm, unit, metric), before, after."""
    arms = {a: i for i, a in enumerate(c.arms)}
    units = {u: i for i, u in enumerate(c.units)}
    metrics = {m: i for i, m in enumerate(c.metrics)}
    codes = [(arms[a], units[u], metrics.setdefault(m, len(metrics))) for a, u, m in keys]
    c.metrics = list(metrics)
    c.metric_moved = _ints(codes, 3)
    c.metric_old, c.metric_new = _floats(old, _METRIC_WIDTH), _floats(new, _METRIC_WIDTH)


def _ints(rows: Sequence[Sequence[int]], width: int) -> Ints:
    return np.array(rows, dtype=np.int64).reshape(-1, width)


def _floats(rows: npt.ArrayLike | None, width: int) -> Floats:
    if rows is None:
        return np.zeros((0, width), dtype=np.float64)
    return np.asarray(rows, dtype=np.float64).reshape(-1, width)


def _lengths(c: Columns) -> dict[str, int]:
    o, f, v = c.counts
    return {
        "o": o, "f": f, "v": v, "e": o + f + v, "c": len(c.carried),
        "u": len(c.moved), "m": len(c.metric_moved),
    }  # fmt: skip


def pack(c: Columns) -> bytes:
    """The row's bytes (:data:`_LAYOUT`)."""
    lengths = _lengths(c)
    units, metrics = _kinds(c.moved_old, c.moved_new), _kinds(c.metric_old, c.metric_new)
    header = orjson.dumps({
        "arms": c.arms, "units": c.units, "segments": c.segments, "errors": c.errors,
        "metrics": c.metrics, "counts": c.counts, "lengths": [lengths[k] for k in "cum"],
        "moves": [units, metrics],
    })  # fmt: skip
    start = len(MAGIC) + 4 + len(header)
    parts = [MAGIC, struct.pack("<I", len(header)), header, b"\0" * (-start % 8)]
    parts += [
        np.ascontiguousarray(getattr(c, name), dtype=dtype).tobytes() for name, dtype, *_ in _LAYOUT
    ]
    parts += _pack_moves(units, c.moved_old, c.moved_new)
    parts += _pack_moves(metrics, c.metric_old, c.metric_new)
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
    if not data.startswith(MAGIC):
        return _read_tuples(orjson.loads(data))
    (size,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    header = orjson.loads(data[start : start + size])
    counts = tuple(int(n) for n in header["counts"])
    if len(counts) != 3:
        raise ValueError("a row has three kinds of events")
    o, f, v = counts
    c_, u, m = (int(n) for n in header["lengths"])
    lengths = {"o": o, "f": f, "v": v, "e": o + f + v, "c": c_, "u": u, "m": m}
    offset = start + size + (-(start + size) % 8)
    arrays: dict[str, Any] = {}
    for name, dtype, width, count in _LAYOUT:
        items = lengths[count] * width
        array = np.frombuffer(data, dtype=dtype, count=items, offset=offset)
        offset += array.nbytes
        kind = np.int64 if dtype == "<i4" else np.float64
        arrays[name] = array.astype(kind).reshape(-1, width) if width > 1 else array.astype(kind)
    unit_kinds, metric_kinds = header["moves"]
    arrays["moved_old"], arrays["moved_new"], offset = _read_moves(
        data, offset, unit_kinds, u, _UNIT_WIDTH
    )
    arrays["metric_old"], arrays["metric_new"], offset = _read_moves(
        data, offset, metric_kinds, m, _METRIC_WIDTH
    )
    if offset != len(data):
        raise ValueError("a row's arrays do not fill it")
    columns = Columns(
        arms=[str(a) for a in header["arms"]],
        units=[str(x) for x in header["units"]],
        segments=[(str(d), str(x)) for d, x in header["segments"]],
        errors=[str(e) for e in header["errors"]],
        metrics=[str(x) for x in header["metrics"]],
        counts=(o, f, v),
        **arrays,
    )
    _check(columns)
    return columns


def _check(c: Columns) -> None:
    """Every index points into its list (a fold relies on it)."""
    for codes, size, empty in (
        (c.events[:, 0], len(c.arms), False), (c.events[:, 1], len(c.units), False),
        (c.events[:, 2:], len(c.segments), True), (c.error, len(c.errors), True),
        (c.carried[:, 0], c.counts[0], False), (c.carried[:, 1], len(c.metrics), False),
        (c.value_metric, len(c.metrics), False), (c.moved[:, 0], len(c.arms), False),
        (c.moved[:, 1], len(c.units), False), (c.metric_moved[:, 0], len(c.arms), False),
        (c.metric_moved[:, 1], len(c.units), False), (c.metric_moved[:, 2], len(c.metrics), False),
    ):  # fmt: skip
        if codes.size and (codes.max() >= size or codes.min() < (-1 if empty else 0)):
            raise ValueError("a row's index points past its list")


def _read_tuples(part: Any) -> Columns:
    """A row of the format before (one JSON object of tuples, written by ingest until this
    format): the same columns."""

    def facts(
        arm: str,
        unit: str,
        segments: Any,
        latency: float = 0.0,
        ttft: float | None = None,
        error: str = "",
        cost: float | None = None,
        metrics: Any = (),
    ) -> OutcomeFacts:
        pairs = tuple((d, v) for d, v in segments)
        return OutcomeFacts(arm, unit, _NO_WINDOW, latency, ttft, error, cost, metrics, pairs)

    c = columns(
        [
            facts(arm, unit, segments, float(latency), ttft, error, cost,
                  [tuple(m) for m in metrics])
            for arm, unit, latency, ttft, error, cost, metrics, segments in part["o"]
        ],
        [(facts(arm, unit, segments), float(score)) for arm, unit, segments, score in part["f"]],
        [(facts(arm, unit, segments), name, float(value))
         for arm, unit, segments, name, value in part["v"]],
    )  # fmt: skip
    for name, width, add in (("u", _UNIT_WIDTH, add_moves), ("m", 3, add_metric_moves)):
        keys, old, new = [], [], []
        for *key, before, after in part[name]:
            if len(before) != width or len(after) != width:
                raise ValueError(f"a unit's moves have {width} values")
            keys.append(key)
            old.append(before)
            new.append(after)
        add(c, keys, _floats(old, width), _floats(new, width))
    return c


# The window of the outcomes a fold reads: segments have none (only their stage's sums).
_NO_WINDOW = datetime(1970, 1, 1, tzinfo=UTC)


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
