"""The storage form of :class:`ArmAggregates`: the JSON a window, stage or segment row keeps
(``to_json``, ``from_json``), and a delta added to a stored row without building the
aggregate back (``merge_json``, what a fold writes). The sums themselves come from
aggregation.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from migrations_app.guardrails.stats import (
    CLUSTER_MOMENTS,
    ArmAggregates,
    Buckets,
    ClusterSums,
    MetricSums,
)


def _clusters_json(c: ClusterSums) -> list[float]:
    return [c.units, *(getattr(c, name) for name in CLUSTER_MOMENTS)]


def _clusters_list(value: Sequence[Any] | None) -> list[float]:
    """A stored cluster list at full length: rows written before the third-order moments
    existed hold four values, and read as zero for the rest."""
    stored = list(value or ())
    return stored + [0.0] * (1 + len(CLUSTER_MOMENTS) - len(stored))


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
        elif f.name == "metrics":
            out[f.name] = {name: sums.to_list() for name, sums in value.items()}
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
            units, *moments = _clusters_list(value)
            values[f.name] = ClusterSums(int(units), *(float(m) for m in moments))
        elif f.name in ("latency", "ttft"):
            counts = {int(k): int(v) for k, v in value["counts"].items()}
            values[f.name] = Buckets(counts=counts, zero_count=int(value["zero"]))
        elif f.name == "errors_by_kind":
            values[f.name] = {str(k): int(v) for k, v in value.items()}
        elif f.name == "metrics":
            values[f.name] = {str(k): MetricSums.from_list(v) for k, v in value.items()}
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
        else "metrics"
        if f.name == "metrics"
        else "int"
        if f.type == "int"
        else "float",
    )
    for f in fields(ArmAggregates)
)


_INT_FIELDS = tuple(name for name, kind in _FIELD_KINDS if kind == "int")
_FLOAT_FIELDS = tuple(name for name, kind in _FIELD_KINDS if kind == "float")
_CLUSTER_NAMES = tuple(name for name, kind in _FIELD_KINDS if kind == "clusters")
_CLUSTER_LENGTH = 1 + len(CLUSTER_MOMENTS)
_NO_CLUSTERS = ClusterSums()


def merge_json(stored: Mapping[str, Any] | None, delta: ArmAggregates) -> dict[str, Any]:
    """A stored row's data plus a delta, in storage form.

    The same as ``to_json(from_json(stored) + delta)`` (the sum of two floats is already
    exactly rounded, as ``ArmAggregates.merge`` would make it), but it touches only the
    delta's buckets, not every stored one, and leaves a stored field the delta adds nothing
    to as it is: ingest merges into each window, stage and segment row on every batch (a
    batch with segments merges hundreds), and a stage's buckets only grow."""
    out = dict(stored) if stored else {}
    get = out.get
    for name in _INT_FIELDS:
        value = getattr(delta, name)
        current = get(name)
        if current is None:
            out[name] = value
        elif value:
            out[name] = int(current) + value
    for name in _FLOAT_FIELDS:
        value = getattr(delta, name)
        current = get(name)
        if current is None:
            out[name] = 0.0 + value
        elif value:
            out[name] = float(current) + value
    for name in _CLUSTER_NAMES:
        value = getattr(delta, name)
        current = get(name)
        if current is not None and len(current) == _CLUSTER_LENGTH and value == _NO_CLUSTERS:
            continue
        out[name] = _clusters_plus(_clusters_list(current), value)
    for name in ("latency", "ttft"):
        value = getattr(delta, name)
        current = get(name)
        if current is not None and not value.counts and not value.zero_count:
            continue
        zero, counts = (int(current["zero"]), dict(current["counts"])) if current else (0, {})
        for key, count in value.counts.items():
            text = str(key)
            counts[text] = int(counts.get(text, 0)) + count
        out[name] = {"zero": zero + value.zero_count, "counts": counts}
    kinds = get("errors_by_kind")
    if kinds is None or delta.errors_by_kind:
        kinds = {str(k): int(v) for k, v in (kinds or {}).items()}
        for k, v in delta.errors_by_kind.items():
            kinds[k] = kinds.get(k, 0) + v
        out["errors_by_kind"] = kinds
    named = get("metrics")
    if named is None or delta.metrics:
        named = dict(named or {})
        for metric, sums in delta.metrics.items():
            named[metric] = _metric_list_plus(named.get(metric), sums)
        out["metrics"] = named
    return out


_METRIC_LENGTH = 4 + len(CLUSTER_MOMENTS)


def _metric_list_plus(stored: Sequence[Any] | None, sums: MetricSums) -> list[float]:
    """``(MetricSums.from_list(stored) + sums).to_list()`` without the objects."""
    values = list(stored or ())
    if len(values) < _METRIC_LENGTH:
        values += [0.0] * (_METRIC_LENGTH - len(values))
    n, total, sum_sq = values[:3]
    return [
        int(n) + sums.n,
        float(total) + sums.total,
        float(sum_sq) + sums.sum_sq,
        *_clusters_plus(values[3:], sums.clusters),
    ]


def _clusters_plus(stored: Sequence[Any], c: ClusterSums) -> list[float]:
    """A stored cluster list (units, then the moments) plus a delta's cluster sums."""
    units, yy, yn, nn, yyn, ynn, nnn = stored
    return [
        int(units) + c.units,
        float(yy) + c.sum_yy,
        float(yn) + c.sum_yn,
        float(nn) + c.sum_nn,
        float(yyn) + c.sum_yyn,
        float(ynn) + c.sum_ynn,
        float(nnn) + c.sum_nnn,
    ]
