"""The holdout after promotion as pure rules (plans/holdout.py, plans/phases.py): where it
sits in a run, its weights, what is refused, and (hypothesis, on the SDK's own decide())
that entering it moves units only from the candidate to control, exactly those in the top
h % of buckets, and that releasing it (complete) moves them only back."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from turnout import routing

from migrations_app.plans.holdout import (
    ends_at_full,
    holdout_bp,
    validate_holdout,
    with_holdout,
)
from migrations_app.plans.phases import (
    HOLDOUT,
    CohortStep,
    PhaseRule,
    next_position,
    phase_weights,
    position,
    stage_count,
)
from tests.plans.test_cohort_steps import COHORT_FIRST, walk

PHASES = [
    PhaseRule("shadow", 10.0, ()),
    PhaseRule("ab_split", 10.0, ()),
    PhaseRule("rollout", None, (25.0, 50.0, 100.0)),
]


def test_the_holdout_is_one_more_stage_after_the_last_step() -> None:
    rules = with_holdout(PHASES, 2.0)
    assert [(p.phase, p.weight_bp) for p in walk(rules)] == [
        ("shadow", 0),
        ("ab_split", 1_000),
        ("rollout", 2_500),
        ("rollout", 5_000),
        ("rollout", 10_000),
        (HOLDOUT, 9_800),
    ]
    assert stage_count(rules) == stage_count(PHASES) + 1
    # The last step leads to the holdout; the holdout to nothing (complete).
    assert next_position(rules, 2, 2) == (3, 0)
    assert next_position(rules, 3, 0) is None
    assert next_position(PHASES, 2, 2) is None
    assert phase_weights(rules[-1]) == (9_800,)
    assert holdout_bp(0.5) == 9_950


def test_no_holdout_adds_no_stage() -> None:
    assert with_holdout(PHASES, 0.0) == PHASES
    assert with_holdout(PHASES, None) == PHASES


def test_cohorts_are_held_out_like_everyone() -> None:
    from migrations_app.plans.phases import phase_rule

    rules = with_holdout([phase_rule(p) for p in COHORT_FIRST], 5.0)
    last_step, holdout = walk(rules)[-2:]
    assert dict(last_step.cohorts) == {"internal": 10_000, "beta": 10_000}
    assert (holdout.phase, holdout.weight_bp, holdout.cohorts, holdout.cohort) == (
        HOLDOUT,
        9_500,
        (),
        "",
    )
    assert holdout.stage_bp == 9_500


@pytest.mark.parametrize(
    ("phases", "ends"),
    [
        (PHASES, True),
        (PHASES[:2], False),  # a split at 10 % last
        ([PhaseRule("rollout", None, (25.0, 50.0))], False),
        ([PhaseRule("rollout", None, (50.0, CohortStep("beta", 100.0)))], False),
        ([PhaseRule("rollout", None, ())], True),  # a rollout without steps goes to 100 %
    ],
)
def test_a_holdout_needs_phases_ending_at_100(phases: list[PhaseRule], ends: bool) -> None:
    assert ends_at_full(phases) is ends
    errors = validate_holdout(phases, percent=2.0, watch_minutes=60, min_samples=1000)
    assert ("holdout_percent" in errors) is not ends


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"percent": 0.4}, "holdout_percent"),
        ({"percent": 20.5}, "holdout_percent"),
        ({"percent": -1}, "holdout_percent"),
        ({"percent": float("nan")}, "holdout_percent"),
        ({"percent": True}, "holdout_percent"),
        ({"percent": "2"}, "holdout_percent"),
        ({"watch_minutes": 0}, "holdout_watch_minutes"),
        ({"watch_minutes": 30 * 24 * 60 + 1}, "holdout_watch_minutes"),
        ({"watch_minutes": 1.5}, "holdout_watch_minutes"),
        ({"min_samples": -1}, "holdout_min_samples"),
        ({"min_samples": 10_000_001}, "holdout_min_samples"),
    ],
)
def test_out_of_bounds_values_are_refused_by_field(values: dict[str, Any], field: str) -> None:
    given_values = {"percent": 2.0, "watch_minutes": 60, "min_samples": 1000, **values}
    errors = validate_holdout(PHASES, **given_values)
    assert list(errors) == [field]


@pytest.mark.parametrize("percent", [0, 0.0, 0.5, 2, 20.0])
def test_in_bounds_values_pass(percent: float) -> None:
    assert validate_holdout(PHASES, percent=percent, watch_minutes=1, min_samples=0) == {}


# --- stickiness on the SDK's decide(), the one algorithm -------------------------------------

ARM = {
    "provider": "p",
    "kind": "openai",
    "base_url": "",
    "api_key_env": "",
    "model": "m",
    "params": {},
    "prompt": {"mode": "none", "text": ""},
}


def snapshot_plan(
    salt: str, status: str, phase: str | None, weight_bp: int, cohorts: dict[str, int]
) -> routing.PlanSnapshot:
    entry: dict[str, Any] = {
        "key": "p",
        "version": 1,
        "run": 1,
        "status": status,
        "phase": phase,
        "phase_index": 0,
        "step_index": 0,
        "salt": salt,
        "weight_bp": weight_bp,
        "shadow_bp": 0,
        "fallback_to_control": True,
        "control": {**ARM, "model": "control"},
        "candidate": {**ARM, "model": "candidate"},
        "rules": [
            {
                "name": "eu",
                "when": [{"attribute": "region", "op": "equals", "value": "eu"}],
                "then": "exclude",
            },
            {
                "name": "beta",
                "when": [{"attribute": "tier", "op": "equals", "value": "beta"}],
                "then": "cohort",
                "cohort": "beta",
            },
        ],  # fmt: skip
    }
    if cohorts:
        entry["cohorts"] = cohorts
    return routing.parse_plan(entry)


def arm(plan: routing.PlanSnapshot, unit: str, attributes: dict[str, Any]) -> str:
    return routing.decide(plan, unit, decision_id="d", attributes=attributes).arm


def stages(salt: str, percent: float) -> list[routing.PlanSnapshot]:
    """The last step, the holdout and the completed plan, as the server's snapshot says them."""
    rules = with_holdout([PhaseRule("rollout", None, (CohortStep("beta", 50.0), 100.0))], percent)
    last, held = position(rules, 0, 1), position(rules, 1, 0)
    return [
        snapshot_plan(salt, "running", last.phase, last.weight_bp, dict(last.cohorts)),
        snapshot_plan(salt, "running", held.phase, held.weight_bp, dict(held.cohorts)),
        snapshot_plan(salt, "completed", None, 0, {}),
    ]


