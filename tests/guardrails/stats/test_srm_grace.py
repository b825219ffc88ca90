"""Sample ratio in a stage's first seconds (issue 14, item 5). Units are counted when their
outcomes arrive; right after a 50 % step the candidate's first calls were slow (a cold client)
and an evaluation 9 s in saw control 54 units, candidate 0, and paged cannot_evaluate. The
stage's first SRM_GRACE_SECONDS are not judged; after them a real mismatch still is."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from migrations_app.guardrails import rules, stats
from tests.guardrails.stats import sim

HALF = rules.StageState(expected_share=0.5, elapsed_seconds=9.0)


def decide(control, candidate, stage) -> rules.PlanDecision:
    return rules.evaluate_plan(
        guardrails=(rules.GuardrailSpec("error_rate", 1.5),),
        settings=rules.PlanSettings(),
        stage=stage,
        control=control,
        candidate=candidate,
    )


def test_the_demos_counts_are_significant_but_not_judged_in_the_grace():
    early = stats.sample_ratio_test(54, 0, expected_share=0.5, elapsed_seconds=9.0)
    assert early.e_value >= 1 / early.alpha  # the counts alone would page
    assert not early.mismatch and early.grace_left == stats.SRM_GRACE_SECONDS - 9.0
    assert "not judged" in early.summary
    assert early.to_dict()["grace_left"] == early.grace_left
    late = stats.sample_ratio_test(
        54, 0, expected_share=0.5, elapsed_seconds=stats.SRM_GRACE_SECONDS
    )
    assert late.mismatch and late.grace_left == 0.0


def test_a_split_nine_seconds_old_neither_holds_nor_pages_on_sample_ratio():
    control = stats.ArmAggregates(requests=54)
    candidate = stats.ArmAggregates(requests=0)
    d = decide(control, candidate, HALF)
    assert d.sample_ratio is not None and not d.sample_ratio.mismatch
    assert not d.alert
    assert not any("sample ratio" in r for r in d.reasons)


def test_a_real_mismatch_is_caught_once_the_grace_is_over():
    # A candidate that never reports.
    control = stats.ArmAggregates(requests=54)
    candidate = stats.ArmAggregates(requests=0)
    over = replace(HALF, elapsed_seconds=stats.SRM_GRACE_SECONDS + 1)
    d = decide(control, candidate, over)
    assert d.sample_ratio is not None and d.sample_ratio.mismatch
    assert d.action == "hold" and d.alert
    assert any(r.startswith("sample ratio mismatch") for r in d.reasons)
    # A broken split: units arrive 50/50 at a 40 % step.
    rng = np.random.default_rng(7)
    a, b = sim.random_arm(rng, 40_000), sim.random_arm(rng, 40_000)
    d = decide(a, b, replace(over, expected_share=0.4))
    assert d.sample_ratio is not None and d.sample_ratio.mismatch and d.alert
