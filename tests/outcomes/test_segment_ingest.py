"""Outcomes carry their unit's segment values (issue 16, item 6): stored on the raw row and
rolled up per stage, arm and segment (SegmentAggregate) beside the population, with the
units' cluster sums; dimensions the plan does not declare are left out; bad values are
rejected by field; 10^5 distinct tenants keep the rows bounded (CAPACITY + 1 per stage, arm
and dimension), and the stored segments add up to the population. Feedback and per-request
metric values count in their outcome's segments (joined by decision id, before or after the
outcome), in none for an excluded or overridden unit, and in ``other`` beyond the capacity."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from migrations_app.guardrails.segments import OTHER
from migrations_app.guardrails.stats import ArmAggregates
from migrations_app.models import (
    Feedback,
    MetricDefinition,
    MetricValue,
    MigrationPlan,
    Outcome,
    PendingRollup,
    SegmentAggregate,
    StageAggregate,
)
from migrations_app.outcomes import (
    aggregate_json,
    feedback,
    ingest,
    metric_values,
    segment_rollup,
    store,
)
from migrations_app.outcomes.segment_rollup import CAPACITY, catch_up, fold, stage_segments
from tests.outcomes import conftest
from tests.outcomes.conftest import Everyone, outcome

pytestmark = pytest.mark.django_db


@pytest.fixture(params=[True, False], ids=["fast-path", "portable-path"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(store, "FAST_PATH", request.param)
    yield


def segmented_plan() -> MigrationPlan:
    return conftest.segmented_plan("tenant", "lang")


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
    fold([plan.current_stage_id])
    rows = SegmentAggregate.objects.filter(stage=plan.current_stage, dimension="tenant")
    assert rows.count() == CAPACITY + 1
    other = rows.get(value=OTHER)
    assert other.requests == tenants - CAPACITY
    catch_up()
    population = StageAggregate.objects.get(stage=plan.current_stage, arm="control")
    summed = ArmAggregates.merge(aggregate_json.from_json(r.data) for r in rows)
    assert summed.requests == population.requests == tenants
    assert summed.error_clusters.units == tenants


def test_a_fold_places_values_as_the_rows_are_when_it_runs() -> None:
    """Ingest writes no segment row: its batches wait in PendingRollup until a fold, which
    places each value as the rows are then (its own row, a free one, or ``other`` once the
    group is full), also when another writer filled a group since the last fold."""
    plan = segmented_plan()
    stage = plan.current_stage
    tenants = [f"t{i:03d}" for i in range(CAPACITY)]
    assert ingest_events(*(outcome(plan, segments={"tenant": t}) for t in tenants)).stored
    assert ingest_events(outcome(plan, segments={"tenant": "late", "lang": "ja"})).stored == 1
    assert not SegmentAggregate.objects.filter(stage=stage).exists()
    assert PendingRollup.objects.filter(stage=stage).count() == 2
    fold([stage.pk])
    assert not PendingRollup.objects.filter(stage=stage).exists()
    # Another writer fills the lang group but for one value.
    SegmentAggregate.objects.bulk_create(
        SegmentAggregate(stage=stage, arm="control", dimension="lang", value=f"x{i:03d}")
        for i in range(CAPACITY - 2)
    )
    events = [outcome(plan, segments={"tenant": "t001", "lang": lang}) for lang in ("yy", "zz")]
    assert ingest_events(*events).stored == 2
    fold([stage.pk])
    fold([stage.pk])  # nothing pending: nothing changes
    rows = SegmentAggregate.objects.filter(stage=stage, arm="control")
    lang = {r.value: r.requests for r in rows.filter(dimension="lang")}
    assert len(lang) == CAPACITY + 1  # ja, x..., yy (the last free one), other (zz)
    assert (lang["ja"], lang["yy"], lang[OTHER]) == (1, 1, 1)
    tenant = {r.value: r.requests for r in rows.filter(dimension="tenant")}
    assert len(tenant) == CAPACITY + 1
    assert tenant[OTHER] == 1  # late
    assert tenant["t001"] == 3


def test_one_fold_of_many_batches_is_the_sum_of_a_fold_per_batch(path: None) -> None:
    """The same events, folded after every batch for one plan and once at the end for
    another: the same rows (counts and buckets exactly, sums to the last bits: both are sums
    of exactly rounded parts), cluster sums included (a unit's moves telescope; a unit stays
    in its segments, as units do: one that moves is booked where the fold first sees it)."""
    each, once = segmented_plan(), conftest.segmented_plan("tenant", "lang", key="once")
    batches = []
    for b in range(6):
        units = [(b * 7 + i) % 23 for i in range(40)]  # each unit in several batches
        batches.append([
            {"unit": f"u{u}", "latency_ms": 100.0 + 13 * i + b,
             "error": "timeout" if (b + i) % 9 == 0 else None,
             "segments": {"tenant": f"t{u % 5}", "lang": "ja" if u % 3 else "en"}}
            for i, u in enumerate(units)
        ])  # fmt: skip
    for batch in batches:
        assert ingest_events(*(outcome(each, **fields) for fields in batch)).stored == 40
        fold([each.current_stage_id])
    for batch in batches:
        assert ingest_events(*(outcome(once, **fields) for fields in batch)).stored == 40
    assert PendingRollup.objects.filter(stage_id=once.current_stage_id).count() == 6
    a, b = stage_segments(each.current_stage_id), stage_segments(once.current_stage_id)
    assert a.keys() == b.keys() and len(a) == 7
    for key in a:
        for arm in a[key]:
            x, y = aggregate_json.to_json(a[key][arm]), aggregate_json.to_json(b[key][arm])
            assert flat(x) == pytest.approx(flat(y), rel=1e-12), key
            assert x["requests"] == y["requests"] and x["latency"] == y["latency"]
            assert x["error_clusters"][0] == y["error_clusters"][0]  # units


def test_a_fold_takes_its_pending_rows_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold holds at most FOLD_ROWS pending rows in memory at once: a read folds chunk after
    chunk until none is left; an ingest's fold (``wait=False``) folds one chunk."""
    monkeypatch.setattr(segment_rollup, "FOLD_ROWS", 2)
    plan = segmented_plan()
    stage_id = plan.current_stage_id
    for i in range(5):
        assert ingest_events(outcome(plan, segments={"tenant": f"t{i}"})).stored == 1
    pending = PendingRollup.objects.filter(stage_id=stage_id)
    segment_rollup.fold([stage_id], wait=False)
    assert pending.count() == 3
    segments = stage_segments(stage_id)
    assert not pending.exists()
    assert sorted(segments) == [("tenant", f"t{i}") for i in range(5)]
    assert {arms["control"].requests for arms in segments.values()} == {1}


