"""The admin: catalog, plans (with phases, guardrails and the audit trail), alert channels, API keys.

Status is never edited here: every lifecycle button goes through ``plans.py`` with a reason,
and the routing fields of a plan are read-only while it runs.
"""

from __future__ import annotations

import os
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from migrations_app import plans
from migrations_app.alerts import build_test_message, outbox
from migrations_app.apikeys import apikey_create
from migrations_app.errors import DomainError
from migrations_app.models import (
    AlertAttempt,
    AlertChannel,
    AlertDelivery,
    ApiKey,
    ApiKeyScope,
    AuditEvent,
    Guardrail,
    MigrationPlan,
    ModelSpec,
    PlanPhase,
    PlanStatus,
    ProviderConnection,
)
from migrations_app.phases import (
    STANDARD_GUARDRAILS,
    STANDARD_PLAYBOOK,
    validate_arms,
    validate_guardrail,
    validate_phase,
)
from migrations_app.shadow import validate_redaction_patterns

ACTIONS = plans.LIFECYCLE
OPERATE_PERMISSION = "migrations_app.operate_migrationplan"
# Fields that decide where traffic goes: frozen while a run is live, so its statistics mean something.
ROUTING_FIELDS = (
    "key",
    "control_model",
    "control_params",
    "control_prompt_mode",
    "control_prompt_text",
    "candidate_model",
    "candidate_params",
    "candidate_prompt_mode",
    "candidate_prompt_text",
)
EDITABLE_STATUSES = {PlanStatus.DRAFT, PlanStatus.ROLLED_BACK}


def _add_errors(form: forms.BaseForm, errors: dict[str, list[str]]) -> None:
    for field, field_messages in errors.items():
        for message in field_messages:
            form.add_error(field if field in form.fields else None, message)


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
    )

    @admin.display(description="key set in this process", boolean=True)
    def key_present(self, obj: ProviderConnection) -> bool:
        return bool(os.environ.get(obj.api_key_env))


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


@admin.register(AlertChannel)
class AlertChannelAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "enabled", "destination")
    actions = ["send_test_alert"]

    @admin.action(description="Send a test alert to the selected channels", permissions=["change"])
    def send_test_alert(self, request: HttpRequest, queryset: QuerySet[AlertChannel]) -> None:
        """Through the outbox like any page, to this channel only. An outbox row belongs to a
        plan, and the message names one: the most recently updated plan using the channel."""
        now = timezone.now()
        queued, unused = 0, []
        for channel in queryset.order_by("pk"):
            plan = channel.plans.order_by("-updated_at", "-pk").first()
            if plan is None:
                unused.append(channel.name)
                continue
            message = build_test_message(
                plan_key=plan.key,
                plan_name=plan.name,
                run=plan.current_run.number if plan.current_run else 0,
                dashboard_url=f"{settings.SITE_URL}/plans/{plan.key}/",
                now=now,
            )
            with transaction.atomic():
                queued += len(
                    outbox.alert_enqueue(plan=plan, message=message, now=now, channels=[channel])
                )
        if queued:
            self.message_user(
                request, f"Queued {queued} test alert(s); see Alert deliveries for the outcome."
            )
        if unused:
            self.message_user(
                request,
                f"Not sent to {', '.join(unused)}: add the channel to a plan first.",
                level=messages.WARNING,
            )

    @admin.display(description="destination")
    def destination(self, obj: AlertChannel) -> str:
        if obj.kind == "email":
            return obj.recipients
        value = os.environ.get(obj.url_env, "") if obj.url_env else ""
        # Webhook URLs carry their secret in the path: show only where they point.
        shown = value[: value.find("/", 8) + 1] + "…" if value else "(not set)"
        return f"${obj.url_env} → {shown}" if obj.url_env else "(default endpoint)"


