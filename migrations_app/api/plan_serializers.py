"""The plan document's shape: what the plans API takes and answers in ``spec``, and what a plan
file holds. The plan files' JSON Schema (``sdk/src/turnout/schemas/plan.schema.json``) and the
OpenAPI schema are generated from these serializers, so the three cannot drift apart.

These check the shape (types, bounds, unknown keys: a typo in a plan file is an error, never a
silent default); what makes a plan valid is the one plan validation's
(``plans.validation.plan_check``), which the admin's form calls too.

Adding a plain plan column: name it in ``plans.validation.SETTINGS``; ``PlanDocument`` builds
its field from the model field (type, bounds, default, help text).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.utils import model_meta
from turnout.contract import (
    COHORT_PATTERN,
    MAX_CONTENT_CHARS,
    MAX_METRIC_BOUND,
    MAX_METRIC_NAME_LENGTH,
    METRIC_NAME_PATTERN,
)

from migrations_app.models import (
    PLAN_KEY,
    MetricDirection,
    MetricKind,
    MigrationPlan,
    PhaseKind,
    PromptMode,
    ToleranceKind,
)
from migrations_app.models.plans import (
    SEGMENT_DIMENSION_PATTERN,
    GuardrailAction,
    validate_holdout_percent,
)
from migrations_app.plans import holdout
from migrations_app.plans.checks import MAX_REDACTION_PATTERNS
from migrations_app.plans.validation import ARM_FIELDS, ARMS, SETTINGS

MAX_PHASES = 20
MAX_STEPS = 20
MAX_GUARDRAILS = 50
MAX_METRICS = 50
MAX_CHANNELS = 50
MAX_SEGMENT_DIMENSIONS = 3  # models.plans.validate_segment_dimensions's bound
MAX_COUNT = 2**31 - 1  # a PositiveIntegerField column's largest value


class Number(serializers.FloatField):
    """A JSON number: ``true`` and ``false`` are not 1 and 0 here (DRF's FloatField takes them,
    so ``holdout_percent: true`` was a 1 % holdout), nor are strings such as ``"2"``; the
    plan's JSON Schema says ``number`` too."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)  # type: ignore[no-any-return]


def _count(**kwargs: Any) -> serializers.IntegerField:
    """A count stored in a PositiveIntegerField: past its column's range it is a 400, not the
    database's DataError (a 500)."""
    return serializers.IntegerField(min_value=0, max_value=MAX_COUNT, required=False, **kwargs)


class Strict(serializers.Serializer):
    """Refuses keys it does not know (and read-only ones), naming each."""

    def to_internal_value(self, data: Any) -> Any:
        unknown: dict[str, list[str]] = {}
        if isinstance(data, Mapping):
            known = {name for name, f in self.fields.items() if not f.read_only}
            unknown = {
                str(k): [f"Unknown field; this object takes: {', '.join(sorted(known))}."]
                for k in data
                if k not in known
            }
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if unknown and isinstance(exc.detail, dict):
                raise serializers.ValidationError({**exc.detail, **unknown}) from None
            raise
        if unknown:
            raise serializers.ValidationError(unknown)
        return value


class ModelRef(serializers.RegexField):
    """A catalog model as ``provider:model_id`` (``GET /api/v1/catalog/models`` lists them)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", "A catalog model, provider:model_id.")
        super().__init__(
            r"^[a-z0-9][a-z0-9_-]*:[A-Za-z0-9][A-Za-z0-9._:/@+-]*$", max_length=300, **kwargs
        )


class Arm(Strict):
    model = ModelRef()
    params = serializers.DictField(
        required=False,
        help_text="Call params: temperature, max_tokens, top_p, response_format, ...",
    )
    prompt_mode = serializers.ChoiceField(PromptMode.choices, required=False)
    prompt_text = serializers.CharField(
        required=False, allow_blank=True, max_length=MAX_CONTENT_CHARS, trim_whitespace=False
    )


_PERCENT = {"type": "number", "exclusiveMinimum": 0, "maximum": 100}


@extend_schema_field(
    {
        "oneOf": [
            _PERCENT,
            {
                "type": "object",
                "properties": {
                    "cohort": {"type": "string", "pattern": COHORT_PATTERN},
                    "percent": _PERCENT,
                },
                "required": ["cohort", "percent"],
                "additionalProperties": False,
            },
        ],
    }
)
class RolloutStep(serializers.Field):
    """A rollout step: the candidate's percentage, or a cohort step (``{"cohort": "internal",
    "percent": 100}``: the units a targeting rule puts in that cohort, at their own weight).
    Taken as written: the one plan validation (``phases.validate_phase``) says what is wrong
    with a step, by its index, as it does for the admin's form."""

    def to_internal_value(self, data: Any) -> Any:
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class Phase(Strict):
    kind = serializers.ChoiceField(PhaseKind.choices)
    percent = Number(
        required=False, allow_null=True, help_text="Shadow: sample %. A/B split: candidate %."
    )
    steps = serializers.ListField(
        child=RolloutStep(),
        required=False,
        max_length=MAX_STEPS,
        help_text="Rollout: candidate % per step, strictly increasing, e.g. [5, 25, 50, 100]; "
        'a cohort step first, e.g. {"cohort": "internal", "percent": 100}, targets a cohort '
        "a targeting rule assigns.",
    )
    min_duration_minutes = _count()
    min_samples = _count(help_text="Requests per arm before moving on.")
    auto_advance = serializers.BooleanField(
        required=False, help_text="false: a person approves each move."
    )
    replay = serializers.JSONField(
        required=False,
        help_text="Replay (the first phase only): dataset, version, repeats (1-10, default 3), "
        "fresh_baseline, gates [{metric, threshold, direction, versus_control}], on_fail "
        "(stop | approval), budget_usd.",
    )