def flat(data: Any, path: str = "") -> dict[str, Any]:
    """A row's storage form as {path: number}."""
    if isinstance(data, dict):
        return {
            k: v for key, value in data.items() for k, v in flat(value, f"{path}/{key}").items()
        }
    if isinstance(data, list):
        return {k: v for i, value in enumerate(data) for k, v in flat(value, f"{path}/{i}").items()}
    return {path: data}


# --- feedback and metric values count in their outcome's segments --------------------------


def rating(outcome_event: dict[str, Any], score: int) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "decision_id": outcome_event["decision_id"], "score": score,
            "scale": "thumbs", "ts": time.time() - 1}  # fmt: skip


def metric_value(outcome_event: dict[str, Any], value: float) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "decision_id": outcome_event["decision_id"],
            "name": "task_completed", "value": value, "ts": time.time() - 1}  # fmt: skip


def send_feedback(*events: dict[str, Any]) -> Any:
    return feedback.feedback_ingest(identity=Everyone(), payload={"events": list(events)})


def send_values(*events: dict[str, Any]) -> Any:
    return metric_values.metrics_ingest(identity=Everyone(), payload={"events": list(events)})


def population(plan: MigrationPlan, arm: str) -> ArmAggregates:
    catch_up()
    return aggregate_json.from_json(
        StageAggregate.objects.get(stage_id=plan.current_stage_id, arm=arm).data
    )


