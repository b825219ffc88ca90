"""The replay phase, live: a real Celery worker calls control and the candidate through the real
vendor SDKs against the provider simulator; the gates decide and the plan advances to shadow or
stops; a set drawn from the SDK's shadow samples gates the plan's next run; a replay is
cancelled; a worker is killed mid-replay; an outage reads as an outage."""

from __future__ import annotations

import os
import signal
from typing import Any

import httpx
import pytest

from migrations_app.api.keys import apikey_create
from migrations_app.datasets import services as dataset_services
from migrations_app.errors import DomainError
from migrations_app.models import (
    AuditEvent,
    DatasetItem,
    MigrationPlan,
    PlanPhase,
    PlanStatus,
    ProviderConnection,
    ReplayCall,
    ReplayItem,
    ReplayRun,
    ReplayStatus,
    ShadowSample,
)
from migrations_app.plans import lifecycle
from migrations_app.replay import decide, services
from migrations_app.replay.tasks import sweep_replays
from migrations_app.simulator import Simulator
from tests.conftest import celery_process, eventually, sdk_client
from tests.factories import make_plan, person

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

CANDIDATE = "claude-sonnet-4-20250514"
CONTROL = "gpt-4o-2024-08-06"
WORKER_ENV = {
    "ANTHROPIC_API_KEY": "sk-ant-live-test",
    "OPENAI_API_KEY": "sk-openai-live-test",
    "TURNOUT_SHADOW_LEASE_SECONDS": "4",
    "TURNOUT_SHADOW_CONCURRENCY": "16",
}
GATES = [
    {"metric": "exact_match", "threshold": 0.8},
    {"metric": "normalized_match", "threshold": -0.15, "versus_control": True},
]
#: A set drawn from shadow samples has no reference answers: its gates compare with control's.
SHADOW_GATES = [{"metric": "agreement", "threshold": 0.8}]


def worker(name: str) -> Any:
    return celery_process(
        "worker", "--pool", "threads", "--concurrency", "2", "--without-gossip",
        "--without-mingle", log_name=name, extra_env=WORKER_ENV,
    )  # fmt: skip


def dataset(name: str, items: int, *, recorded: bool = False) -> None:
    """Items whose reference is what a good simulated answer says ("You said: <question>")."""
    dataset_services.dataset_create(
        name=name,
        created_by="test",
        items=[
            {
                "request": {"messages": [{"role": "user", "content": f"Where is order {i}?"}]},
                "reference": f"You said: Where is order {i}?",
                **({"control_answer": f"You said: Where is order {i}?"} if recorded else {}),
                "tags": ["billing" if i % 2 else "shipping"],
            }
            for i in range(items)
        ],
    )


def replay_plan(
    sim: Simulator, name: str, *, repeats: int = 3, on_fail: str = "stop"
) -> MigrationPlan:
    ProviderConnection.objects.filter(name="anthropic").update(base_url=sim.url)
    ProviderConnection.objects.filter(name="openai").update(base_url=f"{sim.url}/v1")
    replay = {"dataset": name, "repeats": repeats, "gates": GATES, "on_fail": on_fail}
    phases = [
        {"kind": "replay", "replay": replay},
        {"kind": "shadow", "percent": 10.0, "min_samples": 10, "min_duration_minutes": 0},
        {"kind": "rollout", "steps": [50, 100], "min_samples": 10, "min_duration_minutes": 0},
    ]
    plan = make_plan(phases=phases)
    lifecycle.plan_start(plan_key=plan.key, actor=person())
    return plan


def decided(plan: MigrationPlan) -> bool:
    sweep_replays()  # what beat does every few seconds
    run = ReplayRun.objects.filter(plan=plan).order_by("-pk").first()
    return run is not None and run.status != ReplayStatus.RUNNING


