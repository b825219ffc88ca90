"""Targeting rules (turnout.targeting) and the decision they feed (turnout.routing.decide):
every operator on the types it compares and on the types it does not, the refusals that name
the rule, overrides and their expiry, and what an SDK does with targeting it cannot read."""

from __future__ import annotations

from typing import Any

import pytest
from turnout import routing, targeting
from turnout.contract import MAX_ATTRIBUTES, MAX_MATCH_INPUT, MAX_RULE_VALUES, MAX_RULES

ARM = {"provider": "openai", "model": "gpt-4o"}
NOW = 1_800_000_000.0


def plan(**extra: Any) -> routing.PlanSnapshot:
    entry = {
        "key": "p",
        "status": "running",
        "salt": "s",
        "weight_bp": 0,
        "shadow_bp": 0,
        "control": ARM,
        "candidate": {**ARM, "model": "claude"},
        **extra,
    }
    return routing.parse_plan(entry)


def holds(condition: dict[str, Any], attributes: dict[str, Any]) -> bool:
    rules = targeting.compile_rules([{"when": [condition], "then": "exclude"}])
    return targeting.match(rules, attributes) is not None


@pytest.mark.parametrize(
    ("condition", "attributes", "expected"),
    [
        ({"attribute": "tenant", "op": "equals", "value": "acme"}, {"tenant": "acme"}, True),
        ({"attribute": "tenant", "op": "equals", "value": "acme"}, {"tenant": "Acme"}, False),
        ({"attribute": "tenant", "op": "equals", "value": "acme"}, {}, False),
        ({"attribute": "tenant", "op": "equals", "value": "acme"}, {"tenant": None}, False),
        ({"attribute": "n", "op": "equals", "value": 1}, {"n": 1.0}, True),
        # a boolean is not the number 1, nor the string "true"
        ({"attribute": "n", "op": "equals", "value": 1}, {"n": True}, False),
        ({"attribute": "b", "op": "equals", "value": True}, {"b": 1}, False),
        ({"attribute": "b", "op": "equals", "value": True}, {"b": "true"}, False),
        ({"attribute": "b", "op": "equals", "value": True}, {"b": True}, True),
        ({"attribute": "t", "op": "in", "values": ["a", "b"]}, {"t": "b"}, True),
        ({"attribute": "t", "op": "in", "values": ["a", "b"]}, {"t": "c"}, False),
        ({"attribute": "t", "op": "in", "values": [1, 2]}, {"t": True}, False),
        ({"attribute": "t", "op": "in", "values": [True]}, {"t": 1}, False),
        ({"attribute": "t", "op": "in", "values": ["1", 2]}, {"t": 2.0}, True),
        ({"attribute": "t", "op": "not_in", "values": ["a", "b"]}, {"t": "c"}, True),
        ({"attribute": "t", "op": "not_in", "values": ["a", "b"]}, {"t": "a"}, False),
        # the wrong type is no match, even for not_in; so is a missing attribute
        ({"attribute": "t", "op": "not_in", "values": ["a", "b"]}, {"t": 3}, False),
        ({"attribute": "t", "op": "not_in", "values": ["a", "b"]}, {}, False),
        ({"attribute": "t", "op": "not_in", "values": ["a", "b"]}, {"t": ["c"]}, False),
        ({"attribute": "n", "op": "lt", "value": 10}, {"n": 9.5}, True),
        ({"attribute": "n", "op": "lt", "value": 10}, {"n": 10}, False),
        ({"attribute": "n", "op": "lte", "value": 10}, {"n": 10}, True),
        ({"attribute": "n", "op": "gt", "value": 10}, {"n": 11}, True),
        ({"attribute": "n", "op": "gte", "value": 10}, {"n": 9}, False),
        ({"attribute": "n", "op": "gte", "value": 10}, {"n": "11"}, False),
        ({"attribute": "n", "op": "gte", "value": 0}, {"n": True}, False),
        ({"attribute": "n", "op": "lt", "value": 10}, {"n": float("nan")}, False),
        ({"attribute": "v", "op": "semver_gte", "value": "2.4.0"}, {"v": "2.10.0"}, True),
        ({"attribute": "v", "op": "semver_gte", "value": "2.4.0"}, {"v": "2.4.0-rc.1"}, False),
        ({"attribute": "v", "op": "semver_lt", "value": "2.4.0"}, {"v": "2.4.0-rc.1"}, True),
        ({"attribute": "v", "op": "semver_eq", "value": "2.4.0"}, {"v": "2.4.0+build.7"}, True),
        ({"attribute": "v", "op": "semver_lt", "value": "1.0.0-beta"}, {"v": "1.0.0-alpha.1"}, True),
        ({"attribute": "v", "op": "semver_lt", "value": "1.0.0-alpha.beta"}, {"v": "1.0.0-alpha.1"}, True),
        ({"attribute": "v", "op": "semver_lt", "value": "1.0.0-rc.11"}, {"v": "1.0.0-rc.2"}, True),
        ({"attribute": "v", "op": "semver_gt", "value": "1.0.0"}, {"v": "v2.0.0"}, False),
        ({"attribute": "v", "op": "semver_gt", "value": "1.0.0"}, {"v": "2.0"}, False),
        ({"attribute": "v", "op": "semver_gt", "value": "1.0.0"}, {"v": 2}, False),
        ({"attribute": "v", "op": "semver_lte", "value": "1.0.0"}, {"v": "01.0.0"}, False),
        ({"attribute": "e", "op": "regex", "value": r"@acme\.com$"}, {"e": "x@acme.com"}, True),
        ({"attribute": "e", "op": "regex", "value": r"@acme\.com$"}, {"e": "x@acme.co"}, False),
        ({"attribute": "e", "op": "regex", "value": "^用户"}, {"e": "用户-1"}, True),
        ({"attribute": "e", "op": "regex", "value": "a"}, {"e": 1}, False),
        ({"attribute": "e", "op": "regex", "value": "a"}, {"e": "a" * (MAX_MATCH_INPUT + 1)}, False),
        ({"attribute": "e", "op": "regex", "value": "a"}, {"e": "a" * MAX_MATCH_INPUT}, True),
        ({"attribute": "x", "op": "exists"}, {"x": False}, True),
        ({"attribute": "x", "op": "exists"}, {"x": None}, False),
        ({"attribute": "x", "op": "exists"}, {}, False),
    ],
)  # fmt: skip
def test_each_operator(
    condition: dict[str, Any], attributes: dict[str, Any], expected: bool
) -> None:
    assert holds(condition, attributes) is expected