def test_feedback_counts_in_its_outcome_s_segments(path: None) -> None:
    """Feedback is joined to its outcome by decision id: it adds to the segments the outcome
    carried (sums and the unit's cluster sums), whether it came after its outcome or before
    it (held, then counted when the outcome arrives)."""
    plan = segmented_plan()
    first = outcome(plan, unit="u1", segments={"tenant": "acme", "lang": "ja"})
    second = outcome(plan, unit="u1", segments={"tenant": "acme", "lang": "ja"})
    shop = outcome(plan, unit="u2", segments={"tenant": "shop", "lang": "en"})
    theirs = outcome(plan, unit="u3", arm="candidate", segments={"tenant": "acme"})
    plain = outcome(plan, unit="u4")
    assert send_feedback(rating(second, -1)).stored == 1  # held: its outcome is not stored
    ingest_events(first, shop, theirs, plain)
    send_feedback(rating(first, 1), rating(shop, 1), rating(theirs, -1), rating(plain, 1))
    ingest_events(second)  # the held feedback counts now
    segments = stage_segments(plan.current_stage_id)
    acme = segments[("tenant", "acme")]["control"]
    assert (acme.requests, acme.feedback_n, acme.feedback_sum) == (2, 2, 1.0)
    # u1 rated twice (1 and 0 on the [0, 1] scale) in two requests: one unit, Y 1 N 2 for
    # the score, Y 2 N 2 for the rate; its moves were all booked in acme.
    clusters = acme.feedback_clusters
    assert (clusters.units, clusters.sum_yy, clusters.sum_yn, clusters.sum_nn) == (1, 1.0, 2.0, 4.0)
    rate = acme.feedback_rate_clusters
    assert (rate.units, rate.sum_yy, rate.sum_yn, rate.sum_nn) == (1, 4.0, 4.0, 4.0)
    assert segments[("lang", "ja")]["control"].feedback_n == 2
    assert (segments[("lang", "en")]["control"].feedback_sum) == 1.0
    assert (segments[("tenant", "acme")]["candidate"].feedback_n) == 1
    assert segments[("tenant", "acme")]["candidate"].feedback_sum == 0.0
    # Per dimension the segments add up to the population but for u4 (no segment values).
    control = population(plan, "control")
    assert control.feedback_n == 4
    tenants = ArmAggregates.merge(
        arms["control"] for (d, _), arms in segments.items() if d == "tenant"
    )
    assert (tenants.feedback_n, tenants.feedback_sum) == (3, 2.0)
    assert tenants.feedback_clusters.units == control.feedback_clusters.units - 1


def test_metric_values_count_in_their_outcome_s_segments(path: None) -> None:
    """A per-request metric counts in its outcome's segments, carried by the outcome or sent
    on its own (``client.metric()``) after the outcome or before it."""
    plan = segmented_plan()
    MetricDefinition.objects.create(plan=plan, name="task_completed")
    first = outcome(plan, unit="u1", segments={"tenant": "acme", "lang": "ja"},
                    metrics={"task_completed": 1})  # fmt: skip
    second = outcome(plan, unit="u1", segments={"tenant": "acme", "lang": "ja"})
    shop = outcome(plan, unit="u2", segments={"tenant": "shop", "lang": "en"})
    plain = outcome(plan, unit="u4")
    assert send_values(metric_value(second, 0)).stored == 1  # held
    ingest_events(first, shop, plain)
    send_values(metric_value(shop, 1), metric_value(plain, 1))
    ingest_events(second)
    segments = stage_segments(plan.current_stage_id)
    acme = segments[("tenant", "acme")]["control"].metrics["task_completed"]
    assert (acme.n, acme.total) == (2, 1.0)
    assert (acme.clusters.units, acme.clusters.sum_yy, acme.clusters.sum_nn) == (1, 1.0, 4.0)
    assert segments[("lang", "ja")]["control"].metrics["task_completed"].n == 2
    en = segments[("lang", "en")]["control"].metrics["task_completed"]
    assert (en.n, en.total, en.clusters.units) == (1, 1.0, 1)
    whole = population(plan, "control").metrics["task_completed"]
    assert (whole.n, whole.total, whole.clusters.units) == (4, 3.0, 3)
    langs = ArmAggregates.merge(
        arms["control"] for (d, _), arms in segments.items() if d == "lang"
    ).metrics["task_completed"]
    assert (langs.n, langs.total, langs.clusters.units) == (3, 2.0, 2)


