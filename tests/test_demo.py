"""``make demo`` in its fast form (tests/fast_demo.py), the regression story: the plan must go
through shadow (pairs the workers compared), into the A/B split, and be rolled back by the
engine on its own once the candidate's simulator profile regresses; the page must reach the
demo's webhook receiver. The quality stories are in test_demo_quality*.py (a file per story:
pytest-xdist runs a file on one worker, and each story takes a minute or more)."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrations_app.models import (
    AuditEvent,
    MigrationPlan,
    PlanStage,
    PlanStatus,
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
)
from tests.fast_demo import STORY_MARKS, run_fast_demo

pytestmark = [pytest.mark.live, *STORY_MARKS]


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
