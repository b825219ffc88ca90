"""Ingest services: validation per event, exactly-once storage, cost, stages, feedback."""

from __future__ import annotations

import time
import uuid

import pytest

from migrations_app.models import (
    Feedback,
    Outcome,
    PlanStage,
    StageAggregate,
    UnitTotals,
    WindowAggregate,
)
from migrations_app.outcomes import aggregate_json, aggregation, feedback, ingest, retention
from migrations_app.outcomes.segment_rollup import catch_up
from migrations_app.plans import lifecycle
from tests.factories import make_plan, person
from tests.outcomes.conftest import Everyone, outcome, split_plan

pytestmark = pytest.mark.django_db


def totals(plan, arm: str):
    catch_up()
    row = StageAggregate.objects.get(stage=plan.current_stage, arm=arm)
    return aggregate_json.from_json(row.data)


def snapshot_of_tables():
    catch_up()
    return (
        sorted(Outcome.objects.values_list("pk", "latency_ms")),
        sorted(StageAggregate.objects.values_list("pk", "requests")),
        sorted(WindowAggregate.objects.values_list("pk", "requests", "errors")),
        sorted(UnitTotals.objects.values_list("pk", "requests")),
    )


def test_good_events_are_stored_and_each_bad_one_is_named():
    plan = split_plan()
    good = [outcome(plan), outcome(plan, arm="candidate", error="timeout")]
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": good})
    before = snapshot_of_tables()

    bad = [
        outcome(plan, latency_ms=-5),
        outcome(plan, arm="both"),
        {**outcome(plan), "plan": "no-such-plan"},
        outcome(plan, error="exploded"),
        outcome(plan, plan_version=plan.version + 7),
        outcome(plan, run=9),
        outcome(plan, ts=time.time() + 3600),
        outcome(plan, input_tokens="many"),
        {**outcome(plan), "unit": None},
        "not an object",
    ]
    fresh = [outcome(plan, arm="candidate"), outcome(plan)]
    result = ingest.outcomes_ingest(
        identity=Everyone(), payload={"events": [fresh[0], *bad, fresh[1]]}
    )

    assert result.stored == 2
    assert result.duplicates == 0
    assert [(r.index, r.field, r.code) for r in result.rejected] == [
        (1, "latency_ms", "out_of_range"),
        (2, "arm", "invalid"),
        (3, "plan", "plan_not_found"),
        (4, "error", "invalid"),
        (5, "plan_version", "unknown_version"),
        (6, "run", "run_mismatch"),
        (7, "ts", "out_of_range"),
        (8, "input_tokens", "invalid"),
        (9, "unit", "required"),
        (10, "event", "invalid"),
    ]
    # Only the two good events were added; nothing already stored changed.
    after = snapshot_of_tables()
    assert set(before[0]) <= set(after[0]) and len(after[0]) == len(before[0]) + 2
    assert totals(plan, "control").requests == 2
    assert totals(plan, "candidate").requests == 2
    assert totals(plan, "candidate").errors_by_kind == {"timeout": 1}


def test_a_retried_batch_is_stored_once():
    plan = split_plan()
    batch = [outcome(plan, unit="u1"), outcome(plan, unit="u1", error="rate_limited")]
    first = ingest.outcomes_ingest(identity=Everyone(), payload={"events": batch})
    agg_after_first = totals(plan, "control")
    second = ingest.outcomes_ingest(identity=Everyone(), payload={"events": batch})
    doubled = ingest.outcomes_ingest(identity=Everyone(), payload={"events": [batch[0], batch[0]]})

    assert (first.stored, first.duplicates) == (2, 0)
    assert (second.stored, second.duplicates) == (0, 2)
    assert (doubled.stored, doubled.duplicates) == (0, 2)
    assert Outcome.objects.filter(plan=plan).count() == 2
    assert totals(plan, "control") == agg_after_first
    assert agg_after_first.requests == 2 and agg_after_first.errors == 1
    # one unit with (Y, N) = (1 error, 2 requests)
    clusters = agg_after_first.error_clusters
    assert (clusters.units, clusters.sum_yy, clusters.sum_yn, clusters.sum_nn) == (1, 1, 2, 4)


