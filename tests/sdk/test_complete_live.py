"""complete() against the real server (uvicorn, PostgreSQL, Redis) and the provider simulator
through the real openai and anthropic SDKs: the shadow sample, a fallback and a context-window
overflow stored as designed, and counted (or not) in the stage's statistics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from turnout.providers import RetryPolicy

from migrations_app.api.keys import apikey_create
from migrations_app.models import (
    Feedback,
    ModelSpec,
    Outcome,
    PlanPhase,
    ProviderConnection,
    ShadowSample,
    StageAggregate,
)
from migrations_app.outcomes import aggregate_json
from migrations_app.outcomes.segment_rollup import catch_up
from migrations_app.plans import lifecycle
from migrations_app.simulator import Simulator
from tests.conftest import eventually, sdk_client
from tests.factories import make_plan, person
from tests.providers.conftest import FAST

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

CONTROL = "gpt-4o-2024-08-06"
CANDIDATE = "claude-sonnet-4-20250514"
RETRY = RetryPolicy(max_attempts=2, base_s=0.01, max_backoff_s=0.02, max_total_s=5.0)
ASK = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "Where is my order?"},
]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(seed=5, default=FAST) as simulator:
        yield simulator


def _totals(stage: Any, arm: str) -> Any:
    catch_up()
    row = StageAggregate.objects.filter(stage=stage, arm=arm).first()
    return aggregate_json.from_json(row.data) if row is not None else None


def test_complete_end_to_end_shadow_fallback_and_context_window(
    live_server_process: str, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-live-test")
    ProviderConnection.objects.filter(name="openai").update(base_url=sim.url + "/v1")
    ProviderConnection.objects.filter(name="anthropic").update(base_url=sim.url)
    # 1000 tokens: the prompts here fit, a 5,000-character one does not.
    ModelSpec.objects.filter(model_id=CANDIDATE).update(context_window=1000)
    plan = make_plan("chat")
    PlanPhase.objects.filter(plan=plan, kind="shadow").update(percent=100.0)
    lifecycle.plan_start(plan_key=plan.key, actor=person())
    key = apikey_create(name="app", scopes=["decide", "report"])[1]

    with sdk_client(
        live_server_process, key, "chat", flush_interval=0.05, provider_retry=RETRY
    ) as client:
        entry = client.snapshot.plans["chat"]
        assert entry.fallback_to_control and entry.candidate.context_window == 1000

        # Shadow phase: control answers, the sample goes to the server with its answer.
        shadowed = client.complete("chat", "user-0", messages=ASK)
        assert shadowed.ok and shadowed.decision.shadow and shadowed.arm == "control"
        assert client.flush(10)
        sample = ShadowSample.objects.get(decision_id=shadowed.decision_id)
        assert sample.control["text"] == shadowed.text
        assert sample.request["messages"] == ASK
        assert sim.stats()["models"].get(CANDIDATE) is None  # no worker runs in this test

        lifecycle.plan_advance(plan_key="chat", actor=person())  # A/B split: 10 % candidate
        assert eventually(lambda: client.snapshot.plans["chat"].weight_bp == 1000)
        plan.refresh_from_db()
        stage = plan.current_stage
        arms = {client.decide("chat", f"user-{i}").arm: f"user-{i}" for i in range(200)}

        on_control = client.complete("chat", arms["control"], messages=ASK)
        sim.set_profile(CANDIDATE, {"fail_next": ["overloaded", "overloaded"]})
        fell_back = client.complete("chat", arms["candidate"], messages=ASK)
        served = client.complete("chat", arms["candidate"], messages=ASK)
        too_long = [{"role": "user", "content": "x" * 5000}]
        overflow = client.complete("chat", arms["candidate"], messages=too_long)
        client.feedback(fell_back.decision_id, 1)
        assert client.flush(10)

    assert on_control.ok and on_control.arm == "control"
    assert fell_back.ok and fell_back.fallback_reason == "candidate_error"
    assert [r.error for r in fell_back.results] == ["overloaded", None]
    assert served.ok and served.arm == "candidate" and not served.fell_back
    assert overflow.ok and overflow.fallback_reason == "context_window"
    assert sim.stats()["models"][CANDIDATE]["requests"] == 3  # two failed attempts, one answer

    def rows(decision_id: str) -> list[tuple[str, str, str]]:
        found = Outcome.objects.filter(decision_id=decision_id).order_by("ts")
        return [(o.arm, o.error, o.fallback) for o in found]

    assert rows(on_control.decision_id) == [("control", "", "")]
    assert rows(fell_back.decision_id) == [
        ("candidate", "overloaded", ""),
        ("control", "", "candidate_error"),
    ]
    assert rows(served.decision_id) == [("candidate", "", "")]
    assert rows(overflow.decision_id) == [("control", "", "context_window")]
    fallback_row = Outcome.objects.get(
        decision_id=fell_back.decision_id, fallback="candidate_error"
    )
    assert fallback_row.stage_id == stage.pk and fallback_row.cost_usd is not None
    assert eventually(lambda: Feedback.objects.filter(outcome=fallback_row).exists())

    # The stage's statistics: the candidate's failure and its answer; control's own request.
    candidate = _totals(stage, "candidate")
    assert (candidate.requests, candidate.errors_by_kind) == (2, {"overloaded": 1})
    assert candidate.feedback_n == 0  # the rating was of control's answer
    control = _totals(stage, "control")
    assert (control.requests, control.errors, control.feedback_n) == (1, 0, 0)
