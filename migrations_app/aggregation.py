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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from migrations_app.stats import ArmAggregates, Buckets, ClusterSums

WINDOW_SECONDS = 60


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


@dataclass(frozen=True, slots=True)
class UnitTotals:
    """A unit's running totals in one stage and arm (mirrors the UnitTotals model)."""

    requests: int = 0
    errors: int = 0
    cost_n: int = 0
    cost_sum: float = 0.0
    feedback_n: int = 0
    feedback_sum: float = 0.0

    def __add__(self, other: UnitTotals) -> UnitTotals:
        return UnitTotals(
            self.requests + other.requests,
            self.errors + other.errors,
            self.cost_n + other.cost_n,
            self.cost_sum + other.cost_sum,
            self.feedback_n + other.feedback_n,
            self.feedback_sum + other.feedback_sum,
        )

    def values(self) -> tuple[int, int, int, float, int, float]:
        """The fields in order (``dataclasses.astuple`` deep-copies, and this is per unit)."""
        return (
            self.requests,
            self.errors,
            self.cost_n,
            self.cost_sum,
            self.feedback_n,
            self.feedback_sum,
        )


def window_start(ts: datetime) -> datetime:
    """The window (minute) an event at ``ts`` falls in."""
    return ts.replace(second=0, microsecond=0)


def outcome_delta(facts: Iterable[OutcomeFacts]) -> ArmAggregates:
    """Counts, buckets and sums of some outcomes of one arm and window (no cluster sums:
    those come from :func:`cluster_delta`)."""
    rows = list(facts)
    latencies = [r.latency_ms for r in rows]
    ttfts = [r.ttft_ms for r in rows if r.ttft_ms is not None]
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    kinds: dict[str, int] = {}
    for r in rows:
        if r.error:
            kinds[r.error] = kinds.get(r.error, 0) + 1
    return ArmAggregates(
        requests=len(rows),
        errors=sum(kinds.values()),
        errors_by_kind=kinds,
        latency=Buckets.from_values(latencies) if latencies else Buckets(),
        latency_sum=math.fsum(latencies),
        latency_log_sum=math.fsum(math.log(v) for v in latencies if v > 0),
        ttft=Buckets.from_values(ttfts) if ttfts else Buckets(),
        ttft_sum=math.fsum(ttfts),
        ttft_log_sum=math.fsum(math.log(v) for v in ttfts if v > 0),
        cost_n=len(costs),
        cost_sum=math.fsum(costs),
        cost_sum_sq=math.fsum(c * c for c in costs),
    )


def feedback_delta(scores: Iterable[float]) -> ArmAggregates:
    """Feedback counts and sums (scores already normalised to [0, 1])."""
    values = list(scores)
    return ArmAggregates(
        feedback_n=len(values),
        feedback_sum=math.fsum(values),
        feedback_sum_sq=math.fsum(v * v for v in values),
    )


# The (Y, N) columns of each cluster sum among a unit's totals, in UnitTotals.values() order
# (requests, errors, cost_n, cost_sum, feedback_n, feedback_sum).
_CLUSTER_COLUMNS = {
    "error_clusters": (1, 0),  # errors per request
    "cost_clusters": (3, 2),  # cost per costed request
    "feedback_clusters": (5, 4),  # score per feedback
    "feedback_rate_clusters": (4, 0),  # feedbacks per request
}


def cluster_deltas(old: npt.ArrayLike, new: npt.ArrayLike) -> ArmAggregates:
    """The cluster-sum change when units' totals move from ``old`` to ``new`` (one row per
    unit, columns as :meth:`UnitTotals.values`): per cluster sum, (Y+y)**2 - Y**2 and so on,
    summed over the units exactly rounded, and the units seen for the first time."""
    before = np.asarray(old, dtype=np.float64).reshape(-1, 6)
    after = np.asarray(new, dtype=np.float64).reshape(-1, 6)
    sums: dict[str, ClusterSums] = {}
    for name, (y, n) in _CLUSTER_COLUMNS.items():
        y0, n0, y1, n1 = before[:, y], before[:, n], after[:, y], after[:, n]
        sums[name] = ClusterSums(
            units=int(np.count_nonzero((n0 == 0) & (n1 != 0))),
            sum_yy=math.fsum((y1 * y1 - y0 * y0).tolist()),
            sum_yn=math.fsum((y1 * n1 - y0 * n0).tolist()),
            sum_nn=math.fsum((n1 * n1 - n0 * n0).tolist()),
        )
    return ArmAggregates(
        error_clusters=sums["error_clusters"],
        cost_clusters=sums["cost_clusters"],
        feedback_clusters=sums["feedback_clusters"],
        feedback_rate_clusters=sums["feedback_rate_clusters"],
    )


