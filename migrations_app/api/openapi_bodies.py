"""The request and response bodies the OpenAPI schema documents (api/openapi.py): what each
endpoint takes and answers, as DRF serializers that are read by drf-spectacular and never
serve a request."""

from __future__ import annotations

from rest_framework import serializers
from turnout.contract import (
    ERROR_KINDS,
    MAX_ATTRIBUTES,
    MAX_PLAN_KEY_LENGTH,
    MAX_UNIT_LENGTH,
    ErrorCode,
    RejectionCode,
)


class ErrorBody(serializers.Serializer):
    """Every error of every JSON API but OFREP."""

    code = serializers.ChoiceField([c.value for c in ErrorCode], help_text="Stable: program on it.")
    message = serializers.CharField(help_text="For a person.")
    details = serializers.DictField(
        help_text="validation_failed: fields (path -> messages, e.g. phases[1].steps[0]); "
        "409s: status, version; start_warnings: warnings, acknowledge."
    )


class OfrepError(serializers.Serializer):
    key = serializers.CharField(required=False)
    errorCode = serializers.ChoiceField(
        ["PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT", "FLAG_NOT_FOUND", "GENERAL"]
    )
    errorDetails = serializers.CharField()


class Status(serializers.Serializer):
    status = serializers.CharField()


class DecideIn(serializers.Serializer):
    plan = serializers.CharField(max_length=MAX_PLAN_KEY_LENGTH)
    unit = serializers.CharField(max_length=MAX_UNIT_LENGTH, trim_whitespace=False)
    attributes = serializers.DictField(
        required=False,
        help_text=f"JSON scalars by name (at most {MAX_ATTRIBUTES}); rules read them.",
    )


class PromptOut(serializers.Serializer):
    mode = serializers.CharField()
    text = serializers.CharField(allow_blank=True)


class Decision(serializers.Serializer):
    plan = serializers.CharField()
    unit = serializers.CharField()
    arm = serializers.ChoiceField(["control", "candidate"], allow_null=True)
    provider = serializers.CharField(allow_null=True)
    kind = serializers.CharField(allow_null=True)
    base_url = serializers.CharField(allow_null=True, allow_blank=True)
    api_key_env = serializers.CharField(
        allow_null=True, allow_blank=True, help_text="A variable's NAME, never a key."
    )
    model = serializers.CharField(allow_null=True)
    params = serializers.DictField()
    prompt = PromptOut()
    shadow = serializers.BooleanField()
    shadow_model = serializers.CharField(allow_null=True)
    shadow_spec = serializers.DictField(allow_null=True)
    fallback = serializers.DictField(allow_null=True)
    plan_version = serializers.IntegerField()
    run = serializers.IntegerField()
    phase = serializers.CharField(allow_null=True)
    reason = serializers.CharField()
    decision_id = serializers.CharField()
    cohort = serializers.CharField(allow_null=True)


class Snapshot(serializers.Serializer):
    schema = serializers.IntegerField()
    version = serializers.CharField(help_text="Equals the ETag without quotes.")
    plans = serializers.ListField(
        child=serializers.DictField(), help_text="docs/contracts.md, Plan snapshot."
    )


class OfrepIn(serializers.Serializer):
    context = serializers.DictField(
        help_text="targetingKey (the unit) and attributes (every other field)."
    )


class OfrepEvaluation(serializers.Serializer):
    key = serializers.CharField()
    reason = serializers.CharField()
    variant = serializers.CharField()
    value = Decision()
    metadata = serializers.DictField()


class OfrepBulk(serializers.Serializer):
    flags = OfrepEvaluation(many=True)
    metadata = serializers.DictField()


class Rejection(serializers.Serializer):
    index = serializers.IntegerField()
    field = serializers.CharField()
    code = serializers.ChoiceField([c.value for c in RejectionCode])
    message = serializers.CharField()


class IngestResult(serializers.Serializer):
    stored = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = Rejection(many=True)


class Batch(serializers.Serializer):
    client = serializers.DictField(required=False, help_text='{"sdk", "dropped"}')
    events = serializers.ListField(
        child=serializers.DictField(),
        help_text="docs/contracts.md: each event has a client-made id; error kinds: "
        + ", ".join(sorted(ERROR_KINDS))
        + ".",
    )


class ShadowBatch(serializers.Serializer):
    samples = serializers.ListField(
        child=serializers.DictField(), max_length=100, help_text="docs/contracts.md."
    )


class LabelIn(serializers.Serializer):
    pair = serializers.CharField(max_length=64, help_text="A pair id from label-pairs.")
    choice = serializers.ChoiceField(choices=["a", "b", "tie", "skip"])


class LabelsIn(serializers.Serializer):
    labels = serializers.ListField(child=LabelIn(), min_length=1, max_length=200)


class BlindPair(serializers.Serializer):
    pair = serializers.CharField()
    messages = serializers.ListField(child=serializers.DictField())
    answer_a = serializers.CharField()
    answer_b = serializers.CharField()


class LabelPairs(serializers.Serializer):
    pairs = BlindPair(many=True)
    choices = serializers.ListField(child=serializers.CharField())
    labelled = serializers.IntegerField()


class LabelsStored(serializers.Serializer):
    stored = serializers.IntegerField()
    calibration = serializers.DictField(
        allow_null=True,
        help_text="The judge against people: labels, kappa and its interval, "
        "position and length bias, and whether its guardrails may act (trusted, why).",
    )


class ReplayIn(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, required=False)
    dataset = serializers.CharField(
        max_length=63, required=False, help_text="Replay this dataset instead of the phase's."
    )
    version = serializers.IntegerField(min_value=1, required=False)


class ReplayCancelIn(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, required=False)


class ReplayAnswer(serializers.Serializer):
    plan = serializers.DictField(help_text="The plan's status, as GET /api/v1/plans/{key}.")
    replay = serializers.DictField(
        allow_null=True,
        help_text="The plan's latest replay: id, status, decision, dataset, dataset_version, "
        "repeats, items, calls_total, progress (calls per status), outcome, gates (each with "
        "its interval), cost_usd, seconds; null before the first.",
    )


class ActionIn(serializers.Serializer):
    reason = serializers.CharField(max_length=2000)
    expected_version = serializers.IntegerField(min_value=1, required=False)
    acknowledge = serializers.ListField(child=serializers.CharField(), required=False)
