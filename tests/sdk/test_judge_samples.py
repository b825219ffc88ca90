"""complete() sends a share of a split's answers to the pointwise judge (POST
/api/v1/judge-samples) itself: the share the snapshot names (``judge_bp``), drawn by decision id,
through the reporter's buffer and sender thread (batched, idempotent ids, bounded, never
raising). Against the provider simulator and the stand-in control plane."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import turnout
from turnout import routing
from turnout.errors import SnapshotError
from turnout.snapshot import parse_plan

from migrations_app.simulator import Simulator
from tests.sdk.conftest import FakeTurnout, plan_entry
from tests.sdk.test_complete import CANDIDATE, CONTROL, HELLO, KEY_ENV, RETRY, sim_arm

MakeClient = Callable[..., turnout.Client]
ASK = [{"role": "system", "content": "Be brief."}, *HELLO]


@pytest.fixture
def split(
    fake: FakeTurnout, make_client: MakeClient, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., turnout.Client]:
    """``split(judge_bp=..., weight_bp=...)``: the plan "chat" at the simulator, in a split."""
    monkeypatch.setenv(KEY_ENV, "sk-sim")

    def build(*, judge_bp: int | None, weight_bp: int = 5000, **options: Any) -> turnout.Client:
        entry = plan_entry(weight_bp=weight_bp)
        entry["control"], entry["candidate"] = sim_arm(sim, CONTROL), sim_arm(sim, CANDIDATE)
        if judge_bp is not None:
            entry["judge_bp"] = judge_bp
        fake.set_plans([entry])
        client = make_client(stream=False, provider_retry=RETRY, **options)
        assert client.snapshot.plans["chat"].judge_bp == (judge_bp or 0)
        return client

    return build


def judged(client: turnout.Client, fake: FakeTurnout) -> list[dict[str, Any]]:
    assert client.flush(5.0)
    return list(fake.stored["judge"])


def test_every_answer_of_both_arms_goes_out_at_a_full_share(split, fake: FakeTurnout) -> None:
    client = split(judge_bp=10_000, flush_interval=30.0)
    answers = [client.complete("chat", f"user-{i}", messages=ASK) for i in range(12)]
    assert {a.arm for a in answers} == {"control", "candidate"}
    samples = {s["decision_id"]: s for s in judged(client, fake)}
    assert set(samples) == {a.decision_id for a in answers}
    for a in answers:
        s = samples[a.decision_id]
        assert (s["arm"], s["answer"], s["unit"]) == (a.arm, a.text, a.decision.unit)
        assert (s["plan"], s["run"], s["plan_version"]) == ("chat", 1, a.decision.plan_version)
        assert s["request"] == {"messages": ASK}
    # Batched: one POST carries them all, under "samples", beside the outcomes' own batch.
    (batch,) = [b for b in fake.batches if b["kind"] == "judge"]
    assert set(batch["payload"]) == {"samples"} and batch["headers"]["Content-Encoding"] == "gzip"
    assert len(fake.stored["outcomes"]) == 12


def test_the_share_is_drawn_by_decision_id(split, fake: FakeTurnout) -> None:
    client = split(judge_bp=2500)
    answers = [client.complete("chat", f"user-{i}", messages=ASK) for i in range(120)]
    expected = {
        a.decision_id for a in answers if routing.judge_bucket("salt-1", a.decision_id) < 2500
    }
    assert {s["decision_id"] for s in judged(client, fake)} == expected
    assert 10 <= len(expected) <= 55  # a quarter of 120, give or take


@pytest.mark.parametrize("judge_bp", [None, 0])
def test_no_share_no_samples(split, fake: FakeTurnout, judge_bp: int | None) -> None:
    client = split(judge_bp=judge_bp)
    for i in range(10):
        client.complete("chat", f"user-{i}", messages=ASK)
    assert judged(client, fake) == []
    assert len(fake.stored["outcomes"]) == 10


def test_failed_and_fallen_back_answers_are_not_sampled(
    split, fake: FakeTurnout, sim: Simulator
) -> None:
    client = split(judge_bp=10_000, weight_bp=10_000)
    sim.set_profile(CANDIDATE, {"errors": {"server_error": 1.0}})
    fell_back = client.complete("chat", "user-1", messages=ASK)
    assert fell_back.ok and fell_back.fell_back  # control's answer, counted in neither arm
    sim.set_profile(CANDIDATE, {"errors": {"quota": 1.0}})
    failed = client.complete("chat", "user-2", messages=ASK)
    assert not failed.ok
    assert judged(client, fake) == []
    assert len(fake.stored["outcomes"]) == 3  # the failure, the fallback, the refusal


def test_a_shadow_decision_is_not_sampled(
    fake: FakeTurnout, make_client: MakeClient, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-sim")
    entry = plan_entry(shadow_bp=10_000)
    entry["control"], entry["candidate"] = sim_arm(sim, CONTROL), sim_arm(sim, CANDIDATE)
    # A shadow stage's pairs are judged there: the server never names a share in shadow, and
    # a shadow decision's answer is not sampled even if it did.
    entry["judge_bp"] = 10_000
    fake.set_plans([entry])
    client = make_client(stream=False, provider_retry=RETRY)
    answer = client.complete("chat", "user-1", messages=ASK)
    assert answer.decision.shadow
    assert judged(client, fake) == []
    assert len(fake.stored["shadow"]) == 1


def test_a_lost_answer_is_resent_with_the_same_ids(split, fake: FakeTurnout) -> None:
    """The server stored the batch but its answer was lost: the retry is a duplicate, stored
    once."""
    client = split(judge_bp=10_000)
    fake.then("/api/v1/judge-samples", 503, store=True)
    answers = [client.complete("chat", f"user-{i}", messages=ASK) for i in range(5)]
    assert len(judged(client, fake)) == 5
    first, second = [b for b in fake.batches if b["kind"] == "judge"][:2]
    ids = [s["id"] for s in first["payload"]["samples"]]
    assert (first["status"], second["status"]) == (503, 200)
    assert [s["id"] for s in second["payload"]["samples"]] == ids
    assert fake.duplicates == len(ids)
    assert {s["decision_id"] for s in fake.stored["judge"]} == {a.decision_id for a in answers}


def test_the_buffer_is_bounded_and_what_it_drops_is_counted(split, fake: FakeTurnout) -> None:
    """The control plane is down: complete() still answers, the judge's buffer keeps at most
    ``buffer_size`` samples and counts the rest as dropped."""
    client = split(judge_bp=10_000, buffer_size=3)
    fake.down = True
    answers = [client.complete("chat", f"user-{i}", messages=ASK) for i in range(8)]
    assert all(a.ok for a in answers)
    # Outcomes and judge samples each overflow by 5 of 8 (one of each may be in flight).
    assert client.dropped >= 8
    assert len(client._reporter._judge) <= 3


def test_a_failing_reporter_never_reaches_the_caller(
    split, fake: FakeTurnout, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = split(judge_bp=10_000)

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug in the judge's buffer")

    monkeypatch.setattr(client._reporter, "judge", broken)
    answer = client.complete("chat", "user-1", messages=ASK)
    assert answer.ok and answer.text
    assert judged(client, fake) == []
    assert len(fake.stored["outcomes"]) == 1


@pytest.mark.parametrize("bad", [-1, 10_001, "10", True, 2.5])
def test_a_malformed_share_refuses_the_snapshot(bad: Any) -> None:
    entry = {**plan_entry(weight_bp=5000), "judge_bp": bad}
    with pytest.raises(SnapshotError) as refused:
        parse_plan(entry)
    assert refused.value.details["field"] == "chat.judge_bp"
    assert parse_plan({**entry, "judge_bp": 700}).judge_bp == 700
    assert parse_plan(plan_entry()).judge_bp == 0
