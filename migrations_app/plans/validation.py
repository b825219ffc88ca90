"""The one plan validation. The admin's plan form, the dashboard's plan form, the plans API and
plan files (``python -m turnout plan apply``) all call :func:`plan_check`, so the same plan is
refused everywhere with the same messages.

Input: a plan's values keyed by ``MigrationPlan``'s field names (what a ModelForm's
``cleaned_data`` holds, and what the API's serializer produces from a plan document), plus
``phases``, ``guardrails`` (lists of dicts), ``metrics`` (the plan's own metric declarations,
dicts; left out, the saved ones stay), ``alert_channels`` (names or objects),
``template`` and ``guardrail_set`` (names). A model may be given as a ``ModelSpec``, its pk or
``"provider:model_id"``. A value left out takes its default: a column its model field's
default, phases the template's (else the standard playbook), guardrails the named set's, else
the template's, else the default set's.

Output: the resolved plan (every column, the phase and guardrail rows, the channels) or the
errors, keyed by the plan document's paths: ``key``, ``control.params``,
``phases[1].steps[0]``, ``guardrails[2].tolerance``, ``metrics[0].upper_bound``,
``alert_channels[0]``, and ``phases`` or
``guardrails`` for the list as a whole. ``form_field`` maps a path back to a form's field.

Adding a plain column to plans: name it in ``SETTINGS`` (``document.py``'s serializer and the
plan files' JSON Schema follow); its model field's type, default and validators apply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError

from migrations_app.models import (
    AlertChannel,
    Guardrail,
    GuardrailSet,
    MetricDefinition,
    MigrationPlan,
    ModelSpec,
    PlanPhase,
    PlanTemplate,
)
from migrations_app.plans import holdout, templates
from migrations_app.plans.checks import validate_redaction_patterns
from migrations_app.plans.json_checks import unstorable_paths
from migrations_app.plans.metric_specs import MetricSpec
from migrations_app.plans.metrics import declarations_problems, plan_metric_specs, specs_declaring
from migrations_app.plans.phases import (
    STANDARD_PLAYBOOK,
    Errors,
    candidate_share_drops,
    phase_rule,
    replay_problems,
    validate_arms,
    validate_guardrail,
    validate_phase,
)

ARMS = ("control", "candidate")
ARM_FIELDS = ("model", "params", "prompt_mode", "prompt_text")
# Arm params the SDK's provider adapters set themselves, or that are not call params (the
# connection's): given in a plan, every call of that arm failed (TypeError: multiple values).
RESERVED_PARAMS = frozenset(
    {
        "model", "messages", "stream", "stream_options", "timeout", "base_url", "api_key",
        "extra_headers", "extra_query", "extra_body", "default_headers", "max_retries",
        "http_client", "organization", "project", "system", "contents", "input",
    }
)  # fmt: skip
# Plain columns a plan document carries under their model field's name.
SETTINGS = (
    "alpha",
    "circuit_breaker_error_rate",
    "circuit_breaker_min_requests",
    "escalate_after_minutes",
    "shadow_budget_usd_per_day",
    "shadow_retention_days",
    "redaction_patterns",
    "fallback_to_control",
    # The judge (issue 15): the pointwise judge's rubric and share of a split's answers, its
    # own daily budget, and the floor below which its guardrails only alert.
    "judge_rubric",
    "judge_sample_percent",
    "judge_budget_usd_per_day",
    "judge_min_labels",
    "judge_min_kappa",
    "answer_schema",
    # Guardrails per segment (issue 16): the dimensions, the values tested per dimension, and
    # what a regressed segment does.
    "segment_dimensions",
    "segment_top_k",
    "segment_on_regression",
    # The change detectors' average run length to a false alarm, in days (issue 20).
    "detector_arl_days",
    # The holdout after the last step (issue 16): its share, watch and samples
    # (plans/holdout.py; checked once, by _check_holdout).
    *holdout.FIELDS,
)
# Columns that name a catalog model (null allowed), given as "provider:model_id".
MODEL_REFS = ("judge_model",)
ARM_COLUMNS = tuple(f"{arm}_{name}" for arm in ARMS for name in ARM_FIELDS)
COLUMNS = ("key", "name", "description", *ARM_COLUMNS, *SETTINGS, *MODEL_REFS)
# The rows a plan owns, as a document lists them.
PHASE_FIELDS = (
    "kind",
    "percent",
    "steps",
    "min_duration_minutes",
    "min_samples",
    "auto_advance",
    "replay",
)
GUARDRAIL_FIELDS = ("metric", "tolerance_kind", "tolerance", "action", "min_samples", "direction")
# A plan's own metric declarations (MetricDefinition), as a document lists them (by name).
METRIC_FIELDS = ("name", "kind", "direction", "lower_bound", "upper_bound", "description")
# The run's statistical settings: how much error its tests may spend (alpha, the detectors'
# run length) and over how many segments it is split. Changed mid-run, a run would spend its
# alpha again: a bound recomputed narrower, a family of tests grown after the split was made.
STATISTICS_SETTINGS = ("alpha", "segment_dimensions", "segment_top_k", "detector_arl_days")
# Paths frozen while a run is live (edits.FROZEN_FIELDS are their columns): what decides
# where traffic goes, the phases, guardrails and metric declarations with it, and the
# statistical settings, so a run's statistics mean something (the admin freezes its metric
# rows the same way). The holdout's fields with them: it is the run's last stage.
FROZEN_PATHS = (
    "key", *ARMS, "phases", "metrics", "guardrails", *holdout.FIELDS, *STATISTICS_SETTINGS
)  # fmt: skip


@dataclass
class ResolvedPlan:
    """A valid plan, ready to write: every column (models as ``ModelSpec``), the phase and
    guardrail rows with every field, the alert channels, and the plan's own metric
    declarations by name (None when the values gave none: the saved ones stay, as the
    admin's form, which edits them in rows of their own, leaves them)."""

    columns: dict[str, Any]
    phases: list[dict[str, Any]]
    guardrails: list[dict[str, Any]]
    alert_channels: list[AlertChannel] = field(default_factory=list)
    metrics: list[dict[str, Any]] | None = None


@dataclass
class PlanCheck:
    plan: ResolvedPlan | None
    errors: Errors

    @property
    def ok(self) -> bool:
        return not self.errors


def path_of(column: str) -> str:
    """A column's path in the document: ``control_params`` -> ``control.params``."""
    for arm in ARMS:
        if column.startswith(f"{arm}_") and column[len(arm) + 1 :] in ARM_FIELDS:
            return f"{arm}.{column[len(arm) + 1 :]}"
    return column


_ROW_PATH = re.compile(r"^(?P<list>\w+)\[(?P<index>\d+)\]\.(?P<field>\w+)")


def form_field(path: str) -> tuple[str | None, int | None, str | None]:
    """Where a form shows an error at ``path``: (list, index, field) for a row's field
    (``phases[1].steps[0]`` -> ("phases", 1, "steps")), (list, None, None) for a list as a
    whole, (None, None, column) for a column (``control.params`` -> "control_params"), and
    (None, None, None) for the form as a whole."""
    if match := _ROW_PATH.match(path):
        return match["list"], int(match["index"]), match["field"]
    head = re.split(r"[.\[]", path, maxsplit=1)[0]
    if head in ("phases", "guardrails") and path in ("phases", "guardrails"):
        return head, None, None
    if head in ARMS and "." in path:
        return None, None, f"{head}_{path.split('.')[1].split('[')[0]}"
    if head in COLUMNS or head == "alert_channels":
        return None, None, head
    return None, None, None


def _add(errors: Errors, path: str, messages: str | Iterable[str]) -> None:
    bucket = errors.setdefault(path, [])
    bucket.extend([messages] if isinstance(messages, str) else messages)


def _model_default(model: Any, name: str) -> Any:
    return model._meta.get_field(name).get_default()


def resolve_model(ref: Any) -> ModelSpec | None:
    """A catalog model from a ``ModelSpec``, its pk or ``"provider:model_id"``; None if none."""
    if isinstance(ref, ModelSpec):
        return ref
    query = ModelSpec.objects.select_related("provider")
    if isinstance(ref, int) and not isinstance(ref, bool):
        return query.filter(pk=ref).first()
    if isinstance(ref, str) and ":" in ref:
        provider, model_id = ref.split(":", 1)
        return query.filter(provider__name=provider, model_id=model_id).first()
    return None


def model_ref(model: ModelSpec | None) -> str | None:
    """How a document names a catalog model."""
    return None if model is None else f"{model.provider.name}:{model.model_id}"


def _model_column(values: Mapping[str, Any], column: str, errors: Errors) -> ModelSpec | None:
    ref = values.get(column)
    if ref is None or ref == "":
        if column not in MODEL_REFS:  # an arm's model is required; a judge is optional
            arm = column.split("_")[0]
            _add(errors, path_of(column), f"Choose a {arm} model from the catalog.")
        return None
    model = resolve_model(ref)
    if model is None:
        _add(errors, path_of(column), f"{ref!r} is not in the model catalog.")
    return model


def _rows(
    given: Any, path: str, names: Sequence[str], model: Any, errors: Errors
) -> list[dict[str, Any]]:
    """A list of row dicts with every field (the model's defaults filled in)."""
    if not isinstance(given, list | tuple):
        _add(errors, path, "A list.")
        return []
    rows = []
    for i, row in enumerate(given):
        if not isinstance(row, Mapping):
            _add(errors, f"{path}[{i}]", "An object.")
            continue
        rows.append(
            {name: row[name] if name in row else _model_default(model, name) for name in names}
        )
    return rows


def _template_source(
    values: Mapping[str, Any], errors: Errors
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """The phases and guardrails a plan gets when it names none: from its template and
    guardrail set (or the defaults)."""
    phases: list[dict[str, Any]] | None = None
    guardrail_set: GuardrailSet | None = None
    named_set = False
    if name := values.get("template"):
        template = templates.template_named(str(name))
        if template is None:
            known = ", ".join(PlanTemplate.objects.values_list("name", flat=True))
            _add(errors, "template", f"No template named {name!r}; there are: {known or 'none'}.")
        else:
            phases = list(template.phases)
            guardrail_set, named_set = template.guardrail_set, template.guardrail_set is not None
    if name := values.get("guardrail_set"):
        guardrail_set = templates.guardrail_set_named(str(name))
        named_set = True
        if guardrail_set is None:
            known = ", ".join(GuardrailSet.objects.values_list("name", flat=True))
            _add(
                errors,
                "guardrail_set",
                f"No guardrail set named {name!r}; there are: {known or 'none'}.",
            )
    if not named_set:
        guardrail_set = templates.default_guardrail_set()
    return phases, (list(guardrail_set.guardrails) if guardrail_set else [])


def check_phases(phases: Sequence[Mapping[str, Any]], errors: Errors, path: str = "phases") -> None:
    """Each phase, then the phases in order (a template's as a plan's)."""
    if not phases:
        _add(errors, path, "Add at least one phase.")
        return
    before = len(errors)
    for i, phase in enumerate(phases):
        for name, messages in validate_phase(phase).items():
            _add(errors, f"{path}[{i}].{name}", messages)
    if len(errors) == before:
        rules = [phase_rule(p) for p in phases]
        drops = candidate_share_drops(rules) + replay_problems(rules)
        if drops:
            _add(errors, path, drops)


def check_guardrails(
    guardrails: Sequence[Mapping[str, Any]],
    errors: Errors,
    path: str = "guardrails",
    metrics: Mapping[str, MetricSpec] | None = None,
) -> None:
    """``metrics``: the per-request metrics the plan may guard (plans.metrics.plan_metric_specs:
    the answer checks, the catalog's and the plan's saved declarations)."""
    seen: set[str] = set()
    for i, guardrail in enumerate(guardrails):
        for name, messages in validate_guardrail(guardrail, metrics).items():
            _add(errors, f"{path}[{i}].{name}", messages)
        metric = str(guardrail.get("metric"))
        if metric in seen:
            _add(errors, f"{path}[{i}].metric", "One guardrail per metric.")
        seen.add(metric)


def _check_holdout(
    values: Mapping[str, Any],
    columns: Mapping[str, Any],
    phases: Sequence[Mapping[str, Any]],
    errors: Errors,
) -> None:
    """The holdout after the last step (plans/holdout.py): its bounds, and phases that end
    at 100 %. Its fields are read from ``values`` (the admin's form passes them), else the
    columns, else their defaults."""
    given = {
        name: values[name]
        if name in values
        else columns.get(name, _model_default(MigrationPlan, name))
        for name in holdout.FIELDS
    }
    found = holdout.validate_holdout(
        [phase_rule(p) for p in phases],
        percent=given["holdout_percent"],
        watch_minutes=given["holdout_watch_minutes"],
        min_samples=given["holdout_min_samples"],
    )
    for name, messages in found.items():
        _add(errors, name, messages)


def _channels(given: Any, errors: Errors) -> list[AlertChannel]:
    if not isinstance(given, list | tuple):
        _add(errors, "alert_channels", "A list of alert channel names.")
        return []
    found: list[AlertChannel] = []
    names = [c for c in given if isinstance(c, str)]
    by_name = {c.name: c for c in AlertChannel.objects.filter(name__in=names)} if names else {}
    for i, ref in enumerate(given):
        channel = ref if isinstance(ref, AlertChannel) else by_name.get(ref)
        if channel is None:
            _add(errors, f"alert_channels[{i}]", f"No alert channel named {ref!r}.")
        elif channel in found:
            _add(errors, f"alert_channels[{i}]", f"{channel.name!r} is listed twice.")
        else:
            found.append(channel)
    return found


def _declarations(given: Any, errors: Errors) -> list[MetricDefinition] | None:
    """A document's metric declarations (unsaved, by name), or None when it gives none."""
    if given is None:
        return None
    if not isinstance(given, list | tuple):
        _add(errors, "metrics", "A list of metric declarations.")
        return []
    problems, made = declarations_problems(given)
    for path, messages in problems.items():
        _add(errors, path, messages)
    return sorted(made, key=lambda d: d.name)


def _model_field_errors(columns: Mapping[str, Any], skip: Iterable[str]) -> Errors:
    """The model fields' own validators (bounds, choices, the key's pattern), as the admin's
    ModelForm runs them."""
    plain = {k: v for k, v in columns.items() if k not in ("control_model", "candidate_model")}
    plain.pop("judge_model", None)
    instance = MigrationPlan(**plain)
    exclude = {"control_model", "candidate_model", "judge_model", "owner", "current_run"}
    exclude |= {"current_stage", "salt", *skip}
    errors: Errors = {}
    try:
        instance.full_clean(
            exclude=sorted(exclude), validate_unique=False, validate_constraints=False
        )
    except ValidationError as exc:
        for name, messages in exc.message_dict.items():
            _add(errors, path_of(name) if name != "__all__" else "__all__", messages)
    return errors


def plan_check(values: Mapping[str, Any], *, plan: MigrationPlan | None = None) -> PlanCheck:
    """Check a whole plan (see the module's docstring for what ``values`` holds) and resolve
    it: its models, channels, template and defaults. ``plan``: the plan being edited (its key
    may not change, and is not a clash with itself)."""
    errors: Errors = {}
    # Text the database cannot store, anywhere (JSON columns included): refused by path
    # before any of it reaches a query.
    for name, value in values.items():
        for bad in unstorable_paths(value, path_of(str(name))):
            _add(errors, bad, "Holds a NUL or a lone surrogate, which cannot be stored.")
    if errors:
        return PlanCheck(None, errors)
    columns: dict[str, Any] = {}
    for column in COLUMNS:
        if column in values:
            columns[column] = values[column]
        elif column in ("key", "name"):
            _add(errors, column, "This field is required.")
        else:
            columns[column] = _model_default(MigrationPlan, column)
    for column in ("control_model", "candidate_model", *MODEL_REFS):
        columns[column] = _model_column(values, column, errors)

    template_phases, set_guardrails = _template_source(values, errors)
    given_phases = values.get("phases")
    phases = _rows(
        STANDARD_PLAYBOOK if given_phases is None and template_phases is None
        else template_phases if given_phases is None else given_phases,
        "phases", PHASE_FIELDS, PlanPhase, errors,
    )  # fmt: skip
    if not any(k.startswith("phases") for k in errors):
        check_phases(phases, errors)
    # The holdout reads the phases as rules: only phases that passed their checks (a step
    # that is not a number cannot be read as one).
    if not any(k.startswith("phases") for k in errors):
        _check_holdout(values, columns, phases, errors)
    given_guardrails = values.get("guardrails")
    guardrails = _rows(
        set_guardrails if given_guardrails is None else given_guardrails,
        "guardrails", GUARDRAIL_FIELDS, Guardrail, errors,
    )  # fmt: skip
    metrics = _declarations(values.get("metrics"), errors)
    if not any(k.startswith("guardrails") for k in errors):
        specs = (
            plan_metric_specs(plan.pk if plan else None)
            if metrics is None
            else specs_declaring(metrics)
        )
        check_guardrails(guardrails, errors, metrics=specs)
    channels = _channels(values.get("alert_channels") or [], errors)

    control, candidate = columns["control_model"], columns["candidate_model"]
    if control is not None and candidate is not None:
        arms = validate_arms(
            **{
                arm: {
                    "model": columns[f"{arm}_model"].pk,
                    **{f: columns[f"{arm}_{f}"] for f in ARM_FIELDS[1:]},
                }
                for arm in ARMS
            },
            control_max_output=control.max_output_tokens,
            candidate_max_output=candidate.max_output_tokens,
        )
        for column, messages in arms.items():
            _add(errors, path_of(column), messages)
    for arm in ARMS:
        given = columns.get(f"{arm}_params")
        for name in given if isinstance(given, Mapping) else ():
            if name in RESERVED_PARAMS:
                _add(
                    errors,
                    f"{arm}.params.{name}",
                    f"{name!r} is set by Turnout's provider adapter (the arm's model, its "
                    "connection, the call's timeout and streaming), not by a plan's params.",
                )
    for path, problems in validate_redaction_patterns(columns.get("redaction_patterns")).items():
        _add(errors, path, problems)

    key = columns.get("key")
    if plan is not None and key is not None and key != plan.key:
        _add(errors, "key", f"A plan's key cannot change (it is {plan.key!r}): SDKs ask for it.")
    elif isinstance(key, str) and (
        MigrationPlan.objects.filter(key=key).exclude(pk=plan.pk if plan else None).exists()
    ):
        _add(errors, "key", f"A plan with key {key!r} exists.")
    # The model fields' own rules, on the columns no check above has refused already.
    failed = {c for c in COLUMNS if path_of(c) in errors} | {"redaction_patterns"}
    failed |= set(holdout.FIELDS)  # _check_holdout's
    for path, messages in _model_field_errors(columns, failed).items():
        _add(errors, path, messages)

    if errors:
        return PlanCheck(None, errors)
    declared = (
        None if metrics is None else [{f: getattr(d, f) for f in METRIC_FIELDS} for d in metrics]
    )
    return PlanCheck(ResolvedPlan(columns, phases, guardrails, channels, declared), {})
