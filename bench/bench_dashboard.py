"""Dashboard server time for a plan with 10^6 outcomes behind it and a week of windows.

Builds, in PostgreSQL, one running plan whose A/B stage started a week ago: a window
aggregate per arm per minute for 7 days (10,080 minutes x 2 arms, ~50 outcomes each:
10^6 outcomes in all, through the real ``aggregation.outcome_delta``), the stage totals,
an engine evaluation every 15 s for the week (40,320 rows, the engine's own decision and
bounds) and 500 audit events. Then times the dashboard in-process through Django's full
request stack (middleware, session auth, view, template), as the web server would run it:
the page with its default range (the last 24 h), 72 h and the whole 7-day run (goal for
each: < 300 ms), the 7 days again with a batch of outcomes ingested before each request
(the current hour is read again, as under live traffic) and with the dashboard's block
cache emptied before each (a process's first view of the plan), the live partial, and the
report. Prints median and p95 over --runs requests, and the query count.

Needs PostgreSQL as in `make test`.
Run: .venv/bin/python bench/bench_dashboard.py [--runs 20] [--outcomes 1000000]
     [--database NAME] [--redis-db N] [--reuse] [--profile FILE] [--smoke]
``--database`` / ``--redis-db`` keep engineers sharing a machine out of each other's data
(``BENCH_DATABASE_URL`` / ``BENCH_REDIS_URL`` too, as for every bench);
``--smoke`` builds six hours of windows (1,000 outcomes, 20 audit events) and times 1 request;
``--reuse`` times an already built database (windows end where that build's clock stood);
``--profile`` writes cProfile stats of the 7-day page to FILE.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from _stack import SMOKE_HELP, database_url, recreate_database, redis_url

ROOT = Path(__file__).resolve().parent.parent
ENV = {
    "DEBUG": "0",
    "SECRET_KEY": "bench-only-secret",
    "ALLOWED_HOSTS": "127.0.0.1,testserver",
    "LOG_LEVEL": "WARNING",
    "DJANGO_SETTINGS_MODULE": "controlplane.settings",
}
MINUTES = 7 * 24 * 60
KEY = "bench-dashboard"


def setup(db_url: str, redis: str, *, fresh: bool) -> None:
    if fresh:
        recreate_database(db_url)
    os.environ.update(ENV)
    os.environ["DATABASE_URL"] = db_url
    os.environ["REDIS_URL"] = redis
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    if fresh:
        call_command("migrate", "--noinput", verbosity=0)


def build(outcomes: int, minutes: int = MINUTES, audit_events: int = 500) -> str:
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from migrations_app.guardrails import engine
    from migrations_app.guardrails.stats import ArmAggregates
    from migrations_app.models import (
        Evaluation,
        MigrationPlan,
        PlanRun,
        PlanStage,
        StageAggregate,
        WindowAggregate,
    )  # fmt: skip
    from migrations_app.outcomes import aggregate_json, aggregation
    from migrations_app.outcomes.aggregation import OutcomeFacts
    from migrations_app.plans import edits, lifecycle
    from migrations_app.plans.catalog import seed_catalog

    seed_catalog()
    user = get_user_model().objects.create_superuser("bench", "", "pw")
    actor = lifecycle.Actor.for_user(user)
    key = KEY
    edits.plan_create(
        key=key, name="Bench", actor=actor,
        control={"model": "openai:gpt-4o-2024-08-06"},
        candidate={"model": "anthropic:claude-sonnet-4-20250514"},
        phases=[{"kind": "ab_split", "percent": 50.0, "min_duration_minutes": 60,
                 "min_samples": 1000, "auto_advance": False},
                {"kind": "rollout", "steps": [100]}],
    )  # fmt: skip
    lifecycle.plan_start(plan_key=key, actor=actor)
    plan = MigrationPlan.objects.get(key=key)
    now = timezone.now()
    began = aggregation.window_start(now - timedelta(minutes=minutes))
    PlanRun.objects.filter(pk=plan.current_run_id).update(started_at=began)
    PlanStage.objects.filter(pk=plan.current_stage_id).update(started_at=began)
    MigrationPlan.objects.filter(pk=plan.pk).update(step_started_at=began)
    stage = plan.current_stage

    rng = np.random.default_rng(1)
    per_window = max(1, outcomes // (minutes * 2))
    t0 = time.perf_counter()
    totals: dict[str, list[ArmAggregates]] = {"control": [], "candidate": []}
    rows = []
    for m in range(minutes):
        window = began + timedelta(minutes=m)
        for arm, scale in (("control", 700.0), ("candidate", 760.0)):
            lat = rng.lognormal(0, 0.35, per_window) * scale
            ttft = lat / 4
            errs = rng.random(per_window) < 0.01
            delta = aggregation.outcome_delta(
                OutcomeFacts(
                    arm,
                    f"u{i}",
                    window,
                    float(lat[i]),
                    float(ttft[i]),
                    "timeout" if errs[i] else "",
                    0.002,
                )  # fmt: skip
                for i in range(per_window)
            ) + aggregation.feedback_delta(rng.random(per_window // 5).round())
            totals[arm].append(delta)
            rows.append(
                WindowAggregate(
                    stage=stage,
                    arm=arm,
                    window=window,
                    requests=delta.requests,
                    errors=delta.errors,
                    latency_sum=delta.latency_sum,
                    cost_n=delta.cost_n,
                    cost_sum=delta.cost_sum,
                    feedback_n=delta.feedback_n,
                    feedback_sum=delta.feedback_sum,
                    data=aggregate_json.to_json(delta),
                )  # fmt: skip
            )
    with transaction.atomic():
        WindowAggregate.objects.bulk_create(rows, batch_size=2000)
        for arm, parts in totals.items():
            merged = ArmAggregates.merge(parts)
            StageAggregate.objects.create(
                stage=stage, arm=arm, requests=merged.requests, data=aggregate_json.to_json(merged)
            )
    print(
        f"windows: {len(rows)} rows ({per_window * len(rows):,} outcomes) "
        f"built in {time.perf_counter() - t0:.1f} s"
    )
    engine.plan_evaluate(plan_id=plan.pk)
    real = Evaluation.objects.filter(plan=plan).latest("pk")
    Evaluation.objects.bulk_create(
        (
            Evaluation(
                plan=plan,
                run_id=real.run_id,
                stage_id=real.stage_id,
                plan_version=real.plan_version,
                action="hold",
                decision=real.decision,
                bounds=real.bounds,
                control_requests=real.control_requests,
                candidate_requests=real.candidate_requests,
                created_at=began + timedelta(seconds=15 * i),
            )  # fmt: skip
            for i in range(minutes * 4)
        ),
        batch_size=5000,
    )
    plan.refresh_from_db()
    for i in range(audit_events):
        lifecycle.record_edit(plan, actor=actor, action="edit", reason=f"note {i}", publish=False)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return key


def arriving(key: str):
    """Before each request, a batch of 50 outcomes through ingest into the current minute,
    as live traffic does: the current hour's rows change, so the page reads them again."""
    from django.db import transaction
    from django.utils import timezone

    from migrations_app.models import MigrationPlan
    from migrations_app.outcomes import rollup
    from migrations_app.outcomes.aggregation import OutcomeFacts, window_start

    stage_id = MigrationPlan.objects.get(key=key).current_stage_id
    batch = [0]

    def step() -> None:
        batch[0] += 1
        window = window_start(timezone.now())
        outcomes = [
            (stage_id, OutcomeFacts(arm, f"live{batch[0]}-{i}", window, 700.0 + i, 150.0, "",
                                    0.002))
            for i in range(25) for arm in ("control", "candidate")
        ]  # fmt: skip
        with transaction.atomic():
            rollup.aggregate(outcomes, [])

    return step


