"""Time from a rollback's commit to its page arriving at a receiver.

Against PostgreSQL and Redis with a real Celery worker (prefork, 2 processes), as in
production: each run rolls a plan back through the lifecycle service and enqueues its page
in the same transaction (as the engine does); the page goes to a signed webhook served by
a local HTTP receiver in this process. Measured: commit -> request received.

Needs PostgreSQL and Redis as in `make test`.
Run: .venv/bin/python bench/bench_alerts.py [--runs 50]  (BENCH_REDIS_URL overrides Redis db 6)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "turnout_bench_alerts"
ENV = {
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
    "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6"),
    "DEBUG": "0",
    "SECRET_KEY": "bench-only-secret",
    "ALLOWED_HOSTS": "127.0.0.1",
    "LOG_LEVEL": "WARNING",
    "DJANGO_SETTINGS_MODULE": "controlplane.settings",
    "BENCH_HOOK_SECRET": "bench-secret",
}
arrivals: dict[str, float] = {}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        import json

        arrivals[json.loads(body)["alert"]["plan_key"]] = time.time()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def setup(hook_url: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}"')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    os.environ.update({**ENV, "BENCH_HOOK_URL": hook_url})
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import redis
    from django.core.management import call_command

    redis.Redis.from_url(ENV["REDIS_URL"]).flushdb()
    call_command("migrate", "--noinput", verbosity=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    setup(f"http://127.0.0.1:{server.server_address[1]}/hook")

    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from migrations_app import paging, plans
    from migrations_app.alerts import outbox
    from migrations_app.models import AlertChannel, MigrationPlan

    actor = plans.Actor.for_user(get_user_model().objects.create_superuser("bench", "", "pw"))
    channel = AlertChannel.objects.create(
        name="hook", kind="webhook", url_env="BENCH_HOOK_URL", secret_env="BENCH_HOOK_SECRET"
    )
    keys = [f"bench-{i:03d}" for i in range(args.runs)]
    for key in keys:
        plans.plan_create(
            key=key,
            name=key,
            control={"model": "openai:gpt-4o-2024-08-06"},
            candidate={"model": "anthropic:claude-sonnet-4-20250514"},
            actor=actor,
        )
        plans.plan_start(plan_key=key, actor=actor)
        MigrationPlan.objects.get(key=key).alert_channels.add(channel)

    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--concurrency", "2",
         "--pool", "prefork", "--loglevel", "WARNING", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env={**os.environ},
    )  # fmt: skip
    committed: dict[str, float] = {}
    try:
        time.sleep(6.0)  # the worker is consuming
        for key in keys:
            with transaction.atomic():
                plan = plans.plan_rollback(
                    plan_key=key, actor=plans.ENGINE, reason="bench: error_rate regressed"
                )
                message = paging.alert_message(
                    action="rollback", plan_key=key, plan_name=key, run=1,
                    control_model="gpt-4o", candidate_model="claude-sonnet-4",
                    evidence={}, reason="error_rate regressed", at=timezone.now(),
                    dashboard_url=f"http://127.0.0.1/plans/{key}/",
                )  # fmt: skip
                outbox.alert_enqueue(plan=plan, message=message)
            committed[key] = time.time()
            time.sleep(0.2)
        deadline = time.monotonic() + 60
        while len(arrivals) < len(keys) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.terminate()
        worker.wait()
        server.shutdown()
    delays = sorted((arrivals[k] - committed[k]) * 1000 for k in keys if k in arrivals)
    p99 = delays[min(len(delays) - 1, int(0.99 * len(delays)))]
    print(
        f"rollback commit -> webhook received, {len(delays)} of {len(keys)} runs: median "
        f"{statistics.median(delays):.0f} ms, p99 {p99:.0f} ms, max {delays[-1]:.0f} ms"
    )


if __name__ == "__main__":
    main()
