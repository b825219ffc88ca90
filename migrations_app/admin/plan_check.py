"""The admin's plan form and its phase and guardrail rows, checked as one plan by the one plan
validation (``plans.validation.plan_check``), the plans API's: the same plan is refused with
the same messages in both. Each error is shown where it belongs: a row's field, a list as a
whole, a plan field, or the form.

Django's admin validates the plan form before the inline rows and has no hook that sees both,
so ``MigrationPlanAdmin`` hands its formsets to the form (``attach_formsets``) when it makes
them, which is before the form is validated; the form's ``clean`` then checks the rows first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django import forms

from migrations_app.models import MigrationPlan
from migrations_app.plans import holdout
from migrations_app.plans.edits import EDITABLE_STATUSES
from migrations_app.plans.validation import (
    COLUMNS,
    GUARDRAIL_FIELDS,
    PHASE_FIELDS,
    form_field,
    plan_check,
)

ROWS = {"phases": PHASE_FIELDS, "guardrails": GUARDRAIL_FIELDS}
_ATTRIBUTE = "_turnout_admin_formsets"


def attach_formsets(plan: MigrationPlan, formsets: Mapping[str, forms.BaseFormSet]) -> None:
    """Remember the rows' formsets ("phases", "guardrails") of the form editing ``plan``."""
    setattr(plan, _ATTRIBUTE, dict(formsets))


def _live_forms(formset: forms.BaseFormSet) -> list[forms.BaseForm]:
    """The rows that will be saved, in the order they will run (order, then age)."""
    live = [f for f in formset.forms if f.cleaned_data and not f.cleaned_data.get("DELETE")]
    live.sort(
        key=lambda f: (
            f.cleaned_data.get("order") or 0,
            f.instance.pk is None,
            f.instance.pk or 0,
        )
    )
    return live


def _stored_rows(plan: MigrationPlan, name: str) -> list[dict[str, Any]]:
    return [{f: getattr(row, f) for f in ROWS[name]} for row in getattr(plan, name).all()]


def check_plan_form(form: forms.ModelForm, data: Mapping[str, Any]) -> None:
    """Check the plan ``form`` edits (its cleaned ``data`` over the stored values of the
    fields it does not show) with its rows, and add each error where it belongs."""
    plan: MigrationPlan = form.instance
    values: dict[str, Any] = {}
    for column in COLUMNS:
        if column in data:
            values[column] = data[column]
        elif column in ("control_model", "candidate_model", "judge_model"):
            values[column] = getattr(plan, f"{column}_id")
        else:
            values[column] = getattr(plan, column)
    for column in holdout.FIELDS:  # the holdout's, checked against the phases
        if column not in values:
            values[column] = data[column] if column in data else getattr(plan, column)
    values["alert_channels"] = list(
        data["alert_channels"]
        if "alert_channels" in data
        else (plan.alert_channels.all() if plan.pk else [])
    )
    formsets: dict[str, forms.BaseFormSet] = getattr(plan, _ATTRIBUTE, {})
    editable = plan.pk is None or plan.status in EDITABLE_STATUSES
    rows: dict[str, list[forms.BaseForm]] = {}
    unchecked: set[str] = set()
    for name, fields in ROWS.items():
        formset = formsets.get(name)
        if editable and formset is not None:
            if not formset.is_valid():
                unchecked.add(name)  # its rows say what is wrong first
                continue
            rows[name] = _live_forms(formset)
            values[name] = [{f: row.cleaned_data.get(f) for f in fields} for row in rows[name]]
        elif plan.pk is not None:
            values[name] = _stored_rows(plan, name)
    check = plan_check(values, plan=plan if plan.pk else None)
    for path, messages in check.errors.items():
        listing, index, field = form_field(path)
        if listing in unchecked:
            continue
        if listing is not None and listing in rows:
            if index is None:
                formsets[listing].non_form_errors().extend(messages)
            else:
                row = rows[listing][index]
                for message in messages:
                    row.add_error(field if field in row.fields else None, message)
        elif field is not None and field in form.fields:
            if field not in form.errors:  # a field failing its own validation says so once
                for message in messages:
                    form.add_error(field, message)
        else:
            for message in messages:
                form.add_error(None, f"{path}: {message}")


class PlanRowsFormSet(forms.BaseInlineFormSet):
    """A plan's phase or guardrail rows. Their uniqueness (one guardrail per metric) is the plan
    check's rule, said in its words as the API says it; the database's constraint stays."""

    def validate_unique(self) -> None:
        return None
