"""The segments' guardrails are tested in one vectorised pass over all segments (issue 16,
item 6; bench/bench_segments.py): the same verdicts, bounds, estimates and words as the
one-segment-at-a-time code they replaced: the same verdicts, actions and words, and the same
numbers to 1e-12 relative (the last bit of numpy's exp and log depends on the CPU's vector
instructions: a machine with AVX-512 and one without differ there, 9e-16 at most here).

``data/segment_decisions.json`` was written by :func:`fingerprints` with the code before the
batching (commit 428d98f), and rewritten when satisfaction joined the guardrails tested per
segment (feedback counts in its outcome's segments), after checking that the code with the
segments' old guardrails still reproduced it exactly and that with satisfaction every other
result, action and exclusion was unchanged (135 satisfaction results added); each scenario mixes segments too small to test, segments with no
errors or no cost, a regressed error rate, latency or cost in one segment, relative and
absolute tolerances, both regression settings, and a second look that intersects with the
first look's bounds and skips the segments it excluded. Regenerate it only for a change that
is meant to move verdicts: ``python -m tests.guardrails.stats.test_segment_batch``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from migrations_app.guardrails import rules, segments, stats
from migrations_app.guardrails.stats import quantiles
from tests.guardrails.stats import sim

GOLDEN = Path(__file__).parent / "data" / "segment_decisions.json"
STANDARD = (
    rules.GuardrailSpec("error_rate", 1.5),
    rules.GuardrailSpec("latency_p95", 1.3),
    rules.GuardrailSpec("satisfaction", 0.1, "absolute"),
    rules.GuardrailSpec("cost_per_request", 1.2, action="alert"),
)
ABSOLUTE = (
    rules.GuardrailSpec("error_rate", 0.01, "absolute"),
    rules.GuardrailSpec("latency_p99", 300.0, "absolute", action="alert"),
    rules.GuardrailSpec("cost_per_request", 0.001, "absolute"),
)
STAGE = rules.StageState(
    expected_share=0.5, min_samples=300, min_duration_seconds=60, elapsed_seconds=3600
)
DIMENSIONS = {"lang": 6, "tier": 3}


def _segments(rng: np.random.Generator, scale: float) -> list[segments.Segment]:
    out = []
    for dimension, values in DIMENSIONS.items():
        bad = rng.integers(0, values, 3)  # which value regresses errors, latency, cost
        for i in range(values + 1):
            value = f"{dimension}-{i}" if i < values else segments.OTHER
            n = int(math.exp(rng.uniform(math.log(50), math.log(12_000))) * scale)
            kwargs: dict[str, Any] = {"units": max(1, n // int(rng.integers(2, 30)))}
            if i == bad[0]:
                kwargs["error_rate"] = float(rng.choice([0.0, 0.06, 0.1]))
            if i == bad[1]:
                kwargs["latency_factor"] = 1.8
            if i == bad[2]:
                kwargs["cost_factor"] = float(rng.choice([0.0, 1.6]))
            control = sim.random_arm(rng, n, units=kwargs["units"])
            candidate = sim.random_arm(rng, n, **kwargs)
            out.append(segments.Segment(dimension, value, control, candidate))
    return out


def _decide(parts, guardrails, on_regression, **kwargs) -> segments.SegmentedDecision:
    first = [s for s in parts if s.dimension == "lang"]
    return segments.evaluate_with_segments(
        guardrails=guardrails,
        settings=rules.PlanSettings(),
        stage=STAGE,
        control=stats.ArmAggregates.merge(s.control for s in first),
        candidate=stats.ArmAggregates.merge(s.candidate for s in first),
        segments=parts,
        slots=segments.segment_slots(len(DIMENSIONS), segments.DEFAULT_TOP_K),
        on_regression=on_regression,
        **kwargs,
    )


def _exact(value: Any) -> Any:
    """JSON with every float as its repr (exact), infinities and NaN spelled out."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_exact(v) for v in value]
    return value


