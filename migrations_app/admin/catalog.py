"""The catalog's admin: provider connections and models."""

from __future__ import annotations

import os

from django.contrib import admin

from migrations_app import secret_policy
from migrations_app.models import (
    ModelSpec,
    ProviderConnection,
)


@admin.register(ProviderConnection)
class ProviderConnectionAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "kind",
        "base_url",
        "api_key_env",
        "max_concurrent_calls",
        "max_calls_per_second",
        "key_present",
        "policy",
    )

    @admin.display(description="key set in this process", boolean=True)
    def key_present(self, obj: ProviderConnection) -> bool:
        return bool(os.environ.get(obj.api_key_env))

    @admin.display(description="allowed (TURNOUT_PROVIDER_* settings)")
    def policy(self, obj: ProviderConnection) -> str:
        # A row saved before the rule, or before the operator narrowed it: nothing calls it.
        problems = secret_policy.connection_problems(
            api_key_env=obj.api_key_env, base_url=obj.base_url
        )
        return f"refused: {secret_policy.summary(problems)}" if problems else "yes"


@admin.register(ModelSpec)
class ModelSpecAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "display_name",
        "input_price_per_mtok",
        "output_price_per_mtok",
        "context_window",
        "max_output_tokens",
        "updated_at",
    )
    list_filter = ("provider",)
    search_fields = ("model_id", "display_name")
