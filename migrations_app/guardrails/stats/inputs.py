"""The statistics' inputs: per-arm sums that add up exactly across windows (bucket counts of the
latency sketch, per-unit cluster sums, paired shadow counts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt
from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping

FloatArray = npt.NDArray[np.float64]


RELATIVE_ACCURACY = 0.01


MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)


# ddsketch's LogarithmicMapping computes key = ceil(log2(v) * multiplier); reproduced here
# so that numpy arrays bucket exactly like DDSketch.add.
_KEY_MULTIPLIER = math.log(2) / math.log1p(2 * RELATIVE_ACCURACY / (1 - RELATIVE_ACCURACY))


_MIN_INDEXABLE = MAPPING.min_possible


# Bucket edges are computed in floating point; widening them by a relative 1e-9 keeps
# the bounds conservative when a value sits exactly on an edge.
_EDGE_SLACK = 1e-9


def _fsum_field(items: list[Any], name: str) -> float:
    return math.fsum(getattr(item, name) for item in items)


@dataclass(frozen=True, slots=True)
class ClusterSums:
    """Unit-level sums for a ratio metric Y/N (errors per request, cost per request, ...).

    ``sum_yy``, ``sum_yn`` and ``sum_nn`` are sums over units of Y_u**2, Y_u*N_u and
    N_u**2, and ``sum_yyn``, ``sum_ynn`` and ``sum_nnn`` of Y_u**2 N_u, Y_u N_u**2 and
    N_u**3 (the leverage correction of :func:`ratio_cluster_variance`), using each unit's
    running totals for the stage. They stay additive across windows if each window stores
    the *increments*: when a unit's totals move from (Y, N) to (Y + y, N + n), the window
    adds (Y+y)**2 - Y**2 and so on. ``units`` counts units the first time they are seen.
    """

    units: int = 0
    sum_yy: float = 0.0
    sum_yn: float = 0.0
    sum_nn: float = 0.0
    sum_yyn: float = 0.0
    sum_ynn: float = 0.0
    sum_nnn: float = 0.0

    @classmethod
    def merge(cls, items: Iterable[ClusterSums]) -> ClusterSums:
        """Sum of many, exactly rounded, so the result does not depend on their order."""
        seq = list(items)
        return cls(
            sum(item.units for item in seq),
            *(_fsum_field(seq, name) for name in CLUSTER_MOMENTS),
        )

    @classmethod
    def from_units(cls, y: npt.ArrayLike, n: npt.ArrayLike) -> ClusterSums:
        """From per-unit totals (tests, backfills)."""
        ya = np.asarray(y, dtype=np.float64)
        na = np.asarray(n, dtype=np.float64)
        return cls(int(np.count_nonzero(na)), *unit_moments(ya, na))


# The moments of ClusterSums in field order: Y^a N^b summed over units.
CLUSTER_MOMENTS = ("sum_yy", "sum_yn", "sum_nn", "sum_yyn", "sum_ynn", "sum_nnn")


def unit_moments(y: FloatArray, n: FloatArray) -> tuple[float, ...]:
    """The :data:`CLUSTER_MOMENTS` of units with totals ``y`` and ``n``, exactly rounded."""
    return tuple(
        math.fsum(v.tolist()) for v in (y * y, y * n, n * n, y * y * n, y * n * n, n * n * n)
    )


@dataclass(frozen=True, slots=True)
class RatioArm:
    """One arm of a ratio metric Y/N as the vectorised kernels read it: the totals, the
    request-level sum of squares of the values, and the unit-level sums of
    :class:`ClusterSums`. Each field is a float for one evaluation, or an array (rollouts x
    looks) in the simulations, which run the same kernels."""

    y: npt.ArrayLike
    n: npt.ArrayLike
    sum_sq: npt.ArrayLike
    units: npt.ArrayLike
    sum_yy: npt.ArrayLike
    sum_yn: npt.ArrayLike
    sum_nn: npt.ArrayLike
    sum_yyn: npt.ArrayLike
    sum_ynn: npt.ArrayLike
    sum_nnn: npt.ArrayLike

    @classmethod
    def of(cls, y: float, n: float, clusters: ClusterSums, sum_sq: float | None = None) -> RatioArm:
        """From stored sums; ``sum_sq`` defaults to ``y`` (0/1 values: x**2 = x)."""
        c = clusters
        return cls(
            y, n, y if sum_sq is None else sum_sq, c.units,
            c.sum_yy, c.sum_yn, c.sum_nn, c.sum_yyn, c.sum_ynn, c.sum_nnn,
        )  # fmt: skip

    @classmethod
    def stack(cls, arms: Sequence[RatioArm]) -> RatioArm:
        """Many arms' scalar sums as one arm of arrays (one element per arm, in order), for
        the kernels to test many segments in one vectorised pass."""
        return cls(
            *(np.array([getattr(a, f.name) for a in arms], dtype=np.float64) for f in fields(cls))
        )


@dataclass(frozen=True, slots=True)
class Buckets:
    """DDSketch-style bucket counts (LogarithmicMapping, 1 % relative accuracy).

    ``counts`` maps a bucket key to how many values fell in it; key k holds the values in
    (gamma**(k-1), gamma**k]. ``zero_count`` holds values too small to index (<= 0).
    """

    counts: Mapping[int, int] = field(default_factory=dict)
    zero_count: int = 0

    @property
    def total(self) -> int:
        """Number of values."""
        return self.zero_count + sum(self.counts.values())

    @classmethod
    def merge(cls, items: Iterable[Buckets]) -> Buckets:
        """Bucket-wise sum."""
        counts: dict[int, int] = {}
        zero = 0
        for item in items:
            zero += item.zero_count
            for key, count in item.counts.items():
                counts[key] = counts.get(key, 0) + count
        return cls(counts=counts, zero_count=zero)

    @classmethod
    def from_values(cls, values: npt.ArrayLike) -> Buckets:
        """Bucket raw values with the same mapping DDSketch uses."""
        keys, counts, zero = bucketize(values)
        return cls(counts=dict(zip(keys.tolist(), counts.tolist(), strict=True)), zero_count=zero)

    def arrays(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Sorted keys and their counts (zero bucket excluded)."""
        if not self.counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        keys = np.fromiter(self.counts.keys(), dtype=np.int64, count=len(self.counts))
        counts = np.fromiter(self.counts.values(), dtype=np.int64, count=len(self.counts))
        order = np.argsort(keys, kind="stable")
        return keys[order], counts[order]


