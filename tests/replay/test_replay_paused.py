"""A replay under a paused plan waits with it (a reviewer's finding): no call is claimed or
handed out again while the plan is paused, a replay whose calls are all in is not decided
until the plan runs again (then the decision acts on it: a failed gate rolls it back with a
page), and a cancel while paused cancels the replay and leaves the plan paused, paused once.
Before, the cancel was refused (409: "Cannot pause plan: it is paused"), the workers went on
calling the candidate, and the decision, finding the plan not running, was stored as "plan
moved on": after the resume the plan sat in its replay phase with no replay to run."""

from __future__ import annotations

from typing import Any

from migrations_app.models import AuditEvent, MigrationPlan, PlanStatus, ReplayCall, ReplayRun
from migrations_app.plans import lifecycle
from migrations_app.replay import claims, decide, services
from tests.factories import person
from tests.replay.test_replay_api import _answer_all, _client, _dataset, _started
from tests.replay.test_replay_api import pytestmark as pytestmark  # the database


def _pause(run: ReplayRun) -> MigrationPlan:
    lifecycle.plan_pause(plan_key=run.plan.key, actor=person(), reason="looking at it")
    return MigrationPlan.objects.get(pk=run.plan_id)


def test_no_call_is_claimed_or_handed_out_while_the_plan_is_paused(monkeypatch: Any) -> None:
    _dataset()
    run = _started(monkeypatch)
    ids = services.pending_ids(run)
    _pause(run)
    assert claims.replay_claim(ids) == []
    assert set(ReplayCall.objects.filter(replay=run).values_list("status", flat=True)) == {
        "pending"
    }
    lifecycle.plan_resume(plan_key=run.plan.key, actor=person())
    assert len(claims.replay_claim(ids)) == len(ids)  # running again: the calls go on


def test_a_replay_is_decided_when_its_plan_runs_again(monkeypatch: Any) -> None:
    _dataset()
    run = _started(monkeypatch)  # on_fail: stop
    _answer_all(run, good=3)  # a failing gate
    plan = _pause(run)
    assert decide.replay_decide(replay_id=run.pk) == ""  # waits with the plan
    run.refresh_from_db()
    assert run.status == "running"
    assert MigrationPlan.objects.get(pk=plan.pk).status == PlanStatus.PAUSED
    lifecycle.plan_resume(plan_key=plan.key, actor=person())
    counts, _ = services.replay_sweep()
    assert counts["decided"] == 1
    run.refresh_from_db()
    assert (run.status, run.decision) == ("failed", "stopped")
    assert MigrationPlan.objects.get(pk=plan.pk).status == PlanStatus.ROLLED_BACK


def test_a_cancel_while_paused_cancels_and_leaves_the_plan_paused(monkeypatch: Any) -> None:
    _dataset()
    run = _started(monkeypatch)
    plan = _pause(run)
    answer = _client(["admin"]).post(
        f"/api/v1/plans/{plan.key}/replay/cancel", {"reason": "wrong set"},
        content_type="application/json",
    )  # fmt: skip
    assert answer.status_code == 200, answer.json()
    assert answer.json()["replay"]["status"] == "cancelled"
    assert set(ReplayCall.objects.filter(replay=run).values_list("status", flat=True)) == {
        "cancelled"
    }
    assert MigrationPlan.objects.get(pk=plan.pk).status == PlanStatus.PAUSED
    assert AuditEvent.objects.filter(plan=plan, action="pause").count() == 1
    # Resuming starts the replay again, as after a cancel of a running plan.
    lifecycle.plan_resume(plan_key=plan.key, actor=person())
    counts, ids = services.replay_sweep()
    assert counts["started"] == 1 and len(ids) == 24
