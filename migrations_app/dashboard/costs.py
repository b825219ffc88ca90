"""Cost projection: each arm's monthly cost at the last hour's traffic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Sum

from migrations_app.dashboard import format as fmt
from migrations_app.dashboard.figures import ARMS
from migrations_app.models import (
    MigrationPlan,
    PlanStage,
    WindowAggregate,
)
from migrations_app.outcomes.segment_rollup import catch_up
from migrations_app.plans.preview import MINUTES_PER_MONTH

PROJECTION_WINDOW = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class CostProjection:
    arm: str
    model: str
    input_price: float
    output_price: float
    requests_per_minute: float
    cost_per_request: float | None
    monthly_at_current_split: float | None
    monthly_if_all_traffic: float | None

    @property
    def per_request_text(self) -> str:
        return fmt.value(self.cost_per_request, "$")

    @property
    def split_text(self) -> str:
        return fmt.money(self.monthly_at_current_split)

    @property
    def all_text(self) -> str:
        return fmt.money(self.monthly_if_all_traffic)


def cost_projection(
    plan: MigrationPlan,
    stages: Mapping[int, PlanStage],
    *,
    now: datetime,
) -> list[CostProjection]:
    """Each arm's monthly cost at the last hour's traffic: at the current split, and if all
    traffic went to it. Cost per request is what ingest priced from the catalog. One query."""
    since = now - PROJECTION_WINDOW
    catch_up(stages, wait=False)
    rows = (
        WindowAggregate.objects.filter(stage_id__in=list(stages), window__gte=since)
        .values("stage_id", "arm")
        .annotate(requests=Sum("requests"), cost_n=Sum("cost_n"), cost_sum=Sum("cost_sum"))
        .order_by()
    )
    requests = dict.fromkeys(ARMS, 0)
    cost_n = dict.fromkeys(ARMS, 0)
    cost_sum = dict.fromkeys(ARMS, 0.0)
    production = 0
    for row in rows:
        arm = row["arm"]
        requests[arm] += row["requests"]
        cost_n[arm] += row["cost_n"]
        cost_sum[arm] += row["cost_sum"]
        # In shadow the candidate answers copies of control requests: not extra traffic.
        if not (stages[row["stage_id"]].kind == "shadow" and arm == "candidate"):
            production += row["requests"]
    run_start = min((s.started_at for s in stages.values()), default=since)
    minutes = max(1.0, (now - max(since, run_start)).total_seconds() / 60)
    out = []
    for arm, spec in (("control", plan.control_model), ("candidate", plan.candidate_model)):
        per_request = cost_sum[arm] / cost_n[arm] if cost_n[arm] else None
        rate = requests[arm] / minutes
        out.append(
            CostProjection(
                arm=arm,
                model=str(spec.model_id),
                input_price=float(spec.input_price_per_mtok),
                output_price=float(spec.output_price_per_mtok),
                requests_per_minute=rate,
                cost_per_request=per_request,
                monthly_at_current_split=None
                if per_request is None
                else rate * MINUTES_PER_MONTH * per_request,
                monthly_if_all_traffic=None
                if per_request is None
                else production / minutes * MINUTES_PER_MONTH * per_request,
            )
        )
    return out