def test_good_candidate_passes_and_the_plan_moves_to_shadow(sim: Simulator) -> None:
    dataset("orders", 40)
    plan = replay_plan(sim, "orders")
    with worker("replay-pass.log"):
        assert eventually(lambda: decided(plan), 120, every=0.5)
    run = ReplayRun.objects.get(plan=plan)
    assert run.status == ReplayStatus.PASSED and run.decision == "advanced"
    plan.refresh_from_db()
    assert (plan.status, plan.phase_index, plan.current_stage.kind) == (
        PlanStatus.RUNNING, 1, "shadow",
    )  # fmt: skip
    # Every (item, repeat) once, control called fresh (no recorded answer), counted once.
    calls = ReplayCall.objects.filter(replay=run)
    assert calls.count() == 120 and set(calls.values_list("status", flat=True)) == {"done"}
    assert all("control" in c.answer for c in calls)
    assert ReplayItem.objects.filter(replay=run).count() == 40
    gates = {g["metric"]: g for g in run.summary["gates"]}
    assert gates["exact_match"]["outcome"] == "pass"
    assert gates["exact_match"]["interval"]["items"] == 40
    assert gates["exact_match"]["interval"]["values"] == 120
    assert set(run.summary["by_tag"]) == {"billing", "shipping"}
    advance = AuditEvent.objects.filter(plan=plan, action="advance").get()
    assert advance.actor_kind == "engine" and advance.evidence["replay"]["id"] == run.pk


def test_low_quality_candidate_fails_and_the_plan_stops_with_a_page(sim: Simulator) -> None:
    sim.set_profile(CANDIDATE, {"quality": 0.3})
    dataset("orders-bad", 40, recorded=True)
    plan = replay_plan(sim, "orders-bad")
    with worker("replay-fail.log"):
        assert eventually(lambda: decided(plan), 120, every=0.5)
    run = ReplayRun.objects.get(plan=plan)
    assert run.status == ReplayStatus.FAILED and run.decision == "stopped"
    # The recorded control answers were used: control was never called.
    assert not any("control" in c.answer for c in ReplayCall.objects.filter(replay=run))
    plan.refresh_from_db()
    assert plan.status == PlanStatus.ROLLED_BACK
    rollback = AuditEvent.objects.get(plan=plan, action="rollback")
    assert "exact_match" in rollback.reason
    assert rollback.evidence["replay"]["outcome"] == "fail"
    gate = next(g for g in run.summary["gates"] if g["metric"] == "exact_match")
    assert gate["outcome"] == "fail" and gate["interval"]["upper"] < 0.8
    stability = run.summary["stability"]["exact_match"]
    assert stability["flipped"] > 0  # a 30 % candidate disagrees with itself across repeats


