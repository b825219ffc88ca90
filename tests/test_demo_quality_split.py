"""``make demo STORY=quality-split`` in its fast form (tests/fast_demo.py): the candidate is
rolled back in the A/B split on the application's task_completed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fast_demo import STORY_MARKS, run_fast_demo, stopped_on_quality

pytestmark = [pytest.mark.live, *STORY_MARKS]


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
