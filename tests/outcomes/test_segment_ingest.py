"""Outcomes carry their unit's segment values (issue 16, item 6): stored on the raw row and
rolled up per stage, arm and segment (SegmentAggregate) beside the population, with the
units' cluster sums; dimensions the plan does not declare are left out; bad values are
rejected by field; 10^5 distinct tenants keep the rows bounded (CAPACITY + 1 per stage, arm
and dimension), and the stored segments add up to the population."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from migrations_app.guardrails.segments import OTHER
from migrations_app.guardrails.stats import ArmAggregates
from migrations_app.models import MigrationPlan, Outcome, SegmentAggregate, StageAggregate
from migrations_app.outcomes import aggregation, ingest, store
from migrations_app.outcomes.segment_rollup import CAPACITY, stage_segments
from tests.outcomes.conftest import Everyone, outcome, split_plan

pytestmark = pytest.mark.django_db


@pytest.fixture(params=[True, False], ids=["fast-path", "portable-path"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(store, "FAST_PATH", request.param)
    yield


def segmented_plan() -> MigrationPlan:
    plan = split_plan()
    MigrationPlan.objects.filter(pk=plan.pk).update(segment_dimensions=["tenant", "lang"])
    plan.refresh_from_db()
    ingest._plan_cache.clear()
    return plan


def ingest_events(*events: dict[str, Any]) -> Any:
    return ingest.outcomes_ingest(identity=Everyone(), payload={"events": list(events)})


def test_segments_are_stored_and_rolled_up(path: None) -> None:
    plan = segmented_plan()
    events = [
        outcome(plan, unit="u1", segments={"tenant": "acme", "lang": "ja"}, error="server_error"),
        outcome(plan, unit="u1", segments={"tenant": "acme", "lang": "ja"}),
        outcome(plan, unit="u2", segments={"tenant": "shop", "lang": "en", "tier": "pro"}),
        outcome(plan, unit="u3", arm="candidate", segments={"tenant": "acme"}),
        outcome(plan, unit="u4"),
    ]
    result = ingest_events(*events)
    assert result.stored == 5 and not result.rejected
    stored = dict(Outcome.objects.values_list("unit", "segments"))
    assert stored["u2"] == {"tenant": "shop", "lang": "en"}  # tier is not a dimension
    assert stored["u4"] is None
    segments = stage_segments(plan.current_stage_id)
    acme = segments[("tenant", "acme")]
    assert (acme["control"].requests, acme["control"].errors) == (2, 1)
    assert acme["candidate"].requests == 1
    assert acme["control"].error_clusters.units == 1  # u1, with both its requests
    assert acme["control"].error_clusters.sum_nn == 4.0
    assert segments[("lang", "en")]["control"].requests == 1
    assert ("lang", "ja") in segments and ("tier", "pro") not in segments
    # A unit's later outcomes add to its segment's cluster sums (running totals).
    ingest_events(outcome(plan, unit="u1", segments={"tenant": "acme", "lang": "ja"}))
    acme = stage_segments(plan.current_stage_id)[("tenant", "acme")]["control"]
    assert acme.requests == 3 and acme.error_clusters.sum_nn == 9.0


@pytest.mark.parametrize(
    ("segments", "field"),
    [
        ("acme", "segments"),
        ([["tenant", "acme"]], "segments"),
        ({"a": "1", "b": "2", "c": "3", "d": "4"}, "segments"),
        ({"tenant": 3}, "segments.tenant"),
        ({"tenant": ""}, "segments.tenant"),
        ({"tenant": "x" * 65}, "segments.tenant"),
        ({"tenant": {"nested": 1}}, "segments.tenant"),
        ({"lang": "a\x00b"}, "segments.lang"),
        ({"lang": "a\ud800b"}, "segments.lang"),  # a 500 for the whole batch before
    ],
)
def test_bad_segments_are_rejected_by_field(segments: Any, field: str) -> None:
    plan = segmented_plan()
    result = ingest_events(outcome(plan, segments=segments))
    assert result.stored == 0
    assert [(r.field, r.code) for r in result.rejected] == [(field, "invalid")]


@pytest.mark.parametrize(
    "tenants",
    [pytest.param(1_000, id="1e3"), pytest.param(100_000, id="1e5", marks=pytest.mark.slow)],
)
def test_many_distinct_tenants_stay_bounded(tenants: int) -> None:
    plan = segmented_plan()
    total = 0
    for start in range(0, tenants, 1_000):
        batch = [
            outcome(plan, unit=f"u{i}", segments={"tenant": f"t{i}"})
            for i in range(start, start + 1_000)
        ]
        total += ingest_events(*batch).stored
    assert total == tenants
    rows = SegmentAggregate.objects.filter(stage=plan.current_stage, dimension="tenant")
    assert rows.count() == CAPACITY + 1
    other = rows.get(value=OTHER)
    assert other.requests == tenants - CAPACITY
    population = StageAggregate.objects.get(stage=plan.current_stage, arm="control")
    summed = ArmAggregates.merge(aggregation.from_json(r.data) for r in rows)
    assert summed.requests == population.requests == tenants
    assert summed.error_clusters.units == tenants
