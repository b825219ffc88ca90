"""Plans: the migration plan, its phases and guardrails, its runs and stages, and the audit trail.

Writes go through the lifecycle and edit services (``plans/lifecycle.py``, ``plans/edits.py``);
nothing here changes a plan's status by itself.
"""

from __future__ import annotations

import re
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from migrations_app.models.alerts import AlertChannel
from migrations_app.models.catalog import ModelSpec
from migrations_app.plans import holdout

PLAN_KEY = RegexValidator(
    r"^[a-z0-9][a-z0-9._-]{0,62}$",
    "Lowercase letters, digits, '.', '_' and '-', starting with a letter or digit (at most 63).",
)


def new_salt() -> str:
    return secrets.token_hex(8)


class PlanStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    ROLLED_BACK = "rolled_back", "Rolled back"
    COMPLETED = "completed", "Completed"
    ARCHIVED = "archived", "Archived"


class PromptMode(models.TextChoices):
    NONE = "none", "Unchanged"
    OVERRIDE = "override", "Replace the system prompt"
    SUFFIX = "suffix", "Append to the system prompt"


SEGMENT_DIMENSION_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"


def validate_segment_dimensions(value: object) -> None:
    """At most three distinct attribute names (as attributes are named: 1-64 characters)."""
    if not isinstance(value, list):
        raise ValidationError('A list of attribute names, e.g. ["tenant", "lang"].')
    if len(value) > 3:
        raise ValidationError(f"At most 3 segment dimensions, got {len(value)}.")
    for name in value:
        if not isinstance(name, str) or not re.match(SEGMENT_DIMENSION_PATTERN, name):
            raise ValidationError(
                f"{name!r} is not an attribute name (a letter or _, then letters, digits, "
                "_ . -; at most 64 characters)."
            )
    if len(set(value)) != len(value):
        raise ValidationError("Each segment dimension once.")


def validate_holdout_percent(value: object) -> None:
    """0 (no holdout) or a share from holdout.MIN_PERCENT to holdout.MAX_PERCENT."""
    if problem := holdout.percent_problem(value):
        raise ValidationError(problem)


