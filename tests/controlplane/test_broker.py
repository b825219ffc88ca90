"""The embedded broker (controlplane/broker.py): messages written atomically, so a consumer
polling the folder while producers write never reads a partial message."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection

from controlplane.broker import Transport
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def _fresh_bindings() -> None:
    # The transport remembers declared bindings per process (global_state) and reads their
    # table from the control folder: a fresh folder per test needs a fresh memory.
    Transport.global_state.clear()


def connection(folder: Path) -> Connection:
    return Connection(
        transport="controlplane.broker:Transport",
        transport_options={
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),  # kombu's default is ./control
            "store_processed": False,
        },
    )


@pytest.mark.live
def test_the_embedded_default_uses_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        {"DJANGO_SETTINGS_MODULE": "controlplane.settings", "DEBUG": "1",
         "TURNOUT_DATA_DIR": str(tmp_path)}
    )  # fmt: skip
    code = (
        "import django; django.setup(); from controlplane.celery import app; "
        "conn = app.connection_for_write(); print(type(conn.transport).__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.stdout.strip() == "controlplane.broker", result.stderr


def test_a_consumer_racing_producers_gets_every_message_whole(tmp_path: Path) -> None:
    (tmp_path / "processed").mkdir()
    producers, per_producer = 4, 300
    errors: list[BaseException] = []

    def produce(n: int) -> None:
        try:
            with connection(tmp_path) as conn:
                queue = conn.SimpleQueue("tasks")
                for i in range(per_producer):
                    queue.put({"producer": n, "i": i, "pad": "x" * 2000})
                queue.close()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    # The queue declared once before the race, as a worker does at its start: kombu keeps the
    # bindings it declared in memory per process, so threads that start together would each
    # skip the declaration while the first is still writing the binding table.
    with connection(tmp_path) as conn:
        conn.SimpleQueue("tasks").close()
    threads = [threading.Thread(target=produce, args=(n,)) for n in range(producers)]
    for t in threads:
        t.start()
    received: set[tuple[int, int]] = set()
    with connection(tmp_path) as conn:
        queue = conn.SimpleQueue("tasks")
        # Bounded: every message is there once the producers are done; a lost one fails.
        while len(received) < producers * per_producer:
            try:
                message = queue.get(timeout=2 if any(t.is_alive() for t in threads) else 0.5)
            except Empty:
                if not any(t.is_alive() for t in threads):
                    break
                continue
            body = message.payload
            assert body["pad"] == "x" * 2000
            received.add((body["producer"], body["i"]))
            message.ack()
        queue.close()
    for t in threads:
        t.join()
    assert errors == []
    assert len(received) == producers * per_producer


def test_a_message_being_written_is_not_taken(tmp_path: Path) -> None:
    (tmp_path / "processed").mkdir()
    with connection(tmp_path) as conn:
        queue = conn.SimpleQueue("tasks")
        (tmp_path / "1_0000.tasks.msg.part").write_bytes(b"")  # a put caught mid-write
        with pytest.raises(Empty):
            queue.get(timeout=0.2)
        queue.put({"ok": True})
        assert queue.get(timeout=2).payload == {"ok": True}
        queue.close()


def test_processes_binding_at_once_leave_a_whole_table(tmp_path: Path) -> None:
    """Web, worker and beat declare their bindings at the same first start: the exchange
    table appears whole (kombu creates it, then writes it: a reader in between read "")."""
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def bind(n: int) -> None:
        try:
            with connection(tmp_path) as conn:
                channel = conn.default_channel
                start.wait()
                channel._queue_bind("tasks", f"key-{n}", "", f"queue-{n}")
                assert channel.get_table("tasks")  # never an empty or partial file
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bind, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with connection(tmp_path) as conn:
        queues = {q.queue for q in conn.default_channel.get_table("tasks")}
    assert queues == {f"queue-{n}" for n in range(8)}
    assert [p.name for p in (tmp_path / "control").iterdir()] == ["tasks.exchange"]
