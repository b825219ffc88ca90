"""Routing: the routing-change sequence (one row) every web process follows, and what a plan
targets: its ordered rules and its QA overrides."""

from __future__ import annotations

from django.db import models


class RoutingState(models.Model):
    """One row: the routing-change sequence. Every change to what SDKs route on moves it, and
    every web process reads it every second (migrations_app/routing/changes.py), so a change committed
    here reaches the SDKs whether or not the Redis notification got through."""

    sequence = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"routing sequence {self.sequence}"


class RuleResult(models.TextChoices):
    EXCLUDE = "exclude", "Exclude (always control)"
    INCLUDE = "include", "Include (the general split)"
    COHORT = "cohort", "Cohort (split at the cohort's weight)"


class TargetingRule(models.Model):
    """One of a plan's ordered targeting rules (docs/contracts.md, "Targeting"): when every
    condition holds for a decision's attributes, the unit is excluded, included, or put in a
    cohort. Checked by ``turnout.targeting`` when saved (plans/targeting.py), so every rule
    stored is one every SDK can evaluate; carried in the snapshot in ``order``."""

    plan = models.ForeignKey(
        "MigrationPlan", on_delete=models.CASCADE, related_name="targeting_rules"
    )
    order = models.PositiveIntegerField(default=0)
    name = models.CharField(max_length=100, blank=True)
    # [{"attribute": "tenant", "op": "in", "values": ["bank-a"]}, ...]; empty: every unit.
    conditions = models.JSONField(default=list, blank=True)
    result = models.CharField(max_length=16, choices=RuleResult.choices)
    cohort = models.CharField(max_length=63, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["plan", "order", "pk"]

    def __str__(self) -> str:
        return self.name or f"rule {self.order + 1}"


class OverrideArm(models.TextChoices):
    CONTROL = "control", "Control"
    CANDIDATE = "candidate", "Candidate"


class UnitOverride(models.Model):
    """A QA override: while the plan runs, ``unit`` gets ``arm`` (reason OVERRIDE) until
    ``expires_at``. Served, counted in neither arm's statistics."""

    plan = models.ForeignKey("MigrationPlan", on_delete=models.CASCADE, related_name="overrides")
    unit = models.CharField(max_length=256)
    arm = models.CharField(max_length=16, choices=OverrideArm.choices)
    expires_at = models.DateTimeField()
    reason = models.CharField(max_length=200, blank=True, help_text="Why, e.g. a QA ticket.")
    created_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["plan", "unit"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "unit"], name="override_one_per_unit"),
        ]
        indexes = [
            # The snapshot: "the plan's overrides that have not expired".
            models.Index(fields=["plan", "expires_at"], name="override_plan_expiry_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.unit} -> {self.arm}"
