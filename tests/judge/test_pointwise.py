"""The pointwise judge (issue 15, item 3): a split's answers sent through POST
/api/v1/judge-samples, scored on the plan's rubric by the simulated judge through the vendor SDK,
and folded into each arm's judge_score per unit; bad input named by index; a score that cannot
be read stored as such and counted nowhere; the judge's budget kept."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from turnout.providers import Adapters

from migrations_app.api.keys import apikey_create
from migrations_app.guardrails.stats import MetricSums
from migrations_app.judge import pointwise
from migrations_app.models import (
    JudgeSample,
    JudgeSpend,
    ModelSpec,
    ProviderConnection,
    ShadowStatus,
)
from migrations_app.outcomes.selectors import stage_totals
from migrations_app.shadow import calls
from migrations_app.simulator import Simulator
from tests.factories import started_plan

pytestmark = pytest.mark.django_db(transaction=True)

JUDGE = "gpt-4o-mini-2024-07-18"
QUESTION = "Where is my order 4411?"
GOOD = f"You said: {QUESTION}"
WRONG = "Thanks for reaching out! Our stores are open from 9 am to 6 pm, Monday to Saturday."


@pytest.fixture
def judge_at(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    ProviderConnection.objects.filter(name="openai").update(base_url=f"{sim.url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-judge")
    monkeypatch.setattr(calls, "_adapters", Adapters())
    sim.set_profile(JUDGE, {"answer": "judge"})
    return sim


@pytest.fixture
def reporter() -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {apikey_create(name='app', scopes=['report'])[1]}")


def split_plan(**fields: Any):
    return started_plan(
        advances=1, judge_model=ModelSpec.objects.get(model_id=JUDGE), judge_sample_percent=10.0,
        **fields,
    )  # fmt: skip


def event(plan, arm: str, answer: str, unit: str = "", **fields: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex, "decision_id": uuid.uuid4().hex, "plan": plan.key,
        "plan_version": plan.version, "run": plan.current_run.number,
        "unit": unit or f"user-{uuid.uuid4().hex[:6]}", "arm": arm, "ts": time.time(),
        "request": {"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": QUESTION}]},
        "answer": answer, **fields,
    }  # fmt: skip


def post(client: Client, *events: dict[str, Any]) -> dict[str, Any]:
    response = client.post(
        "/api/v1/judge-samples", {"samples": list(events)}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    return response.json()


def run_all(plan) -> dict[str, int]:
    ids = list(JudgeSample.objects.filter(plan=plan).values_list("pk", flat=True))
    return pointwise.judge_run(ids)


def test_each_arms_answers_are_scored_and_folded_per_unit(judge_at, reporter):
    plan = split_plan()
    events = [event(plan, "control", GOOD, f"u{i % 4}") for i in range(12)]
    events += [event(plan, "candidate", WRONG if i % 2 else GOOD, f"v{i % 3}") for i in range(12)]
    assert post(reporter, *events) == {"stored": 24, "duplicates": 0, "rejected": []}
    assert post(reporter, events[0])["duplicates"] == 1  # stored once
    counts = run_all(plan)
    assert counts["done"] == 24 and counts["lost"] == 0
    assert judge_at.stats()["models"][JUDGE]["requests"] == 24
    totals = stage_totals(plan.current_stage)
    control: MetricSums = totals["control"].metrics["judge_score"]
    candidate: MetricSums = totals["candidate"].metrics["judge_score"]
    assert control.n == 12 and control.mean >= 4.0  # good answers: 4 or 5
    assert candidate.n == 12 and 2.0 < candidate.mean < 4.0  # half of them wrong: 1 or 2
    assert (control.clusters.units, candidate.clusters.units) == (4, 3)  # per user
    stored = JudgeSample.objects.filter(plan=plan, arm="candidate", answer=WRONG).first()
    assert stored.status == ShadowStatus.DONE and stored.score in (1, 2)
    assert stored.verdict["reason"] and stored.cost_usd > 0
    spend = JudgeSpend.objects.get(plan=plan)
    assert spend.calls == 24 and spend.cost_usd == pytest.approx(
        sum(JudgeSample.objects.filter(plan=plan).values_list("cost_usd", flat=True))
    )
    # Run again: nothing is scored or counted twice.
    assert run_all(plan)["claimed"] == 0
    assert stage_totals(plan.current_stage)["control"].metrics["judge_score"].n == 12


def test_an_unreadable_score_is_stored_and_counted_nowhere(judge_at, reporter):
    judge_at.set_profile(JUDGE, {"answer": "judge", "judge_unparsable": 1.0})
    plan = split_plan()
    post(reporter, event(plan, "candidate", WRONG), event(plan, "control", GOOD))
    assert run_all(plan)["done"] == 2
    for s in JudgeSample.objects.filter(plan=plan):
        assert (s.status, s.score, s.verdict["error"]) == (ShadowStatus.DONE, None, "unparsable")
    totals = stage_totals(plan.current_stage)
    assert "judge_score" not in totals["control"].metrics
    assert "judge_score" not in totals["candidate"].metrics


def test_bad_samples_are_named_by_index_and_nothing_of_them_is_stored(reporter):
    plan = split_plan()
    good = event(plan, "control", GOOD)
    result = post(
        reporter,
        good,
        event(plan, "both", GOOD),
        event(plan, "control", ""),
        event(plan, "control", GOOD, request={"messages": []}),
        {**event(plan, "control", GOOD), "plan": "no-such-plan"},
        event(plan, "control", "x" * 200_001),
        event(plan, "control", "a\u0000b"),
    )
    assert result["stored"] == 1
    assert [(r["index"], r["field"], r["code"]) for r in result["rejected"]] == [
        (1, "arm", "invalid"),
        (2, "answer", "invalid"),
        (3, "request.messages", "invalid"),
        (4, "plan", "plan_not_found"),
        (5, "answer", "invalid"),
        (6, "answer", "invalid"),
    ]
    assert list(JudgeSample.objects.values_list("pk", flat=True)) == [good["id"]]


def test_samples_that_will_never_be_judged_are_stored_skipped_with_the_reason(reporter):
    in_shadow = started_plan(judge_model=ModelSpec.objects.get(model_id=JUDGE))
    no_judge = started_plan(advances=1)
    post(reporter, event(in_shadow, "control", GOOD), event(no_judge, "candidate", GOOD))
    reasons = dict(JudgeSample.objects.values_list("plan__key", "skip_reason"))
    assert reasons == {
        in_shadow.key: "a shadow stage: the pairs are judged there",
        no_judge.key: "the plan has no judge model",
    }
    assert set(JudgeSample.objects.values_list("status", flat=True)) == {ShadowStatus.SKIPPED}


def test_the_judge_skips_what_its_daily_budget_has_no_room_for(judge_at, reporter):
    ModelSpec.objects.filter(model_id=JUDGE).update(
        input_price_per_mtok=Decimal("10000"), output_price_per_mtok=Decimal("10000")
    )
    plan = split_plan(judge_budget_usd_per_day=Decimal("1.00"))
    post(reporter, *(event(plan, "control", GOOD) for _ in range(6)))
    counts = run_all(plan)
    spend = JudgeSpend.objects.get(plan=plan)
    assert counts["done"] == spend.calls < 6 and spend.skipped == 6 - spend.calls
    skipped = JudgeSample.objects.filter(plan=plan, status=ShadowStatus.SKIPPED)
    assert skipped.count() == 6 - spend.calls
    assert all("daily budget" in s.skip_reason for s in skipped)


def test_the_sweeper_hands_on_lost_and_abandoned_samples_oldest_first(reporter):
    plan = split_plan()
    post(reporter, *(event(plan, "control", GOOD) for _ in range(5)))
    s = list(JudgeSample.objects.filter(plan=plan).order_by("pk").values_list("pk", flat=True))
    now = timezone.now()
    lease = timedelta(seconds=settings.TURNOUT_SHADOW_LEASE_SECONDS)
    rows = JudgeSample.objects
    rows.filter(pk=s[0]).update(created_at=now - 3 * lease)  # a lost task
    rows.filter(pk=s[1]).update(created_at=now - lease / 2)  # queued, not lost yet
    rows.filter(pk=s[2]).update(  # its worker died mid-call
        status=ShadowStatus.RUNNING, created_at=now - 2 * lease, lease_until=now - lease / 10
    )
    rows.filter(pk=s[3]).update(  # being judged
        status=ShadowStatus.RUNNING, created_at=now - 4 * lease, lease_until=now + lease
    )
    rows.filter(pk=s[4]).update(status=ShadowStatus.DONE, created_at=now - 5 * lease)
    assert pointwise.judge_sweep(now=now) == [s[0], s[2]]
    assert pointwise.judge_sweep(now=now, limit=1) == [s[0]]
