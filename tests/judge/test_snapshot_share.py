"""The routing snapshot names the pointwise judge's share (``judge_bp``) only where the SDK should
send samples: a running plan's split or rollout, with a judge model."""

from __future__ import annotations

import pytest

from migrations_app.models import ModelSpec
from migrations_app.plans import lifecycle
from migrations_app.routing.snapshots import plan_entry
from tests.factories import make_plan, person, started_plan

pytestmark = pytest.mark.django_db

JUDGE = "gpt-4o-mini-2024-07-18"


def judged_plan(advances: int, percent: float = 12.5):
    judge = ModelSpec.objects.get(model_id=JUDGE)
    return started_plan(advances=advances, judge_model=judge, judge_sample_percent=percent)


def test_a_split_with_a_judge_names_its_share():
    assert plan_entry(judged_plan(advances=1))["judge_bp"] == 1250
    assert plan_entry(judged_plan(advances=2, percent=100.0))["judge_bp"] == 10_000  # rollout


def test_no_share_in_shadow_without_a_judge_or_when_not_running():
    assert "judge_bp" not in plan_entry(judged_plan(advances=0))  # shadow: pairs are judged
    assert "judge_bp" not in plan_entry(judged_plan(advances=1, percent=0.0))
    assert "judge_bp" not in plan_entry(started_plan(advances=1, judge_sample_percent=50.0))
    plan = judged_plan(advances=1)
    lifecycle.plan_pause(plan_key=plan.key, actor=person(), reason="looking")
    plan.refresh_from_db()
    assert "judge_bp" not in plan_entry(plan)
    assert "judge_bp" not in plan_entry(
        make_plan(judge_model=ModelSpec.objects.get(model_id=JUDGE), judge_sample_percent=50.0)
    )
