"""The demo's processes: the provider simulator and the control plane (as ``make run`` starts
it), each in a session of its own, and how they are stopped within a deadline."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from controlplane.demo import ROOT, say


def start_simulator(
    env: dict[str, str], profiles: dict[str, dict[str, Any]]
) -> tuple[subprocess.Popen[str], str, Path]:
    """The provider simulator on a port the OS picks, with ``profiles``; returns it, its URL
    and the file its profiles were given in."""
    path = Path(tempfile.mkstemp(prefix="turnout-demo-profiles-", suffix=".json")[1])
    path.write_text(json.dumps(profiles))
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrations_app.simulator", "--port", "0", "--seed", "7",
         "--profiles", str(path)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "provider simulator listening on http://127.0.0.1:PORT"
    if "listening on " not in line:
        proc.kill()
        raise RuntimeError(f"the provider simulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1].strip(), path


def start_stack(env: dict[str, str], log: IO[str]) -> subprocess.Popen[str]:
    """The control plane as ``make run`` starts it (web, stream, worker, beat), its output
    copied to ``log``."""
    stack = subprocess.Popen(
        [sys.executable, "-m", "controlplane.launcher"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    assert stack.stdout is not None
    threading.Thread(target=follow_stack, args=(stack.stdout, log), daemon=True).start()
    return stack


def wait_healthy(base: str, stack: subprocess.Popen[str], seconds: float) -> bool:
    """Whether ``base`` answered ``/healthz`` within ``seconds`` (False at once if the stack
    stopped)."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or stack.poll() is not None:
            return False
        time.sleep(0.5)


def stop_together(procs: list[subprocess.Popen[str]], deadline: float) -> None:
    """SIGTERM to every one of ``procs`` at once, then SIGKILL to the process group of each
    still running at ``deadline`` (``time.monotonic()``): one shared deadline, not a grace
    each in turn (the demo's stop took 17.8 s that way). Each was started in a session of its
    own, so nothing else is in its group; killed while it is still running, so the group id
    cannot have been taken over."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"process {proc.pid} did not stop in time: killing it")
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended meanwhile
                pass
            proc.wait()


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind: connections of a previous run in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def follow_stack(stream: IO[str], log: IO[str]) -> None:
    """Copy the stack's output to its log file; echo what a newcomer needs from it."""
    for line in stream:
        log.write(line)
        log.flush()
        if line.startswith(("Admin login", "database:", "broker:")) or "exited with" in line:
            say(f"stack: {line.rstrip()}")
