"""Targeting and guardrails per segment live (issue 16, items 3, 4 and 6): the real SDK
deciding with attributes against a real server, a real Celery worker and beat evaluating every
second. A cohort-first plan walks internal -> beta -> everyone by itself; one tenant whose
candidate errors triple is excluded (its units get control, the audit trail and the page name
it) while the rest of the split goes on; QA overrides and excluded units are served and
counted in neither arm."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import turnout
from django.utils import timezone

from migrations_app.guardrails import engine
from migrations_app.models import (
    AlertChannel,
    AuditEvent,
    Evaluation,
    MigrationPlan,
    Outcome,
    PlanStage,
    PlanStatus,
    StageAggregate,
)
from migrations_app.outcomes import aggregate_json
from migrations_app.outcomes.segment_rollup import catch_up
from migrations_app.plans import targeting as plan_targeting
from tests.alerts.conftest import Receiver
from tests.conftest import sdk_client
from tests.factories import person, started_plan
from tests.guardrails.live_traffic import app_key, drive, status_of, wait_until

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

# --- (a) cohort first ----------------------------------------------------------------------


def cohort_attributes(i: int) -> dict[str, Any]:
    """Two users in ten are staff, three in ten work at the beta tenant, the rest elsewhere."""
    if i % 10 < 2:
        return {"internal": True, "tenant": "turnout"}
    if i % 10 < 5:
        return {"internal": False, "tenant": "beta-co"}
    return {"internal": False, "tenant": f"t{i % 7}"}


def test_a_cohort_first_plan_walks_internal_beta_everyone_with_sdk_traffic(
    live_server_process: str, celery_worker_process: Any, celery_beat_process: Any
) -> None:
    started_plan(
        "live-cohorts",
        phases=[
            {
                "kind": "rollout",
                "percent": None,
                "steps": [
                    {"cohort": "internal", "percent": 100},
                    {"cohort": "beta", "percent": 50},
                    50,
                    100,
                ],
                "min_duration_minutes": 0,
                "min_samples": 500,
            }
        ],
        guardrails=[
            {"metric": "error_rate", "tolerance_kind": "absolute", "tolerance": 0.05, "action": "rollback"},
        ],
    )  # fmt: skip
    plan_targeting.rules_replace(
        plan_key="live-cohorts",
        rules=[
            {"name": "staff", "when": [{"attribute": "internal", "op": "equals", "value": True}], "then": "cohort", "cohort": "internal"},
            {"name": "beta tenant", "when": [{"attribute": "tenant", "op": "in", "values": ["beta-co"]}], "then": "cohort", "cohort": "beta"},
        ],
        actor=person(),
    )  # fmt: skip
    client = sdk_client(live_server_process, app_key(), "live-cohorts", flush_interval=0.2)
    try:
        drive(
            client,
            "live-cohorts",
            users=3_000,
            attributes=cohort_attributes,
            error_rate=lambda d, attrs, sent: 0.02,
            until=lambda: status_of("live-cohorts") == PlanStatus.COMPLETED,
            seed=3,
        )
    finally:
        client.close()
    engine_actions = list(
        AuditEvent.objects.filter(plan__key="live-cohorts", actor_kind="engine")
        .order_by("pk")
        .values_list("action", flat=True)
    )
    assert engine_actions == ["advance", "advance", "advance", "complete"]
    # What the SDK served at each step, from the outcomes it reported: (cohort, arm) seen.
    stages = list(
        PlanStage.objects.filter(plan__key="live-cohorts")
        .order_by("pk")
        .values_list("pk", "cohort", "weight_bp")
    )
    # Each stage's weight is the one of the population it compares.
    assert [(cohort, bp) for _, cohort, bp in stages] == [
        ("internal", 10_000),
        ("beta", 5_000),
        ("", 5_000),
        ("", 10_000),
    ]
    served = {pk: Counter() for pk, _, _ in stages}
    for stage_id, cohort, arm in Outcome.objects.filter(plan__key="live-cohorts").values_list(
        "stage_id", "cohort", "arm"
    ):
        served[stage_id][(cohort, arm)] += 1
    seen = [set(served[pk]) for pk, _, _ in stages]
    # internal first: staff get the candidate, nobody else does
    assert seen[0] == {("internal", "candidate"), ("beta", "control"), ("", "control")}
    # then the beta tenant at 50 %, staff keep the candidate
    assert seen[1] == {
        ("internal", "candidate"), ("beta", "control"), ("beta", "candidate"), ("", "control"),
    }  # fmt: skip
    # then everyone at 50 % (beta follows everyone), then everyone
    assert {("", "control"), ("", "candidate"), ("internal", "candidate")} <= seen[2]
    assert ("internal", "control") not in seen[2]
    assert {arm for _, arm in seen[3]} == {"candidate"}
    # Each step compared its own population: the cohort step counted the cohort's units only.
    beta_stage = stages[1][0]
    counted = Counter(
        Outcome.objects.filter(stage_id=beta_stage, uncounted="").values_list("cohort", flat=True)
    )
    assert set(counted) == {"beta"}
    catch_up()
    rows = {r.arm: r.requests for r in StageAggregate.objects.filter(stage_id=beta_stage)}
    assert rows["control"] + rows["candidate"] == counted["beta"]


# --- (b) a segment regression excluded -----------------------------------------------------


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A webhook receiver; set in the environment before the Celery worker starts (the
    worker fixtures come after this one in the test's arguments)."""
    receiver = Receiver()
    monkeypatch.setenv("T_SEGMENT_HOOK_URL", f"{receiver.url}/hook")
    monkeypatch.setenv("T_SEGMENT_HOOK_SECRET", "hook-secret")
    try:
        yield receiver
    finally:
        receiver.close()


