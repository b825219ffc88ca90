"""Lifecycle services: every transition, legal and illegal, with its audit event; the races."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection

from migrations_app.errors import IllegalTransition, ValidationFailed, VersionConflict
from migrations_app.models import AuditEvent, MigrationPlan, PlanRun
from migrations_app.plans import edits, lifecycle
from migrations_app.plans.selectors import plan_position
from tests.factories import make_plan, person

pytestmark = pytest.mark.django_db

SERVICES = lifecycle.LIFECYCLE


def _act(action: str, plan: MigrationPlan, **kwargs: Any) -> MigrationPlan:
    kwargs.setdefault("actor", person())
    kwargs.setdefault("reason", f"test {action}")
    return SERVICES[action](plan_key=plan.key, **kwargs)


def _in_status(status: str) -> MigrationPlan:
    plan = make_plan()
    path = {
        "draft": [],
        "running": ["start"],
        "paused": ["start", "pause"],
        "rolled_back": ["start", "rollback"],
        "completed": ["start", "complete"],
        "archived": ["start", "complete", "archive"],
    }[status]
    for action in path:
        plan = _act(action, plan)
    return plan


LEGAL = {
    ("draft", "start"): "running",
    ("rolled_back", "start"): "running",
    ("running", "advance"): "running",
    ("running", "pause"): "paused",
    ("paused", "resume"): "running",
    ("running", "rollback"): "rolled_back",
    ("paused", "rollback"): "rolled_back",
    ("running", "complete"): "completed",
    ("paused", "complete"): "completed",
    ("draft", "archive"): "archived",
    ("rolled_back", "archive"): "archived",
    ("completed", "archive"): "archived",
}
STATUSES = ["draft", "running", "paused", "rolled_back", "completed", "archived"]


@pytest.mark.parametrize(("status", "action"), [(s, a) for s in STATUSES for a in SERVICES])
def test_every_transition(status: str, action: str) -> None:
    plan = _in_status(status)
    events_before = AuditEvent.objects.filter(plan=plan).count()
    if (status, action) in LEGAL:
        after = _act(action, plan)
        assert after.status == LEGAL[(status, action)]
        assert after.version == plan.version + 1
        event = AuditEvent.objects.filter(plan=plan).first()
        assert event is not None
        assert (event.action, event.from_status, event.to_status) == (action, status, after.status)
        assert event.actor_label == "alice" and event.reason == f"test {action}"
        assert event.plan_version == after.version
    else:
        with pytest.raises(IllegalTransition) as caught:
            _act(action, plan)
        assert caught.value.code == "illegal_transition"
        assert caught.value.status == 409
        plan_after = MigrationPlan.objects.get(pk=plan.pk)
        assert (plan_after.status, plan_after.version) == (plan.status, plan.version)
        assert AuditEvent.objects.filter(plan=plan).count() == events_before


def test_walk_the_standard_playbook_to_completion() -> None:
    plan = _act("start", make_plan())
    seen = [plan_position(plan)]
    while True:
        try:
            plan = _act("advance", plan, evidence={"why": "healthy"})
        except IllegalTransition as exc:
            assert exc.code == "no_next_step"
            break
        seen.append(plan_position(plan))
    assert [(p.phase, p.weight_bp, p.shadow_bp) for p in seen] == [
        ("shadow", 0, 1000),
        ("ab_split", 1000, 0),
        ("rollout", 1000, 0),
        ("rollout", 2500, 0),
        ("rollout", 5000, 0),
        ("rollout", 10000, 0),
    ]
    plan = _act("complete", plan)
    assert plan.current_run.end_status == "completed"
    assert AuditEvent.objects.filter(plan=plan, action="advance").first().evidence == {
        "why": "healthy"
    }


def test_rollback_is_absorbing_and_a_restart_is_a_new_run() -> None:
    plan = _act("rollback", _act("start", make_plan()), evidence={"metric": "error_rate"})
    first_run = plan.current_run
    assert first_run.end_status == "rolled_back" and first_run.ended_at is not None
    for action in ("advance", "resume", "pause", "complete"):
        with pytest.raises(IllegalTransition, match="restarts only as a new run"):
            _act(action, plan)
    with pytest.raises(IllegalTransition) as caught:
        lifecycle.plan_start(plan_key=plan.key, actor=lifecycle.ENGINE, reason="auto")
    assert caught.value.code == "person_required"
    restarted = _act("start", plan)
    assert restarted.current_run.number == 2
    assert (restarted.phase_index, restarted.step_index) == (0, 0)
    assert PlanRun.objects.filter(plan=plan).count() == 2


def test_rollback_needs_a_reason() -> None:
    plan = _act("start", make_plan())
    with pytest.raises(ValidationFailed):
        _act("rollback", plan, reason="  ")
    assert MigrationPlan.objects.get(pk=plan.pk).status == "running"


def test_stale_version_is_refused() -> None:
    plan = _act("start", make_plan())
    with pytest.raises(VersionConflict) as caught:
        _act("advance", plan, expected_version=plan.version - 1)
    assert caught.value.code == "version_conflict"
    assert MigrationPlan.objects.get(pk=plan.pk).version == plan.version


def test_create_validates_and_saves_nothing_on_error() -> None:
    with pytest.raises(ValidationFailed) as caught:
        make_plan(
            "bad-plan",
            candidate={"model": "openai:gpt-4o-2024-08-06", "params": {"temperature": 0.2}},
            phases=[
                {"kind": "rollout", "steps": [5, 50, 25]},
                {"kind": "ab_split", "percent": 140},
            ],
            guardrails=[{"metric": "latency_p95", "tolerance_kind": "relative", "tolerance": 0.9}],
            alpha=0.5,
        )
    fields = caught.value.details["fields"]
    # Nested paths, as the plans API and plan files name them.
    assert fields["candidate.model"] == [
        "The candidate must differ from the control (model, params or prompt)."
    ]
    assert fields["phases[0].steps[2]"] == ["Steps must be strictly increasing."]
    assert "phases[1].percent" in fields
    assert "guardrails[0].tolerance" in fields
    assert "alpha" in fields
    assert not MigrationPlan.objects.filter(key="bad-plan").exists()
    with pytest.raises(ValidationFailed) as caught:
        make_plan("bad-model", candidate={"model": "openai:gpt-9"})
    assert caught.value.details["fields"]["candidate.model"] == [
        "'openai:gpt-9' is not in the model catalog."
    ]
    with pytest.raises(ValidationFailed) as caught:
        make_plan(
            "too-long",
            candidate={
                "model": "anthropic:claude-3-5-haiku-20241022",
                "params": {"max_tokens": 9000},
            },
        )
    assert (
        "exceeds the model's maximum output of 8192"
        in caught.value.details["fields"]["candidate.params"][0]
    )


def test_create_refuses_phases_that_lower_the_candidates_share() -> None:
    with pytest.raises(ValidationFailed) as caught:
        make_plan(
            "backwards",
            phases=[
                {"kind": "ab_split", "percent": 25.0},
                {"kind": "rollout", "steps": [5, 25, 50, 100]},
            ],
        )
    (message,) = caught.value.details["fields"]["phases"]
    assert message.startswith("Phase 2 (rollout) starts at 5 % on the candidate, below the 25 %")
    assert "phase 1 (A/B split)" in message
    assert not MigrationPlan.objects.filter(key="backwards").exists()


def test_edit_writes_only_its_fields_compare_and_set_on_the_version() -> None:
    plan = _act("start", make_plan("edited"))
    stale = MigrationPlan.objects.get(pk=plan.pk)
    stale.name, stale.status = "New name", "draft"  # status is not the edit's to write
    edited = edits.plan_edit(plan=stale, fields=["name"], expected_version=plan.version)
    after = MigrationPlan.objects.get(pk=plan.pk)
    assert (after.name, after.status, after.version) == ("New name", "running", plan.version + 1)
    assert edited.version == after.version
    with pytest.raises(ValueError):
        edits.plan_edit(plan=stale, fields=["status"], expected_version=after.version)
    # Loaded before the edit above: refused, nothing written.
    stale.alpha = 0.01
    with pytest.raises(VersionConflict):
        edits.plan_edit(plan=stale, fields=["alpha"], expected_version=plan.version)
    # Routing fields wait for the run to end.
    after.candidate_params = {"temperature": 0.9}
    with pytest.raises(IllegalTransition) as caught:
        edits.plan_edit(plan=after, fields=["candidate_params"], expected_version=after.version)
    assert caught.value.code == "illegal_transition"
    assert list(caught.value.details["fields"]) == ["candidate.params"]
    final = MigrationPlan.objects.get(pk=plan.pk)
    assert (final.alpha, final.candidate_params, final.version) == (
        plan.alpha,
        plan.candidate_params,
        after.version,
    )


def _race(plan: MigrationPlan, calls: list[tuple[str, dict[str, Any]]]) -> list[object]:
    """Run the calls at once, each in its own thread and so its own PostgreSQL connection."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int, action: str, kwargs: dict[str, Any]) -> None:
        try:
            barrier.wait()
            results[i] = _act(action, plan, **kwargs)
        except Exception as exc:  # collected and asserted below
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, a, k)) for i, (a, k) in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("attempt", range(10))
def test_race_rollback_against_advance_exactly_one_wins(attempt: int) -> None:
    plan = _act("start", make_plan())
    seen = {"expected_version": plan.version}
    results = _race(plan, [("rollback", dict(seen)), ("advance", dict(seen))])
    winners = [r for r in results if isinstance(r, MigrationPlan)]
    losers = [r for r in results if isinstance(r, IllegalTransition)]
    assert len(winners) == 1 and len(losers) == 1, results
    final = MigrationPlan.objects.get(pk=plan.pk)
    assert final.version == plan.version + 1
    events = list(AuditEvent.objects.filter(plan=plan, action__in=["rollback", "advance"]))
    assert len(events) == 1 and events[0].to_status == final.status
    if final.status == "rolled_back":
        assert (final.phase_index, final.step_index) == (0, 0)
        assert final.current_run.end_status == "rolled_back"
    else:
        assert final.status == "running" and final.phase_index == 1


@pytest.mark.django_db(transaction=True)
def test_race_two_rollbacks_roll_back_once() -> None:
    plan = _act("start", make_plan())
    results = _race(plan, [("rollback", {}), ("rollback", {}), ("rollback", {})])
    assert sum(isinstance(r, MigrationPlan) for r in results) == 1
    assert sum(isinstance(r, IllegalTransition) for r in results) == 2
    assert AuditEvent.objects.filter(plan=plan, action="rollback").count() == 1
