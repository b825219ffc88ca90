"""The plans' admin: plans with their phases, guardrails and audit trail, and the audit log.

Status is never edited here: every lifecycle button goes through ``plans/lifecycle.py`` with a reason,
and the routing fields of a plan are read-only while it runs. The forms are in
:mod:`migrations_app.admin.plan_forms`.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.html import format_html

from migrations_app.admin.alerts import plan_test_message
from migrations_app.admin.forms import ACTIONS, OPERATE_PERMISSION, ActForm
from migrations_app.admin.metrics import MetricDefinitionInline
from migrations_app.admin.plan_check import PlanRowsFormSet, attach_formsets
from migrations_app.admin.plan_forms import GuardrailForm, PhaseForm, PlanForm
from migrations_app.admin.targeting import TargetingRuleInline, preview_view
from migrations_app.alerts import outbox
from migrations_app.errors import DomainError
from migrations_app.models import (
    AuditEvent,
    Guardrail,
    MigrationPlan,
    ModelSpec,
    PlanPhase,
    PlanStatus,
    PlanTemplate,
)
from migrations_app.plans import edits, holdout, lifecycle, templates
from migrations_app.plans.json_checks import whole_number
from migrations_app.plans.start_checks import start_checks


class _PlaybookInline(admin.TabularInline):
    # "phases" or "guardrails": a new plan's rows start from a template (?template=name), or
    # the standard playbook and the default guardrail set (plans/templates.py).
    rows = ""
    formset = PlanRowsFormSet

    def playbook(self, request: HttpRequest) -> list[dict[str, Any]]:
        return templates.starting_rows(request.GET.get("template"))[self.rows]

    def get_extra(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> int:
        return len(self.playbook(request)) if obj is None else 1

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and (
            obj is None or obj.status in edits.EDITABLE_STATUSES
        )

    has_add_permission = has_change_permission  # type: ignore[assignment]
    has_delete_permission = has_change_permission


class PhaseInline(_PlaybookInline):
    model = PlanPhase
    form = PhaseForm
    rows = "phases"


class GuardrailInline(_PlaybookInline):
    model = Guardrail
    form = GuardrailForm
    rows = "guardrails"


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


@admin.register(MigrationPlan)
class MigrationPlanAdmin(admin.ModelAdmin):
    form = PlanForm
    inlines = [
        PhaseInline,
        GuardrailInline,
        MetricDefinitionInline,
        TargetingRuleInline,
        AuditEventInline,
    ]
    # The dashboard link right after the key and the models in one short column: at a
    # laptop's width (1366 px) the last columns of a wide list scroll out of sight.
    list_display = (
        "key",
        "dashboard",
        "name",
        "state",
        "models",
        "version",
        "updated",
    )
    list_select_related = ("control_model", "candidate_model")
    list_filter = ("status",)
    search_fields = ("key", "name")
    actions = [*(_bulk_action(name) for name in ACTIONS), "send_test_alert"]
    change_form_template = "admin/migrations_app/migrationplan/change_form.html"
    fieldsets = (
        (
            None,
            {"fields": ("key", "name", "description", "owner", "lifecycle", "loaded_version")},
        ),
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
                    "detector_arl_days",
                    "alert_channels",
                )
            },
        ),
        (
            "Guardrails per segment",
            {"fields": ("segment_dimensions", "segment_top_k", "segment_on_regression")},
        ),
        (
            "Holdout after the last step",
            {
                "fields": holdout.FIELDS,
                "description": "Keep a share of units on control after 100 % and watch the "
                "candidate against them before completing; a regression rolls back.",
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
                    "answer_schema",
                )
            },
        ),
        ("Bucketing", {"fields": ("salt",), "classes": ("collapse",)}),
    )
    filter_horizontal = ("alert_channels",)

    @admin.display(description="status", ordering="status")
    def state(self, obj: MigrationPlan) -> str:
        """The status, and where a running plan is."""
        if obj.status != PlanStatus.RUNNING:
            return obj.get_status_display()
        return f"Running: phase {obj.phase_index + 1}, step {obj.step_index + 1}"

    @admin.display(description="dashboard")
    def dashboard(self, obj: MigrationPlan) -> str:
        return format_html(
            '<a href="{}" class="plan-dashboard">dashboard</a>&nbsp;· <a href="{}">report</a>',
            reverse("plan-dashboard", args=[obj.key]),
            reverse("plan-report", args=[obj.key]),
        )

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj: MigrationPlan) -> str:
        return date_format(timezone.localtime(obj.updated_at), "j M H:i")

    @admin.display(description="control → candidate")
    def models(self, obj: MigrationPlan) -> str:
        def short(spec: ModelSpec) -> str:
            return spec.display_name or spec.model_id

        return f"{short(obj.control_model)} → {short(obj.candidate_model)}"

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
        if obj is not None and obj.status not in edits.EDITABLE_STATUSES:
            return fixed + edits.FROZEN_FIELDS
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
                for i, row in enumerate(inline.playbook(request))
            ]
        return kwargs

    def _create_formsets(self, request: HttpRequest, obj: Any, change: bool) -> Any:
        # Made before the plan form is validated: the form checks the plan with its rows
        # (admin/plan_check.py). Django has no public hook that sees both.
        formsets, inline_instances = super()._create_formsets(request, obj, change)
        attach_formsets(
            obj,
            {
                inline.rows: formset
                for formset, inline in zip(formsets, inline_instances, strict=True)
                if isinstance(inline, _PlaybookInline)
            },
        )
        return formsets, inline_instances

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        extra_context = dict(extra_context or {})
        extra_context["plan_templates"] = list(PlanTemplate.objects.values_list("name", flat=True))
        extra_context["chosen_template"] = request.GET.get("template", "")
        return super().add_view(request, form_url, extra_context)

    @admin.action(description="Send a test alert to the plans' channels", permissions=["operate"])
    def send_test_alert(self, request: HttpRequest, queryset: QuerySet[MigrationPlan]) -> None:
        now = timezone.now()
        queued = 0
        for plan in queryset:
            message = plan_test_message(plan, now)
            with transaction.atomic():
                queued += len(outbox.alert_enqueue(plan=plan, message=message, now=now))
        self.message_user(
            request, f"Queued {queued} test alert(s); see Alert deliveries for the outcome."
        )

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> MigrationPlan | None:
        """On a save, the plan row is read FOR UPDATE inside the admin's transaction: a
        lifecycle action in flight finishes first and the form then sees the version it
        left (and refuses a stale page); none can start until the save commits."""
        if request.method == "POST" and transaction.get_connection().in_atomic_block:
            queryset = self.get_queryset(request).select_for_update(of=("self",))
            field = self.model._meta.get_field(from_field) if from_field else self.model._meta.pk
            try:
                return queryset.get(**{field.name: field.to_python(object_id)})
            except (self.model.DoesNotExist, ValueError, ValidationError):
                return None
        return super().get_object(request, object_id, from_field)

    def save_model(
        self, request: HttpRequest, obj: MigrationPlan, form: forms.ModelForm, change: bool
    ) -> None:
        if not change:
            if obj.owner_id is None:
                obj.owner = request.user
            super().save_model(request, obj, form, change)  # a new row: nothing to write over
            return
        # Only the fields this form shows; never status, version or position.
        owned = [name for name in form.fields if name in edits.EDITABLE_FIELDS]
        edits.plan_edit(
            plan=obj, fields=owned, expected_version=form.cleaned_data["loaded_version"]
        )

    def save_related(
        self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool
    ) -> None:
        super().save_related(request, form, formsets, change)
        changed = list(form.changed_data) + [f.prefix for f in formsets if f.has_changed()]
        lifecycle.record_edit(
            form.instance,
            actor=lifecycle.Actor.for_user(request.user),
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
            path(
                "<path:object_id>/targeting/",
                self.admin_site.admin_view(
                    lambda request, object_id: preview_view(self, request, object_id)
                ),
                name="migrations_app_migrationplan_targeting",
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
                name
                for name, (allowed, _) in lifecycle.TRANSITIONS.items()
                if plan.status in allowed
            ]
        return super().change_view(request, object_id, form_url, extra_context)

    def act_view(self, request: HttpRequest, action: str) -> HttpResponse:
        """Confirm a lifecycle action (with a reason) and apply it through the service."""
        if action not in ACTIONS:
            raise PermissionDenied
        if not self.has_operate_permission(request):
            raise PermissionDenied
        ids = [
            n
            for i in request.GET.get("ids", "").split(",")[:1000]
            if (n := whole_number(i, 2**31 - 1)) is not None
        ]
        targets = list(MigrationPlan.objects.filter(pk__in=ids))
        if not targets:
            messages.error(request, "No plan selected.")
            return HttpResponseRedirect(reverse("admin:migrations_app_migrationplan_changelist"))
        # The version each plan had when the page was shown: acting on a plan that moved since is refused.
        form = ActForm(request.POST or None, action=action)
        if request.method == "POST" and form.is_valid():
            actor = lifecycle.Actor.for_user(request.user)
            for plan in targets:
                expected = request.POST.get(f"version-{plan.pk}")
                kwargs: dict[str, Any] = {
                    "plan_key": plan.key,
                    "actor": actor,
                    "reason": form.cleaned_data["reason"],
                }
                if (version := whole_number(expected, 2**31 - 1)) is not None:
                    kwargs["expected_version"] = version
                if action == "start":
                    # The warnings this page showed for the plan: a new one stops the start.
                    kwargs["acknowledged"] = request.POST.getlist(f"acknowledge-{plan.pk}")
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
        # Starting says first what will not work (plans.start_checks), per plan.
        checks = {p.pk: start_checks(p) for p in targets} if action == "start" else {}
        context = {
            **self.admin_site.each_context(request),
            "title": f"{action.capitalize()} {', '.join(p.key for p in targets)}",
            "action": action,
            "targets": [(p, checks.get(p.pk)) for p in targets],
            "can_confirm": not checks or any(not c.problems for c in checks.values()),
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