class MigrationPlan(models.Model):
    """A planned move of one traffic stream (``key``) from a control model to a candidate model."""

    key = models.CharField(
        max_length=63, unique=True, validators=[PLAN_KEY], help_text="What SDKs ask for."
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    control_model = models.ForeignKey(ModelSpec, on_delete=models.PROTECT, related_name="+")
    control_params = models.JSONField(default=dict, blank=True)
    control_prompt_mode = models.CharField(
        max_length=16, choices=PromptMode.choices, default=PromptMode.NONE
    )
    control_prompt_text = models.TextField(blank=True)
    candidate_model = models.ForeignKey(ModelSpec, on_delete=models.PROTECT, related_name="+")
    candidate_params = models.JSONField(default=dict, blank=True)
    candidate_prompt_mode = models.CharField(
        max_length=16, choices=PromptMode.choices, default=PromptMode.NONE
    )
    candidate_prompt_text = models.TextField(blank=True)

    alpha = models.FloatField(
        default=0.05,
        validators=[MinValueValidator(0.001), MaxValueValidator(0.2)],
        help_text="Family-wise false-rollback rate, split across the guardrails.",
    )
    circuit_breaker_error_rate = models.FloatField(
        default=0.20,
        validators=[MinValueValidator(0.01), MaxValueValidator(1.0)],
        help_text="Candidate error rate that rolls back at once, without statistics.",
    )
    circuit_breaker_min_requests = models.PositiveIntegerField(
        default=50, validators=[MinValueValidator(1)]
    )
    escalate_after_minutes = models.PositiveIntegerField(
        default=10,
        validators=[MinValueValidator(1)],
        help_text="Re-page if a rollback has not fixed things by then.",
    )
    alert_channels = models.ManyToManyField(AlertChannel, blank=True, related_name="plans")
    shadow_budget_usd_per_day = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Most the candidate's shadow calls may cost per UTC day; empty: no limit.",
    )
    shadow_retention_days = models.PositiveIntegerField(
        default=14,
        validators=[MinValueValidator(1)],
        help_text="Shadow samples (prompts and answers) are deleted after this many days.",
    )
    redaction_patterns = models.JSONField(
        default=list,
        blank=True,
        help_text="Extra regular expressions masked in shadow samples before they are stored "
        "(emails, phone numbers and API keys are always masked).",
    )
    fallback_to_control = models.BooleanField(
        default=True,
        help_text="complete(): when the candidate fails with a transient error, answer from control.",
    )
    answer_schema = models.JSONField(
        null=True,
        blank=True,
        help_text="Optional: a JSON Schema every answer should satisfy (the schema_valid "
        "check). Refused when saved if it is not a valid JSON Schema.",
    )
    judge_model = models.ForeignKey(
        "ModelSpec",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Optional: a model asked, for each shadow pair, which answer is better (the "
        "order is randomised to cancel position bias). Its calls are not in the shadow budget.",
    )
    judge_rubric = models.TextField(
        blank=True,
        help_text="The pointwise judge's rubric (scores 1-5) for the judge_score guardrail; empty: "
        "the default rubric (correct and helpful 5 ... wrong or off-topic 1).",
    )
    judge_sample_percent = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(100.0)],
        help_text="Split and rollout: the share of each arm's requests (%) whose answer the "
        "judge scores on the rubric (needs a judge model; 0: none).",
    )
    judge_budget_usd_per_day = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Most the judge's calls (pairwise and pointwise) may cost per UTC day; "
        "empty: no limit.",
    )
    judge_min_labels = models.PositiveIntegerField(
        default=50,
        help_text="Human labels needed before the judge's guardrails may roll back or hold "
        "(below: they only alert).",
    )
    judge_min_kappa = models.FloatField(
        default=0.4,
        validators=[MinValueValidator(-1.0), MaxValueValidator(1.0)],
        help_text="The lower bound of Cohen's kappa (judge vs people, 95% interval) needed "
        "before the judge's guardrails may roll back or hold.",
    )
    # Guardrails per segment (issue 16): the attributes whose values are segments, at most
    # three; per dimension the busiest segment_top_k values are tested, the rest is "other".
    segment_dimensions = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_segment_dimensions],
        help_text='Up to three attribute names, e.g. ["tenant", "lang"]: every guardrail is '
        "also tested per value of each (the busiest values; the rest together as 'other').",
    )
    segment_top_k = models.PositiveSmallIntegerField(
        default=20,
        validators=[MinValueValidator(1), MaxValueValidator(50)],
        help_text="Values tested per segment dimension (1-50); the others count as 'other'.",
    )
    segment_on_regression = models.CharField(
        max_length=16,
        choices=[
            ("rollback", "Roll the plan back"),
            ("exclude", "Exclude the segment (its units go to control) and continue"),
        ],
        default="rollback",
        help_text="What a segment regressing on a rollback guardrail does. 'other' always "
        "rolls back.",
    )
    # The holdout after promotion (issue 16): after the last rollout step, holdout_percent of
    # units (the highest buckets) go back to control for a watch, the guardrails testing the
    # candidate against them; the plan completes when the watch ends without a regression.
    holdout_percent = models.FloatField(
        default=0.0,
        validators=[validate_holdout_percent],
        help_text=f"After the last step, the share of units (%) kept on control through a "
        f"watch before the plan completes: 0 for none, else {holdout.MIN_PERCENT:g}-"
        f"{holdout.MAX_PERCENT:g}. The last phase must be a rollout ending at 100 %.",
    )
    holdout_watch_minutes = models.PositiveIntegerField(
        default=60,
        validators=[MinValueValidator(1), MaxValueValidator(holdout.MAX_WATCH_MINUTES)],
        help_text="How long the holdout is watched at least (minutes).",
    )
    holdout_min_samples = models.PositiveIntegerField(
        default=1000,
        validators=[MaxValueValidator(holdout.MAX_SAMPLES)],
        help_text="Requests per arm (the holdout's control included) the watch needs at least.",
    )
    # The change detectors (issue 20): where a step has no planned end (or has outlived it),
    # a detector's average run length to a false alarm is at least this many days.
    detector_arl_days = models.FloatField(
        default=30.0,
        validators=[MinValueValidator(1.0), MaxValueValidator(365.0)],
        help_text="Change detectors: at most one false alarm per this many days on average "
        "(1-365), where a step has no planned end. Shorter: faster to catch a regression "
        "that starts late, more false rollbacks.",
    )
    salt = models.CharField(
        max_length=32, default=new_salt, help_text="Bucketing salt; new per plan."
    )

    status = models.CharField(max_length=16, choices=PlanStatus.choices, default=PlanStatus.DRAFT)
    # Bumped by every change that affects routing; SDKs compare it, the CAS conditions on it.
    version = models.PositiveIntegerField(default=1)
    current_run = models.ForeignKey(
        "PlanRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    phase_index = models.PositiveIntegerField(default=0)
    step_index = models.PositiveIntegerField(default=0)
    # The stage outcomes are attributed to while running; null when not routing by the split.
    current_stage = models.ForeignKey(
        "PlanStage", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    step_started_at = models.DateTimeField(null=True, blank=True)
    # What archived plans keep serving (completed, rolled_back or draft).
    final_status = models.CharField(max_length=16, choices=PlanStatus.choices, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]
        permissions = [
            (
                "operate_migrationplan",
                "Can start, advance, pause, resume, roll back and complete plans",
            )
        ]
        indexes = [
            # The engine's beat task: "every running plan", every 15 s.
            models.Index(fields=["status"], name="plan_status_idx"),
        ]

    def __str__(self) -> str:
        return self.key

    def clean(self) -> None:
        # Every worker and SDK compiles this schema: one that is not a valid JSON Schema, too
        # large or naming a URL is refused here, on every path that saves a plan.
        if self.answer_schema is not None:
            from turnout.checks import schema_problems

            if problems := schema_problems(self.answer_schema):
                raise ValidationError({"answer_schema": problems})


class PhaseKind(models.TextChoices):
    SHADOW = "shadow", "Shadow"
    AB_SPLIT = "ab_split", "A/B split"
    ROLLOUT = "rollout", "Gradual rollout"
    # Offline, before any user: a dataset replayed through the candidate (migrations_app/replay).
    REPLAY = "replay", "Replay"


class PlanPhase(models.Model):
    """One phase of a plan, in order.

    ``percent`` is the shadow sample rate (shadow) or the candidate share (A/B split);
    a rollout walks ``steps`` (candidate percentages, strictly increasing).
    """

    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="phases")
    order = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=PhaseKind.choices)
    percent = models.FloatField(
        null=True, blank=True, help_text="Shadow: sample %. A/B: candidate %."
    )
    steps = models.JSONField(
        default=list, blank=True, help_text="Rollout: candidate % per step, e.g. [5, 25, 50, 100]."
    )
    min_duration_minutes = models.PositiveIntegerField(
        default=30, help_text="Per step (rollout) or for the phase."
    )
    min_samples = models.PositiveIntegerField(
        default=1000, help_text="Requests per arm before moving on."
    )
    auto_advance = models.BooleanField(
        default=True, help_text="Off: wait for a person to approve each move."
    )
    replay = models.JSONField(
        default=dict,
        blank=True,
        help_text="Replay: dataset, version, repeats, fresh_baseline, gates, on_fail, "
        "budget_usd (plans/phases.py validate_replay).",
    )

    class Meta:
        ordering = ["plan", "order", "pk"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.order}"


