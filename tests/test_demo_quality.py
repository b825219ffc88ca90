"""``make demo STORY=quality`` in its fast form (tests/fast_demo.py): the candidate is held in
shadow on the judge."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrations_app.models import AuditEvent, JudgeLabel, PlanStatus, ShadowSample, ShadowStatus
from tests.fast_demo import STORY_MARKS, run_fast_demo, stopped_on_quality

pytestmark = [pytest.mark.live, *STORY_MARKS]


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
