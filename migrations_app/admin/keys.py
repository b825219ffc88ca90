"""SDK API keys in the admin: created once (the secret shown once), scoped to plans, revoked."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from migrations_app.api.keys import NO_PLAN, apikey_create
from migrations_app.models import (
    ApiKey,
    ApiKeyScope,
)


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiKeyScope.choices, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = ApiKey
        fields = ("name", "scopes", "all_plans", "plans")

    def clean(self) -> dict[str, Any]:
        # Either every plan or a non-empty list: an empty list means no plan at all (what a
        # key sees once its plans are deleted), never every plan.
        data = super().clean()
        chosen = data.get("plans")
        if data.get("all_plans") and chosen:
            self.add_error("plans", "Tick 'every plan' or choose plans, not both.")
        elif not data.get("all_plans") and not chosen and "plans" not in self.errors:
            self.add_error("plans", NO_PLAN)
        return data


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = (
        "name",
        "prefix_shown",
        "scopes_shown",
        "sees",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    readonly_fields = ("prefix", "created_at", "last_used_at")
    filter_horizontal = ("plans",)
    actions = ["revoke"]

    @admin.display(description="key")
    def prefix_shown(self, obj: ApiKey) -> str:
        return format_html("<code>tk_{}_…</code>", obj.prefix)

    @admin.display(description="scopes")
    def scopes_shown(self, obj: ApiKey) -> str:
        # In the contract's order (decide, report, admin), as words, not the stored JSON list.
        order = list(ApiKeyScope.values)
        known = sorted((s for s in obj.scopes if s in order), key=order.index)
        return ", ".join(known + sorted(s for s in obj.scopes if s not in order)) or "none"

    @admin.display(description="plans")
    def sees(self, obj: ApiKey) -> str:
        if obj.all_plans:
            return "every plan"
        keys = [p.key for p in obj.plans.all()]
        return ", ".join(keys) if keys else "none (its plans were deleted)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        return super().get_queryset(request).prefetch_related("plans")

    def save_model(
        self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool
    ) -> None:
        if change:
            # The form's fields only: a revocation that landed meanwhile must stay.
            obj.save(update_fields=["name", "scopes", "all_plans"])
            return
        key, plaintext = apikey_create(
            name=obj.name,
            scopes=form.cleaned_data["scopes"],
            plans=None if obj.all_plans else form.cleaned_data["plans"],
        )
        form.instance = key
        obj.pk = key.pk
        obj.prefix, obj.hashed_secret = key.prefix, key.hashed_secret
        # Shown once, with a button that copies it (templates/admin/base_site.html).
        messages.warning(
            request,
            format_html(
                'Copy this key now; it is not shown again: <code id="new-api-key">{}</code>'
                '<button type="button" class="button" data-copy="#new-api-key">Copy</button>',
                plaintext,
            ),
        )

    # A revocation writes the key: the change permission, as editing it does. Without
    # ``permissions`` Django offers an action to anyone who may view the list.
    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        messages.success(request, f"Revoked {count} key(s).")
