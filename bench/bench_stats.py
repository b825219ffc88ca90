"""Benchmark of migrations_app.stats: evaluation time and detection speed.

Prints the median time of one evaluation of every guardrail metric over 10^6 requests per
arm, then, for each power scenario of reference/statistics.md, the median requests (or
feedbacks) per arm until rollback and the probability of rolling back by the target,
from 2,000 simulated rollouts at the standard plan's alpha (0.05 over 4 guardrails).

    .venv/bin/python bench/bench_stats.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from migrations_app import stats as S
from tests.stats import sim

ALPHA = 0.05 / 4
ROLLOUTS = 2000
TOLERANCES = {
    "error_rate": (1.5, "relative"),
    "latency_p95": (1.3, "relative"),
    "latency_p99": (1.3, "relative"),
    "ttft_p95": (1.3, "relative"),
    "satisfaction": (0.1, "absolute"),
    "cost_per_request": (1.2, "relative"),
}


def big_arm(rng: np.random.Generator, factor: float) -> S.ArmAggregates:
    n = 1_000_000
    latency = rng.lognormal(np.log(800), 0.7, n) * factor
    return S.ArmAggregates(
        requests=n,
        errors=20_000,
        error_clusters=S.ClusterSums(50_000, 5e5, 1e7, 1e9),
        latency=S.Buckets.from_values(latency),
        ttft=S.Buckets.from_values(latency / 4),
        cost_n=n,
        cost_sum=2e3,
        cost_sum_sq=10.0,
        cost_clusters=S.ClusterSums(50_000, 2e3, 5e4, 1e9),
        feedback_n=50_000,
        feedback_sum=35_000.0,
        feedback_sum_sq=35_000.0,
        feedback_clusters=S.ClusterSums(30_000, 1e5, 1e5, 2e5),
        feedback_rate_clusters=S.ClusterSums(50_000, 1e5, 1e6, 1e9),
    )


def evaluation_time() -> None:
    rng = np.random.default_rng(1)
    a, b = big_arm(rng, 1.0), big_arm(rng, 1.1)
    timings = []
    for _ in range(21):
        S.quantile_ranks.cache_clear()  # the engine sees a new n at every look
        start = time.perf_counter()
        for metric, (tol, kind) in TOLERANCES.items():
            S.evaluate_metric(metric, a, b, tolerance=tol, tolerance_kind=kind, alpha=ALPHA)
        timings.append(time.perf_counter() - start)
    buckets = len(a.latency.counts)
    print(
        f"one evaluation, 6 metrics, 10^6 requests per arm ({buckets} latency buckets): "
        f"median {statistics.median(timings) * 1000:.2f} ms"
    )


def report(label: str, decisions: np.ndarray, ns: np.ndarray, target: int, unit: str) -> None:
    by = float(decisions[:, ns <= target].any(axis=1).mean())
    median = sim.median_first(decisions, ns)
    med = f"{median:,.0f}" if np.isfinite(median) else "not reached"
    print(f"{label:<58} median {med:>8} {unit} per arm to roll back; P(by {target:,}) = {by:.3f}")


def error_paths(rng: np.random.Generator, ratio: float, per_look: int):
    a = sim.iid_counts(rng, ROLLOUTS, per_look, 0.02)
    b = sim.iid_counts(rng, ROLLOUTS, per_look, 0.02 * ratio)
    return a, b


def detection() -> None:
    rng = np.random.default_rng(2)
    print(f"\ndetection, alpha {ALPHA} per guardrail, {ROLLOUTS} rollouts, 240 looks")
    # 2,000 is the standard playbook's A/B split minimum; 12,000 the power target's sample.
    for ratio, per_look, target in ((2.0, 100, 12_000), (3.0, 13, 3_000)):
        a, b = error_paths(rng, ratio, per_look)
        ns = a.n[0]
        label = f"errors {ratio:.0f}x at 2 % (tolerance 1.5x)"
        d = sim.error_rollbacks(a, b, tolerance=1.5, alpha=ALPHA)
        report(f"{label}, no step minimum", d, ns, target, "requests")
        for step in (2_000, 12_000):
            d = sim.error_rollbacks(a, b, tolerance=1.5, alpha=ALPHA, design=step)
            report(f"{label}, step minimum {step // 1000}k", d, ns, target, "requests")
        e = sim.error_e_process(a, b, tolerance=1.5) >= np.log(1 / ALPHA)
        report(f"{label}, e-process, not acting", e, ns, target, "requests")
    for sigma in (0.5, 1.0):
        dist = sim.lognormal(sigma)
        for factor, target, per_look in ((2.0, 1500, 7), (1.6, 6000, 25)):
            d, ns = sim.quantile_rollbacks(
                rng, ROLLOUTS, p=0.95, control=dist, candidate=dist, candidate_factor=factor,
                tolerance=1.3, alpha=ALPHA, m_per_look=per_look,
            )  # fmt: skip
            label = f"p95 {factor}x, lognormal sigma {sigma} (tol 1.3x)"
            report(label, d, ns, target, "requests")
    a = sim.binary_draws(rng, ROLLOUTS, 5, 0.8)
    b = sim.binary_draws(rng, ROLLOUTS, 5, 0.5)
    d = sim.mean_rollbacks(
        *a, *b, alpha=ALPHA, log_ratio=False, limit=-0.1, harm="decrease",
        min_n=S.MIN_FEEDBACK_PER_ARM,
    )  # fmt: skip
    report("satisfaction -0.3 (0.8 -> 0.5, tol 0.1)", d, a[0][0], 1000, "feedbacks")
    print(
        "\nminimum samples per arm before a quantile bound is finite: "
        f"p95 {S.minimum_samples_for_quantile(0.95, ALPHA)}, "
        f"p99 {S.minimum_samples_for_quantile(0.99, ALPHA)}"
    )


if __name__ == "__main__":
    evaluation_time()
    detection()
