"""Test data for the dashboard: a running plan whose stage has window aggregates, built
through the lifecycle services and the real aggregation path (``rollup.aggregate``)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from migrations_app.models import MigrationPlan, PlanRun, PlanStage
from migrations_app.outcomes import rollup
from migrations_app.outcomes.aggregation import OutcomeFacts, window_start
from migrations_app.outcomes.segment_rollup import catch_up
from tests.factories import started_plan

SPLIT_PHASES: list[dict[str, Any]] = [
    {"kind": "ab_split", "percent": 50.0, "min_duration_minutes": 30, "min_samples": 100},
    {"kind": "rollout", "steps": [100], "min_duration_minutes": 30, "min_samples": 100},
]


def running_plan(key: str = "dash", *, hours_ago: float = 3.0, **overrides: Any) -> MigrationPlan:
    """A plan started ``hours_ago`` (backdated so its windows fall inside the chart range),
    in an A/B split of 50 %."""
    overrides.setdefault("phases", SPLIT_PHASES)
    plan = started_plan(key, **overrides)
    began = timezone.now() - timedelta(hours=hours_ago)
    PlanRun.objects.filter(pk=plan.current_run_id).update(started_at=began)
    PlanStage.objects.filter(pk=plan.current_stage_id).update(started_at=began)
    MigrationPlan.objects.filter(pk=plan.pk).update(step_started_at=began)
    return MigrationPlan.objects.select_related("current_run", "current_stage").get(pk=plan.pk)


def feed(
    stage: PlanStage,
    *,
    start: datetime,
    minutes: int,
    per_minute: int,
    arm: str,
    latency_ms: float = 800.0,
    error_rate: float = 0.01,
    cost_usd: float | None = 0.002,
    units: int = 200,
    feedback: float | None = 0.8,
    seed: int = 1,
) -> int:
    """``per_minute`` outcomes per minute of ``arm`` from ``start``; returns how many."""
    rng = random.Random(f"{seed}:{arm}")
    outcomes = []
    scored = []
    for m in range(minutes):
        window = window_start(start + timedelta(minutes=m))
        for i in range(per_minute):
            facts = OutcomeFacts(
                arm=arm,
                unit=f"u{rng.randrange(units)}",
                window=window,
                latency_ms=rng.lognormvariate(0, 0.3) * latency_ms,
                ttft_ms=rng.lognormvariate(0, 0.3) * latency_ms / 4,
                error="timeout" if rng.random() < error_rate else "",
                cost_usd=cost_usd,
            )
            outcomes.append((stage.pk, facts))
            if feedback is not None and i % 5 == 0:
                scored.append((stage.pk, facts, 1.0 if rng.random() < feedback else 0.0))
    rollup.aggregate(outcomes, scored)
    catch_up()  # folded, as a read would fold it
    return len(outcomes)
