"""``make demo`` in its fast form (``python -m controlplane.demo --story S --fast``), as a
newcomer runs it, for the story tests (tests/test_demo*.py, a file per story so that pytest-xdist
runs them on different workers): the stack the launcher starts (web, stream, worker, beat)
against the test database, the provider simulator as a subprocess, and the demo's application
sending requests through ``client.complete()``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from migrations_app.models import AuditEvent, MetricValue, MigrationPlan
from tests.conftest import ARTIFACTS, ROOT, free_port, subprocess_env

# How long a broken build may hang before failing: the demo gives up by itself after
# PATIENCE_SECONDS (exit 1, saying where the plan was), the test waits a little longer for it
# to stop its processes. Not a speed assertion: a healthy run needs a fraction of this (about
# 60 s alone on a slow machine); under the full suite on 2 cores, live tests were seen to take
# 4.7 times as long as alone (tests/api/test_openapi.py: 192 s in a CI run, 41 s alone).
PATIENCE_SECONDS = 720
#: The story tests' own pytest-timeout, above everything run_fast_demo may wait (the demo's
#: patience and its stop, then _stop) with room for the test's setup and its assertions:
#: pytest-timeout's 300 s default killed two demos in a CI run before they could say where
#: their plan was (stop 27), so nothing was learnt.
TIMEOUT_SECONDS = PATIENCE_SECONDS + 90 + 60 + 120

#: A story test's marks beside ``live`` (which tests/test_markers.py reads in each file): its
#: stack writes through connections of its own, and its own timeout.
STORY_MARKS = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(TIMEOUT_SECONDS)]


def run_fast_demo(data_dir: Path, story: str = "regression") -> str:
    env = subprocess_env(
        {
            "TURNOUT_PORT": str(free_port()),
            "TURNOUT_STREAM_PORT": str(free_port()),
            "TURNOUT_DATA_DIR": str(data_dir),
            "TURNOUT_ADMIN_PASSWORD": "pw-demo",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "controlplane.demo", "--story", story, "--fast", "--patience",
         str(PATIENCE_SECONDS)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    stack_log = data_dir / "demo-stack.log"

    def tails(out: str) -> str:
        stack = stack_log.read_text()[-3000:] if stack_log.exists() else "(none)"
        return f"{out[-4000:]}\n--- stack log tail ---\n{stack}"

    try:
        out, _ = proc.communicate(timeout=PATIENCE_SECONDS + 90)
    except subprocess.TimeoutExpired:
        out = _stop(proc)
        pytest.fail(f"the demo did not stop after {PATIENCE_SECONDS + 90} s:\n{tails(out)}")
    finally:  # whatever ended the wait (pytest-timeout too): no demo, and so no stack, outlives it
        if proc.poll() is None:
            _stop(proc)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"demo-fast-{story}.log").write_text(out)
    assert proc.returncode == 0, f"the demo exited with {proc.returncode}:\n{tails(out)}"
    return out


def _stop(proc: subprocess.Popen[str]) -> str:
    """Stop the demo (it stops its stack within its STOP_SECONDS), killing it if it does not
    within 60 s; returns what it printed. Its output is read meanwhile: a full pipe would
    keep it from exiting."""
    proc.terminate()
    try:
        return proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def stopped_on_quality(key: str, action: str, stage: str) -> tuple[MigrationPlan, dict]:
    """The plan the engine stopped (``action`` in ``stage``), and its guardrails' verdicts then:
    never errors, latency or cost (the candidate is as reliable, faster and cheaper)."""
    plan = MigrationPlan.objects.get(key=key)
    stop = AuditEvent.objects.filter(plan=plan, action__in=("pause", "rollback")).get()
    assert (stop.actor_kind, stop.action) == ("engine", action)
    assert stop.evidence["stage"]["kind"] == stage, stop.evidence["stage"]
    verdicts = {g["metric"]: g["verdict"] for g in stop.evidence["guardrails"]}
    for metric in ("error_rate", "latency_p95", "cost_per_request"):
        assert verdicts[metric]["status"] != "regressed", verdicts[metric]
    # The application reported task_completed through client.metric().
    assert MetricValue.objects.filter(plan=plan, name="task_completed").exists()
    return plan, verdicts
