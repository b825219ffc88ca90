"""Real processes the propagation tests start and stop themselves: gunicorn as production
runs it (controlplane/gunicorn.conf.py), a Redis server of the test's own (so a test can take
Redis away without touching the shared one), and a look at a process tree through /proc."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ARTIFACTS, ROOT, free_port, stop, subprocess_env, wait_for_port


class Gunicorn:
    """The API server exactly as ``make run`` and docker start it, against the test database."""

    def __init__(self, extra_env: dict[str, str] | None = None, *, access_log: bool = False):
        ARTIFACTS.mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = ARTIFACTS / f"gunicorn-access-{self.port}.log"
        self._log = open(ARTIFACTS / "gunicorn.log", "ab")
        command = [
            sys.executable, "-m", "gunicorn", "-c", "controlplane/gunicorn.conf.py",
            "-b", f"127.0.0.1:{self.port}",
        ]  # fmt: skip
        if access_log:
            self.access_log.unlink(missing_ok=True)
            command += ["--access-logfile", str(self.access_log)]
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=subprocess_env(extra_env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self.port, self.proc)

    def requests_to(self, path: str) -> int:
        """How many requests to ``path`` the access log shows (written as each one ends)."""
        if not self.access_log.exists():
            return 0
        return sum(f" {path} " in line for line in self.access_log.read_text().splitlines())

    def stop(self) -> None:
        if self.proc.poll() is None:
            # The whole group: a worker left behind would keep the port (reuse_port).
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()


@pytest.fixture
def gunicorn_factory(transactional_db: None) -> Iterator[Any]:
    """Start gunicorn servers (``start(extra_env, access_log=False)``); stopped after the test."""
    servers: list[Gunicorn] = []

    def start(extra_env: dict[str, str] | None = None, **kwargs: Any) -> Gunicorn:
        servers.append(Gunicorn(extra_env, **kwargs))
        return servers[-1]

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


class RedisServer:
    """A ``redis-server`` on a free port, no persistence; ``stop()`` and ``start()`` take it
    away and bring it back on the same port, as a failover or a restart would."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        with open(ARTIFACTS / "own-redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def clients(self) -> list[dict[str, str]]:
        """``CLIENT LIST``, one dict per connection, without the connection asking."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            me = client.client_id()
            return [c for c in client.client_list() if int(c["id"]) != me]
        finally:
            client.close()


def descendants(pid: int) -> set[int]:
    """Every live process under ``pid`` (children, their children, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ")".
        fields = stat.rsplit(")", 1)[1].split()
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """The processes of ``pids`` still alive after at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = {pid for pid in pids if alive(pid)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


__all__ = [
    "Gunicorn",
    "RedisServer",
    "alive",
    "descendants",
    "gunicorn_factory",
    "stop",
    "wait_gone",
]
