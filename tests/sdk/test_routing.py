"""turnout.routing: the frozen vectors, stickiness, monotonicity, shadow independence."""

from __future__ import annotations

import copy
import dataclasses
import json

import mmh3
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import chi2_contingency
from turnout import routing
from turnout.errors import SnapshotError

ARM = {
    "provider": "openai",
    "kind": "openai",
    "model": "gpt-4o",
    "params": {},
    "prompt": {"mode": "none", "text": ""},
}


def _plan(
    weight_bp: int = 0, shadow_bp: int = 0, salt: str = "salt", status: str = "running"
) -> routing.PlanSnapshot:
    return routing.parse_plan(
        {
            "key": "p",
            "version": 1,
            "run": 1,
            "status": status,
            "phase": "rollout",
            "salt": salt,
            "weight_bp": weight_bp,
            "shadow_bp": shadow_bp,
            "control": ARM,
            "candidate": {**ARM, "model": "claude"},
        }
    )


@given(
    unit=st.text(max_size=64),
    salt=st.text(min_size=1, max_size=16),
    weights=st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)),
)
def test_raising_the_weight_never_moves_a_unit_back_to_control(
    unit: str, salt: str, weights: tuple[int, int]
) -> None:
    low, high = sorted(weights)
    before = routing.decide(_plan(low, salt=salt), unit, decision_id="a").arm
    after = routing.decide(_plan(high, salt=salt), unit, decision_id="b").arm
    assert not (before == "candidate" and after == "control")


def test_shadow_sampling_is_independent_of_the_split() -> None:
    plan = _plan(weight_bp=3000, shadow_bp=2000)
    n = 100_000
    in_candidate = np.fromiter(
        (routing.bucket(plan.salt, f"u{i}") < 3000 for i in range(n)), bool, n
    )
    in_shadow = np.fromiter(
        (routing.shadow_bucket(plan.salt, f"u{i}") < 2000 for i in range(n)), bool, n
    )
    table = [
        [np.sum(in_candidate & in_shadow), np.sum(in_candidate & ~in_shadow)],
        [np.sum(~in_candidate & in_shadow), np.sum(~in_candidate & ~in_shadow)],
    ]
    assert chi2_contingency(table).pvalue > 0.001
    assert abs(in_candidate.mean() - 0.3) < 0.01 and abs(in_shadow.mean() - 0.2) < 0.01
    # Only control units are shadowed: the candidate is what the shadow call would ask.
    shadowed = [routing.decide(plan, f"u{i}", decision_id="d") for i in range(2000)]
    assert all(d.arm == "control" for d in shadowed if d.shadow)
    assert all(
        d.shadow_spec is not None and d.shadow_spec.model == "claude" for d in shadowed if d.shadow
    )


def test_statuses_and_default() -> None:
    default = routing.ArmSpec(provider="openai", model="gpt-4o-mini")
    assert routing.decide(None, "u", decision_id="d", default=default).spec == default
    assert routing.decide(None, "u", decision_id="d").model is None
    assert routing.decide(_plan(10_000, status="paused"), "u", decision_id="d").arm == "control"
    assert routing.decide(_plan(0, status="completed"), "u", decision_id="d").arm == "candidate"


def test_malformed_snapshot_is_rejected_whole() -> None:
    good = {
        "key": "p",
        "status": "running",
        "salt": "s",
        "weight_bp": 10,
        "control": ARM,
        "candidate": ARM,
    }
    for field, value in [
        ("weight_bp", 10_001),
        ("weight_bp", "10"),
        ("status", "sideways"),
        ("salt", None),
        ("control", []),
    ]:
        bad = copy.deepcopy(good)
        bad[field] = value
        with pytest.raises(SnapshotError):
            routing.parse_snapshot({"plans": [good, bad]})
    with pytest.raises(SnapshotError):
        routing.parse_snapshot({"plans": "nope"})


def test_decisions_are_immutable_and_equal_to_one_built_by_hand() -> None:
    plan = _plan(weight_bp=10_000)
    decision = routing.decide(plan, "u", decision_id="d1")
    assert decision == routing.Decision(
        "p", "u", "candidate", "openai", "claude", decision.params, routing.Prompt(),
        plan.candidate, plan.control, False, None, 1, 1, "rollout", "SPLIT", "d1",
    )  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.arm = "control"  # type: ignore[misc]
    assert not hasattr(decision, "__dict__")


