"""The engine live: SDK traffic to a real server, a real Celery worker and beat evaluating
every second, and the plan rolling back (or advancing to completion) by itself."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import turnout

from migrations_app.api.keys import apikey_create
from migrations_app.models import AuditEvent, MigrationPlan, PlanStatus
from tests.factories import started_plan

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

# Waiting for a process to do something is not a speed assertion: these bound how long a
# broken build hangs before failing, and are far above what a healthy run needs.
PATIENCE_SECONDS = 240.0


def drive(
    client: turnout.Client,
    plan_key: str,
    *,
    error_rate: Callable[[str, int], float],
    until: Callable[[], bool],
    seed: int,
) -> int:
    """Decide and report rounds of 500 requests until ``until()``; returns requests sent."""
    rng = np.random.default_rng(seed)
    units = itertools.count()
    sent = 0
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not until():
        assert time.monotonic() < deadline, f"gave up after {sent} requests"
        for _ in range(500):
            d = client.decide(plan_key, unit=f"user-{next(units)}")
            failed = rng.random() < error_rate(d.arm, sent)
            client.report(
                d,
                latency_ms=float(800 * np.exp(rng.normal(0, 0.4))),
                ttft_ms=float(150 * np.exp(rng.normal(0, 0.3))),
                error="server_error" if failed else None,
                input_tokens=1200,
                output_tokens=300,
            )
            sent += 1
        client.flush()
        time.sleep(0.05)
    return sent


def status_of(key: str) -> str:
    return MigrationPlan.objects.get(key=key).status


# Rolls back when the candidate's error rate is over 1.5 times control's.
ERROR_RATE_ROLLBACK = {
    "metric": "error_rate",
    "tolerance_kind": "relative",
    "tolerance": 1.5,
    "action": "rollback",
}


def held_ab_split(*, min_duration_minutes: int) -> dict[str, Any]:
    """A 50 % A/B phase that does not advance during a test (it needs a million samples): only
    a guardrail moves the plan."""
    return {
        "kind": "ab_split",
        "percent": 50.0,
        "steps": [],
        "min_duration_minutes": min_duration_minutes,
        "min_samples": 1_000_000,
    }


def start_plan(key: str, **overrides: Any) -> str:
    started_plan(key, **overrides)
    return apikey_create(name="app", scopes=["decide", "report"])[1]


def test_a_tripled_error_rate_is_rolled_back_and_every_sdk_switches_to_control(
    live_server_process: str, celery_worker_process: Any, celery_beat_process: Any
) -> None:
    key = start_plan(
        "live-rollback",
        phases=[held_ab_split(min_duration_minutes=0)],
        guardrails=[ERROR_RATE_ROLLBACK],
    )
    client = turnout.Client(live_server_process, key, flush_interval=0.2)
    try:
        regress_at = 2_000

        def error_rate(arm: str, sent: int) -> float:
            return 0.06 if arm == "candidate" and sent >= regress_at else 0.02

        sent = drive(
            client,
            "live-rollback",
            error_rate=error_rate,
            until=lambda: status_of("live-rollback") == PlanStatus.ROLLED_BACK,
            seed=1,
        )
        assert sent > regress_at

        event = AuditEvent.objects.get(plan__key="live-rollback", action="rollback")
        assert event.actor_kind == "engine"
        guardrail = event.evidence["guardrails"][0]
        assert (guardrail["metric"], guardrail["verdict"]["status"]) == ("error_rate", "regressed")
        candidate = event.evidence["arms"]["candidate"]
        assert candidate["errors_by_kind"] == {"server_error": candidate["errors"]}

        deadline = time.monotonic() + PATIENCE_SECONDS
        while client.snapshot.plans["live-rollback"].status != "rolled_back":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        arms = {client.decide("live-rollback", unit=f"user-{i}").arm for i in range(5_000)}
        assert arms == {"control"}
    finally:
        client.close()


def test_a_healthy_candidate_advances_through_its_steps_and_completes(
    live_server_process: str, celery_worker_process: Any, celery_beat_process: Any
) -> None:
    key = start_plan(
        "live-advance",
        phases=[
            {
                "kind": "ab_split",
                "percent": 50.0,
                "steps": [],
                "min_duration_minutes": 0,
                "min_samples": 1_500,
            },
            {
                "kind": "rollout",
                "percent": None,
                "steps": [50, 100],
                "min_duration_minutes": 0,
                "min_samples": 1_500,
            },
        ],  # fmt: skip
        guardrails=[
            {
                "metric": "error_rate",
                "tolerance_kind": "absolute",
                "tolerance": 0.05,
                "action": "rollback",
            },
            {
                "metric": "latency_p95",
                "tolerance_kind": "relative",
                "tolerance": 1.5,
                "action": "rollback",
            },
        ],  # fmt: skip
    )
    client = turnout.Client(live_server_process, key, flush_interval=0.2)
    try:
        drive(
            client,
            "live-advance",
            error_rate=lambda arm, sent: 0.02,
            until=lambda: status_of("live-advance") == PlanStatus.COMPLETED,
            seed=2,
        )
    finally:
        client.close()
    engine_actions = list(
        AuditEvent.objects.filter(plan__key="live-advance", actor_kind="engine")
        .order_by("pk")
        .values_list("action", flat=True)
    )
    assert engine_actions == ["advance", "advance", "complete"]
