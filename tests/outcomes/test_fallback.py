"""Outcomes of complete()'s fallback: stored with their reason, counted in neither arm (the
candidate's own failure is the outcome that counts), and feedback on such an answer linked but
not counted."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from migrations_app.models import Feedback, MigrationPlan, Outcome, StageAggregate, UnitTotals
from migrations_app.outcomes import aggregate_json, feedback, ingest, store
from migrations_app.outcomes.segment_rollup import catch_up
from tests.outcomes.conftest import Everyone, outcome, split_plan

pytestmark = pytest.mark.django_db


@pytest.fixture(params=[True, False], ids=["fast-path", "portable-path"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(store, "FAST_PATH", request.param)
    yield


def stage_totals(plan: MigrationPlan, arm: str) -> Any:
    catch_up()
    row = StageAggregate.objects.filter(stage=plan.current_stage, arm=arm).first()
    return aggregate_json.from_json(row.data) if row is not None else None


def fallback_pair(plan: MigrationPlan, unit: str = "u-fb") -> tuple[dict[str, Any], dict[str, Any]]:
    """What complete() sends for one request: the candidate's failure, control's answer."""
    decision = uuid.uuid4().hex
    failed = outcome(
        plan, decision_id=decision, unit=unit, arm="candidate", error="server_error",
        input_tokens=None, output_tokens=None,
    )  # fmt: skip
    served = outcome(plan, decision_id=decision, unit=unit, fallback="candidate_error")
    return failed, served


def test_the_candidates_failure_counts_and_the_fallback_is_stored_apart(path: None) -> None:
    plan = split_plan()
    failed, served = fallback_pair(plan)
    plain = outcome(plan, arm="control")
    result = ingest.outcomes_ingest(
        identity=Everyone(), payload={"events": [failed, served, plain]}
    )
    assert (result.stored, result.rejected) == (3, [])
    rows = {o.pk: o for o in Outcome.objects.filter(plan=plan)}
    assert (rows[failed["id"]].fallback, rows[failed["id"]].arm) == ("", "candidate")
    assert (rows[served["id"]].fallback, rows[served["id"]].arm) == ("candidate_error", "control")
    assert rows[served["id"]].cost_usd is not None  # priced: the fallback is on the bill
    assert rows[plain["id"]].fallback == ""
    candidate = stage_totals(plan, "candidate")
    assert (candidate.requests, candidate.errors_by_kind) == (1, {"server_error": 1})
    # Control counts only its own unit's request: the fallback's unit is the candidate's.
    assert stage_totals(plan, "control").requests == 1
    assert set(UnitTotals.objects.values_list("arm", "unit")) == {
        ("candidate", "u-fb"),
        ("control", plain["unit"]),
    }


def test_a_context_window_fallback_counts_in_neither_arm(path: None) -> None:
    plan = split_plan()
    event = outcome(plan, fallback="context_window")
    assert ingest.outcomes_ingest(identity=Everyone(), payload={"events": [event]}).stored == 1
    assert Outcome.objects.get(pk=event["id"]).fallback == "context_window"
    assert stage_totals(plan, "control") is None and stage_totals(plan, "candidate") is None
    assert not UnitTotals.objects.exists()


def test_a_bad_fallback_is_rejected_by_name() -> None:
    plan = split_plan()
    events = [
        outcome(plan, fallback="maybe"),
        outcome(plan, fallback=True),
        outcome(plan, fallback=0),
        outcome(plan, arm="candidate", fallback="candidate_error"),
        outcome(plan, fallback=None),
        outcome(plan, fallback=""),
    ]
    result = ingest.outcomes_ingest(identity=Everyone(), payload={"events": events})
    assert result.stored == 2
    assert [(r.index, r.field, r.code) for r in result.rejected] == [
        (0, "fallback", "invalid"),
        (1, "fallback", "invalid"),
        (2, "fallback", "invalid"),
        (3, "fallback", "invalid"),
    ]
    assert stage_totals(plan, "control").requests == 2


@pytest.mark.parametrize("feedback_first", [True, False], ids=["held", "after"])
def test_feedback_on_a_fallback_answer_is_linked_to_it_and_not_counted(
    path: None, feedback_first: bool
) -> None:
    plan = split_plan()
    failed, served = fallback_pair(plan)
    rating = {
        "id": uuid.uuid4().hex, "decision_id": failed["decision_id"], "score": 1,
        "scale": "thumbs", "ts": time.time(),
    }  # fmt: skip
    if feedback_first:
        feedback.feedback_ingest(identity=Everyone(), payload=rating)
    ingest.outcomes_ingest(identity=Everyone(), payload={"events": [failed, served]})
    if not feedback_first:
        feedback.feedback_ingest(identity=Everyone(), payload=rating)
    assert Feedback.objects.get(pk=rating["id"]).outcome_id == served["id"]
    assert feedback.apply_held_feedback() == 0
    assert stage_totals(plan, "candidate").feedback_n == 0
    assert stage_totals(plan, "control") is None
