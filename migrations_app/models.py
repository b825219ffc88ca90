"""Turnout's domain: the model catalog, migration plans, their runs, the audit trail, SDK keys.

Writes go through services (``plans.py``, ``catalog.py``, ``apikeys.py``); nothing here
changes a plan's status by itself.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

ENV_VAR_NAME = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_]*$", "An environment variable name: letters, digits and underscores."
)
PLAN_KEY = RegexValidator(
    r"^[a-z0-9][a-z0-9._-]{0,62}$",
    "Lowercase letters, digits, '.', '_' and '-', starting with a letter or digit (at most 63).",
)


def new_salt() -> str:
    return secrets.token_hex(8)


class ProviderKind(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    GEMINI = "gemini", "Google Gemini"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible (vLLM, Ollama, Together, ...)"


class ProviderConnection(models.Model):
    """Where a provider is reached. The API key stays in the environment; only its name is here."""

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=32, choices=ProviderKind.choices)
    base_url = models.URLField(blank=True, help_text="Empty: the vendor's default endpoint.")
    api_key_env = models.CharField(
        "API key environment variable",
        max_length=128,
        validators=[ENV_VAR_NAME],
        help_text="The NAME of the environment variable holding the key, e.g. OPENAI_API_KEY. Never the key.",
    )
    # The vendor's limits are per account: Turnout's workers share these counts through Redis
    # (migrations_app/limits.py) for the calls they make themselves (shadow and judge calls).
    max_concurrent_calls = models.PositiveIntegerField(
        default=64,
        validators=[MinValueValidator(1)],
        help_text="Calls Turnout's workers make to this provider at once, all workers together.",
    )
    max_calls_per_second = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Calls per second Turnout's workers make to this provider; empty: no limit.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelSpec(models.Model):
    """A pinned model at a provider, with the prices used to compute cost at ingest."""

    provider = models.ForeignKey(
        ProviderConnection, on_delete=models.PROTECT, related_name="models"
    )
    model_id = models.CharField(
        max_length=200, help_text="Pinned model id, e.g. gpt-4o-2024-08-06."
    )
    display_name = models.CharField(max_length=200, blank=True)
    input_price_per_mtok = models.DecimalField(
        "input $ / 1M tokens", max_digits=12, decimal_places=4, validators=[MinValueValidator(0)]
    )
    output_price_per_mtok = models.DecimalField(
        "output $ / 1M tokens", max_digits=12, decimal_places=4, validators=[MinValueValidator(0)]
    )
    context_window = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    max_output_tokens = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider__name", "model_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model_id"], name="modelspec_unique_per_provider"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider.name}:{self.model_id}"


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


class AlertChannelKind(models.TextChoices):
    SLACK = "slack", "Slack incoming webhook"
    PAGERDUTY = "pagerduty", "PagerDuty Events API v2"
    WEBHOOK = "webhook", "Generic webhook (signed)"
    EMAIL = "email", "Email"


class AlertChannel(models.Model):
    """A destination for pages. URLs and keys are secrets: stored as environment-variable names."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=AlertChannelKind.choices)
    url_env = models.CharField(
        "URL environment variable",
        max_length=128,
        blank=True,
        validators=[ENV_VAR_NAME],
        help_text="Name of the variable holding the Slack/webhook URL (PagerDuty: optional endpoint override).",
    )
    secret_env = models.CharField(
        "secret environment variable",
        max_length=128,
        blank=True,
        validators=[ENV_VAR_NAME],
        help_text="Name of the variable holding the webhook signing secret or the PagerDuty routing key.",
    )
    recipients = models.CharField(
        max_length=1000, blank=True, help_text="Email: comma-separated addresses."
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"


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
    judge_model = models.ForeignKey(
        "ModelSpec",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Optional: a model asked, for each shadow pair, which answer is better (the "
        "order is randomised to cancel position bias). Its calls are not in the shadow budget.",
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


class PhaseKind(models.TextChoices):
    SHADOW = "shadow", "Shadow"
    AB_SPLIT = "ab_split", "A/B split"
    ROLLOUT = "rollout", "Gradual rollout"


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


class ToleranceKind(models.TextChoices):
    RELATIVE = "relative", "Relative (candidate / control)"
    ABSOLUTE = "absolute", "Absolute (candidate - control)"


class GuardrailAction(models.TextChoices):
    ROLLBACK = "rollback", "Roll back"
    PAUSE = "pause", "Pause"
    ALERT = "alert", "Alert only"


class Guardrail(models.Model):
    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="guardrails")
    metric = models.CharField(max_length=32, choices=GuardrailMetric.choices)
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
        return f"{self.get_metric_display()} {self.tolerance_kind} {self.tolerance}"


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
    kind = models.CharField(max_length=16)
    weight_bp = models.PositiveIntegerField()
    shadow_bp = models.PositiveIntegerField()
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


class AuditEvent(models.Model):
    """Who did what to a plan, why, and on what evidence. Written in the same transaction as the change."""

    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="audit_events")
    run = models.ForeignKey(
        PlanRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=32)
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


class ApiKeyScope(models.TextChoices):
    DECIDE = "decide", "Decide (config, stream, decide, OFREP)"
    REPORT = "report", "Report (outcomes, feedback, shadow samples)"
    ADMIN = "admin", "Admin (roll back, pause, resume, advance)"


class ApiKey(models.Model):
    """An SDK key. Only a SHA-256 of the secret is stored; the key is shown once, at creation.

    A fast hash (not PBKDF2) is right here: the secret is 256 random bits, so there is
    nothing to brute-force, and it is checked on every SDK request.
    """

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    hashed_secret = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list)
    plans = models.ManyToManyField(
        MigrationPlan, blank=True, related_name="api_keys", help_text="Empty: every plan."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class Arm(models.TextChoices):
    CONTROL = "control", "Control"
    CANDIDATE = "candidate", "Candidate"


class Fallback(models.TextChoices):
    NONE = "", "Not a fallback"
    CANDIDATE_ERROR = "candidate_error", "Candidate failed (transient)"
    CONTEXT_WINDOW = "context_window", "Prompt over the candidate's context window"


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

    class Meta:
        indexes = [
            # Feedback joins its outcome by decision id (feedback may come from another service).
            models.Index(fields=["decision_id"], name="outcome_decision_idx"),
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
    squares of these totals, so the sums stay additive (see ``stats.ClusterSums``)."""

    stage = models.ForeignKey(PlanStage, on_delete=models.CASCADE, related_name="+")
    arm = models.CharField(max_length=16, choices=Arm.choices)
    unit = models.CharField(max_length=256)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    cost_n = models.PositiveIntegerField(default=0)
    cost_sum = models.FloatField(default=0.0)
    feedback_n = models.PositiveIntegerField(default=0)
    feedback_sum = models.FloatField(default=0.0)

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

    stage = models.ForeignKey(PlanStage, on_delete=models.CASCADE, related_name="windows")
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

    stage = models.ForeignKey(PlanStage, on_delete=models.CASCADE, related_name="totals")
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


class ShadowStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    SKIPPED = "skipped", "Skipped"


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


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class AlertDelivery(models.Model):
    """The alert outbox: one message for one channel, written in the same transaction as the
    action that caused it, delivered by a Celery task after commit. A repeat of the same
    page (same channel, dedup key and event) within the dedup window is not a new row: it
    bumps ``repeats`` on the open one, so a flapping guardrail pages once."""

    plan = models.ForeignKey(MigrationPlan, on_delete=models.CASCADE, related_name="alerts")
    channel = models.ForeignKey(AlertChannel, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=24)
    severity = models.CharField(max_length=16)
    dedup_key = models.CharField(max_length=300)
    message = models.JSONField()
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_error = models.CharField(max_length=500, blank=True)
    repeats = models.PositiveIntegerField(default=0)
    last_seen_at = models.DateTimeField()
    created_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The sweeper: pending rows due for an attempt.
            models.Index(fields=["status", "next_attempt_at"], name="alert_due_idx"),
            # Dedup: an open page for this channel, key and event within the window.
            models.Index(
                fields=["channel", "dedup_key", "event", "-created_at"], name="alert_dedup_idx"
            ),
        ]
        verbose_name_plural = "alert deliveries"

    def __str__(self) -> str:
        return f"{self.event} {self.dedup_key} -> {self.channel_id}: {self.status}"


class AlertAttempt(models.Model):
    """One try at delivering an alert: what the receiver said, and how fast."""

    delivery = models.ForeignKey(AlertDelivery, on_delete=models.CASCADE, related_name="tries")
    at = models.DateTimeField()
    ok = models.BooleanField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.FloatField()
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["delivery", "at"]

    def __str__(self) -> str:
        return f"{self.delivery_id} at {self.at:%H:%M:%S}: {'ok' if self.ok else self.error}"
