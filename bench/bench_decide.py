"""decide() per call against UnleashClient's get_variant, in the same process and run.

Both evaluate locally: a 10 % gradual rollout with two variants, sticky on the user id.
Prints median and p99 per call and the ratio. Run: .venv/bin/python bench/bench_decide.py
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import turnout
from turnout import routing

CALLS_PER_SAMPLE = 200
SAMPLES = 2000
UNITS = [f"user-{i}" for i in range(CALLS_PER_SAMPLE)]


def measure(call: Callable[[str], object]) -> tuple[float, float]:
    """Median and p99 in microseconds per call, over SAMPLES batches of CALLS_PER_SAMPLE calls."""
    for unit in UNITS:  # warm-up
        call(unit)
    per_call = []
    for _ in range(SAMPLES):
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
    # No server: the snapshot comes from a last-known-good file, as after a restart with the
    # control plane down (the same path as a fetched one: parsed once, then swapped in).
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
    assert client.snapshot_version == "bench"
    return client


def unleash_client() -> object:
    from UnleashClient import UnleashClient
    from UnleashClient.cache import FileCache

    features = {
        "version": 1,
        "features": [
            {
                "name": "support-chat",
                "type": "release",
                "enabled": True,
                "strategies": [
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
    logging.disable(logging.WARNING)
    ours = turnout_client()
    theirs = unleash_client()
    ours_median, ours_p99 = measure(lambda unit: ours.decide("support-chat", unit))
    bare_median, _ = measure(lambda unit: routing.bucket("s1", unit))
    theirs_median, theirs_p99 = measure(
        lambda unit: theirs.get_variant("support-chat", {"userId": unit})
    )
    share = (
        sum(
            ours.decide("support-chat", u).arm == "candidate"
            for u in (f"u{i}" for i in range(20000))
        )
        / 20000
    )
    print(
        f"turnout decide():           median {ours_median:.2f} us   p99 {ours_p99:.2f} us   (candidate share {share:.3f})"
    )
    print(f"bare murmur3 bucket:        median {bare_median:.2f} us")
    print(f"UnleashClient get_variant:  median {theirs_median:.2f} us   p99 {theirs_p99:.2f} us")
    print(f"ratio (Unleash / turnout), median: {theirs_median / ours_median:.1f}x")
    ours.close()


if __name__ == "__main__":
    main()
