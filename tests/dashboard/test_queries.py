"""The dashboard reads a bounded number of queries whatever the data behind it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from migrations_app.guardrails import engine
from migrations_app.models import AuditEvent, Evaluation
from migrations_app.plans import lifecycle
from tests.dashboard.data import feed, running_plan
from tests.factories import make_user, person

pytestmark = pytest.mark.django_db

# 16, and 3 for the plan page's reads of the aggregates that each fold what ingest left
# pending first (segment_rollup.catch_up: one query when nothing is).
MAX_QUERIES = 19


def _load(plan, *, minutes: int, evaluations: int, events: int) -> None:
    start = timezone.now() - timedelta(minutes=minutes)
    for arm in ("control", "candidate"):
        feed(plan.current_stage, start=start, minutes=minutes, per_minute=2, arm=arm,
             error_rate=0.0, latency_ms=500)  # fmt: skip
    engine.plan_evaluate(plan_id=plan.pk)
    first = Evaluation.objects.filter(plan=plan).latest("pk")
    Evaluation.objects.bulk_create(
        Evaluation(
            plan=plan,
            run_id=first.run_id,
            stage_id=first.stage_id,
            plan_version=first.plan_version,
            action="hold",
            decision=first.decision,
            bounds=first.bounds,
            created_at=start + timedelta(seconds=15 * i),
        )  # fmt: skip
        for i in range(evaluations)
    )
    for i in range(events):
        lifecycle.record_edit(
            plan, actor=person(), action="edit", reason=f"edit {i}", publish=False
        )


def test_query_count_does_not_grow_with_the_data(django_assert_max_num_queries) -> None:
    client = Client()
    client.force_login(make_user("olga"))
    small = running_plan("small", hours_ago=1)
    _load(small, minutes=5, evaluations=3, events=1)
    big = running_plan("big", hours_ago=25)
    # A day of windows per arm, 5 760 evaluations and 200 audit events.
    _load(big, minutes=24 * 60, evaluations=24 * 240, events=200)
    counts = {}
    for key in ("small", "big"):
        with django_assert_max_num_queries(MAX_QUERIES) as captured:
            response = client.get(f"/plans/{key}/?hours=48")
        assert response.status_code == 200
        counts[key] = len(captured.captured_queries)
    assert counts["small"] == counts["big"]
    assert AuditEvent.objects.filter(plan__key="big").count() > 50  # the timeline is capped