def cold() -> None:
    """Before each request, an empty block cache: the first view of a plan in a process."""
    from migrations_app.dashboard import window_cache

    window_cache.CACHE.clear()


def timed(client, path: str, runs: int, before=None) -> tuple[float, float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(path)  # warm: templates compiled, connection open
    samples = []
    for _ in range(runs):
        if before is not None:
            before()
        start = time.perf_counter()
        response = client.get(path)
        samples.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    with CaptureQueriesContext(connection) as captured:
        client.get(path)
    samples.sort()
    p95 = samples[min(len(samples) - 1, int(0.95 * len(samples)))]
    return statistics.median(samples), p95, len(captured.captured_queries)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--outcomes", type=int, default=1_000_000)
    parser.add_argument("--database", help="default: BENCH_DATABASE_URL's, else its own")
    parser.add_argument("--redis-db", type=int)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--profile", metavar="FILE")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    db_url = database_url("turnout_bench_dashboard")
    if args.database:
        db_url = urlunsplit(urlsplit(db_url)._replace(path=f"/{args.database}"))
    redis = redis_url(10) if args.redis_db is None else f"redis://127.0.0.1:6379/{args.redis_db}"
    setup(db_url, redis, fresh=args.smoke or not args.reuse)
    if args.smoke:
        args.runs = 1
        key = build(1000, minutes=6 * 60, audit_events=20)
    else:
        key = KEY if args.reuse else build(args.outcomes)
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(username="bench"))
    if args.profile:
        import cProfile

        client.get(f"/plans/{key}/?hours=168")
        cProfile.runctx(
            "for _ in range(5): client.get(path)",
            globals(),
            {"client": client, "path": f"/plans/{key}/?hours=168"},
            args.profile,
        )
    print(f"server time over {args.runs} requests (in-process, full request stack):")
    week = f"/plans/{key}/?hours=168"
    for label, path, before in (
        ("dashboard, last 24 h (default)", f"/plans/{key}/", None),
        ("dashboard, last 72 h", f"/plans/{key}/?hours=72", None),
        ("dashboard, 7 days (whole run)", week, None),
        ("7 days, outcomes arriving", week, arriving(key)),
        ("7 days, cold (first view)", week, cold),
        ("live partial, last 24 h", f"/plans/{key}/live", None),
        ("report", f"/plans/{key}/report", None),
    ):
        median, p95, queries = timed(client, path, args.runs, before)
        print(f"  {label:32s} median {median:6.1f} ms  p95 {p95:6.1f} ms  {queries} queries")


if __name__ == "__main__":
    main()
