"""Ingest throughput: events/s through ``POST /api/v1/outcomes`` into PostgreSQL with aggregation,
beside a raw ``COPY`` of the same rows into a table of the same shape, in the same run.

Starts the production server stack (gunicorn WSGI workers, DEBUG off, PostgreSQL and Redis) and
drives it from separate load processes, each posting pre-built gzip batches of 500 events
(what the SDK sends) one after another over a kept-alive connection. The events are a realistic
mix: 20,000 units, both arms of an A/B split, errors of several kinds, some unknown usage and
missing TTFT, timestamps over the last three minutes. The figure is the wall time from the first
request to the last answer, and the run checks that every event was stored once and counted
in the aggregates.

The ceiling: the same rows, as ingest stored them (priced and windowed), read back and written
with ``COPY`` from one client into a scratch table ``LIKE`` the outcome table (same columns and
indexes), no validation and no aggregation. Its columns come from the model and its rows from the
table, so a column added later is in the baseline too (a hand-written list once missed one).

``--metrics N`` (issue 15): the plan declares N per-request metrics (a 0/1 rate and means
bounded 0-5) and every event carries a value of each, stored on the outcome and rolled up per
unit beside the rest; the run checks each metric's count in the stage's aggregates and in the
units' sums too.

Also printed: CPU time per batch in the web workers and in the PostgreSQL backends (from /proc),
which moves less than the rate when other work shares the machine.

Needs PostgreSQL and Redis as in `make test`.
Run: .venv/bin/python bench/bench_ingest.py [--events 200000] [--loaders 4] [--workers 2 --threads 2]
     [--metrics 2] [--segments 3] [--units 20000] [--smoke]
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import pickle
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import (
    SMOKE_HELP,
    bench_env,
    children,
    cpu_seconds,
    database_backends,
    ensure_database,
    free_port,
    gunicorn,
    setup_django,
)

DB_NAME = "turnout_bench_ingest"
REDIS_DB = 9
PLAN_KEY = "bench-ingest"
BATCH = 500
UNITS = 20_000
ERRORS = ["timeout", "rate_limited", "server_error", "overloaded"]


def metric_names(count: int) -> list[str]:
    """``task_completed`` (a rate) first, then means ``score_1``, ``score_2``, ..."""
    return ["task_completed", *(f"score_{i}" for i in range(1, count))][:count]


SEGMENT_DIMENSIONS = ("tenant", "lang", "tier")


def make_plan_and_key(metrics: int = 0, segments: int = 0) -> tuple[Any, str]:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from migrations_app.api.keys import apikey_create
    from migrations_app.plans import edits, lifecycle

    user = get_user_model().objects.filter(
        username="bench"
    ).first() or get_user_model().objects.create_superuser("bench", "", "bench-password")
    actor = lifecycle.Actor.for_user(user)
    # The bench database is ours: start every run from empty ingest tables.
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE migrations_app_feedback, migrations_app_outcome, migrations_app_unittotals,"
            " migrations_app_windowaggregate, migrations_app_stageaggregate,"
            " migrations_app_metricunittotals, migrations_app_metricvalue,"
            " migrations_app_segmentaggregate"
        )
    from migrations_app.models import MigrationPlan

    MigrationPlan.objects.filter(key=PLAN_KEY).delete()
    edits.plan_create(
        key=PLAN_KEY,
        name="bench ingest",
        control={"model": "openai:gpt-4o-2024-08-06", "params": {"temperature": 0.2}},
        candidate={"model": "anthropic:claude-sonnet-4-20250514", "params": {"temperature": 0.2}},
        actor=actor,
    )
    lifecycle.plan_start(plan_key=PLAN_KEY, actor=actor)
    lifecycle.plan_advance(plan_key=PLAN_KEY, actor=actor)  # A/B split, 10 % candidate
    if segments:
        MigrationPlan.objects.filter(key=PLAN_KEY).update(
            segment_dimensions=list(SEGMENT_DIMENSIONS[:segments])
        )
    plan = MigrationPlan.objects.get(key=PLAN_KEY)
    from migrations_app.models import MetricDefinition

    for name in metric_names(metrics):
        if name == "task_completed":
            MetricDefinition.objects.create(plan=plan, name=name, kind="rate")
        else:
            MetricDefinition.objects.create(
                plan=plan, name=name, kind="mean", lower_bound=0, upper_bound=5
            )
    return plan, apikey_create(name="bench-ingest", scopes=["report"])[1]


def unit_segments(unit: int, dimensions: int) -> dict[str, str]:
    """A unit's segment values: 500 tenants, 12 languages, 3 tiers (sticky per unit)."""
    values = {"tenant": f"t{unit % 500}", "lang": f"l{unit % 12}", "tier": f"tier{unit % 3}"}
    return {d: values[d] for d in SEGMENT_DIMENSIONS[:dimensions]}


