"""Benchmark of migrations_app.stats: evaluation time and detection speed.

Prints the median time of one evaluation of every guardrail metric over 10^6 requests per
arm, then, for each power scenario of reference/statistics.md, the median requests (or
feedbacks) per arm until rollback and the probability of rolling back by the target,
from 2,000 simulated rollouts at the standard plan's alpha (0.05 over 4 guardrails): with
one request per user, then with heavy-tailed activity (a few users send most requests,
each with their own error propensity, rating habit or typical latency; tests/guardrails/stats/sim.py).

Then the change detectors (issue 20, stats.changes): the time of one evaluation with a
detector on each of the standard plan's four guardrails at day 7 of a stage (10,080 minute
windows; a look after the stored state, and folding the whole week at once as after a lost
state) against the cumulative tests alone; and the delay tables: requests per arm from a
regression to the first rollback look, by how long the stage ran healthy before it (30 s,
1 h, 24 h), against the detector on a fresh stage (tests/guardrails/stats/sim_changes.py,
looks every 15 s, the bench_rollback plan's alpha).

    .venv/bin/python bench/bench_stats.py [--smoke] [--changes]

``--changes`` runs the change detection parts only. ``--smoke`` simulates 50 rollouts instead of 2,000 and 4 instead of 60 per delay row, up to
1 h (the suite runs it; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datetime import UTC, datetime

from migrations_app.guardrails import rules, stats
from migrations_app.guardrails.stats import changes, detector
from tests.guardrails.stats import sim, sim_changes

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


def evaluation_time() -> None:
    rng = np.random.default_rng(1)
    a, b = sim.million_request_arm(rng, 1.0), sim.million_request_arm(rng, 1.1)
    timings = []
    for _ in range(21):
        stats.quantile_ranks.cache_clear()  # the engine sees a new n at every look
        start = time.perf_counter()
        for metric, (tol, kind) in TOLERANCES.items():
            stats.evaluate_metric(metric, a, b, tolerance=tol, tolerance_kind=kind, alpha=ALPHA)
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
        min_n=stats.MIN_FEEDBACK_PER_ARM,
    )  # fmt: skip
    report("satisfaction -0.3 (0.8 -> 0.5, tol 0.1)", d, a[0][0], 1000, "feedbacks")
    print(
        "\nminimum samples per arm before a quantile bound is finite: "
        f"p95 {stats.minimum_samples_for_quantile(0.95, ALPHA)}, "
        f"p99 {stats.minimum_samples_for_quantile(0.99, ALPHA)}"
    )


def heavy_detection() -> None:
    rng = np.random.default_rng(3)
    print(
        f"\nheavy-tailed activity: Pareto 1.1 over {sim.HEAVY_USERS:,} users per arm (~45 "
        f"effective users at 2,000 requests), alpha {ALPHA}, {ROLLOUTS} rollouts, 240 looks"
    )
    control = sim.heavy_errors(rng, ROLLOUTS)
    for ratio, target in ((2.0, 12_000), (3.0, 3_000)):
        candidate = sim.heavy_errors(rng, ROLLOUTS, ratio=ratio)
        ns = control.n[0]
        label = f"errors {ratio:.0f}x at 2 %, own propensities (tol 1.5x)"
        for step in (0, 2_000):
            d = sim.error_rollbacks(control, candidate, tolerance=1.5, alpha=ALPHA, design=step)
            where = f"step minimum {step // 1000}k" if step else "no step minimum"
            report(f"{label}, {where}", d, ns, target, "requests")
    for spread in (0.0, 0.3):
        d, ns = sim.heavy_quantile_rollbacks(
            rng, ROLLOUTS, spread=spread, factor=2.0, tolerance=1.3, alpha=ALPHA
        )
        report(f"p95 2x, users' own levels sd {spread} (tol 1.3x)", d, ns, 1500, "requests")
    a = sim.heavy_feedback(rng, ROLLOUTS, mean=0.8).arm()
    b = sim.heavy_feedback(rng, ROLLOUTS, mean=0.5).arm()
    _, _, hi = stats.mean_kernel(a, b, alpha=ALPHA, log_ratio=False)
    enough = np.minimum(a.n, b.n) >= stats.MIN_FEEDBACK_PER_ARM
    # Feedback counts differ by rollout: the median first look is reported in requests.
    looks = np.arange(1, sim.LOOKS + 1) * 50
    report("satisfaction -0.3, one user in five rates (tol 0.1)", enough & (hi < -0.1), looks,
           12_000, "requests")  # fmt: skip
    a = sim.heavy_costs(rng, ROLLOUTS).arm()
    b = sim.heavy_costs(rng, ROLLOUTS, factor=1.5).arm()
    _, lo, _ = stats.mean_kernel(a, b, alpha=ALPHA, log_ratio=True)
    enough = np.minimum(a.n, b.n) >= stats.MIN_COST_PER_ARM
    looks = np.arange(1, sim.LOOKS + 1) * 10
    report("cost 1.5x, users' own cost levels (tol 1.2x)", enough & (lo > 1.2), looks, 2_400,
           "requests")  # fmt: skip


# --- change detection (issue 20) -----------------------------------------------------------

WEEK = 7 * 1440
STANDARD = [
    rules.GuardrailSpec("error_rate", 1.5, "relative"),
    rules.GuardrailSpec("latency_p95", 1.3, "relative"),
    rules.GuardrailSpec("satisfaction", 0.1, "absolute"),
    rules.GuardrailSpec("cost_per_request", 1.2, "relative"),
]


def window_arm(rng: np.random.Generator, n: int = 750) -> stats.ArmAggregates:
    """One arm's minute at 25 requests/s: errors, latencies, costs and a tenth rated."""
    e = int(rng.binomial(n, 0.02))
    latency = rng.lognormal(np.log(800), 0.5, n)
    rated = (rng.random(n // 10) < 0.8).astype(float)
    cost = rng.gamma(2.0, 0.001, n)
    return stats.ArmAggregates(
        requests=n, errors=e, error_clusters=stats.ClusterSums(n, e, e, n, e, e, n),
        latency=stats.Buckets.from_values(latency), latency_sum=float(latency.sum()),
        feedback_n=rated.size, feedback_sum=float(rated.sum()), feedback_sum_sq=float(rated.sum()),
        feedback_clusters=stats.ClusterSums.from_units(rated, np.ones(rated.size)),
        cost_n=n, cost_sum=float(cost.sum()), cost_sum_sq=float((cost * cost).sum()),
        cost_clusters=stats.ClusterSums.from_units(cost, np.ones(n)),
    )  # fmt: skip


def detector_evaluation_time() -> None:
    rng = np.random.default_rng(4)
    kinds = [(window_arm(rng), window_arm(rng)) for _ in range(32)]
    week = [changes.Window(i, *kinds[i % 32]) for i in range(WEEK)]
    # The stage's totals: each kind of minute times how often it occurs.
    control = stats.ArmAggregates.merge(c for c, _ in kinds * (WEEK // 32))
    candidate = stats.ArmAggregates.merge(b for _, b in kinds * (WEEK // 32))
    start = datetime(2025, 6, 2, tzinfo=UTC)
    stage = rules.StageState(alpha_share=1 / 3)

    def evaluate(windows: changes.Windows | None) -> rules.PlanDecision:
        return rules.evaluate_plan(
            guardrails=STANDARD, settings=rules.PlanSettings(), stage=stage, control=control,
            candidate=candidate, windows=windows,
        )  # fmt: skip

    def median_ms(run, repeat: int) -> float:
        timings = []
        for _ in range(repeat):
            t = time.perf_counter()
            run()
            timings.append(time.perf_counter() - t)
        return statistics.median(timings) * 1000

    # The state after the week but its last minutes, as the previous look stored it.
    before = evaluate(changes.Windows(week[:-6], week[-6:], start, {}, 600))
    look = changes.Windows(week[-6:-2], week[-2:], start, before.detectors, 600)
    base = median_ms(lambda: evaluate(None), 21)
    steady = median_ms(lambda: evaluate(look), 21)
    whole = median_ms(lambda: evaluate(changes.Windows(week[:-2], week[-2:], start, {}, 600)), 3)
    print(
        f"\none evaluation with change detectors on 4 guardrails at day 7 (10,080 minute "
        f"windows, 750 requests per arm each): median {steady:.1f} ms a look after the stored "
        f"state ({steady / base:.1f}x the cumulative tests alone, {base:.1f} ms); folding the "
        f"whole week at once (a lost state): {whole:.0f} ms"
    )


#: The bench_rollback plan: four guardrails at 0.05 over three stages, a 600-minute split step;
#: the detector gets half of a guardrail's alpha, the cumulative test the rest.
STAGE_ALPHA = 0.05 / 4 / 3
DETECTOR_ALPHA = STAGE_ALPHA * detector.DETECTOR_SHARE
CUMULATIVE_ALPHA = STAGE_ALPHA - DETECTOR_ALPHA
LOG_A = detector.log_threshold(alpha=DETECTOR_ALPHA, planned_minutes=600)


def _first(alarmed: np.ndarray) -> np.ndarray:
    return np.where(alarmed.any(axis=1), alarmed.argmax(axis=1), -1)


def delay_row(label: str, run, ages: tuple[float, ...], per_minute: float) -> None:
    """Median requests per arm from the regression to the first rolling-back look, by the
    stage's age (minutes healthy before it); 'fresh': the detector alone on a regression
    present from the start, the baseline of the ratios; 'cumulative': the cumulative test
    alone there."""
    cells = []
    fresh = math.nan
    for age in (0.0, *ages):
        detected, cumulative = run(age)
        if age == 0.0:
            shown = [("fresh", detected)]
            if cumulative is not None:
                shown.append(("cumulative, fresh", cumulative))
        else:
            either = detected if cumulative is None else detected | cumulative
            shown = [(f"{_age(age)} healthy", either)]
        for name, alarmed in shown:
            first = _first(alarmed)
            seconds = np.where(first >= 0, (first + 1) * 15.0 - age * 60.0, np.inf)
            requests = float(np.median(seconds)) * per_minute / 60.0
            if name == "fresh":
                fresh = requests
            cells.append(f"{name} {requests:,.0f} ({requests / fresh:.2f}x)")
    print(f"{label}: " + "; ".join(cells))


def _age(minutes: float) -> str:
    return f"{minutes * 60:.0f} s" if minutes < 1 else f"{minutes / 60:.0f} h"


def change_delays(rows: int, ages: tuple[float, ...]) -> None:
    print(
        f"\nchange detection: requests per arm from the regression to the rollback look, median "
        f"of {rows} rollouts, looks every 15 s, alpha {STAGE_ALPHA:.5f} per guardrail and stage "
        f"(half to the detector: log threshold {LOG_A:.1f}); ratios to the detector on a fresh "
        "stage"
    )
    rng = np.random.default_rng(5)

    hours = sim_changes.hours_for

    def errors(age: float) -> tuple[np.ndarray, np.ndarray]:
        looks, cumulative = sim_changes.error_regression(
            rng, rows, age, detector_alpha=DETECTOR_ALPHA, cumulative_alpha=CUMULATIVE_ALPHA
        )
        return looks.reshape(rows, -1) >= LOG_A, cumulative

    delay_row("errors 3x at 2 %, 1,500 requests/min per arm (tol 1.5x)", errors, ages, 1500)

    def p95(age: float) -> tuple[np.ndarray, None]:
        looks = sim_changes.quantile_looks(
            rng, rows, hours(age), per_minute=400, spread=0.0,
            factor=lambda t: np.where(t >= age, 2.0, 1.0), tolerance=1.3,
            alpha=DETECTOR_ALPHA, drift=sim_changes.diurnal(hours(age), 0.2),
        )  # fmt: skip
        return looks.reshape(rows, -1) >= LOG_A, None  # the detector alone

    delay_row("p95 latency 2x, 400 requests/min per arm (tol 1.3x; detector only)", p95,
              ages, 400)  # fmt: skip

    def score(age: float) -> tuple[np.ndarray, np.ndarray]:
        kw = dict(per_minute=100, level=0.7, spread=0.05, noise=0.3, heavy=False,
                  drift=0.05 * (sim_changes.diurnal(hours(age), 1.0) - 1.0))  # fmt: skip
        a = sim_changes.mean_arm(rng, rows, hours(age), **kw)
        b = sim_changes.mean_arm(rng, rows, hours(age),
                                 shift=lambda t: np.where(t >= age, -0.2, 0.0), **kw)  # fmt: skip
        looks = sim_changes.mean_looks(a, b, tolerance=0.1, harm="decrease", alpha=DETECTOR_ALPHA)
        cumulative = sim.mean_rollbacks(
            *a.per_look(), *b.per_look(), alpha=CUMULATIVE_ALPHA, log_ratio=False, limit=-0.1,
            harm="decrease", min_n=50,
        )  # fmt: skip
        return looks.reshape(rows, -1) >= LOG_A, cumulative

    delay_row("a score (satisfaction-like) -0.2, 100 values/min per arm (tol 0.1)", score,
              ages, 100)  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="50 rollouts: the suite runs it")
    parser.add_argument("--changes", action="store_true", help="the change detection parts only")
    args = parser.parse_args()
    if args.smoke:
        ROLLOUTS = 50  # the simulations read it when called
    if not args.changes:
        evaluation_time()
    detector_evaluation_time()
    if args.smoke:
        change_delays(4, (0.5, 60.0))
    else:
        change_delays(60, (0.5, 60.0, 1440.0))
    if not args.changes:
        detection()
        heavy_detection()