class GuardrailMetric(models.TextChoices):
    ERROR_RATE = "error_rate", "Error rate"
    LATENCY_P95 = "latency_p95", "p95 latency"
    LATENCY_P99 = "latency_p99", "p99 latency"
    TTFT_P95 = "ttft_p95", "p95 time to first token"
    SATISFACTION = "satisfaction", "User satisfaction"
    COST_PER_REQUEST = "cost_per_request", "Cost per request"
    # The judge's (migrations_app.judge): the paired preference in shadow, the pointwise
    # score per arm in a split or rollout.
    JUDGE_PREFERENCE = "judge_preference", "Judge preference (shadow, paired)"
    JUDGE_SCORE = "judge_score", "Judge score (split, 1-5 rubric)"


class ToleranceKind(models.TextChoices):
    RELATIVE = "relative", "Relative (candidate / control)"
    ABSOLUTE = "absolute", "Absolute (candidate - control)"


class GuardrailAction(models.TextChoices):
    ROLLBACK = "rollback", "Roll back"
    PAUSE = "pause", "Pause"
    ALERT = "alert", "Alert only"


class Guardrail(models.Model):
    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="guardrails")
    # One of GuardrailMetric, an answer check (turnout.contract.ANSWER_CHECKS), or a metric
    # the plan or the catalog declares (MetricDefinition); checked when the plan is saved.
    metric = models.CharField(max_length=48)
    # For a per-request metric: "" keeps the metric's own direction, or overrides it.
    direction = models.CharField(max_length=20, blank=True, default="")
    tolerance_kind = models.CharField(
        max_length=16, choices=ToleranceKind.choices, default=ToleranceKind.RELATIVE
    )
    tolerance = models.FloatField(
        help_text="Relative: e.g. 1.5 = at most 1.5x control. Absolute: the allowed difference."
    )
    action = models.CharField(
        max_length=16, choices=GuardrailAction.choices, default=GuardrailAction.ROLLBACK
    )
    min_samples = models.PositiveIntegerField(
        default=0, help_text="Per arm, before this guardrail may act."
    )

    class Meta:
        ordering = ["plan", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "metric"], name="guardrail_one_per_metric"),
        ]

    def __str__(self) -> str:
        label = dict(GuardrailMetric.choices).get(self.metric, self.metric)
        return f"{label} {self.tolerance_kind} {self.tolerance}"