def make_events(
    plan: Any,
    n: int,
    rng: random.Random,
    metrics: list[str] | None = None,
    segments: int = 0,
    units: int = UNITS,
) -> list[dict[str, Any]]:
    now = time.time()
    events = []
    for _ in range(n):
        arm = "candidate" if rng.random() < 0.1 else "control"
        unknown_usage = rng.random() < 0.05
        events.append(
            {
                "id": uuid.uuid4().hex,
                "decision_id": uuid.uuid4().hex,
                "plan": plan.key,
                "run": plan.current_run.number,
                "plan_version": plan.version,
                "arm": arm,
                "unit": f"user-{(unit := rng.randrange(units))}",
                "ts": now - rng.uniform(1, 180),
                "latency_ms": rng.lognormvariate(6.5, 0.5),
                "ttft_ms": None if rng.random() < 0.2 else rng.lognormvariate(5, 0.4),
                "error": rng.choice(ERRORS) if rng.random() < 0.03 else None,
                "input_tokens": None if unknown_usage else rng.randrange(100, 4000),
                "output_tokens": None if unknown_usage else rng.randrange(10, 1000),
            }
        )
        if segments:
            events[-1]["segments"] = unit_segments(unit, segments)
        if metrics:
            events[-1]["metrics"] = {
                name: (int(rng.random() < 0.8) if name == "task_completed"
                       else round(rng.uniform(0, 5), 2))
                for name in metrics
            }  # fmt: skip
    return events


def gzip_batches(events: list[dict[str, Any]]) -> list[bytes]:
    return [
        gzip.compress(
            json.dumps(
                {"client": {"sdk": "bench", "dropped": 0}, "events": events[i : i + BATCH]},
                separators=(",", ":"),
            ).encode(),
            compresslevel=5,
        )
        for i in range(0, len(events), BATCH)
    ]


def load(args: tuple[str, str, str, int, int, Any]) -> tuple[int, int, float, float]:
    """One load process: post its share of the batches one after another. Returns (stored,
    rejected, first request time, last answer time)."""
    import httpx

    base, key, path, index, loaders, barrier = args
    with open(path, "rb") as f:
        bodies = pickle.load(f)[index::loaders]
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    stored = rejected = 0
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        client.get("/api/v1/ping")  # connect before the clock starts
        barrier.wait()
        started = time.time()
        for body in bodies:
            response = client.post("/api/v1/outcomes", content=body)
            response.raise_for_status()
            answer = response.json()
            stored += answer["stored"]
            rejected += len(answer["rejected"])
    return stored, rejected, started, time.time()


def run_load(base: str, key: str, bodies: list[bytes], loaders: int) -> tuple[int, int, float]:
    with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False) as f:
        pickle.dump(bodies, f)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(loaders)
        with ctx.Pool(loaders) as pool:
            results = pool.map(
                load, [(base, key, f.name, i, loaders, barrier) for i in range(loaders)]
            )
    os.unlink(f.name)
    stored = sum(r[0] for r in results)
    rejected = sum(r[1] for r in results)
    elapsed = max(r[3] for r in results) - min(r[2] for r in results)
    return stored, rejected, elapsed


