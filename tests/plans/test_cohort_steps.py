"""Cohort-first rollouts in the pure phase rules (plans/phases.py): where each population's
weight is at every step, what a stage compares, what is refused, and that no population's
weight ever goes down as the plan advances (hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from migrations_app.plans.phases import (
    CohortStep,
    PhaseRule,
    candidate_share_drops,
    next_position,
    phase_rule,
    position,
    stage_count,
    step_cohorts,
    validate_phase,
)

COHORT_FIRST = [
    {"kind": "shadow", "percent": 10.0, "steps": []},
    {
        "kind": "rollout",
        "percent": None,
        "steps": [
            {"cohort": "internal", "percent": 100},
            {"cohort": "beta", "percent": 50},
            5,
            25,
            50,
            100,
        ],
    },
]


def walk(phases: list[PhaseRule]) -> list[Any]:
    at: tuple[int, int] | None = (0, 0)
    seen = []
    while at is not None:
        seen.append(position(phases, *at))
        at = next_position(phases, *at)
    return seen


def test_internal_then_beta_then_everyone() -> None:
    phases = [phase_rule(p) for p in COHORT_FIRST]
    assert not candidate_share_drops(phases)
    assert all(not validate_phase(p) for p in COHORT_FIRST)
    steps = walk(phases)
    assert len(steps) == stage_count(phases) == 7
    table = [(p.phase, p.cohort, p.stage_bp, p.weight_bp, dict(p.cohorts)) for p in steps]
    assert table == [
        ("shadow", "", 0, 0, {}),
        ("rollout", "internal", 10_000, 0, {"internal": 10_000}),
        ("rollout", "beta", 5_000, 0, {"internal": 10_000, "beta": 5_000}),
        ("rollout", "", 500, 500, {"internal": 10_000, "beta": 5_000}),
        ("rollout", "", 2_500, 2_500, {"internal": 10_000, "beta": 5_000}),
        # beta follows everyone once everyone is at its weight or above
        ("rollout", "", 5_000, 5_000, {"internal": 10_000, "beta": 5_000}),
        ("rollout", "", 10_000, 10_000, {"internal": 10_000, "beta": 10_000}),
    ]
    assert steps[1].shadow_bp == 0 and steps[0].shadow_bp == 1_000
    assert step_cohorts(phases) == ["internal", "beta"]


def test_a_cohort_step_after_a_split_keeps_the_splits_weight_for_everyone_else() -> None:
    phases = [
        PhaseRule("ab_split", 10.0, ()),
        PhaseRule("rollout", None, (CohortStep("beta", 50.0), 25.0, 100.0)),
    ]
    assert not candidate_share_drops(phases)
    beta = position(phases, 1, 0)
    assert (beta.weight_bp, beta.cohort, beta.stage_bp) == (1_000, "beta", 5_000)


@pytest.mark.parametrize(
    ("steps", "field", "words"),
    [
        ([{"cohort": "Internal Users", "percent": 100}], "steps[0]", "lowercase"),
        ([{"cohort": "internal"}], "steps[0]", "cohort step such as"),
        ([{"cohort": "internal", "percent": 100, "extra": 1}], "steps[0]", "cohort step such as"),
        ([{"cohort": "internal", "percent": 0}], "steps[0]", "above 0"),
        ([{"cohort": "beta", "percent": 50}, {"cohort": "beta", "percent": 50}], "steps[1]", "Cohort 'beta'"),
        ([{"cohort": "beta", "percent": 50}, 5, 5], "steps[2]", "Steps must be strictly increasing"),
        (["5"], "steps[0]", "above 0"),
    ],
)  # fmt: skip
def test_a_bad_cohort_step_is_named(steps: list[Any], field: str, words: str) -> None:
    errors = validate_phase({"kind": "rollout", "steps": steps})
    assert field in errors and words in errors[field][0], errors


def test_interleaved_populations_each_increase_on_their_own() -> None:
    steps = [5, {"cohort": "beta", "percent": 50}, 25, {"cohort": "beta", "percent": 75}, 100]
    assert validate_phase({"kind": "rollout", "steps": steps}) == {}


@pytest.mark.parametrize(
    ("phases", "words"),
    [
        # beta is already at 25 % (everyone is), so a beta step at 20 % moves nobody
        ([PhaseRule("rollout", None, (25.0, CohortStep("beta", 20.0), 100.0))], "it is at 25 %"),
        ([PhaseRule("rollout", None, (CohortStep("beta", 50.0),)), PhaseRule("rollout", None, (CohortStep("beta", 50.0), 100.0))],
         "it is at 50 %"),
        ([PhaseRule("rollout", None, (CohortStep("internal", 100.0),)), PhaseRule("shadow", 10.0, ())],
         "after cohort steps sent internal"),
    ],
)  # fmt: skip
def test_cohort_steps_that_would_not_move_anyone_forward_are_refused(
    phases: list[PhaseRule], words: str
) -> None:
    problems = candidate_share_drops(phases)
    assert any(words in p for p in problems), problems


cohort_names = st.sampled_from(["internal", "beta", "pilot"])
steps = st.lists(
    st.one_of(
        st.integers(1, 100).map(float),
        st.builds(CohortStep, cohort_names, st.integers(1, 100).map(float)),
    ),
    min_size=1,
    max_size=8,
)
phase = st.one_of(
    st.builds(PhaseRule, st.just("shadow"), st.integers(1, 100).map(float), st.just(())),
    st.builds(PhaseRule, st.just("ab_split"), st.integers(1, 99).map(float), st.just(())),
    st.builds(PhaseRule, st.just("rollout"), st.none(), steps.map(tuple)),
)


# 200 accepted plans (hypothesis draws three to five for each it keeps): more than the ~170
# the 500 draws checked before the test assume()d acceptance, in about half the time of 500.
@settings(max_examples=200, deadline=None)
@given(st.lists(phase, min_size=1, max_size=4))
def test_no_population_ever_goes_back_in_a_plan_the_rules_accept(phases: list[PhaseRule]) -> None:
    """Every plan candidate_share_drops and validate_phase accept: as it advances, the
    general weight and every cohort's weight only rise, so units only ever move from control
    to candidate."""
    rows = [
        {"kind": p.kind, "percent": p.percent,
         "steps": [{"cohort": s.cohort, "percent": s.percent} if isinstance(s, CohortStep) else s for s in p.steps]}
        for p in phases
    ]  # fmt: skip
    # Only the plans the rules accept (hypothesis counts the others as filtered, and fails
    # the test when too few are accepted to check anything).
    assume(not candidate_share_drops(phases) and not any(validate_phase(r) for r in rows))
    seen = walk(phases)
    for before, after in zip(seen, seen[1:], strict=False):
        assert after.weight_bp >= before.weight_bp or before.phase == "shadow"
        was, now = dict(before.cohorts), dict(after.cohorts)
        for name, bp in was.items():
            assert now.get(name, after.weight_bp) >= bp
        # a cohort without a weight of its own is on the general split
        for name in now.keys() - was.keys():
            assert now[name] >= before.weight_bp
    for here in seen:
        assert 0 <= here.stage_bp <= 10_000
        assert here.stage_bp == (dict(here.cohorts)[here.cohort] if here.cohort else here.weight_bp)
