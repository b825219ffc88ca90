"""The change detector live (issue 20): a split stage that has been healthy for six hours (its
windows and running totals written as ingest leaves them, 1,500 requests per arm a minute),
then SDK traffic to a real server whose candidate fails three times as often, a real Celery
worker and beat evaluating every second. Six hours of health dilute the regression in the
running totals (the cumulative test alone would need hundreds of thousands of requests); the
change detector rolls back within a fresh stage's budget of requests and says since when."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from django.utils import timezone

from migrations_app.guardrails.stats import ArmAggregates, ClusterSums
from migrations_app.models import (
    AuditEvent,
    MigrationPlan,
    PlanRun,
    PlanStage,
    PlanStatus,
    StageAggregate,
    WindowAggregate,
)
from migrations_app.outcomes import aggregate_json, aggregation
from tests.conftest import sdk_client
from tests.guardrails.live_traffic import (
    ERROR_RATE_ROLLBACK,
    PATIENCE_SECONDS,
    held_ab_split,
    start_plan,
    status_of,
)

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

HOURS = 6
#: Candidate requests after the regression within which a fresh stage's detector rolls back
#: 3x errors at 2 % with room to spare (bench_stats: ~4,000 per arm at a stricter alpha); the
#: cumulative test on six diluting hours needs ~230,000.
BUDGET = 15_000
#: Requests the test sends at most (both arms) before it gives up.
GIVE_UP = 150_000


def healthy_history(plan: MigrationPlan, minutes: int) -> None:
    """``minutes`` of healthy minute windows before now, and the stage's totals over them."""
    rng = np.random.default_rng(11)
    now = aggregation.window_start(timezone.now())
    began = now - timedelta(minutes=minutes)
    PlanRun.objects.filter(pk=plan.current_run_id).update(started_at=began)
    PlanStage.objects.filter(pk=plan.current_stage_id).update(started_at=began)
    MigrationPlan.objects.filter(pk=plan.pk).update(step_started_at=began)
    totals: dict[str, list[ArmAggregates]] = {"control": [], "candidate": []}
    rows = []
    for m in range(minutes):
        for arm in ("control", "candidate"):
            e = int(rng.binomial(1500, 0.02))
            agg = ArmAggregates(
                requests=1500, errors=e, errors_by_kind={"server_error": e} if e else {},
                error_clusters=ClusterSums(1500, e, e, 1500, e, e, 1500),
            )  # fmt: skip
            totals[arm].append(agg)
            rows.append(
                WindowAggregate(
                    stage_id=plan.current_stage_id,
                    arm=arm,
                    window=began + timedelta(minutes=m),
                    requests=1500,
                    errors=e,
                    data=aggregate_json.to_json(agg),
                )  # fmt: skip
            )
    WindowAggregate.objects.bulk_create(rows)
    for arm, windows in totals.items():
        total = ArmAggregates.merge(windows)
        StageAggregate.objects.create(
            stage_id=plan.current_stage_id, arm=arm, requests=total.requests,
            data=aggregate_json.to_json(total),
        )  # fmt: skip


def test_a_regression_after_six_healthy_hours_rolls_back_within_a_fresh_stages_budget(
    live_server_process: str, celery_worker_process: Any, celery_beat_process: Any
) -> None:
    key = start_plan(
        "live-change",
        phases=[held_ab_split(min_duration_minutes=600)],
        guardrails=[ERROR_RATE_ROLLBACK],
    )
    plan = MigrationPlan.objects.get(key="live-change")
    healthy_history(plan, HOURS * 60)
    regressed_at = timezone.now()
    client = sdk_client(live_server_process, key, "live-change", flush_interval=0.2)
    rng = np.random.default_rng(3)
    sent = 0
    try:
        # Rounds of 500 until the rollback, or the budget is spent.
        while status_of("live-change") != PlanStatus.ROLLED_BACK and sent < GIVE_UP:
            for _ in range(500):
                d = client.decide("live-change", unit=f"user-{sent}")
                failed = rng.random() < (0.06 if d.arm == "candidate" else 0.02)
                client.report(d, latency_ms=800.0, error="server_error" if failed else None)
                sent += 1
            client.flush()
            time.sleep(0.2)
        deadline = time.monotonic() + PATIENCE_SECONDS  # the last reports' evaluation
        while status_of("live-change") != PlanStatus.ROLLED_BACK and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        client.close()
    assert status_of("live-change") == PlanStatus.ROLLED_BACK, f"no rollback after {sent}"
    event = AuditEvent.objects.get(plan__key="live-change", action="rollback")
    (guardrail,) = event.evidence["guardrails"]
    assert guardrail["change"]["fired"] and "change detected" in event.reason
    # Dated at the regression (a minute or two of noise either side), not hours before.
    since = datetime.fromisoformat(guardrail["change"]["since"])
    assert abs(since - aggregation.window_start(regressed_at)) <= timedelta(minutes=3), since
    # Before the change point it matched control for six hours: the evidence says so.
    assert "for 6 h" in guardrail["verdict"]["summary"]
    history = HOURS * 60 * 1500
    assert event.evidence["arms"]["candidate"]["requests"] - history < BUDGET
