"""The judge: people's labels on shadow pairs (its calibration), the pointwise judge's samples
of each arm's answers in a split, and its calls' daily spend per plan."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from migrations_app.models.plans import MigrationPlan, PlanRun, PlanStage
from migrations_app.models.shadow import ShadowSample, ShadowStatus


class LabelChoice(models.TextChoices):
    """A person's verdict on a pair, in the arms' terms (the page showed them blind)."""

    CANDIDATE = "candidate", "Candidate better"
    TIE = "tie", "Tie"
    CONTROL = "control", "Control better"
    SKIP = "skip", "Skipped"


class JudgeLabel(models.Model):
    """One person's label on one shadow pair, given blind: the two answers in an order drawn
    for this person and pair (``candidate_position``: where the candidate's answer was
    shown, A or B), the models' names hidden. Compared with the judge's verdict on the same
    pair for its calibration (``judge.calibration``); a skip is kept, and counts nowhere."""

    sample = models.ForeignKey(ShadowSample, on_delete=models.CASCADE, related_name="+")
    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(
        PlanRun, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Who labelled: a username, or "api key <name>" (the labelling API); one label each.
    labeller = models.CharField(max_length=200)
    choice = models.CharField(max_length=16, choices=LabelChoice.choices)
    candidate_position = models.CharField(max_length=1)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["sample", "labeller"], name="judgelabel_once_each")
        ]
        indexes = [
            # A run's labels for its calibration, and the pairs still to label.
            models.Index(fields=["plan", "run"], name="judgelabel_plan_run_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.sample_id}: {self.choice} by {self.labeller}"


class JudgeSample(models.Model):
    """One answer of one arm in a split or rollout stage, for the pointwise judge to score on
    the plan's rubric (1-5). Claimed with a lease and completed exactly once, as shadow
    samples are; ``score`` is null when the judge's answer could not be read
    (``verdict.error``): such a sample counts nowhere."""

    sample_id = models.CharField(max_length=64, primary_key=True)
    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(
        PlanRun, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    stage = models.ForeignKey(
        PlanStage, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    arm = models.CharField(max_length=16)
    decision_id = models.CharField(max_length=64)
    unit = models.CharField(max_length=256)
    request = models.JSONField()
    answer = models.TextField()
    status = models.CharField(
        max_length=8, choices=ShadowStatus.choices, default=ShadowStatus.PENDING
    )
    skip_reason = models.CharField(max_length=200, blank=True)
    score = models.PositiveSmallIntegerField(null=True, blank=True)
    verdict = models.JSONField(default=dict, blank=True)
    cost_usd = models.FloatField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    failures = models.PositiveSmallIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The sweeper: pending samples whose task was lost, running ones whose lease expired.
            models.Index(fields=["status", "lease_until"], name="judgesample_sweep_idx"),
            # Retention.
            models.Index(fields=["created_at"], name="judgesample_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.sample_id} {self.arm} {self.status}"


class JudgeSpend(models.Model):
    """A plan's judge calls on one UTC day, pairwise and pointwise: how many, and their cost
    (reserved at the claim, settled at the answer). The judge's own daily budget reads it;
    the dashboard shows it."""

    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    calls = models.PositiveIntegerField(default=0)
    cost_usd = models.FloatField(default=0.0)
    # Calls not made because the day's budget was spent.
    skipped = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            # The upsert key; a claim locks its plan's row for the day.
            models.UniqueConstraint(fields=["plan", "day"], name="judgespend_plan_day")
        ]

    def __str__(self) -> str:
        return f"{self.plan_id} {self.day}: {self.calls} calls, ${self.cost_usd:.4f}"
