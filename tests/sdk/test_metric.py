"""Client.metric and report(metrics=...): return at once, never raise, travel as the contract
says (after the outcomes they are about), bad values left out off the request path."""

from __future__ import annotations

import math
from collections.abc import Callable

import turnout

from tests.sdk.conftest import FakeTurnout

MakeClient = Callable[..., turnout.Client]


def test_metric_values_travel_to_the_metrics_path(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    client = make_client(stream=False)
    d = client.decide("chat", "user-1")
    client.report(d, latency_ms=100.0)
    client.metric(d, "task_completed", True)
    client.metric(d.decision_id, "rating", 4.5)
    assert client.flush(timeout=10)
    paths = [b["path"] for b in fake.batches]
    assert paths == ["/api/v1/outcomes", "/api/v1/metrics"]
    first, second = fake.stored["metrics"]
    assert first | {"id": "x", "ts": 0} == {
        "id": "x", "ts": 0, "decision_id": d.decision_id, "plan": "chat",
        "name": "task_completed", "value": 1,
    }  # fmt: skip
    # A bare decision id carries no plan: the server finds it through the outcome.
    assert "plan" not in second and second["value"] == 4.5
    assert len({first["id"], second["id"]}) == 2


def test_report_carries_metrics_with_the_outcome(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    client = make_client(stream=False)
    d = client.decide("chat", "user-1")
    client.report(d, latency_ms=100.0, metrics={"task_completed": 0, "rating": 3})
    client.report(d, latency_ms=100.0)
    assert client.flush(timeout=10)
    with_metrics, without = fake.stored["outcomes"]
    assert with_metrics["metrics"] == {"task_completed": 0, "rating": 3}
    assert "metrics" not in without


def test_bad_metrics_never_raise_and_are_left_out(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    client = make_client(stream=False)
    d = client.decide("chat", "user-1")
    client.report(d, latency_ms=1.0, metrics={"ok": 1, "Bad Name": 1, "nan": math.nan})
    client.report(d, latency_ms=1.0, metrics=["not", "a", "mapping"])  # type: ignore[arg-type]
    client.metric(d, "x", math.inf)
    client.metric(d, "", 1)
    client.metric(None, "x", 1)  # type: ignore[arg-type]
    client.metric(d, "fine", 0)
    assert client.flush(timeout=10)
    assert [o.get("metrics") for o in fake.stored["outcomes"]] == [{"ok": 1}, None]
    assert [(m["name"], m["value"]) for m in fake.stored["metrics"]] == [("fine", 0)]
    assert client.dropped == 3


def test_metric_after_close_is_ignored(fake: FakeTurnout, make_client: MakeClient) -> None:
    client = make_client(stream=False)
    d = client.decide("chat", "user-1")
    client.close()
    client.metric(d, "task_completed", 1)
    assert fake.stored["metrics"] == []
