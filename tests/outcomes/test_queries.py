"""Ingest's database round trips do not grow with a batch: a fixed number of statements per
batch of outcomes or feedback, whatever its size, its units and its windows (as decide and the
dashboard have theirs: tests/api/test_hot_path.py, tests/dashboard/test_queries.py)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from migrations_app.api.keys import apikey_create
from tests.outcomes.conftest import outcome, split_plan

pytestmark = pytest.mark.django_db


@pytest.fixture
def reporter() -> Client:
    key = apikey_create(name="reporter", scopes=["report"])[1]
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def statements(client: Client, path: str, events: list[dict[str, Any]]) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        answer = client.post(path, json.dumps({"events": events}), content_type="application/json")
    assert answer.status_code == 200 and answer.json()["stored"] == len(events), answer.json()
    return [q["sql"] for q in captured.captured_queries]


def spread(plan: Any, n: int) -> list[dict[str, Any]]:
    """n outcomes over n units, both arms and several minute windows."""
    now = time.time()
    return [
        outcome(plan, arm=("control", "candidate")[i % 2], ts=now - 60 * (i % 5) - 1)
        for i in range(n)
    ]


def test_an_outcome_batch_costs_the_same_statements_at_any_size(reporter: Client) -> None:
    plan = split_plan()
    statements(reporter, "/api/v1/outcomes", spread(plan, 2))  # the key and the plan, cached
    small = statements(reporter, "/api/v1/outcomes", spread(plan, 3))
    large = statements(reporter, "/api/v1/outcomes", spread(plan, 400))
    assert len(large) == len(small)
    # The plan's version check; the insert (with the feedback held for its decisions); unit
    # totals; windows and stage totals, each locked-or-created then updated; the transaction.
    assert len(small) <= 10, small


def test_a_feedback_batch_costs_the_same_statements_at_any_size(reporter: Client) -> None:
    plan = split_plan()
    events = spread(plan, 402)
    statements(reporter, "/api/v1/outcomes", events)

    def feedback(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "id": uuid.uuid4().hex,
                "decision_id": e["decision_id"],
                "score": 1,
                "ts": time.time() - 1,
            }
            for e in rows
        ]

    statements(reporter, "/api/v1/feedback", feedback(events[:1]))
    small = statements(reporter, "/api/v1/feedback", feedback(events[1:3]))
    large = statements(reporter, "/api/v1/feedback", feedback(events[3:]))
    assert len(large) == len(small)
    assert len(small) <= 14, small
