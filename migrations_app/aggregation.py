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
from typing import Any

from migrations_app.stats import ArmAggregates, Buckets, ClusterSums

WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class OutcomeFacts:
    """What one outcome contributes (already validated, cost already priced)."""

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
        return UnitTotals(*(a + b for a, b in zip(self.values(), other.values(), strict=True)))

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


def unit_change(facts: Iterable[OutcomeFacts]) -> UnitTotals:
    """How some outcomes of one unit move its totals."""
    rows = list(facts)
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    return UnitTotals(
        requests=len(rows),
        errors=sum(1 for r in rows if r.error),
        cost_n=len(costs),
        cost_sum=math.fsum(costs),
    )


def _pair_delta(y0: float, n0: float, y1: float, n1: float) -> ClusterSums:
    return ClusterSums(
        units=int(n0 == 0 and n1 != 0),
        sum_yy=y1 * y1 - y0 * y0,
        sum_yn=y1 * n1 - y0 * n0,
        sum_nn=n1 * n1 - n0 * n0,
    )


def cluster_delta(old: UnitTotals, new: UnitTotals) -> ArmAggregates:
    """The cluster-sum change when one unit's totals move from ``old`` to ``new``."""
    return ArmAggregates(
        error_clusters=_pair_delta(old.errors, old.requests, new.errors, new.requests),
        cost_clusters=_pair_delta(old.cost_sum, old.cost_n, new.cost_sum, new.cost_n),
        feedback_clusters=_pair_delta(
            old.feedback_sum, old.feedback_n, new.feedback_sum, new.feedback_n
        ),
        feedback_rate_clusters=_pair_delta(
            old.feedback_n, old.requests, new.feedback_n, new.requests
        ),
    )


def cluster_deltas(moves: Iterable[tuple[UnitTotals, UnitTotals]]) -> ArmAggregates:
    """The summed cluster-sum change of many units' moves (old, new), exactly rounded: the
    same as adding :func:`cluster_delta` of each, at a fraction of the cost (one ingest batch
    moves hundreds of units)."""
    units = [0, 0, 0, 0]
    sums: list[list[list[float]]] = [[[], [], []] for _ in range(4)]
    for old, new in moves:
        pairs = (
            (old.errors, old.requests, new.errors, new.requests),
            (old.cost_sum, old.cost_n, new.cost_sum, new.cost_n),
            (old.feedback_sum, old.feedback_n, new.feedback_sum, new.feedback_n),
            (old.feedback_n, old.requests, new.feedback_n, new.requests),
        )
        for i, (y0, n0, y1, n1) in enumerate(pairs):
            if n0 == 0 and n1 != 0:
                units[i] += 1
            yy, yn, nn = sums[i]
            yy.append(y1 * y1 - y0 * y0)
            yn.append(y1 * n1 - y0 * n0)
            nn.append(n1 * n1 - n0 * n0)
    error, cost, feedback, rate = (
        ClusterSums(units[i], math.fsum(yy), math.fsum(yn), math.fsum(nn))
        for i, (yy, yn, nn) in enumerate(sums)
    )
    return ArmAggregates(
        error_clusters=error,
        cost_clusters=cost,
        feedback_clusters=feedback,
        feedback_rate_clusters=rate,
    )


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


def merge_json(stored: Mapping[str, Any] | None, delta: ArmAggregates) -> dict[str, Any]:
    """A stored row's data plus a delta, in storage form."""
    return to_json(from_json(stored or {}) + delta)