def bucketize(
    values: npt.ArrayLike,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """Keys (sorted, unique), their counts and the zero count for raw values."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    positive = arr > _MIN_INDEXABLE
    keys = bucket_keys(arr[positive])
    uniq, counts = np.unique(keys, return_counts=True)
    return uniq.astype(np.int64), counts.astype(np.int64), int(arr.size - positive.sum())


def bucket_keys(values: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The DDSketch key of each (positive) value."""
    arr = np.asarray(values, dtype=np.float64)
    return np.ceil(np.log(arr) / math.log(2) * _KEY_MULTIPLIER).astype(np.int64)


def bucket_bounds(keys: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """(lower, upper) edges of buckets, widened by a hair so they always contain their values."""
    k = np.asarray(keys, dtype=np.float64)
    lower = np.power(2.0, (k - 1) / _KEY_MULTIPLIER) * (1 - _EDGE_SLACK)
    upper = np.power(2.0, k / _KEY_MULTIPLIER) * (1 + _EDGE_SLACK)
    return lower, upper


def bucket_value(key: int) -> float:
    """The value DDSketch reports for a bucket (within 1 % of every value in it)."""
    return float(MAPPING.value(key))


def buckets_from_ddsketch(sketch: DDSketch) -> Buckets:
    """Convert a ``ddsketch.DDSketch`` built with ``LogarithmicMapping(0.01)`` to :class:`Buckets`."""
    mapping = sketch._mapping
    if not isinstance(mapping, LogarithmicMapping) or not math.isclose(
        mapping.relative_accuracy, RELATIVE_ACCURACY
    ):
        raise ValueError("sketch must use LogarithmicMapping with relative accuracy 0.01")
    if sketch._negative_store.count:
        raise ValueError("durations cannot be negative")
    store = sketch._store
    counts = {store.offset + index: round(count) for index, count in enumerate(store.bins) if count}
    return Buckets(counts=counts, zero_count=round(sketch._zero_count))


@dataclass(frozen=True, slots=True)
class MetricSums:
    """One arm's sums of one per-request metric: how many values, their sum and sum of
    squares, and the unit sums (Y = a unit's sum of values, N = its count of values)."""

    n: int = 0
    total: float = 0.0
    sum_sq: float = 0.0
    clusters: ClusterSums = ClusterSums()

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @classmethod
    def merge(cls, items: Iterable[MetricSums]) -> MetricSums:
        """Sum of many, exactly rounded, so the result does not depend on their order."""
        seq = list(items)
        return cls(
            sum(item.n for item in seq),
            math.fsum(item.total for item in seq),
            math.fsum(item.sum_sq for item in seq),
            ClusterSums.merge(item.clusters for item in seq),
        )

    def __add__(self, other: MetricSums) -> MetricSums:
        return MetricSums.merge((self, other))

    def to_list(self) -> list[float]:
        """Storage form: n, total, sum of squares, units, then the cluster moments."""
        c = self.clusters
        return [self.n, self.total, self.sum_sq, c.units, *(getattr(c, m) for m in CLUSTER_MOMENTS)]

    @classmethod
    def from_list(cls, value: Sequence[float] | None) -> MetricSums:
        """Inverse of :meth:`to_list`; missing trailing values read as zero."""
        stored = list(value or ())
        stored += [0.0] * (4 + len(CLUSTER_MOMENTS) - len(stored))
        n, total, sum_sq, units, *moments = stored
        return cls(
            int(n), float(total), float(sum_sq), ClusterSums(int(units), *map(float, moments))
        )

    def ratio_arm(self) -> RatioArm:
        return RatioArm.of(self.total, self.n, self.clusters, self.sum_sq)

    @classmethod
    def from_values(cls, units: Sequence[str], values: Sequence[float]) -> MetricSums:
        """From per-request units and values (tests, backfills)."""
        per_unit: dict[str, list[float]] = {}
        for unit, value in zip(units, values, strict=True):
            per_unit.setdefault(unit, []).append(float(value))
        y = [math.fsum(v) for v in per_unit.values()]
        n = [float(len(v)) for v in per_unit.values()]
        return cls(
            len(values),
            math.fsum(values),
            math.fsum(v * v for v in values),
            ClusterSums.from_units(y, n),
        )


@dataclass(frozen=True, slots=True)
class PairedSums:
    """Shadow: both models answered the same requests. The control's values, the
    candidate's, and their per-request difference (candidate - control), each as
    :class:`MetricSums` over the same pairs and units."""

    control: MetricSums = MetricSums()
    candidate: MetricSums = MetricSums()
    difference: MetricSums = MetricSums()

    @property
    def n(self) -> int:
        return self.difference.n

    @classmethod
    def merge(cls, items: Iterable[PairedSums]) -> PairedSums:
        seq = list(items)
        return cls(
            MetricSums.merge(p.control for p in seq),
            MetricSums.merge(p.candidate for p in seq),
            MetricSums.merge(p.difference for p in seq),
        )

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "control": self.control.to_list(),
            "candidate": self.candidate.to_list(),
            "difference": self.difference.to_list(),
        }

    @classmethod
    def from_dict(cls, value: dict[str, Sequence[float]] | None) -> PairedSums:
        value = value or {}
        return cls(
            *(MetricSums.from_list(value.get(k)) for k in ("control", "candidate", "difference"))
        )

    @classmethod
    def from_values(
        cls, units: Sequence[str], control: Sequence[float], candidate: Sequence[float]
    ) -> PairedSums:
        """From per-pair units and both arms' values (tests, backfills)."""
        diff = [b - a for a, b in zip(control, candidate, strict=True)]
        return cls(
            MetricSums.from_values(units, control),
            MetricSums.from_values(units, candidate),
            MetricSums.from_values(units, diff),
        )


@dataclass(frozen=True, slots=True)
class ArmAggregates:
    """One arm's aggregates over a stage, summed across windows by the caller.

    Every field is a sum, so windows merge by addition (:meth:`merge`).

    Errors: ``requests``, ``errors``, ``errors_by_kind`` and ``error_clusters`` (Y = errors,
    N = requests per unit; ``error_clusters.units`` is the number of units, used by the
    sample-ratio test). Latency and time to first token: bucket counts plus sums of values
    and of their logs (for display). Cost: requests with a known cost, the sum and sum of
    squares of their cost, and ``cost_clusters`` (Y = cost, N = costed requests per unit).
    Feedback, normalised to [0, 1]: count, sum, sum of squares, ``feedback_clusters``
    (Y = score sum, N = feedbacks per unit) and ``feedback_rate_clusters`` (Y = feedbacks,
    N = requests per unit). How latencies cluster by unit, on the log(1 + ms) scale: the
    count, sum and sum of squares and ``latency_clusters`` (Y = sum of log(1 + ms), N = its
    count per unit); the same for time to first token. ``metrics``: per-request metrics by
    name (the application's own, the answer checks), each a :class:`MetricSums`.
    """

    requests: int = 0
    errors: int = 0
    errors_by_kind: Mapping[str, int] = field(default_factory=dict)
    error_clusters: ClusterSums = ClusterSums()
    latency: Buckets = Buckets()
    latency_sum: float = 0.0
    latency_log_sum: float = 0.0
    ttft: Buckets = Buckets()
    ttft_sum: float = 0.0
    ttft_log_sum: float = 0.0
    cost_n: int = 0
    cost_sum: float = 0.0
    cost_sum_sq: float = 0.0
    cost_clusters: ClusterSums = ClusterSums()
    feedback_n: int = 0
    feedback_sum: float = 0.0
    feedback_sum_sq: float = 0.0
    feedback_clusters: ClusterSums = ClusterSums()
    feedback_rate_clusters: ClusterSums = ClusterSums()
    latency_log1p_n: int = 0
    latency_log1p_sum: float = 0.0
    latency_log1p_sum_sq: float = 0.0
    latency_clusters: ClusterSums = ClusterSums()
    ttft_log1p_n: int = 0
    ttft_log1p_sum: float = 0.0
    ttft_log1p_sum_sq: float = 0.0
    ttft_clusters: ClusterSums = ClusterSums()
    metrics: Mapping[str, MetricSums] = field(default_factory=dict)

    @property
    def units(self) -> int:
        """Distinct units that sent requests."""
        return self.error_clusters.units

    @property
    def feedback_rate(self) -> float:
        """Feedbacks per request."""
        return self.feedback_n / self.requests if self.requests else 0.0

    @classmethod
    def merge(cls, windows: Iterable[ArmAggregates]) -> ArmAggregates:
        """Sum windows. Exactly rounded float sums make the result independent of order."""
        seq = list(windows)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.name
            if name == "errors_by_kind":
                kinds: dict[str, int] = {}
                for w in seq:
                    for kind, count in w.errors_by_kind.items():
                        kinds[kind] = kinds.get(kind, 0) + count
                values[name] = kinds
            elif name == "metrics":
                named: dict[str, list[MetricSums]] = {}
                for w in seq:
                    for metric, sums in w.metrics.items():
                        named.setdefault(metric, []).append(sums)
                values[name] = {m: MetricSums.merge(items) for m, items in sorted(named.items())}
            elif name in ("latency", "ttft"):
                values[name] = Buckets.merge(getattr(w, name) for w in seq)
            elif name.endswith("_clusters"):
                values[name] = ClusterSums.merge(getattr(w, name) for w in seq)
            elif f.type == "int":
                values[name] = sum(getattr(w, name) for w in seq)
            else:
                values[name] = _fsum_field(seq, name)
        return cls(**values)

    def __add__(self, other: ArmAggregates) -> ArmAggregates:
        return ArmAggregates.merge((self, other))


@dataclass(frozen=True, slots=True)
class PairedErrors:
    """Shadow mode: both models answered the same ``n`` requests."""

    n: int = 0
    control_only: int = 0
    candidate_only: int = 0
    both: int = 0