ATTRIBUTES = st.fixed_dictionaries(
    {},
    optional={
        "tier": st.sampled_from(["beta", "pro"]),
        "region": st.sampled_from(["eu", "us"]),
    },
)


@settings(max_examples=200, deadline=None)
@given(
    salt=st.text(min_size=1, max_size=12),
    percent=st.floats(min_value=0.5, max_value=20.0),
    units=st.lists(st.tuples(st.text(min_size=1, max_size=20), ATTRIBUTES), max_size=40),
)
def test_entering_and_leaving_the_holdout_moves_units_only_as_stated(
    salt: str, percent: float, units: list[tuple[str, dict[str, Any]]]
) -> None:
    last, held, completed = stages(salt, percent)
    threshold = holdout_bp(percent)
    for unit, attributes in units:
        before, during, after = (arm(p, unit, attributes) for p in (last, held, completed))
        excluded = attributes.get("region") == "eu"
        if excluded:  # an exclusion holds throughout the run; a completed plan serves all
            assert (before, during) == ("control", "control")
            continue
        assert before == "candidate"  # 100 %: every included unit, a cohort's too
        in_holdout = routing.bucket(salt, unit) >= threshold
        assert during == ("control" if in_holdout else "candidate")
        assert after == "candidate"


def test_the_holdout_holds_about_its_share() -> None:
    _, held, _ = stages("s", 2.0)
    units = [f"user-{i}" for i in range(20_000)]
    on_control = sum(arm(held, u, {}) == "control" for u in units) / len(units)
    assert 0.016 < on_control < 0.024