def test_a_pathological_pattern_is_matched_by_re2() -> None:
    """The patterns that make a backtracking engine take seconds (Python's re: ~0.8 s for
    a*a*a*b on 256 characters, minutes for (a+)+b on 40) answer like any other; and what only
    a backtracking engine could do (backreferences, lookaround) is refused at save."""
    for pattern in ("(a+)+b", "a*a*a*a*a*b", "(.*)(.*)(.*)(.*)b", "(a|aa)*c"):
        assert (
            holds({"attribute": "s", "op": "regex", "value": pattern}, {"s": "a" * 1000}) is False
        )
    for pattern in (r"(a)\1", "(?=a)", "(?<=a)b", "(?!a)"):
        with pytest.raises(targeting.RuleError, match="does not compile"):
            targeting.compile_rules(
                [{"when": [{"attribute": "s", "op": "regex", "value": pattern}], "then": "exclude"}]
            )


def test_rules_are_read_in_order_and_an_empty_when_holds_for_everyone() -> None:
    rules = targeting.compile_rules(
        [
            {"name": "qa", "when": [{"attribute": "t", "op": "equals", "value": "qa"}], "then": "include"},
            {"name": "staff", "when": [{"attribute": "internal", "op": "equals", "value": True}], "then": "cohort", "cohort": "internal"},
            {"name": "the rest", "when": [], "then": "exclude"},
        ]
    )  # fmt: skip
    assert targeting.match(rules, {"t": "qa", "internal": True}).name == "qa"
    assert targeting.match(rules, {"internal": True}).cohort == "internal"
    assert targeting.match(rules, {}).name == "the rest"
    several = targeting.compile_rules(
        [{"when": [{"attribute": "a", "op": "exists"}, {"attribute": "b", "op": "gt", "value": 1}], "then": "exclude"}]
    )  # fmt: skip
    assert targeting.match(several, {"a": 1, "b": 2}) is not None
    assert targeting.match(several, {"a": 1, "b": 1}) is None


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"name": "tenants", "when": [{"attribute": "t", "op": "like", "value": "a"}], "then": "exclude"}],
         "rule 1 (\"tenants\"): condition 1: unknown operator 'like'"),
        ([{"when": [], "then": "include"}, {"name": "bad re", "when": [{"attribute": "t", "op": "regex", "value": "(a"}], "then": "exclude"}],
         'rule 2 ("bad re"): condition 1: the pattern does not compile'),
        ([{"name": "long", "when": [{"attribute": "t", "op": "regex", "value": "a" * 257}], "then": "exclude"}],
         'rule 1 ("long"): condition 1: the pattern is 257 characters, over 256'),
        ([{"name": "big", "when": [{"attribute": "t", "op": "in", "values": list(range(MAX_RULE_VALUES + 1))}], "then": "exclude"}],
         f'rule 1 ("big"): condition 1: {MAX_RULE_VALUES + 1} values, over the cap of {MAX_RULE_VALUES}'),
        ([{"when": [], "then": "exclude"}] * (MAX_RULES + 1), f"{MAX_RULES + 1} rules, over the cap of {MAX_RULES}"),
        ([{"when": [], "then": "drop"}], "rule 1: 'then' must be one of cohort, exclude, include"),
        ([{"when": [], "then": "cohort"}], "rule 1: a cohort rule names its cohort"),
        ([{"when": [], "then": "cohort", "cohort": "Beta Users"}], "rule 1: a cohort rule names its cohort"),
        ([{"when": [], "then": "exclude", "cohort": "beta"}], "rule 1: only a cohort rule names a cohort"),
        ([{"when": [{"attribute": "n", "op": "gt", "value": "5"}], "then": "exclude"}], "rule 1: condition 1: gt compares with a finite number"),
        ([{"when": [{"attribute": "v", "op": "semver_gt", "value": "2"}], "then": "exclude"}], "rule 1: condition 1: semver_gt compares with a semantic version"),
        ([{"when": [{"attribute": "t", "op": "in", "values": [["a"]]}], "then": "exclude"}], "rule 1: condition 1: in lists strings, numbers or booleans"),
        ([{"when": [{"attribute": "t", "op": "in", "values": []}], "then": "exclude"}], "rule 1: condition 1: in needs 'values', a non-empty list"),
        ([{"when": [{"attribute": "", "op": "exists"}], "then": "exclude"}], "rule 1: condition 1: 'attribute' must be a name"),
        ([{"when": [{"attribute": "t", "op": "equals"}], "then": "exclude"}], "rule 1: condition 1: equals needs a 'value'"),
        ([{"when": [{"attribute": "t", "op": "equals", "value": {"a": 1}}], "then": "exclude"}], "rule 1: condition 1: equals compares a string, number or boolean"),
        ([{"when": [{"attribute": "t", "op": "exists"}] * 17, "then": "exclude"}], "rule 1: 17 conditions, over the cap of 16"),
        # 1e400 written as digits: a Python int past a double (OverflowError before, a 500 in the admin)
        ([{"when": [{"attribute": "n", "op": "gt", "value": 10**400}], "then": "exclude"}], "rule 1: condition 1: gt compares with a finite number"),
        ([{"when": [{"attribute": "n", "op": "equals", "value": 10**400}], "then": "exclude"}], "rule 1: condition 1: equals compares a string, number or boolean"),
        ([{"when": [{"attribute": "n", "op": "in", "values": [1, 10**400]}], "then": "exclude"}], "rule 1: condition 1: in lists strings, numbers or booleans"),
    ],
)  # fmt: skip
def test_a_rule_that_cannot_be_evaluated_is_refused_by_name(rules: list[Any], message: str) -> None:
    with pytest.raises(targeting.RuleError) as refused:
        targeting.compile_rules(rules)
    assert refused.value.message.startswith(message)
    assert targeting.rule_problems(rules)[0].message == refused.value.message


