"""Targeting in the admin: a plan's rules (an inline on the plan, checked by the SDK's own
``turnout.targeting`` so a rule that cannot be evaluated is refused at save, naming it), the
live preview ("which arm would this unit with these attributes get?"), and the QA overrides
(listed, editable, expiring; every change through ``plans/targeting.py``).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from turnout import routing, targeting
from turnout.contract import MAX_ATTRIBUTES_BYTES, MAX_UNIT_LENGTH

from migrations_app.models import MigrationPlan, TargetingRule, UnitOverride
from migrations_app.plans import targeting as plan_targeting
from migrations_app.plans.lifecycle import Actor
from migrations_app.routing.snapshots import plan_entry, rule_entry


class TargetingRuleForm(forms.ModelForm):
    conditions = forms.JSONField(
        required=False,
        initial=list,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text='All must hold, e.g. [{"attribute": "tenant", "op": "in", "values": '
        '["bank-a"]}]; empty: every unit. Operators: equals, in, not_in, lt, lte, gt, gte, '
        "semver_eq/lt/lte/gt/gte, regex (RE2, at most 256 characters), exists.",
    )

    class Meta:
        model = TargetingRule
        fields = ("order", "name", "conditions", "result", "cohort")

    def clean_conditions(self) -> Any:
        value = self.cleaned_data.get("conditions")
        return [] if value in (None, "") else value


class TargetingRuleFormSet(forms.BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        if any(self._errors):
            return
        live = [f for f in self.forms if f.cleaned_data and not f.cleaned_data.get("DELETE")]
        # In the order SDKs read them (the model's ordering: order, then the row's age).
        live.sort(
            key=lambda f: (
                f.cleaned_data.get("order") or 0,
                f.instance.pk is None,
                f.instance.pk or 0,
            )
        )
        documents = [
            {
                "name": f.cleaned_data.get("name") or "",
                "when": f.cleaned_data.get("conditions") or [],
                "then": f.cleaned_data.get("result"),
                **({"cohort": f.cleaned_data["cohort"]} if f.cleaned_data.get("cohort") else {}),
            }
            for f in live
        ]
        problems = targeting.rule_problems(documents)
        for problem in problems:
            if problem.index is not None:
                form = live[problem.index]
                field = problem.field.split(".")[0]
                where = {"when": "conditions", "then": "result"}.get(field, field)
                form.add_error(where if where in form.fields else None, problem.message)
        if problems:
            raise forms.ValidationError([p.message for p in problems])


class TargetingRuleInline(admin.TabularInline):
    """Rules may change while the plan runs: a rule moves only the units it holds for."""

    model = TargetingRule
    form = TargetingRuleForm
    formset = TargetingRuleFormSet
    extra = 0
    verbose_name = "targeting rule"
    verbose_name_plural = (
        "Targeting rules (read in order; the first whose conditions all hold decides: "
        "exclude, include, or a cohort)"
    )


# --- the live preview ------------------------------------------------------------------------


def preview(plan: MigrationPlan, unit: str, attributes: Any) -> dict[str, Any]:
    """What the plan answers ``unit`` with ``attributes`` now, and what it would answer while
    running at its current step (a draft or paused plan serves control to everyone); which
    rule holds; the unit's bucket. Attributes are checked as ``/api/v1/decide`` checks them."""
    problems = targeting.attribute_problems(attributes)
    if not isinstance(unit, str) or not unit or len(unit) > MAX_UNIT_LENGTH:
        problems.insert(0, ("unit", f"A unit id of 1 to {MAX_UNIT_LENGTH} characters."))
    if problems:
        return {"errors": {field: message for field, message in problems}}
    now = time.time()
    answers = {}
    for label, entry in (
        ("now", plan_entry(plan)),
        ("running", plan_entry(plan, as_running=True)),
    ):
        parsed = routing.parse_plan(entry)
        d = routing.decide(parsed, unit, decision_id="preview", attributes=attributes, now=now)
        answers[label] = {
            "status": entry["status"],
            "arm": d.arm,
            "model": d.model,
            "reason": d.reason,
            "cohort": d.cohort,
            "shadow": d.shadow,
            "weight_bp": parsed.cohorts.get(d.cohort, parsed.weight_bp)
            if d.cohort
            else parsed.weight_bp,
        }
    rules = [rule_entry(r) for r in plan.targeting_rules.all()]
    try:
        compiled = targeting.compile_rules(rules)
    except targeting.RuleError:  # stored before a check existed: the SDKs serve ERROR
        compiled = ()
    matched = targeting.match(compiled, attributes)
    index = compiled.index(matched) if matched is not None else None
    return {
        "unit": unit,
        "bucket": routing.bucket(plan.salt, unit),
        "rule": targeting.rule_label(index, rules[index]) if index is not None else None,
        **answers,
    }


