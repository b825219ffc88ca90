"""Replay runs (issue 17): a plan's first phase replays a dataset's items through the candidate
(and control, when the set holds no recorded answer or the plan asks for a fresh baseline), R
times each, before any user is touched. One :class:`ReplayCall` per (item, repeat, arm) is the
unit of work, claimed with a lease like a shadow sample; :class:`ReplayItem` holds each item's
sums once the run is decided, so the replay page reads a few rows, not every call.
"""

from __future__ import annotations

from django.db import models

from migrations_app.models.datasets import Dataset, DatasetItem
from migrations_app.models.plans import MigrationPlan, PlanRun, PlanStage


class ReplayStatus(models.TextChoices):
    RUNNING = "running", "Running"
    PASSED = "passed", "Passed"
    FAILED = "failed", "Failed"
    # Not passed: the intervals straddle a gate, or an outage left too few items measured.
    INCONCLUSIVE = "inconclusive", "Inconclusive"
    NOT_EVALUATED = "not_evaluated", "Not evaluated"
    CANCELLED = "cancelled", "Cancelled"


class ReplayRun(models.Model):
    """One replay of a dataset for a plan's replay stage. The settings are copied from the
    phase when the run starts, so an edit of a draft's phase later does not change what this
    run measured. ``summary`` is written once, when the run is decided (gates, intervals,
    per-tag breakdown, stability, cost and time); ``decision`` says what was done with it
    (advanced, stopped, awaiting_approval)."""

    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="replay_runs")
    run = models.ForeignKey(PlanRun, null=True, on_delete=models.CASCADE, related_name="+")
    stage = models.ForeignKey(PlanStage, null=True, on_delete=models.CASCADE, related_name="+")
    # PROTECT: a dataset a replay measured stays while the replay's evidence does (the
    # datasets' delete answers 409 dataset_in_use).
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="+")
    repeats = models.PositiveSmallIntegerField(default=3)
    fresh_baseline = models.BooleanField(default=False)
    gates = models.JSONField(default=list)
    on_fail = models.CharField(max_length=16, default="stop")
    budget_usd = models.FloatField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=ReplayStatus.choices, default=ReplayStatus.RUNNING
    )
    decision = models.CharField(max_length=24, blank=True, default="")
    items = models.PositiveIntegerField(default=0)
    calls_total = models.PositiveIntegerField(default=0)
    created_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    summary = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [
            # The sweep: running replays; a plan's latest replay (page, API, CLI).
            models.Index(fields=["status"], name="replay_run_status"),
            models.Index(fields=["plan", "-created_at"], name="replay_run_plan_latest"),
        ]

    def __str__(self) -> str:
        return f"replay {self.pk} of {self.plan_id} ({self.status})"


class ReplayCallStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    # Never evaluated: the provider could not be reached after its retries, the replay
    # budget was spent, or the item's request may not be sent. Counted in no metric.
    FAILED = "failed", "Not evaluated"
    CANCELLED = "cancelled", "Cancelled"


class ReplayCall(models.Model):
    """One call of one arm on one item at one repeat. Claimed like a shadow sample
    (pending -> running with a lease, compare-and-set on ``attempts``); done in the same
    transaction as its values, so a worker killed mid-call loses nothing and its late answer
    matches no row."""

    replay = models.ForeignKey(ReplayRun, on_delete=models.CASCADE, related_name="calls")
    item = models.ForeignKey(DatasetItem, on_delete=models.CASCADE, related_name="+")
    index = models.PositiveIntegerField()  # the item's index in its dataset
    repeat = models.PositiveSmallIntegerField()
    arm = models.CharField(max_length=9)  # candidate | control
    status = models.CharField(
        max_length=10, choices=ReplayCallStatus.choices, default=ReplayCallStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    failures = models.PositiveSmallIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    # The answer (CandidateResult.to_dict()), the scores ({metric: value}) and the judge's
    # verdict; ``reason`` why a call was not evaluated.
    answer = models.JSONField(default=dict, blank=True)
    values = models.JSONField(default=dict, blank=True)
    judge = models.JSONField(null=True, blank=True)
    cost_usd = models.FloatField(null=True, blank=True)
    reason = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["replay", "index", "repeat", "arm"], name="replay_call_once"
            )
        ]
        indexes = [
            # Claims, the sweep and progress: a replay's calls by status.
            models.Index(fields=["replay", "status"], name="replay_call_status"),
        ]

    def __str__(self) -> str:
        return f"replay {self.replay_id} item {self.index} repeat {self.repeat} {self.arm}"


class ReplayItem(models.Model):
    """One item's result, written when its replay is decided: ``sums`` per metric for the
    candidate ({metric: [sum, n, sum of squares]}), ``diffs`` the same for candidate minus
    control, ``worst`` the sort key of the page's worst-items list (lower is worse),
    ``flipped`` whether a 0/1 verdict changed between repeats."""

    replay = models.ForeignKey(ReplayRun, on_delete=models.CASCADE, related_name="item_results")
    item = models.ForeignKey(DatasetItem, on_delete=models.CASCADE, related_name="+")
    index = models.PositiveIntegerField()
    tags = models.JSONField(default=list, blank=True)
    evaluated = models.PositiveSmallIntegerField(default=0)
    sums = models.JSONField(default=dict, blank=True)
    diffs = models.JSONField(default=dict, blank=True)
    worst = models.FloatField(null=True, blank=True)
    flipped = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["replay", "index"], name="replay_item_once")]
        indexes = [
            # The page's worst items first.
            models.Index(fields=["replay", "worst"], name="replay_item_worst"),
        ]

    def __str__(self) -> str:
        return f"replay {self.replay_id} item {self.index}"
