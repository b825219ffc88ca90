"""Issue 15's figures that need no server stack: ``client.metric()`` on the request path, and one
evaluation of a plan with quality guardrails.

1. ``client.metric(decision, "task_completed", 1)`` per call, with the background sender running
   against a local sink that answers every batch 200 (as bench_report.py measures ``report()``,
   which is printed beside it from the same run as the baseline). Goal: < 1 us median.
2. One evaluation (``guardrails.rules.evaluate_plan``, the engine's pure core) of a split stage
   at 10^6 requests per arm with the standard guardrails (error rate, p95 latency,
   satisfaction, cost) plus 8 per-request metric guardrails (the application's rates and means,
   answer checks, the pointwise judge's score), against the standard four alone in the same
   run. Goal: < 50 ms.

(The third figure, ingest with two metrics per outcome beside COPY, needs the server stack:
``bench/bench_ingest.py --metrics 2``.)

Run: .venv/bin/python bench/bench_quality.py [--smoke]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

import numpy as np
import turnout
from _stack import ROOT, SMOKE_HELP  # bench/ is on the path: this script's directory
from bench_report import Sink, received  # the sink report() is measured against

sys.path.insert(0, str(ROOT))

CALLS_PER_SAMPLE = 200
SAMPLES = 1000


def per_call_us(call: Any, samples: int) -> list[float]:
    for _ in range(CALLS_PER_SAMPLE):  # warm-up
        call()
    timings = []
    for _ in range(samples):
        start = time.perf_counter_ns()
        for _ in range(CALLS_PER_SAMPLE):
            call()
        timings.append((time.perf_counter_ns() - start) / CALLS_PER_SAMPLE / 1000)
        time.sleep(0.005)  # the rest of the request; the sender keeps up
    return sorted(timings)


def metric_call(samples: int) -> None:
    logging.disable(logging.WARNING)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    client = turnout.Client(url, "tk_bench_x", start_wait=1, stream=False, poll_interval=3600)
    decision = client.decide("support-chat", "user-1", default=turnout.arm("openai", "gpt-4o"))
    metric, report = client.metric, client.report
    metrics = per_call_us(lambda: metric(decision, "task_completed", 1), samples)
    reports = per_call_us(
        lambda: report(decision, latency_ms=812.0, input_tokens=1500, output_tokens=420), samples
    )
    client.close(timeout=30)
    server.shutdown()
    logging.disable(logging.NOTSET)

    def line(name: str, t: list[float]) -> str:
        median, p99 = statistics.median(t), t[int(len(t) * 0.99)]
        return f"{name:<22} median {median:5.2f} us   p99 {p99:5.2f} us"

    print(line("turnout metric():", metrics) + "   (goal: < 1 us median)")
    print(line("turnout report():", reports) + "   (the baseline, same run)")
    ratio = statistics.median(metrics) / statistics.median(reports)
    print(f"metric() / report():   {ratio:.2f}   (per call, batches of {CALLS_PER_SAMPLE})")
    print(f"sent: {received['events']:,} events, dropped {client.dropped}")


def arm_with_metrics(rng: np.random.Generator, n: int, shift: float) -> Any:
    """One arm at ``n`` requests: the built-in sums as bench_stats.py builds them
    (sim.million_request_arm), and 8 per-request metrics with unit-level sums over 50,000 users."""
    from migrations_app.guardrails.stats import ArmAggregates, ClusterSums, MetricSums
    from tests.guardrails.stats import sim

    base = sim.million_request_arm(rng, 1.0 + shift)
    units = rng.integers(0, 50_000, n)

    def sums(values: np.ndarray) -> MetricSums:
        return MetricSums(n, float(values.sum()), float((values * values).sum()),
                          sim.cluster_sums(units, values))  # fmt: skip

    metrics = {
        "task_completed": sums((rng.random(n) < 0.80 - shift / 10).astype(float)),
        "resolved": sums((rng.random(n) < 0.60).astype(float)),
        "csat_estimate": sums(rng.uniform(0, 5, n)),
        "steps_taken": sums(rng.integers(1, 10, n).astype(float)),
        "refusal": sums((rng.random(n) < 0.02).astype(float)),
        "schema_valid": sums((rng.random(n) < 0.98).astype(float)),
        "answer_chars": sums(rng.lognormal(6, 0.5, n).clip(0, 20_000)),
        "judge_score": sums(rng.integers(1, 6, n).astype(float)),
    }
    assert isinstance(base.error_clusters, ClusterSums)
    fields = {f: getattr(base, f) for f in ArmAggregates.__slots__}
    return ArmAggregates(**{**fields, "metrics": metrics})


def evaluation(repeat: int) -> None:
    from migrations_app.guardrails import rules, stats

    measures = {
        "task_completed": rules.Measure("rate", "decrease", "task completed"),
        "resolved": rules.Measure("rate", "decrease", "resolved"),
        "csat_estimate": rules.Measure("mean", "decrease", "CSAT estimate", 5.0),
        "steps_taken": rules.Measure("mean", "increase", "steps taken", 9.0),
        "refusal": rules.Measure("rate", "increase", "refusal", in_shadow=True),
        "schema_valid": rules.Measure("rate", "decrease", "schema valid", in_shadow=True),
        "answer_chars": rules.Measure("mean", "increase", "answer length", 20_000.0),
        "judge_score": rules.Measure("mean", "decrease", "judge score", 4.0),
    }
    tolerances = {"task_completed": 0.03, "resolved": 0.03, "csat_estimate": 0.2,
                  "steps_taken": 0.5, "refusal": 0.02, "schema_valid": 0.02,
                  "answer_chars": 200.0, "judge_score": 0.2}  # fmt: skip
    standard = [
        rules.GuardrailSpec("error_rate", 1.5, "relative"),
        rules.GuardrailSpec("latency_p95", 1.3, "relative"),
        rules.GuardrailSpec("satisfaction", 0.1, "absolute"),
        rules.GuardrailSpec("cost_per_request", 1.2, "relative"),
    ]
    quality = standard + [
        rules.GuardrailSpec(name, tolerances[name], "absolute", measure=measure)
        for name, measure in measures.items()
    ]
    rng = np.random.default_rng(15)
    n = 1_000_000
    control, candidate = arm_with_metrics(rng, n, 0.0), arm_with_metrics(rng, n, 0.05)
    stage = rules.StageState(alpha_share=1 / 3)

    def median_ms(guardrails: list[rules.GuardrailSpec]) -> tuple[float, Any]:
        timings, decision = [], None
        for _ in range(repeat):
            stats.quantile_ranks.cache_clear()  # the engine sees a new n at every look
            start = time.perf_counter()
            decision = rules.evaluate_plan(
                guardrails=guardrails, settings=rules.PlanSettings(), stage=stage,
                control=control, candidate=candidate,
            )  # fmt: skip
            timings.append(time.perf_counter() - start)
        return statistics.median(timings) * 1000, decision

    base, _ = median_ms(standard)
    both, decision = median_ms(quality)
    tested = sum(1 for r in decision.results if r.spec.metric in measures)
    assert tested == len(measures), tested
    statuses = {r.spec.metric: r.verdict.status for r in decision.results}
    print(
        f"one evaluation, 10^6 requests per arm: standard 4 guardrails + 8 metric guardrails "
        f"median {both:.1f} ms (goal: < 50 ms); the standard 4 alone {base:.1f} ms "
        f"(x{both / base:.2f}); action {decision.action}"
    )
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in statuses.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    smoke = parser.parse_args().smoke
    metric_call(20 if smoke else SAMPLES)
    evaluation(3 if smoke else 21)


if __name__ == "__main__":
    main()
