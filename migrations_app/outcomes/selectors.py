"""Reads of the outcome aggregates: a stage's running totals, and one arm's windows since a time.
Each folds what ingest left pending for the stage first (segment_rollup.catch_up)."""

from __future__ import annotations

from datetime import datetime

from migrations_app.guardrails.stats import ArmAggregates
from migrations_app.models import (
    PlanStage,
    StageAggregate,
    WindowAggregate,
)
from migrations_app.outcomes import aggregate_json
from migrations_app.outcomes.segment_rollup import catch_up


def _pk(stage: PlanStage | int) -> int:
    return stage if isinstance(stage, int) else stage.pk


def stage_totals(stage: PlanStage | int) -> dict[str, ArmAggregates]:
    """Each arm's aggregates over a whole stage (two rows, whatever the stage's length)."""
    catch_up([_pk(stage)])
    rows = StageAggregate.objects.filter(stage=stage).values_list("arm", "data")
    totals = {"control": ArmAggregates(), "candidate": ArmAggregates()}
    totals.update({arm: aggregate_json.from_json(data) for arm, data in rows})
    return totals


def window_totals(stage: PlanStage | int, arm: str, *, since: datetime) -> ArmAggregates:
    """One arm's aggregates over a stage's windows from ``since`` on."""
    catch_up([_pk(stage)])
    return ArmAggregates.merge(
        aggregate_json.from_json(data)
        for data in WindowAggregate.objects.filter(
            stage=stage, arm=arm, window__gte=since
        ).values_list("data", flat=True)
    )


def stage_windows(
    stage: PlanStage | int, *, since: datetime | None = None
) -> list[tuple[datetime, str, ArmAggregates]]:
    """A stage's windows from ``since`` on (all of them without it), in time order: (window,
    arm, aggregates) per stored row. The change detectors read them (guardrails.engine)."""
    catch_up([_pk(stage)])
    rows = WindowAggregate.objects.filter(stage=stage)
    if since is not None:
        rows = rows.filter(window__gte=since)
    return [
        (window, arm, aggregate_json.from_json(data))
        for window, arm, data in rows.order_by("window", "arm").values_list("window", "arm", "data")
    ]
