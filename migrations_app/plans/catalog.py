"""The model catalog: the seed of common models, and the import of the community price map.

The community format (LiteLLM's ``model_prices_and_context_window.json``) maps a model name
to ``input_cost_per_token``, ``output_cost_per_token``, ``max_input_tokens``,
``max_output_tokens``, ``litellm_provider`` and ``mode``. Importing updates the prices and
limits of models already in the catalog; it never touches plans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import transaction

from migrations_app.models import ModelSpec, ProviderConnection, ProviderKind


def cost_usd(model: Any, input_tokens: int | None, output_tokens: int | None) -> float | None:
    """What a call costs at a model's catalog prices (``input_price_per_mtok``,
    ``output_price_per_mtok``: dollars per million tokens); None when a count is unknown (an
    unknown cost, never zero). The one formula: ingest prices outcomes with it, the shadow
    budget reserves and books with it."""
    if input_tokens is None or output_tokens is None:
        return None
    return (
        input_tokens * float(model.input_price_per_mtok)
        + output_tokens * float(model.output_price_per_mtok)
    ) / 1e6


# name, kind, base_url, api key variable
SEED_PROVIDERS: list[tuple[str, str, str, str]] = [
    ("openai", ProviderKind.OPENAI, "", "OPENAI_API_KEY"),
    ("anthropic", ProviderKind.ANTHROPIC, "", "ANTHROPIC_API_KEY"),
    ("gemini", ProviderKind.GEMINI, "", "GEMINI_API_KEY"),
    ("mistral", ProviderKind.OPENAI_COMPATIBLE, "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    ("together", ProviderKind.OPENAI_COMPATIBLE, "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
]

# provider, pinned model id, display name, $ in / 1M, $ out / 1M, context window, max output
SEED_MODELS: list[tuple[str, str, str, str, str, int, int]] = [
    ("openai", "gpt-4o-2024-08-06", "GPT-4o", "2.50", "10.00", 128_000, 16_384),
    ("openai", "gpt-4o-mini-2024-07-18", "GPT-4o mini", "0.15", "0.60", 128_000, 16_384),
    ("openai", "o3-2025-04-16", "o3", "10.00", "40.00", 200_000, 100_000),
    ("anthropic", "claude-sonnet-4-20250514", "Claude Sonnet 4", "3.00", "15.00", 200_000, 64_000),
    ("anthropic", "claude-3-5-haiku-20241022", "Claude Haiku 3.5", "0.80", "4.00", 200_000, 8_192),
    ("anthropic", "claude-opus-4-20250514", "Claude Opus 4", "15.00", "75.00", 200_000, 32_000),
    ("gemini", "gemini-1.5-pro-002", "Gemini 1.5 Pro", "1.25", "5.00", 2_000_000, 8_192),
    ("gemini", "gemini-2.0-flash-001", "Gemini 2.0 Flash", "0.10", "0.40", 1_000_000, 8_192),
    ("mistral", "mistral-large-2411", "Mistral Large", "2.00", "6.00", 128_000, 32_768),
    ("mistral", "mistral-small-2501", "Mistral Small", "0.10", "0.30", 128_000, 32_768),
    (
        "together",
        "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo",
        "Llama 3.1 70B",
        "0.88",
        "0.88",
        128_000,
        4_096,
    ),
    (
        "together",
        "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "Llama 3.1 8B",
        "0.18",
        "0.18",
        128_000,
        4_096,
    ),
]


def seed_catalog(
    provider_model: Any = ProviderConnection, model_spec_model: Any = ModelSpec
) -> None:
    """Create the common providers and models if absent; existing rows are left as they are.
    The schema migration passes its historical models."""
    providers = {}
    for name, kind, base_url, key_env in SEED_PROVIDERS:
        providers[name], _ = provider_model.objects.get_or_create(
            name=name, defaults={"kind": kind, "base_url": base_url, "api_key_env": key_env}
        )
    for provider, model_id, display, price_in, price_out, context, max_out in SEED_MODELS:
        model_spec_model.objects.get_or_create(
            provider=providers[provider],
            model_id=model_id,
            defaults={
                "display_name": display,
                "input_price_per_mtok": Decimal(price_in),
                "output_price_per_mtok": Decimal(price_out),
                "context_window": context,
                "max_output_tokens": max_out,
            },
        )


# litellm_provider values -> our provider kinds
_LITELLM_KINDS = {
    "openai": ProviderKind.OPENAI,
    "text-completion-openai": ProviderKind.OPENAI,
    "anthropic": ProviderKind.ANTHROPIC,
    "gemini": ProviderKind.GEMINI,
    "vertex_ai-language-models": ProviderKind.GEMINI,
    "mistral": ProviderKind.OPENAI_COMPATIBLE,
    "together_ai": ProviderKind.OPENAI_COMPATIBLE,
    "groq": ProviderKind.OPENAI_COMPATIBLE,
    "fireworks_ai": ProviderKind.OPENAI_COMPATIBLE,
}


@dataclass
class ImportReport:
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    unmatched: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (entry name, reason)


def _price(entry: dict[str, Any], name: str) -> Decimal:
    value = entry[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    # Per token in the file, per million tokens in the catalog.
    return (Decimal(repr(value)) * 1_000_000).quantize(Decimal("0.0001"))


def _limit(entry: dict[str, Any], name: str) -> int | None:
    value = entry.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def catalog_import_prices(data: Any) -> ImportReport:
    """Update catalog models from a price map. Malformed entries are reported and skipped;
    the valid updates are applied together or not at all."""
    if not isinstance(data, dict):
        raise ValueError("the price map must be a JSON object of model name -> entry")
    report = ImportReport()
    specs: dict[str, list[ModelSpec]] = {}
    for spec in ModelSpec.objects.select_related("provider"):
        specs.setdefault(spec.model_id, []).append(spec)
    with transaction.atomic():
        for name, entry in data.items():
            if name == "sample_spec":
                continue
            if not isinstance(entry, dict):
                report.skipped.append((name, "entry is not an object"))
                continue
            if entry.get("mode", "chat") != "chat":
                continue
            try:
                price_in = _price(entry, "input_cost_per_token")
                price_out = _price(entry, "output_cost_per_token")
                context = _limit(entry, "max_input_tokens")
                max_out = _limit(entry, "max_output_tokens")
            except KeyError as exc:
                report.skipped.append((name, f"missing {exc.args[0]}"))
                continue
            except ValueError as exc:
                report.skipped.append((name, str(exc)))
                continue
            kind = _LITELLM_KINDS.get(str(entry.get("litellm_provider", "")))
            model_id = (
                name.split("/", 1)[1]
                if "/" in name and name.split("/", 1)[0] in _LITELLM_KINDS
                else name
            )
            matches = [
                s for s in specs.get(model_id, []) if kind is None or s.provider.kind == kind
            ]
            if not matches:
                report.unmatched += 1
                continue
            for spec in matches:
                new = {
                    "input_price_per_mtok": price_in,
                    "output_price_per_mtok": price_out,
                    "context_window": context or spec.context_window,
                    "max_output_tokens": max_out or spec.max_output_tokens,
                }
                if all(getattr(spec, k) == v for k, v in new.items()):
                    report.unchanged += 1
                    continue
                for k, v in new.items():
                    setattr(spec, k, v)
                spec.save(update_fields=[*new, "updated_at"])
                report.updated.append(str(spec))
    return report
