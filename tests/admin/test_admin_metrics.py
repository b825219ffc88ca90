"""Per-request metrics in the admin (issue 15): a guardrail may watch an answer check or a
metric the catalog or the plan declares, with the metric's direction or an override; a
direction on a built-in metric and an answer schema that is not JSON Schema are refused."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from migrations_app.models import MetricDefinition, MigrationPlan
from tests.admin.test_admin import _plan_post

pytestmark = pytest.mark.django_db

ADD = "admin:migrations_app_migrationplan_add"


def guardrail(metric: str, **fields: Any) -> dict[str, Any]:
    row = {"metric": metric, "tolerance_kind": "absolute", "tolerance": "0.05",
           "action": "rollback", "min_samples": 0, "direction": ""}  # fmt: skip
    return {**row, **fields}


def test_guardrails_on_an_answer_check_and_a_catalog_metric(admin_client: Client) -> None:
    MetricDefinition.objects.create(name="task_completed", kind="rate")
    page = admin_client.get(reverse(ADD)).content.decode()
    assert "Answer checks" in page and "task_completed (catalog)" in page
    rows = [
        guardrail("error_rate", tolerance_kind="relative", tolerance="1.5"),
        guardrail("refusal"),
        guardrail("task_completed", direction="lower_is_better"),
    ]
    post = _plan_post(guardrails=rows, plan={"answer_schema": '{"type": "object"}'})
    response = admin_client.post(reverse(ADD), post)
    assert response.status_code == 302, response.content.decode()[:3000]
    plan = MigrationPlan.objects.get(key="checkout-bot")
    assert {g.metric: g.direction for g in plan.guardrails.all()} == {
        "error_rate": "", "refusal": "", "task_completed": "lower_is_better",
    }  # fmt: skip
    assert plan.answer_schema == {"type": "object"}


@pytest.mark.parametrize(
    ("rows", "plan", "message"),
    [
        (
            [
                guardrail(
                    "error_rate",
                    tolerance_kind="relative",
                    tolerance="1.5",
                    direction="higher_is_better",
                )
            ],
            {},
            "direction is fixed",
        ),  # fmt: skip
        ([guardrail("task_done")], {}, "Select a valid choice"),  # nobody declares it
        ([guardrail("refusal", direction="sideways")], {}, "higher_is_better / lower_is_better"),
        ([], {"answer_schema": '{"type": "no-such-type"}'}, "Not a valid JSON Schema at type"),
    ],
)
def test_a_bad_metric_guardrail_or_schema_is_refused(
    admin_client: Client, rows: list[dict[str, Any]], plan: dict[str, Any], message: str
) -> None:
    response = admin_client.post(reverse(ADD), _plan_post(guardrails=rows, plan=plan))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not MigrationPlan.objects.exists()


def test_a_plans_own_metric_is_a_choice_once_saved(admin_client: Client) -> None:
    response = admin_client.post(reverse(ADD), _plan_post())
    assert response.status_code == 302
    plan = MigrationPlan.objects.get(key="checkout-bot")
    MetricDefinition.objects.create(plan=plan, name="resolved", kind="rate")
    change = reverse("admin:migrations_app_migrationplan_change", args=[plan.pk])
    assert "resolved (plan)" in admin_client.get(change).content.decode()
