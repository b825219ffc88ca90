"""The whole shadow pipeline, live: SDK -> API -> Redis -> a real Celery worker -> the real
Anthropic SDK -> the provider simulator, with the worker killed mid-run."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import Any

import pytest

from migrations_app.api.keys import apikey_create
from migrations_app.models import (
    MigrationPlan,
    PlanPhase,
    ProviderConnection,
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
    StageAggregate,
)
from migrations_app.outcomes.segment_rollup import catch_up
from migrations_app.plans import lifecycle
from migrations_app.shadow.pipeline import SCORE_KEYS
from migrations_app.shadow.tasks import sweep_shadow
from migrations_app.simulator import Simulator
from tests.conftest import celery_process, eventually, sdk_client
from tests.factories import make_plan, person

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

CANDIDATE = "claude-sonnet-4-20250514"
SAMPLES = 500
WORKER_ENV = {
    "ANTHROPIC_API_KEY": "sk-ant-live-test",
    "TURNOUT_SHADOW_LEASE_SECONDS": "4",
    "TURNOUT_SHADOW_CONCURRENCY": "16",
}


def worker(name: str) -> Any:
    return celery_process(
        "worker", "--pool", "threads", "--concurrency", "2", "--without-gossip",
        "--without-mingle", log_name=name, extra_env=WORKER_ENV,
    )  # fmt: skip


def test_500_samples_compared_once_each_through_a_worker_killed_mid_run(
    live_server_process: str, sim: Simulator
) -> None:
    sim.set_profile(CANDIDATE, {"latency_median_ms": 120, "latency_p95_ms": 200})
    ProviderConnection.objects.filter(name="anthropic").update(base_url=sim.url)
    plan = make_plan("support-chat")
    PlanPhase.objects.filter(plan=plan, kind="shadow").update(percent=100.0)
    lifecycle.plan_start(plan_key=plan.key, actor=person())
    plan.refresh_from_db()
    stage = plan.current_stage
    key = apikey_create(name="app", scopes=["decide", "report"])[1]

    client = sdk_client(live_server_process, key, "support-chat", flush_interval=0.05)
    try:
        with worker("shadow-worker-1.log") as first:
            for i in range(SAMPLES):
                d = client.decide(plan.key, unit=f"user-{i}")
                assert d.shadow
                client.shadow_sample(
                    d,
                    messages=[
                        {"role": "system", "content": "You are a support agent."},
                        {"role": "user", "content": f"Where is order {i}? Mail me: u{i}@x.io"},
                    ],
                    control_text=f"Order {i} ships tomorrow.",
                    latency_ms=900.0,
                    input_tokens=40,
                    output_tokens=12,
                )
            assert client.flush(timeout=30)
            # Kill the worker with calls in flight: some samples are running under its
            # leases, others sit in tasks it had fetched and will never start.
            assert eventually(
                lambda: ShadowSample.objects.filter(status=ShadowStatus.DONE).count() >= 40, 60
            )
            # Calls from now on take seconds: once the fast ones begun before have ended, a
            # sample still running is a call in flight when the kill comes (a batch can end
            # between two looks at 120 ms a call, and the kill then hit none).
            sim.set_profile(CANDIDATE, {"latency_median_ms": 8000, "latency_p95_ms": 9000})
            time.sleep(1.0)
            running = ShadowSample.objects.filter(status=ShadowStatus.RUNNING)
            assert eventually(running.exists, 30)
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
        killed_at_done = ShadowSample.objects.filter(status=ShadowStatus.DONE).count()
        assert killed_at_done < SAMPLES
        sim.set_profile(CANDIDATE, {"latency_median_ms": 120, "latency_p95_ms": 200})

        with worker("shadow-worker-2.log"):

            def all_done() -> bool:
                sweep_shadow.delay()  # what beat does every minute
                return ShadowSample.objects.filter(status=ShadowStatus.DONE).count() == SAMPLES

            assert eventually(all_done, 120, every=1.0)
    finally:
        client.close()

    samples = list(ShadowSample.objects.filter(plan=plan))
    assert len(samples) == SAMPLES and {s.status for s in samples} == {ShadowStatus.DONE}
    # The kill hit calls in flight: those samples were claimed again after their lease.
    assert max(s.attempts for s in samples) >= 2
    assert all("@" not in s.request["messages"][1]["content"] for s in samples)
    assert all(s.candidate["text"] for s in samples)

    # Counted once each, whatever was retried: the pairs, every score, the candidate arm.
    data = ShadowAggregate.objects.get(stage=stage).data
    assert data["n"] == SAMPLES
    outcomes = Counter(
        ("both" if s.control.get("error") else "candidate_only")
        if s.candidate.get("error")
        else ("control_only" if s.control.get("error") else "neither")
        for s in samples
    )
    assert {k: data.get(k, 0) for k in outcomes} == dict(outcomes)
    for name in SCORE_KEYS:
        values = [float(s.comparison[name]) for s in samples if s.comparison.get(name) is not None]
        assert data.get(f"{name}_n", 0) == len(values), name
        assert data.get(f"{name}_sum", 0.0) == pytest.approx(sum(values)), name
    catch_up()
    assert StageAggregate.objects.get(stage=stage, arm="candidate").requests == SAMPLES
    assert MigrationPlan.objects.get(pk=plan.pk).status == "running"