class PlanRun(models.Model):
    """One attempt at a plan. Outcomes, statistics and alerts belong to a run; a rollback ends it."""

    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="runs")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    started_by = models.CharField(max_length=200)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_status = models.CharField(max_length=16, choices=PlanStatus.choices, blank=True)

    class Meta:
        ordering = ["plan", "number"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "number"], name="planrun_unique_number")
        ]

    def __str__(self) -> str:
        return f"{self.plan.key} run {self.number}"


class StageKind(models.TextChoices):
    SHADOW = "shadow", "Shadow"
    AB_SPLIT = "ab_split", "A/B split"
    ROLLOUT = "rollout", "Gradual rollout"
    # After a rollback: all traffic on control, watched until it is back to its baseline.
    RECOVERY = "recovery", "Recovery"
    # After the last step: the plan's holdout on control, the rest on the candidate, watched.
    HOLDOUT = "holdout", "Holdout watch"
    # The plan's replay phase: every user on control while a dataset is replayed offline.
    REPLAY = "replay", "Replay"


class PlanStage(models.Model):
    """A stretch of a run at one constant split (a phase's step). The statistics compare arms
    within a stage only: pooling stages with different weights confounds the arms with time.
    Pausing keeps the stage (it resumes at the same weight); advancing opens the next one.

    A rollback opens a ``recovery`` stage (all traffic on control): its aggregates tell the
    engine whether the control arm is back to its baseline, to resolve or escalate the page."""

    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="stages")
    run = models.ForeignKey(PlanRun, on_delete=models.CASCADE, related_name="stages")
    phase_index = models.PositiveIntegerField()
    step_index = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=StageKind.choices)
    weight_bp = models.PositiveIntegerField()
    shadow_bp = models.PositiveIntegerField()
    # The population this stage compares: "" for the general split, else the cohort a
    # cohort-first step targets. Only its units' outcomes are counted (at ``weight_bp``, its
    # weight); the others' are stored, not compared, as their arms were split at other weights.
    cohort = models.CharField(max_length=63, blank=True, default="")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "phase_index", "step_index"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "kind", "phase_index", "step_index"],
                name="planstage_unique_position",
            )
        ]

    def __str__(self) -> str:
        return f"{self.run} {self.kind} {self.weight_bp / 100:g}%"