class GuardrailRow(Strict):
    metric = serializers.CharField(
        max_length=64,
        help_text="error_rate, latency_p95, latency_p99, ttft_p95, satisfaction, "
        "cost_per_request, or a metric the plan or the catalog declares.",
    )
    tolerance_kind = serializers.ChoiceField(ToleranceKind.choices)
    tolerance = Number()
    action = serializers.ChoiceField(GuardrailAction.choices, required=False)
    min_samples = _count()
    direction = serializers.ChoiceField(
        [("", "The metric's own"), *MetricDirection.choices],
        required=False,
        allow_blank=True,
        help_text="A per-request metric's guardrail only: which way is worse, if not the "
        "metric's own direction ('' keeps it).",
    )


class MetricDeclaration(Strict):
    """A metric the application reports per request, declared by this plan (a catalog metric
    needs no declaration here)."""

    name = serializers.RegexField(
        METRIC_NAME_PATTERN,
        max_length=MAX_METRIC_NAME_LENGTH,
        help_text="What client.metric(decision, name, value) sends: lowercase letters, digits "
        "and _, starting with a letter.",
    )
    kind = serializers.ChoiceField(
        MetricKind.choices, required=False, help_text="rate: 0 or 1 per request; mean: a number."
    )
    direction = serializers.ChoiceField(MetricDirection.choices, required=False)
    lower_bound = Number(
        required=False,
        allow_null=True,
        min_value=-MAX_METRIC_BOUND,
        max_value=MAX_METRIC_BOUND,
        help_text="A mean's smallest value (a rate: null).",
    )
    upper_bound = Number(
        required=False,
        allow_null=True,
        min_value=-MAX_METRIC_BOUND,
        max_value=MAX_METRIC_BOUND,
        help_text="A mean's largest value (a rate: null).",
    )
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)


def _settings_fields() -> dict[str, Any]:
    """The plain columns' fields, built from their model fields (type, bounds, choices, help)."""
    builder = serializers.ModelSerializer()
    info = model_meta.get_field_info(MigrationPlan)
    fields: dict[str, Any] = {}
    for name in SETTINGS:
        field_class, kwargs = builder.build_standard_field(name, info.fields[name])
        kwargs["required"] = False
        if field_class is serializers.DecimalField:
            kwargs["coerce_to_string"] = False  # a budget is a number in a file
        if field_class is serializers.FloatField:
            field_class = Number
        fields[name] = field_class(**kwargs)
    return fields


