"""Guardrails per segment (issue 16): one evaluation of a plan with 3 segment dimensions x 20
values (and 'other': 63 segments) at 10^6 requests per arm, beside the same plan's evaluation
without segments in the same run.

The arms: 10^6 requests per arm from 50,000 users (random_arm: errors, latencies, costs,
feedback), split over each dimension's 21 segments with Zipf-like shares (the busiest value
~a quarter of the traffic), each arm a little off its share so that no two arms have the same
sample size (as in a real plan, where every arm's quantile ranks are new at each look). Guardrails: the standard four (error rate, p95 latency,
satisfaction, cost). Each timed evaluation clears the quantile cache (the engine sees a new n at
every look). Prints the medians (wall and CPU) and the ratio.

Run: .venv/bin/python bench/bench_segments.py [--smoke]   (--smoke: 10^4 requests, 3 runs)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import django
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-secret")  # no database, no request: settings only
django.setup()

from migrations_app.guardrails import rules, segments, stats  # noqa: E402
from tests.guardrails.stats import sim  # noqa: E402

STANDARD = (
    rules.GuardrailSpec("error_rate", 1.5),
    rules.GuardrailSpec("latency_p95", 1.3),
    rules.GuardrailSpec("satisfaction", 0.1, "absolute"),
    rules.GuardrailSpec("cost_per_request", 1.2, action="alert"),
)
STAGE = rules.StageState(expected_share=0.5, min_samples=1000, alpha_share=1 / 3)
DIMENSIONS = ("tenant", "lang", "tier")
VALUES = 20


def arms(rng: np.random.Generator, n: int) -> tuple[stats.ArmAggregates, stats.ArmAggregates]:
    # Each arm a little off n, as a random split makes them: every arm then has a sample size
    # of its own, so none of the quantile ranks is shared (in a plan each look has new ones).
    c, t = (n + int(rng.integers(0, max(2, n // 100))) for _ in range(2))
    return sim.random_arm(rng, c, units=max(1, c // 20)), sim.random_arm(
        rng, t, units=max(1, t // 20)
    )


def build(n: int) -> tuple[list[segments.Segment], stats.ArmAggregates, stats.ArmAggregates]:
    """Per dimension, 21 segments whose requests add up to n per arm; the population is one
    dimension's sum (every dimension partitions the same requests)."""
    rng = np.random.default_rng(16)
    shares = 1.0 / np.arange(1, VALUES + 2) ** 0.8
    shares /= shares.sum()
    parts: list[segments.Segment] = []
    population = None
    for d, dimension in enumerate(DIMENSIONS):
        sizes = np.maximum(1, np.round(shares * n).astype(int))
        made = [arms(rng, int(size)) for size in sizes]
        names = [f"{dimension}-{i}" for i in range(VALUES)] + [segments.OTHER]
        parts += [
            segments.Segment(dimension, v, c, t) for v, (c, t) in zip(names, made, strict=True)
        ]
        if d == 0:
            population = (
                stats.ArmAggregates.merge(c for c, _ in made),
                stats.ArmAggregates.merge(t for _, t in made),
            )
    assert population is not None
    return parts, *population


def timed(runs: int, call) -> tuple[float, float]:
    """Median wall and CPU milliseconds (CPU: this process's own, which other work on a
    shared machine moves far less than the wall clock)."""
    wall, cpu = [], []
    for _ in range(runs):
        stats.quantile_ranks.cache_clear()
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall) * 1000, statistics.median(cpu) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="10^4 requests, 3 runs")
    args = parser.parse_args()
    n, runs = (10_000, 3) if args.smoke else (1_000_000, 15)
    parts, control, candidate = build(n)
    slots = segments.segment_slots(len(DIMENSIONS), VALUES)
    settings = rules.PlanSettings()

    def population_only() -> None:
        rules.evaluate_plan(
            guardrails=STANDARD,
            settings=settings,
            stage=STAGE,
            control=control,
            candidate=candidate,
        )

    def with_segments() -> segments.SegmentedDecision:
        return segments.evaluate_with_segments(
            guardrails=STANDARD, settings=settings, stage=STAGE, control=control,
            candidate=candidate, segments=parts, slots=slots,
        )  # fmt: skip

    decision = with_segments()
    tested = sum(s.tested for s in decision.segments)
    base, base_cpu = timed(runs, population_only)
    ours, ours_cpu = timed(runs, with_segments)
    print(
        f"population only, 4 guardrails, {control.requests:,} requests per arm: median "
        f"{base:.1f} ms ({base_cpu:.1f} ms CPU)"
    )
    print(
        f"with segments: {len(DIMENSIONS)} dimensions x {VALUES} values + other = {len(parts)} "
        f"segments ({tested} tested), median {ours:.1f} ms ({ours_cpu:.1f} ms CPU), "
        f"{ours / base:.1f}x the population's; action {decision.action}"
    )


if __name__ == "__main__":
    main()