def test_rule_problems_names_every_bad_rule() -> None:
    rules = [
        {"name": "a", "when": [{"attribute": "t", "op": "nope"}], "then": "exclude"},
        {"name": "ok", "when": [], "then": "include"},
        {"name": "c", "when": [], "then": "nope"},
    ]
    problems = targeting.rule_problems(rules)
    assert [p.index for p in problems] == [0, 2]
    assert [p.field for p in problems] == ["when.0.op", "then"]


# --- the decision ----------------------------------------------------------------------------

RULES = [
    {"name": "regulated", "when": [{"attribute": "tenant", "op": "in", "values": ["bank"]}], "then": "exclude"},
    {"name": "staff", "when": [{"attribute": "internal", "op": "equals", "value": True}], "then": "cohort", "cohort": "internal"},
    {"name": "beta", "when": [{"attribute": "tier", "op": "equals", "value": "beta"}], "then": "cohort", "cohort": "beta"},
]  # fmt: skip


def test_decide_excludes_puts_in_cohorts_and_overrides() -> None:
    p = plan(
        rules=RULES,
        weight_bp=0,
        shadow_bp=10_000,
        cohorts={"internal": 10_000},
        overrides={"qa": {"arm": "candidate", "expires": NOW + 60}},
    )
    excluded = routing.decide(p, "u", decision_id="d", attributes={"tenant": "bank"}, now=NOW)
    assert (excluded.arm, excluded.reason, excluded.shadow, excluded.cohort) == (
        "control",
        "EXCLUDED",
        False,
        None,
    )
    staff = routing.decide(p, "u", decision_id="d", attributes={"internal": True}, now=NOW)
    assert (staff.arm, staff.reason, staff.cohort) == ("candidate", "SPLIT", "internal")
    # a cohort without a weight of its own is split at weight_bp (0 here), and shadowed as usual
    beta = routing.decide(p, "u", decision_id="d", attributes={"tier": "beta"}, now=NOW)
    assert (beta.arm, beta.reason, beta.cohort, beta.shadow) == ("control", "SPLIT", "beta", True)
    qa = routing.decide(p, "qa", decision_id="d", attributes={"tenant": "bank"}, now=NOW)
    assert (qa.arm, qa.reason, qa.shadow) == ("candidate", "OVERRIDE", False)
    assert qa.to_dict()["reason"] == "OVERRIDE" and staff.to_dict()["cohort"] == "internal"


