"""The engine's evaluations: one per look at a running plan, with its decision and evidence."""

from __future__ import annotations

from django.db import models

from migrations_app.models.plans import MigrationPlan, PlanRun, PlanStage


class Evaluation(models.Model):
    """One engine evaluation of a running plan: the decision, its evidence and the bounds the
    next evaluation intersects with. The dashboard charts these and explains "why"."""

    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="evaluations")
    run = models.ForeignKey(PlanRun, on_delete=models.CASCADE, related_name="+")
    stage = models.ForeignKey(PlanStage, on_delete=models.CASCADE, related_name="evaluations")
    plan_version = models.PositiveIntegerField()
    action = models.CharField(max_length=16)
    acted = models.BooleanField(default=False)
    decision = models.JSONField(default=dict)
    bounds = models.JSONField(default=dict)
    control_requests = models.PositiveIntegerField(default=0)
    candidate_requests = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()

    class Meta:
        indexes = [
            # The latest evaluation of a stage (the running intersection of bounds), and the
            # dashboard's series over time.
            models.Index(fields=["stage", "-created_at"], name="evaluation_stage_idx"),
            models.Index(fields=["plan", "-created_at"], name="evaluation_plan_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.plan_id} {self.action} at {self.created_at:%H:%M:%S}"
