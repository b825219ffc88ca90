"""The SDK sends a split's answers to the pointwise judge itself, against the real server
(its own process, PostgreSQL, Redis) and the provider simulator through the vendor SDKs: the
snapshot names the share only in a split with a judge, the samples complete() queued are stored
once with their arm and answer, and the judge scores them into each arm's judge_score."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from turnout.providers import Adapters

from migrations_app.api.keys import apikey_create
from migrations_app.judge import pointwise
from migrations_app.models import JudgeSample, ModelSpec, ProviderConnection, ShadowStatus
from migrations_app.outcomes.selectors import stage_totals
from migrations_app.plans import lifecycle
from migrations_app.shadow import calls
from migrations_app.simulator import Simulator
from tests.conftest import eventually, sdk_client
from tests.factories import make_plan, person
from tests.providers.conftest import FAST
from tests.sdk.test_complete import RETRY

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

JUDGE = "gpt-4o-mini-2024-07-18"
ASK = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "Where is my order 4411?"},
]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(seed=7, default=FAST) as simulator:
        yield simulator


def test_complete_sends_a_splits_answers_to_the_judge(
    live_server_process: str, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-live-test")
    monkeypatch.setattr(calls, "_adapters", Adapters())
    ProviderConnection.objects.filter(name="openai").update(base_url=sim.url + "/v1")
    ProviderConnection.objects.filter(name="anthropic").update(base_url=sim.url)
    sim.set_profile(JUDGE, {"answer": "judge"})
    plan = make_plan(
        "chat", judge_model=ModelSpec.objects.get(model_id=JUDGE), judge_sample_percent=100.0
    )
    lifecycle.plan_start(plan_key=plan.key, actor=person())
    key = apikey_create(name="app", scopes=["decide", "report"])[1]

    with sdk_client(
        live_server_process, key, "chat", flush_interval=0.05, provider_retry=RETRY
    ) as client:
        # Shadow: the pairs are judged there, and the snapshot names no share.
        assert client.snapshot.plans["chat"].judge_bp == 0
        lifecycle.plan_advance(plan_key="chat", actor=person())  # the A/B split, 10 %
        assert eventually(lambda: client.snapshot.plans["chat"].weight_bp == 1000)
        assert client.snapshot.plans["chat"].judge_bp == 10_000
        arms = {client.decide("chat", f"user-{i}").arm: f"user-{i}" for i in range(200)}
        answers = [
            client.complete("chat", arms[arm], messages=ASK)
            for arm in ("control", "candidate", "control", "candidate")
        ]
        assert all(a.ok for a in answers)
        assert client.flush(10)

    plan.refresh_from_db()
    stored = {s.decision_id: s for s in JudgeSample.objects.filter(plan=plan)}
    assert set(stored) == {a.decision_id for a in answers}
    for a in answers:
        s = stored[a.decision_id]
        assert (s.arm, s.answer, s.unit) == (a.arm, a.text, a.decision.unit)
        assert s.request["messages"] == ASK
        assert (s.status, s.stage_id) == (ShadowStatus.PENDING, plan.current_stage_id)
    counts = pointwise.judge_run([s.pk for s in stored.values()])
    assert counts["done"] == 4, counts
    totals = stage_totals(plan.current_stage)
    assert totals["control"].metrics["judge_score"].n == 2
    assert totals["candidate"].metrics["judge_score"].n == 2
