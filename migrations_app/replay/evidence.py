"""A decided replay's evidence from its calls (pure: plain data in, plain data out): each item's
sums, and the run's summary (the gates' verdicts, every measured metric's interval, the
per-tag breakdown, flip stability). ``decide.replay_decide`` stores both, so the replay page
reads stored rows instead of every call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from migrations_app.replay import stats
from migrations_app.replay.metrics import METRICS
from migrations_app.replay.stats import Gate

#: The per-tag breakdown: at most this many tags (the most frequent), the rest left out.
MAX_TAGS = 50


@dataclass(slots=True)
class ItemResult:
    """One item: per metric [sum, n, sum of squares] of the candidate's values and of the
    candidate-minus-control differences over its evaluated repeats."""

    index: int
    tags: list[str]
    evaluated: int = 0
    sums: dict[str, list[float]] = field(default_factory=dict)
    diffs: dict[str, list[float]] = field(default_factory=dict)
    worst: float | None = None
    flipped: bool = False


def _add(into: dict[str, list[float]], name: str, value: float) -> None:
    s = into.setdefault(name, [0.0, 0.0, 0.0])
    s[0] += value
    s[1] += 1
    s[2] += value * value


def item_result(
    index: int, tags: Sequence[str], repeats: Iterable[Mapping[str, Mapping[str, float]]],
    gates: Sequence[Gate],
) -> ItemResult:  # fmt: skip
    """An item's sums from its evaluated repeats' values (``{"candidate": {...}, "control":
    {...}}`` each). ``worst``: the mean over the gates' metrics of the candidate's item mean,
    scaled to 0-1 with 1 the good end (lower is worse); ``flipped``: a 0/1 gate metric whose
    value changed between repeats."""
    out = ItemResult(index, list(tags))
    for values in repeats:
        out.evaluated += 1
        candidate = values.get("candidate") or {}
        control = values.get("control") or {}
        for name, value in candidate.items():
            _add(out.sums, name, float(value))
            if name in control:
                _add(out.diffs, name, float(value) - float(control[name]))
    scores = []
    for gate in gates:
        spec = METRICS.get(gate.metric)
        s = out.sums.get(gate.metric)
        if spec is None or s is None or not s[1]:
            continue
        mean = s[0] / s[1]
        scaled = (mean - spec.low) / (spec.high - spec.low)
        scores.append(scaled if spec.higher_is_better else 1.0 - scaled)
        if spec.kind == "rate" and 0 < s[0] < s[1]:
            out.flipped = True
    out.worst = float(np.mean(scores)) if scores else None
    return out


def _interval(rows: Sequence[ItemResult], name: str, *, diff: bool) -> stats.Interval | None:
    spec = METRICS[name]
    got = [(r.diffs if diff else r.sums).get(name) for r in rows]
    present = [s for s in got if s and s[1]]
    if not present:
        return None
    y, n, sq = (np.array([s[i] for s in present]) for i in range(3))
    span = spec.high - spec.low
    low, high = (-span, span) if diff else (spec.low, spec.high)
    kind = "mean" if diff else spec.kind
    return stats.interval(stats.item_sums(y, n, sq), kind=kind, low=low, high=high)  # type: ignore[arg-type]


def summarize(
    rows: Sequence[ItemResult], gates: Sequence[Gate], dataset_items: int
) -> dict[str, Any]:
    """The run's evidence: ``gates`` (each verdict), ``outcome``, ``metrics`` (every metric's
    interval, and its difference from control where both answered), ``by_tag`` (the gates'
    metrics per tag), ``stability`` (per 0/1 gate metric: items stable and flipped)."""
    verdicts = [
        stats.gate_verdict(
            g, _interval(rows, g.metric, diff=g.versus_control), dataset_items=dataset_items
        )
        for g in gates
    ]
    metrics: dict[str, Any] = {}
    for name in METRICS:
        alone = _interval(rows, name, diff=False)
        if alone is None:
            continue
        versus = _interval(rows, name, diff=True) if METRICS[name].paired else None
        metrics[name] = {
            "candidate": alone.to_dict(),
            "versus_control": None if versus is None else versus.to_dict(),
        }
    counts: dict[str, int] = {}
    for r in rows:
        for tag in r.tags:
            counts[tag] = counts.get(tag, 0) + 1
    by_tag: dict[str, Any] = {}
    for tag in sorted(counts, key=lambda t: (-counts[t], t))[:MAX_TAGS]:
        tagged = [r for r in rows if tag in r.tags]
        by_tag[tag] = {"items": counts[tag]}
        for g in gates:
            iv = _interval(tagged, g.metric, diff=g.versus_control)
            by_tag[tag][g.describe()] = None if iv is None else iv.to_dict()
    stability: dict[str, Any] = {}
    for g in gates:
        if METRICS.get(g.metric) is None or METRICS[g.metric].kind != "rate":
            continue
        y = [r.sums.get(g.metric, [0, 0, 0])[0] for r in rows]
        n = [r.sums.get(g.metric, [0, 0, 0])[1] for r in rows]
        s = stats.flip_stability(y, n)
        stability[g.metric] = {"stable": s.stable, "flipped": s.flipped, "share": s.flip_share}
    return {
        "outcome": stats.phase_outcome(verdicts),
        "gates": [v.to_dict() for v in verdicts],
        "metrics": metrics,
        "by_tag": by_tag,
        "stability": stability,
        "items_evaluated": sum(1 for r in rows if r.evaluated),
        "dataset_items": dataset_items,
    }
