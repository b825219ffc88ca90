"""Concurrent ingest on real PostgreSQL: threads (each with its own connection) send overlapping
batches (the same event ids and units, in different orders and cuts) at the same moment, with
feedback crossing its outcomes and the sweeper running. Every event is stored once, the
aggregates equal a recomputation from the raw rows, and no transaction dies of a deadlock.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from migrations_app.models import Feedback, Outcome
from migrations_app.outcomes import ingest, store
from migrations_app.outcomes.event_checks import IngestResult
from migrations_app.outcomes.feedback import apply_held_feedback, feedback_ingest
from tests.outcomes.conftest import Everyone, outcome, split_plan
from tests.outcomes.test_aggregates_property import check

pytestmark = pytest.mark.django_db(transaction=True)


def run_together(*targets: Callable[[], None]) -> None:
    """Start the targets at one barrier, each in its own thread and connection; re-raise
    whatever any of them raised (a deadlock would surface here as an OperationalError)."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def wrap(target: Callable[[], None]) -> None:
        try:
            barrier.wait()
            target()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=wrap, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "an ingest thread never finished"
    assert not errors, errors


def cuts(events: list[Any], size: int) -> list[list[Any]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def make_events(plan: Any, n: int, rng: random.Random) -> list[dict[str, Any]]:
    now = time.time()
    return [
        outcome(
            plan,
            unit=f"u{rng.randrange(40)}",
            arm=rng.choice(["control", "candidate"]),
            ts=now - 1 - rng.uniform(0, 170),
            latency_ms=rng.lognormvariate(6, 0.6),
            error=rng.choice([None, None, None, "timeout", "server_error"]),
            input_tokens=None if rng.random() < 0.1 else 1000,
        )
        for _ in range(n)
    ]


@pytest.fixture(params=[True, False], ids=["fast-path", "portable-path"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "FAST_PATH", request.param)


def test_overlapping_outcome_batches_at_once_are_stored_once_and_aggregated_exactly(
    path: None,
) -> None:
    rng = random.Random(11)
    plan = split_plan()
    events = make_events(plan, 1500, rng)
    shuffled = events[:]
    rng.shuffle(shuffled)
    orders = [cuts(events, 250), cuts(events[::-1], 200), cuts(shuffled, 300)]
    results: list[IngestResult] = []
    lock = threading.Lock()

    def sender(batches: list[list[Any]]) -> Callable[[], None]:
        def send() -> None:
            for batch in batches:
                result = ingest.outcomes_ingest(identity=Everyone(), payload={"events": batch})
                with lock:
                    results.append(result)

        return send

    run_together(*(sender(order) for order in orders))

    assert sum(r.stored for r in results) == len(events)
    assert sum(r.duplicates for r in results) == 2 * len(events)
    assert Outcome.objects.filter(plan=plan).count() == len(events)
    check(plan)


def test_feedback_crossing_its_outcomes_with_the_sweeper_running_is_counted_once(
    path: None,
) -> None:
    rng = random.Random(12)
    plan = split_plan()
    events = make_events(plan, 800, rng)
    feedback = [
        {
            "id": uuid.uuid4().hex,
            "decision_id": e["decision_id"],
            "score": rng.choice([-1, 1]),
            "ts": time.time() - 1,
        }  # fmt: skip
        for e in events[::2]
    ]
    done = threading.Event()

    def outcomes(order: list[dict[str, Any]], size: int) -> Callable[[], None]:
        def send() -> None:
            for batch in cuts(order, size):
                ingest.outcomes_ingest(identity=Everyone(), payload={"events": batch})

        return send

    def feedbacks(order: list[dict[str, Any]], size: int) -> Callable[[], None]:
        def send() -> None:
            for batch in cuts(order, size):
                feedback_ingest(identity=Everyone(), payload={"events": batch})

        return send

    def sweeper() -> None:
        while not done.is_set():
            apply_held_feedback()

    def stop_sweeper_after(*targets: Callable[[], None]) -> list[Callable[[], None]]:
        remaining = [len(targets)]
        lock = threading.Lock()

        def wrapped(target: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    target()
                finally:
                    with lock:
                        remaining[0] -= 1
                        if remaining[0] == 0:
                            done.set()

            return run

        return [wrapped(t) for t in targets]

    run_together(
        *stop_sweeper_after(
            outcomes(events, 100),
            outcomes(events[::-1], 150),
            feedbacks(feedback, 50),
            feedbacks(feedback[::-1], 80),
        ),
        sweeper,
    )
    apply_held_feedback()  # the pairs whose transactions crossed at the very end

    assert Outcome.objects.filter(plan=plan).count() == len(events)
    linked = Feedback.objects.filter(pk__in=[f["id"] for f in feedback], outcome__isnull=False)
    assert linked.count() == len(feedback)
    check(plan)  # feedback sums and cluster sums included: each feedback counted once
