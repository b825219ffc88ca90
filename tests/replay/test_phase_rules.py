"""The replay phase's pure rules (plans.phases, replay.metrics): where traffic goes, what comes
next, and which settings are refused, each with the path of what to fix."""

from __future__ import annotations

import pytest

from migrations_app.plans.phases import (
    PhaseRule,
    candidate_share_drops,
    next_position,
    phase_weights,
    position,
    replay_problems,
    validate_phase,
)
from migrations_app.replay.metrics import gates_of, validate_replay

GOOD = {
    "dataset": "support-tickets",
    "repeats": 3,
    "gates": [
        {"metric": "json_valid", "threshold": 0.99},
        {"metric": "exact_match", "threshold": -0.02, "versus_control": True},
        {"metric": "judge_preference", "threshold": -0.05},
    ],
}

REPLAY = PhaseRule("replay", None, ())
SHADOW = PhaseRule("shadow", 10.0, ())
SPLIT = PhaseRule("ab_split", 10.0, ())


def test_replay_sends_every_user_to_control_then_shadow_follows():
    phases = [REPLAY, SHADOW, SPLIT]
    here = position(phases, 0, 0)
    assert (here.phase, here.weight_bp, here.shadow_bp) == ("replay", 0, 0)
    assert next_position(phases, 0, 0) == (1, 0)
    assert position(phases, 1, 0).shadow_bp == 1000
    assert phase_weights(REPLAY) == (0,)
    assert candidate_share_drops(phases) == []
    assert replay_problems(phases) == []


def test_replay_only_first():
    assert replay_problems([SHADOW, REPLAY])
    assert replay_problems([REPLAY, REPLAY])


def test_good_settings_and_their_gates():
    assert validate_phase({"kind": "replay", "replay": GOOD}) == {}
    gates = gates_of(GOOD)
    assert [g.describe() for g in gates] == [
        "json_valid >= 0.99",
        "exact_match - control >= -0.02",
        "judge_preference >= -0.05",
    ]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"dataset": ""}, "replay.dataset"),
        ({"dataset": "Bad Name"}, "replay.dataset"),
        ({"version": 0}, "replay.version"),
        ({"repeats": 0}, "replay.repeats"),
        ({"repeats": 11}, "replay.repeats"),
        ({"repeats": True}, "replay.repeats"),
        ({"fresh_baseline": "yes"}, "replay.fresh_baseline"),
        ({"on_fail": "explode"}, "replay.on_fail"),
        ({"budget_usd": -1}, "replay.budget_usd"),
        ({"budget_usd": float("nan")}, "replay.budget_usd"),
        ({"surprise": 1}, "replay.surprise"),
        ({"gates": []}, "replay.gates"),
        ({"gates": [{}] * 21}, "replay.gates"),
        ({"gates": ["json_valid"]}, "replay.gates[0]"),
        ({"gates": [{"metric": "nope", "threshold": 0.5}]}, "replay.gates[0].metric"),
        ({"gates": [{"metric": "json_valid", "threshold": 1.5}]}, "replay.gates[0].threshold"),
        ({"gates": [{"metric": "json_valid"}]}, "replay.gates[0].threshold"),
        ({"gates": [{"metric": "json_valid", "threshold": 0.9, "direction": "up"}]},
         "replay.gates[0].direction"),
        ({"gates": [{"metric": "agreement", "threshold": 0.0, "versus_control": True}]},
         "replay.gates[0].versus_control"),
        ({"gates": [{"metric": "json_valid", "threshold": 0.9, "x": 1}]}, "replay.gates[0].x"),
    ],
)  # fmt: skip
def test_bad_settings_are_named_by_path(change, path):
    errors = validate_replay({**GOOD, **change})
    assert path in errors, errors
    assert validate_phase({"kind": "replay", "replay": {**GOOD, **change}}).get(path)


def test_settings_must_be_an_object():
    assert "replay" in validate_replay(None)
    assert "replay" in validate_phase({"kind": "replay"})
