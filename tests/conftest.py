"""Shared fixtures: catalog data, users, and real processes (web server, Celery worker)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a server or worker that must see the test database."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env["DEBUG"] = "1"
    env["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    if db["ENGINE"].endswith("postgresql"):
        auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
        env["DATABASE_URL"] = f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    else:
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    env.update(extra or {})
    return env


def eventually(check: Callable[[], bool], timeout: float = 10.0, every: float = 0.02) -> bool:
    """Whether ``check`` holds within ``timeout`` seconds: a bounded wait for something that
    must happen, so that a broken path fails the test instead of hanging it (no speed is
    asserted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def celery_process(
    *args: str, log_name: str, extra_env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A controlplane <args>`` against the test database, logged to test-artifacts."""
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / log_name, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "controlplane", *args, "--loglevel", "INFO"],
            cwd=ROOT,
            env=subprocess_env(extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            stop(proc)


@pytest.fixture
def celery_worker_process(transactional_db: None) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker on the real broker, against the test database."""
    with celery_process(
        "worker", "--concurrency", "2", "--pool", "threads", "--without-gossip",
        "--without-mingle", log_name="celery-worker.log",
    ) as proc:  # fmt: skip
        yield proc


@pytest.fixture
def celery_beat_process(
    transactional_db: None, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Real Celery beat, scheduling the engine every second (TURNOUT_EVALUATION_INTERVAL=1)."""
    with celery_process(
        "beat", "--schedule", str(tmp_path / "beat-schedule"), log_name="celery-beat.log",
        extra_env={"TURNOUT_EVALUATION_INTERVAL": "1"},
    ) as proc:  # fmt: skip
        yield proc


class LiveServer:
    """The production server stack (uvicorn, ASGI) in a subprocess, against the test database."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(ARTIFACTS / "web.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "controlplane.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                # Open SSE streams would hold a graceful shutdown for its whole default wait.
                "--timeout-graceful-shutdown",
                "1",
            ],
            cwd=ROOT,
            env=subprocess_env(extra_env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        stop(self.proc)
        self._log.close()


@pytest.fixture
def live_server_factory(transactional_db: None) -> Iterator[Any]:
    servers: list[LiveServer] = []

    def start(extra_env: dict[str, str] | None = None) -> LiveServer:
        servers.append(LiveServer(extra_env))
        return servers[-1]

    try:
        yield start
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.stop()


@pytest.fixture
def live_server_process(live_server_factory: Any) -> str:
    return str(live_server_factory().url)


@pytest.fixture(autouse=True)
def _catalog(request: pytest.FixtureRequest) -> None:
    """Transactional tests flush the tables, the seeded catalog with them: put it back."""
    marker = request.node.get_closest_marker("django_db")
    if "transactional_db" in request.fixturenames or (
        marker is not None and marker.kwargs.get("transaction")
    ):
        request.getfixturevalue("transactional_db")
        from migrations_app.catalog import seed_catalog

        seed_catalog()