def _words(value: Any) -> Any:
    """The decision's audit form without its raw numbers (compared apart, to a tolerance)."""
    if isinstance(value, float):
        return None
    if isinstance(value, dict):
        return {k: _words(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_words(v) for v in value]
    return value


def _fingerprint(d: segments.SegmentedDecision) -> dict[str, Any]:
    """The decision's numbers and verdicts in full, and a digest of everything else it says
    (its whole audit form but the raw numbers: summaries, notes, reasons)."""
    whole = json.dumps(_words(d.to_dict()), sort_keys=True)
    return _exact(
        {
            "action": d.action,
            "exclude": d.exclude,
            "tested": [s.tested for s in d.segments],
            "verdicts": [
                [r.verdict.status, r.wants, r.verdict.estimate, r.verdict.lower, r.verdict.upper]
                for s in (d.population, *d.segments)
                for r in s.results
            ],
            "bounds": {k: [b.lower, b.upper, b.looked] for k, b in sorted(d.bounds.items())},
            "digest": hashlib.sha256(whole.encode()).hexdigest(),
        }
    )


def fingerprints() -> list[dict[str, Any]]:
    """Every scenario's decisions (first look and second look), exactly."""
    out = []
    for seed in range(4):
        for guardrails in (STANDARD, ABSOLUTE):
            for on_regression in ("rollback", "exclude"):
                rng = np.random.default_rng(seed)
                first = _decide(_segments(rng, 1.0), guardrails, on_regression)
                grown = [
                    replace(
                        s,
                        control=stats.ArmAggregates.merge([s.control, extra.control]),
                        candidate=stats.ArmAggregates.merge([s.candidate, extra.candidate]),
                    )
                    for s, extra in zip(
                        _segments(np.random.default_rng(seed), 1.0),
                        _segments(rng, 0.5),
                        strict=True,
                    )
                ]
                second = _decide(
                    grown, guardrails, on_regression, previous=first.bounds, excluded=first.exclude
                )
                out.append(
                    {
                        "seed": seed,
                        "guardrails": [g.metric for g in guardrails],
                        "on_regression": on_regression,
                        "first": _fingerprint(first),
                        "second": _fingerprint(second),
                    }
                )
    return out


def test_batched_segments_decide_exactly_as_before() -> None:
    expected = json.loads(GOLDEN.read_text())
    got = fingerprints()
    assert len(got) == len(expected)
    # The scenarios do exercise what the batching touches.
    statuses = {
        v[0] for case in expected for look in ("first", "second") for v in case[look]["verdicts"]
    }
    assert {"regressed", "inside_tolerance", "not_enough_data", "warning"} <= statuses
    assert any(case["second"]["exclude"] for case in expected)
    assert any(not t for case in expected for t in case["first"]["tested"])
    for g, e in zip(got, expected, strict=True):
        for look in ("first", "second"):
            where = (g["seed"], g["guardrails"], g["on_regression"], look)
            assert _same(g[look], e[look]), (where, g[look], e[look])


def _same(got: Any, expected: Any) -> bool:
    """Equal, but for numbers (their exact reprs) equal to 1e-12 relative."""
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(_same(got[k], expected[k]) for k in got)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(map(_same, got, expected))
    if got == expected:
        return True
    try:
        return math.isclose(float(got), float(expected), rel_tol=1e-12)
    except (TypeError, ValueError):
        return False


def _bisect_ranks(t: int, p: float, alpha: float) -> tuple[int, int]:
    """The ranks' search as it was written before, one t at a time (the reference)."""
    if t <= 0:
        return 0, 1
    level = math.log(1.0 / alpha)
    upper, lower = quantiles._log_mixture(p, True), quantiles._log_mixture(p, False)
    lo, hi = 0, t + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if float(upper(np.int64(mid), np.int64(t))) >= level:
            hi = mid
        else:
            lo = mid + 1
    k = lo
    lo, hi = -1, t
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if float(lower(np.int64(mid), np.int64(t))) >= level:
            lo = mid
        else:
            hi = mid - 1
    return lo + 1, k


def test_the_lockstep_rank_search_finds_each_sizes_own_ranks() -> None:
    rng = np.random.default_rng(5)
    sizes = [*range(0, 400), *rng.integers(400, 2_000_000, 300).tolist()]
    for p, alpha in ((0.95, 0.00625), (0.99, 0.0001), (0.5, 0.05)):
        ranks = stats.quantile_ranks
        ranks.cache_clear()
        got = ranks.lookup(sizes, p, alpha)
        assert got == [_bisect_ranks(t, p, alpha) for t in sizes]
        # Cached: a second lookup (and a single call) reads the same.
        assert ranks.lookup(sizes[::-1], p, alpha) == got[::-1]
        assert ranks(sizes[-1], p, alpha) == got[-1]


def test_the_golden_floats_are_exact() -> None:
    # repr round-trips a float exactly, so string equality above is bit equality.
    for value in (0.1, math.inf, -math.inf, 1 / 3, 5e-324):
        assert float(repr(value)) == value


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    cases = [json.dumps(case, sort_keys=True) for case in fingerprints()]
    GOLDEN.write_text("[\n" + ",\n".join(cases) + "\n]\n")
    print(f"wrote {GOLDEN}")