def test_cost_comes_from_the_catalog_and_unknown_usage_is_unknown_cost():
    plan = split_plan()
    priced = outcome(plan, input_tokens=100_000, output_tokens=10_000)
    unknown = outcome(plan, input_tokens=None, output_tokens=50)
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": [priced, unknown]})

    control = plan.control_model
    expected = 0.1 * float(control.input_price_per_mtok) + 0.01 * float(
        control.output_price_per_mtok
    )
    assert Outcome.objects.get(pk=priced["id"]).cost_usd == pytest.approx(expected)
    assert Outcome.objects.get(pk=unknown["id"]).cost_usd is None
    agg = totals(plan, "control")
    assert (agg.requests, agg.cost_n) == (2, 1)
    assert agg.cost_sum == pytest.approx(expected)


def test_outcomes_of_a_paused_plan_are_stored_but_in_no_stage():
    plan = split_plan()
    lifecycle.plan_pause(plan_key=plan.key, actor=person())
    plan.refresh_from_db()
    event = outcome(plan)
    result = ingest.outcomes_ingest(identity=Everyone(), payload={"events": [event]})
    assert result.stored == 1
    stored = Outcome.objects.get(pk=event["id"])
    assert stored.stage_id is None and stored.run_id == plan.current_run_id
    catch_up()
    assert not StageAggregate.objects.filter(stage__plan=plan).exists()


def test_a_draft_plan_outcome_has_run_zero():
    plan = make_plan()
    event = outcome(plan)
    assert ingest.outcomes_ingest(identity=Everyone(), payload={"events": [event]}).stored == 1
    assert Outcome.objects.get(pk=event["id"]).run_id is None


def test_stale_snapshot_outcomes_belong_to_the_stage_they_were_routed_in():
    plan = split_plan()
    split_version = plan.version
    split_stage = plan.current_stage
    lifecycle.plan_advance(plan_key=plan.key, actor=person())  # -> rollout 10 %, a new stage
    plan.refresh_from_db()
    late = outcome(plan, plan_version=split_version)
    now = outcome(plan)
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": [late, now]})
    assert Outcome.objects.get(pk=late["id"]).stage_id == split_stage.pk
    assert Outcome.objects.get(pk=now["id"]).stage_id == plan.current_stage_id
    assert plan.current_stage_id != split_stage.pk and split_stage.weight_bp == 1000
    assert PlanStage.objects.get(pk=split_stage.pk).ended_at is not None


def test_feedback_before_its_outcome_is_held_then_counted_once_in_the_outcome_window():
    plan = split_plan()
    event = outcome(plan, ts=time.time() - 300, unit="u7")
    fb = {"id": uuid.uuid4().hex, "decision_id": event["decision_id"], "score": 4, "scale": "five"}
    fb["ts"] = time.time()

    first = feedback.feedback_ingest(identity=Everyone(), payload=fb)  # a single event, not a batch
    assert first.stored == 1
    assert Feedback.objects.get(pk=fb["id"]).outcome_id is None

    ingest.outcomes_ingest(identity=Everyone(), payload={"events": [event]})
    feedback.feedback_ingest(identity=Everyone(), payload={"events": [fb]})  # retried: a duplicate
    assert feedback.apply_held_feedback() == 0

    agg = totals(plan, "control")
    assert (agg.feedback_n, agg.feedback_sum) == (1, 0.75)
    catch_up()
    window = WindowAggregate.objects.get(stage=plan.current_stage, arm="control")
    assert window.window == aggregation.window_start(Outcome.objects.get(pk=event["id"]).ts)
    assert (window.feedback_n, window.feedback_sum) == (1, 0.75)
    assert Feedback.objects.get(pk=fb["id"]).outcome_id == event["id"]
    # the unit had one request and one feedback: feedback rate clusters (Y=1, N=1)
    rate = agg.feedback_rate_clusters
    assert (rate.units, rate.sum_yy, rate.sum_yn, rate.sum_nn) == (1, 1, 1, 1)


def test_feedback_after_its_outcome_counts_at_once_and_scales_normalise():
    plan = split_plan()
    events = [outcome(plan) for _ in range(3)]
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": events})
    result = feedback.feedback_ingest(
        identity=Everyone(),
        payload={
            "events": [
                {"id": "f1", "decision_id": events[0]["decision_id"], "score": -1, "ts": time.time()},
                {"id": "f2", "decision_id": events[1]["decision_id"], "score": 1, "scale": "thumbs", "ts": time.time()},
                {"id": "f3", "decision_id": events[2]["decision_id"], "score": 5, "scale": "five", "ts": time.time()},
                {"id": "f4", "decision_id": events[2]["decision_id"], "score": 0, "scale": "thumbs", "ts": time.time()},
                {"id": "f5", "decision_id": events[2]["decision_id"], "score": 6, "scale": "five", "ts": time.time()},
                {"id": "f6", "decision_id": events[2]["decision_id"], "score": 1, "scale": "stars", "ts": time.time()},
                {"id": "f7", "score": 1, "ts": time.time()},
            ]
        }
    )  # fmt: skip
    assert result.stored == 3
    assert [(r.index, r.field, r.code) for r in result.rejected] == [
        (3, "score", "out_of_range"),
        (4, "score", "out_of_range"),
        (5, "scale", "invalid"),
        (6, "decision_id", "required"),
    ]
    agg = totals(plan, "control")
    assert (agg.feedback_n, agg.feedback_sum, agg.feedback_sum_sq) == (3, 2.0, 2.0)


