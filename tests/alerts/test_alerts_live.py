"""A live rollback pages every configured channel once, through the outbox and a real Celery
worker; the recovery resolves the PagerDuty incident with the same dedup key."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from migrations_app.guardrails import engine
from migrations_app.models import AlertChannel, AlertDelivery
from migrations_app.outcomes import ingest
from tests.alerts.conftest import Receiver
from tests.alerts.smtp import SmtpReceiver
from tests.conftest import celery_process, wait_for
from tests.guardrails.conftest import put_totals, running_plan, synthetic_arm
from tests.outcomes.conftest import Everyone, outcome

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def test_a_rollback_pages_every_channel_once_and_the_recovery_resolves_it(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    smtp = SmtpReceiver()
    monkeypatch.setenv("T_SLACK_URL", f"{receiver.url}/slack")
    monkeypatch.setenv("T_PD_URL", f"{receiver.url}/pagerduty")
    monkeypatch.setenv("T_PD_KEY", "routing-key-123")
    monkeypatch.setenv("T_HOOK_URL", f"{receiver.url}/hook")
    monkeypatch.setenv("T_HOOK_SECRET", "hook-secret")
    monkeypatch.setenv("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
    monkeypatch.setenv("EMAIL_PORT", str(smtp.port))
    channels = [
        AlertChannel.objects.create(name="slack", kind="slack", url_env="T_SLACK_URL"),
        AlertChannel.objects.create(
            name="pd", kind="pagerduty", url_env="T_PD_URL", secret_env="T_PD_KEY"
        ),
        AlertChannel.objects.create(
            name="hook", kind="webhook", url_env="T_HOOK_URL", secret_env="T_HOOK_SECRET"
        ),
        AlertChannel.objects.create(name="mail", kind="email", recipients="oncall@example.com"),
    ]
    plan = running_plan()
    plan.alert_channels.set(channels)
    put_totals(
        plan,
        control=synthetic_arm(1, 20_000, error_rate=0.02),
        candidate=synthetic_arm(2, 20_000, error_rate=0.06),
    )
    try:
        with celery_process(
            "worker", "--concurrency", "4", "--pool", "threads", "--without-gossip",
            "--without-mingle", log_name="celery-worker-alerts.log",
        ):  # fmt: skip
            assert engine.plan_evaluate(plan_id=plan.pk).acted
            for _ in range(5):  # the guardrail keeps regressing: no second page
                engine.plan_evaluate(plan_id=plan.pk)
            wait_for(
                lambda: len(receiver.requests) == 3 and len(smtp.messages) == 1,
                lambda: (
                    [r.path for r in receiver.requests],
                    len(smtp.messages),
                    list(AlertDelivery.objects.values_list("event", "status", "last_error")),
                ),
            )
            paths = sorted(r.path for r in receiver.requests)
            assert paths == ["/hook", "/pagerduty", "/slack"]
            pd = json.loads(next(r for r in receiver.requests if r.path == "/pagerduty").body)
            assert pd["event_action"] == "trigger" and pd["payload"]["severity"] == "critical"
            assert pd["dedup_key"].endswith(":error_rate")
            hook = json.loads(next(r for r in receiver.requests if r.path == "/hook").body)
            assert hook["alert"]["guardrail"]["metric"] == "error_rate"
            assert hook["alert"]["guardrail"]["lower"] > 1.5
            assert "server_error" in hook["alert"]["error_kinds"]["candidate"]
            assert b"rolled back" in smtp.messages[0]

            # control is healthy after the rollback: the page resolves
            plan.refresh_from_db()
            rng = np.random.default_rng(3)
            events = [
                outcome(plan, error="server_error" if rng.random() < 0.02 else None)
                for _ in range(200)
            ]
            ingest.outcomes_ingest(identity=Everyone(), payload={"events": events})
            assert engine.plan_watch_recovery(plan_id=plan.pk) == "recovered"
            wait_for(
                lambda: (
                    sum(r.path == "/pagerduty" for r in receiver.requests) == 2
                    and not AlertDelivery.objects.filter(status="pending").exists()
                ),
                lambda: list(AlertDelivery.objects.values_list("event", "status", "last_error")),
            )
    finally:
        smtp.close()
    resolves = [json.loads(r.body) for r in receiver.requests[3:] if r.path == "/pagerduty"]
    assert {r["event_action"] for r in resolves} == {"resolve"}
    assert [r["dedup_key"] for r in resolves] == [pd["dedup_key"]]
    assert set(AlertDelivery.objects.values_list("status", flat=True)) == {"delivered"}


def test_an_escalation_re_triggers_under_its_own_key_and_recovery_resolves_both(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from migrations_app.models import PlanStage
    from tests.guardrails.test_recovery import control_traffic

    monkeypatch.setenv("T_PD_URL", f"{receiver.url}/pagerduty")
    monkeypatch.setenv("T_PD_KEY", "routing-key-123")
    pd = AlertChannel.objects.create(
        name="pd", kind="pagerduty", url_env="T_PD_URL", secret_env="T_PD_KEY"
    )
    with celery_process(
        "worker", "--concurrency", "2", "--pool", "threads", "--without-gossip",
        "--without-mingle", log_name="celery-worker-alerts.log",
    ):  # fmt: skip
        plan = running_plan()
        plan.alert_channels.add(pd)
        put_totals(
            plan,
            control=synthetic_arm(1, 20_000, error_rate=0.02),
            candidate=synthetic_arm(2, 20_000, error_rate=0.06),
        )
        assert engine.plan_evaluate(plan_id=plan.pk).acted
        plan.refresh_from_db()
        wait_for(lambda: len(receiver.requests) == 1)
        # control stays bad past escalate_after_minutes: paged again. The bad traffic is
        # 4.5 minutes old: inside the 5-minute recovery window now, outside it 2 minutes
        # from now, when the healthy traffic below is all the window holds.
        events = [
            outcome(plan, ts=time.time() - 270, error="server_error" if i % 3 == 0 else None)
            for i in range(200)
        ]
        assert ingest.outcomes_ingest(identity=Everyone(), payload={"events": events}).stored
        PlanStage.objects.filter(pk=plan.current_stage_id).update(
            started_at=timezone.now() - timedelta(minutes=plan.escalate_after_minutes, seconds=1)
        )
        assert engine.plan_watch_recovery(plan_id=plan.pk) == "escalated"
        assert engine.plan_watch_recovery(plan_id=plan.pk) == "not_recovered"  # once only
        wait_for(lambda: len(receiver.requests) == 2)
        # then control recovers: both incidents resolve
        control_traffic(plan, 200, 0.02, seed=6)
        later = timezone.now() + timedelta(minutes=2)
        assert engine.plan_watch_recovery(plan_id=plan.pk, now=later) == "recovered"
        wait_for(
            lambda: (
                len(receiver.requests) == 4
                and not AlertDelivery.objects.filter(status="pending").exists()
            ),
            lambda: list(AlertDelivery.objects.values_list("event", "status", "last_error")),
        )
    sent = [json.loads(r.body) for r in receiver.requests]
    trigger, escalation, *resolves = sent
    assert (trigger["event_action"], trigger["payload"]["severity"]) == ("trigger", "critical")
    assert (escalation["event_action"], escalation["payload"]["severity"]) == (
        "trigger",
        "critical",
    )
    assert escalation["dedup_key"] == f"{trigger['dedup_key']}:escalated"
    assert {r["event_action"] for r in resolves} == {"resolve"}
    assert sorted(r["dedup_key"] for r in resolves) == sorted(
        [trigger["dedup_key"], escalation["dedup_key"]]
    )
