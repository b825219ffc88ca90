"""phases.py's pure rules: where traffic goes at each position, what comes next, what a valid
phase, guardrail and arm look like, and the candidate's share never going down."""

from __future__ import annotations

import pytest

from migrations_app.plans.phases import (
    STANDARD_PLAYBOOK,
    PhaseRule,
    candidate_share_drops,
    next_position,
    phase_rule,
    phase_weights,
    position,
    stage_count,
    to_bp,
    validate_arms,
    validate_guardrail,
    validate_phase,
)


def shadow(percent: float = 10.0) -> PhaseRule:
    return PhaseRule("shadow", percent, ())


def split(percent: float) -> PhaseRule:
    return PhaseRule("ab_split", percent, ())


def rollout(*steps: float) -> PhaseRule:
    return PhaseRule("rollout", None, tuple(steps))


def test_the_standard_playbook_never_lowers_the_candidates_share() -> None:
    assert candidate_share_drops([phase_rule(p) for p in STANDARD_PLAYBOOK]) == []


def test_a_rollout_starting_below_the_split_is_named() -> None:
    (problem,) = candidate_share_drops([shadow(), split(25), rollout(5, 50, 100)])
    assert problem.startswith("Phase 3 (rollout) starts at 5 % on the candidate")
    assert "below the 25 % of phase 2 (A/B split)" in problem
    assert "20 % of users would move back from the candidate to control" in problem


@pytest.mark.parametrize(
    "phases",
    [
        [shadow(), split(25), rollout(25, 50, 100)],  # equal is no move
        [split(10), split(10), rollout(50, 100)],
        [shadow(100), shadow(5), split(50)],  # shadow phases first: nobody on the candidate yet
        [rollout(5, 25), rollout(25, 100)],
        [rollout()],  # no steps: 100 %
        [],
    ],
)
def test_shares_that_stay_or_grow_pass(phases: list[PhaseRule]) -> None:
    assert candidate_share_drops(phases) == []


def test_every_drop_is_reported_with_both_phases() -> None:
    problems = candidate_share_drops([split(50), rollout(25, 75), split(60), rollout()])
    assert len(problems) == 2
    assert "Phase 2 (rollout)" in problems[0] and "phase 1 (A/B split)" in problems[0]
    assert "Phase 3 (A/B split)" in problems[1] and "phase 2 (rollout)" in problems[1]
    assert "75 %" in problems[1]


def test_a_shadow_after_users_saw_the_candidate_is_a_drop() -> None:
    (problem,) = candidate_share_drops([split(10), shadow()])
    assert problem.startswith("Phase 2 (shadow) sends every user to control")
    assert "phase 1 (A/B split) sent 10 %" in problem


def test_shares_compare_as_routed_in_basis_points() -> None:
    # 10.004 % and 10 % route the same units (1000 bp): not a drop.
    assert candidate_share_drops([split(10.004), rollout(10, 100)]) == []
    assert phase_weights(rollout(0.5, 100)) == (50, 10_000)
    assert phase_weights(shadow(30)) == (0,)


# --- where traffic goes at each position ----------------------------------------------


PLAYBOOK = [shadow(10.0), split(10.0), rollout(25, 50, 100)]


@pytest.mark.parametrize(
    ("phase_index", "step_index", "expected"),
    [
        (0, 0, ("shadow", 0, 0, 1000)),  # shadow: every user on control, 10 % copied
        (1, 0, ("ab_split", 0, 1000, 0)),
        (2, 0, ("rollout", 0, 2500, 0)),
        (2, 2, ("rollout", 2, 10_000, 0)),
        (2, 7, ("rollout", 2, 10_000, 0)),  # past the last step: the last step
        (3, 0, (None, 0, 0, 0)),  # out of range (a phase deleted under a draft): control
        (-1, 0, (None, 0, 0, 0)),
    ],
)
def test_position(phase_index: int, step_index: int, expected: tuple) -> None:
    here = position(PLAYBOOK, phase_index, step_index)
    assert (here.phase, here.step_index, here.weight_bp, here.shadow_bp) == expected


def test_next_position_walks_every_step_then_stops() -> None:
    walked, here = [], (0, 0)
    while here is not None:
        walked.append(here)
        here = next_position(PLAYBOOK, *here)
    assert walked == [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2)]
    assert stage_count(PLAYBOOK) == len(walked)  # each rollout step is a stage of its own
    assert next_position([], 0, 0) is None


def test_weights_and_basis_points() -> None:
    assert phase_weights(shadow(50)) == (0,)
    assert phase_weights(split(12.5)) == (1250,)
    assert phase_weights(rollout()) == (10_000,)  # a rollout without steps goes to 100 %
    assert (to_bp(-3), to_bp(0.004), to_bp(0.006), to_bp(12.34), to_bp(250)) == (
        0,
        0,
        1,
        1234,
        10_000,
    )


