"""Time to rollback, end to end, on the production stack.

Starts Turnout as `make run` does (``controlplane.launcher``: gunicorn API, uvicorn stream,
Celery worker and beat with the default 15 s evaluation period) on PostgreSQL and Redis.
A plan with the standard guardrails (error rate 1.5x, p95 latency 1.3x, satisfaction -0.1,
cost 1.2x; family-wise alpha 0.05) runs a 50 % A/B split. One SDK client sends 50 requests/s
(decide + report); 20 more SDK clients only follow the change stream. Both arms fail 2 % of
requests for a warm-up, then at t0 the candidate's failure rate triples to 6 %. Measured per
run: seconds from t0 to the engine's rollback, requests per arm the deciding evaluation saw,
and seconds from the rollback's commit until every SDK client routes to control.

Each warm-up (``--warmup``, seconds; default 30 s and 10 min) gets ``--runs`` runs (default
5). The first warm-up is the baseline: the other's median is printed as a ratio to it. With a
long warm-up the stage's running totals dilute the regression (the cumulative tests slow
down); the change detectors (issue 20) are what keeps the rollback about as fast.

Needs PostgreSQL and Redis as in `make test`.
Run: .venv/bin/python bench/bench_rollback.py [--runs 5] [--warmup 30 600] [--smoke]
``--smoke``: one run per warm-up of 3 s and 6 s, 3 followers, the candidate then failing half
its requests, and the engine every second: the same path to a rollback in seconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _stack import (
    SMOKE_HELP,
    database_url,
    flush_redis,
    free_port,
    recreate_database,
    redis_url,
)

ROOT = Path(__file__).resolve().parent.parent
PORT, STREAM_PORT = free_port(), free_port()
ENV = {
    "DATABASE_URL": database_url("turnout_bench_rollback"),
    "REDIS_URL": redis_url(7),
    "DEBUG": "0",
    "SECRET_KEY": "bench-only-secret",
    "ALLOWED_HOSTS": "127.0.0.1",
    "LOG_LEVEL": "WARNING",
    "DJANGO_SETTINGS_MODULE": "controlplane.settings",
    "TURNOUT_PORT": str(PORT),
    "TURNOUT_STREAM_PORT": str(STREAM_PORT),
}
BASE = f"http://127.0.0.1:{PORT}"
STREAM = f"http://127.0.0.1:{STREAM_PORT}"
#: The candidate's failure rate after t0: three times the 2 % both arms fail before.
REGRESSED = 0.06
#: Seconds a run may take before the bench gives up on it (the engine never rolled back).
GIVE_UP_S = 900
RATE = 50.0
PHASES = [
    {"kind": "ab_split", "percent": 50.0, "steps": [], "min_duration_minutes": 600,
     "min_samples": 1_000_000},
    {"kind": "rollout", "percent": None, "steps": [50, 100], "min_duration_minutes": 30,
     "min_samples": 1000},
]  # fmt: skip


def start_stack(data_dir: str) -> subprocess.Popen[bytes]:
    recreate_database(ENV["DATABASE_URL"])
    flush_redis(ENV["REDIS_URL"])
    env = {**os.environ, **ENV, "TURNOUT_DATA_DIR": data_dir}
    stack = subprocess.Popen(
        [sys.executable, "-m", "controlplane.launcher"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.environ.update(ENV)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import httpx

    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{BASE}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or stack.poll() is not None:
            raise SystemExit("the stack did not come up")
        time.sleep(0.5)
    return stack


def one_run(
    run: int,
    key: str,
    warmup: float,
    stack: subprocess.Popen[bytes],
    followers_count: int = 20,
    failing: float = REGRESSED,
    give_up_s: float = GIVE_UP_S,
) -> tuple[float, int, int, float]:
    import turnout
    from django.contrib.auth import get_user_model

    from migrations_app.models import AuditEvent, Evaluation, MigrationPlan
    from migrations_app.plans import edits, lifecycle

    user = get_user_model().objects.get(username="admin")
    actor = lifecycle.Actor.for_user(user)
    plan_key = f"bench-rollback-{run}"
    edits.plan_create(
        key=plan_key,
        name=plan_key,
        control={"model": "openai:gpt-4o-2024-08-06"},
        candidate={"model": "anthropic:claude-sonnet-4-20250514"},
        phases=PHASES,
        actor=actor,
    )
    lifecycle.plan_start(plan_key=plan_key, actor=actor)
    followers = [turnout.Client(BASE, key, stream_url=STREAM) for _ in range(followers_count)]
    client = turnout.Client(BASE, key, stream_url=STREAM, flush_interval=1.0)
    rng = np.random.default_rng(run)
    stop = threading.Event()
    t0: list[float] = []
    died: list[BaseException] = []

    def traffic() -> None:
        try:
            send()
        except BaseException as exc:  # the main loop reports it instead of waiting forever
            died.append(exc)
            raise

    def send() -> None:
        started = time.time()
        i = 0
        while not stop.is_set():
            now = time.time()
            regressed = now - started >= warmup
            if regressed and not t0:
                t0.append(now)
            d = client.decide(plan_key, unit=f"user-{rng.integers(0, 20_000)}")
            rate = failing if regressed and d.arm == "candidate" else 0.02
            client.report(
                d,
                latency_ms=float(900 * np.exp(rng.normal(0, 0.5))),
                ttft_ms=float(200 * np.exp(rng.normal(0, 0.3))),
                error="server_error" if rng.random() < rate else None,
                input_tokens=int(rng.integers(500, 2000)),
                output_tokens=int(rng.integers(100, 600)),
            )
            if rng.random() < 0.1:
                client.feedback(d, 1 if rng.random() < 0.8 else -1)
            i += 1
            time.sleep(max(0.0, started + i / RATE - time.time()))

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        give_up = time.monotonic() + give_up_s
        while MigrationPlan.objects.get(key=plan_key).status != "rolled_back":
            if died:
                raise SystemExit(f"the traffic thread died: {died[0]!r}")
            if stack.poll() is not None or time.monotonic() > give_up:
                raise SystemExit(f"no rollback of {plan_key} (stack exit code {stack.poll()})")
            time.sleep(0.05)
        event = AuditEvent.objects.get(plan__key=plan_key, action="rollback")
        committed = event.created_at.timestamp()
        everyone = [client, *followers]
        while any(c.snapshot.plans[plan_key].status != "rolled_back" for c in everyone):
            if time.monotonic() > give_up:
                raise SystemExit("some SDK clients never saw the rollback")
            time.sleep(0.01)
        switched = time.time()
    finally:
        stop.set()
        thread.join()
        for c in [client, *followers]:
            c.close()
    evaluation = Evaluation.objects.get(pk=event.evidence["evaluation_id"])
    return (
        committed - t0[0],
        evaluation.control_requests,
        evaluation.candidate_requests,
        switched - committed,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5, help="runs per warm-up")
    parser.add_argument("--warmup", type=float, nargs="+", default=[30.0, 600.0],
                        help="seconds of health before the regression; the first is the baseline")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    followers, failing, give_up = 20, REGRESSED, GIVE_UP_S
    if args.smoke:
        args.runs, args.warmup, followers, failing, give_up = 1, [3.0, 6.0], 3, 0.5, 120.0
        ENV["TURNOUT_EVALUATION_INTERVAL"] = "1"
    by_warmup: dict[float, list[tuple[float, int, int, float]]] = {}
    with tempfile.TemporaryDirectory() as data_dir:
        stack = start_stack(data_dir)
        try:
            from migrations_app.api.keys import apikey_create

            key = apikey_create(name="bench", scopes=["decide", "report"])[1]
            run = 0
            for warmup in args.warmup:
                results = by_warmup.setdefault(warmup, [])
                for _ in range(args.runs):
                    seconds, control, candidate, propagation = one_run(
                        run, key, warmup, stack, followers, failing, give_up
                    )
                    run += 1
                    results.append((seconds, control, candidate, propagation))
                    print(
                        f"warm-up {warmup:g} s, run {len(results)}: rolled back {seconds:.0f} s "
                        f"after the regression, on {control} control / {candidate} candidate "
                        f"requests; every SDK on control {propagation * 1000:.0f} ms after the "
                        "rollback's commit",
                        flush=True,
                    )
        finally:
            os.killpg(stack.pid, signal.SIGTERM)
            try:
                stack.wait(timeout=30)
            except subprocess.TimeoutExpired:  # never leave a server behind
                os.killpg(stack.pid, signal.SIGKILL)
                stack.wait()
    baseline = statistics.median(r[0] for r in by_warmup[args.warmup[0]])
    for warmup, results in by_warmup.items():
        median = statistics.median(r[0] for r in results)
        print(
            f"warm-up {warmup:g} s, median over {len(results)} runs: {median:.0f} s to rollback "
            f"(range {min(r[0] for r in results):.0f}-{max(r[0] for r in results):.0f} s, "
            f"{median / baseline:.2f}x the {args.warmup[0]:g} s warm-up's), "
            f"{statistics.median(r[1] for r in results):.0f} control / "
            f"{statistics.median(r[2] for r in results):.0f} candidate requests in the stage, "
            f"SDKs switched {statistics.median(r[3] for r in results) * 1000:.0f} ms after the "
            f"commit (max {max(r[3] for r in results) * 1000:.0f} ms)"
        )


if __name__ == "__main__":
    main()
