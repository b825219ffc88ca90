"""One server per port. gunicorn listens with SO_REUSEPORT (one socket per worker), so a second
gunicorn, or a second ``make run``, on a port in use used to start silently and share it, each
answering a random share of the connections. Now both refuse, say why, and exit non-zero.
And gunicorn's control socket (one fixed path per user, taken over by the last gunicorn
started) is off."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, free_port, subprocess_env
from tests.processes import Gunicorn

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

# A refusal comes within seconds; a server that starts never exits by itself. This bound only
# turns the latter into a failure.
BOUND = 60.0


@pytest.fixture
def gunicorn(transactional_db: None) -> Iterator[Gunicorn]:
    server = Gunicorn()
    yield server
    server.stop()


def _run(command: list[str], env: dict[str, str], procs: list[Any]) -> tuple[int, str]:
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    procs.append(proc)
    output, _ = proc.communicate(timeout=BOUND)
    return proc.returncode, output


def test_a_second_gunicorn_on_a_port_in_use_refuses_to_start(
    gunicorn: Gunicorn, spawned: list[subprocess.Popen[str]]
) -> None:
    first = gunicorn
    code, output = _run(
        [sys.executable, "-m", "gunicorn", "-c", "controlplane/gunicorn.conf.py",
         "-b", f"127.0.0.1:{first.port}"],
        subprocess_env(), spawned,
    )  # fmt: skip
    assert code != 0
    assert f"cannot listen on 127.0.0.1:{first.port}: Address already in use" in output
    assert httpx.get(f"{first.url}/api/v1/ping", timeout=BOUND).status_code == 200


def test_make_run_on_a_port_in_use_says_so_and_starts_nothing(
    tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    with socket.socket() as other:  # another server, listening as gunicorn does
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", port))
        other.listen()
        env = subprocess_env(
            {"TURNOUT_PORT": str(port), "TURNOUT_STREAM_PORT": str(free_port()),
             "TURNOUT_DATA_DIR": str(tmp_path)}
        )  # fmt: skip
        code, output = _run([sys.executable, "-m", "controlplane.launcher"], env, spawned)
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in output
    assert "TURNOUT_PORT" in output
    assert list(tmp_path.iterdir()) == []  # nothing migrated, nothing started


def _unix_sockets(pid: int) -> list[str]:
    """The paths of the Unix sockets the process holds."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    paths = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and f"socket:[{fields[6]}]" in held:
            paths.append(fields[7])
    return paths


def test_gunicorn_opens_no_control_socket(gunicorn: Gunicorn) -> None:
    server = gunicorn
    # The control server starts once the workers are up: by the time they answer.
    assert httpx.get(f"{server.url}/api/v1/ping", timeout=BOUND).status_code == 200
    assert _unix_sockets(server.proc.pid) == []
