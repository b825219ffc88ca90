"""turnout.Client against the local contract server: snapshot at start, the change stream,
polling fallback, last-known-good file, fork, and a decide() that never raises."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import turnout

from tests.conftest import eventually
from tests.sdk.conftest import API_KEY, FakeTurnout, free_port, plan_entry

UNITS = [f"user-{i}" for i in range(200)]
CONFIG = "/api/v1/sdk/config"
STREAM = "/api/v1/sdk/stream"
MakeClient = Callable[..., turnout.Client]


def arms(client: turnout.Client, plan: str = "chat") -> set[str]:
    return {client.decide(plan, unit).arm for unit in UNITS}


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def test_start_fetches_the_snapshot(fake: FakeTurnout, make_client: MakeClient) -> None:
    fake.set_plans([plan_entry(status="completed")])
    client = make_client(stream=False)
    assert client.snapshot_version == fake.version
    assert arms(client) == {"candidate"}
    decision = client.decide("chat", "user-1")
    assert (decision.reason, decision.model, decision.provider) == (
        "STATIC",
        "claude-sonnet-4",
        "anthropic",
    )
    assert decision.params["max_tokens"] == 256 and decision.fallback is not None
    request = fake.requests_to(CONFIG)[0]
    assert request["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert request["headers"]["User-Agent"].startswith("turnout-python/")


def test_the_start_wait_is_bounded_when_the_server_hangs(hanging_port: int) -> None:
    started = time.monotonic()
    client = turnout.Client(f"http://127.0.0.1:{hanging_port}", API_KEY, start_wait=0.3)
    try:
        # Bounded: it came back instead of waiting for the server (not a speed assertion).
        assert time.monotonic() - started < 4.0
        default = turnout.arm("openai", "gpt-4o-mini")
        decision = client.decide("chat", "u", default=default)
        assert (decision.arm, decision.model, decision.reason) == (
            "control",
            "gpt-4o-mini",
            "DEFAULT",
        )
    finally:
        client.close(timeout=0.5)


def test_nothing_at_all_gives_the_default_in_code() -> None:
    client = turnout.Client(f"http://127.0.0.1:{free_port()}", API_KEY, start_wait=1)
    with client:
        assert client.decide("chat", "u").spec is None
        decision = client.decide("chat", "u", default=turnout.arm("openai", "gpt-4o"))
        assert (decision.provider, decision.model, decision.reason) == (
            "openai",
            "gpt-4o",
            "DEFAULT",
        )


def test_decide_never_raises(fake: FakeTurnout, make_client: MakeClient) -> None:
    client = make_client(stream=False)
    default = turnout.arm("openai", "gpt-4o")
    for plan, unit in [
        ("chat", "u"),
        ("chat", 12345),
        ("chat", None),
        ("chat", "ünïcødé-用户"),
        ("chat", ""),
        (["unhashable"], "u"),
        (None, "u"),
        ("nope", "u"),
    ]:
        decision = client.decide(plan, unit, default=default)  # type: ignore[arg-type]
        assert decision.arm in ("control", "candidate")
    assert client.decide("chat", 12345).unit == "12345"  # type: ignore[arg-type]
    assert client.decide(["x"], "u", default=default).model == "gpt-4o"  # type: ignore[arg-type]
    assert client.decide("nope", "u", default={"model": "x"}).arm == "control"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        json.dumps(
            {"schema": 1, "version": "x", "plans": [{"key": "chat", "status": "sideways"}]}
        ).encode(),
    ],
)
def test_a_malformed_snapshot_is_refused_and_the_last_good_one_kept(
    fake: FakeTurnout, make_client: MakeClient, tmp_path: Path, body: bytes
) -> None:
    fake.set_plans([plan_entry(status="completed")])
    lkg = tmp_path / "lkg.json"
    good = make_client(stream=False, poll_interval=0.05, lkg_path=lkg)
    assert arms(good) == {"candidate"}
    fake.config_body = body
    fake.set_plans([plan_entry(status="paused")])  # a new ETag, with a broken body
    assert eventually(lambda: len(fake.requests_to(CONFIG)) >= 4)
    assert arms(good) == {"candidate"}
    assert json.loads(lkg.read_text())["version"] == good.snapshot_version  # not overwritten
    # A client starting on the broken body alone answers with its default.
    fresh = make_client(stream=False)
    assert fresh.decide("chat", "u").reason == "DEFAULT"


def test_etag_revalidation_gets_304s(fake: FakeTurnout, make_client: MakeClient) -> None:
    client = make_client(stream=False, poll_interval=0.05)
    assert eventually(lambda: len(fake.requests_to(CONFIG)) >= 4)
    later = fake.requests_to(CONFIG)[1:]
    assert all(r["headers"].get("If-None-Match") == f'"{fake.version}"' for r in later)
    assert all(r["status"] == 304 for r in later)
    assert client.snapshot_version == fake.version


def test_a_pushed_change_reaches_the_client(fake: FakeTurnout, make_client: MakeClient) -> None:
    client = make_client(poll_interval=3600)  # polling an hour away: only the stream can
    assert eventually(lambda: fake.active_streams() == 1)
    assert arms(client) == {"control"}
    fetches = len(fake.requests_to(CONFIG))
    fake.set_plans([plan_entry(status="running", weight_bp=10_000, version=2)])
    assert eventually(lambda: arms(client) == {"candidate"})
    # The event carried the snapshot: no refetch.
    assert len(fake.requests_to(CONFIG)) == fetches


def test_an_event_without_the_snapshot_makes_the_client_fetch(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    client = make_client(poll_interval=3600)
    assert eventually(lambda: fake.active_streams() == 1)
    fake.stream_with_snapshot = False
    fake.set_plans([plan_entry(status="completed", version=2)])
    assert eventually(lambda: arms(client) == {"candidate"})
    assert fake.requests_to(CONFIG)[-1]["status"] == 200


def test_the_client_reconnects_with_last_event_id(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    client = make_client(poll_interval=3600)
    assert eventually(lambda: fake.active_streams() == 1)
    fake.set_plans([plan_entry(status="completed", version=2)])
    assert eventually(lambda: arms(client) == {"candidate"})
    fake.end_streams()  # the server restarts, say
    assert eventually(lambda: len(fake.requests_to(STREAM)) >= 2 and fake.active_streams() == 1)
    assert fake.requests_to(STREAM)[-1]["headers"].get("Last-Event-ID") == str(fake.event_id)
    fake.set_plans([plan_entry(status="paused", version=3)])
    assert eventually(lambda: arms(client) == {"control"})
    assert client.decide("chat", "u").reason == "DISABLED"


@pytest.mark.parametrize("status", [404, 500])
def test_with_the_stream_down_polling_brings_changes(
    fake: FakeTurnout, make_client: MakeClient, status: int
) -> None:
    fake.stream_status = status
    client = make_client(poll_interval=0.1)
    assert arms(client) == {"control"}
    fake.set_plans([plan_entry(status="completed", version=2)])
    assert eventually(lambda: arms(client) == {"candidate"})
    assert fake.active_streams() == 0
    # It kept trying the stream too, so that it is back on push as soon as it can be.
    assert eventually(lambda: len(fake.requests_to(STREAM)) >= 2)
    fake.stream_status = 200
    assert eventually(lambda: fake.active_streams() == 1)


def test_the_last_known_good_file_serves_when_the_server_is_down(
    fake: FakeTurnout, make_client: MakeClient, tmp_path: Path
) -> None:
    lkg = tmp_path / "turnout" / "snapshot.json"
    lkg.parent.mkdir()
    fake.set_plans([plan_entry(status="completed")])
    first = make_client(lkg_path=lkg, poll_interval=3600)
    assert json.loads(lkg.read_text())["version"] == fake.version
    assert eventually(lambda: fake.active_streams() == 1)
    fake.set_plans([plan_entry(status="running", weight_bp=10_000, version=5)])
    assert eventually(lambda: json.loads(lkg.read_text())["version"] == fake.version)
    assert eventually(lambda: first.snapshot_version == fake.version)
    assert [p.name for p in lkg.parent.iterdir()] == ["snapshot.json"]  # no temp files left
    first.close()

    down = f"http://127.0.0.1:{free_port()}"
    with turnout.Client(down, API_KEY, lkg_path=lkg, start_wait=1) as client:
        assert arms(client) == {"candidate"}
        assert client.decide("chat", "u").reason == "SPLIT"
        assert client.snapshot_version == fake.version


def test_an_unreadable_last_known_good_file_is_ignored(tmp_path: Path) -> None:
    lkg = tmp_path / "lkg.json"
    lkg.write_text('{"plans": [')
    with turnout.Client(
        f"http://127.0.0.1:{free_port()}", API_KEY, lkg_path=lkg, start_wait=1
    ) as c:
        assert c.decide("chat", "u").reason == "DEFAULT"


def test_a_fresh_snapshot_wins_over_the_file(
    fake: FakeTurnout, make_client: MakeClient, tmp_path: Path
) -> None:
    lkg = tmp_path / "lkg.json"
    lkg.write_text(
        json.dumps({"schema": 1, "version": "old", "plans": [plan_entry(status="paused")]})
    )
    fake.set_plans([plan_entry(status="completed")])
    client = make_client(lkg_path=lkg, stream=False)
    assert arms(client) == {"candidate"} and client.snapshot_version == fake.version


def test_decision_ids_are_unique_across_threads(fake: FakeTurnout, make_client: MakeClient) -> None:
    client = make_client(stream=False)
    ids: list[list[str]] = [[] for _ in range(8)]

    def work(out: list[str]) -> None:
        for i in range(5000):
            out.append(client.decide("chat", f"u{i}").decision_id)

    threads = [threading.Thread(target=work, args=(out,)) for out in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in ids for i in out]
    assert len(set(every)) == len(every) == 40_000


def test_decide_while_snapshots_swap(fake: FakeTurnout, make_client: MakeClient) -> None:
    """Readers see one whole snapshot or the next, never a mix, and never fail."""
    client = make_client(poll_interval=3600)
    assert eventually(lambda: fake.active_streams() == 1)
    stop = threading.Event()
    seen: set[tuple[str, int]] = set()

    def read() -> None:
        while not stop.is_set():
            d = client.decide("chat", "u")
            seen.add((d.reason, d.plan_version))

    reader = threading.Thread(target=read)
    reader.start()
    for version in range(2, 30):
        status = "completed" if version % 2 else "paused"
        fake.set_plans([plan_entry(status=status, version=version)])
        time.sleep(0.01)
    assert eventually(lambda: client.decide("chat", "u").plan_version == 29)
    stop.set()
    reader.join()
    for reason, version in seen:
        expected = {1: "SPLIT"}.get(version, "STATIC" if version % 2 else "DISABLED")
        assert reason == expected


@pytest.mark.live
def test_fork_gives_the_child_a_live_client(fake: FakeTurnout, make_client: MakeClient) -> None:
    """gunicorn --preload / Celery prefork: the child must keep receiving changes (its own
    refresher and stream), make its own decision ids, and report only its own events."""
    client = make_client(poll_interval=3600, flush_interval=3600)
    assert eventually(lambda: fake.active_streams() == 1)
    parent = client.decide("chat", "parent-unit")
    client.report(parent, latency_ms=10.0)  # buffered in the parent at fork time
    result_r, result_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(result_r)
            os.read(go_r, 1)
            changed = eventually(lambda: arms(client) == {"candidate"}, timeout=15)
            own = client.decide("chat", "child-unit")
            client.report(own, latency_ms=20.0)
            client.close(timeout=5)
            answer = {
                "changed": changed,
                "id": own.decision_id,
                "prefix": parent.decision_id[:12],
                "dropped": client.dropped,
            }
            os.write(result_w, json.dumps(answer).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(result_w)
    try:
        # The child's own stream is up before the change: the push must reach it.
        assert eventually(lambda: fake.active_streams() == 2)
        fake.set_plans([plan_entry(status="completed", version=2)])
        os.write(go_w, b"x")
        chunks = []
        while chunk := os.read(result_r, 65536):
            chunks.append(chunk)
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    answer = json.loads(b"".join(chunks))
    assert answer["changed"] is True and answer["dropped"] == 0
    assert not answer["id"].startswith(answer["prefix"])  # random ids, in the child too
    assert eventually(lambda: arms(client) == {"candidate"})
    client.close()
    units = sorted(e["unit"] for e in fake.stored["outcomes"])
    assert units == ["child-unit", "parent-unit"]  # each once: the child did not resend
    assert fake.duplicates == 0


def test_close_is_idempotent_and_decide_still_answers(
    fake: FakeTurnout, make_client: MakeClient
) -> None:
    client = make_client()
    client.close()
    client.close()
    assert client.decide("chat", "u").reason == "SPLIT"
    client.report(client.decide("chat", "u"), latency_ms=1.0)  # a no-op, not an error


def test_a_bad_base_url_does_not_raise() -> None:
    client = turnout.Client("not a url at all", API_KEY, start_wait=0.2)
    assert client.decide("chat", "u").reason == "DEFAULT"
    client.close(timeout=0.2)
