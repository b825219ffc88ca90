"""POST /api/v1/metrics: the batch answer, the key's scope, the error body, gzip."""

from __future__ import annotations

import gzip
import json
import time
import uuid

import pytest
from django.test import Client

from migrations_app.api.keys import apikey_create
from migrations_app.models import MetricDefinition, MetricValue
from tests.factories import started_plan

pytestmark = pytest.mark.django_db


def event(**fields):
    return {"id": uuid.uuid4().hex, "decision_id": uuid.uuid4().hex, "name": "task_completed",
            "value": 1, "ts": time.time() - 1, **fields}  # fmt: skip


def client_for(*scopes, plans=None):
    key = apikey_create(name=f"k-{uuid.uuid4().hex[:6]}", scopes=list(scopes), plans=plans)[1]
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def test_a_batch_is_stored_and_each_bad_event_named():
    plan = started_plan()
    MetricDefinition.objects.create(plan=plan, name="task_completed")
    body = {"events": [event(plan=plan.key), event(plan=plan.key, value=7), event(name="zz")]}
    answer = client_for("report").post(
        "/api/v1/metrics", gzip.compress(json.dumps(body).encode()),
        content_type="application/json", HTTP_CONTENT_ENCODING="gzip",
    )  # fmt: skip
    assert answer.status_code == 200, answer.content
    data = answer.json()
    assert data["stored"] == 1 and data["duplicates"] == 0
    assert [(r["index"], r["field"], r["code"]) for r in data["rejected"]] == [
        (1, "metrics.task_completed", "out_of_range"),
        (2, "metrics.zz", "metric_not_declared"),
    ]
    assert MetricValue.objects.count() == 1


def test_one_event_alone_is_a_batch_of_one():
    plan = started_plan()
    MetricDefinition.objects.create(plan=plan, name="task_completed")
    answer = client_for("report").post(
        "/api/v1/metrics", json.dumps(event(plan=plan.key)), content_type="application/json"
    )
    assert answer.json()["stored"] == 1


def test_the_key_needs_the_report_scope_and_the_plan():
    plan, other = started_plan(), started_plan()
    MetricDefinition.objects.create(plan=other, name="task_completed")
    body = json.dumps({"events": [event(plan=other.key)]})
    assert (
        client_for("decide")
        .post("/api/v1/metrics", body, content_type="application/json")
        .status_code
        == 403
    )
    scoped = client_for("report", plans=[plan])
    answer = scoped.post("/api/v1/metrics", body, content_type="application/json")
    assert answer.json()["rejected"][0]["code"] == "plan_not_found"
    assert not MetricValue.objects.exists()


@pytest.mark.parametrize("body", [b"{", b'{"events": 3}', b"[]"])
def test_a_body_that_is_no_batch_is_a_400_with_the_error_body(body):
    answer = client_for("report").post("/api/v1/metrics", body, content_type="application/json")
    assert answer.status_code == 400
    assert answer.json()["code"] in ("parse_error", "validation_failed")