def cluster_delta(old: UnitTotals, new: UnitTotals) -> ArmAggregates:
    """The cluster-sum change when one unit's totals move from ``old`` to ``new``."""
    return cluster_deltas([old.values()], [new.values()])


# --- storage form ------------------------------------------------------------------------


def _clusters_json(c: ClusterSums) -> list[float]:
    return [c.units, c.sum_yy, c.sum_yn, c.sum_nn]


def _buckets_json(b: Buckets) -> dict[str, Any]:
    return {"zero": b.zero_count, "counts": {str(k): v for k, v in b.counts.items()}}


def to_json(agg: ArmAggregates) -> dict[str, Any]:
    """JSON-safe form of an :class:`ArmAggregates` (stored in WindowAggregate.data)."""
    out: dict[str, Any] = {}
    for f in fields(ArmAggregates):
        value = getattr(agg, f.name)
        if isinstance(value, ClusterSums):
            out[f.name] = _clusters_json(value)
        elif isinstance(value, Buckets):
            out[f.name] = _buckets_json(value)
        elif isinstance(value, Mapping):
            out[f.name] = dict(value)
        else:
            out[f.name] = value
    return out


def from_json(data: Mapping[str, Any]) -> ArmAggregates:
    """Inverse of :func:`to_json`; missing fields are zero."""
    values: dict[str, Any] = {}
    for f in fields(ArmAggregates):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name.endswith("_clusters"):
            units, yy, yn, nn = value
            values[f.name] = ClusterSums(int(units), float(yy), float(yn), float(nn))
        elif f.name in ("latency", "ttft"):
            counts = {int(k): int(v) for k, v in value["counts"].items()}
            values[f.name] = Buckets(counts=counts, zero_count=int(value["zero"]))
        elif f.name == "errors_by_kind":
            values[f.name] = {str(k): int(v) for k, v in value.items()}
        else:
            values[f.name] = value
    return ArmAggregates(**values)


_FIELD_KINDS = tuple(
    (
        f.name,
        "clusters"
        if f.name.endswith("_clusters")
        else "buckets"
        if f.name in ("latency", "ttft")
        else "kinds"
        if f.name == "errors_by_kind"
        else "int"
        if f.type == "int"
        else "float",
    )
    for f in fields(ArmAggregates)
)


def merge_json(stored: Mapping[str, Any] | None, delta: ArmAggregates) -> dict[str, Any]:
    """A stored row's data plus a delta, in storage form.

    The same as ``to_json(from_json(stored) + delta)`` (the sum of two floats is already
    exactly rounded, as ``ArmAggregates.merge`` would make it), but it touches only the
    delta's buckets, not every stored one: ingest merges into each window and stage row on
    every batch, and a stage's buckets only grow."""
    out = dict(stored or {})
    for name, kind in _FIELD_KINDS:
        value = getattr(delta, name)
        current = out.get(name)
        if kind == "clusters":
            units, yy, yn, nn = current if current is not None else (0, 0.0, 0.0, 0.0)
            out[name] = [
                int(units) + value.units,
                float(yy) + value.sum_yy,
                float(yn) + value.sum_yn,
                float(nn) + value.sum_nn,
            ]
        elif kind == "buckets":
            zero, counts = (int(current["zero"]), dict(current["counts"])) if current else (0, {})
            for key, count in value.counts.items():
                text = str(key)
                counts[text] = int(counts.get(text, 0)) + count
            out[name] = {"zero": zero + value.zero_count, "counts": counts}
        elif kind == "kinds":
            kinds = {str(k): int(v) for k, v in (current or {}).items()}
            for k, v in value.items():
                kinds[k] = kinds.get(k, 0) + v
            out[name] = kinds
        elif kind == "int":
            out[name] = int(current or 0) + value
        else:
            out[name] = float(current or 0.0) + value
    return out
