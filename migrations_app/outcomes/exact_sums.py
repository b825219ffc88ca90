"""Exactly rounded sums of many groups of floats at once, in numpy (pure: no ORM, no clock).

Every sum the aggregates store is exactly rounded (``math.fsum``), so a sum does not depend on
the order of its terms or on how batches were cut. ``math.fsum`` takes Python floats one at a
time: a fold of 20,000 segmented outcomes sums ~2 million terms (each unit's cluster-moment
changes, in its segment of every dimension) and spent most of its time making those floats and
summing them. :func:`group_sums` gives the same sums from arrays.

How: each column's values are split into *pieces*, exactly, such that piece ``j`` of every
value is a multiple of ``B_j = 2**(lo + L*j)`` below ``2**L * B_j`` (``lo``: the column's lowest
set bit; ``L``: 53 bits less those of the largest group's size). A group's pieces ``j`` then sum
exactly in float64 in any order (every partial sum is a multiple of ``B_j`` below ``2**53 * B_j``),
and the group's sum is the exactly rounded sum of its pieces' sums: for one or two pieces a
float addition (IEEE addition rounds the exact sum of two floats to nearest, ties to even, as
``math.fsum`` does), for more ``math.fsum`` of those few. Non-finite values and exponents near
the float range's ends (never seen in what ingest stores) take ``math.fsum`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Columns whose exponents reach past these take math.fsum: the pieces' scales (powers of two)
# must be normal floats, and so must their inverses.
_MIN_EXPONENT = -960
_MAX_EXPONENT = 960
# Fewer terms than this: math.fsum itself is faster than numpy's calls.
_FEW = 256


def group_sums(
    values: npt.ArrayLike, rows: npt.ArrayLike, bounds: Sequence[int] | npt.ArrayLike
) -> FloatArray:
    """Per group ``g`` and column ``c``: ``math.fsum(values[rows[bounds[g]:bounds[g + 1]], c])``.

    ``values``: (n, columns) float64 (or one column, n); ``rows``: the rows of every group, group
    after group (a row may be in several groups); ``bounds``: where each group's rows start,
    and the end (groups may be empty: their sum is 0.0). Returns (groups, columns) float64
    (or (groups,) for one column)."""
    table = np.asarray(values, dtype=np.float64)
    one_column = table.ndim == 1
    # Column by column: a column (and its pieces) stays in the CPU's cache, the whole table
    # would not (a fold's units' moments are megabytes).
    columns = np.ascontiguousarray((table[:, None] if one_column else table).T)
    order = np.asarray(rows, dtype=np.intp)
    edges = np.asarray(bounds, dtype=np.intp)
    out = np.zeros((len(columns), len(edges) - 1), dtype=np.float64)
    sizes = np.diff(edges)
    if len(order) < _FEW and len(order):  # the reference, for all columns at once
        gathered = columns[:, order].tolist()
        spans = list(pairwise(edges.tolist()))
        fsum = math.fsum
        out = np.array([[fsum(c[a:b]) for a, b in spans] for c in gathered], dtype=np.float64)
    elif len(edges) > 1 and len(order):
        nonempty = sizes > 0
        starts = edges[:-1][nonempty]
        width = 53 - int(sizes.max()).bit_length()  # L
        for c, column in enumerate(columns):
            out[c, nonempty] = _column_sums(column, order, starts, width, edges)
    out += 0.0  # math.fsum gives 0.0, not -0.0, for a sum of -0.0s
    return out[0] if one_column else out.T


def _column_sums(
    column: FloatArray,
    order: npt.NDArray[np.intp],
    starts: npt.NDArray[np.intp],
    width: int,
    edges: npt.NDArray[np.intp],
) -> FloatArray:
    """:func:`group_sums` of one column, for the groups that have rows (``starts``)."""
    magnitude = np.abs(column)
    top = float(magnitude.max())
    if not math.isfinite(top) or np.isnan(column).any():
        return _fsums(column, order, edges)
    if top == 0.0:
        return np.zeros(len(starts), dtype=np.float64)
    lowest = float(np.where(magnitude > 0, magnitude, np.inf).min())
    hi = math.frexp(top)[1]  # every |v| < 2**hi, and a multiple of 2**(e - 53) for its e
    lo = math.frexp(lowest)[1] - 53
    if hi - lo > width and lo < 0 and (np.floor(column) == column).all():
        lo = 0  # whole numbers (counts, their squares and cubes) are multiples of 1
    if lo < _MIN_EXPONENT or hi > _MAX_EXPONENT:
        return _fsums(column, order, edges)
    pieces = -(-(hi - lo) // width)
    if pieces <= 1:  # every partial sum is exact
        return np.add.reduceat(column[order], starts)
    rest = magnitude
    sums = []
    for j in reversed(range(1, pieces)):
        scale = lo + width * j
        part = np.floor(rest * math.ldexp(1.0, -scale)) * math.ldexp(1.0, scale)
        rest = rest - part
        sums.append(np.add.reduceat(np.copysign(part, column)[order], starts))
    sums.append(np.add.reduceat(np.copysign(rest, column)[order], starts))
    if pieces == 2:
        return sums[0] + sums[1]  # one rounding of the exact sum: exactly rounded
    fsum = math.fsum
    return np.array([fsum(parts) for parts in zip(*(s.tolist() for s in sums), strict=True)])


def _fsums(
    column: FloatArray, order: npt.NDArray[np.intp], edges: npt.NDArray[np.intp]
) -> FloatArray:
    """``math.fsum`` of each nonempty group's slice of ``column`` (the reference)."""
    gathered = column[order].tolist()
    bounds = edges.tolist()
    return np.array(
        [math.fsum(gathered[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a],
        dtype=np.float64,
    )
