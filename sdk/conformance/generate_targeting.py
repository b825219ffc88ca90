"""Run once to write targeting-v1.json; the tests never regenerate it.

    .venv/bin/python sdk/conformance/generate_targeting.py   # by hand, once; then commit the file

The file freezes targeting (docs/contracts.md, "Targeting"): attributes, rules, cohorts and
overrides over the bucketing that routing-v1.json pins (that file's vectors are unchanged).
A release that changes any vector moves units between arms mid-migration: regenerating is a
breaking change, made on purpose or never.

Layout: ``plans`` (snapshot entries with ``rules``, ``cohorts``, ``overrides``) and
``vectors``, each ``plan`` (a key of ``plans``), ``unit``, ``attributes``, ``now`` (the
clock overrides expire against), ``bucket``, and ``expected`` (``arm``, ``shadow``,
``reason``, ``cohort``). Two flags: ``exact_clock`` (an override expiring at ``now`` exactly:
only a caller that passes ``now`` can check it) and ``server_refuses`` (attributes the server
answers with 400 and the SDK evaluates as matching nothing).
"""

import json
import random
from pathlib import Path
from typing import Any

from turnout import routing

OUT = Path(__file__).with_name("targeting-v1.json")
NOW = 2_000_000_000.0  # 2033: every override below has expired long before or lasts long after
PAST, FUTURE = 1_000_000_000.0, 4_000_000_000.0
ARM = {"provider": "openai", "kind": "openai", "model": "gpt-4o-2024-08-06", "params": {}}
CANDIDATE = {
    **ARM,
    "provider": "anthropic",
    "kind": "anthropic",
    "model": "claude-sonnet-4-20250514",
}

TENANTS = ["acme", "bank-a", "bank-b", "gov", "beta-co", "shop", "ünï-用户", ""]
VERSIONS = [
    "1.9.9",
    "2.0.0",
    "2.0.0-rc.1",
    "2.0.0-alpha",
    "2.10.1",
    "10.0.0",
    "2.0",
    "v2.1.0",
    "2.1.0+build.5",
]
EMAILS = [
    "a@acme.com",
    "b@beta.example",
    "c@beta.example.org",
    "d@BETA.EXAMPLE",
    "no-at-sign",
    "x@shop.io",
]

RULE_SETS: dict[str, list[dict[str, Any]]] = {
    "regulated": [
        {"name": "regulated", "when": [{"attribute": "tenant", "op": "in", "values": ["bank-a", "bank-b", "gov"]}], "then": "exclude"},
    ],
    "cohort-first": [
        {"name": "regulated", "when": [{"attribute": "tenant", "op": "in", "values": ["bank-a", "gov"]}], "then": "exclude"},
        {"name": "qa tenant", "when": [{"attribute": "tenant", "op": "equals", "value": "shop"}], "then": "include"},
        {"name": "staff", "when": [{"attribute": "internal", "op": "equals", "value": True}], "then": "cohort", "cohort": "internal"},
        {"name": "beta", "when": [{"attribute": "tier", "op": "equals", "value": "beta"}], "then": "cohort", "cohort": "beta"},
    ],
    "operators": [
        {"name": "old app", "when": [{"attribute": "app", "op": "semver_lt", "value": "2.0.0"}], "then": "exclude"},
        {"name": "beta mail", "when": [{"attribute": "email", "op": "regex", "value": "@beta\\.example$"}], "then": "cohort", "cohort": "beta"},
        {"name": "big", "when": [{"attribute": "seats", "op": "gte", "value": 500}], "then": "cohort", "cohort": "enterprise"},
        {"name": "small", "when": [{"attribute": "seats", "op": "lt", "value": 5}, {"attribute": "plan", "op": "not_in", "values": ["pro", "team"]}], "then": "exclude"},
        {"name": "new app", "when": [{"attribute": "app", "op": "semver_gte", "value": "2.10.0"}], "then": "cohort", "cohort": "early"},
        {"name": "exact app", "when": [{"attribute": "app", "op": "semver_eq", "value": "2.0.0"}], "then": "include"},
        {"name": "lang", "when": [{"attribute": "lang", "op": "in", "values": ["ja", "ko"]}, {"attribute": "score", "op": "lte", "value": 0.5}], "then": "cohort", "cohort": "cjk"},
        {"name": "flagged", "when": [{"attribute": "flagged", "op": "exists"}], "then": "exclude"},
        {"name": "ratio", "when": [{"attribute": "score", "op": "gt", "value": 0.9}], "then": "cohort", "cohort": "power"},
        {"name": "app ceiling", "when": [{"attribute": "app", "op": "semver_lte", "value": "2.0.0-rc.1"}, {"attribute": "tier", "op": "exists"}], "then": "exclude"},
        {"name": "app floor", "when": [{"attribute": "app", "op": "semver_gt", "value": "9.9.9"}], "then": "exclude"},
    ],
    "allowlist": [
        {"name": "pilot tenants", "when": [{"attribute": "tenant", "op": "in", "values": ["acme", "beta-co", 7, True]}], "then": "include"},
        {"name": "everyone else", "when": [], "then": "exclude"},
    ],
    "unreadable": [
        {"name": "future operator", "when": [{"attribute": "tenant", "op": "fuzzy_match", "value": "acme"}], "then": "exclude"},
    ],
}  # fmt: skip
COHORT_WEIGHTS = [
    {},
    {"internal": 10_000},
    {"internal": 10_000, "beta": 5_000},
    {"beta": 2_500, "enterprise": 0, "early": 10_000, "cjk": 5_000, "power": 100},
]