def test_phase_rule_reads_a_form_or_a_plan_file() -> None:
    assert phase_rule({"kind": "rollout", "steps": [5, "25"]}) == rollout(5.0, 25.0)
    assert phase_rule({"kind": "ab_split", "percent": 20.0}) == split(20.0)


# --- what a valid phase, guardrail and arm look like -------------------------------------


@pytest.mark.parametrize(
    ("phase", "fields"),
    [
        ({"kind": "shadow", "percent": 10}, set()),
        ({"kind": "canary", "percent": 10}, {"kind"}),
        ({"kind": "shadow", "percent": 0}, {"percent"}),
        ({"kind": "ab_split", "percent": 100}, {"percent"}),  # 100 % is a rollout's job
        ({"kind": "ab_split", "percent": float("nan")}, {"percent"}),
        ({"kind": "rollout", "steps": []}, {"steps"}),
        ({"kind": "rollout", "steps": [5, 5, 100]}, {"steps[1]"}),
        ({"kind": "rollout", "steps": [5, 150]}, {"steps[1]"}),
        ({"kind": "rollout", "steps": [50, "x", 25, 10]}, {"steps[1]"}),
        ({"kind": "rollout", "steps": [50, 25, 10]}, {"steps[1]", "steps[2]"}),
        ({"kind": "rollout", "steps": [5, 100], "min_samples": -1}, {"min_samples"}),
        (
            {"kind": "rollout", "steps": [5, 100], "min_duration_minutes": True},
            {"min_duration_minutes"},
        ),
    ],
)
def test_validate_phase(phase: dict, fields: set) -> None:
    assert set(validate_phase(phase)) == fields


@pytest.mark.parametrize(
    ("guardrail", "fields"),
    [
        ({"metric": "error_rate", "tolerance_kind": "relative", "tolerance": 1.5}, set()),
        ({"metric": "error_rate", "tolerance_kind": "relative", "tolerance": 1.0}, {"tolerance"}),
        ({"metric": "error_rate", "tolerance_kind": "relative", "tolerance": 11}, {"tolerance"}),
        (
            {"metric": "satisfaction", "tolerance_kind": "relative", "tolerance": 1.5},
            {"tolerance_kind"},
        ),
        ({"metric": "satisfaction", "tolerance_kind": "absolute", "tolerance": 0.1}, set()),
        ({"metric": "judge_preference", "tolerance_kind": "absolute", "tolerance": 0.05}, set()),
        (
            {"metric": "judge_preference", "tolerance_kind": "relative", "tolerance": 1.5},
            {"tolerance_kind"},
        ),
        (
            {"metric": "judge_preference", "tolerance_kind": "absolute", "tolerance": 2.5},
            {"tolerance"},
        ),
        ({"metric": "judge_score", "tolerance_kind": "absolute", "tolerance": 0.1}, set()),
        (
            {"metric": "judge_score", "tolerance_kind": "relative", "tolerance": 1.1},
            {"tolerance_kind"},
        ),
        (
            {"metric": "cost_per_request", "tolerance_kind": "absolute", "tolerance": 101},
            {"tolerance"},
        ),
        ({"metric": "p50", "tolerance_kind": "absolute", "tolerance": 1}, {"metric"}),
        ({"metric": "error_rate", "tolerance_kind": "ratio", "tolerance": 1.5}, {"tolerance_kind"}),
        ({"metric": "error_rate", "tolerance_kind": "relative", "tolerance": "1.5"}, {"tolerance"}),
        (
            {
                "metric": "error_rate",
                "tolerance_kind": "relative",
                "tolerance": 1.5,
                "action": "page",
            },
            {"action"},
        ),
    ],
)
def test_validate_guardrail(guardrail: dict, fields: set) -> None:
    assert set(validate_guardrail(guardrail)) == fields


def test_validate_arms() -> None:
    control = {"model": 1, "params": {"temperature": 0.2}, "prompt_mode": "none"}
    assert validate_arms(control=control, candidate={**control, "model": 2},
                         control_max_output=4096, candidate_max_output=4096) == {}  # fmt: skip
    same = validate_arms(control=control, candidate=dict(control), control_max_output=None,
                         candidate_max_output=None)  # fmt: skip
    assert set(same) == {"candidate_model"}  # the candidate must differ
    bad = validate_arms(
        control={**control, "params": {"temperature": 3, "max_tokens": 9000}},
        candidate={"model": 2, "params": [], "prompt_mode": "suffix", "prompt_text": " "},
        control_max_output=4096,
        candidate_max_output=4096,
    )
    assert set(bad) == {"control_params", "candidate_params", "candidate_prompt_text"}
    assert len(bad["control_params"]) == 2  # temperature's range and the model's output limit
    assert set(validate_arms(control=None, candidate=None, control_max_output=None,
                             candidate_max_output=None)) == {"control_model", "candidate_model"}  # fmt: skip