def tenant_of(i: int) -> dict[str, Any]:
    return {"tenant": f"t{i % 6}"}


def test_a_regressed_tenant_is_excluded_and_the_rest_of_the_split_goes_on(
    hook: Receiver,
    live_server_process: str,
    celery_worker_process: Any,
    celery_beat_process: Any,
) -> None:
    channel = AlertChannel.objects.create(
        name="hook",
        kind="webhook",
        url_env="T_SEGMENT_HOOK_URL",
        secret_env="T_SEGMENT_HOOK_SECRET",
    )
    started_plan(
        "live-segments",
        # The split holds for an hour: only the guardrails move the plan during the test.
        phases=[{"kind": "ab_split", "percent": 50.0, "steps": [], "min_duration_minutes": 60, "min_samples": 300}],
        guardrails=[{"metric": "error_rate", "tolerance_kind": "relative", "tolerance": 1.5, "action": "rollback"}],
        segment_dimensions=["tenant"],
        segment_top_k=6,
        segment_on_regression="exclude",
        alert_channels=[channel],
    )  # fmt: skip

    def error_rate(d: turnout.Decision, attrs: Mapping[str, Any], sent: int) -> float:
        # Tenant t3's candidate errors are tripled; everything else fails 5 % of the time.
        return 0.15 if d.arm == "candidate" and attrs["tenant"] == "t3" else 0.05

    def excluded() -> bool:
        return AuditEvent.objects.filter(
            plan__key="live-segments", action="targeting", actor_kind="engine"
        ).exists()

    client = sdk_client(live_server_process, app_key(), "live-segments", flush_interval=0.2)
    try:
        drive(
            client,
            "live-segments",
            users=3_000,
            attributes=tenant_of,
            error_rate=error_rate,
            until=lambda: excluded() or status_of("live-segments") != PlanStatus.RUNNING,
            seed=4,
        )
        assert status_of("live-segments") == PlanStatus.RUNNING
        audit = AuditEvent.objects.get(plan__key="live-segments", action="targeting")
        assert "tenant=t3" in audit.reason, audit.reason
        # The SDK follows the change: every t3 user gets control, EXCLUDED; the others split.
        wait_until(
            lambda: (
                client.decide("live-segments", "user-3", attributes={"tenant": "t3"}).reason
                == "EXCLUDED"
            )
        )
        t3 = [
            client.decide("live-segments", f"u{i}", attributes={"tenant": "t3"}) for i in range(500)
        ]
        assert {(d.arm, d.reason) for d in t3} == {("control", "EXCLUDED")}
        t0 = {
            client.decide("live-segments", f"u{i}", attributes={"tenant": "t0"}).arm
            for i in range(500)
        }
        assert t0 == {"control", "candidate"}
        # The page names the segment.
        wait_until(lambda: any(b"tenant=t3" in r.body for r in hook.requests))
        page = json.loads(next(r.body for r in hook.requests if b"tenant=t3" in r.body))
        assert page["alert"]["plan_key"] == "live-segments"
        # The rest goes on: more traffic, more evaluations, no rollback, t3 no longer tested.
        looked = Evaluation.objects.filter(plan__key="live-segments").count()
        drive(
            client,
            "live-segments",
            users=3_000,
            attributes=tenant_of,
            error_rate=error_rate,
            until=lambda: Evaluation.objects.filter(plan__key="live-segments").count() >= looked + 3,
            seed=5,
        )  # fmt: skip
    finally:
        client.close()
    assert status_of("live-segments") == PlanStatus.RUNNING
    assert not AuditEvent.objects.filter(plan__key="live-segments", action="rollback").exists()
    latest = Evaluation.objects.filter(plan__key="live-segments").latest("pk")
    tested = {s["value"] for s in latest.decision["segments"]}
    assert "t3" not in tested and tested <= {f"t{i}" for i in range(6)} | {"other"}
    assert Outcome.objects.filter(plan__key="live-segments", uncounted="excluded").exists()


