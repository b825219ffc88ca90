"""Per-request metrics at ingest: carried by outcomes, sent on their own (held until their
outcome, then counted or refused, purged when it never comes), checked against what the plan
declares, and rolled up with unit-level sums."""

from __future__ import annotations

import math
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from migrations_app.guardrails.stats import MetricSums
from migrations_app.models import (
    MetricDefinition,
    MetricValue,
    Outcome,
    StageAggregate,
    UnitTotals,
)
from migrations_app.outcomes import aggregate_json, ingest, metric_values
from migrations_app.outcomes.segment_rollup import catch_up
from migrations_app.plans.metrics import plan_metric_specs
from tests.outcomes.conftest import Everyone, outcome, split_plan

pytestmark = pytest.mark.django_db


class Only:
    """A key that may write these plans only."""

    def __init__(self, *plan_ids: int) -> None:
        self.plan_ids = set(plan_ids)

    def may_see(self, plan_pk: int) -> bool:
        return plan_pk in self.plan_ids


def declare(plan, name="task_completed", **fields):
    return MetricDefinition.objects.create(plan=plan, name=name, **fields)


def metric_sums(plan, arm: str, name: str) -> MetricSums:
    catch_up()
    row = StageAggregate.objects.get(stage=plan.current_stage, arm=arm)
    return aggregate_json.from_json(row.data).metrics.get(name, MetricSums())


def value(decision_id: str, name="task_completed", v=1, **fields):
    return {"id": uuid.uuid4().hex, "decision_id": decision_id, "name": name, "value": v,
            "ts": time.time() - 1, **fields}  # fmt: skip


def test_outcomes_carry_declared_metrics_and_checks():
    plan = split_plan()
    declare(plan)
    declare(plan, "rating", kind="mean", lower_bound=1, upper_bound=5,
            direction="higher_is_better")  # fmt: skip
    events = [
        outcome(plan, unit="u1", metrics={"task_completed": 1, "rating": 4.5, "refusal": 0}),
        outcome(plan, unit="u1", metrics={"task_completed": 0, "answer_chars": 120}),
        outcome(plan, unit="u2", metrics={"task_completed": 1}),
        outcome(plan, unit="u3"),
    ]
    result = ingest.outcomes_ingest(identity=Everyone(), payload={"events": events})
    assert result.stored == 4 and not result.rejected
    sums = metric_sums(plan, "control", "task_completed")
    # n 3, total 2; units u1 (Y 1, N 2) and u2 (Y 1, N 1): the unit-level sums.
    assert (sums.n, sums.total, sums.clusters.units) == (3, 2.0, 2)
    assert (
        sums.clusters.sum_yy == 2.0 and sums.clusters.sum_nn == 5.0 and sums.clusters.sum_yn == 3.0
    )
    assert metric_sums(plan, "control", "rating").total == 4.5
    assert metric_sums(plan, "control", "answer_chars").total == 120
    stored = Outcome.objects.get(event_id=events[0]["id"])
    assert stored.metrics == {"task_completed": 1.0, "rating": 4.5, "refusal": 0.0}
    assert Outcome.objects.get(event_id=events[3]["id"]).metrics is None
    # A retried batch counts nothing twice.
    again = ingest.outcomes_ingest(identity=Everyone(), payload={"events": events})
    assert again.duplicates == 4
    assert metric_sums(plan, "control", "task_completed").n == 3


@pytest.mark.parametrize(
    ("metrics", "field", "code"),
    [
        ({"undeclared": 1}, "metrics.undeclared", "metric_not_declared"),
        ({"task_completed": 2}, "metrics.task_completed", "out_of_range"),
        ({"task_completed": math.nan}, "metrics.task_completed", "invalid"),
        ({"task_completed": math.inf}, "metrics.task_completed", "invalid"),
        ({"task_completed": True}, "metrics.task_completed", "invalid"),
        ({"task_completed": "1"}, "metrics.task_completed", "invalid"),
        ({"rating": 6}, "metrics.rating", "out_of_range"),
        ({"rating": -1e308}, "metrics.rating", "out_of_range"),
        ({"Bad-Name": 1}, "metrics.Bad-Name", "invalid"),
        ({"x" * 5000: 1}, "metrics." + "x" * 48, "invalid"),
        ({"x" * 47 + "\x00": 1}, "metrics.?", "invalid"),
        ({"refusal": 0.5}, "metrics.refusal", "out_of_range"),
        ([1, 2], "metrics", "invalid"),
        ({f"m{i}": 1 for i in range(40)}, "metrics", "out_of_range"),
    ],
)
def test_bad_metrics_are_rejected_by_index_and_store_nothing(metrics, field, code):
    plan = split_plan()
    declare(plan)
    declare(plan, "rating", kind="mean", lower_bound=1, upper_bound=5)
    good = outcome(plan, metrics={"task_completed": 1})
    bad = outcome(plan, metrics=metrics)
    result = ingest.outcomes_ingest(identity=Everyone(), payload={"events": [good, bad]})
    assert result.stored == 1
    assert [(r.index, r.field, r.code) for r in result.rejected] == [(1, field, code)]
    assert not Outcome.objects.filter(event_id=bad["id"]).exists()
    assert metric_sums(plan, "control", "task_completed").n == 1


