"""One engine cycle over 1,000 running plans, against PostgreSQL.

Creates 1,000 running plans (standard guardrails: error rate, p95 latency, satisfaction,
cost), gives each stage running totals of 10^5 requests per arm (latency buckets, cluster
sums, cost and feedback), then times one full cycle:
  - in this process, one plan after another (``engine.plan_evaluate``), single-threaded;
  - through Celery as in production: ``turnout.evaluate_plans`` fans out one task per plan
    to a real worker (prefork, 2 processes), timed until every evaluation is stored.
The cycle must finish well inside the 15 s beat period.

Needs PostgreSQL and Redis as in `make test`.
Run: .venv/bin/python bench/bench_engine.py [--plans 1000] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from _stack import ROOT, SMOKE_HELP, Worker, database_url, recreate_database, redis_url

ENV = {
    "DATABASE_URL": database_url("turnout_bench_engine"),
    "REDIS_URL": redis_url(8),
    "DEBUG": "0",
    "SECRET_KEY": "bench-only-secret",
    "ALLOWED_HOSTS": "127.0.0.1",
    "LOG_LEVEL": "WARNING",
    "DJANGO_SETTINGS_MODULE": "controlplane.settings",
}


def setup() -> None:
    recreate_database(ENV["DATABASE_URL"])
    os.environ.update(ENV)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)


def arm(rng: np.random.Generator, n: int, error_rate: float) -> object:
    from migrations_app.guardrails.stats import ArmAggregates, Buckets, ClusterSums

    errors = rng.random(n) < error_rate
    latency = rng.lognormal(np.log(800), 0.6, n)
    cost = rng.gamma(4.0, 0.002, n)
    feedback = rng.random(n // 10) < 0.8
    units = np.arange(n) // 4
    per_unit = np.bincount(units).astype(float)
    return ArmAggregates(
        requests=n,
        errors=int(errors.sum()),
        errors_by_kind={"server_error": int(errors.sum())},
        error_clusters=ClusterSums.from_units(
            np.bincount(units, weights=errors.astype(float)), per_unit
        ),
        latency=Buckets.from_values(latency),
        latency_sum=float(latency.sum()),
        cost_n=n,
        cost_sum=float(cost.sum()),
        cost_sum_sq=float((cost * cost).sum()),
        cost_clusters=ClusterSums.from_units(np.bincount(units, weights=cost), per_unit),
        feedback_n=len(feedback),
        feedback_sum=float(feedback.sum()),
        feedback_sum_sq=float(feedback.sum()),
        feedback_clusters=ClusterSums.from_units(feedback.astype(float), np.ones(len(feedback))),
        feedback_rate_clusters=ClusterSums.from_units(
            np.bincount(units[: len(feedback)], minlength=n // 4).astype(float), per_unit
        ),
    )


def make_plans(count: int) -> list[int]:
    from django.contrib.auth import get_user_model

    from migrations_app.models import MigrationPlan, StageAggregate
    from migrations_app.outcomes import aggregate_json
    from migrations_app.plans import edits, lifecycle

    user = get_user_model().objects.create_superuser("bench", "", "bench-password")
    actor = lifecycle.Actor.for_user(user)
    rng = np.random.default_rng(1)
    control = aggregate_json.to_json(arm(rng, 100_000, 0.02))
    candidate = aggregate_json.to_json(arm(rng, 100_000, 0.021))
    for i in range(count):
        key = f"bench-{i:04d}"
        edits.plan_create(
            key=key,
            name=key,
            control={"model": "openai:gpt-4o-2024-08-06"},
            candidate={"model": "anthropic:claude-sonnet-4-20250514"},
            actor=actor,
        )
        lifecycle.plan_start(plan_key=key, actor=actor)
        lifecycle.plan_advance(plan_key=key, actor=actor)  # A/B split
    stages = MigrationPlan.objects.values_list("current_stage_id", flat=True)
    StageAggregate.objects.bulk_create(
        [
            StageAggregate(stage_id=s, arm=a, requests=100_000, data=d)
            for s in stages
            for a, d in (("control", control), ("candidate", candidate))
        ]
    )
    return list(MigrationPlan.objects.order_by("pk").values_list("pk", flat=True))


def in_process_cycle(ids: list[int]) -> tuple[float, list[float]]:
    from migrations_app.guardrails import engine

    each: list[float] = []
    start = time.perf_counter()
    for plan_id in ids:
        t = time.perf_counter()
        engine.plan_evaluate(plan_id=plan_id)
        each.append(time.perf_counter() - t)
    return time.perf_counter() - start, each


def celery_cycle(count: int, pool: str, concurrency: int) -> float:
    from migrations_app.guardrails.tasks import evaluate_plans
    from migrations_app.models import Evaluation

    worker = Worker({**os.environ, **ENV}, "--concurrency", str(concurrency), "--pool", pool)
    try:
        worker.wait_ready()  # the worker is up and consuming
        before = Evaluation.objects.count()
        start = time.perf_counter()
        evaluate_plans.delay()
        while Evaluation.objects.count() < before + count:
            if worker.proc.poll() is not None:
                raise SystemExit(f"the worker exited with {worker.proc.returncode}")
            time.sleep(0.05)
        return time.perf_counter() - start
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plans", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.plans = 5
    setup()
    t = time.perf_counter()
    ids = make_plans(args.plans)
    print(f"setup: {len(ids)} running plans in {time.perf_counter() - t:.0f} s")
    total, each = in_process_cycle(ids)
    each_ms = sorted(x * 1000 for x in each)
    print(
        f"in-process cycle, one process: {total:.2f} s for {len(ids)} plans; per plan median "
        f"{statistics.median(each_ms):.1f} ms, p99 {each_ms[int(0.99 * len(each_ms))]:.1f} ms"
    )
    for pool, concurrency in (("prefork", 2), ("threads", 8)):
        seconds = celery_cycle(len(ids), pool, concurrency)
        print(
            f"celery cycle (fan-out, worker --pool {pool} --concurrency {concurrency}): "
            f"{seconds:.2f} s of a 15 s period"
        )


if __name__ == "__main__":
    main()
