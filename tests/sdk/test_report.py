"""Client.report / feedback: returns at once, batches gzip bodies, retries only what may
succeed later, never sends an event twice, and says what it dropped."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from email.utils import formatdate

import pytest
import turnout
from turnout.client import _retry_after

from tests.conftest import eventually
from tests.sdk.conftest import FakeTurnout, plan_entry

OUTCOMES = "/api/v1/outcomes"
FEEDBACK = "/api/v1/feedback"
MakeClient = Callable[..., turnout.Client]
CONTRACT_KEYS = {
    "id", "decision_id", "plan", "run", "plan_version", "arm", "unit", "ts",
    "latency_ms", "ttft_ms", "error", "input_tokens", "output_tokens",
}  # fmt: skip


def report_many(client: turnout.Client, n: int, prefix: str = "u") -> list[str]:
    ids = []
    for i in range(n):
        decision = client.decide("chat", f"{prefix}{i}")
        client.report(decision, latency_ms=100.0 + i, input_tokens=10, output_tokens=5)
        ids.append(decision.decision_id)
    return ids


def test_a_batch_is_gzip_json_in_the_contract_shape(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    client = make_client(stream=False)
    decision = client.decide("chat", "user-1")
    client.report(
        decision, latency_ms=812.0, ttft_ms=190.0, error=None, input_tokens=1500, output_tokens=420
    )
    client.report(decision, latency_ms=30.5, error="rate_limited")
    assert client.flush(timeout=10)
    batch = fake.batches[0]
    assert batch["headers"]["Content-Encoding"] == "gzip"
    assert batch["headers"]["Content-Type"] == "application/json"
    assert json.loads(gzip.decompress(batch["raw"])) == batch["payload"]
    payload = batch["payload"]
    assert payload["client"] == {"sdk": "turnout-python/0.1.0", "dropped": 0}
    first, second = payload["events"]
    assert set(first) == CONTRACT_KEYS and len(first["id"]) == 32
    assert first | {"id": "x", "ts": 0} == {
        "id": "x", "ts": 0, "decision_id": decision.decision_id, "plan": "chat", "run": 1,
        "plan_version": 1, "arm": decision.arm, "unit": "user-1", "latency_ms": 812.0,
        "ttft_ms": 190.0, "error": None, "input_tokens": 1500, "output_tokens": 420,
    }  # fmt: skip
    assert (second["error"], second["input_tokens"], second["ttft_ms"]) == (
        "rate_limited",
        None,
        None,
    )
    assert abs(first["ts"] - time.time()) < 60


def test_batches_hold_at_most_batch_size(fake: FakeTurnout, make_client: MakeClient) -> None:
    client = make_client(stream=False, batch_size=100, flush_interval=3600)
    report_many(client, 250)  # 100 buffered wakes the sender before the interval
    assert eventually(lambda: len(fake.stored["outcomes"]) >= 200)
    assert client.flush(timeout=10)
    assert [len(b["payload"]["events"]) for b in fake.batches] == [100, 100, 50]


def test_a_503_spell_loses_nothing_and_duplicates_nothing(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    client = make_client(stream=False, batch_size=200)
    fake.then(OUTCOMES, 503, times=3)
    fake.then(OUTCOMES, 502)
    decisions = report_many(client, 1000)
    assert client.flush(timeout=30)
    stored = fake.stored["outcomes"]
    assert sorted(e["decision_id"] for e in stored) == sorted(decisions)
    assert len({e["id"] for e in stored}) == 1000 and fake.duplicates == 0
    # The refused attempts carried the very ids that were stored later: retries, not copies.
    refused = [e["id"] for b in fake.batches if b["status"] != 200 for e in b["payload"]["events"]]
    assert refused and set(refused) <= {e["id"] for e in stored}
    assert client.dropped == 0


def test_a_batch_whose_answer_was_lost_is_resent_with_the_same_ids(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    """The server stored the batch but the client saw a 503: the resend carries the same ids,
    so an idempotent server keeps one copy of each event."""
    client = make_client(stream=False)
    fake.then(OUTCOMES, 503, store=True)
    report_many(client, 10)
    assert client.flush(timeout=10)
    first, second = fake.batches
    assert [e["id"] for e in first["payload"]["events"]] == [
        e["id"] for e in second["payload"]["events"]
    ]
    assert len(fake.stored["outcomes"]) == 10 and fake.duplicates == 10


def test_4xx_is_not_retried_and_the_drop_is_reported(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    client = make_client(stream=False)
    fake.then(OUTCOMES, 400)
    report_many(client, 5)
    assert client.flush(timeout=10)
    time.sleep(0.3)  # a retry, were there one, would come within the 0.05 s backoff
    assert [b["status"] for b in fake.batches] == [400]
    assert client.dropped == 5
    report_many(client, 2, prefix="later")
    assert client.flush(timeout=10)
    assert fake.batches[-1]["status"] == 200
    assert fake.batches[-1]["payload"]["client"]["dropped"] == 5
    report_many(client, 1, prefix="again")
    assert client.flush(timeout=10)
    assert fake.batches[-1]["payload"]["client"]["dropped"] == 0  # told once


@pytest.mark.parametrize("status", [401, 403, 413, 422])
def test_other_4xx_are_not_retried_either(
    fake: FakeTurnout, make_client: MakeClient, status: int
) -> None:
    client = make_client(stream=False)
    fake.then(OUTCOMES, status)
    report_many(client, 3)
    assert client.flush(timeout=10)
    time.sleep(0.2)
    assert [b["status"] for b in fake.batches] == [status] and client.dropped == 3


def test_retry_after_is_honoured(fake: FakeTurnout, make_client: MakeClient) -> None:
    client = make_client(stream=False, max_backoff=0.01)  # without Retry-After: ~10 ms
    fake.then(OUTCOMES, 429, {"Retry-After": "1"})
    fake.then(OUTCOMES, 503, {"Retry-After": "1"})
    report_many(client, 3)
    assert client.flush(timeout=15)
    attempts = [r["at"] for r in fake.requests_to(OUTCOMES)]
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= 0.9 and attempts[2] - attempts[1] >= 0.9
    assert len(fake.stored["outcomes"]) == 3


def test_retry_after_parsing() -> None:
    assert _retry_after("2") == 2.0
    assert _retry_after("0") == 0.0
    assert _retry_after("99999") == 120.0  # capped
    assert _retry_after("soon") is None and _retry_after(None) is None
    in_ten = _retry_after(formatdate(time.time() + 10, usegmt=True))
    assert in_ten is not None and 8 <= in_ten <= 10
    assert _retry_after(formatdate(time.time() - 10, usegmt=True)) == 0.0


def test_server_gone_buffer_full_drops_are_counted_and_reported(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    client = make_client(stream=False, buffer_size=100, batch_size=10)
    fake.down = True  # every connection cut without an answer
    started = time.monotonic()
    report_many(client, 1000)
    # report() never waited on the network (bounded, not a speed claim).
    assert time.monotonic() - started < 10
    # 1000 = buffered (<= 100) + one batch in flight (<= 10) + dropped
    assert 890 <= client.dropped <= 1000
    dropped = client.dropped
    fake.down = False
    assert client.flush(timeout=15)
    assert client.dropped == dropped
    first_ok = next(b for b in fake.batches if b["status"] == 200)
    assert first_ok["payload"]["client"]["dropped"] == dropped
    assert len(fake.stored["outcomes"]) == 1000 - dropped
    assert fake.duplicates == 0


def test_bad_values_are_dropped_and_counted_never_raised(
    fake: FakeTurnout, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(stream=False)
    d = client.decide("chat", "u")
    client.report(d, latency_ms=1.0, error="exploded")  # not a contract error kind
    client.report(d, latency_ms=1.0, error="exploded")
    client.report(d, latency_ms=float("nan"))
    client.report(d, latency_ms=-3)
    client.report(d, latency_ms="fast")  # type: ignore[arg-type]
    client.report(d, latency_ms=1.0, input_tokens=1.5)  # type: ignore[arg-type]
    client.report("not a decision", latency_ms=1.0)  # type: ignore[arg-type]
    client.report(d, latency_ms=5.0, error="timeout")  # the one good event
    assert client.flush(timeout=10)
    assert [e["latency_ms"] for e in fake.stored["outcomes"]] == [5.0]
    assert client.dropped == 7
    assert sum("exploded" in r.getMessage() for r in caplog.records) == 1  # logged once
    # Three different bad latencies, one line: logged per kind of mistake, not per value.
    assert sum("latency_ms" in r.getMessage() for r in caplog.records) == 1
    assert fake.batches[0]["payload"]["client"]["dropped"] == 7


def test_feedback(fake: FakeTurnout, make_client: MakeClient) -> None:
    client = make_client(stream=False)
    d = client.decide("chat", "u")
    client.feedback(d.decision_id, 1)
    client.feedback(d.decision_id, -1, scale="thumbs")
    client.feedback(d, 4, scale="five")  # a Decision is accepted for its id
    client.feedback(d.decision_id, 0)  # not a thumb
    client.feedback(d.decision_id, 6, scale="five")
    client.feedback(d.decision_id, 1, scale="stars")
    client.feedback("", 1)
    assert client.flush(timeout=10)
    batch = next(b for b in fake.batches if b["kind"] == "feedback")
    assert batch["headers"]["Content-Encoding"] == "gzip"
    assert set(batch["payload"]) == {"events"}  # the contract's feedback body
    events = fake.stored["feedback"]
    assert [(e["score"], e["scale"]) for e in events] == [
        (1, "thumbs"),
        (-1, "thumbs"),
        (4, "five"),
    ]
    assert all(e["decision_id"] == d.decision_id and len(e["id"]) == 32 for e in events)
    assert set(events[0]) == {"id", "decision_id", "score", "scale", "ts"}
    assert client.dropped == 4


def test_close_flushes_what_is_buffered(fake: FakeTurnout, make_client: MakeClient) -> None:
    client = make_client(stream=False, flush_interval=3600)
    ids = report_many(client, 42)
    client.feedback(ids[0], 1)
    client.close(timeout=10)
    assert sorted(e["decision_id"] for e in fake.stored["outcomes"]) == sorted(ids)
    assert len(fake.stored["feedback"]) == 1


def test_close_with_the_server_down_ends_by_its_deadline(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    client = make_client(stream=False, max_backoff=0.5)
    fake.down = True
    report_many(client, 30)
    started = time.monotonic()
    client.close(timeout=1.0)
    assert time.monotonic() - started < 6  # bounded, not hanging on a dead server
    assert client.dropped == 30


def test_report_returns_for_a_decision_made_without_a_plan(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    fake.set_plans([plan_entry("other")])
    client = make_client(stream=False)
    d = client.decide("chat", "u", default=turnout.arm("openai", "gpt-4o"))
    client.report(d, latency_ms=3.0)
    assert client.flush(timeout=10)
    (event,) = fake.stored["outcomes"]
    assert (event["plan"], event["arm"], event["run"]) == ("", "control", 0)