def copy_rate(plan: Any) -> tuple[int, float]:
    """Rows and rows/s of a raw COPY, from one client, of the rows ingest stored for ``plan``
    into a table LIKE the outcome table. Every column of the model, in the stored values: the
    rows are read back before the clock starts, and ``write_row`` formats them as ingest's
    own rows are formatted, per value, in the client."""
    from django.db import connection

    from migrations_app.models import Outcome

    qn = connection.ops.quote_name
    columns = ", ".join(qn(field.column) for field in Outcome._meta.concrete_fields)
    connection.ensure_connection()
    raw = connection.connection  # the psycopg connection under Django's
    with raw.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {qn(Outcome._meta.db_table)} WHERE plan_id = %s", [plan.pk]
        )
        rows = cursor.fetchall()
        cursor.execute("DROP TABLE IF EXISTS bench_outcome_copy")
        cursor.execute(
            f"CREATE TABLE bench_outcome_copy (LIKE {qn(Outcome._meta.db_table)} INCLUDING ALL)"
        )
    raw.commit()
    started = time.perf_counter()
    with raw.cursor() as cursor:
        with cursor.copy(f"COPY bench_outcome_copy ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    raw.commit()
    elapsed = time.perf_counter() - started
    with raw.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM bench_outcome_copy")
        assert cursor.fetchone()[0] == len(rows)
        cursor.execute("DROP TABLE bench_outcome_copy")
    raw.commit()
    return len(rows), len(rows) / elapsed


def fold_pending(plan: Any) -> float:
    """Fold the segment sums the load left pending (issue 16; outcomes/segment_rollup.py), as
    a read of the segments would: returns the seconds it took."""
    from migrations_app.models import PlanStage
    from migrations_app.outcomes.segment_rollup import fold

    started = time.perf_counter()
    fold(PlanStage.objects.filter(plan=plan).values_list("pk", flat=True))
    return time.perf_counter() - started


def check_exact(plan: Any, total: int, metrics: list[str] | None = None, segments: int = 0) -> None:
    from migrations_app.models import (
        Outcome,
        SegmentAggregate,
        StageAggregate,
        UnitTotals,
        WindowAggregate,
    )
    from migrations_app.outcomes import aggregate_json

    stored = Outcome.objects.filter(plan=plan).count()
    stage = sum(
        aggregate_json.from_json(d).requests
        for d in StageAggregate.objects.filter(stage__plan=plan).values_list("data", flat=True)
    )
    windows = sum(
        WindowAggregate.objects.filter(stage__plan=plan).values_list("requests", flat=True)
    )
    assert stored == stage == windows == total, (stored, stage, windows, total)
    unit_sums = list(UnitTotals.objects.filter(stage__plan=plan).values_list("metrics", flat=True))
    for name in metrics or []:
        counted = sum(
            aggregate_json.from_json(d).metrics[name].n
            for d in StageAggregate.objects.filter(stage__plan=plan).values_list("data", flat=True)
        )
        assert counted == total, (name, counted, total)
        in_units = sum(unit[name][0] for unit in unit_sums if name in unit)
        assert in_units == total, (name, in_units, total)
    for dimension in SEGMENT_DIMENSIONS[:segments]:
        rows = SegmentAggregate.objects.filter(stage__plan=plan, dimension=dimension)
        counted = sum(rows.values_list("requests", flat=True))
        assert counted == total, (dimension, counted, total)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--loaders", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--metrics", type=int, default=0, help="per-request metrics on every event (issue 15)"
    )
    parser.add_argument(
        "--segments", type=int, default=0, choices=range(4),
        help="segment dimensions on the plan and every event (issue 16): tenant, lang, tier",
    )  # fmt: skip
    parser.add_argument(
        "--units", type=int, default=UNITS,
        help="distinct units the events come from (10,000,000: batches share almost none)",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    opts = parser.parse_args()
    if opts.smoke:
        opts.events, opts.loaders, opts.workers, opts.threads = 4 * BATCH, 2, 1, 2

    env = bench_env(DB_NAME, REDIS_DB)
    ensure_database(env["DATABASE_URL"])
    setup_django(env)
    from django.db import connection

    plan, key = make_plan_and_key(opts.metrics, opts.segments)
    names = metric_names(opts.metrics)
    rng = random.Random(7)
    warmup = make_events(
        plan, (1 if opts.smoke else 4) * BATCH, rng, names, opts.segments, opts.units
    )
    events = make_events(plan, opts.events, rng, names, opts.segments, opts.units)
    bodies = gzip_batches(events)
    connection.close()

    load_before = os.getloadavg()[0]
    with gunicorn(env, free_port(), opts.workers, opts.threads) as (base, master):
        run_load(base, key, gzip_batches(warmup), opts.loaders)
        web = children(master)
        web_cpu = cpu_seconds(web)
        # The backends before and after: a web thread that first connects during the load
        # (the warm-up may not reach every thread) has its backend counted from zero.
        backends = {pid: cpu_seconds([pid]) for pid in database_backends(env["DATABASE_URL"])}
        stored, rejected, elapsed = run_load(base, key, bodies, opts.loaders)
        # What the web processes left pending (< a second of it each) is folded on the clock.
        elapsed += fold_pending(plan)
        web_cpu = cpu_seconds(web) - web_cpu
        db_cpu = sum(
            cpu_seconds([pid]) - backends.get(pid, 0.0)
            for pid in {*backends, *database_backends(env["DATABASE_URL"])}
        )
    assert rejected == 0 and stored == len(events), (stored, rejected)
    check_exact(plan, len(events) + len(warmup), names, opts.segments)
    api = len(events) / elapsed
    copied, ceiling = copy_rate(plan)
    print(
        f"stack: gunicorn {opts.workers} WSGI workers x {opts.threads} threads, DEBUG off,"
        f" PostgreSQL + Redis; load: {opts.loaders} processes posting gzip batches of {BATCH}"
    )
    print(f"events: {len(events):,} ({len(bodies)} batches), every one stored once and aggregated")
    if names:
        print(f"metrics: {', '.join(names)} on every event, each counted once per event")
    if opts.segments:
        dims = ", ".join(SEGMENT_DIMENSIONS[: opts.segments])
        print(f"segments: {dims} on every event, rolled up per segment")
    print(
        f"machine: {os.cpu_count()} cores, 1-minute load average {load_before:.2f} before the run"
    )
    print(f"POST /api/v1/outcomes   {api:10,.0f} events/s   ({elapsed:.2f} s)")
    print(f"raw COPY (ceiling)      {ceiling:10,.0f} rows/s   ({copied:,} rows as stored)")
    goals = (
        ">= 15,000 events/s"  # issues 15 and 16, beside COPY in the same run
        if names or opts.segments
        else ">= 20,000 events/s, >= 25 %"
    )
    print(f"ingest / COPY           {api / ceiling:10.0%}   (goals: {goals})")
    per_batch = 1000 / len(bodies)
    print(
        f"CPU per batch of {BATCH}: web workers {web_cpu * per_batch:.1f} ms,"
        f" PostgreSQL backends {db_cpu * per_batch:.1f} ms"
    )


if __name__ == "__main__":
    main()
