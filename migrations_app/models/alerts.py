"""Alerts: the channels pages go to, and the outbox of deliveries with every attempt."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from migrations_app import secret_policy
from migrations_app.models.catalog import ENV_VAR_NAME


class AlertChannelKind(models.TextChoices):
    SLACK = "slack", "Slack incoming webhook"
    PAGERDUTY = "pagerduty", "PagerDuty Events API v2"
    WEBHOOK = "webhook", "Generic webhook (signed)"
    EMAIL = "email", "Email"


# What each kind cannot deliver without (its channel refuses to build a request lacking it):
# field -> what to set. A webhook is signed, always: unsigned alerts would let anyone who finds
# the receiver's URL trigger its automation (alerts/webhook.py).
CHANNEL_NEEDS: dict[str, dict[str, str]] = {
    AlertChannelKind.SLACK: {
        "url_env": "Name the variable holding the Slack incoming webhook URL."
    },
    AlertChannelKind.PAGERDUTY: {
        "secret_env": "Name the variable holding the PagerDuty routing key (the service's "
        "integration key)."
    },
    AlertChannelKind.WEBHOOK: {
        "url_env": "Name the variable holding the webhook's URL.",
        "secret_env": "A webhook is signed: name the variable holding its signing secret "
        "(the receiver checks X-Turnout-Signature with it).",
    },
    AlertChannelKind.EMAIL: {"recipients": "Give at least one address."},
}


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

    def clean(self) -> None:
        if problems := self.delivery_problems():
            raise ValidationError(problems)

    def delivery_problems(self) -> dict[str, str]:
        """Field -> why this channel cannot deliver: what its kind needs and is not set, or a
        variable the secret policy refuses (empty: it can, once the variables are set)."""
        given = {"url_env": self.url_env, "secret_env": self.secret_env}
        given["recipients"] = self.recipients
        problems = {
            name: need
            for name, need in CHANNEL_NEEDS.get(self.kind, {}).items()
            if not given[name].strip()
        }
        policy = secret_policy.channel_problems(url_env=self.url_env, secret_env=self.secret_env)
        return {**problems, **policy}


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class AlertDelivery(models.Model):
    """The alert outbox: one message for one channel, written in the same transaction as the
    action that caused it, delivered by a Celery task after commit. A repeat of the same
    page (same channel, dedup key and event) within the dedup window is not a new row: it
    bumps ``repeats`` on the open one, so a flapping guardrail pages once."""

    plan = models.ForeignKey("MigrationPlan", on_delete=models.CASCADE, related_name="alerts")
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