def test_a_value_past_the_global_bound_is_refused_whatever_the_stored_bounds():
    """Bounds written past the declaration's checks (SQL, the ORM) cannot let a value through
    whose square overflows the sums: it is refused by index, and the rest counted."""
    plan = split_plan()
    MetricDefinition.objects.create(
        plan=plan, name="big", kind="mean", lower_bound=-1.7e308, upper_bound=1.7e308
    )
    spec = plan_metric_specs(plan.pk)["big"]
    assert (spec.lower, spec.upper) == (-1e12, 1e12)
    events = [outcome(plan, unit="u1", metrics={"big": v}) for v in (1.6e308, 1e12, 1.6e308)]
    result = ingest.outcomes_ingest(identity=Everyone(), payload={"events": events})
    assert result.stored == 1
    assert [(r.index, r.field, r.code) for r in result.rejected] == [
        (0, "metrics.big", "out_of_range"),
        (2, "metrics.big", "out_of_range"),
    ]
    sums = metric_sums(plan, "control", "big")
    assert (sums.n, sums.total, sums.sum_sq) == (1, 1e12, 1e24)


def test_a_catalog_metric_serves_every_plan_and_a_plan_s_own_wins():
    plan, other = split_plan(), split_plan()
    MetricDefinition.objects.create(name="rating", kind="mean", lower_bound=0, upper_bound=10)
    declare(other, "rating", kind="mean", lower_bound=0, upper_bound=1)
    result = ingest.outcomes_ingest(identity=Everyone(), payload={"events": [
        outcome(plan, metrics={"rating": 7}), outcome(other, metrics={"rating": 7}),
    ]})  # fmt: skip
    assert result.stored == 1
    assert [(r.index, r.code) for r in result.rejected] == [(1, "out_of_range")]


def test_a_late_value_is_held_then_counted_when_its_outcome_arrives():
    plan = split_plan()
    declare(plan)
    event = outcome(plan, arm="candidate", unit="late-user")
    sent = metric_values.metrics_ingest(
        identity=Everyone(), payload={"events": [value(event["decision_id"], plan=plan.key)]}
    )
    assert sent.stored == 1 and not sent.rejected
    held = MetricValue.objects.get()
    assert held.outcome_id is None
    assert not UnitTotals.objects.exists()
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": [event]})
    held.refresh_from_db()
    assert held.outcome_id == event["id"]
    sums = metric_sums(plan, "candidate", "task_completed")
    assert (sums.n, sums.total, sums.clusters.units) == (1, 1.0, 1)
    assert UnitTotals.objects.get(unit="late-user").metrics == {"task_completed": [1, 1.0]}


def test_a_value_for_a_stored_outcome_counts_at_once_and_once():
    plan = split_plan()
    declare(plan)
    event = outcome(plan)
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": [event]})
    one = value(event["decision_id"], v=0)  # no plan named: found through the outcome
    for _ in range(2):
        metric_values.metrics_ingest(identity=Everyone(), payload=one)
    sums = metric_sums(plan, "control", "task_completed")
    assert (sums.n, sums.total) == (1, 0.0)


def test_late_values_are_checked_too():
    plan = split_plan()
    declare(plan)
    event = outcome(plan)
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": [event]})
    d = event["decision_id"]
    result = metric_values.metrics_ingest(identity=Everyone(), payload={"events": [
        value(d, name="nope"),
        value(d, v=3),
        value(d, v=math.nan),
        value(d, name="refusal", v=1),  # a check is Turnout's to compute
        value(d, plan="no-such-plan"),
        {"id": "x", "decision_id": d, "name": "task_completed"},
        value(str(uuid.uuid4()), name="never_declared_anywhere"),
    ]})  # fmt: skip
    assert [(r.index, r.field, r.code) for r in result.rejected] == [
        (0, "metrics.nope", "metric_not_declared"),
        (1, "metrics.task_completed", "out_of_range"),
        (2, "metrics.task_completed", "invalid"),
        (3, "metrics.refusal", "metric_not_declared"),
        (4, "plan", "plan_not_found"),
        (5, "value", "required"),
        (6, "metrics.never_declared_anywhere", "metric_not_declared"),
    ]
    assert result.stored == 0 and not MetricValue.objects.exists()


