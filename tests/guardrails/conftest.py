from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from migrations_app.guardrails import engine
from migrations_app.guardrails.stats import ArmAggregates, Buckets, ClusterSums, MetricSums
from migrations_app.models import MigrationPlan, StageAggregate
from migrations_app.outcomes import aggregate_json
from tests.factories import started_plan

FAST_PHASES = [
    {"kind": "ab_split", "percent": 50.0, "steps": [], "min_duration_minutes": 0, "min_samples": 1000},
    {"kind": "rollout", "percent": None, "steps": [50, 100], "min_duration_minutes": 0, "min_samples": 1000},
]  # fmt: skip
GUARDRAILS = [
    {"metric": "error_rate", "tolerance_kind": "relative", "tolerance": 1.5, "action": "rollback"},
    {"metric": "latency_p95", "tolerance_kind": "relative", "tolerance": 1.3, "action": "rollback"},
]


def running_plan(**overrides: Any) -> MigrationPlan:
    kwargs: dict[str, Any] = {"phases": FAST_PHASES, "guardrails": GUARDRAILS}
    kwargs.update(overrides)
    return started_plan(**kwargs)


def synthetic_arm(
    seed: int, n: int, *, error_rate: float, latency_median: float = 800.0
) -> ArmAggregates:
    """n requests from n // 2 units (two each), lognormal latencies, Bernoulli errors."""
    rng = np.random.default_rng(seed)
    errors = rng.random(n) < error_rate
    latency = latency_median * np.exp(rng.normal(0.0, 0.5, n))
    units = np.arange(n) // 2
    y = np.bincount(units, weights=errors.astype(float))
    m = np.bincount(units).astype(float)
    return ArmAggregates(
        requests=n,
        errors=int(errors.sum()),
        errors_by_kind={"server_error": int(errors.sum())} if errors.any() else {},
        error_clusters=ClusterSums.from_units(y, m),
        latency=Buckets.from_values(latency),
        latency_sum=float(latency.sum()),
    )


def error_arms(seed: int, n: int, *, control: float, candidate: float) -> dict[str, ArmAggregates]:
    """Both arms for ``put_totals`` / ``evaluate_with``: n requests each (``synthetic_arm``),
    errors at these rates, control drawn from ``seed`` and the candidate from ``seed + 1``."""
    return {
        "control": synthetic_arm(seed, n, error_rate=control),
        "candidate": synthetic_arm(seed + 1, n, error_rate=candidate),
    }


def with_metrics(seed: int, n: int, **rates: float) -> ArmAggregates:
    """``synthetic_arm`` (2 % errors) with per-request metrics: for each name, a 0/1 value per
    request, 1 at the given rate."""
    arm = synthetic_arm(seed, n, error_rate=0.02)
    rng = np.random.default_rng(seed + 100)
    units = [str(u) for u in np.arange(n) // 2]
    sums = {
        name: MetricSums.from_values(units, (rng.random(n) < p).astype(float).tolist())
        for name, p in rates.items()
    }
    return replace(arm, metrics=sums)


def put_totals(plan: MigrationPlan, **arms: ArmAggregates) -> None:
    """Write a stage's running totals as ingest would have left them."""
    plan.refresh_from_db()
    for arm, agg in arms.items():
        StageAggregate.objects.update_or_create(
            stage=plan.current_stage,
            arm=arm,
            defaults={"requests": agg.requests, "data": aggregate_json.to_json(agg)},
        )


def evaluate_with(plan: MigrationPlan, **arms: ArmAggregates) -> engine.EvaluationResult:
    """Write these running totals (as ``put_totals``), then let the engine evaluate the plan."""
    put_totals(plan, **arms)
    return engine.plan_evaluate(plan_id=plan.pk)
