"""The plan form without JSON: models from the catalog, params as typed fields (raw JSON only as
an escape hatch), phases with their steps as a list of percentages, guardrails as rows.

These forms only parse what a person typed (a number is a number, a list of steps is a list);
whether the plan is valid is ``plans.validation.plan_check``'s to say, the one validation the
admin, the API and plan files share. ``plan_values`` turns the forms into its input and
``place_errors`` puts each of its errors next to the field it is about.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django import forms

from migrations_app.api.plan_serializers import MAX_GUARDRAILS, MAX_PHASES
from migrations_app.models import (
    AlertChannel,
    GuardrailAction,
    GuardrailMetric,
    MigrationPlan,
    ModelSpec,
    PhaseKind,
    PlanTemplate,
    PromptMode,
    ToleranceKind,
)
from migrations_app.plans.validation import ARMS, form_field

# The params a person sets with a typed field; any other goes in the arm's JSON escape hatch.
TYPED_PARAMS = ("temperature", "max_tokens", "top_p", "response_format")
RESPONSE_FORMATS = {"json_object": {"type": "json_object"}}
# Settings the form shows, with the model's own defaults as initial values.
SETTINGS = (
    "alpha",
    "circuit_breaker_error_rate",
    "circuit_breaker_min_requests",
    "escalate_after_minutes",
    "shadow_budget_usd_per_day",
    "shadow_retention_days",
    "fallback_to_control",
)


def _mtok(price: Decimal) -> str:
    return f"${price:,.2f}" if price >= 1 or price == 0 else f"${price.normalize():f}"


def _tokens(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:g}M"
    return f"{n / 1000:g}k" if n >= 1000 else str(n)


def model_label(spec: ModelSpec) -> str:
    """A catalog model as the form lists it: name, id, prices and limits."""
    name = spec.display_name or spec.model_id
    return (
        f"{name} ({spec.provider.name}:{spec.model_id}) · "
        f"{_mtok(spec.input_price_per_mtok)} in / {_mtok(spec.output_price_per_mtok)} out "
        f"per 1M tokens · {_tokens(spec.context_window)} context · "
        f"{_tokens(spec.max_output_tokens)} max output"
    )


class CatalogChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return model_label(obj)


def _catalog() -> Any:
    return ModelSpec.objects.select_related("provider").order_by("provider__name", "model_id")


def _number(**attrs: Any) -> forms.NumberInput:
    return forms.NumberInput(attrs={"step": "any", **attrs})


class PlanForm(forms.Form):
    """The plan's own fields, both arms and the settings. Ranges are not checked here (the
    validation service does, with the same messages everywhere); types are."""

    # Required, and their format, are the validation service's to say (as everything else).
    key = forms.CharField(
        required=False,
        help_text="What the application asks the SDK for, e.g. support-chat. Lowercase letters, "
        "digits, '.', '_' and '-'.",
    )
    name = forms.CharField(required=False)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    template = forms.ChoiceField(required=False, label="Start from the template")
    traffic_rpm = forms.FloatField(
        required=False, min_value=0, label="Requests a minute", widget=_number(min="0")
    )
    traffic_input_tokens = forms.FloatField(
        required=False, min_value=0, label="Input tokens a request", widget=_number(min="0")
    )
    traffic_output_tokens = forms.FloatField(
        required=False, min_value=0, label="Output tokens a request", widget=_number(min="0")
    )
    judge_model = CatalogChoice(
        queryset=ModelSpec.objects.none(),
        required=False,
        empty_label="No judge",
        help_text="Optional: a model that compares each shadow pair's answers.",
    )
    alert_channels = forms.ModelMultipleChoiceField(
        queryset=AlertChannel.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Where a rollback pages on-call.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        catalog = _catalog()
        self.fields["judge_model"].queryset = catalog  # type: ignore[attr-defined]
        self.fields["alert_channels"].queryset = AlertChannel.objects.order_by("name")  # type: ignore[attr-defined]
        self.fields["template"].choices = [("", "the standard playbook")] + [
            (t.name, f"{t.name}: {t.description}" if t.description else t.name)
            for t in PlanTemplate.objects.order_by("name")
        ]
        for arm in ARMS:
            self.fields[f"{arm}_model"] = CatalogChoice(
                queryset=catalog, empty_label="Choose a model from the catalog", required=False
            )
            self.fields[f"{arm}_temperature"] = forms.FloatField(
                required=False, label="Temperature", widget=_number(min="0", max="2"),
                help_text="0 to 2; empty: the model's default.",
            )  # fmt: skip
            self.fields[f"{arm}_max_tokens"] = forms.IntegerField(
                required=False, label="Max tokens", widget=forms.NumberInput(attrs={"min": "1"}),
                help_text="Most output tokens a call may use; empty: the model's default.",
            )  # fmt: skip
            self.fields[f"{arm}_top_p"] = forms.FloatField(
                required=False, label="Top p", widget=_number(min="0", max="1"),
                help_text="0 to 1; empty: the model's default.",
            )  # fmt: skip
            self.fields[f"{arm}_response_format"] = forms.ChoiceField(
                required=False,
                label="Response format",
                choices=[("", "Text (the model's default)"), ("json_object", "JSON object")],
                help_text="JSON object: OpenAI and OpenAI-compatible models; for others ask "
                "for JSON in the prompt.",
            )
            self.fields[f"{arm}_params_extra"] = forms.CharField(
                required=False,
                label="Other params (JSON, optional)",
                widget=forms.Textarea(attrs={"rows": 2, "placeholder": '{"seed": 7}'}),
                help_text="Only for params without a field above, as a JSON object.",
            )
            self.fields[f"{arm}_prompt_mode"] = forms.ChoiceField(
                choices=PromptMode.choices, initial=PromptMode.NONE, label="System prompt"
            )
            self.fields[f"{arm}_prompt_text"] = forms.CharField(
                required=False, label="Prompt text", widget=forms.Textarea(attrs={"rows": 2})
            )
        for name in SETTINGS:
            field = MigrationPlan._meta.get_field(name).formfield()
            assert field is not None
            if isinstance(field, forms.FloatField | forms.DecimalField):
                field.widget = _number()
            field.validators = []  # the bounds are the validation service's to check
            for attr in ("min_value", "max_value"):
                if hasattr(field, attr):
                    setattr(field, attr, None)
            field.widget.attrs.pop("min", None)
            field.widget.attrs.pop("max", None)
            self.fields[name] = field

    def arm_sections(self) -> list[dict[str, Any]]:
        """Each arm's fields, grouped as the page shows them."""
        return [
            {
                "arm": arm,
                "title": title,
                "what": what,
                "model": self[f"{arm}_model"],
                "params": [self[f"{arm}_{n}"] for n in TYPED_PARAMS],
                "prompt": [self[f"{arm}_prompt_mode"], self[f"{arm}_prompt_text"]],
                "extra": self[f"{arm}_params_extra"],
            }
            for arm, title, what in (
                ("control", "Control", "The model your users get today."),
                ("candidate", "Candidate", "The model you are moving to."),
            )
        ]

    def setting_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in SETTINGS]

    def _extra(self, arm: str) -> dict[str, Any]:
        raw = (self.cleaned_data.get(f"{arm}_params_extra") or "").strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise forms.ValidationError(f"Not JSON ({exc.msg} at character {exc.pos}).") from exc
        except RecursionError:  # nested past the parser's stack (a 500 before)
            raise forms.ValidationError("Not JSON: nested too deeply.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('A JSON object, e.g. {"seed": 7}.')
        typed = sorted(set(value) & set(TYPED_PARAMS))
        if typed:
            raise forms.ValidationError(f"Set {', '.join(typed)} with the field(s) above.")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        for arm in ARMS:
            try:
                data[f"{arm}_params_extra_value"] = self._extra(arm)
            except forms.ValidationError as exc:
                self.add_error(f"{arm}_params_extra", exc)
        return data

    def params(self, arm: str) -> dict[str, Any]:
        """The arm's call params: the typed fields that are set, then the JSON ones."""
        data = self.cleaned_data
        params: dict[str, Any] = {}
        for name in ("temperature", "max_tokens", "top_p"):
            if data.get(f"{arm}_{name}") is not None:
                params[name] = data[f"{arm}_{name}"]
        if fmt := data.get(f"{arm}_response_format"):
            params["response_format"] = RESPONSE_FORMATS[fmt]
        params.update(data.get(f"{arm}_params_extra_value") or {})
        return params


def initial_arm(params: Mapping[str, Any]) -> dict[str, Any]:
    """A stored arm's params as the typed fields show them (the rest as the JSON hatch)."""
    out: dict[str, Any] = {n: params.get(n) for n in ("temperature", "max_tokens", "top_p")}
    fmt = params.get("response_format")
    out["response_format"] = next((k for k, v in RESPONSE_FORMATS.items() if v == fmt), "")
    rest = {k: v for k, v in params.items() if k not in TYPED_PARAMS}
    if fmt and not out["response_format"]:
        rest["response_format"] = fmt
    out["params_extra"] = json.dumps(rest) if rest else ""
    return out


_STEP = re.compile(r"[\s,;]+")


def parse_steps(text: str) -> list[float]:
    """ "5, 25, 50, 100" (or "5% 25% ...") as numbers; a word that is not one is an error."""
    steps = []
    for word in _STEP.split(text.strip()):
        if not word:
            continue
        try:
            steps.append(float(word.rstrip("%")))
        except ValueError:
            raise forms.ValidationError(
                f"{word!r} is not a number: write the candidate's percentages in order, "
                "separated by commas, e.g. 5, 25, 50, 100."
            ) from None
    return steps


def steps_text(steps: Sequence[Any] | None) -> str:
    return ", ".join(f"{float(s):g}" for s in steps or [])


class StepsField(forms.CharField):
    def to_python(self, value: Any) -> list[float]:  # type: ignore[override]
        return parse_steps(super().to_python(value) or "")

    def prepare_value(self, value: Any) -> Any:
        return steps_text(value) if isinstance(value, list | tuple) else value


class PhaseForm(forms.Form):
    kind = forms.ChoiceField(choices=PhaseKind.choices)
    percent = forms.FloatField(
        required=False, widget=_number(min="0", max="100"),
        help_text="Shadow: share of requests copied. A/B split: share of users.",
    )  # fmt: skip
    steps = StepsField(
        required=False,
        help_text="Rollout: the candidate's share of users at each step, e.g. 10, 25, 50, 100.",
    )
    min_duration_minutes = forms.IntegerField(
        label="Min minutes", widget=forms.NumberInput(attrs={"min": "0"})
    )
    min_samples = forms.IntegerField(
        label="Min requests per arm", widget=forms.NumberInput(attrs={"min": "0"})
    )
    auto_advance = forms.BooleanField(required=False, label="Advance by itself")

    def row(self) -> dict[str, Any]:
        data = self.cleaned_data
        kind = data["kind"]
        return {
            "kind": kind,
            "percent": data.get("percent") if kind != "rollout" else None,
            "steps": list(data.get("steps") or []) if kind == "rollout" else [],
            "min_duration_minutes": data["min_duration_minutes"],
            "min_samples": data["min_samples"],
            "auto_advance": bool(data.get("auto_advance")),
        }


class GuardrailForm(forms.Form):
    metric = forms.ChoiceField(choices=GuardrailMetric.choices)
    tolerance_kind = forms.ChoiceField(choices=ToleranceKind.choices, label="Compared as")
    tolerance = forms.FloatField(widget=_number())
    action = forms.ChoiceField(choices=GuardrailAction.choices, label="When it regresses")
    min_samples = forms.IntegerField(
        initial=0,
        label="Acts from (requests per arm)",
        widget=forms.NumberInput(attrs={"min": "0"}),
    )

    def row(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in self.fields}


# As many rows as the plans API takes, and no more forms built than that whatever a post's
# TOTAL_FORMS says (Django's own cap is 1,000 forms: seconds of CPU for one hostile post).
PhaseFormSet = forms.formset_factory(
    PhaseForm, extra=0, can_delete=True, max_num=MAX_PHASES, absolute_max=MAX_PHASES,
    validate_max=True,
)  # fmt: skip
GuardrailFormSet = forms.formset_factory(
    GuardrailForm, extra=0, can_delete=True, max_num=MAX_GUARDRAILS, absolute_max=MAX_GUARDRAILS,
    validate_max=True,
)  # fmt: skip


def phase_initial(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "kind": r.get("kind"),
            "percent": r.get("percent"),
            "steps": steps_text(r.get("steps")),
            "min_duration_minutes": r.get("min_duration_minutes", 30),
            "min_samples": r.get("min_samples", 1000),
            "auto_advance": r.get("auto_advance", True),
        }
        for r in rows
    ]