def test_params_cannot_be_changed_through_a_decision() -> None:
    entry = {
        "key": "p",
        "status": "running",
        "salt": "s",
        "weight_bp": 0,
        "control": {**ARM, "params": {"stop": ["\n"], "response_format": {"type": "json"}}},
        "candidate": ARM,
    }
    decision = routing.decide(routing.parse_plan(entry), "u", decision_id="d")
    with pytest.raises(TypeError):
        decision.params["temperature"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        decision.params["response_format"]["type"] = "text"
    assert decision.params["stop"] == ("\n",)
    # The JSON view is plain data again, and changing it changes nothing shared.
    body = decision.to_dict()
    assert body["params"] == {"stop": ["\n"], "response_format": {"type": "json"}}
    body["params"]["response_format"]["type"] = "text"
    assert decision.params["response_format"]["type"] == "json"


def test_to_dict_is_json_safe_and_complete() -> None:
    decision = routing.decide(_plan(weight_bp=0, shadow_bp=10_000), "u", decision_id="d")
    body = json.loads(json.dumps(decision.to_dict()))
    assert body["arm"] == "control" and body["shadow"] is True
    assert body["shadow_model"] == "claude" and body["shadow_spec"]["model"] == "claude"
    assert body["fallback"]["model"] == "gpt-4o" and body["reason"] == "SPLIT"
    assert body["prompt"] == {"mode": "none", "text": ""} and body["decision_id"] == "d"
    nothing = routing.decide(None, "u", decision_id="d").to_dict()
    assert (nothing["model"], nothing["reason"], nothing["fallback"]) == (None, "DEFAULT", None)
    json.dumps(nothing)


def test_prompt_adjustments() -> None:
    assert routing.Prompt("suffix", "Be brief.").apply("You help.") == "You help.\n\nBe brief."
    assert routing.Prompt("suffix", "Be brief.").apply(None) == "Be brief."
    assert routing.Prompt("override", "New.").apply("Old.") == "New."
    assert routing.Prompt().apply("Same.") == "Same."


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("weight_bp",), True),
        (("weight_bp",), -1),
        (("shadow_bp",), 10_001),
        (("key",), ""),
        (("version",), "1"),
        (("run",), -1),
        (("phase",), 3),
        (("control", "model"), None),
        (("control", "provider"), ""),
        (("control", "params"), [1]),
        (("candidate", "prompt"), {"mode": "prepend", "text": ""}),
        (("candidate", "prompt"), "none"),
    ],
)
def test_each_malformed_field_is_named(path: tuple[str, ...], value: object) -> None:
    entry: dict[str, object] = {
        "key": "p",
        "version": 1,
        "run": 1,
        "status": "running",
        "phase": "rollout",
        "salt": "s",
        "weight_bp": 10,
        "control": dict(ARM),
        "candidate": dict(ARM),
    }
    target: dict[str, object] = entry
    for name in path[:-1]:
        target = target[name]  # type: ignore[assignment]
    target[path[-1]] = value
    with pytest.raises(SnapshotError) as caught:
        routing.parse_snapshot({"schema": 1, "version": "v", "plans": [entry]})
    assert caught.value.code == "invalid_snapshot" and caught.value.details["field"]


def test_snapshot_level_problems() -> None:
    entry = {"key": "p", "status": "draft", "salt": "s", "control": ARM, "candidate": ARM}
    for bad in (
        None,
        [],
        {"plans": [entry, entry]},  # the same key twice
        {"schema": 2, "plans": []},
        {"version": 3, "plans": []},
    ):
        with pytest.raises(SnapshotError):
            routing.parse_snapshot(bad)
    parsed = routing.parse_snapshot({"schema": 1, "version": "abc", "plans": [entry]})
    assert parsed.version == "abc" and list(parsed.plans) == ["p"]
    with pytest.raises(TypeError):
        parsed.plans["q"] = parsed.plans["p"]  # type: ignore[index]
    # A kind this SDK does not know is not a reason to refuse every plan.
    future = {**entry, "control": {**ARM, "kind": "bedrock"}}
    assert routing.parse_snapshot({"plans": [future]}).plans["p"].control.kind == "bedrock"


def test_a_lone_surrogate_unit_gets_a_stable_bucket_not_a_crash() -> None:
    """mmh3 (5.3.1) segfaults hashing a str with a lone surrogate; such a unit reaches
    decide() from any JSON parser. It is hashed as its surrogatepass bytes instead."""
    unit = "user-\ud800"
    first = routing.bucket("salt", unit)
    assert first == routing.bucket("salt", unit)
    assert 0 <= first < routing.BASIS_POINTS
    assert 0 <= routing.shadow_bucket("salt", unit) < routing.BASIS_POINTS
    for weight in (0, 5000, 10_000):
        decision = routing.decide(_plan(weight, shadow_bp=5000), unit, decision_id="d")
        assert decision.arm == ("candidate" if first < weight else "control")
    # Every other string hashes exactly as mmh3 hashes it (no bucket moves).
    assert routing.bucket("s", "ünït") == mmh3.hash("s:ünït", 0, False) % routing.BASIS_POINTS
