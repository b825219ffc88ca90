"""Client.report / feedback: returns at once, batches gzip bodies, retries only what may
succeed later, never sends an event twice, and says what it dropped."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from email.utils import formatdate

import pytest
import turnout
from turnout.reporter import retry_after as _retry_after

from tests.conftest import eventually
from tests.sdk.conftest import FakeTurnout, plan_entry, snapshot_body

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
    # The sender drains what is buffered when it wakes, so where the batches are cut depends
    # on how far the reporting thread got meanwhile: [100, 100, 50] on a quiet machine,
    # [100, 28, 100, 22] on a busy one. What holds either way: none is larger than
    # batch_size, the first is the one the hundredth event woke, and every event went once.
    sizes = [len(b["payload"]["events"]) for b in fake.batches]
    assert sizes[0] == 100 and max(sizes) == 100 and min(sizes) > 0 and sum(sizes) == 250
    assert len(fake.stored["outcomes"]) == 250 and fake.duplicates == 0


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


def test_an_event_the_server_keeps_failing_on_is_dropped_alone_and_reporting_goes_on(
    fake: FakeTurnout, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch answered 500 again and again (an event the server cannot store) is split until
    the event is alone, then that one event is dropped, counted and logged: the rest of its
    batch, and everything reported after it, still arrives. It blocked the sender for good."""
    fake.snapshot = snapshot_body([plan_entry(shadow_bp=10_000)])  # every unit shadowed
    fake.poison = lambda e: e["unit"] == "poison0" or e.get("control", {}).get("text") == "\0"
    client = make_client(stream=False, batch_size=16, flush_interval=3600)
    report_many(client, 7, prefix="before")
    report_many(client, 1, prefix="poison")
    report_many(client, 8, prefix="beside")  # the same batch of 16
    shadowed = client.decide("chat", "shadowed")
    for text in ("\0", "fine"):
        client.shadow_sample(
            shadowed, messages=[{"role": "user", "content": "hi"}], control_text=text,
            latency_ms=1.0,
        )  # fmt: skip
    assert client.flush(timeout=20)
    after = report_many(client, 5, prefix="after")
    assert client.flush(timeout=20)
    units = sorted(e["unit"] for e in fake.stored["outcomes"])
    assert units == sorted(
        [f"before{i}" for i in range(7)] + [f"beside{i}" for i in range(8)]
        + [f"after{i}" for i in range(5)]
    )  # fmt: skip
    assert len(after) == 5 and fake.duplicates == 0
    assert [s["control"]["text"] for s in fake.stored["shadow"]] == ["fine"]
    assert client.dropped == 2  # the poisoned outcome and the poisoned sample, counted
    # Bounded: a few attempts per piece while halving 16 down to 1, not a retry loop.
    assert len([b for b in fake.batches if b["status"] == 500]) <= 3 * 5 + 3 * 2
    assert any("dropping" in r.getMessage() and "500" in r.getMessage() for r in caplog.records)


def test_an_unavailable_server_is_waited_for_not_split(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    """503 (and 502, 504, 429, no answer) says the server is away, not that the batch is bad:
    those are retried as long as it takes, whole, and nothing is dropped."""
    client = make_client(stream=False, batch_size=50)
    fake.then(OUTCOMES, 503, times=12)
    fake.then(OUTCOMES, 504, times=2)
    report_many(client, 50)
    assert client.flush(timeout=20)
    assert len(fake.stored["outcomes"]) == 50 and client.dropped == 0
    assert {len(b["payload"]["events"]) for b in fake.batches} == {50}


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
    fake.down = True  # every connection cut without an answer...
    fake.down_until = threading.Event()  # ...once this opens: until then, held unanswered
    # report() never waits on the network: were it to, this would wait for ever on a server
    # that answers nothing until after it returns (pytest's timeout fails it), however fast
    # or slow the machine.
    report_many(client, 1000)
    fake.down_until.set()
    # 1000 = buffered (<= 100) + one batch in flight (<= 10) + dropped
    assert 890 <= client.dropped <= 1000
    dropped = client.dropped
    fake.down = False
    assert client.flush(timeout=15)
    assert client.dropped == dropped
    # Each batch carries the drops not yet told when it was made (the one held in flight while
    # they happened is retried as it was made): the accepted batches tell them all, once.
    reported = [b["payload"]["client"]["dropped"] for b in fake.batches if b["status"] == 200]
    assert sum(reported) == dropped
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


def test_shadow_sample_with_no_decision_is_ignored_never_raised(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    """The host's request path never sees an exception: not for a value that is no Decision."""
    client = make_client(stream=False)
    for wrong in (None, "a decision id", {"shadow": True}):
        client.shadow_sample(wrong, messages=[], control_text="", latency_ms=1.0)  # type: ignore[arg-type]
    assert client.flush(timeout=10)
    assert fake.stored["shadow"] == [] and client.dropped == 0


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


def test_a_shadow_sample_carries_only_the_params_the_candidate_may_be_called_with(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    """The application's params for control (a timeout, a seed Anthropic does not take) are
    not the sample's to set: the SDK keeps what the server accepts for the candidate's kind
    (turnout.providers.params, max_tokens included), so the sample is not refused whole."""
    fake.snapshot = snapshot_body([plan_entry(shadow_bp=10_000)])  # every unit shadowed
    client = make_client(stream=False)
    decision = client.decide("chat", "user-1")
    assert decision.shadow and decision.shadow_spec is not None
    assert decision.shadow_spec.kind == "anthropic"
    client.shadow_sample(
        decision,
        messages=[{"role": "user", "content": "hi"}],
        control_text="hello",
        latency_ms=100.0,
        params={"temperature": 0.3, "timeout": 1, "max_tokens": 50, "seed": 7, "top_k": 2.5},
    )
    assert client.flush(timeout=10)
    [sent] = fake.stored["shadow"]
    assert sent["request"]["params"] == {"temperature": 0.3, "max_tokens": 50}


def test_decision_ids_cannot_be_guessed_from_one_another(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    """Feedback names its answer by decision id: an id must not tell the next one (it was a
    per-process prefix and a counter). 128 random bits each, nothing shared."""
    client = make_client(stream=False)
    ids = [client.decide("chat", f"u{i}").decision_id for i in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # Consecutive ids share no prefix and are not a step apart: with random ids, seven
    # equal leading hex digits happen once in 268 million pairs.
    assert not any(a[:7] == b[:7] for a, b in zip(ids, ids[1:], strict=False))
    assert len({int(b, 16) - int(a, 16) for a, b in zip(ids, ids[1:], strict=False)}) > 1000


@pytest.mark.live
def test_a_forked_child_never_hands_out_its_parents_decision_ids(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    """Ids are drawn in blocks: a child that kept its parent's undrawn block would give the
    same ids as the parent, and feedback on one would land on the other's answer."""
    import os

    client = make_client(stream=False)
    client.decide("chat", "before-fork")  # the parent holds a block of ids
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            ids = [client.decide("chat", f"c{i}").decision_id for i in range(20)]
            os.write(write_end, json.dumps(ids).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    parent = [client.decide("chat", f"p{i}").decision_id for i in range(20)]
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = json.loads(b"".join(chunks))
    assert len(child) == 20 and not set(child) & set(parent)
