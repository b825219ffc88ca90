"""The shadow pipeline's storage, claims, budget and aggregates, on the database.

The candidate's call is a deterministic function here; the live test against the provider
simulator through the real vendor SDKs is in test_shadow_live.py."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from migrations_app.models import (
    AuditEvent,
    MigrationPlan,
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
)
from migrations_app.outcomes.selectors import stage_totals
from migrations_app.plans import lifecycle
from migrations_app.shadow import claims, pipeline, retention, samples
from migrations_app.shadow.selectors import example_pairs
from tests.factories import make_plan, person
from tests.outcomes.conftest import Everyone

pytestmark = pytest.mark.django_db


def shadow_plan(**fields: Any) -> MigrationPlan:
    plan = make_plan()
    MigrationPlan.objects.filter(pk=plan.pk).update(**fields)
    lifecycle.plan_start(plan_key=plan.key, actor=person())  # phase 0: shadow 10 %
    plan.refresh_from_db()
    assert plan.current_stage.kind == "shadow"
    return plan


def sample(plan: MigrationPlan, **fields: Any) -> dict[str, Any]:
    event = {
        "id": uuid.uuid4().hex,
        "decision_id": uuid.uuid4().hex,
        "plan": plan.key,
        "run": plan.current_run.number,
        "plan_version": plan.version,
        "unit": f"user-{uuid.uuid4().hex[:6]}",
        "ts": time.time(),
        "request": {
            "messages": [
                {"role": "system", "content": "You are a support agent."},
                {"role": "user", "content": "My order 1234 never arrived."},
            ],
            "params": {"temperature": 0.2},
        },
        "control": {
            "text": "Sorry to hear that! I have reshipped order 1234.",
            "latency_ms": 900.0,
            "error": None,
            "input_tokens": 1000,
            "output_tokens": 1000,
        },
    }
    event.update(fields)
    return event


def ingest(*events: dict[str, Any]):
    return samples.shadow_samples_ingest(identity=Everyone(), payload={"samples": list(events)})


def answer(text: str = "I have reshipped order 1234.", error: str | None = None):
    def call(s: ShadowSample) -> pipeline.CandidateResult:
        return pipeline.CandidateResult(
            text=text, latency_ms=700.0, error=error, input_tokens=1000, output_tokens=1000
        )

    return call


def same(s: ShadowSample, r: pipeline.CandidateResult) -> dict[str, Any]:
    return {"exact_match": s.control["text"] == r.text, "similarity": 0.5}


def test_samples_are_redacted_before_they_are_stored_and_bad_ones_named():
    plan = shadow_plan(redaction_patterns=[r"order \d+"])
    leaky = sample(plan)
    leaky["request"]["messages"][1]["content"] = (
        "I'm jane.doe@example.com, key sk-ant-api03-abcdefghijklmnop1234, call +1 415 555 0100"
    )
    result = ingest(
        leaky,
        sample(plan, request={"messages": []}),
        sample(plan, control={"latency_ms": -1}),
        {**sample(plan), "plan": "nope"},
    )
    assert result.stored == 1
    assert [(r.index, r.field) for r in result.rejected] == [
        (1, "request.messages"),
        (2, "latency_ms"),
        (3, "plan"),
    ]
    stored = ShadowSample.objects.get(pk=leaky["id"])
    content = stored.request["messages"][1]["content"]
    assert content == "I'm [email], key [secret], call [phone]"
    assert "1234" not in stored.control["text"]
    assert ingest(leaky).duplicates == 1


def test_each_sample_is_compared_and_counted_once():
    plan = shadow_plan()
    events = [sample(plan) for _ in range(5)]
    ingest(*events)
    ids = [e["id"] for e in events]
    first = pipeline.shadow_run(ids, call=answer(), compare=same)
    again = pipeline.shadow_run(ids, call=answer(), compare=same)
    assert (first["done"], again["claimed"]) == (5, 0)
    candidate = stage_totals(plan.current_stage)["candidate"]
    assert candidate.requests == 5 and candidate.cost_n == 5
    pairs = ShadowAggregate.objects.get(stage=plan.current_stage).data
    assert pairs["n"] == 5 and pairs["neither"] == 5
    assert pairs["exact_match_sum"] == 0.0 and pairs["similarity_sum"] == 2.5


def test_a_worker_killed_mid_call_loses_nothing_and_doubles_nothing():
    plan = shadow_plan()
    event = sample(plan)
    ingest(event)
    [dead] = claims.shadow_claim([event["id"]])  # worker A claims, then dies mid-call
    assert claims.shadow_claim([event["id"]]) == []  # leased: nobody else takes it yet

    ShadowSample.objects.filter(pk=event["id"]).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    assert claims.shadow_sweep() == [event["id"]]
    assert (
        pipeline.shadow_run([event["id"]], call=answer(error="timeout"), compare=same)["done"] == 1
    )
    # worker A's answer arrives after all: it matches no current claim
    late = pipeline.CandidateResult(text="late", latency_ms=1.0)
    assert pipeline.shadow_complete_many([(dead, late, {})]) == 0

    stored = ShadowSample.objects.get(pk=event["id"])
    assert (stored.status, stored.attempts, stored.candidate["error"]) == ("done", 2, "timeout")
    pairs = ShadowAggregate.objects.get(stage=plan.current_stage).data
    assert (pairs["n"], pairs["candidate_only"]) == (1, 1)
    assert stage_totals(plan.current_stage)["candidate"].errors == 1


def test_shadowing_stops_at_the_daily_budget_within_one_request():
    plan = shadow_plan(shadow_budget_usd_per_day=Decimal("0.10"))
    per_call = (
        1000 * float(plan.candidate_model.input_price_per_mtok)
        + 1000 * float(plan.candidate_model.output_price_per_mtok)
    ) / 1e6
    events = [sample(plan) for _ in range(40)]
    ingest(*events)
    ids = [e["id"] for e in events]
    for chunk in (ids[:15], ids[15:]):
        pipeline.shadow_run(chunk, call=answer(), compare=same)
    done = ShadowSample.objects.filter(plan=plan, status=ShadowStatus.DONE)
    spent = sum(s.candidate_cost_usd for s in done)
    assert 0.10 - per_call < spent <= 0.10
    skipped = ShadowSample.objects.filter(plan=plan, status=ShadowStatus.SKIPPED)
    assert skipped.count() == 40 - done.count() > 0
    assert {s.skip_reason for s in skipped} == {"daily shadow budget of $0.10 reached"}
    note = AuditEvent.objects.get(plan=plan, action="shadow_budget_reached")
    assert "daily shadow budget is spent" in note.reason


def test_the_budget_holds_when_the_application_reports_no_token_counts():
    """Without control's token counts the reservation is a characters / 4 estimate, not
    nothing: otherwise every sample would be claimed whatever the cap."""
    plan = shadow_plan(shadow_budget_usd_per_day=Decimal("0.01"))
    control = {"text": "x" * 4000, "latency_ms": 900.0, "error": None}  # ~1,000 tokens
    events = [sample(plan, control=control) for _ in range(20)]
    ingest(*events)
    pipeline.shadow_run([e["id"] for e in events], call=answer(), compare=same)
    done = ShadowSample.objects.filter(plan=plan, status=ShadowStatus.DONE).count()
    skipped = ShadowSample.objects.filter(plan=plan, status=ShadowStatus.SKIPPED).count()
    # Each call reserves ~(12 + 1,000 tokens) at $3 / $15 per 1M: about $0.015 > the cap.
    assert (done, skipped) == (0, 20)


def test_a_comparison_that_fails_keeps_the_answer_and_the_batch():
    plan = shadow_plan()
    events = [sample(plan) for _ in range(5)]
    ingest(*events)

    def flaky(s: ShadowSample, r: pipeline.CandidateResult) -> dict[str, Any]:
        if s.pk == events[2]["id"]:
            raise ValueError("a bug in a scorer")
        return same(s, r)

    counts = pipeline.shadow_run([e["id"] for e in events], call=answer(), compare=flaky)
    assert counts["done"] == 5
    broken = ShadowSample.objects.get(pk=events[2]["id"])
    assert (broken.status, broken.comparison) == (ShadowStatus.DONE, {"error": "comparison failed"})
    assert ShadowAggregate.objects.get(stage=plan.current_stage).data["n"] == 5


def test_retention_purges_samples():
    plan = shadow_plan(shadow_retention_days=3)
    ingest(sample(plan), sample(plan))
    assert retention.shadow_purge(now=timezone.now() + timedelta(days=3, minutes=1)) == 2


def test_pages_show_the_latest_pairs_failures_first():
    plan = shadow_plan()
    events = [sample(plan) for _ in range(4)]
    ingest(*events)
    pipeline.shadow_run([e["id"] for e in events[:3]], call=answer(), compare=same)
    pipeline.shadow_run([events[3]["id"]], call=answer(text="", error="rate_limited"), compare=same)
    pairs = example_pairs(plan)
    assert len(pairs) == 3
    assert pairs[0].candidate == "(no answer: rate_limited)"
    assert pairs[0].prompt == "My order 1234 never arrived."
    assert pairs[1].candidate == "I have reshipped order 1234."


def test_a_call_that_raises_costs_only_its_own_sample_and_is_retried_a_bounded_number_of_times():
    plan = shadow_plan()
    events = [sample(plan) for _ in range(6)]
    ingest(*events)
    broken = events[3]["id"]
    good = answer()

    def call(s: ShadowSample) -> pipeline.CandidateResult:
        if s.pk == broken:
            raise TypeError("create() got multiple values for keyword argument 'timeout'")
        return good(s)

    counts = pipeline.shadow_run([e["id"] for e in events], call=call, compare=same)
    assert (counts["done"], counts["released"]) == (5, 1)
    assert ShadowAggregate.objects.get(stage=plan.current_stage).data["n"] == 5
    retried = ShadowSample.objects.get(pk=broken)
    assert (retried.status, retried.failures) == (ShadowStatus.PENDING, 1)

    for _ in range(claims.MAX_FAILURES - 1):  # the sweeper hands it on, and it breaks again
        pipeline.shadow_run([broken], call=call, compare=same)
    failed = ShadowSample.objects.get(pk=broken)
    assert failed.status == ShadowStatus.FAILED
    assert f"{claims.MAX_FAILURES} attempts went wrong" in failed.skip_reason
    assert "TypeError" in failed.skip_reason
    assert pipeline.shadow_run([broken], call=call, compare=same)["claimed"] == 0


def test_a_sample_whose_worker_keeps_dying_is_failed_not_claimed_forever():
    plan = shadow_plan()
    event = sample(plan)
    ingest(event)
    for _ in range(claims.MAX_FAILURES):
        claimed = claims.shadow_claim([event["id"]])  # the worker dies mid-call each time
        ShadowSample.objects.filter(pk=event["id"]).update(
            lease_until=timezone.now() - timedelta(seconds=1)
        )
    assert len(claimed) == 1
    assert claims.shadow_claim([event["id"]]) == []
    stored = ShadowSample.objects.get(pk=event["id"])
    assert (stored.status, stored.failures, stored.candidate_cost_usd) == (
        ShadowStatus.FAILED,
        claims.MAX_FAILURES,
        None,
    )
    assert "worker stopped mid-call" in stored.skip_reason
    assert claims.shadow_sweep() == []


def test_an_answer_the_database_refuses_costs_only_its_own_sample():
    """A comparison with NaN (jsonb refuses it) failed the batch's one transaction: every
    answer of the batch, paid for, was lost and called again at the next sweep."""
    plan = shadow_plan()
    events = [sample(plan) for _ in range(5)]
    ingest(*events)
    bad = events[1]["id"]

    def compare(s: ShadowSample, r: pipeline.CandidateResult) -> dict[str, Any]:
        return {"similarity": float("nan") if s.pk == bad else 0.5}

    counts = pipeline.shadow_run([e["id"] for e in events], call=answer(), compare=compare)
    assert counts["done"] == 4
    assert ShadowAggregate.objects.get(stage=plan.current_stage).data["n"] == 4
    stored = ShadowSample.objects.get(pk=bad)
    assert (stored.status, stored.failures) == (ShadowStatus.PENDING, 1)


def test_an_answer_with_a_nul_is_stored_without_it():
    plan = shadow_plan()
    event = sample(plan)
    ingest(event)
    counts = pipeline.shadow_run([event["id"]], call=answer(text="ok\x00 then"), compare=same)
    assert counts["done"] == 1
    assert ShadowSample.objects.get(pk=event["id"]).candidate["text"] == "ok then"


def test_at_the_time_limit_calls_not_started_are_given_back(monkeypatch: pytest.MonkeyPatch):
    plan = shadow_plan()
    events = [sample(plan) for _ in range(4)]
    ingest(*events)
    monkeypatch.setattr(pipeline, "COMPLETE_BATCH", 1)
    real = pipeline.shadow_complete_many
    raised = []

    def complete_then_time_out(completed, **kw):
        stored = real(completed, **kw)
        if not raised:
            raised.append(True)
            raise TimeoutError("soft time limit")  # as Celery's SoftTimeLimitExceeded would
        return stored

    monkeypatch.setattr(pipeline, "shadow_complete_many", complete_then_time_out)
    with pytest.raises(TimeoutError):
        pipeline.shadow_run([e["id"] for e in events], call=answer(), compare=same, concurrency=1)
    statuses = sorted(ShadowSample.objects.filter(plan=plan).values_list("status", "failures"))
    assert statuses.count((ShadowStatus.DONE, 0)) >= 1
    # none left running for a lease to expire on: not called, so given back, no failure
    assert all(s in ((ShadowStatus.DONE, 0), (ShadowStatus.PENDING, 0)) for s in statuses)


def test_a_broker_that_is_down_does_not_fail_a_stored_batch(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks
):
    """The samples are committed before they are enqueued: a failing enqueue (the broker is
    Redis) is logged, the answer says stored, and the sweeper enqueues them later."""
    from kombu.exceptions import OperationalError

    from migrations_app.shadow import tasks

    def broker_down(ids: list[str]) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks, "enqueue_shadow_samples", broker_down)
    plan = shadow_plan()
    event = sample(plan, ts=time.time() - 3600)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert ingest(event).stored == 1
    assert len(callbacks) == 1
    assert claims.shadow_sweep() == [event["id"]]