def preview_view(
    modeladmin: admin.ModelAdmin, request: HttpRequest, object_id: str
) -> HttpResponse:
    """``GET <plan>/targeting/?unit=...&attributes={...}``: a page with the form and
    :func:`preview`'s answer (``&format=json``: the answer alone as JSON; 400 with the
    field's message for a unit or attributes the API would refuse)."""
    plan = modeladmin.get_object(request, object_id)
    if plan is None or not modeladmin.has_view_or_change_permission(request, plan):
        raise Http404("No such plan.")
    unit = request.GET.get("unit", "")
    raw = request.GET.get("attributes", "").strip() or "{}"
    answer: dict[str, Any] | None = None
    if "unit" in request.GET:
        if len(raw) > MAX_ATTRIBUTES_BYTES:
            answer = {"errors": {"attributes": f"At most {MAX_ATTRIBUTES_BYTES} bytes."}}
        else:
            try:
                attributes = json.loads(raw)
            except ValueError as exc:
                answer = {"errors": {"attributes": f"Not JSON: {exc}."}}
            except RecursionError:  # nested past the parser's stack: within the byte cap
                answer = {"errors": {"attributes": "Not JSON: nested too deeply."}}
            else:
                answer = preview(plan, unit, attributes)
    status = 400 if answer is not None and "errors" in answer else 200
    if request.GET.get("format") == "json":
        return JsonResponse(
            answer or {"errors": {"unit": "Give a unit."}}, status=400 if answer is None else status
        )
    context = {
        **modeladmin.admin_site.each_context(request),
        "opts": modeladmin.model._meta,
        "original": plan,
        "title": f"Targeting preview: {plan.key}",
        "unit": unit,
        "attributes": raw,
        "answer": answer,
        "rules": [
            (targeting.rule_label(i, rule_entry(r)), rule_entry(r))
            for i, r in enumerate(plan.targeting_rules.all())
        ],
    }
    return TemplateResponse(
        request, "admin/migrations_app/targeting_preview.html", context, status=status
    )


# --- QA overrides ----------------------------------------------------------------------------


def _default_expiry() -> Any:
    return timezone.now() + timedelta(days=7)


class UnitOverrideForm(forms.ModelForm):
    expires_at = forms.DateTimeField(
        initial=_default_expiry, help_text="At most 90 days ahead; it ends by itself."
    )

    class Meta:
        model = UnitOverride
        fields = ("plan", "unit", "arm", "expires_at", "reason")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        errors = plan_targeting.override_errors(
            unit=data.get("unit", self.instance.unit),
            arm=data.get("arm"),
            expires_at=data.get("expires_at"),
            now=timezone.now(),
        )
        for field, messages in errors.items():
            if field not in self.errors:
                self.add_error(field if field in self.fields else None, messages)
        return data


@admin.register(UnitOverride)
class UnitOverrideAdmin(admin.ModelAdmin):
    """QA overrides: while the plan runs, a unit gets the arm named here (reason OVERRIDE),
    served but counted in neither arm's statistics, until it expires."""

    form = UnitOverrideForm
    list_display = ("unit", "plan", "arm", "expires_at", "live", "reason", "created_by")
    list_filter = ("arm", "plan")
    search_fields = ("unit", "plan__key", "reason")
    list_select_related = ("plan",)
    readonly_fields = ("created_by", "created_at")

    @admin.display(boolean=True, description="in force")
    def live(self, obj: UnitOverride) -> bool:
        return obj.expires_at > timezone.now()

    def get_readonly_fields(
        self, request: HttpRequest, obj: UnitOverride | None = None
    ) -> tuple[str, ...]:
        # A plan and unit are the override's identity: another unit is another override.
        fixed = ("created_by", "created_at")
        return fixed + ("plan", "unit") if obj is not None else fixed

    def save_model(
        self, request: HttpRequest, obj: UnitOverride, form: forms.ModelForm, change: bool
    ) -> None:
        saved = plan_targeting.override_set(
            plan_key=obj.plan.key,
            unit=obj.unit,
            arm=obj.arm,
            expires_at=obj.expires_at,
            actor=Actor.for_user(request.user),
            reason=obj.reason,
        )
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: UnitOverride) -> None:
        plan_targeting.override_remove(
            plan_key=obj.plan.key, unit=obj.unit, actor=Actor.for_user(request.user)
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[UnitOverride]) -> None:
        for obj in queryset.select_related("plan"):
            self.delete_model(request, obj)
