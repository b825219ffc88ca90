"""Shadow samples (a production request answered by both models) and a shadow stage's paired
aggregate.
"""

from __future__ import annotations

from django.db import models

from migrations_app.models.plans import MigrationPlan, PlanRun, PlanStage


class ShadowStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    SKIPPED = "skipped", "Skipped"
    FAILED = "failed", "Failed"  # its attempts went wrong too often; skip_reason says why


class ShadowSample(models.Model):
    """One production request answered by control and, in the background, by the candidate.

    The request and both answers are stored redacted. A worker claims a sample by moving it
    from pending to running with a lease (compare-and-set), and completes it by moving it
    from running to done in the same transaction as its aggregates, so a sample is compared
    and counted exactly once even when a worker dies mid-call (the lease expires and the
    sweeper hands it to another)."""

    sample_id = models.CharField(max_length=64, primary_key=True)
    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(
        PlanRun, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    stage = models.ForeignKey(
        PlanStage, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    decision_id = models.CharField(max_length=64)
    unit = models.CharField(max_length=256)
    request = models.JSONField()
    control = models.JSONField()
    candidate = models.JSONField(default=dict, blank=True)
    comparison = models.JSONField(default=dict, blank=True)
    candidate_cost_usd = models.FloatField(null=True, blank=True)
    status = models.CharField(
        max_length=8, choices=ShadowStatus.choices, default=ShadowStatus.PENDING
    )
    skip_reason = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Attempts that went wrong (the call raised, or its worker died mid-call): capped, so one
    # sample that breaks its worker is marked failed instead of being retried and paid forever.
    failures = models.PositiveSmallIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The sweeper: pending samples whose task was lost, running ones whose lease expired.
            models.Index(fields=["status", "lease_until"], name="shadow_sweep_idx"),
            # The budget: today's spend of a plan; the dashboard's latest pairs.
            models.Index(fields=["plan", "-completed_at"], name="shadow_plan_done_idx"),
            # Retention.
            models.Index(fields=["created_at"], name="shadow_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.sample_id} {self.status}"


class ShadowAggregate(models.Model):
    """Paired counts of a shadow stage: both models answered the same requests.

    ``data`` holds ``n``, ``control_only`` / ``candidate_only`` / ``both`` error counts (the
    paired error test), and sums of the comparison scores (exact and normalised matches,
    JSON validity, similarity, length ratio, refusals, judge verdicts)."""

    stage = models.OneToOneField(PlanStage, on_delete=models.CASCADE, related_name="shadow")
    data = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"shadow {self.stage_id}"
