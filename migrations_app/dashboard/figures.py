"""Figures from aggregates, one definition each, used by the charts and the report: the engine's
own estimates, never a second computation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from migrations_app.guardrails import stats
from migrations_app.guardrails.stats import ArmAggregates, Buckets
from migrations_app.models import (
    StageAggregate,
)

ARMS = ("control", "candidate")


def quantile(buckets: Buckets, p: float) -> float | None:
    """The p-quantile's point estimate, as the engine's quantile test computes it."""
    if buckets.total == 0:
        return None
    return stats.quantile_interval(buckets, p, 0.05)[0]


def error_rate(agg: ArmAggregates) -> float | None:
    return agg.errors / agg.requests if agg.requests else None


def satisfaction(agg: ArmAggregates) -> float | None:
    return agg.feedback_sum / agg.feedback_n if agg.feedback_n else None


def cost_per_request(agg: ArmAggregates) -> float | None:
    return agg.cost_sum / agg.cost_n if agg.cost_n else None


def arm_totals(stage_ids: Iterable[int]) -> dict[str, ArmAggregates]:
    """Each arm's aggregates summed over several stages (two rows per stage)."""
    from migrations_app.outcomes.aggregate_json import from_json
    from migrations_app.outcomes.segment_rollup import catch_up

    stage_ids = list(stage_ids)
    catch_up(stage_ids, wait=False)
    parts: dict[str, list[ArmAggregates]] = {arm: [] for arm in ARMS}
    for arm, data in StageAggregate.objects.filter(stage_id__in=stage_ids).values_list(
        "arm", "data"
    ):
        parts.setdefault(arm, []).append(from_json(data))
    return {arm: ArmAggregates.merge(items) for arm, items in parts.items()}


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
