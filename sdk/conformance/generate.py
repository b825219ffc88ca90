"""Run once to write routing-v1.json; the tests never regenerate it.

    .venv/bin/python sdk/conformance/generate.py   # by hand, once; then commit the file

The file freezes the routing algorithm: a release that changes any vector moves users
between arms mid-migration. Regenerating it is a breaking change, made on purpose or never.
The extra sets below were appended after the first freeze with their own random stream, so
that the first 248 vectors came out byte for byte as before (checked when they were added).

Each vector: ``plan`` (one snapshot entry, or null for a plan the snapshot does not hold),
``unit``, ``bucket`` and ``shadow_bucket`` (null without a plan), and ``expected`` with the
decision's ``arm``, ``shadow`` and ``reason``.
"""

import json
import random
from pathlib import Path
from typing import Any

from turnout import routing

OUT = Path(__file__).with_name("routing-v1.json")
ARM = {
    "provider": "openai",
    "kind": "openai",
    "base_url": "",
    "api_key_env": "OPENAI_API_KEY",
    "model": "gpt-4o-2024-08-06",
    "params": {"temperature": 0.2},
    "prompt": {"mode": "none", "text": ""},
}
CANDIDATE = {
    **ARM,
    "provider": "anthropic",
    "kind": "anthropic",
    "api_key_env": "ANTHROPIC_API_KEY",
    "model": "claude-sonnet-4-20250514",
    "prompt": {"mode": "suffix", "text": "Be brief."},
}


def entry(
    index: int, status: str, phase: str | None, salt: str, weight_bp: int, shadow_bp: int
) -> dict[str, Any]:
    return {
        "key": f"plan-{index}",
        "version": index + 1,
        "run": 1,
        "status": status,
        "phase": phase,
        "phase_index": 0,
        "step_index": 0,
        "salt": salt,
        "weight_bp": weight_bp,
        "shadow_bp": shadow_bp,
        "control": ARM,
        "candidate": CANDIDATE,
    }


def vector(plan: dict[str, Any] | None, unit: str) -> dict[str, Any]:
    parsed = routing.parse_plan(plan) if plan else None
    d = routing.decide(parsed, unit, decision_id="v")
    return {
        "plan": plan,
        "unit": unit,
        "bucket": routing.bucket(plan["salt"], unit) if plan else None,
        "shadow_bucket": routing.shadow_bucket(plan["salt"], unit) if plan else None,
        "expected": {"arm": d.arm, "shadow": d.shadow, "reason": d.reason},
    }


def extra_vectors(first_index: int) -> list[dict[str, Any]]:
    """Edges the first freeze did not pin: weights and shadow rates at exactly a unit's
    bucket (the comparison is strict), statuses that must ignore a full weight or shadow,
    more shadow rates, and units that stress the "salt:unit" concatenation."""
    rng = random.Random(20261124)
    index = first_index
    vectors = []
    units = ["", "ünïcødé-用户", "🙂🚀", "a:b", "shadow:x", "line\nbreak", "0", "USER-1"]
    units += [f"user-{rng.randrange(10**9)}" for _ in range(8)]
    for salt in ("9f1c2b7a5d3e4f60", "s", "ünï"):
        for unit in units[:6]:
            b = routing.bucket(salt, unit)
            sb = routing.shadow_bucket(salt, unit)
            # weight == bucket: control; bucket + 1: candidate.
            for weight_bp in (b, b + 1):
                vectors.append(vector(entry(index, "running", "rollout", salt, weight_bp, 0), unit))
                index += 1
            # shadow == shadow bucket: not shadowed; + 1: shadowed (weight 0: always control).
            for shadow_bp in (sb, sb + 1):
                vectors.append(vector(entry(index, "running", "shadow", salt, 0, shadow_bp), unit))
                index += 1
    for status in ("paused", "rolled_back", "draft", "completed"):
        for weight_bp, shadow_bp in ((10000, 0), (0, 10000), (5000, 5000)):
            plan = entry(index, status, "rollout", "9f1c2b7a5d3e4f60", weight_bp, shadow_bp)
            index += 1
            for unit in rng.sample(units, 3):
                vectors.append(vector(plan, unit))
    for weight in (5, 25, 50):
        for shadow in (1, 50):
            plan = entry(index, "running", "ab_split", "s", weight * 100, shadow * 100)
            index += 1
            for unit in rng.sample(units, 4):
                vectors.append(vector(plan, unit))
    for unit in units[4:8]:
        vectors.append(vector(None, unit))
    return vectors


def main() -> None:
    rng = random.Random(20261123)
    units = [
        "",
        "user-1",
        "user-2",
        "42",
        "ünïcødé-用户",
        "a" * 256,
        "user@example.com",
        " spaced ",
    ]
    units += [f"user-{rng.randrange(10**9)}" for _ in range(12)]
    vectors = []
    plans = []
    for salt in ("9f1c2b7a5d3e4f60", "0000000000000000", "s"):
        for weight in (0, 1, 5, 25, 50, 99, 100):
            for shadow in (0, 10, 100):
                if weight == 100 and shadow:
                    continue
                plans.append(
                    (
                        "running",
                        "rollout" if weight and not shadow else "shadow",
                        salt,
                        weight,
                        shadow,
                    )
                )
    for status in ("paused", "rolled_back", "completed", "draft"):
        plans.append((status, None, "9f1c2b7a5d3e4f60", 0, 0))
    for index, (status, phase, salt, weight, shadow) in enumerate(plans):
        plan = {
            "key": f"plan-{index}",
            "version": index + 1,
            "run": 1,
            "status": status,
            "phase": phase,
            "phase_index": 0,
            "step_index": 0,
            "salt": salt,
            "weight_bp": weight * 100,
            "shadow_bp": shadow * 100,
            "control": ARM,
            "candidate": CANDIDATE,
        }
        parsed = routing.parse_plan(plan)
        for unit in rng.sample(units, 4):
            d = routing.decide(parsed, unit, decision_id="v")
            vectors.append(
                {
                    "plan": plan,
                    "unit": unit,
                    "bucket": routing.bucket(salt, unit),
                    "expected": {"arm": d.arm, "shadow": d.shadow, "reason": d.reason},
                }
            )
    for unit in units[:4]:
        vectors.append(
            {
                "plan": None,
                "unit": unit,
                "bucket": None,
                "expected": {"arm": "control", "shadow": False, "reason": "DEFAULT"},
            }
        )
    for v in vectors:  # the first freeze had no shadow_bucket: added, nothing changed
        v["shadow_bucket"] = (
            routing.shadow_bucket(v["plan"]["salt"], v["unit"]) if v["plan"] else None
        )
        v["expected"] = v.pop("expected")
    vectors += extra_vectors(len(plans))
    OUT.write_text(
        json.dumps({"version": 1, "vectors": vectors}, indent=1, ensure_ascii=False) + "\n"
    )
    print(f"wrote {len(vectors)} vectors to {OUT}")


if __name__ == "__main__":
    main()