# --- (c) QA overrides and exclusions served, counted in neither arm ---------------------------


def test_overrides_and_exclusions_are_served_and_counted_in_neither_arm(
    live_server_process: str,
) -> None:
    started_plan(
        "live-qa",
        phases=[{"kind": "ab_split", "percent": 50.0, "steps": [], "min_duration_minutes": 60, "min_samples": 1_000_000}],
        guardrails=[{"metric": "error_rate", "tolerance_kind": "relative", "tolerance": 1.5, "action": "rollback"}],
    )  # fmt: skip
    plan_targeting.rules_replace(
        plan_key="live-qa",
        rules=[{"name": "under contract", "when": [{"attribute": "tenant", "op": "in", "values": ["contract-co"]}], "then": "exclude"}],
        actor=person(),
    )  # fmt: skip
    expires = timezone.now() + timedelta(hours=1)
    for unit, arm in (("qa-1", "candidate"), ("qa-2", "candidate"), ("qa-3", "control")):
        plan_targeting.override_set(
            plan_key="live-qa", unit=unit, arm=arm, expires_at=expires, actor=person()
        )
    client = sdk_client(live_server_process, app_key(), "live-qa", flush_interval=0.2)
    rng = np.random.default_rng(6)
    served: Counter[tuple[str, str, str]] = Counter()  # (who, arm, reason)
    try:
        wait_until(lambda: "live-qa" in client.snapshot.plans)
        assert len(client.snapshot.plans["live-qa"].overrides) == 3
        for _ in range(3_000):
            # QA hammers the candidate: every request of theirs fails (the circuit breaker
            # would roll back at once if they counted); the contract tenant fails too.
            who = rng.choice(["user", "qa", "contract"], p=[0.6, 0.25, 0.15])
            if who == "qa":
                unit, attrs = f"qa-{rng.integers(1, 4)}", {"tenant": "qa"}
            elif who == "contract":
                unit, attrs = f"c-{rng.integers(0, 50)}", {"tenant": "contract-co"}
            else:
                unit, attrs = f"user-{rng.integers(0, 1_000)}", {"tenant": "acme"}
            d = client.decide("live-qa", unit, attributes=attrs)
            served[(who, d.arm, d.reason)] += 1
            failed = who != "user" or rng.random() < 0.02
            client.report(d, latency_ms=700.0, error="server_error" if failed else None)
        assert client.flush(timeout=30)
    finally:
        client.close()
    by_who: dict[str, set[tuple[str, str]]] = {}
    for (who, arm, reason), _ in served.items():
        by_who.setdefault(who, set()).add((arm, reason))
    assert by_who["qa"] == {("candidate", "OVERRIDE"), ("control", "OVERRIDE")}
    assert by_who["contract"] == {("control", "EXCLUDED")}
    assert by_who["user"] == {("control", "SPLIT"), ("candidate", "SPLIT")}
    # Every outcome stored, the QA's and the contract tenant's marked, not counted.
    stored = Counter(
        Outcome.objects.filter(plan__key="live-qa").values_list("uncounted", flat=True)
    )
    assert stored == {
        "override": sum(n for (who, _, _), n in served.items() if who == "qa"),
        "excluded": sum(n for (who, _, _), n in served.items() if who == "contract"),
        "": sum(n for (who, _, _), n in served.items() if who == "user"),
    }
    plan = MigrationPlan.objects.get(key="live-qa")
    catch_up()
    arms = {
        r.arm: aggregate_json.from_json(r.data)
        for r in StageAggregate.objects.filter(stage_id=plan.current_stage_id)
    }
    for arm in ("control", "candidate"):
        users = Outcome.objects.filter(plan=plan, uncounted="", arm=arm)
        assert arms[arm].requests == users.count()
        assert arms[arm].errors == users.exclude(error="").count()
    # The engine sees the users only: no rollback from the QA's failures.
    assert engine.plan_evaluate(plan_id=plan.pk).action != "rollback"
    assert status_of("live-qa") == PlanStatus.RUNNING
