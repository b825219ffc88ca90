"""Shadow samples from the SDK to a live server."""

from __future__ import annotations

from typing import Any

import pytest

from migrations_app.api.keys import apikey_create
from migrations_app.models import MigrationPlan, ShadowSample
from tests.conftest import sdk_client
from tests.factories import started_plan

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def test_the_sdk_sends_only_shadow_decisions_and_each_sample_once(live_server_process: str) -> None:
    started_plan("chat")  # shadow 10 %
    key = apikey_create(name="app", scopes=["decide", "report"])[1]
    client = sdk_client(live_server_process, key, "chat", flush_interval=0.1)
    shadowed: list[Any] = []
    try:
        for i in range(400):
            d = client.decide("chat", unit=f"user-{i}")
            if d.shadow:
                shadowed.append(d)
            client.shadow_sample(
                d,
                messages=[{"role": "user", "content": f"Hi, I am user{i}@example.com"}],
                control_text="Hello!",
                latency_ms=800.0,
                input_tokens=20,
                output_tokens=5,
            )
        assert client.flush(timeout=30)
    finally:
        client.close()
    assert 10 < len(shadowed) < 90  # ~10 % of 400
    stored = ShadowSample.objects.filter(plan=MigrationPlan.objects.get(key="chat"))
    assert sorted(stored.values_list("decision_id", flat=True)) == sorted(
        d.decision_id for d in shadowed
    )
    assert all("@" not in s.request["messages"][0]["content"] for s in stored)
    assert client.dropped == 0 and client.rejected == 0
