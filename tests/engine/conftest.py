from __future__ import annotations

from typing import Any

import numpy as np

from migrations_app import aggregation, plans
from migrations_app.models import MigrationPlan, StageAggregate
from migrations_app.stats import ArmAggregates, Buckets, ClusterSums
from tests.factories import make_plan, person

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
    plan = make_plan(**kwargs)
    plans.plan_start(plan_key=plan.key, actor=person())
    plan.refresh_from_db()
    return plan


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


def put_totals(plan: MigrationPlan, **arms: ArmAggregates) -> None:
    """Write a stage's running totals as ingest would have left them."""
    plan.refresh_from_db()
    for arm, agg in arms.items():
        StageAggregate.objects.update_or_create(
            stage=plan.current_stage,
            arm=arm,
            defaults={"requests": agg.requests, "data": aggregation.to_json(agg)},
        )
