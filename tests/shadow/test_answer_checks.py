"""The answer checks of shadow pairs: both answers checked by turnout.checks, paired per unit
into the stage's PairedSums, which the shadow stage's check guardrails read."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from migrations_app.models import MigrationPlan
from migrations_app.shadow import pipeline
from migrations_app.shadow.judge import compare_answers
from migrations_app.shadow.selectors import paired_metrics
from tests.shadow.test_shadow import ingest, sample, shadow_plan

pytestmark = pytest.mark.django_db

SCHEMA = {"type": "object", "required": ["order"]}


def answering(texts: dict[str, str], finish: str | None = "stop"):
    def call(s):
        return pipeline.CandidateResult(
            text=texts[s.unit], latency_ms=500.0, input_tokens=10, output_tokens=10,
            finish_reason=finish,
        )  # fmt: skip

    return call


def test_both_answers_are_checked_and_paired_per_unit():
    plan = shadow_plan(answer_schema=SCHEMA)
    good = json.dumps({"order": 1234})
    events = []
    for unit in ("heavy", "heavy", "heavy", "light"):
        event = sample(plan, unit=unit)
        event["request"]["json_schema"] = {}
        event["control"]["text"] = good
        events.append(event)
    # The heavy user's candidate answers are JSON but not the schema's; the light one's are.
    texts = {"heavy": '{"nope": 1}', "light": good}
    ingest(*events)
    done = pipeline.shadow_run([e["id"] for e in events], call=answering(texts),
                               compare=compare_answers)  # fmt: skip
    assert done["done"] == 4
    pairs = paired_metrics(plan.current_stage)
    schema = pairs["schema_valid"]
    assert (schema.n, schema.control.total, schema.candidate.total) == (4, 4.0, 1.0)
    assert schema.difference.total == -3.0
    # Two units: the heavy one's three pairs are one unit of the variance.
    assert schema.difference.clusters.units == 2
    assert schema.difference.clusters.sum_yy == 9.0 and schema.difference.clusters.sum_nn == 10.0
    assert pairs["json_valid"].candidate.total == 4.0
    assert pairs["answer_chars"].control.total == 4 * len(good)
    # Control's finish reason was not given: truncated is not paired.
    assert "truncated" not in pairs


def test_a_pair_without_an_answer_has_no_checks():
    plan = shadow_plan()
    event = sample(plan)
    ingest(event)

    def failing(s):
        return pipeline.CandidateResult(text="", latency_ms=5.0, error="timeout")

    pipeline.shadow_run([event["id"]], call=failing, compare=compare_answers)
    assert paired_metrics(plan.current_stage) == {}


def test_a_plan_schema_that_is_not_json_schema_is_refused_when_saved():
    plan = shadow_plan()
    plan.answer_schema = {"type": "objekt"}
    with pytest.raises(ValidationError) as refused:
        plan.full_clean()
    assert "answer_schema" in refused.value.message_dict
    assert MigrationPlan.objects.get(pk=plan.pk).answer_schema is None
