"""Time to rollback, end to end, on the production stack.

Starts Turnout as `make run` does (``controlplane.launcher``: gunicorn API, uvicorn stream,
Celery worker and beat with the default 15 s evaluation period) on PostgreSQL and Redis.
A plan with the standard guardrails (error rate 1.5x, p95 latency 1.3x, satisfaction -0.1,
cost 1.2x; family-wise alpha 0.05) runs a 50 % A/B split. One SDK client sends 50 requests/s
(decide + report); 20 more SDK clients only follow the change stream. Both arms fail 2 % of
requests for a warm-up, then at t0 the candidate's failure rate triples to 6 %. Measured per
run: seconds from t0 to the engine's rollback, requests per arm the deciding evaluation saw,
and seconds from the rollback's commit until every SDK client routes to control.

Needs PostgreSQL and Redis as in `make test`.
Run: .venv/bin/python bench/bench_rollback.py [--runs 3] [--warmup 30]
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

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "turnout_bench_rollback"
PORT = 8491
ENV = {
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
    "REDIS_URL": "redis://127.0.0.1:6379/7",
    "DEBUG": "0",
    "SECRET_KEY": "bench-only-secret",
    "ALLOWED_HOSTS": "127.0.0.1",
    "LOG_LEVEL": "WARNING",
    "DJANGO_SETTINGS_MODULE": "controlplane.settings",
    "TURNOUT_PORT": str(PORT),
}
BASE = f"http://127.0.0.1:{PORT}"
STREAM = f"http://127.0.0.1:{PORT + 1}"
RATE = 50.0
PHASES = [
    {"kind": "ab_split", "percent": 50.0, "steps": [], "min_duration_minutes": 600,
     "min_samples": 1_000_000},
    {"kind": "rollout", "percent": None, "steps": [50, 100], "min_duration_minutes": 30,
     "min_samples": 1000},
]  # fmt: skip


def start_stack(data_dir: str) -> subprocess.Popen[bytes]:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}"')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    import redis

    redis.Redis.from_url(ENV["REDIS_URL"]).flushdb()
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


def one_run(run: int, key: str, warmup: float) -> tuple[float, int, int, float]:
    import turnout
    from django.contrib.auth import get_user_model

    from migrations_app import plans
    from migrations_app.models import AuditEvent, Evaluation, MigrationPlan

    user = get_user_model().objects.get(username="admin")
    actor = plans.Actor.for_user(user)
    plan_key = f"bench-rollback-{run}"
    plans.plan_create(
        key=plan_key,
        name=plan_key,
        control={"model": "openai:gpt-4o-2024-08-06"},
        candidate={"model": "anthropic:claude-sonnet-4-20250514"},
        phases=PHASES,
        actor=actor,
    )
    plans.plan_start(plan_key=plan_key, actor=actor)
    followers = [turnout.Client(BASE, key, stream_url=STREAM) for _ in range(20)]
    client = turnout.Client(BASE, key, stream_url=STREAM, flush_interval=1.0)
    rng = np.random.default_rng(run)
    stop = threading.Event()
    t0: list[float] = []

    def traffic() -> None:
        started = time.time()
        i = 0
        while not stop.is_set():
            now = time.time()
            regressed = now - started >= warmup
            if regressed and not t0:
                t0.append(now)
            d = client.decide(plan_key, unit=f"user-{rng.integers(0, 20_000)}")
            rate = 0.06 if regressed and d.arm == "candidate" else 0.02
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
        while MigrationPlan.objects.get(key=plan_key).status != "rolled_back":
            time.sleep(0.05)
        event = AuditEvent.objects.get(plan__key=plan_key, action="rollback")
        committed = event.created_at.timestamp()
        everyone = [client, *followers]
        while any(c.snapshot.plans[plan_key].status != "rolled_back" for c in everyone):
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
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        stack = start_stack(data_dir)
        try:
            from migrations_app.apikeys import apikey_create

            key = apikey_create(name="bench", scopes=["decide", "report"])[1]
            results = []
            for run in range(args.runs):
                seconds, control, candidate, propagation = one_run(run, key, args.warmup)
                results.append((seconds, control, candidate, propagation))
                print(
                    f"run {run + 1}: rolled back {seconds:.0f} s after the regression, on "
                    f"{control} control / {candidate} candidate requests; every SDK on "
                    f"control {propagation * 1000:.0f} ms after the rollback's commit"
                )
        finally:
            os.killpg(stack.pid, signal.SIGTERM)
            stack.wait(timeout=30)
    print(
        f"median over {len(results)} runs: {statistics.median(r[0] for r in results):.0f} s to "
        f"rollback, {statistics.median(r[1] for r in results):.0f} control / "
        f"{statistics.median(r[2] for r in results):.0f} candidate requests, SDKs switched "
        f"{statistics.median(r[3] for r in results) * 1000:.0f} ms after the commit "
        f"(max {max(r[3] for r in results) * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