def test_a_set_drawn_from_shadow_samples_gates_the_plans_next_run(
    live_server_process: str, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shadow traffic becomes the replay of the plan's next run: the SDK's requests (redacted,
    tagged by segment) with control's recorded answers, drawn through the datasets API. A good
    candidate passes and shadow starts again; one whose quality is low stops the plan. A set
    of one plan's samples replays only in that plan (it holds its prompts)."""
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):  # the SDK calls the arms too
        monkeypatch.setenv(name, WORKER_ENV[name])
    ProviderConnection.objects.filter(name="anthropic").update(base_url=sim.url)
    ProviderConnection.objects.filter(name="openai").update(base_url=f"{sim.url}/v1")
    plan = make_plan("support-chat")
    MigrationPlan.objects.filter(pk=plan.pk).update(segment_dimensions=["tier"])
    PlanPhase.objects.filter(plan=plan, kind="shadow").update(percent=100.0)
    lifecycle.plan_start(plan_key=plan.key, actor=person())
    app = apikey_create(name="app", scopes=["decide", "report"])[1]
    with sdk_client(live_server_process, app, "support-chat", flush_interval=0.05) as client:
        served = [
            client.complete(
                plan.key,
                f"user-{i}",
                messages=[
                    {"role": "system", "content": "You are a support agent."},
                    {"role": "user", "content": f"Where is order {i}? Mail me: u{i}@x.io"},
                ],
                attributes={"tier": "gold" if i % 3 == 0 else "free"},
            )
            for i in range(30)
        ]
        assert client.flush(10)
    assert all(c.ok and c.decision.shadow for c in served)
    assert ShadowSample.objects.filter(plan=plan).count() == 30

    ci = {"Authorization": f"Bearer {apikey_create(name='ci', scopes=['plans'])[1]}"}
    api = httpx.Client(base_url=f"{live_server_process}/api/v1", headers=ci, timeout=30.0)
    with api:
        made = api.post(
            "/datasets",
            json={"name": "support-week", "plan": plan.key, "shadow": {"size": 24, "seed": 3}},
        )
        assert made.status_code == 201, made.text
        dataset = made.json()
        assert (dataset["source"], dataset["plan"], dataset["item_count"]) == (
            "shadow", plan.key, 24,
        )  # fmt: skip
        assert dataset["filter"]["matched"] == 30 and dataset["filter"]["skipped"] == 0
        assert set(dataset["tag_counts"]) == {"tier=gold", "tier=free"}
        # Redacted as stored; control's answer (to the redacted question) recorded with it.
        for item in DatasetItem.objects.filter(dataset__name="support-week"):
            question = item.request["messages"][-1]["content"]
            assert "@" not in question and item.control_answer == f"You said: {question}"
            assert item.sample_id and len(item.tags) == 1

        # Another plan cannot replay it (the rule: a set made for its plan or for none).
        next_plan = {"dataset": "support-week", "gates": SHADOW_GATES}
        other = make_plan(
            phases=[{"kind": "replay", "replay": next_plan}, {"kind": "shadow", "percent": 10.0}]
        )
        with pytest.raises(DomainError) as refused:
            lifecycle.plan_start(plan_key=other.key, actor=person())
        assert refused.value.code == "plan_not_startable"
        assert "no dataset 'support-week' for this plan" in refused.value.message

        # The plan's next run opens with the replay of its own traffic: rolled back, edited
        # through the plans API (routing fields change only then), restarted by a person.
        lifecycle.plan_rollback(plan_key=plan.key, actor=person(), reason="a new prompt")
        phases = api.get(f"/plans/{plan.key}").json()["spec"]["phases"]
        replay = {"dataset": "support-week", "repeats": 2, "gates": SHADOW_GATES}
        patched = api.patch(
            f"/plans/{plan.key}", json={"phases": [{"kind": "replay", "replay": replay}, *phases]}
        )
        assert patched.status_code == 200, patched.text
    lifecycle.plan_start(plan_key=plan.key, actor=person(), reason="replay first")

    def next_run(previous: int) -> ReplayRun:
        assert eventually(lambda: decided(plan), 120, every=0.5)
        run = ReplayRun.objects.filter(plan=plan).latest("pk")
        assert run.pk > previous
        return run

    with worker("replay-from-shadow.log"):
        passed = next_run(0)
        assert passed.status == ReplayStatus.PASSED and passed.decision == "advanced"
        plan.refresh_from_db()
        assert (plan.status, plan.phase_index, plan.current_stage.kind) == (
            PlanStatus.RUNNING, 1, "shadow",
        )  # fmt: skip
        sim.set_profile(CANDIDATE, {"quality": 0.3})
        lifecycle.plan_rollback(plan_key=plan.key, actor=person(), reason="a cheaper prompt")
        lifecycle.plan_start(plan_key=plan.key, actor=person(), reason="replay first")
        failed = next_run(passed.pk)
    assert passed.dataset.name == "support-week" and passed.items == 24
    calls = ReplayCall.objects.filter(replay=passed)
    assert calls.count() == 48 and set(calls.values_list("status", flat=True)) == {"done"}
    # Control's recorded answers were used: it answered the SDK's 30 requests and no more.
    assert not any("control" in c.answer for c in calls)
    assert sim.stats()["models"][CONTROL]["requests"] == 30
    gate = passed.summary["gates"][0]
    assert (gate["metric"], gate["outcome"]) == ("agreement", "pass")
    assert (gate["interval"]["items"], gate["interval"]["values"]) == (24, 48)
    assert set(passed.summary["by_tag"]) == {"tier=gold", "tier=free"}

    assert failed.status == ReplayStatus.FAILED and failed.decision == "stopped"
    assert failed.dataset_id == passed.dataset_id
    plan.refresh_from_db()
    assert plan.status == PlanStatus.ROLLED_BACK
    rollback = AuditEvent.objects.filter(plan=plan, action="rollback").latest("pk")
    assert rollback.actor_kind == "engine" and "agreement" in rollback.reason
    assert failed.summary["gates"][0]["interval"]["upper"] < 0.8