def test_the_key_s_plan_scope_holds_for_late_values():
    plan, other = split_plan(), split_plan()
    declare(plan)
    declare(other)
    event = outcome(other)
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": [event]})
    key = Only(plan.pk)
    # Naming a plan the key may not write, or a decision stored in one: refused.
    named = metric_values.metrics_ingest(
        identity=key, payload=value(event["decision_id"], plan=other.key)
    )
    found = metric_values.metrics_ingest(identity=key, payload=value(event["decision_id"]))
    assert [r.code for r in named.rejected + found.rejected] == ["plan_not_found"] * 2
    # Held for a decision not stored yet, then its outcome arrives in the other plan: refused.
    later = outcome(other)
    metric_values.metrics_ingest(identity=key, payload=value(later["decision_id"]))
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": [later]})
    held = MetricValue.objects.get(decision_id=later["decision_id"])
    assert held.outcome_id is None and held.refused
    assert metric_sums(other, "control", "task_completed").n == 0


def test_a_held_value_the_outcome_s_plan_does_not_bound_so_is_refused():
    plan, other = split_plan(), split_plan()
    declare(plan, "score", kind="mean", lower_bound=0, upper_bound=100)
    declare(other, "score", kind="mean", lower_bound=0, upper_bound=1)
    later = outcome(other)
    sent = metric_values.metrics_ingest(
        identity=Everyone(), payload=value(later["decision_id"], name="score", v=50)
    )
    assert sent.stored == 1  # plausible for some plan the key may write
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": [later]})
    held = MetricValue.objects.get()
    assert held.outcome_id is None and "between 0 and 1" in held.refused


def test_a_value_for_an_unknown_decision_is_held_then_purged():
    plan = split_plan()
    declare(plan)
    metric_values.metrics_ingest(
        identity=Everyone(), payload=value(uuid.uuid4().hex, plan=plan.key)
    )
    assert MetricValue.objects.filter(outcome__isnull=True).count() == 1
    assert metric_values.purge_held_metric_values() == 0  # not yet
    later = timezone.now() + timedelta(hours=metric_values.HELD_HOURS, minutes=1)
    assert metric_values.purge_held_metric_values(now=later) == 1
    assert not MetricValue.objects.exists()


def test_the_sweeper_counts_a_value_whose_outcome_is_already_stored():
    plan = split_plan()
    declare(plan)
    event = outcome(plan)
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": [event]})
    # As if their transactions had crossed: the value stored held, its outcome already there.
    MetricValue.objects.create(
        event_id="v1", decision_id=event["decision_id"], plan=plan, name="task_completed",
        value=1, ts=timezone.now(), received_at=timezone.now(),
    )  # fmt: skip
    assert metric_values.apply_held_metric_values() == 1
    assert metric_values.apply_held_metric_values() == 0
    assert metric_sums(plan, "control", "task_completed").n == 1


def test_held_values_refused_at_their_outcome_cost_the_same_statements_at_any_count():
    """Refusing held values is one statement for the batch, not one per value."""
    plan, other = split_plan(), split_plan()
    declare(plan, "score", kind="mean", lower_bound=0, upper_bound=100)
    declare(other, "score", kind="mean", lower_bound=0, upper_bound=1)

    def statements(n: int) -> int:
        events = [outcome(other) for _ in range(n)]
        for i, event in enumerate(events):  # plausible for plan, out of other's bounds
            metric_values.metrics_ingest(
                identity=Everyone(), payload=value(event["decision_id"], name="score", v=2 + i)
            )
        with CaptureQueriesContext(connection) as captured:
            ingest.outcomes_ingest(identity=Everyone(), payload={"events": events})
        refused = MetricValue.objects.filter(decision_id__in=[e["decision_id"] for e in events])
        assert [v.outcome_id is None and "between 0 and 1" in v.refused for v in refused] == [
            True
        ] * n
        return len(captured.captured_queries)

    statements(1)  # the plan, cached
    assert statements(2) == statements(7)
