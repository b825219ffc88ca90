"""The plan admin's forms: the plan (its version checked, the whole plan with its rows
through the one validation, :mod:`migrations_app.admin.plan_check`) and its phase and
guardrail rows. The page, its inlines and its actions are in :mod:`migrations_app.admin.plans`.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.forms.fields import InvalidJSONInput

from migrations_app.admin.metrics import GuardrailMetricField, metric_choices
from migrations_app.admin.plan_check import check_plan_form
from migrations_app.models import Guardrail, MetricDirection, MigrationPlan, PlanPhase
from migrations_app.plans import holdout
from migrations_app.plans.json_checks import unstorable
from migrations_app.plans.validation import ARM_COLUMNS, GUARDRAIL_FIELDS, PHASE_FIELDS

STALE_PLAN = (
    "This plan changed since you opened this page (it is now {status}, version {version}; "
    "the page showed version {loaded}). Nothing was saved: reload the page and make your "
    "changes again."
)


class EscapedJSONField(forms.JSONField):
    """A JSON field shown back with a lone surrogate as its JSON escape (\\ud800): the plan
    validation refuses it by path, and the page echoing it raw failed to encode (a 500)."""

    def prepare_value(self, value: Any) -> Any:
        shown = super().prepare_value(value)
        if isinstance(shown, str) and not isinstance(value, InvalidJSONInput) and unstorable(shown):
            return json.dumps(value, ensure_ascii=True, cls=self.encoder)
        return shown


# Settings a plan has a default for: left blank (or not posted: a script, a form rendered before
# the field existed), the plan keeps its value, a new plan the model's default.
KEPT_WHEN_BLANK = (
    "segment_top_k",
    "segment_on_regression",
    "detector_arl_days",
    *holdout.FIELDS,
)


class PlanForm(forms.ModelForm):
    # The version the page was rendered from. Saving is refused when the plan has moved
    # since (a lifecycle action or another person's edit), instead of writing over it.
    loaded_version = forms.IntegerField(widget=forms.HiddenInput, required=False, min_value=1)
    # Guardrails per segment (issue 16): optional on the form, the model's defaults otherwise.
    segment_top_k = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=50,
        initial=20,
        help_text=MigrationPlan._meta.get_field("segment_top_k").help_text,
    )
    segment_on_regression = forms.ChoiceField(
        required=False,
        choices=MigrationPlan._meta.get_field("segment_on_regression").choices,
        initial="rollback",
        help_text=MigrationPlan._meta.get_field("segment_on_regression").help_text,
    )

    # The change detectors' run length (issue 20): its bounds are the model field's (checked
    # when the form saves the instance).
    detector_arl_days = forms.FloatField(
        required=False,
        initial=MigrationPlan._meta.get_field("detector_arl_days").default,
        help_text=MigrationPlan._meta.get_field("detector_arl_days").help_text,
    )

    class Meta:
        model = MigrationPlan
        # Status and position are never form fields: they move only through the lifecycle services.
        fields = (
            "key",
            "name",
            "description",
            "owner",
            *ARM_COLUMNS,
            "alpha",
            "circuit_breaker_error_rate",
            "circuit_breaker_min_requests",
            "escalate_after_minutes",
            "detector_arl_days",
            "alert_channels",
            "shadow_budget_usd_per_day",
            "shadow_retention_days",
            "redaction_patterns",
            "fallback_to_control",
            "judge_model",
            "answer_schema",
            "segment_dimensions",
            "segment_top_k",
            "segment_on_regression",
            *holdout.FIELDS,
        )
        field_classes = {
            name: EscapedJSONField
            for name in (
                "control_params",
                "candidate_params",
                "redaction_patterns",
                "answer_schema",
                "segment_dimensions",
            )
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.fields["loaded_version"].initial = self.instance.version
        for name in KEPT_WHEN_BLANK:
            if name in self.fields:  # frozen while a run is live: read-only, not a form field
                self.fields[name].required = False

    def _check_version(self, data: dict[str, Any]) -> None:
        # The instance was read under the row lock (MigrationPlanAdmin.get_object), so no
        # lifecycle action can move it between this check and the save. A form-wide error:
        # the admin hides the rows of hidden fields, errors included.
        loaded = data.get("loaded_version")
        if self.instance.pk is not None and loaded != self.instance.version:
            message = STALE_PLAN.format(
                status=self.instance.get_status_display().lower(),
                version=self.instance.version,
                loaded=loaded if loaded is not None else "unknown",
            )
            self.add_error(None, forms.ValidationError(message, code="version_conflict"))

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        for name in KEPT_WHEN_BLANK:
            blank = data.get(name) in (None, "") and name not in self.errors
            if name in self.fields and blank:  # the plan's value: the model's default when new
                data[name] = getattr(self.instance, name)
        self._check_version(data)
        # The whole plan with its rows, by the one validation the plans API uses too.
        check_plan_form(self, data)
        return data


class _InitialRowsSaved(forms.ModelForm):
    """Rows pre-filled from the standard playbook are saved even if the engineer keeps them as they are."""

    def has_changed(self) -> bool:
        return bool(self.initial and self.instance.pk is None) or super().has_changed()


class PhaseForm(_InitialRowsSaved):
    class Meta:
        model = PlanPhase
        fields = ("order", *PHASE_FIELDS)
        field_classes = {"steps": EscapedJSONField}


class GuardrailForm(_InitialRowsSaved):
    metric = GuardrailMetricField()

    class Meta:
        model = Guardrail
        fields = GUARDRAIL_FIELDS
        widgets = {
            "direction": forms.Select(
                choices=[("", "the metric's own"), *MetricDirection.choices],
            )
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The plan's own declared metrics too (the inline sets the row's plan).
        self.fields["metric"].choices = metric_choices(self.instance.plan_id)