def test_cancel_drops_the_calls_not_made_and_pauses_the_plan(sim: Simulator) -> None:
    sim.set_profile(CANDIDATE, {"latency_median_ms": 400, "latency_p95_ms": 600})
    dataset("orders-slow", 200, recorded=True)
    plan = replay_plan(sim, "orders-slow")
    with worker("replay-cancel.log"):
        sweep_replays()
        run = ReplayRun.objects.get(plan=plan)
        assert eventually(lambda: ReplayCall.objects.filter(replay=run, status="done").exists(), 60)
        services.replay_cancel(plan_key=plan.key, actor=person(), reason="wrong dataset")
        done_at_cancel = ReplayCall.objects.filter(replay=run, status="done").count()
        run.refresh_from_db()
        assert run.status == ReplayStatus.CANCELLED
        # Calls in flight finish against a cancelled row: nothing more is stored.
        assert not eventually(
            lambda: ReplayCall.objects.filter(replay=run, status="done").count() > done_at_cancel,
            3,
        )
    assert ReplayCall.objects.filter(replay=run, status__in=("pending", "running")).count() == 0
    plan.refresh_from_db()
    assert plan.status == PlanStatus.PAUSED
    assert decide.replay_decide(replay_id=run.pk) == ""  # a cancelled replay is never decided
    # Resuming starts the replay again, as a new run of the same stage.
    lifecycle.plan_resume(plan_key=plan.key, actor=person())
    sweep_replays()
    assert ReplayRun.objects.filter(plan=plan).count() == 2


def test_worker_killed_mid_replay_loses_nothing_and_counts_nothing_twice(
    sim: Simulator, settings: Any
) -> None:
    # The sweep here (this process's) hands out again what the killed worker held, pending
    # calls included, a lease after they were queued: the workers' lease, not the default
    # three minutes the test waited for before.
    settings.TURNOUT_SHADOW_LEASE_SECONDS = int(WORKER_ENV["TURNOUT_SHADOW_LEASE_SECONDS"])
    sim.set_profile(CANDIDATE, {"latency_median_ms": 150, "latency_p95_ms": 250})
    dataset("orders-kill", 100, recorded=True)
    plan = replay_plan(sim, "orders-kill")
    sweep_replays()
    run = ReplayRun.objects.get(plan=plan)
    with worker("replay-kill-1.log") as first:
        assert eventually(
            lambda: ReplayCall.objects.filter(replay=run, status="done").count() >= 30, 60
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert ReplayCall.objects.filter(replay=run, status="done").count() < 300
    with worker("replay-kill-2.log"):
        assert eventually(lambda: decided(plan), 180, every=1.0)
    run.refresh_from_db()
    assert run.status == ReplayStatus.PASSED
    calls = list(ReplayCall.objects.filter(replay=run))
    assert len(calls) == 300 and {c.status for c in calls} == {"done"}
    assert max(c.attempts for c in calls) >= 2  # the kill hit calls in flight
    items = list(ReplayItem.objects.filter(replay=run))
    assert sum(i.evaluated for i in items) == 300
    assert sum(i.sums["exact_match"][1] for i in items) == 300


def test_an_outage_reads_not_evaluated_never_a_failing_candidate(sim: Simulator) -> None:
    sim.set_profile(CANDIDATE, {"errors": {"server_error": 1.0}})
    dataset("orders-outage", 10, recorded=True)
    plan = replay_plan(sim, "orders-outage", repeats=1)
    with worker("replay-outage.log"):
        assert eventually(lambda: decided(plan), 180, every=1.0)
    run = ReplayRun.objects.get(plan=plan)
    assert run.status == ReplayStatus.NOT_EVALUATED and run.decision == "awaiting_approval"
    calls = list(ReplayCall.objects.filter(replay=run))
    assert {c.status for c in calls} == {"failed"}
    assert all(c.attempts >= 3 and "server_error" in c.reason for c in calls)
    plan.refresh_from_db()
    # Still at the replay, all users on control: a person decides.
    assert (plan.status, plan.phase_index) == (PlanStatus.RUNNING, 0)
    assert {g["outcome"] for g in run.summary["gates"]} == {"not_evaluated"}