class ActorKind(models.TextChoices):
    USER = "user", "Person"
    ENGINE = "engine", "Rollback engine"
    API = "api", "API key"


class AuditAction(models.TextChoices):
    # The lifecycle transitions (plans/lifecycle.py TRANSITIONS)
    START = "start", "Started"
    ADVANCE = "advance", "Advanced"
    PAUSE = "pause", "Paused"
    RESUME = "resume", "Resumed"
    ROLLBACK = "rollback", "Rolled back"
    COMPLETE = "complete", "Completed"
    ARCHIVE = "archive", "Archived"
    # Events that do not move the status (record_edit)
    CREATE = "create", "Created"
    EDIT = "edit", "Edited"
    RECOVERED = "recovered", "Recovered after the rollback"
    ESCALATED = "escalated", "Escalated: not recovered after the rollback"
    SHADOW_BUDGET_REACHED = "shadow_budget_reached", "Daily shadow budget reached"
    TARGETING = "targeting", "Targeting rules changed"
    OVERRIDE = "override", "QA override changed"
    REPLAY = "replay", "Replay decided"


class AuditEvent(models.Model):
    """Who did what to a plan, why, and on what evidence. Written in the same transaction as the change."""

    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="audit_events")
    run = models.ForeignKey(
        PlanRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=32, choices=AuditAction.choices)
    from_status = models.CharField(max_length=16, choices=PlanStatus.choices, blank=True)
    to_status = models.CharField(max_length=16, choices=PlanStatus.choices, blank=True)
    plan_version = models.PositiveIntegerField()
    # The stage routing decisions made at this version belong to (null: not splitting). Ingest
    # maps an outcome's plan version to its stage through the latest event at or below it.
    stage = models.ForeignKey(
        PlanStage, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=200)
    reason = models.TextField(blank=True)
    evidence = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            # The plan's timeline (admin inline, dashboard), newest first.
            models.Index(fields=["plan", "-created_at"], name="audit_plan_timeline_idx"),
            # Ingest: "the stage in effect at plan version v" (latest event with version <= v).
            models.Index(fields=["plan", "plan_version"], name="audit_plan_version_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.plan.key}: {self.action} by {self.actor_label}"


class GuardrailSet(models.Model):
    """A named set of guardrails, copied into a plan when it is made (a later edit of the set
    changes no plan). The default set applies to every new plan that names none, unless the
    plan removes it (an empty list)."""

    name = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    # Rows as a plan file writes them: metric, tolerance_kind, tolerance, action, min_samples.
    guardrails = models.JSONField(default=list, blank=True)
    is_default = models.BooleanField(
        "default", default=False, help_text="Applies to every new plan that names no set."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=models.Q(is_default=True),
                name="guardrailset_one_default",
            )
        ]

    def __str__(self) -> str:
        return self.name


class PlanTemplate(models.Model):
    """A reusable playbook: phases with their steps and minimums, and optionally the guardrail
    set that goes with it. Chosen when a plan is made (``template: standard-chat``) and copied
    into it, so editing a template never changes a plan that exists."""

    name = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    # Rows as a plan file writes them: kind, percent, steps, min_duration_minutes, min_samples,
    # auto_advance.
    phases = models.JSONField(default=list)
    guardrail_set = models.ForeignKey(
        GuardrailSet,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="templates",
        help_text="Empty: the default guardrail set.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
