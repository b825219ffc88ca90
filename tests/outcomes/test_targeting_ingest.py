"""Outcomes of targeted decisions: excluded, overridden and unreadable-targeting decisions
are stored, marked and counted in neither arm (their feedback neither); a cohort-first stage
counts only its cohort's outcomes, a general stage only the units no cohort took; a reason or
cohort that is not one is rejected by name."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from migrations_app.models import Feedback, MigrationPlan, Outcome, StageAggregate, UnitTotals
from migrations_app.outcomes import aggregate_json, feedback, ingest, store
from migrations_app.outcomes.segment_rollup import catch_up
from migrations_app.plans import lifecycle
from migrations_app.plans import targeting as plan_targeting
from tests.factories import person, started_plan
from tests.outcomes.conftest import Everyone, outcome, split_plan

pytestmark = pytest.mark.django_db


@pytest.fixture(params=[True, False], ids=["fast-path", "portable-path"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(store, "FAST_PATH", request.param)
    yield


def requests(plan: MigrationPlan, arm: str) -> int:
    plan = MigrationPlan.objects.select_related("current_stage").get(pk=plan.pk)
    catch_up()
    row = StageAggregate.objects.filter(stage=plan.current_stage, arm=arm).first()
    return aggregate_json.from_json(row.data).requests if row is not None else 0


def ingest_events(*events: dict[str, Any]) -> Any:
    return ingest.outcomes_ingest(identity=Everyone(), payload={"events": list(events)})


def test_excluded_overridden_and_unreadable_are_stored_not_counted(path: None) -> None:
    plan = split_plan()
    excluded = outcome(plan, reason="EXCLUDED")
    overridden = outcome(plan, arm="candidate", reason="OVERRIDE")
    unreadable = outcome(plan, reason="ERROR")
    plain = outcome(plan, reason="SPLIT")
    assert ingest_events(excluded, overridden, unreadable, plain).stored == 4
    marks = dict(Outcome.objects.values_list("event_id", "uncounted"))
    assert marks == {
        excluded["id"]: "excluded",
        overridden["id"]: "override",
        unreadable["id"]: "error",
        plain["id"]: "",
    }
    assert (requests(plan, "control"), requests(plan, "candidate")) == (1, 0)
    assert list(UnitTotals.objects.values_list("unit", flat=True)) == [plain["unit"]]


def test_feedback_on_an_uncounted_decision_is_linked_not_counted() -> None:
    plan = split_plan()
    overridden = outcome(plan, arm="candidate", reason="OVERRIDE")
    ingest_events(overridden)
    # before and after its outcome: held, then applied; linked either way, never counted
    early = {
        "id": uuid.uuid4().hex,
        "decision_id": overridden["decision_id"],
        "score": 1,
        "scale": "thumbs",
        "ts": time.time(),
    }
    feedback.feedback_ingest(identity=Everyone(), payload={"events": [early]})
    late_outcome = outcome(plan, reason="EXCLUDED")
    held = {
        "id": uuid.uuid4().hex,
        "decision_id": late_outcome["decision_id"],
        "score": -1,
        "scale": "thumbs",
        "ts": time.time(),
    }
    feedback.feedback_ingest(identity=Everyone(), payload={"events": [held]})
    ingest_events(late_outcome)
    assert set(Feedback.objects.values_list("outcome_id", flat=True)) == {
        overridden["id"],
        late_outcome["id"],
    }
    for arm in ("control", "candidate"):
        catch_up()
        row = StageAggregate.objects.filter(arm=arm).first()
        assert row is None or aggregate_json.from_json(row.data).feedback_n == 0


def test_a_cohort_first_stage_counts_its_cohort_only(path: None) -> None:
    plan = started_plan(
        "chat",
        phases=[{"kind": "rollout", "percent": None, "steps": [{"cohort": "internal", "percent": 100}, 10, 100]}],
    )  # fmt: skip
    plan_targeting.rules_replace(
        plan_key="chat",
        rules=[{"when": [{"attribute": "internal", "op": "equals", "value": True}], "then": "cohort", "cohort": "internal"}],
        actor=person(),
    )  # fmt: skip
    plan = MigrationPlan.objects.select_related("current_run").get(pk=plan.pk)
    staff = outcome(plan, arm="candidate", cohort="internal")
    others = outcome(plan, arm="control")
    assert ingest_events(staff, others).stored == 2
    marks = dict(Outcome.objects.values_list("event_id", "uncounted"))
    assert marks == {staff["id"]: "", others["id"]: "other_cohort"}
    assert (requests(plan, "control"), requests(plan, "candidate")) == (0, 1)
    # the next step splits everyone else at 10 %: now the internal units are not compared
    lifecycle.plan_advance(plan_key="chat", actor=person())
    plan = MigrationPlan.objects.select_related("current_run").get(pk=plan.pk)
    staff, others = outcome(plan, arm="candidate", cohort="internal"), outcome(plan, arm="control")
    ingest_events(staff, others)
    marks = dict(Outcome.objects.values_list("event_id", "uncounted"))
    assert (marks[staff["id"]], marks[others["id"]]) == ("other_cohort", "")
    assert (requests(plan, "control"), requests(plan, "candidate")) == (1, 0)
    assert Outcome.objects.get(pk=staff["id"]).cohort == "internal"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"reason": "MAYBE"}, "reason"),
        ({"reason": 1}, "reason"),
        ({"cohort": "Not A Name"}, "cohort"),
        ({"cohort": ["internal"]}, "cohort"),
    ],
)
def test_a_bad_reason_or_cohort_is_rejected_by_name(fields: dict[str, Any], field: str) -> None:
    plan = split_plan()
    good = outcome(plan)
    result = ingest_events(outcome(plan, **fields), good)
    assert result.stored == 1
    ((index, named, code, _),) = [(r.index, r.field, r.code, r.message) for r in result.rejected]
    assert (index, named, code) == (0, field, "invalid")
