"""Stickiness under targeting, as properties (hypothesis): whatever the plan's rules, cohort
weights and overrides, a change made for some units never moves the others, and raising a
weight only moves units from control to candidate (docs/contracts.md, "Targeting")."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from turnout import routing

ARM = {"provider": "openai", "model": "gpt-4o"}
NOW = 1_800_000_000.0
TENANTS = ["acme", "bank", "gov", "beta-co", "shop", "lab"]
COHORTS = ["internal", "beta", "pilot"]

attributes = st.fixed_dictionaries(
    {},
    optional={
        "tenant": st.sampled_from(TENANTS),
        "tier": st.sampled_from(["free", "pro", "beta"]),
        "internal": st.booleans(),
        "seats": st.integers(0, 1000),
    },
)
weights = st.integers(0, 10_000)
condition = st.one_of(
    st.builds(lambda v: {"attribute": "tenant", "op": "equals", "value": v}, st.sampled_from(TENANTS)),
    st.builds(lambda vs: {"attribute": "tenant", "op": "in", "values": vs}, st.lists(st.sampled_from(TENANTS), min_size=1, max_size=3)),
    st.builds(lambda v: {"attribute": "internal", "op": "equals", "value": v}, st.booleans()),
    st.builds(lambda v: {"attribute": "seats", "op": "gte", "value": v}, st.integers(0, 1000)),
    st.just({"attribute": "tier", "op": "exists"}),
)  # fmt: skip
rule = st.builds(
    lambda when, then, cohort: {"when": when, "then": then, **({"cohort": cohort} if then == "cohort" else {})},
    st.lists(condition, min_size=1, max_size=2),
    st.sampled_from(["exclude", "include", "cohort"]),
    st.sampled_from(COHORTS),
)  # fmt: skip
exclusion = st.builds(
    lambda when: {"when": when, "then": "exclude"}, st.lists(condition, min_size=1, max_size=2)
)


def entry(
    rules: list[Any], cohorts: dict[str, int], weight: int, overrides: dict[str, Any]
) -> routing.PlanSnapshot:
    return routing.parse_plan(
        {
            "key": "p", "status": "running", "salt": "salt", "weight_bp": weight, "shadow_bp": 0,
            "control": ARM, "candidate": {**ARM, "model": "claude"},
            "rules": rules, "cohorts": cohorts, "overrides": overrides,
        }
    )  # fmt: skip


def decisions(
    plan: routing.PlanSnapshot, population: list[tuple[str, dict[str, Any]]]
) -> list[routing.Decision]:
    return [routing.decide(plan, u, decision_id="d", attributes=a, now=NOW) for u, a in population]


population = st.lists(st.tuples(st.text(max_size=12), attributes), min_size=1, max_size=40)
cohort_weights = st.dictionaries(st.sampled_from(COHORTS), weights)
overrides = st.dictionaries(
    st.text(max_size=12),
    st.fixed_dictionaries(
        {"arm": st.sampled_from(["control", "candidate"]), "expires": st.just(NOW + 60)}
    ),
    max_size=3,
)
# Each property over 100 plans (hypothesis' default), each asked by up to 40 units: about 2,000
# units' decisions compared a property. Drawing the plans and populations is most of the time.
EXAMPLES = 100
# A plan's rules, cohort weights, general weight and overrides, and the units asking.
A_PLAN = (st.lists(rule, max_size=5), cohort_weights, weights, overrides, population)


def seen(d: routing.Decision) -> tuple[str, str, str | None]:
    """What a unit sees of its decision: the arm, the reason and the cohort."""
    return d.arm, d.reason, d.cohort


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    *A_PLAN,
    exclusion,
    st.integers(0, 5),
)
def test_adding_or_removing_an_exclusion_moves_only_the_units_it_holds_for(
    rules: list[Any], cohorts: dict[str, int], weight: int, over: dict[str, Any],
    people: list[tuple[str, dict[str, Any]]], new_rule: dict[str, Any], at: int,
) -> None:  # fmt: skip
    before = decisions(entry(rules, cohorts, weight, over), people)
    with_rule = rules[:at] + [new_rule] + rules[at:]
    after = decisions(entry(with_rule, cohorts, weight, over), people)
    excluded_by_it = routing.parse_plan(
        {"key": "x", "status": "running", "salt": "s", "control": ARM, "candidate": ARM, "rules": [new_rule]}
    )  # fmt: skip
    for (unit, attrs), was, now in zip(people, before, after, strict=True):
        caught = (
            routing.decide(excluded_by_it, unit, decision_id="d", attributes=attrs).reason
            == "EXCLUDED"
        )
        if not caught:
            assert seen(now) == seen(was)
        else:
            # a unit it holds for is excluded, or kept by an earlier rule or its override
            assert now.reason in ("EXCLUDED", "OVERRIDE") or (now.arm, now.cohort) == (
                was.arm,
                was.cohort,
            )
    # and removing it again gives every unit back its decision
    after_removal = decisions(entry(rules, cohorts, weight, over), people)
    assert [seen(d) for d in after_removal] == [seen(d) for d in before]


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    *A_PLAN,
    st.sampled_from(COHORTS),
    weights,
)
def test_changing_one_cohorts_weight_moves_no_unit_outside_it(
    rules: list[Any], cohorts: dict[str, int], weight: int, over: dict[str, Any],
    people: list[tuple[str, dict[str, Any]]], changed: str, new_weight: int,
) -> None:  # fmt: skip
    before = decisions(entry(rules, cohorts, weight, over), people)
    after = decisions(entry(rules, {**cohorts, changed: new_weight}, weight, over), people)
    for was, now in zip(before, after, strict=True):
        if was.cohort != changed:
            assert seen(now) == seen(was)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    *A_PLAN,
    st.text(max_size=12),
    st.sampled_from(["control", "candidate"]),
)
def test_an_override_for_someone_else_moves_no_one(
    rules: list[Any], cohorts: dict[str, int], weight: int, over: dict[str, Any],
    people: list[tuple[str, dict[str, Any]]], qa: str, arm: str,
) -> None:  # fmt: skip
    before = decisions(entry(rules, cohorts, weight, over), people)
    after = decisions(
        entry(rules, cohorts, weight, {**over, qa: {"arm": arm, "expires": NOW + 1}}), people
    )
    for (unit, _), was, now in zip(people, before, after, strict=True):
        if unit == qa:
            assert (now.arm, now.reason) == (arm, "OVERRIDE")
        else:
            assert seen(now) == seen(was)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.lists(rule, max_size=5),
    cohort_weights,
    population,
    st.sampled_from([*COHORTS, ""]),
    weights,
    weights,
)
def test_raising_a_weight_only_moves_units_from_control_to_candidate(
    rules: list[Any], cohorts: dict[str, int], people: list[tuple[str, dict[str, Any]]],
    raised: str, low: int, high: int,
) -> None:  # fmt: skip
    """Within a cohort (or the general split, ""), at any two weights: the candidates at the
    lower weight are candidates at the higher one."""
    low, high = min(low, high), max(low, high)
    if raised:
        lower, higher = (
            entry(rules, {**cohorts, raised: low}, 5000, {}),
            entry(rules, {**cohorts, raised: high}, 5000, {}),
        )
    else:
        lower, higher = entry(rules, cohorts, low, {}), entry(rules, cohorts, high, {})
    for was, now in zip(decisions(lower, people), decisions(higher, people), strict=True):
        assert (was.cohort or "") == (now.cohort or "") and was.reason == now.reason
        # a cohort without a weight of its own is split at the general weight
        moved = now.cohort == raised if raised else now.cohort is None or now.cohort not in cohorts
        if moved and now.reason == "SPLIT":
            assert was.arm == "control" or now.arm == "candidate"
        else:
            assert was.arm == now.arm
