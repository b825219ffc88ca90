"""SDK API keys: stored hashed, shown once, scoped to plans."""

from __future__ import annotations

from django.db import models

from migrations_app.models.plans import MigrationPlan


class ApiKeyScope(models.TextChoices):
    DECIDE = "decide", "Decide (config, stream, decide, OFREP)"
    REPORT = "report", "Report (outcomes, feedback, shadow samples)"
    ADMIN = "admin", "Admin (roll back, pause, resume, advance)"
    PLANS = "plans", "Plans (create, change and delete plans; read the catalog and templates)"


class ApiKey(models.Model):
    """An SDK key. Only a SHA-256 of the secret is stored; the key is shown once, at creation.

    A fast hash (not PBKDF2) is right here: the secret is 256 random bits, so there is
    nothing to brute-force, and it is checked on every SDK request.
    """

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    hashed_secret = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list)
    # Every plan only when said so: an empty list means none, so a key limited to one plan
    # does not see them all once that plan is deleted.
    all_plans = models.BooleanField(
        "every plan", default=False, help_text="Sees every plan, present and future."
    )
    plans = models.ManyToManyField(
        MigrationPlan,
        blank=True,
        related_name="api_keys",
        help_text="The plans this key sees when it is not for every plan. Empty: none.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