class PlanForm(forms.ModelForm):
    class Meta:
        model = MigrationPlan
        # Status and position are never form fields: they move only through the lifecycle services.
        fields = (
            "key",
            "name",
            "description",
            "owner",
            *ROUTING_FIELDS[1:],
            "alpha",
            "circuit_breaker_error_rate",
            "circuit_breaker_min_requests",
            "escalate_after_minutes",
            "alert_channels",
            "shadow_budget_usd_per_day",
            "shadow_retention_days",
            "redaction_patterns",
            "fallback_to_control",
            "judge_model",
        )

    def clean_redaction_patterns(self) -> Any:
        patterns = self.cleaned_data.get("redaction_patterns") or []
        problems = validate_redaction_patterns(patterns)
        if problems:
            raise forms.ValidationError(problems)
        return patterns

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if any(f not in self.fields for f in ("control_model", "candidate_model")):
            return data  # routing fields are read-only: nothing to re-validate
        control: ModelSpec | None = data.get("control_model")
        candidate: ModelSpec | None = data.get("candidate_model")
        errors = validate_arms(
            control={
                "model": control.pk if control else None,
                "params": data.get("control_params", {}),
                "prompt_mode": data.get("control_prompt_mode"),
                "prompt_text": data.get("control_prompt_text", ""),
            },
            candidate={
                "model": candidate.pk if candidate else None,
                "params": data.get("candidate_params", {}),
                "prompt_mode": data.get("candidate_prompt_mode"),
                "prompt_text": data.get("candidate_prompt_text", ""),
            },
            control_max_output=control.max_output_tokens if control else None,
            candidate_max_output=candidate.max_output_tokens if candidate else None,
        )
        # Errors on fields already failing their own validation would only repeat them.
        _add_errors(self, {f: m for f, m in errors.items() if f not in self.errors})
        return data


class _InitialRowsSaved(forms.ModelForm):
    """Rows pre-filled from the standard playbook are saved even if the engineer keeps them as they are."""

    def has_changed(self) -> bool:
        return bool(self.initial and self.instance.pk is None) or super().has_changed()


