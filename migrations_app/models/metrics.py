"""Per-request metrics: the ones a plan (or the catalog) declares for the application to report,
late values held until their outcome arrives (each unit's running sums per metric are in
``UnitTotals.metrics``), and the legacy table those sums were kept in before.

The answer checks (``turnout.contract.ANSWER_CHECKS``) are built in: they need no declaration
and their names are reserved.
"""

from __future__ import annotations

import math

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from turnout.contract import (
    ANSWER_CHECKS,
    MAX_METRIC_BOUND,
    MAX_METRIC_NAME_LENGTH,
    METRIC_HIGHER_IS_BETTER,
    METRIC_LOWER_IS_BETTER,
    METRIC_NAME_PATTERN,
)

from migrations_app.models.outcomes import Outcome
from migrations_app.models.plans import GuardrailMetric, MigrationPlan, PlanStage

METRIC_NAME = RegexValidator(
    # The contract's pattern ends in $, which also matches before a final newline.
    METRIC_NAME_PATTERN.removesuffix("$") + r"\Z",
    "Lowercase letters, digits and underscores, starting with a letter (at most 48).",
)

#: Names a declaration may not take: the built-in guardrail metrics and the answer checks.
RESERVED_METRIC_NAMES = frozenset(GuardrailMetric.values) | frozenset(ANSWER_CHECKS)


class MetricKind(models.TextChoices):
    RATE = "rate", "Rate (0 or 1 per request)"
    MEAN = "mean", "Mean (a number per request, within bounds)"


class MetricDirection(models.TextChoices):
    HIGHER_IS_BETTER = METRIC_HIGHER_IS_BETTER, "Higher is better"
    LOWER_IS_BETTER = METRIC_LOWER_IS_BETTER, "Lower is better"


class MetricDefinition(models.Model):
    """A metric the application reports per request (``client.metric(d, name, value)``).

    Declared by a plan, or by the catalog (``plan`` empty) for every plan to use; a plan's
    own declaration of a name wins over the catalog's. Values of undeclared names are
    rejected at ingest, as are values outside a mean's bounds (a rate takes 0 or 1)."""

    plan = models.ForeignKey(
        MigrationPlan,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="metric_definitions",
        help_text="Empty: a catalog metric, available to every plan.",
    )
    name = models.CharField(max_length=MAX_METRIC_NAME_LENGTH, validators=[METRIC_NAME])
    kind = models.CharField(max_length=8, choices=MetricKind.choices, default=MetricKind.RATE)
    direction = models.CharField(
        max_length=20, choices=MetricDirection.choices, default=MetricDirection.HIGHER_IS_BETTER
    )
    lower_bound = models.FloatField(null=True, blank=True, help_text="Mean: the smallest value.")
    upper_bound = models.FloatField(null=True, blank=True, help_text="Mean: the largest value.")
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["plan", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["plan", "name"],
                condition=models.Q(plan__isnull=False),
                name="metricdef_unique_per_plan",
            ),
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(plan__isnull=True),
                name="metricdef_unique_in_catalog",
            ),
        ]

    def __str__(self) -> str:
        return self.name if self.plan_id is None else f"{self.name} ({self.plan_id})"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.name in RESERVED_METRIC_NAMES:
            errors["name"] = f"{self.name!r} is a built-in metric; choose another name."
        if self.kind == MetricKind.MEAN:
            lo, hi = self.lower_bound, self.upper_bound
            if lo is None or hi is None:
                errors["upper_bound"] = "A mean needs both bounds."
            elif not all(math.isfinite(v) and abs(v) <= MAX_METRIC_BOUND for v in (lo, hi)):
                errors["upper_bound"] = f"Bounds are finite numbers within ±{MAX_METRIC_BOUND:g}."
            elif not lo < hi:
                errors["upper_bound"] = "The upper bound must be above the lower bound."
        elif self.lower_bound is not None or self.upper_bound is not None:
            errors["lower_bound"] = "A rate takes 0 or 1: leave its bounds empty."
        if errors:
            raise ValidationError(errors)


class MetricValue(models.Model):
    """A metric value sent on its own (``POST /api/v1/metrics``, ``client.metric()``), stored
    once per event id. Counted on its outcome: at once when the outcome is stored, else held
    (``outcome`` null) until it arrives; held values whose outcome never comes are purged."""

    event_id = models.CharField(max_length=64, primary_key=True)
    decision_id = models.CharField(max_length=64)
    # The plan the event named (checked against the key), or null when it named none.
    plan = models.ForeignKey(
        MigrationPlan, null=True, blank=True, on_delete=models.CASCADE, related_name="+",
        db_constraint=False,
    )  # fmt: skip
    name = models.CharField(max_length=MAX_METRIC_NAME_LENGTH)
    value = models.FloatField()
    ts = models.DateTimeField()
    received_at = models.DateTimeField()
    outcome = models.ForeignKey(
        Outcome, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        db_constraint=False,
    )  # fmt: skip
    # The plans the sending key could write (null: every plan), as for feedback.
    plan_scope = models.JSONField(null=True, blank=True)
    # Why it will never count (its outcome is in another plan, or the plan does not declare
    # the name or the value is out of its bounds there); "" otherwise.
    refused = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        indexes = [
            # An arriving outcome picks up the values held for its decision id.
            models.Index(fields=["decision_id"], name="metricvalue_decision_idx"),
            # Retention, and the purge of held values whose outcome never came.
            models.Index(fields=["ts"], name="metricvalue_ts_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.decision_id}: {self.name}={self.value:g}"


class MetricUnitTotals(models.Model):
    """Legacy: a unit's running sums of one metric in a stage, as releases before 0027 kept
    them (now ``UnitTotals.metrics``). Nothing reads it: migration 0027 moved its rows, and
    it stays for one release so that a process of the release before, still serving during
    a rolling deploy, can write; the next release drops it. ``arm`` was control, candidate
    or ``paired`` (then ``total`` the candidate's sum, ``control_total`` control's)."""

    # No index of its own: the unique constraint below starts with the stage.
    stage = models.ForeignKey(PlanStage, on_delete=models.CASCADE, related_name="+", db_index=False)
    arm = models.CharField(max_length=16)
    unit = models.CharField(max_length=256)
    metric = models.CharField(max_length=MAX_METRIC_NAME_LENGTH)
    n = models.PositiveIntegerField(default=0)
    total = models.FloatField(default=0.0)
    control_total = models.FloatField(default=0.0)

    class Meta:
        constraints = [
            # The upsert key; ingest locks these rows in key order.
            models.UniqueConstraint(
                fields=["stage", "arm", "unit", "metric"], name="metricunittotals_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.stage_id}/{self.arm}/{self.unit}/{self.metric}"