def guardrail_initial(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "metric": r.get("metric"),
            "tolerance_kind": r.get("tolerance_kind", "relative"),
            "tolerance": r.get("tolerance"),
            "action": r.get("action", "rollback"),
            "min_samples": r.get("min_samples", 0),
        }
        for r in rows
    ]


@dataclass
class PlanForms:
    """The page's forms together, and which formset row each plan row came from."""

    plan: PlanForm
    phases: Any
    guardrails: Any
    phase_rows: list[int]  # plan phases[i] is phases.forms[phase_rows[i]]
    guardrail_rows: list[int]

    def parsed(self) -> bool:
        """Whether every form parsed (types, not validity)."""
        return all(
            f.is_valid() for f in (self.plan, self.phases, self.guardrails)
        )  # all three run: their errors show together

    def _live(self, formset: Any) -> list[int]:
        return [
            i
            for i, form in enumerate(formset.forms)
            if form.is_valid() and not form.cleaned_data.get("DELETE") and form.cleaned_data
        ]


def bind(data: Mapping[str, Any] | None, *, initial: Mapping[str, Any] | None = None,
         phases: Sequence[Mapping[str, Any]] = (), guardrails: Sequence[Mapping[str, Any]] = (),
         ) -> PlanForms:  # fmt: skip
    """The page's forms, bound to ``data`` (a POST) or started from ``initial`` and rows."""
    if data is not None:
        return PlanForms(
            PlanForm(data), PhaseFormSet(data, prefix="phases"),
            GuardrailFormSet(data, prefix="guardrails"), [], [],
        )  # fmt: skip
    return PlanForms(
        PlanForm(initial=initial or {}),
        PhaseFormSet(prefix="phases", initial=phase_initial(phases)),
        GuardrailFormSet(prefix="guardrails", initial=guardrail_initial(guardrails)),
        [], [],
    )  # fmt: skip


