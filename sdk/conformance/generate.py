"""Run once to write routing-v1.json; the tests never regenerate it.

The file freezes the routing algorithm: a release that changes any vector moves users
between arms mid-migration. Regenerating it is a breaking change, made on purpose or never.
"""

import json
import random
from pathlib import Path

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
    OUT.write_text(
        json.dumps({"version": 1, "vectors": vectors}, indent=1, ensure_ascii=False) + "\n"
    )
    print(f"wrote {len(vectors)} vectors to {OUT}")


if __name__ == "__main__":
    main()
