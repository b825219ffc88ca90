"""The engine live: SDK traffic to a real server, a real Celery worker and beat evaluating
every second, and the plan rolling back (or advancing to completion) by itself."""

from __future__ import annotations

import time
from typing import Any

import pytest
import turnout

from migrations_app.models import AuditEvent, PlanStatus
from tests.conftest import sdk_client
from tests.guardrails.live_traffic import (
    ERROR_RATE_ROLLBACK,
    PATIENCE_SECONDS,
    drive,
    held_ab_split,
    start_plan,
    status_of,
)

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def test_a_tripled_error_rate_is_rolled_back_and_every_sdk_switches_to_control(
    live_server_process: str, celery_worker_process: Any, celery_beat_process: Any
) -> None:
    key = start_plan(
        "live-rollback",
        phases=[held_ab_split(min_duration_minutes=0)],
        guardrails=[ERROR_RATE_ROLLBACK],
    )
    client = sdk_client(live_server_process, key, "live-rollback", flush_interval=0.2)
    try:
        regress_at = 2_000

        def error_rate(d: turnout.Decision, attrs: object, sent: int) -> float:
            return 0.06 if d.arm == "candidate" and sent >= regress_at else 0.02

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
    client = sdk_client(live_server_process, key, "live-advance", flush_interval=0.2)
    try:
        drive(
            client,
            "live-advance",
            error_rate=lambda d, attrs, sent: 0.02,
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
