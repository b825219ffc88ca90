"""Shadow throughput: candidate calls completed per second by the Celery workers, with the
provider simulator answering every call in about 200 ms.

    .venv/bin/python bench/bench_shadow.py [--samples 3000] [--baseline-samples 120] [--smoke]

Both runs in the same process, on the same stack: PostgreSQL, Redis, a real Celery worker
(prefork, 2 processes: this machine has 2 cores), the real Anthropic SDK, and the simulator in
a process of its own. Samples are stored through the ingest service (which enqueues one task
per batch of 50 after commit, as the API does); the clock runs from the first enqueue to the
last sample done.

- concurrent: each task calls the candidate from a thread pool (TURNOUT_SHADOW_CONCURRENCY).
- baseline: one blocking call at a time per worker process (TURNOUT_SHADOW_CONCURRENCY=1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import (
    ROOT,
    SMOKE_HELP,
    Worker,
    bench_env,
    ensure_database,
    free_port,
    setup_django,
    stop_process,
    wait_for_port,
)

DB = "turnout_bench_shadow"
REDIS_DB = 11  # bench_ingest has 9
LATENCY_MS = 200.0
BATCH = 50
CONCURRENCY = 64
PROVIDER_SLOTS = 256
CANDIDATE = "claude-sonnet-4-20250514"


@contextmanager
def simulator(tmp: Path) -> Any:
    profiles = tmp / "bench-shadow-profiles.json"
    # A narrow latency distribution around 200 ms: the figure is about overlap, not tails.
    profiles.write_text(
        json.dumps({"*": {"latency_median_ms": LATENCY_MS, "latency_p95_ms": LATENCY_MS * 1.1}})
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrations_app.simulator", "--port", str(port),
         "--profiles", str(profiles)],
        cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, timeout=10)


@contextmanager
def worker(env: dict[str, str], concurrency: int) -> Any:
    proc = Worker(
        {**env, "TURNOUT_SHADOW_CONCURRENCY": str(concurrency), "ANTHROPIC_API_KEY": "sk-bench"},
        "--pool", "prefork", "--concurrency", "2",
    )  # fmt: skip
    try:
        proc.wait_ready()  # the worker and its two processes up before the clock starts
        yield proc
    finally:
        proc.stop()


def new_plan(sim_url: str) -> Any:
    from django.contrib.auth.models import User

    from migrations_app.models import MigrationPlan, PlanPhase, ProviderConnection
    from migrations_app.plans import edits, lifecycle

    ProviderConnection.objects.filter(name="anthropic").update(
        base_url=sim_url, max_concurrent_calls=PROVIDER_SLOTS, max_calls_per_second=None
    )
    user, _ = User.objects.get_or_create(username="bench")
    actor = lifecycle.Actor.for_user(user)
    plan = edits.plan_create(
        key=f"shadow-{uuid.uuid4().hex[:8]}",
        name="Shadow bench",
        control={"model": "openai:gpt-4o-2024-08-06"},
        candidate={"model": f"anthropic:{CANDIDATE}"},
        owner=user,
        actor=actor,
    )
    PlanPhase.objects.filter(plan=plan, kind="shadow").update(percent=100.0)
    lifecycle.plan_start(plan_key=plan.key, actor=actor)
    return MigrationPlan.objects.get(pk=plan.pk)


def samples(plan: Any, n: int) -> list[dict[str, Any]]:
    now = time.time()
    return [
        {
            "id": uuid.uuid4().hex,
            "decision_id": uuid.uuid4().hex,
            "plan": plan.key,
            "run": plan.current_run.number,
            "plan_version": plan.version,
            "unit": f"user-{i}",
            "ts": now,
            "request": {"messages": [{"role": "user", "content": f"Where is my order {i}?"}]},
            "control": {
                "text": f"Order {i} ships tomorrow.",
                "latency_ms": 900.0,
                "input_tokens": 20,
                "output_tokens": 8,
            },
        }  # fmt: skip
        for i in range(n)
    ]


class Everyone:
    """The ingest service's caller identity: a key that may see every plan."""

    def may_see(self, plan_id: int) -> bool:
        return True


def run(env: dict[str, str], sim_url: str, n: int, concurrency: int) -> dict[str, float]:
    from migrations_app.models import ShadowSample, ShadowStatus
    from migrations_app.shadow.samples import shadow_samples_ingest

    plan = new_plan(sim_url)
    events = samples(plan, n)
    with worker(env, concurrency):
        started = time.monotonic()
        for i in range(0, n, BATCH):
            shadow_samples_ingest(identity=Everyone(), payload={"samples": events[i : i + BATCH]})
        done = 0
        while done < n and time.monotonic() - started < 600:
            time.sleep(0.2)
            done = ShadowSample.objects.filter(plan=plan, status=ShadowStatus.DONE).count()
        elapsed = time.monotonic() - started
    return {"samples": n, "done": done, "seconds": elapsed, "calls_per_s": done / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--baseline-samples", type=int, default=120)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.baseline_samples = 2 * BATCH, 4

    env = bench_env(DB, REDIS_DB)
    ensure_database(env["DATABASE_URL"])
    setup_django(env)
    import tempfile

    import httpx

    with tempfile.TemporaryDirectory() as tmp, simulator(Path(tmp)) as sim_url:
        results = {}
        for name, n, concurrency in (
            ("baseline", args.baseline_samples, 1),
            ("concurrent", args.samples, CONCURRENCY),
        ):
            httpx.post(f"{sim_url}/_sim/reset")
            results[name] = run(env, sim_url, n, concurrency)
            stats = httpx.get(f"{sim_url}/_sim/stats").json()
            results[name]["peak_in_flight"] = stats["peak_in_flight"]
            results[name]["simulator_requests"] = stats["requests"]

    print(f"simulator latency {LATENCY_MS:.0f} ms per call; worker: prefork x2")
    for name, r in results.items():
        per_task = 1 if name == "baseline" else CONCURRENCY
        print(
            f"{name:>10}: {r['done']:.0f}/{r['samples']:.0f} samples in {r['seconds']:.1f} s = "
            f"{r['calls_per_s']:.1f} calls/s (calls per task at once: {per_task}, "
            f"peak in flight at the simulator: {r['peak_in_flight']:.0f})"
        )
    ratio = results["concurrent"]["calls_per_s"] / results["baseline"]["calls_per_s"]
    print(f"concurrent / baseline: {ratio:.1f}x (goal: >= 200 calls/s)")
    if any(r["done"] < r["samples"] for r in results.values()):
        raise SystemExit("not every sample was done: the figures above are not a measurement")


if __name__ == "__main__":
    main()