def attributes(rng: random.Random) -> dict[str, Any]:
    pool: dict[str, list[Any]] = {
        "tenant": TENANTS + [7, True, None],
        "internal": [True, False, "true", 1, None],
        "tier": ["beta", "pro", "free", "BETA", 3],
        "app": VERSIONS + [2, None],
        "email": EMAILS + [42],
        "seats": [0, 4, 5, 499, 500, 500.0, 10_000, "600", True, -1],
        "plan": ["pro", "team", "free", 5],
        "lang": ["ja", "ko", "en", "JA"],
        "score": [0.1, 0.5, 0.50001, 0.95, 1, "0.2", False],
        "flagged": [False, 0, "", None],
    }
    chosen = {name: rng.choice(values) for name, values in pool.items() if rng.random() < 0.4}
    # Most units send the attributes the rules are about, as applications do.
    for name, odds in (("internal", 0.5), ("tier", 0.5), ("email", 0.4), ("app", 0.5)):
        if name not in chosen and rng.random() < odds:
            chosen[name] = pool[name][0] if name == "internal" else rng.choice(pool[name])
    return chosen


def entry(key: str, rules: str, status: str, weight: int, shadow: int, cohorts: dict[str, int], overrides: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    data: dict[str, Any] = {
        "key": key, "version": 3, "run": 1, "status": status,
        "phase": "rollout" if status == "running" else None, "phase_index": 0, "step_index": 0,
        "salt": f"salt-{key}", "weight_bp": weight, "shadow_bp": shadow,
        "control": ARM, "candidate": CANDIDATE, "rules": RULE_SETS[rules],
    }  # fmt: skip
    if cohorts:
        data["cohorts"] = cohorts
    if overrides:
        data["overrides"] = overrides
    return data


def main() -> None:
    rng = random.Random(20261203)
    plans: list[dict[str, Any]] = []
    overrides = {
        "qa-candidate": {"arm": "candidate", "expires": FUTURE},
        "qa-control": {"arm": "control", "expires": FUTURE},
        "qa-expired": {"arm": "candidate", "expires": PAST},
        "qa-exact": {"arm": "candidate", "expires": NOW},
    }
    index = 0
    # How many vectors per plan of each rule set: most where most can go differently.
    per_plan = {
        "regulated": 10,
        "cohort-first": 24,
        "operators": 30,
        "allowlist": 12,
        "unreadable": 4,
    }
    for rules in RULE_SETS:
        for status in ("running", "completed", "paused"):
            if status == "paused" and rules != "regulated":
                continue  # every status but running and completed serves control the same way
            for weight, shadow in ((0, 5_000), (500, 0), (2_500, 2_000), (10_000, 0)):
                if status != "running" and (weight, shadow) != (2_500, 2_000):
                    continue
                cohorts = COHORT_WEIGHTS[index % len(COHORT_WEIGHTS)] if status == "running" else {}
                if rules in ("cohort-first", "operators") and status == "running":
                    cohorts = COHORT_WEIGHTS[2 + index % 2] | {"enterprise": 5_000}
                plans.append(entry(f"t-{index}", rules, status, weight, shadow, cohorts, overrides))
                index += 1
    units = [
        "",
        "user-1",
        "42",
        "ünïcødé-用户",
        "qa-candidate",
        "qa-control",
        "qa-expired",
        "qa-exact",
    ]
    units += [f"user-{rng.randrange(10**9)}" for _ in range(24)]
    vectors = []
    for plan in plans:
        parsed = routing.parse_plan(plan)
        rules = next(name for name, rs in RULE_SETS.items() if rs is plan["rules"])
        for _ in range(per_plan[rules]):
            unit = rng.choice(units)
            attrs = attributes(rng)
            vectors.append(vector(parsed, plan, unit, attrs, exact=unit == "qa-exact"))
    # Attributes the server refuses (400) and the SDK reads as none, or as not matching.
    cohort_first = next(p for p in plans if p["rules"] is RULE_SETS["cohort-first"] and p["status"] == "running" and p.get("cohorts"))  # fmt: skip
    parsed = routing.parse_plan(cohort_first)
    refused = [
        {"internal": True, "tenant": {"id": "bank-a"}},
        {"internal": True, "tags": ["a", "b"]},
        {"internal": True, **{f"a{i}": i for i in range(32)}},
        {"internal": True, "k" * 65: 1},
        {"tenant": "gov", "": 1},
    ]
    for attrs in refused:
        for unit in ("user-1", "user-2"):
            vectors.append(vector(parsed, cohort_first, unit, attrs, refused=True))
    OUT.write_text(
        json.dumps({"version": 1, "now": NOW, "plans": plans, "vectors": vectors}, indent=1, ensure_ascii=False)
        + "\n"
    )  # fmt: skip
    print(f"wrote {len(plans)} plans and {len(vectors)} vectors to {OUT}")


def vector(
    parsed: routing.PlanSnapshot,
    plan: dict[str, Any],
    unit: str,
    attrs: dict[str, Any],
    *,
    exact: bool = False,
    refused: bool = False,
) -> dict[str, Any]:
    d = routing.decide(parsed, unit, decision_id="v", attributes=attrs, now=NOW)
    data: dict[str, Any] = {
        "plan": plan["key"],
        "unit": unit,
        "attributes": attrs,
        "bucket": routing.bucket(plan["salt"], unit),
        "expected": {"arm": d.arm, "shadow": d.shadow, "reason": d.reason, "cohort": d.cohort},
    }
    if exact:
        data["exact_clock"] = True
    if refused:
        data["server_refuses"] = True
    return data


if __name__ == "__main__":
    main()
