"""``make demo`` in its fast form (``python -m controlplane.demo --fast``), as a newcomer runs it:
the stack the launcher starts (web, stream, worker, beat) against the test database, the
provider simulator as a subprocess, and the demo's application sending requests through
``client.complete()``. The plan must go through shadow (pairs the workers compared), into the
A/B split, and be rolled back by the engine on its own once the candidate's simulator profile
regresses; the page must reach the demo's webhook receiver."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from migrations_app.models import (
    AuditEvent,
    JudgeLabel,
    MetricValue,
    MigrationPlan,
    PlanStage,
    PlanStatus,
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
)
from tests.conftest import ARTIFACTS, ROOT, free_port, subprocess_env

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

# How long a broken build may hang before failing: the demo gives up by itself after
# PATIENCE_SECONDS (exit 1, saying where the plan was), the test waits a little longer for it
# to stop its processes. Not a speed assertion: a healthy run needs a fraction of this.
PATIENCE_SECONDS = 420


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
    try:
        out, _ = proc.communicate(timeout=PATIENCE_SECONDS + 90)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"the demo did not stop after {PATIENCE_SECONDS + 90} s:\n{out[-4000:]}")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"demo-fast-{story}.log").write_text(out)
    stack_log = data_dir / "demo-stack.log"
    assert proc.returncode == 0, (
        f"the demo exited with {proc.returncode}:\n{out[-4000:]}\n--- stack log tail ---\n"
        + (stack_log.read_text()[-3000:] if stack_log.exists() else "(none)")
    )
    return out


def test_the_demo_shadows_splits_and_the_engine_rolls_it_back(tmp_path: Path) -> None:
    out = run_fast_demo(tmp_path)

    plan = MigrationPlan.objects.select_related("candidate_model__provider").get(key="demo-chat")
    assert plan.status == PlanStatus.ROLLED_BACK, out[-3000:]
    # The plan's arms are on the demo's connections to the simulator, not the catalog's own.
    assert plan.candidate_model.provider.name == "sim-anthropic"
    assert plan.candidate_model.provider.base_url.startswith("http://127.0.0.1:")
    stages = list(
        PlanStage.objects.filter(run=plan.current_run).order_by("pk").values_list("kind", "pk")
    )
    # After the rollback, control's traffic is watched in a recovery stage of its own.
    assert [kind for kind, _ in stages] == ["shadow", "ab_split", "recovery"], stages

    # Shadow: the workers called the candidate for real (the simulator's echo through the
    # Anthropic SDK) and compared the answers.
    shadow_stage = stages[0][1]
    done = ShadowSample.objects.filter(plan=plan, stage_id=shadow_stage, status=ShadowStatus.DONE)
    assert done.count() > 0
    pair = done.filter(candidate__error=None).first()
    assert pair is not None
    assert pair.candidate["text"].startswith("You said: "), pair.candidate
    assert "similarity" in pair.comparison
    aggregate = ShadowAggregate.objects.get(stage_id=shadow_stage)
    assert aggregate.data["n"] == done.count()
    assert aggregate.data.get("similarity_n", 0) == done.count()

    # The engine advanced from shadow on its own, then rolled back, with the evidence.
    advance = AuditEvent.objects.get(plan=plan, action="advance")
    assert (advance.actor_kind, advance.from_status) == ("engine", "running")
    rollback = AuditEvent.objects.get(plan=plan, action="rollback")
    assert rollback.actor_kind == "engine"
    assert rollback.evidence["stage"]["kind"] == "ab_split"
    statuses = {g["metric"]: g["verdict"]["status"] for g in rollback.evidence["guardrails"]}
    assert "regressed" in statuses.values() or rollback.evidence["circuit_breaker"], statuses
    # The regression came the real way: the vendor's 529s, after the SDK's retries.
    candidate_errors = rollback.evidence["arms"]["candidate"]["errors_by_kind"]
    assert candidate_errors.get("overloaded", 0) > 0, candidate_errors

    # What the newcomer reads: the phases, the regression, and the page the webhook received.
    assert "plan demo-chat: shadow" in out
    assert "plan demo-chat: A/B split" in out
    assert "REGRESSION" in out
    assert "PAGE CRITICAL: demo-chat rolled_back" in out


def test_the_quality_story_is_held_in_shadow_on_the_judge(tmp_path: Path) -> None:
    """``make demo STORY=quality``: a faster, cheaper candidate that answers worse in one case
    in five is held in shadow by the judge's guardrail once the labels people gave (through the
    labelling API) let it act; no user is ever served by it."""
    out = run_fast_demo(tmp_path, "quality")
    plan, verdicts = stopped_on_quality("demo-quality", "pause", "shadow")
    assert plan.status == PlanStatus.PAUSED
    assert verdicts["judge_preference"]["status"] == "regressed", verdicts
    assert verdicts["judge_preference"]["upper"] < -0.05
    assert JudgeLabel.objects.filter(plan=plan).count() >= 30
    assert not AuditEvent.objects.filter(plan=plan, action="advance").exists()
    # The pairs were compared for real: the candidate's wrong answers are fluent, not errors.
    done = ShadowSample.objects.filter(plan=plan, status=ShadowStatus.DONE, candidate__error=None)
    assert done.exclude(candidate__text__startswith="You said: ").exists()
    assert done.filter(candidate__text__startswith="You said: ").exists()
    assert "the judge's guardrail may now act" in out
    assert "PAGE ERROR: demo-quality paused" in out


def test_the_quality_story_without_shadow_is_rolled_back_on_task_completed(
    tmp_path: Path,
) -> None:
    """``make demo STORY=quality-split``: the same candidate on a plan that starts with the A/B
    split and has no judge: the application's task_completed (client.metric()) rolls it
    back."""
    out = run_fast_demo(tmp_path, "quality-split")
    _, verdicts = stopped_on_quality("demo-quality-split", "rollback", "ab_split")
    assert verdicts["task_completed"]["status"] == "regressed", verdicts
    assert verdicts["task_completed"]["upper"] < -0.03
    assert "PAGE CRITICAL: demo-quality-split rolled_back" in out


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
