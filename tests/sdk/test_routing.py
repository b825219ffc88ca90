"""turnout.routing: the frozen vectors, stickiness, monotonicity, shadow independence."""

from __future__ import annotations

import copy

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
