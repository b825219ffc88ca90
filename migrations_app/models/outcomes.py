"""Outcomes and feedback as reported (raw rows, purged after the retention period), and the
aggregates built from them at ingest: per-unit totals, minute windows, stage running totals.
"""

from __future__ import annotations

from django.contrib.postgres.indexes import HashIndex
from django.db import models
from django.db.models.functions import Now

from migrations_app.models.plans import MigrationPlan, PlanRun, PlanStage


class Arm(models.TextChoices):
    CONTROL = "control", "Control"
    CANDIDATE = "candidate", "Candidate"


class Fallback(models.TextChoices):
    NONE = "", "Not a fallback"
    CANDIDATE_ERROR = "candidate_error", "Candidate failed (transient)"
    CONTEXT_WINDOW = "context_window", "Prompt over the candidate's context window"


class Uncounted(models.TextChoices):
    COUNTED = "", "Counted"
    EXCLUDED = "excluded", "Excluded by a targeting rule"
    OVERRIDE = "override", "QA override"
    ERROR = "error", "Targeting unreadable by the SDK"
    OTHER_COHORT = "other_cohort", "Another cohort than the stage compares"


class Outcome(models.Model):
    """One request as the SDK reported it: raw, kept for the retention period, then purged.
    The statistics never read these rows; they read the aggregates built from them at ingest."""

    # The client-made event id: the primary key is what makes a retried batch store nothing twice.
    event_id = models.CharField(max_length=64, primary_key=True)
    # No foreign-key constraints in the database (db_constraint=False): this is the highest-
    # volume insert in the system, and checking three references per row at commit cost a
    # quarter of the database's ingest time (bench/bench_ingest.py). Ingest writes only ids it
    # has just read; deleting a plan still cascades here through the ORM; the indexes stay.
    plan = models.ForeignKey(
        MigrationPlan, on_delete=models.CASCADE, related_name="+", db_constraint=False
    )
    # Both null for a plan that was not running at ``plan_version`` (a draft, a paused plan):
    # stored, but compared in no stage.
    run = models.ForeignKey(
        PlanRun, null=True, blank=True, on_delete=models.CASCADE, related_name="+",
        db_constraint=False,
    )  # fmt: skip
    stage = models.ForeignKey(
        PlanStage, null=True, blank=True, on_delete=models.CASCADE, related_name="+",
        db_constraint=False,
    )  # fmt: skip
    plan_version = models.PositiveIntegerField()
    decision_id = models.CharField(max_length=64)
    arm = models.CharField(max_length=16, choices=Arm.choices)
    unit = models.CharField(max_length=256)
    ts = models.DateTimeField()
    window = models.DateTimeField()
    latency_ms = models.FloatField()
    ttft_ms = models.FloatField(null=True, blank=True)
    error = models.CharField(max_length=16, blank=True)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    # Null when usage was not reported: unknown cost, never zero.
    cost_usd = models.FloatField(null=True, blank=True)
    received_at = models.DateTimeField()
    # Set when the SDK's complete() answered from control for a unit routed to the candidate
    # (``candidate_error``: the candidate failed transiently, its failure is a row of its own;
    # ``context_window``: the prompt was too long for the candidate). Stored as the record and
    # the bill, counted in neither arm's statistics: the unit is in the candidate's bucket.
    fallback = models.CharField(max_length=16, blank=True, default="", choices=Fallback.choices)
    # The cohort a targeting rule put the unit in ("" for none), as the SDK reported it.
    cohort = models.CharField(max_length=63, blank=True, default="")
    # Why the outcome is counted in neither arm ("" when it is counted): the decision
    # excluded the unit, a QA override chose its arm, the SDK could not read the plan's
    # targeting, or the unit's cohort is not the one its stage compares.
    uncounted = models.CharField(max_length=16, blank=True, default="", choices=Uncounted.choices)
    # The per-request metrics the event carried ({name: value}: the application's own and the
    # answer checks), as checked at ingest; null when none.
    metrics = models.JSONField(null=True, blank=True)
    # The unit's segment values ({dimension: value}, the plan's segment dimensions only), as
    # the SDK took them from the decision's attributes; null when none.
    segments = models.JSONField(null=True, blank=True)

    class Meta:
        indexes = [
            # Feedback and metric values join their outcome by decision id (they may come from
            # another service): equality only, so a hash index, cheaper for each ingested
            # outcome to add to (migration 0028; SQLite keeps a btree).
            HashIndex(fields=["decision_id"], name="outcome_decision_idx"),
            # The retention purge: "older than N days", oldest first, in batches.
            models.Index(fields=["ts"], name="outcome_ts_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} {self.arm}"


class FeedbackScale(models.TextChoices):
    THUMBS = "thumbs", "Thumbs (-1 or 1)"
    FIVE = "five", "Five stars (1 to 5)"


class Feedback(models.Model):
    """A user's rating of one answer, normalised to [0, 1]. It may arrive before its outcome:
    then it is held (``outcome`` null) and counted when the outcome arrives."""

    event_id = models.CharField(max_length=64, primary_key=True)
    decision_id = models.CharField(max_length=64)
    score = models.FloatField()
    raw_score = models.FloatField()
    scale = models.CharField(max_length=8, choices=FeedbackScale.choices)
    ts = models.DateTimeField()
    received_at = models.DateTimeField()
    outcome = models.ForeignKey(
        Outcome, null=True, blank=True, on_delete=models.SET_NULL, related_name="feedback"
    )
    # The plans the API key that sent it could write then (null: every plan). Feedback held
    # for an outcome not yet stored is checked against it when the outcome arrives.
    plan_scope = models.JSONField(null=True, blank=True)
    # Why it will never count (its decision is in a plan outside plan_scope); "" otherwise.
    refused = models.CharField(max_length=100, blank=True, default="")

    class Meta:
        indexes = [
            # An arriving outcome picks up the feedback held for its decision id.
            models.Index(fields=["decision_id"], name="feedback_decision_idx"),
            # The retention purge.
            models.Index(fields=["ts"], name="feedback_ts_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.decision_id}: {self.score:g}"


class UnitTotals(models.Model):
    """A unit's running totals in a stage and arm. The statistics need user-level variance
    (one user's requests are not independent); each window stores the increments of the
    squares of these totals, so the sums stay additive (see ``stats.ClusterSums``). The
    fields mirror ``aggregation.UnitTotals``; the log(1 + ms) latency sums tell the latency
    tests how much one user's latencies resemble each other."""

    # No index of its own: the unique constraint below starts with the stage (ingest
    # writes these rows on every batch, and each index is written with them).
    stage = models.ForeignKey(PlanStage, on_delete=models.CASCADE, related_name="+", db_index=False)
    arm = models.CharField(max_length=16, choices=Arm.choices)
    unit = models.CharField(max_length=256)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    cost_n = models.PositiveIntegerField(default=0)
    cost_sum = models.FloatField(default=0.0)
    feedback_n = models.PositiveIntegerField(default=0)
    feedback_sum = models.FloatField(default=0.0)
    # Database defaults too: rows written by a process that predates these columns stay valid.
    latency_n = models.PositiveIntegerField(default=0, db_default=0)
    latency_log1p = models.FloatField(default=0.0, db_default=0.0)
    ttft_n = models.PositiveIntegerField(default=0, db_default=0)
    ttft_log1p = models.FloatField(default=0.0, db_default=0.0)
    # The unit's per-request metric sums, ``{metric: [n, sum]}``; in a shadow stage's
    # ``paired`` arm (no other field moves there) ``[n, candidate's sum, control's sum]``
    # over the unit's pairs. Added key by key (outcomes/unit_rows.py).
    metrics = models.JSONField(default=dict, db_default={})

    class Meta:
        constraints = [
            # The upsert key; ingest locks these rows in key order.
            models.UniqueConstraint(fields=["stage", "arm", "unit"], name="unittotals_unique")
        ]

    def __str__(self) -> str:
        return f"{self.stage_id}/{self.arm}/{self.unit}"


class WindowAggregate(models.Model):
    """Everything the statistics and the charts need for one arm of one stage in one minute.

    ``data`` is a serialised ``stats.ArmAggregates`` (bucket counts, sums, cluster sums);
    the scalar columns copy the figures charts group by in SQL. Rows only ever grow by
    merging (addition), so the order in which batches arrive does not matter."""

    # No index of its own: the unique constraint below starts with the stage (ingest
    # writes these rows on every batch, and each index is written with them).
    stage = models.ForeignKey(
        PlanStage, on_delete=models.CASCADE, related_name="windows", db_index=False
    )
    arm = models.CharField(max_length=16, choices=Arm.choices)
    window = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    latency_sum = models.FloatField(default=0.0)
    cost_n = models.PositiveIntegerField(default=0)
    cost_sum = models.FloatField(default=0.0)
    feedback_n = models.PositiveIntegerField(default=0)
    feedback_sum = models.FloatField(default=0.0)
    data = models.JSONField(default=dict)

    class Meta:
        constraints = [
            # The upsert key; also serves "a stage's windows in time order" for the charts.
            models.UniqueConstraint(fields=["stage", "window", "arm"], name="window_unique")
        ]

    def __str__(self) -> str:
        return f"{self.stage_id}/{self.arm}/{self.window:%Y-%m-%d %H:%M}"


class StageAggregate(models.Model):
    """The running sum of a stage's windows per arm: what one evaluation reads (two rows),
    so an evaluation costs the same after a minute or a month."""

    # No index of its own: the unique constraint below starts with the stage (ingest
    # writes these rows on every batch, and each index is written with them).
    stage = models.ForeignKey(
        PlanStage, on_delete=models.CASCADE, related_name="totals", db_index=False
    )
    arm = models.CharField(max_length=16, choices=Arm.choices)
    requests = models.PositiveIntegerField(default=0)
    data = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["stage", "arm"], name="stageaggregate_unique")
        ]

    def __str__(self) -> str:
        return f"{self.stage_id}/{self.arm}"


class SegmentAggregate(models.Model):
    """A stage's running sums per arm and segment (dimension = value), as StageAggregate for
    the whole population. Bounded: per (stage, arm, dimension) at most
    ``outcomes.segments.CAPACITY(top_k)`` values get rows of their own, the later ones add to
    the ``other`` row; the evaluation keeps the busiest ``top_k`` and folds the rest into
    ``other`` (guardrails/segments.py)."""

    # No index of its own: the unique constraint below starts with the stage (ingest
    # writes these rows on every batch, and each index is written with them).
    stage = models.ForeignKey(
        PlanStage, on_delete=models.CASCADE, related_name="segment_totals", db_index=False
    )
    arm = models.CharField(max_length=16, choices=Arm.choices)
    dimension = models.CharField(max_length=64)
    value = models.CharField(max_length=64)
    requests = models.PositiveIntegerField(default=0)
    data = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["stage", "arm", "dimension", "value"], name="segmentaggregate_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.stage_id}/{self.arm}/{self.dimension}={self.value}"


class PendingRollup(models.Model):
    """What one ingest transaction adds to one stage's aggregates, not yet folded into its
    rows: ``segments``, its segmented outcomes, feedback and metric values and their units'
    moves (outcomes/segment_rows.py; empty when the batch had no segment values), and
    ``windows``, its windows' deltas (outcomes/window_rollup.py). Ingest writes one row per
    batch and stage instead of rewriting the stage's window, stage and segment rows; a fold,
    at most about once a second per web process and before every read of those rows, adds
    them to the rows and deletes them in one transaction (outcomes/segment_rollup.py)."""

    stage = models.ForeignKey(PlanStage, on_delete=models.CASCADE, related_name="+")
    segments = models.BinaryField()
    windows = models.BinaryField()
    # How long the oldest row has waited (``/metrics``: a fold that keeps failing shows here).
    created_at = models.DateTimeField(db_default=Now())

    def __str__(self) -> str:
        return f"{self.stage_id}/{self.pk}"


class PendingSegments(models.Model):
    """The pending segment rows of the code before migration 0026, in their own format: that
    code folds this table and reads no window part, so the rows of the code after are in
    ``PendingRollup``, which it never touches (a rolling deploy or a rollback loses nothing
    that way). The fold moves any row left here into ``PendingRollup`` and folds it there."""

    stage = models.ForeignKey(PlanStage, on_delete=models.CASCADE, related_name="+")
    data = models.BinaryField()

    def __str__(self) -> str:
        return f"{self.stage_id}/{self.pk}"