def test_feedback_and_metrics_of_uncounted_units_count_in_no_segment(path: None) -> None:
    """Excluded and overridden units are counted in neither arm: nor are their feedback and
    metric values, in the population or in any segment (sent before or after the outcome)."""
    plan = segmented_plan()
    MetricDefinition.objects.create(plan=plan, name="task_completed")
    acme = {"tenant": "acme"}
    excluded = outcome(plan, reason="EXCLUDED", segments=acme, metrics={"task_completed": 0})
    overridden = outcome(plan, arm="candidate", reason="OVERRIDE", segments=acme)
    early = outcome(plan, arm="candidate", reason="OVERRIDE", segments=acme)
    counted = outcome(plan, segments=acme)
    send_feedback(rating(early, -1))
    send_values(metric_value(early, 0))
    ingest_events(excluded, overridden, early, counted)
    send_feedback(rating(excluded, -1), rating(overridden, -1), rating(counted, 1))
    send_values(metric_value(excluded, 0), metric_value(overridden, 0), metric_value(counted, 1))
    assert not Feedback.objects.filter(outcome__isnull=True).exists()  # all linked
    assert not MetricValue.objects.filter(outcome__isnull=True).exists()
    arms = stage_segments(plan.current_stage_id)[("tenant", "acme")]
    assert set(arms) == {"control"}  # no candidate row: nothing of the candidate counted
    control = arms["control"]
    assert (control.requests, control.feedback_n, control.feedback_sum) == (1, 1, 1.0)
    values = control.metrics["task_completed"]
    assert (values.n, values.total) == (1, 1.0)
    whole = population(plan, "control")
    assert (whole.feedback_n, whole.metrics["task_completed"].n) == (1, 1)
    assert not StageAggregate.objects.filter(stage_id=plan.current_stage_id, arm="candidate")


def test_feedback_and_metrics_beyond_the_capacity_go_to_other(path: None) -> None:
    """Bounded whatever the cardinality: feedback and metric values add to the row their
    outcome's value has, so a value that found no room adds to ``other``, as its outcome did."""
    plan = segmented_plan()
    MetricDefinition.objects.create(plan=plan, name="task_completed")
    events = [
        outcome(plan, unit=f"u{i}", segments={"tenant": f"t{i:03d}"}) for i in range(CAPACITY + 50)
    ]
    assert ingest_events(*events).stored == CAPACITY + 50
    assert send_feedback(*(rating(e, 1) for e in events)).stored == CAPACITY + 50
    assert send_values(*(metric_value(e, 1) for e in events)).stored == CAPACITY + 50
    fold([plan.current_stage_id])
    rows = SegmentAggregate.objects.filter(stage=plan.current_stage, dimension="tenant")
    assert rows.count() == CAPACITY + 1
    other = aggregate_json.from_json(rows.get(value=OTHER).data)
    assert other.requests == other.feedback_n == other.metrics["task_completed"].n == 50
    assert other.feedback_clusters.units == other.metrics["task_completed"].clusters.units == 50
    own = [aggregate_json.from_json(r.data) for r in rows.exclude(value=OTHER)]
    assert {(a.feedback_n, a.metrics["task_completed"].n) for a in own} == {(1, 1)}
    summed = ArmAggregates.merge([other, *own])
    whole = population(plan, "control")
    assert summed.feedback_n == whole.feedback_n == CAPACITY + 50
    assert summed.feedback_clusters == whole.feedback_clusters
    assert summed.metrics["task_completed"] == whole.metrics["task_completed"]
