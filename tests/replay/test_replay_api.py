"""The replay's API and services without a worker: what starts a replay, what is refused (with
its code and field, nothing changed), the calls it makes, cancel, and a decision from stored
values (the gates, the lifecycle action, counted once)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from migrations_app.api.keys import apikey_create
from migrations_app.datasets import services as dataset_services
from migrations_app.errors import DomainError
from migrations_app.models import (
    AuditEvent,
    MigrationPlan,
    PlanStatus,
    ReplayCall,
    ReplayItem,
    ReplayRun,
)
from migrations_app.plans import lifecycle
from migrations_app.replay import decide, services
from tests.factories import make_plan, person

pytestmark = pytest.mark.django_db

GATES = [{"metric": "exact_match", "threshold": 0.8}]


def _client(scopes: list[str]) -> Client:
    _, raw = apikey_create(name="ci-" + "-".join(scopes), scopes=scopes)
    return Client(HTTP_AUTHORIZATION=f"Bearer {raw}")


def _dataset(name: str = "tickets", items: int = 12, recorded: bool = True) -> None:
    dataset_services.dataset_create(
        name=name,
        created_by="test",
        items=[
            {
                "request": {"messages": [{"role": "user", "content": f"q{i}"}]},
                "reference": f"a{i}",
                **({"control_answer": f"a{i}"} if recorded else {}),
                "tags": ["t"],
            }
            for i in range(items)
        ],
    )


def _plan(on_fail: str = "stop", **replay: Any) -> MigrationPlan:
    settings = {"dataset": "tickets", "repeats": 2, "gates": GATES, "on_fail": on_fail, **replay}
    return make_plan(
        phases=[
            {"kind": "replay", "replay": settings},
            {"kind": "shadow", "percent": 10.0},
        ]
    )


def test_post_starts_a_draft_and_its_replay(monkeypatch):
    enqueued: list[list[int]] = []
    monkeypatch.setattr("migrations_app.replay.tasks.enqueue_calls", enqueued.append)
    _dataset()
    plan = _plan()
    answer = _client(["admin"]).post(
        f"/api/v1/plans/{plan.key}/replay", {}, content_type="application/json"
    )
    assert answer.status_code == 202, answer.json()
    body = answer.json()
    assert body["plan"]["status"] == "running" and body["plan"]["phase"] == "replay"
    assert body["plan"]["weight_bp"] == 0 and body["plan"]["shadow_bp"] == 0
    replay = body["replay"]
    assert (replay["items"], replay["repeats"], replay["calls_total"]) == (12, 2, 24)
    assert replay["progress"]["pending"] == 24
    assert len(enqueued) == 1 and len(enqueued[0]) == 24
    # Idempotent: a second start returns the same replay and makes no calls.
    again = _client(["admin"]).post(
        f"/api/v1/plans/{plan.key}/replay", {}, content_type="application/json"
    )
    assert again.json()["replay"]["id"] == replay["id"]
    assert ReplayCall.objects.count() == 24
    status = _client(["plans"]).get(f"/api/v1/plans/{plan.key}/replay")
    assert status.status_code == 200 and status.json()["replay"]["status"] == "running"


def test_two_starts_of_a_draft_at_once_both_follow_one_replay(monkeypatch):
    """The other start wins the draft's start between this one's read and its own start
    (409 'it is running'): this one follows the replay instead of failing a CI job."""
    monkeypatch.setattr("migrations_app.replay.tasks.enqueue_calls", lambda ids: None)
    _dataset()
    plan = _plan()
    real_start = lifecycle.plan_start

    def beaten(**kwargs: Any) -> Any:
        real_start(**kwargs)  # the other start
        return real_start(**kwargs)  # this one: the plan is running already

    monkeypatch.setattr(lifecycle, "plan_start", beaten)
    answer = _client(["admin"]).post(
        f"/api/v1/plans/{plan.key}/replay", {}, content_type="application/json"
    )
    assert answer.status_code == 202, answer.json()
    assert answer.json()["replay"]["calls_total"] == 24
    assert ReplayRun.objects.filter(plan=plan).count() == 1


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"dataset": "nope"}, 404, "dataset_not_found", "name"),
        ({"dataset": "tickets", "version": 9}, 404, "dataset_not_found", "version"),
        ({"dataset": "Bad Name"}, 400, "validation_failed", "dataset"),
        ({"version": "x"}, 400, "validation_failed", "version"),
    ],
)
def test_bad_requests_change_nothing(body, status, code, field):
    _dataset()
    plan = _plan()
    answer = _client(["admin"]).post(
        f"/api/v1/plans/{plan.key}/replay", body, content_type="application/json"
    )
    assert answer.status_code == status
    data = answer.json()
    assert data["code"] == code
    assert field in (data["details"].get("fields") or {}) or data["details"].get("field") == field
    plan.refresh_from_db()
    assert plan.status == PlanStatus.DRAFT and not ReplayRun.objects.exists()


def test_refusals_by_plan_and_scope():
    _dataset()
    plain = make_plan()  # the standard playbook: no replay phase
    admin = _client(["admin"])
    no_phase = admin.post(f"/api/v1/plans/{plain.key}/replay", {}, content_type="application/json")
    assert no_phase.status_code == 409 and no_phase.json()["code"] == "no_replay_phase"
    plan = _plan()
    reader = _client(["plans"]).post(
        f"/api/v1/plans/{plan.key}/replay", {}, content_type="application/json"
    )
    assert reader.status_code == 403
    none = admin.post(
        f"/api/v1/plans/{plan.key}/replay/cancel", {}, content_type="application/json"
    )
    assert none.status_code == 404 and none.json()["code"] == "replay_not_found"
    missing = admin.get("/api/v1/plans/no-such-plan/replay")
    assert missing.status_code == 404 and missing.json()["code"] == "plan_not_found"


def test_a_plan_whose_dataset_is_missing_cannot_start():
    plan = _plan()
    with pytest.raises(DomainError) as refused:
        lifecycle.plan_start(plan_key=plan.key, actor=person())
    assert refused.value.code == "plan_not_startable"
    assert "no dataset 'tickets'" in str(refused.value)


def test_a_set_made_for_another_plan_is_not_replayed(monkeypatch):
    """A set made for plan B holds B's prompts: plan A's phase (or --dataset) naming it finds
    no such set for A - the start checks, the API and the sweep alike."""
    monkeypatch.setattr("migrations_app.replay.tasks.enqueue_calls", lambda ids: None)
    other = make_plan()
    dataset_services.dataset_create(
        name="tickets", created_by="test", plan=other,
        items=[{"request": {"messages": [{"role": "user", "content": "b's prompt"}]}}],
    )  # fmt: skip
    plan = _plan()
    with pytest.raises(DomainError) as refused:
        lifecycle.plan_start(plan_key=plan.key, actor=person())
    assert refused.value.code == "plan_not_startable"
    assert "no dataset 'tickets'" in str(refused.value)
    admin = _client(["admin"])
    for body in ({}, {"dataset": "tickets"}):
        answer = admin.post(
            f"/api/v1/plans/{plan.key}/replay", body, content_type="application/json"
        )
        assert (answer.status_code, answer.json()["code"]) == (404, "dataset_not_found")
    # Started past the checks (the set made for the other plan later): the sweep skips it.
    _dataset("tickets-a")
    phase = plan.phases.get(kind="replay")
    phase.replay = {**phase.replay, "dataset": "tickets-a"}
    phase.save()
    lifecycle.plan_start(plan_key=plan.key, actor=person())
    phase.replay = {**phase.replay, "dataset": "tickets"}
    phase.save()
    counts, ids = services.replay_sweep()
    assert counts["started"] == 0 and ids == [] and not ReplayRun.objects.exists()
    # A set made for this plan, or for none, is replayed.
    _dataset("tickets")  # version 2, for no plan: the latest this plan may use
    counts, ids = services.replay_sweep()
    assert counts["started"] == 1 and len(ids) == 24
    assert ReplayRun.objects.get().dataset.version == 2


def _started(monkeypatch: Any, **kwargs: Any) -> ReplayRun:
    monkeypatch.setattr("migrations_app.replay.tasks.enqueue_calls", lambda ids: None)
    plan = _plan(**kwargs)
    lifecycle.plan_start(plan_key=plan.key, actor=person())
    run = services.replay_start(plan_id=plan.pk, created_by="test")
    assert run is not None
    return run


def _answer_all(run: ReplayRun, good: int) -> None:
    """Mark every call done with exact_match 1 for the first ``good`` items, 0 after."""
    for call in ReplayCall.objects.filter(replay=run):
        value = 1.0 if call.index < good else 0.0
        ReplayCall.objects.filter(pk=call.pk).update(
            status="done", values={"candidate": {"exact_match": value}}, cost_usd=0.001
        )


def test_decide_pass_advances_once(monkeypatch):
    _dataset()
    run = _started(monkeypatch)
    assert decide.replay_decide(replay_id=run.pk) == ""  # calls outstanding: nothing yet
    _answer_all(run, good=12)
    assert decide.replay_decide(replay_id=run.pk) == "pass"
    assert decide.replay_decide(replay_id=run.pk) == ""  # decided once
    run.refresh_from_db()
    assert (run.status, run.decision) == ("passed", "advanced")
    assert ReplayItem.objects.filter(replay=run).count() == 12
    assert run.summary["cost_usd"] == pytest.approx(0.024)
    plan = MigrationPlan.objects.get(pk=run.plan_id)
    assert (plan.phase_index, plan.current_stage.kind) == (1, "shadow")
    assert AuditEvent.objects.filter(plan=plan, action="advance").count() == 1


def test_decide_fail_waits_for_a_person_when_the_phase_says_so(monkeypatch):
    _dataset()
    run = _started(monkeypatch, on_fail="approval")
    _answer_all(run, good=3)
    assert decide.replay_decide(replay_id=run.pk) == "fail"
    run.refresh_from_db()
    assert run.decision == "awaiting_approval"
    plan = MigrationPlan.objects.get(pk=run.plan_id)
    assert (plan.status, plan.phase_index) == (PlanStatus.RUNNING, 0)
    note = AuditEvent.objects.get(plan=plan, action="replay")
    assert "A person decides" in note.reason


def test_cancel_then_resume_starts_again(monkeypatch):
    _dataset()
    run = _started(monkeypatch)
    answer = _client(["admin"]).post(
        f"/api/v1/plans/{run.plan.key}/replay/cancel", {"reason": "oops"},
        content_type="application/json",
    )  # fmt: skip
    assert answer.status_code == 200 and answer.json()["replay"]["status"] == "cancelled"
    assert set(ReplayCall.objects.filter(replay=run).values_list("status", flat=True)) == {
        "cancelled"
    }
    plan = MigrationPlan.objects.get(pk=run.plan_id)
    assert plan.status == PlanStatus.PAUSED
    lifecycle.plan_resume(plan_key=plan.key, actor=person())
    counts, ids = services.replay_sweep()
    assert counts["started"] == 1 and len(ids) == 24


def test_a_cancel_that_loses_to_the_decision_leaves_the_plan_as_decided(monkeypatch):
    """The replay is decided (the plan advanced to shadow) between the cancel's read and its
    write: the cancel finds nothing to cancel (404) and does not pause the advanced plan."""
    _dataset()
    run = _started(monkeypatch)
    _answer_all(run, good=12)
    as_read = services.active_run(run.plan)  # still running when the cancel reads it
    assert decide.replay_decide(replay_id=run.pk) == "pass"
    monkeypatch.setattr(services, "active_run", lambda plan: as_read)
    answer = _client(["admin"]).post(
        f"/api/v1/plans/{run.plan.key}/replay/cancel", {}, content_type="application/json"
    )
    assert (answer.status_code, answer.json()["code"]) == (404, "replay_not_found")
    run.refresh_from_db()
    assert (run.status, run.decision) == ("passed", "advanced")
    plan = MigrationPlan.objects.get(pk=run.plan_id)
    assert (plan.status, plan.current_stage.kind) == (PlanStatus.RUNNING, "shadow")
    assert not AuditEvent.objects.filter(plan=plan, action="pause").exists()


def test_replay_page_and_report_show_the_evidence(monkeypatch, django_assert_max_num_queries):
    from tests.factories import make_user

    _dataset()
    run = _started(monkeypatch, on_fail="approval")
    viewer = Client()
    viewer.force_login(make_user("alice"))
    page = viewer.get(f"/plans/{run.plan.key}/replay")
    assert page.status_code == 200 and b"Not decided yet" in page.content
    _answer_all(run, good=5)
    ReplayCall.objects.filter(replay=run, index=11).update(
        answer={"candidate": {"text": "WRONG ANSWER 11"}}
    )
    decide.replay_decide(replay_id=run.pk)
    # A handful of queries whatever the dataset's size: the stored summary and item rows.
    with django_assert_max_num_queries(12):
        page = viewer.get(f"/plans/{run.plan.key}/replay")
    html = page.content.decode()
    assert page.status_code == 200
    assert "exact_match &gt;= 0.8" in html and 'class="fail">fail' in html
    assert "Worst items first" in html and "WRONG ANSWER 11" in html and "Per tag" in html
    # Worst first: items 5 to 11 scored 0, items 0 to 4 scored 1 (ties by index).
    shown = [int(i) for i in re.findall(r"<h3>Item (\d+)", html)]
    assert shown == [*range(5, 12), *range(5)]
    report = viewer.get(f"/plans/{run.plan.key}/report")
    assert report.status_code == 200 and b"replay-summary" in report.content
    assert b"exact_match &gt;= 0.8" in report.content
    md = viewer.get(f"/plans/{run.plan.key}/report?format=md")
    assert md.status_code == 200 and "## Replay" in md.content.decode()
