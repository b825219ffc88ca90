"""decide() per call against UnleashClient's get_variant, in the same process and run.

Both evaluate locally: a 10 % gradual rollout with two variants, sticky on the user id.
Prints median and p99 per call and the ratio.

Then the same with attributes and five targeting rules (issue 16): Turnout's plan excludes
regulated tenants, old app versions and large accounts and puts staff and beta users in
cohorts; Unleash's feature says the same with strategy constraints on the context's
properties, two ways: one strategy carrying the five constraints (the least work Unleash can
do for them), and the equivalent of Turnout's rules (a strategy per cohort and one for the
rest, each repeating the exclusions, as Unleash has no ordered exclusion). Each library gets
the same attributes per call, in its own shape (Unleash's properties are strings).
Run: .venv/bin/python bench/bench_decide.py [--smoke]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import turnout
from _stack import SMOKE_HELP  # bench/ is on the path: this script's directory
from turnout import routing

CALLS_PER_SAMPLE = 200
SAMPLES = 2000
UNITS = [f"user-{i}" for i in range(CALLS_PER_SAMPLE)]


def measure(call: Callable[[str], object], samples: int = SAMPLES) -> tuple[float, float]:
    """Median and p99 in microseconds per call, over ``samples`` batches of CALLS_PER_SAMPLE
    calls."""
    for unit in UNITS:  # warm-up
        call(unit)
    per_call = []
    for _ in range(samples):
        start = time.perf_counter_ns()
        for unit in UNITS:
            call(unit)
        per_call.append((time.perf_counter_ns() - start) / CALLS_PER_SAMPLE / 1000)
    per_call.sort()
    return statistics.median(per_call), per_call[int(len(per_call) * 0.99)]


def turnout_client() -> turnout.Client:
    arm = {
        "provider": "openai",
        "kind": "openai",
        "model": "gpt-4o",
        "params": {"temperature": 0.2},
        "prompt": {"mode": "none", "text": ""},
    }
    snapshot = {
        "schema": 1,
        "version": "bench",
        "plans": [
            {
                "key": "support-chat",
                "version": 1,
                "run": 1,
                "status": "running",
                "phase": "rollout",
                "salt": "s1",
                "weight_bp": 1000,
                "shadow_bp": 0,
                "control": arm,
                "candidate": {**arm, "model": "claude-sonnet-4"},
            }
        ],
    }
    return client_on(snapshot)


def client_on(snapshot: dict[str, object]) -> turnout.Client:
    """A client on ``snapshot``. No server: it comes from a last-known-good file, as after a
    restart with the control plane down (the same path as a fetched one: parsed once, then
    swapped in)."""
    lkg = Path(tempfile.mkdtemp()) / "turnout-snapshot.json"
    lkg.write_text(json.dumps(snapshot))
    client = turnout.Client(
        "http://127.0.0.1:9",
        "tk_bench_x",
        start_wait=1,
        stream=False,
        poll_interval=3600,
        lkg_path=lkg,
    )
    assert client.snapshot_version == snapshot["version"]
    return client


# Five rules and the attributes each call carries (users cycle through a few kinds).
RULES = [
    {"name": "regulated", "when": [{"attribute": "tenant", "op": "in", "values": ["bank-a", "bank-b", "gov"]}], "then": "exclude"},
    {"name": "old app", "when": [{"attribute": "app_version", "op": "semver_lt", "value": "2.0.0"}], "then": "exclude"},
    {"name": "large", "when": [{"attribute": "seats", "op": "gte", "value": 500}], "then": "exclude"},
    {"name": "staff", "when": [{"attribute": "internal", "op": "equals", "value": True}], "then": "cohort", "cohort": "internal"},
    {"name": "beta", "when": [{"attribute": "tier", "op": "equals", "value": "beta"}], "then": "cohort", "cohort": "beta"},
]  # fmt: skip
KINDS = [
    {"tenant": "acme", "tier": "pro", "lang": "ja", "internal": False, "app_version": "2.3.1", "seats": 20},
    {"tenant": "shop", "tier": "free", "lang": "en", "internal": False, "app_version": "2.10.0", "seats": 3},
    {"tenant": "acme", "tier": "beta", "lang": "de", "internal": False, "app_version": "2.4.0", "seats": 40},
    {"tenant": "turnout", "tier": "pro", "lang": "en", "internal": True, "app_version": "3.0.0", "seats": 12},
]  # fmt: skip
ATTRIBUTES = [KINDS[i % len(KINDS)] for i in range(CALLS_PER_SAMPLE)]


def unleash_properties(attributes: dict[str, object]) -> dict[str, str]:
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in attributes.items()}


def _constraint(
    name: str, operator: str, value: object, inverted: bool = False
) -> dict[str, object]:
    key = "values" if isinstance(value, list) else "value"
    return {
        "contextName": name,
        "operator": operator,
        key: value,
        "inverted": inverted,
        "caseInsensitive": False,
    }


EXCLUSIONS = [
    _constraint("tenant", "NOT_IN", ["bank-a", "bank-b", "gov"]),
    _constraint("app_version", "SEMVER_LT", "2.0.0", inverted=True),
    _constraint("seats", "NUM_LT", "500"),
]


def _rollout(percent: int, constraints: list[dict[str, object]]) -> dict[str, object]:
    return {
        "name": "flexibleRollout",
        "parameters": {"rollout": str(percent), "stickiness": "userId", "groupId": "support-chat"},
        "constraints": constraints,
        "variants": [
            {
                "name": "claude-sonnet-4",
                "weight": 1000,
                "stickiness": "userId",
                "weightType": "variable",
            },
        ],
    }


UNLEASH_TARGETED = {
    # One strategy, five constraints: the least Unleash evaluates for them.
    "five-constraints": [
        _rollout(10, [*EXCLUSIONS, _constraint("internal", "IN", ["false"]), _constraint("tier", "IN", ["pro", "free", "beta"])]),
    ],
    # Turnout's rules as Unleash says them: a strategy per cohort, then the rest.
    "rules-equivalent": [
        _rollout(100, [*EXCLUSIONS, _constraint("internal", "IN", ["true"])]),
        _rollout(50, [*EXCLUSIONS, _constraint("tier", "IN", ["beta"])]),
        _rollout(10, EXCLUSIONS),
    ],
}  # fmt: skip


def turnout_targeted_client() -> turnout.Client:
    arm = {"provider": "openai", "kind": "openai", "model": "gpt-4o", "params": {}}
    plan = {
        "key": "support-chat", "version": 1, "run": 1, "status": "running", "phase": "rollout",
        "salt": "s1", "weight_bp": 1000, "shadow_bp": 0, "control": arm,
        "candidate": {**arm, "model": "claude-sonnet-4"},
        "rules": RULES, "cohorts": {"internal": 10_000, "beta": 5_000},
    }  # fmt: skip
    return client_on({"schema": 1, "version": "bench-rules", "plans": [plan]})


def measure_pairs(
    call: Callable[[str, object], object], extra: list[object], samples: int
) -> tuple[float, float]:
    """As :func:`measure`, each call given the unit and its own attributes."""
    pairs = list(zip(UNITS, extra, strict=True))
    for unit, attributes in pairs:
        call(unit, attributes)
    per_call = []
    for _ in range(samples):
        start = time.perf_counter_ns()
        for unit, attributes in pairs:
            call(unit, attributes)
        per_call.append((time.perf_counter_ns() - start) / CALLS_PER_SAMPLE / 1000)
    per_call.sort()
    return statistics.median(per_call), per_call[int(len(per_call) * 0.99)]


def unleash_client(strategies: list[dict[str, object]] | None = None) -> object:
    from UnleashClient import UnleashClient
    from UnleashClient.cache import FileCache

    features = {
        "version": 1,
        "features": [
            {
                "name": "support-chat",
                "type": "release",
                "enabled": True,
                "strategies": strategies
                or [
                    {
                        "name": "flexibleRollout",
                        "parameters": {
                            "rollout": "10",
                            "stickiness": "userId",
                            "groupId": "support-chat",
                        },
                        "variants": [
                            {
                                "name": "claude-sonnet-4",
                                "weight": 500,
                                "stickiness": "userId",
                                "weightType": "variable",
                            },
                            {
                                "name": "claude-sonnet-4-b",
                                "weight": 500,
                                "stickiness": "userId",
                                "weightType": "variable",
                            },
                        ],
                    }
                ],
            }
        ],
    }
    cache = FileCache("turnout-bench", directory=tempfile.mkdtemp())
    cache.bootstrap_from_dict(features)
    client = UnleashClient(
        "http://127.0.0.1:9/api",
        "turnout-bench",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
    )
    client.initialize_client(fetch_toggles=False)
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    samples, units = (20, 2000) if parser.parse_args().smoke else (SAMPLES, 20_000)
    logging.disable(logging.WARNING)
    ours = turnout_client()
    theirs = unleash_client()
    ours_median, ours_p99 = measure(lambda unit: ours.decide("support-chat", unit), samples)
    bare_median, _ = measure(lambda unit: routing.bucket("s1", unit), samples)
    theirs_median, theirs_p99 = measure(
        lambda unit: theirs.get_variant("support-chat", {"userId": unit}), samples
    )
    share = (
        sum(
            ours.decide("support-chat", u).arm == "candidate"
            for u in (f"u{i}" for i in range(units))
        )
        / units
    )
    print(
        f"turnout decide():           median {ours_median:.2f} us   p99 {ours_p99:.2f} us   (candidate share {share:.3f})"
    )
    print(f"bare murmur3 bucket:        median {bare_median:.2f} us")
    print(f"UnleashClient get_variant:  median {theirs_median:.2f} us   p99 {theirs_p99:.2f} us")
    print(f"ratio (Unleash / turnout), median: {theirs_median / ours_median:.1f}x")
    ours.close()
    targeted(samples)


def targeted(samples: int) -> None:
    ours = turnout_targeted_client()
    decisions = [
        ours.decide("support-chat", u, attributes=a) for u, a in zip(UNITS, ATTRIBUTES, strict=True)
    ]
    reasons = {(d.reason, d.cohort) for d in decisions}
    assert ("SPLIT", "internal") in reasons and ("SPLIT", "beta") in reasons, reasons
    ours_median, ours_p99 = measure_pairs(
        lambda unit, attributes: ours.decide("support-chat", unit, attributes=attributes),  # type: ignore[arg-type]
        ATTRIBUTES, samples,
    )  # fmt: skip
    print(
        f"turnout decide(), attributes + 5 rules: median {ours_median:.2f} us   p99 {ours_p99:.2f} us"
    )
    properties = [unleash_properties(a) for a in ATTRIBUTES]
    for name, strategies in UNLEASH_TARGETED.items():
        theirs = unleash_client(strategies)
        medians = measure_pairs(
            lambda unit, props, c=theirs: c.get_variant("support-chat", {"userId": unit, "properties": props}),  # type: ignore[attr-defined]
            properties, samples,
        )  # fmt: skip
        print(
            f"UnleashClient get_variant, {name}: median {medians[0]:.2f} us   p99 {medians[1]:.2f} us"
            f"   ratio {medians[0] / ours_median:.1f}x"
        )
        theirs.destroy()  # type: ignore[attr-defined]
    ours.close()


if __name__ == "__main__":
    main()
