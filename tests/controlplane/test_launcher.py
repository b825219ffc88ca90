"""``make run`` stops within a bounded time: Ctrl-C with SDK streams still connected (and
requests that never finish) ends every process it started, gunicorn's workers included."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from migrations_app.api.keys import apikey_create
from tests.conftest import ARTIFACTS, ROOT, eventually, free_port, subprocess_env, wait_for_port
from tests.processes import descendants, wait_gone

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

# The launcher's own deadline is TURNOUT_STOP_TIMEOUT (set to 5 s below) and then SIGKILL;
# this bound only keeps a broken stop from hanging the suite. Slowness cannot fail it: a stop
# that works ends well within it, one that does not never ends.
BOUND = 60.0


@pytest.fixture
def launcher(
    transactional_db: None, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, str, set[int]]]:
    port, stream_port = free_port(), free_port()
    env = subprocess_env(
        {
            "REDIS_URL": settings.REDIS_URL or "",
            "TURNOUT_PORT": str(port),
            "TURNOUT_STREAM_PORT": str(stream_port),
            "TURNOUT_DATA_DIR": str(tmp_path),
            "TURNOUT_STOP_TIMEOUT": "5",
            "TURNOUT_ADMIN_PASSWORD": "launcher-test",
            "CELERY_WORKER_CONCURRENCY": "1",
        }
    )
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "launcher.log", "ab") as log:
        # A session of its own, as a terminal gives `make run`: Ctrl-C signals its whole group.
        proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane.launcher"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    started = {proc.pid}
    try:
        wait_for_port(port, proc, timeout=120)
        wait_for_port(stream_port, proc, timeout=120)
        yield proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stream_port}", started
    finally:
        started |= descendants(proc.pid)
        for pid in started:  # only what this test started, by id
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def _hold_stream(url: str, key: str, opened: threading.Semaphore) -> None:
    """An SDK that never lets go: reads the stream until the server ends it."""
    try:
        with httpx.stream(
            "GET",
            url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(5.0, read=None),
        ) as response:
            opened.release()
            for _ in response.iter_raw():
                pass
    except httpx.HTTPError:
        opened.release()


def test_ctrl_c_ends_every_process_within_a_bound_with_streams_held_open(
    launcher: tuple[subprocess.Popen[bytes], str, str, set[int]],
) -> None:
    proc, web, stream, started = launcher
    key = apikey_create(name="sdk", scopes=["decide", "report"])[1]
    assert eventually(lambda: httpx.get(f"{web}/healthz", timeout=5).status_code == 200, timeout=60)
    opened = threading.Semaphore(0)
    holders = [
        threading.Thread(
            target=_hold_stream, args=(f"{stream}/api/v1/sdk/stream", key, opened), daemon=True
        )
        for _ in range(6)
    ]
    for holder in holders:
        holder.start()
    for _ in holders:
        assert opened.acquire(timeout=BOUND)
    # On the API port: stream requests sent whole and never read (were streams served there,
    # each would hold a worker thread), and requests that never finish their headers.
    web_port = int(web.rsplit(":", 1)[1])
    stuck = [socket.create_connection(("127.0.0.1", web_port)) for _ in range(4)]
    for sock in stuck[:2]:
        sock.sendall(
            b"GET /api/v1/sdk/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n\r\n"
            % key.encode()
        )
    for sock in stuck[2:]:
        sock.sendall(b"GET /api/v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    tree = descendants(proc.pid)
    started |= tree  # the fixture kills what is left, by id
    assert len(tree) >= 6  # web (master + 2 workers), stream, worker, beat
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    try:
        proc.wait(timeout=BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the launcher still runs {BOUND} s after Ctrl-C")
    left = wait_gone(tree, timeout=5.0)
    assert not left, f"still running after the launcher exited: {sorted(left)}"
    for sock in stuck:
        sock.close()
