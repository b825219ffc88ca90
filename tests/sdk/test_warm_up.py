"""complete()'s arms are warmed up when a snapshot arrives (issue 14, item 5a): a step that
starts a candidate's split found its adapter cold, and its first request paid the vendor SDK's
import and client construction (7-11 s under load in make demo) inside the latency sample."""

from __future__ import annotations

from typing import Any

import pytest
import turnout
from turnout.providers.base import spec_key

from migrations_app.simulator import Simulator
from tests.conftest import eventually
from tests.sdk.conftest import FakeTurnout, plan_entry
from tests.sdk.test_complete import CANDIDATE, CONTROL, HELLO, KEY_ENV, RETRY, sim_arm


def _kept(client: turnout.Client) -> set[str]:
    return set(client._providers._kept)


def _entry(sim: Simulator, weight_bp: int, version: int) -> dict[str, Any]:
    entry = plan_entry(weight_bp=weight_bp, version=version)
    entry["control"], entry["candidate"] = sim_arm(sim, CONTROL), sim_arm(sim, CANDIDATE)
    return entry


def test_a_step_to_the_candidate_warms_its_adapter_before_its_first_request(
    make_client: Any, sim: Simulator, fake: FakeTurnout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-sim")
    fake.set_plans([_entry(sim, 0, 1)])
    client = make_client(stream=False, poll_interval=0.05, provider_retry=RETRY)
    assert client.complete("chat", "u1", messages=HELLO).ok
    candidate = client.snapshot.plans["chat"].candidate
    assert spec_key(candidate) not in _kept(client)  # 0 %: not warmed
    version = fake.set_plans([_entry(sim, 5000, 2)])
    assert eventually(lambda: client.snapshot_version == version)
    assert eventually(lambda: spec_key(candidate) in _kept(client))
    assert sim.stats()["models"].get(CANDIDATE, {}).get("requests", 0) == 0  # no call made


def test_a_client_that_never_completes_imports_no_vendor_sdk(
    make_client: Any, fake: FakeTurnout
) -> None:
    fake.set_plans([plan_entry(weight_bp=5000)])
    client = make_client(stream=False, poll_interval=0.05)
    client.decide("chat", "u1")
    version = fake.set_plans([plan_entry(weight_bp=6000, version=2)])
    assert eventually(lambda: client.snapshot_version == version)
    assert _kept(client) == set()
