"""Replay: candidate calls per second through the Celery workers with the provider simulator
answering every call in about 200 ms, the time from start to the verdict, and the replay page's
server time for a decided replay of 10,000 items x 3 repeats.

    .venv/bin/python bench/bench_replay.py [--items 1000] [--page-items 10000] [--smoke]

Same stack as bench_shadow (its simulator and worker: PostgreSQL, Redis, a real Celery worker,
prefork x2, the real Anthropic SDK, the simulator in a process of its own). Every item has a
recorded control answer, so the figure counts candidate calls only. The clock runs from the
replay's start (its calls enqueued) to its verdict (the plan advanced).

The page: a replay of ``--page-items`` items x 3 is made in the database directly (dataset,
calls with their values), decided by ``replay.decide`` (timed), then ``/plans/<key>/replay`` is
rendered in this process through Django's test client, best and median of 20.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import SMOKE_HELP, bench_env, ensure_database, setup_django
from bench.bench_shadow import CANDIDATE, LATENCY_MS, PROVIDER_SLOTS, simulator, worker

DB = "turnout_bench_replay"
REDIS_DB = 12  # bench_shadow has 11
CONCURRENCY = 64
REPEATS = 3
GATES = [{"metric": "exact_match", "threshold": 0.9}]


def _user_and_actor() -> tuple[Any, Any]:
    from django.contrib.auth.models import User

    from migrations_app.plans import lifecycle

    user, _ = User.objects.get_or_create(username="bench")
    if not (user.is_superuser and user.is_staff):  # the dashboard's pages need staff + view
        user.is_superuser = user.is_staff = True
        user.save(update_fields=["is_superuser", "is_staff"])
    return user, lifecycle.Actor.for_user(user)


def _dataset(name: str, items: int) -> Any:
    """A dataset stored directly (the bench measures the replay, not the upload's checks)."""
    from django.utils import timezone

    from migrations_app.models import Dataset, DatasetItem

    ds = Dataset.objects.create(
        name=name, version=1, source="api", created_at=timezone.now(), created_by="bench",
        item_count=items, digest=uuid.uuid4().hex,
    )  # fmt: skip
    DatasetItem.objects.bulk_create(
        (
            DatasetItem(
                dataset=ds, index=i, tags=[f"tag-{i % 7}"], reference=f"You said: Order {i}?",
                control_answer=f"You said: Order {i}?",
                request={"messages": [{"role": "user", "content": f"Order {i}?"}], "params": {}},
            )
            for i in range(items)
        ),
        batch_size=2000,
    )  # fmt: skip
    return ds


def _plan(name: str, sim_url: str | None) -> Any:
    from migrations_app.models import MigrationPlan, ProviderConnection
    from migrations_app.plans import edits, lifecycle

    if sim_url is not None:
        ProviderConnection.objects.filter(name="anthropic").update(
            base_url=sim_url, max_concurrent_calls=PROVIDER_SLOTS, max_calls_per_second=None
        )
    user, actor = _user_and_actor()
    plan = edits.plan_create(
        key=f"replay-{uuid.uuid4().hex[:8]}",
        name="Replay bench",
        control={"model": "openai:gpt-4o-2024-08-06"},
        candidate={"model": f"anthropic:{CANDIDATE}"},
        phases=[
            {"kind": "replay", "replay": {"dataset": name, "repeats": REPEATS, "gates": GATES}},
            {"kind": "shadow", "percent": 10.0},
        ],
        owner=user,
        actor=actor,
    )
    lifecycle.plan_start(plan_key=plan.key, actor=actor)
    return MigrationPlan.objects.get(pk=plan.pk)


def throughput(env: dict[str, str], sim_url: str, items: int) -> dict[str, Any]:
    from migrations_app.models import ReplayCall, ReplayRun
    from migrations_app.replay import services, tasks

    name = f"bench-{uuid.uuid4().hex[:8]}"
    _dataset(name, items)
    plan = _plan(name, sim_url)
    with worker(env, CONCURRENCY):
        started = time.monotonic()
        run = services.replay_start(plan_id=plan.pk, created_by="bench")
        tasks.enqueue_calls(services.pending_ids(run))
        first_done = None
        while time.monotonic() - started < 900:
            time.sleep(0.2)
            run = ReplayRun.objects.get(pk=run.pk)
            if (
                first_done is None
                and not ReplayCall.objects.filter(
                    replay=run, status__in=("pending", "running")
                ).exists()
            ):
                first_done = time.monotonic() - started
            if run.status != "running":
                break
            if first_done is not None:
                tasks.sweep_replays()  # what beat does: decides a replay whose calls are in
        verdict = time.monotonic() - started
    done = ReplayCall.objects.filter(replay=run, status="done").count()
    calls_s = first_done or verdict
    return {
        "items": items, "calls": items * REPEATS, "done": done, "status": run.status,
        "calls_seconds": calls_s, "verdict_seconds": verdict, "calls_per_s": done / calls_s,
    }  # fmt: skip


def page(items: int) -> dict[str, Any]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from migrations_app.models import ReplayCall, ReplayRun
    from migrations_app.replay import decide, services

    name = f"page-{uuid.uuid4().hex[:8]}"
    _dataset(name, items)
    plan = _plan(name, None)
    run = services.replay_start(plan_id=plan.pk, created_by="bench")
    now = timezone.now()
    # Answers as the workers store them: 9 in 10 items right, the rest wrong on some repeats.
    calls = list(ReplayCall.objects.filter(replay=run).only("pk", "index", "repeat"))
    for c in calls:
        good = 1.0 if c.index % 10 or c.repeat == 0 else 0.0
        c.status, c.completed_at, c.cost_usd = "done", now, 0.0004
        c.values = {"candidate": {"exact_match": good, "reference_similarity": good},
                    "control": {"exact_match": 1.0, "reference_similarity": 1.0}}  # fmt: skip
        c.answer = {"candidate": {"text": "You said: ..." if good else "Our stores open at 9."}}
    ReplayCall.objects.bulk_update(
        calls, ["status", "completed_at", "cost_usd", "values", "answer"], batch_size=2000
    )
    started = time.perf_counter()
    decide.replay_decide(replay_id=run.pk)
    decide_s = time.perf_counter() - started
    assert ReplayRun.objects.get(pk=run.pk).status != "running"
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(_user_and_actor()[0])
    url = f"/plans/{plan.key}/replay"
    client.get(url)  # warm: templates compiled, connection open
    times = []
    for _ in range(20):
        with CaptureQueriesContext(connection) as queries:
            t0 = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - t0)
        assert response.status_code == 200
    return {
        "items": items, "decide_s": decide_s, "best_ms": 1000 * min(times),
        "median_ms": 1000 * statistics.median(times), "queries": len(queries),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--page-items", type=int, default=10_000)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.items, args.page_items = 20, 50

    env = bench_env(DB, REDIS_DB)
    ensure_database(env["DATABASE_URL"])
    setup_django(env)
    from django.conf import settings

    # The tasks this process enqueues hold as many calls as the worker runs at once.
    settings.TURNOUT_SHADOW_CONCURRENCY = CONCURRENCY
    import httpx

    with tempfile.TemporaryDirectory() as tmp, simulator(Path(tmp)) as sim_url:
        httpx.post(f"{sim_url}/_sim/reset")
        t = throughput(env, sim_url, args.items)
        peak = httpx.get(f"{sim_url}/_sim/stats").json()["peak_in_flight"]
    p = page(args.page_items)
    print(f"simulator latency {LATENCY_MS:.0f} ms per call; worker: prefork x2, {CONCURRENCY} "
          f"calls per task at once (peak in flight at the simulator: {peak})")  # fmt: skip
    print(
        f"replay of {t['items']} items x {REPEATS}: {t['done']}/{t['calls']} candidate calls in "
        f"{t['calls_seconds']:.1f} s = {t['calls_per_s']:.1f} calls/s (goal >= 200); verdict "
        f"{t['status']} {t['verdict_seconds']:.1f} s after the start"
    )
    print(
        f"replay page, {p['items']} items x {REPEATS} decided (decide took {p['decide_s']:.2f} s): "
        f"server time over 20 requests best {p['best_ms']:.1f} ms, median {p['median_ms']:.1f} ms "
        f"(goal < 300 ms), {p['queries']} queries"
    )
    if t["done"] < t["calls"] or t["status"] == "running":
        raise SystemExit("not every call was done: the figures above are not a measurement")


if __name__ == "__main__":
    main()
