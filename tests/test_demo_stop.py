"""make demo stops within a bound (issue 14, item 10): SIGTERM took 17.8 s, each process given
its own grace in turn. Now the stack and the simulator are signalled together and killed at one
shared deadline; the whole stop fits in STOP_SECONDS (10 s, as make run)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from controlplane import launcher
from controlplane.demo import run
from controlplane.demo.stack import stop_together

pytestmark = pytest.mark.live

STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)"
)
POLITE = "import time; print('ready', flush=True); time.sleep(600)"


def _start(code: str, procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_processes_ignoring_sigterm_are_killed_at_the_shared_deadline(
    spawned: list[subprocess.Popen[str]],
) -> None:
    procs = [_start(STUBBORN, spawned), _start(STUBBORN, spawned)]
    stop_together(procs, deadline=time.monotonic())  # the deadline has come
    assert [p.returncode for p in procs] == [-9, -9]


def test_processes_that_stop_on_sigterm_are_not_waited_for(
    spawned: list[subprocess.Popen[str]],
) -> None:
    procs = [_start(POLITE, spawned), _start(POLITE, spawned)]
    # A deadline ten minutes away: returning at all shows nobody waited for it.
    stop_together(procs, deadline=time.monotonic() + 600)
    assert [p.returncode for p in procs] == [-15, -15]


def test_the_demos_stop_budget_fits_make_runs_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNOUT_STOP_TIMEOUT", raising=False)
    env = run._stack_env(5.0)
    assert launcher.stop_timeout(env) == run.STACK_STOP_SECONDS
    assert run.APP_DRAIN_SECONDS + 1 + run.STACK_STOP_SECONDS < run.STOP_SECONDS
    assert run.STOP_SECONDS <= launcher.STOP_TIMEOUT