class PlanDocument(Strict):
    """A whole plan. What is left out takes its default: phases from ``template`` (else the
    standard playbook), guardrails from ``guardrail_set`` (else the template's, else the
    default set; ``[]`` for none), every other setting its default."""

    key = serializers.CharField(
        max_length=63, validators=[PLAN_KEY], help_text="What SDKs ask for."
    )
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    control = Arm()
    candidate = Arm()
    phases = Phase(many=True, required=False, max_length=MAX_PHASES)
    metrics = MetricDeclaration(
        many=True,
        required=False,
        max_length=MAX_METRICS,
        help_text="The plan's own per-request metrics, which its guardrails may guard (left "
        "out: none).",
    )
    guardrails = GuardrailRow(many=True, required=False, max_length=MAX_GUARDRAILS)
    alert_channels = serializers.ListField(
        child=serializers.CharField(max_length=100),
        required=False,
        max_length=MAX_CHANNELS,
        help_text="Alert channels by name (GET /api/v1/alert-channels); their secrets stay in "
        "the server's environment.",
    )
    judge_model = ModelRef(required=False, allow_null=True)
    template = serializers.SlugField(
        required=False,
        write_only=True,
        help_text="Copy phases (and guardrails) from this template (GET /api/v1/templates) "
        "when the document gives none.",
    )
    guardrail_set = serializers.SlugField(
        required=False,
        write_only=True,
        help_text="Copy guardrails from this set (GET /api/v1/guardrail-sets) when the "
        "document gives none.",
    )

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        fields.update(_settings_fields())
        fields["redaction_patterns"] = serializers.ListField(
            child=serializers.CharField(max_length=1000, trim_whitespace=False),
            required=False,
            max_length=MAX_REDACTION_PATTERNS,
            help_text=fields["redaction_patterns"].help_text,
        )
        # 0 (none) or MIN_PERCENT..MAX_PERCENT: the bounds a schema can state, and the model's
        # validator for the gap between 0 and MIN_PERCENT.
        fields["holdout_percent"] = Number(
            required=False,
            min_value=0.0,
            max_value=holdout.MAX_PERCENT,
            validators=[validate_holdout_percent],
            help_text=fields["holdout_percent"].help_text,
        )
        fields["segment_dimensions"] = serializers.ListField(
            child=serializers.RegexField(SEGMENT_DIMENSION_PATTERN, max_length=64),
            required=False,
            max_length=MAX_SEGMENT_DIMENSIONS,
            help_text=fields["segment_dimensions"].help_text,
        )
        return fields


class PlanWrite(PlanDocument):
    """A plan document, compare-and-set on the version the writer read."""

    expected_version = serializers.IntegerField(
        min_value=1,
        required=False,
        write_only=True,
        help_text="Refuse (409 version_conflict) unless the plan is at this version.",
    )


def plan_values(document: Mapping[str, Any]) -> dict[str, Any]:
    """A checked document as the plan validation takes it (columns by model field name)."""
    values = {k: v for k, v in document.items() if k not in (*ARMS, "expected_version")}
    # A document says what the plan is: no metrics listed is none (the admin's form, which
    # edits them in rows of their own, leaves them out of the validation's values instead).
    values["metrics"] = [dict(m) for m in document.get("metrics") or []]
    for arm in ARMS:
        given = document.get(arm) or {}
        values.update({f"{arm}_{f}": given[f] for f in ARM_FIELDS if f in given})
    return values


# --- what the plans API answers (documented in the OpenAPI schema) ------------------------


class GuardrailVerdict(serializers.Serializer):
    metric = serializers.CharField()
    status = serializers.CharField()
    summary = serializers.CharField()


class LatestEvaluation(serializers.Serializer):
    at = serializers.DateTimeField()
    action = serializers.CharField()
    acted = serializers.BooleanField()
    reasons = serializers.ListField(child=serializers.CharField())
    control_requests = serializers.IntegerField()
    candidate_requests = serializers.IntegerField()
    guardrails = GuardrailVerdict(many=True)


class PlanSummary(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    status = serializers.ChoiceField(
        ["draft", "running", "paused", "rolled_back", "completed", "archived"]
    )
    version = serializers.IntegerField()
    run = serializers.IntegerField(help_text="The current run's number; 0 before the first.")
    phase = serializers.CharField(allow_null=True)
    phase_index = serializers.IntegerField()
    step_index = serializers.IntegerField()
    weight_bp = serializers.IntegerField(help_text="The candidate's share, in basis points.")
    shadow_bp = serializers.IntegerField(help_text="The shadow sample rate, in basis points.")
    step_started_at = serializers.DateTimeField(allow_null=True)


class PlanStatusOut(PlanSummary):
    latest_evaluation = LatestEvaluation(allow_null=True)
    spec = PlanDocument(help_text="The plan as a document: a plan file that applies it back.")


class PlanList(serializers.Serializer):
    plans = PlanSummary(many=True)


class ChangeOut(serializers.Serializer):
    path = serializers.CharField(help_text="e.g. phases[2].steps, control.params.temperature")
    # Any JSON value, or null where the path did not exist.
    from_ = serializers.JSONField(allow_null=True, label="from")
    to = serializers.JSONField(allow_null=True)

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        fields["from"] = fields.pop("from_")
        return fields


class Applied(serializers.Serializer):
    changed = serializers.BooleanField(help_text="false: the plan already was as written.")
    created = serializers.BooleanField()
    dry_run = serializers.BooleanField()
    changes = ChangeOut(many=True)
    plan = PlanStatusOut(
        allow_null=True, help_text="The plan now; null for a dry run that would create it."
    )