def plan_values(forms_: PlanForms) -> dict[str, Any]:
    """The parsed forms as ``plan_check``'s input (call on forms that parsed)."""
    data = forms_.plan.cleaned_data
    values: dict[str, Any] = {
        "key": data["key"].strip(),
        "name": data["name"].strip(),
        "description": data.get("description", ""),
        "judge_model": data.get("judge_model"),
        "alert_channels": list(data.get("alert_channels") or []),
    }
    for arm in ARMS:
        values[f"{arm}_model"] = data.get(f"{arm}_model")
        values[f"{arm}_params"] = forms_.plan.params(arm)
        values[f"{arm}_prompt_mode"] = data.get(f"{arm}_prompt_mode") or PromptMode.NONE
        values[f"{arm}_prompt_text"] = data.get(f"{arm}_prompt_text", "")
    for name in SETTINGS:
        if data.get(name) is not None:
            values[name] = data[name]
    forms_.phase_rows = forms_._live(forms_.phases)
    forms_.guardrail_rows = forms_._live(forms_.guardrails)
    values["phases"] = [forms_.phases.forms[i].row() for i in forms_.phase_rows]
    values["guardrails"] = [forms_.guardrails.forms[i].row() for i in forms_.guardrail_rows]
    return values


def _param_field(arm: str, message: str) -> str:
    """Which typed field a params message is about ("temperature must be ..."), else the
    arm's JSON escape hatch."""
    first = message.split(" ", 1)[0]
    return f"{arm}_{first}" if first in TYPED_PARAMS else f"{arm}_params_extra"


def place_errors(forms_: PlanForms, errors: Mapping[str, Sequence[str]]) -> None:
    """Put each of ``plan_check``'s errors next to its field: a row's field in its formset
    row, a list's in the formset's own errors, a column in the plan form (a params message
    in its typed field), the rest at the top of the form."""
    plan = forms_.plan
    for path, messages in errors.items():
        listed, index, field = form_field(path)
        for message in messages:
            if listed in ("phases", "guardrails"):
                formset = forms_.phases if listed == "phases" else forms_.guardrails
                rows = forms_.phase_rows if listed == "phases" else forms_.guardrail_rows
                if index is not None and index < len(rows):
                    form = formset.forms[rows[index]]
                    form.add_error(field if field in form.fields else None, message)
                else:
                    formset.non_form_errors().append(message)  # the list as a whole
            elif field is not None and field.endswith("_params") and field[:-7] in ARMS:
                plan.add_error(_param_field(field[:-7], message), message)
            elif field is not None and field in plan.fields:
                plan.add_error(field, message)
            else:
                where = f"{path}: " if path and path != "__all__" else ""
                plan.add_error(None, f"{where}{message}")


def catalog_rows() -> list[ModelSpec]:
    """The catalog as the form's table lists it."""
    return list(_catalog())
