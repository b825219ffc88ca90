"""Server decisions under load, and change propagation to 100 connected SDKs.

Starts the production server stack (gunicorn WSGI workers for the API, uvicorn for the SSE
stream, DEBUG off) against
PostgreSQL and Redis, then drives it from a separate process with wrk:
  - GET  /api/v1/ping                      the ceiling: constant JSON through the same stack
  - POST /api/v1/decide                    thin-client decisions (unit varies per request)
  - POST /ofrep/v1/evaluate/flags/{key}    OFREP single flag
Then connects 100 turnout.Client instances, flips the plan through the lifecycle service, and
times until each client holds the new snapshot (5 flips).

Needs: PostgreSQL and Redis as in `make test`, and Debian's wrk (apt-get install wrk).
Run: .venv/bin/python bench/bench_server.py
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "turnout_bench"
ENV = {
    **os.environ,
    "DATABASE_URL": os.environ.get(
        "BENCH_DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
    ),
    "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
    "DEBUG": "0",
    "SECRET_KEY": "bench-only-secret",
    "ALLOWED_HOSTS": "127.0.0.1",
    # One key drives all the load: a limit it never reaches, so that the limiter's bookkeeping
    # (and its Redis batches) is part of what is measured, as in production.
    "TURNOUT_RATE_LIMIT_PER_KEY": "1000000",
    "LOG_LEVEL": "WARNING",
}
PORT = 8391
STREAM_PORT = 8392
BASE = f"http://127.0.0.1:{PORT}"
STREAM = f"http://127.0.0.1:{STREAM_PORT}"


def ensure_database() -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def setup_django() -> None:
    os.environ.update(ENV)
    os.environ["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)


def make_plan_and_key() -> str:
    from django.contrib.auth import get_user_model

    from migrations_app import plans
    from migrations_app.apikeys import apikey_create
    from migrations_app.models import MigrationPlan

    user = get_user_model().objects.filter(
        username="bench"
    ).first() or get_user_model().objects.create_superuser("bench", "", "bench-password")
    actor = plans.Actor.for_user(user)
    MigrationPlan.objects.filter(key="bench-chat").delete()
    plans.plan_create(
        key="bench-chat",
        name="bench",
        control={"model": "openai:gpt-4o-2024-08-06", "params": {"temperature": 0.2}},
        candidate={"model": "anthropic:claude-sonnet-4-20250514", "params": {"temperature": 0.2}},
        actor=actor,
    )
    plans.plan_start(plan_key="bench-chat", actor=actor)
    plans.plan_advance(plan_key="bench-chat", actor=actor)  # A/B split 10 %
    return apikey_create(name="bench", scopes=["decide", "report"])[1]


LUA = """
counter = 0
request = function()
  counter = counter + 1
  local body = string.format([[BODY]], counter)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer KEY"}, body)
end
"""


def wrk(
    path: str, key: str, body: str | None, connections: int, seconds: int = 10
) -> tuple[float, float, float]:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if body is not None:
            script.write(LUA.replace("BODY", body).replace("KEY", key))
        else:
            script.write("")
    if body is not None:
        args += ["-s", script.name]
    out = subprocess.run([*args, BASE + path], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"  warning: {errors.group(1)} non-2xx responses on {path}")
    return rate, pct("50"), pct("99")


def propagation(key: str, clients_count: int = 100, flips: int = 5) -> list[float]:
    import turnout
    from django.contrib.auth import get_user_model

    from migrations_app import plans

    actor = plans.Actor.for_user(get_user_model().objects.get(username="bench"))
    clients = [
        turnout.Client(BASE, key, poll_interval=3600, stream_url=STREAM)
        for _ in range(clients_count)
    ]
    time.sleep(2.0)  # every stream connected
    delays: list[float] = []
    try:
        for flip in range(flips):
            before = clients[0].snapshot_version
            action = plans.plan_pause if flip % 2 == 0 else plans.plan_resume
            started = time.perf_counter()
            action(plan_key="bench-chat", actor=actor)
            pending = set(range(clients_count))
            while pending and time.perf_counter() - started < 10:
                for i in list(pending):
                    if clients[i].snapshot_version != before:
                        delays.append((time.perf_counter() - started) * 1000)
                        pending.discard(i)
                time.sleep(0.001)
            if pending:
                print(f"  flip {flip}: {len(pending)} clients did not see the change within 10 s")
            time.sleep(0.5)
    finally:
        for client in clients:
            client.close(timeout=0.1)
    return delays


def main() -> None:
    ensure_database()
    setup_django()
    key = make_plan_and_key()
    # The production shape of `make run` and docker/compose.yml: WSGI workers for the API, an ASGI
    # server for the long-lived SSE streams.
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "controlplane.wsgi:application",
            "-w",
            "2",
            "--threads",
            "4",
            "-b",
            f"127.0.0.1:{PORT}",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=ENV,
    )
    stream = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "controlplane.asgi:application",
            "--port",
            str(STREAM_PORT),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=ENV,
    )
    try:
        time.sleep(4)
        print(
            "API: gunicorn, 2 WSGI workers x 4 threads; stream: uvicorn (ASGI); DEBUG off; PostgreSQL + Redis"
        )
        for connections in (32, 8):
            print(
                f"load: wrk -t2 -c{connections}, 10 s per endpoint, from a separate process on loopback"
            )
            measure_endpoints(key, connections)
        delays = sorted(propagation(key))
        if delays:
            p50 = statistics.median(delays)
            p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
            print(
                f"propagation to 100 SDK clients over SSE: {len(delays)} deliveries, p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {delays[-1]:.0f} ms"
            )
    finally:
        for proc in (server, stream):
            proc.terminate()
        for proc in (server, stream):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # uvicorn waits for open SSE streams to end
                proc.kill()
                proc.wait()


def measure_endpoints(key: str, connections: int) -> None:
    ceiling = wrk("/api/v1/ping", key, None, connections)
    decide = wrk("/api/v1/decide", key, '{"plan": "bench-chat", "unit": "user-%d"}', connections)
    ofrep = wrk(
        "/ofrep/v1/evaluate/flags/bench-chat",
        key,
        '{"context": {"targetingKey": "user-%d"}}',
        connections,
    )
    for name, (rate, p50, p99) in (
        ("ping (ceiling)", ceiling),
        ("POST /api/v1/decide", decide),
        ("OFREP single flag", ofrep),
    ):
        print(
            f"{name:22s} {rate:8.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   {rate / ceiling[0]:.0%} of ceiling"
        )


if __name__ == "__main__":
    main()
