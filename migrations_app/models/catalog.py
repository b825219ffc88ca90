"""The model catalog: provider connections (where a provider is reached, its key by variable
name only) and the pinned models with their prices and limits.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from migrations_app import secret_policy

ENV_VAR_NAME = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_]*$", "An environment variable name: letters, digits and underscores."
)


# A vendor's model id: letters, digits and the separators real ids use (ft:...:org::id,
# llama3.1:8b, Qwen/Qwen2.5-7B-Instruct, ...@001).
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")


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
    # (migrations_app/shadow/provider_limits.py) for the calls they make themselves (shadow and judge calls).
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

    def clean(self) -> None:
        # The key variable's value is sent to the base URL by every process calling this
        # provider: both must be ones the operator allows (secret_policy, settings).
        if problems := secret_policy.connection_problems(
            api_key_env=self.api_key_env, base_url=self.base_url
        ):
            raise ValidationError(problems)


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

    def clean(self) -> None:
        # Vendors put the id in the request path (Gemini: /v1/models/{id}:generateContent):
        # a name, never a path step, query or fragment on the provider's host.
        if self.model_id and (
            not MODEL_ID.fullmatch(self.model_id) or ".." in self.model_id.split("/")
        ):
            raise ValidationError(
                {"model_id": "Letters, digits and . _ - : / @ + only, no '..' step."}
            )