class PhaseForm(_InitialRowsSaved):
    class Meta:
        model = PlanPhase
        fields = (
            "order",
            "kind",
            "percent",
            "steps",
            "min_duration_minutes",
            "min_samples",
            "auto_advance",
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("DELETE") or self.errors:
            return data
        _add_errors(self, validate_phase(data))
        return data


class GuardrailForm(_InitialRowsSaved):
    class Meta:
        model = Guardrail
        fields = ("metric", "tolerance_kind", "tolerance", "action", "min_samples")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("DELETE") or self.errors:
            return data
        _add_errors(self, validate_guardrail(data))
        return data


class PhaseFormSet(forms.BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        live = [f for f in self.forms if f.cleaned_data and not f.cleaned_data.get("DELETE")]
        if not any(self._errors) and not live:
            raise forms.ValidationError("Add at least one phase.")


class GuardrailFormSet(forms.BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        metrics = [
            f.cleaned_data.get("metric")
            for f in self.forms
            if f.cleaned_data and not f.cleaned_data.get("DELETE")
        ]
        if len(metrics) != len(set(metrics)):
            raise forms.ValidationError("One guardrail per metric.")


class _PlaybookInline(admin.TabularInline):
    playbook: list[dict[str, Any]] = []

    def get_extra(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> int:
        return len(self.playbook) if obj is None else 1

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and (
            obj is None or obj.status in EDITABLE_STATUSES
        )

    has_add_permission = has_change_permission  # type: ignore[assignment]
    has_delete_permission = has_change_permission


class PhaseInline(_PlaybookInline):
    model = PlanPhase
    form = PhaseForm
    formset = PhaseFormSet
    playbook = STANDARD_PLAYBOOK


class GuardrailInline(_PlaybookInline):
    model = Guardrail
    form = GuardrailForm
    formset = GuardrailFormSet
    playbook = STANDARD_GUARDRAILS


class AuditEventInline(admin.TabularInline):
    model = AuditEvent
    fields = (
        "created_at",
        "action",
        "from_status",
        "to_status",
        "plan_version",
        "actor_label",
        "reason",
        "evidence",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "Audit trail"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _bulk_action(name: str) -> Any:
    def action(
        modeladmin: MigrationPlanAdmin, request: HttpRequest, queryset: QuerySet[MigrationPlan]
    ) -> HttpResponse:
        ids = ",".join(str(pk) for pk in queryset.values_list("pk", flat=True))
        return HttpResponseRedirect(
            reverse("admin:migrations_app_migrationplan_act", args=[name]) + f"?ids={ids}"
        )

    action.__name__ = f"{name}_selected"
    return admin.action(
        description=f"{name.capitalize()} selected plans…", permissions=["operate"]
    )(action)


class ActForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)

    def __init__(self, *args: Any, action: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].required = action == "rollback"


@admin.register(MigrationPlan)
class MigrationPlanAdmin(admin.ModelAdmin):
    form = PlanForm
    inlines = [PhaseInline, GuardrailInline, AuditEventInline]
    list_display = (
        "key",
        "name",
        "status",
        "where",
        "version",
        "control_model",
        "candidate_model",
        "updated_at",
        "dashboard",
    )
    list_filter = ("status",)
    search_fields = ("key", "name")
    actions = [*(_bulk_action(name) for name in ACTIONS), "send_test_alert"]
    change_form_template = "admin/migrations_app/migrationplan/change_form.html"
    fieldsets = (
        (None, {"fields": ("key", "name", "description", "owner", "lifecycle")}),
        (
            "Control arm",
            {
                "fields": (
                    "control_model",
                    "control_params",
                    "control_prompt_mode",
                    "control_prompt_text",
                )
            },
        ),
        (
            "Candidate arm",
            {
                "fields": (
                    "candidate_model",
                    "candidate_params",
                    "candidate_prompt_mode",
                    "candidate_prompt_text",
                )
            },
        ),
        (
            "Guarding",
            {
                "fields": (
                    "alpha",
                    "circuit_breaker_error_rate",
                    "circuit_breaker_min_requests",
                    "escalate_after_minutes",
                    "alert_channels",
                )
            },
        ),
        (
            "Shadow mode and requests",
            {
                "fields": (
                    "shadow_budget_usd_per_day",
                    "shadow_retention_days",
                    "redaction_patterns",
                    "fallback_to_control",
                    "judge_model",
                )
            },
        ),
        ("Bucketing", {"fields": ("salt",), "classes": ("collapse",)}),
    )
    filter_horizontal = ("alert_channels",)

    @admin.display(description="where")
    def where(self, obj: MigrationPlan) -> str:
        if obj.status != PlanStatus.RUNNING:
            return "—"
        return f"phase {obj.phase_index + 1}, step {obj.step_index + 1}"

    @admin.display(description="dashboard")
    def dashboard(self, obj: MigrationPlan) -> str:
        return format_html(
            '<a href="{}">dashboard</a> · <a href="{}">report</a>',
            reverse("plan-dashboard", args=[obj.key]),
            reverse("plan-report", args=[obj.key]),
        )

    @admin.display(description="lifecycle")
    def lifecycle(self, obj: MigrationPlan) -> str:
        if obj.pk is None:
            return "Draft: start it once saved."
        run = f", run {obj.current_run.number}" if obj.current_run else ""
        return f"{obj.get_status_display()} (version {obj.version}{run})"

    def get_readonly_fields(
        self, request: HttpRequest, obj: MigrationPlan | None = None
    ) -> tuple[str, ...]:
        fixed = ("lifecycle", "salt")
        if obj is not None and obj.status not in EDITABLE_STATUSES:
            return fixed + ROUTING_FIELDS
        if obj is not None:
            return fixed + ("key",)
        return fixed

    def get_formset_kwargs(
        self, request: HttpRequest, obj: Any, inline: Any, prefix: str
    ) -> dict[str, Any]:
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if obj.pk is None and request.method == "GET" and isinstance(inline, _PlaybookInline):
            kwargs["initial"] = [
                {**row, "order": i} if inline.model is PlanPhase else dict(row)
                for i, row in enumerate(inline.playbook)
            ]
        return kwargs

    @admin.action(description="Send a test alert to the plans' channels", permissions=["operate"])
    def send_test_alert(self, request: HttpRequest, queryset: QuerySet[MigrationPlan]) -> None:
        now = timezone.now()
        queued = 0
        for plan in queryset:
            message = build_test_message(
                plan_key=plan.key,
                plan_name=plan.name,
                run=plan.current_run.number if plan.current_run else 0,
                dashboard_url=f"{settings.SITE_URL}/plans/{plan.key}/",
                now=now,
            )
            with transaction.atomic():
                queued += len(outbox.alert_enqueue(plan=plan, message=message, now=now))
        self.message_user(
            request, f"Queued {queued} test alert(s); see Alert deliveries for the outcome."
        )

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    def save_model(
        self, request: HttpRequest, obj: MigrationPlan, form: forms.ModelForm, change: bool
    ) -> None:
        if not change and obj.owner_id is None:
            obj.owner = request.user
        super().save_model(request, obj, form, change)

    def save_related(
        self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool
    ) -> None:
        super().save_related(request, form, formsets, change)
        changed = list(form.changed_data) + [f.prefix for f in formsets if f.has_changed()]
        plans.record_edit(
            form.instance,
            actor=plans.Actor.for_user(request.user),
            action="edit" if change else "create",
            reason="",
            evidence={"changed": changed} if change else {},
        )

    def get_urls(self) -> list[Any]:
        return [
            path(
                "act/<str:action>/",
                self.admin_site.admin_view(self.act_view),
                name="migrations_app_migrationplan_act",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        plan = self.get_object(request, object_id)
        extra_context = dict(extra_context or {})
        if plan is not None and self.has_operate_permission(request):
            extra_context["lifecycle_actions"] = [
                name for name, (allowed, _) in plans.TRANSITIONS.items() if plan.status in allowed
            ]
        return super().change_view(request, object_id, form_url, extra_context)

    def act_view(self, request: HttpRequest, action: str) -> HttpResponse:
        """Confirm a lifecycle action (with a reason) and apply it through the service."""
        if action not in ACTIONS:
            raise PermissionDenied
        if not self.has_operate_permission(request):
            raise PermissionDenied
        ids = [int(i) for i in request.GET.get("ids", "").split(",") if i.isdigit()]
        targets = list(MigrationPlan.objects.filter(pk__in=ids))
        if not targets:
            messages.error(request, "No plan selected.")
            return HttpResponseRedirect(reverse("admin:migrations_app_migrationplan_changelist"))
        # The version each plan had when the page was shown: acting on a plan that moved since is refused.
        form = ActForm(request.POST or None, action=action)
        if request.method == "POST" and form.is_valid():
            actor = plans.Actor.for_user(request.user)
            for plan in targets:
                expected = request.POST.get(f"version-{plan.pk}")
                kwargs: dict[str, Any] = {
                    "plan_key": plan.key,
                    "actor": actor,
                    "reason": form.cleaned_data["reason"],
                }
                if expected and expected.isdigit():
                    kwargs["expected_version"] = int(expected)
                try:
                    ACTIONS[action](**kwargs)
                except DomainError as exc:
                    messages.error(request, f"{plan.key}: {exc.message}")
                else:
                    messages.success(request, f"{plan.key}: {action} done.")
            if len(targets) == 1:
                return HttpResponseRedirect(
                    reverse("admin:migrations_app_migrationplan_change", args=[targets[0].pk])
                )
            return HttpResponseRedirect(reverse("admin:migrations_app_migrationplan_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": f"{action.capitalize()} {', '.join(p.key for p in targets)}",
            "action": action,
            "targets": targets,
            "form": form,
            "opts": self.model._meta,
        }
        return render(request, "admin/migrations_app/migrationplan/act.html", context)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "plan",
        "action",
        "from_status",
        "to_status",
        "actor_label",
        "reason",
    )
    list_filter = ("action", "actor_kind")
    search_fields = ("plan__key", "reason", "actor_label")
    list_select_related = ("plan",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiKeyScope.choices, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = ApiKey
        fields = ("name", "scopes", "plans")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ("name", "prefix_shown", "scopes", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "last_used_at")
    filter_horizontal = ("plans",)
    actions = ["revoke"]

    @admin.display(description="key")
    def prefix_shown(self, obj: ApiKey) -> str:
        return format_html("<code>tk_{}_…</code>", obj.prefix)

    def save_model(
        self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool
    ) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, plaintext = apikey_create(name=obj.name, scopes=form.cleaned_data["scopes"])
        form.instance = key
        obj.pk = key.pk
        obj.prefix, obj.hashed_secret = key.prefix, key.hashed_secret
        messages.warning(request, f"Copy this key now; it is not shown again: {plaintext}")

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        from django.utils import timezone

        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        messages.success(request, f"Revoked {count} key(s).")


class AlertAttemptInline(admin.TabularInline):
    model = AlertAttempt
    extra = 0
    can_delete = False
    fields = readonly_fields = ("at", "ok", "status_code", "latency_ms", "error")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(admin.ModelAdmin):
    """The outbox, read-only: what was paged where, and how each attempt went."""

    list_display = (
        "created_at", "plan", "channel", "event", "severity", "status", "attempts", "repeats",
        "last_error",
    )  # fmt: skip
    list_filter = ("status", "event", "channel")
    search_fields = ("plan__key", "dedup_key")
    list_select_related = ("plan", "channel")
    inlines = [AlertAttemptInline]
    readonly_fields = (
        "plan", "channel", "event", "severity", "dedup_key", "message", "status", "attempts",
        "next_attempt_at", "last_error", "repeats", "last_seen_at", "created_at", "delivered_at",
    )  # fmt: skip

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