def test_purge_deletes_old_raw_rows_and_keeps_aggregates(settings):
    from datetime import timedelta

    from django.utils import timezone

    plan = split_plan()
    events = [outcome(plan) for _ in range(4)]
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": events})
    later = timezone.now() + timedelta(days=settings.TURNOUT_RAW_RETENTION_DAYS, hours=1)
    assert retention.outcomes_purge(now=later, batch=3) == 4
    assert not Outcome.objects.filter(plan=plan).exists()
    assert totals(plan, "control").requests == 4


def test_deleting_a_plan_still_deletes_its_outcomes_without_database_constraints():
    plan = split_plan()
    events = [outcome(plan) for _ in range(3)]
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": events})
    assert Outcome.objects.filter(plan=plan).count() == 3
    plan.delete()  # the ORM cascades (Outcome's foreign keys have no database constraint)
    assert not Outcome.objects.filter(pk__in=[e["id"] for e in events]).exists()


def test_token_counts_are_bounded_by_the_arms_model():
    """One outcome with 2**31 tokens priced at thousands of dollars and swung the cost
    guardrail: counts past the model's context window (input) or maximum output are
    refused, the event named. GPT-4o (control): 128k / 16,384; Claude Sonnet 4: 200k / 64k."""
    plan = split_plan()
    before = snapshot_of_tables()
    bad = [
        outcome(plan, input_tokens=2**31),
        outcome(plan, output_tokens=16_385),
        outcome(plan, input_tokens=128_001),
        outcome(plan, arm="candidate", output_tokens=64_001),
        outcome(plan, arm="candidate", input_tokens=10**12),
    ]
    result = ingest.outcomes_ingest(identity=Everyone(), payload={"events": bad})
    assert result.stored == 0
    assert [(r.index, r.field, r.code) for r in result.rejected] == [
        (0, "input_tokens", "over_model_limit"),
        (1, "output_tokens", "over_model_limit"),
        (2, "input_tokens", "over_model_limit"),
        (3, "output_tokens", "over_model_limit"),
        (4, "input_tokens", "over_model_limit"),
    ]
    assert "128000" in result.rejected[2].message.replace(",", "")
    assert snapshot_of_tables() == before

    at_limits = [
        outcome(plan, input_tokens=128_000, output_tokens=16_384),
        outcome(plan, arm="candidate", input_tokens=200_000, output_tokens=64_000),
    ]
    assert ingest.outcomes_ingest(identity=Everyone(), payload={"events": at_limits}).stored == 2


def test_a_shadow_samples_control_token_counts_are_bounded_too():
    from tests.shadow.test_shadow import sample, shadow_plan

    plan = shadow_plan()
    event = sample(plan)
    event["control"]["input_tokens"] = 2**31 - 1
    from migrations_app.shadow import samples

    [rejected] = samples.shadow_samples_ingest(
        identity=Everyone(), payload={"samples": [event]}
    ).rejected
    assert (rejected.field, rejected.code) == ("control.input_tokens", "over_model_limit")


def test_the_collector_paused_for_a_batch_is_resumed_after_it_even_when_it_fails():
    import gc

    from migrations_app.errors import ValidationFailed

    plan = split_plan()
    assert gc.isenabled()
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": [outcome(plan)]})
    assert gc.isenabled()
    with pytest.raises(ValidationFailed):  # a body that is no batch at all
        ingest.outcomes_ingest(identity=Everyone(), payload={"events": "no list"})
    assert gc.isenabled()
    # Paused by someone else: a batch leaves it paused.
    gc.disable()
    try:
        ingest.outcomes_ingest(identity=Everyone(), payload={"events": [outcome(plan)]})
        assert not gc.isenabled()
    finally:
        gc.enable()