def test_an_override_expires_and_needs_a_clock() -> None:
    p = plan(overrides={"qa": {"arm": "candidate", "expires": NOW}})
    assert routing.decide(p, "qa", decision_id="d", now=NOW - 1).reason == "OVERRIDE"
    assert routing.decide(p, "qa", decision_id="d", now=NOW).reason == "SPLIT"
    assert routing.decide(p, "qa", decision_id="d").reason == "SPLIT"


def test_overrides_apply_only_while_running_and_exclusions_outlive_completion() -> None:
    overrides = {"qa": {"arm": "candidate", "expires": NOW + 60}}
    for status, reason in (
        ("paused", "DISABLED"),
        ("rolled_back", "DISABLED"),
        ("completed", "STATIC"),
    ):
        p = plan(status=status, rules=RULES, overrides=overrides)
        assert routing.decide(p, "qa", decision_id="d", now=NOW).reason == reason
    done = plan(status="completed", rules=RULES)
    bank = routing.decide(done, "u", decision_id="d", attributes={"tenant": "bank"}, now=NOW)
    assert (bank.arm, bank.reason) == ("control", "EXCLUDED")
    assert (
        routing.decide(done, "u", decision_id="d", attributes={"internal": True}).arm == "candidate"
    )


def test_attributes_the_sdk_cannot_use_match_nothing() -> None:
    p = plan(rules=RULES, cohorts={"internal": 10_000})
    too_many = {f"a{i}": i for i in range(MAX_ATTRIBUTES)} | {"internal": True}
    assert routing.decide(p, "u", decision_id="d", attributes=too_many).cohort is None
    assert (
        routing.decide(p, "u", decision_id="d", attributes=dict(list(too_many.items())[1:])).cohort
        == "internal"
    )
    for junk in ("internal", ["internal"], 42, object()):
        d = routing.decide(p, "u", decision_id="d", attributes=junk)  # type: ignore[arg-type]
        assert (d.arm, d.reason) == ("control", "SPLIT")


@pytest.mark.parametrize(
    "extra",
    [
        {"rules": [{"when": [{"attribute": "t", "op": "fuzzy", "value": "x"}], "then": "exclude"}]},
        {"rules": [{"when": [], "then": "quarantine"}]},
        {"rules": "exclude everyone"},
        {"cohorts": {"beta": 10_001}},
        {"cohorts": {"Beta": 10}},
        {"cohorts": [1]},
        {"overrides": {"u": {"arm": "shadow", "expires": NOW}}},
        {"overrides": {"u": {"arm": "candidate"}}},
    ],
)
def test_targeting_this_sdk_cannot_read_serves_control_with_reason_error(
    extra: dict[str, Any],
) -> None:
    p = plan(weight_bp=10_000, **extra)
    assert p.unreadable
    d = routing.decide(p, "u", decision_id="d", attributes={"t": "x"}, now=NOW)
    assert (d.arm, d.reason, d.shadow) == ("control", "ERROR", False)
    # the snapshot around it is kept: the other plans stay served
    snapshot = routing.parse_snapshot({"plans": [p_entry("other"), {**p_entry("bad"), **extra}]})
    assert snapshot.plans["other"].unreadable == "" and snapshot.plans["bad"].unreadable


def p_entry(key: str) -> dict[str, Any]:
    return {
        "key": key,
        "status": "running",
        "salt": "s",
        "weight_bp": 10_000,
        "control": ARM,
        "candidate": ARM,
    }


def test_a_plan_without_targeting_is_not_targeted() -> None:
    assert plan().targeted is False
    assert plan(rules=[], cohorts={}, overrides={}).targeted is False
    assert plan(rules=RULES).targeted is True
