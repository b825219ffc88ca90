"""Evaluation reads (to move with the engine)."""

from __future__ import annotations

from migrations_app.models import (
    Evaluation,
    PlanStage,
)


def latest_evaluation(stage: PlanStage | int) -> Evaluation | None:
    """The stage's most recent evaluation (its bounds are the running intersection)."""
    return Evaluation.objects.filter(stage=stage).order_by("-created_at", "-pk").first()
