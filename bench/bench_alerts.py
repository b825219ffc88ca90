"""Time from a rollback's commit to its page arriving at a receiver.

Against PostgreSQL and Redis with a real Celery worker (prefork, 2 processes), as in
production: each run rolls a plan back through the lifecycle service and enqueues its page
in the same transaction (as the engine does); the page goes to a signed webhook served by
a local HTTP receiver in this process. Measured: commit -> request received.

Needs PostgreSQL and Redis as in `make test`.
Run: .venv/bin/python bench/bench_alerts.py [--runs 50] [--smoke]
(BENCH_DATABASE_URL / BENCH_REDIS_URL override its database and Redis db 6)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from _stack import (
    ROOT,
    SMOKE_HELP,
    Worker,
    database_url,
    flush_redis,
    recreate_database,
    redis_url,
)

ENV = {
    "DATABASE_URL": database_url("turnout_bench_alerts"),
    "REDIS_URL": redis_url(6),
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
    recreate_database(ENV["DATABASE_URL"])
    os.environ.update({**ENV, "BENCH_HOOK_URL": hook_url})
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    flush_redis(ENV["REDIS_URL"])
    call_command("migrate", "--noinput", verbosity=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.runs = 3
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    setup(f"http://127.0.0.1:{server.server_address[1]}/hook")

    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from migrations_app.alerts import oncall, outbox
    from migrations_app.models import AlertChannel, MigrationPlan
    from migrations_app.plans import edits, lifecycle

    actor = lifecycle.Actor.for_user(get_user_model().objects.create_superuser("bench", "", "pw"))
    channel = AlertChannel.objects.create(
        name="hook", kind="webhook", url_env="BENCH_HOOK_URL", secret_env="BENCH_HOOK_SECRET"
    )
    keys = [f"bench-{i:03d}" for i in range(args.runs)]
    for key in keys:
        edits.plan_create(
            key=key,
            name=key,
            control={"model": "openai:gpt-4o-2024-08-06"},
            candidate={"model": "anthropic:claude-sonnet-4-20250514"},
            actor=actor,
        )
        lifecycle.plan_start(plan_key=key, actor=actor)
        MigrationPlan.objects.get(key=key).alert_channels.add(channel)

    worker = Worker({**os.environ}, "--concurrency", "2", "--pool", "prefork")
    committed: dict[str, float] = {}
    try:
        worker.wait_ready()  # the worker is consuming
        for key in keys:
            with transaction.atomic():
                plan = lifecycle.plan_rollback(
                    plan_key=key, actor=lifecycle.ENGINE, reason="bench: error_rate regressed"
                )
                message = oncall.alert_message(
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
        worker.stop()
        server.shutdown()
    if not arrivals:
        raise SystemExit(f"no page of {len(keys)} arrived within 60 s")
    delays = sorted((arrivals[k] - committed[k]) * 1000 for k in keys if k in arrivals)
    p99 = delays[min(len(delays) - 1, int(0.99 * len(delays)))]
    print(
        f"rollback commit -> webhook received, {len(delays)} of {len(keys)} runs: median "
        f"{statistics.median(delays):.0f} ms, p99 {p99:.0f} ms, max {delays[-1]:.0f} ms"
    )
    if len(delays) < len(keys):
        raise SystemExit(f"{len(keys) - len(delays)} pages did not arrive within 60 s")


if __name__ == "__main__":
    main()
