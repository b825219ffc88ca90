"""Server decisions under load, and change propagation to 100 connected SDKs.

Starts the production server stack (gunicorn WSGI workers with controlplane/gunicorn.conf.py
for the API, uvicorn for the SSE stream, DEBUG off) against PostgreSQL and Redis, then drives
it from a separate process on loopback with wrk, in rounds (ceiling, /decide, OFREP, again):
  - GET  /api/v1/ping                      the ceiling: constant JSON through the same stack
  - POST /api/v1/decide                    thin-client decisions (unit varies per request)
  - POST /ofrep/v1/evaluate/flags/{key}    OFREP single flag
The load generator shares the server's 2 cores, so it is one wrk thread, and its concurrency is
sized to the server: 8 connections are two per server thread (2 workers x 2 threads), enough to
keep each busy and few enough that a request seldom waits behind more than one other; 32 shows
what queueing adds (Little's law: 32 in flight at 6,000/s is 5 ms each on average).
Every request is made by the same Lua function (headers, API key, a fresh unit), the ceiling's
too, so the load generator costs the same per request whichever endpoint it drives. The
decisions are the production ones: API key, rate limit (one key, a limit it never reaches, so
its bookkeeping and Redis batches run), the snapshot, ``turnout.routing``.
Beside each figure: the CPU the server, wrk and everything else on the machine used meanwhile
(the machine is shared: other work shows up there, and in the rates).

Then connects 100 turnout.Client instances, flips the plan through the lifecycle service, and
times until each client holds the new snapshot (5 flips).

Needs: PostgreSQL and Redis as in `make test`, and Debian's wrk (`make bench-deps`).
Run: .venv/bin/python bench/bench_server.py [--connections 8,32] [--rounds 3] [--seconds 8]
     [--no-propagation] [--smoke]; WEB_CONCURRENCY / WEB_THREADS change the server as in
     production. ``--smoke``: one 1 s round at 8 connections, 10 clients and 2 flips; without
     wrk it sends a few hundred requests per endpoint from this process instead (every answer
     checked, the rate meaningless) so that the suite still runs the server path.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _stack import (
    SMOKE_HELP,
    children,
    cpu_seconds,
    database_url,
    ensure_database,
    free_port,
    redis_url,
    stop_process,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = database_url("turnout_bench")
ENV = {
    **os.environ,
    "DATABASE_URL": DATABASE_URL,
    "REDIS_URL": redis_url(14),
    "DEBUG": "0",
    "SECRET_KEY": "bench-only-secret",
    "ALLOWED_HOSTS": "127.0.0.1",
    # One key drives all the load: a limit it never reaches, so that the limiter's bookkeeping
    # and its Redis batches (1 % of the limit: one INCRBY per 1,000 decisions in each worker)
    # are part of what is measured, as in production.
    "TURNOUT_RATE_LIMIT_PER_KEY": "100000",
    "LOG_LEVEL": "WARNING",
}
PORT = free_port()
STREAM_PORT = free_port()
BASE = f"http://127.0.0.1:{PORT}"
STREAM = f"http://127.0.0.1:{STREAM_PORT}"


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

    from migrations_app.api.keys import apikey_create
    from migrations_app.models import MigrationPlan
    from migrations_app.plans import edits, lifecycle

    user = get_user_model().objects.filter(
        username="bench"
    ).first() or get_user_model().objects.create_superuser("bench", "", "bench-password")
    actor = lifecycle.Actor.for_user(user)
    MigrationPlan.objects.filter(key="bench-chat").delete()
    edits.plan_create(
        key="bench-chat",
        name="bench",
        control={"model": "openai:gpt-4o-2024-08-06", "params": {"temperature": 0.2}},
        candidate={"model": "anthropic:claude-sonnet-4-20250514", "params": {"temperature": 0.2}},
        actor=actor,
    )
    lifecycle.plan_start(plan_key="bench-chat", actor=actor)
    lifecycle.plan_advance(plan_key="bench-chat", actor=actor)  # A/B split 10 %
    return apikey_create(name="bench", scopes=["decide", "report"])[1]


LUA = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
counter = 0
request = function()
  counter = counter + 1
  local n = id * 100000000 + counter
  return wrk.format("METHOD", PATH, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer KEY"}, BODY)
end
"""


