"""The plans API and issue 15's plan fields: a guardrail on an answer check or a declared metric
with an optional direction, and the plan's answer schema, written and read back as documents;
a direction on a built-in metric, an unknown direction and an invalid schema refused by path."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from migrations_app.models import MetricDefinition, MigrationPlan
from tests.api.test_plans_crud import _put, ci, document  # noqa: F401 (the fixture)

pytestmark = pytest.mark.django_db

SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}


def guardrail(metric: str, **fields: Any) -> dict[str, Any]:
    return {"metric": metric, "tolerance_kind": "absolute", "tolerance": 0.05, **fields}


def test_metric_guardrails_and_the_answer_schema_round_trip(ci: Client) -> None:  # noqa: F811
    MetricDefinition.objects.create(name="task_completed", kind="rate")
    rows = [
        guardrail("error_rate", tolerance_kind="relative", tolerance=1.5),
        guardrail("schema_valid"),
        guardrail("task_completed", direction="lower_is_better"),
    ]
    response = _put(ci, document(guardrails=rows, answer_schema=SCHEMA))
    assert response.status_code in (200, 201), response.content
    spec = response.json()["plan"]["spec"]
    assert [(g["metric"], g["direction"]) for g in spec["guardrails"]] == [
        ("error_rate", ""), ("schema_valid", ""), ("task_completed", "lower_is_better"),
    ]  # fmt: skip
    assert spec["answer_schema"] == SCHEMA
    plan = MigrationPlan.objects.get(key="support-chat")
    assert plan.guardrails.get(metric="task_completed").direction == "lower_is_better"
    again = _put(ci, spec | {"key": "support-chat"})
    assert again.status_code == 200 and not again.json()["changed"]  # the document is stable


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        (
            {
                "guardrails": [
                    guardrail(
                        "error_rate",
                        tolerance_kind="relative",
                        tolerance=1.5,
                        direction="lower_is_better",
                    )
                ]
            },
            "guardrails[0].direction",
            "direction is fixed",
        ),  # fmt: skip
        (
            {"guardrails": [guardrail("refusal", direction="sideways")]},
            "guardrails[0].direction",
            "not a valid choice",
        ),
        ({"guardrails": [guardrail("task_completed")]}, "guardrails[0].metric", "declares"),
        ({"answer_schema": {"type": "no-such-type"}}, "answer_schema", "Not a valid JSON Schema"),
    ],
)
def test_bad_quality_fields_are_refused_by_path(
    ci: Client,  # noqa: F811
    overrides: dict[str, Any],
    field: str,
    words: str,
) -> None:
    response = _put(ci, document(**overrides))
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "validation_failed"
    messages = " ".join(body["details"]["fields"][field])
    assert words in messages, messages
    assert not MigrationPlan.objects.exists()