class Run:
    """One wrk run: rate, latency percentiles, and the CPU used meanwhile (in cores)."""

    def __init__(
        self, rate: float, p50: float, p99: float, server: float, wrk: float, others: float
    ) -> None:
        self.rate, self.p50, self.p99 = rate, p50, p99
        self.server, self.wrk, self.others = server, wrk, others


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (Linux /proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / tick, sum(ticks) / tick


def wrk(
    path: str,
    key: str,
    body: str | None,
    connections: int,
    seconds: int,
    server_pids: list[int],
    threads: int = 1,
) -> Run:
    # The ceiling's GET formats its unit into the query string: the same Lua work per request.
    if body is None:
        method, lua_path, lua_body = "GET", f'string.format("{path}?unit=user-%d", n)', "nil"
    else:
        method, lua_path, lua_body = "POST", "nil", f"string.format([[{body}]], n)"
    script_text = (
        LUA.replace("METHOD", method)
        .replace("PATH", lua_path)
        .replace("BODY", lua_body)
        .replace("KEY", key)
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(script_text)
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    server_before = cpu_seconds(server_pids)
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before, total_before = _machine_busy()
    out = subprocess.run(
        [*args, "-s", script.name, BASE + path], capture_output=True, text=True, check=True
    ).stdout
    busy_after, total_after = _machine_busy()
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.unlink(script.name)
    wall = (total_after - total_before) / (os.cpu_count() or 1)
    server = (cpu_seconds(server_pids) - server_before) / wall
    load = (
        wrk_after.ru_utime + wrk_after.ru_stime - wrk_before.ru_utime - wrk_before.ru_stime
    ) / wall
    others = max(0.0, (busy_after - busy_before) / wall - server - load)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"  warning: {errors.group(1)} non-2xx responses on {path}")
    return Run(rate, pct("50"), pct("99"), server, load, others)


def propagation(key: str, clients_count: int = 100, flips: int = 5) -> list[float]:
    import turnout
    from django.contrib.auth import get_user_model

    from migrations_app.plans import lifecycle

    actor = lifecycle.Actor.for_user(get_user_model().objects.get(username="bench"))
    clients = [
        turnout.Client(BASE, key, poll_interval=3600, stream_url=STREAM)
        for _ in range(clients_count)
    ]
    time.sleep(2.0)  # every stream connected
    delays: list[float] = []
    try:
        for flip in range(flips):
            before = clients[0].snapshot_version
            action = lifecycle.plan_pause if flip % 2 == 0 else lifecycle.plan_resume
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


def server_settings() -> dict[str, object]:
    """What controlplane/gunicorn.conf.py resolves to in this environment."""
    saved = dict(os.environ)
    os.environ.update(ENV)
    try:
        conf = runpy.run_path(str(ROOT / "controlplane" / "gunicorn.conf.py"))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {k: conf[k] for k in ("workers", "threads", "worker_class", "reuse_port")}


ENDPOINTS = (
    ("ping (ceiling)", "/api/v1/ping", None),
    ("POST /api/v1/decide", "/api/v1/decide", '{"plan": "bench-chat", "unit": "user-%d"}'),
    (
        "OFREP single flag",
        "/ofrep/v1/evaluate/flags/bench-chat",
        '{"context": {"targetingKey": "user-%d"}}',
    ),
)


def measure_endpoints(
    key: str, connections: int, rounds: int, seconds: int, server_pids: list[int]
) -> None:
    print(
        f"load: wrk -t1 -c{connections}, {rounds} rounds of {seconds} s per endpoint, "
        "from a separate process on loopback"
    )
    runs: dict[str, list[Run]] = {name: [] for name, _, _ in ENDPOINTS}
    for round_ in range(rounds):
        for name, path, body in ENDPOINTS:
            run = wrk(path, key, body, connections, seconds, server_pids)
            runs[name].append(run)
            ceiling = runs[ENDPOINTS[0][0]][round_].rate
            print(
                f"  {name:22s} {run.rate:7.0f} req/s  p50 {run.p50:6.2f} ms  p99 {run.p99:7.2f} ms"
                f"  {run.rate / ceiling:4.0%} of ceiling"
                f"   cpu: server {run.server:.2f}, wrk {run.wrk:.2f}, others {run.others:.2f}"
            )
    print(f"  median of {rounds} rounds:")
    ceiling = statistics.median(r.rate for r in runs[ENDPOINTS[0][0]])
    for name, _, _ in ENDPOINTS:
        rate = statistics.median(r.rate for r in runs[name])
        p50 = statistics.median(r.p50 for r in runs[name])
        p99 = statistics.median(r.p99 for r in runs[name])
        print(
            f"  {name:22s} {rate:7.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:7.2f} ms"
            f"  {rate / ceiling:4.0%} of ceiling"
        )


def python_load(key: str, requests: int = 300) -> None:
    """Without wrk: each endpoint driven from this process over one kept-alive connection,
    every answer checked. The same server path as under wrk; the rate measures this process
    as much as the server, so it is no figure."""
    import httpx

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=BASE, headers=headers, timeout=30) as client:
        for name, path, body in ENDPOINTS:
            started = time.perf_counter()
            for n in range(requests):
                if body is None:
                    response = client.get(path, params={"unit": f"user-{n}"})
                else:
                    response = client.post(path, content=body % n)
                if response.status_code != 200:
                    raise SystemExit(f"{name}: {response.status_code} {response.text[:300]}")
            rate = requests / (time.perf_counter() - started)
            print(f"  {name:22s} {requests} requests, every answer 200 ({rate:.0f} req/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", default="8,32", help="wrk connections, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8, help="per endpoint per round")
    parser.add_argument("--no-propagation", action="store_true")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    options = parser.parse_args()
    has_wrk = shutil.which("wrk") is not None
    if not has_wrk and not options.smoke:
        raise SystemExit("bench_server needs wrk: `make bench-deps` installs Debian's")
    clients, flips = 100, 5
    if options.smoke:
        options.connections, options.rounds, options.seconds = "8", 1, 1
        clients, flips = 10, 2
    ensure_database(DATABASE_URL)
    setup_django()
    from controlplane.launcher import STREAM_GRACE_SECONDS  # as `make run` starts the stream

    key = make_plan_and_key()
    # The production shape of `make run` and docker/compose.yml: WSGI workers for the API, an ASGI
    # server for the long-lived SSE streams.
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "controlplane/gunicorn.conf.py",
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
            "--timeout-graceful-shutdown",
            str(STREAM_GRACE_SECONDS),
        ],
        cwd=ROOT,
        env=ENV,
    )
    try:
        wait_for_port(PORT, server)
        wait_for_port(STREAM_PORT, stream)
        time.sleep(1.0)  # every worker up
        settings = server_settings()
        print(
            f"API: gunicorn -c controlplane/gunicorn.conf.py: {settings['workers']} workers x "
            f"{settings['threads']} threads ({settings['worker_class']}, reuse_port "
            f"{settings['reuse_port']}); stream: uvicorn "
            f"(ASGI); DEBUG off; PostgreSQL + Redis; {os.cpu_count()} cores shared with wrk "
            f"and whatever else runs; load average {os.getloadavg()[0]:.1f} at start"
        )
        server_pids = [server.pid, *children(server.pid)]
        if has_wrk:
            # Warm-up, with connections enough to reach every worker: each has the key, the
            # snapshot and its routing follower before anything is measured.
            wrk(ENDPOINTS[1][1], key, ENDPOINTS[1][2], 32, 2, server_pids)
            for connections in (int(c) for c in options.connections.split(",")):
                measure_endpoints(key, connections, options.rounds, options.seconds, server_pids)
        else:
            print("wrk not found (`make bench-deps`): the smoke run drives the endpoints itself")
            python_load(key)
        if not options.no_propagation:
            delays = sorted(propagation(key, clients, flips))
            if len(delays) < clients * flips:
                raise SystemExit(f"{clients * flips - len(delays)} deliveries missing")
            p50 = statistics.median(delays)
            p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
            print(
                f"propagation to {clients} SDK clients over SSE: {len(delays)} deliveries, "
                f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {delays[-1]:.0f} ms"
            )
    finally:
        # uvicorn waits for open SSE streams to end: a bounded wait, then kill
        for proc in (server, stream):
            proc.terminate()
        for proc in (server, stream):
            stop_process(proc, timeout=10)


if __name__ == "__main__":
    main()
