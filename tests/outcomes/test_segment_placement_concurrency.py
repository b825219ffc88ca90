"""The segment placement (segment_rollup._placement): the bound the module
promises, at most CAPACITY values with rows of their own per stage, arm and dimension (plus
``other``), under two folds of the same stage at once.

Placement once read the stored values before any lock, so two batches of different units
that placed new values at the same moment each saw the group with room and each filled it:
up to CAPACITY rows per batch in flight (measured against gunicorn, 2 workers x 4 threads, 8
clients: 300 rows for CAPACITY 100). Values are now placed by folds, each holding its
stage's lock until it commits (segment_rollup.fold). The test overlaps two folds, each of
its own batch, deterministically: the first waits after its placement until the second has
finished or waits on a lock the first holds, whatever the machine's speed.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from django.db import connection

from migrations_app.guardrails.segments import OTHER
from migrations_app.models import PendingRollup, SegmentAggregate
from migrations_app.outcomes import ingest, segment_rollup
from migrations_app.outcomes.segment_rollup import CAPACITY
from tests.outcomes.conftest import Everyone, outcome, segmented_plan

pytestmark = pytest.mark.django_db(transaction=True)


def _ingest(events: list[dict[str, Any]]) -> Any:
    return ingest.outcomes_ingest(identity=Everyone(), payload={"events": events})


def test_two_folds_placing_new_values_at_once_keep_the_group_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = segmented_plan("tenant")
    # Each batch: CAPACITY new tenants, units of its own (no unit-totals row in common).
    first = [outcome(plan, segments={"tenant": f"a{i:03d}"}) for i in range(CAPACITY)]
    second = [outcome(plan, segments={"tenant": f"b{i:03d}"}) for i in range(CAPACITY)]

    placed = threading.Event()
    second_done = threading.Event()
    second_pid: list[int] = []
    errors: list[BaseException] = []
    original = segment_rollup._placement
    settings = connection.settings_dict

    def second_waits_or_is_done() -> None:
        # A connection of its own, outside the first batch's transaction: pg_locks as it is now.
        with psycopg.connect(
            dbname=settings["NAME"], user=settings["USER"], password=settings["PASSWORD"] or None,
            host=settings["HOST"] or None, port=settings["PORT"] or None, autocommit=True,
        ) as watcher:  # fmt: skip
            while not second_done.wait(0.01):
                if (
                    second_pid
                    and watcher.execute(
                        "SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted", second_pid
                    ).fetchone()
                ):
                    return

    def placement(keys: set[Any]) -> Any:
        place = original(keys)
        if threading.current_thread().name == "first" and not placed.is_set():
            placed.set()
            second_waits_or_is_done()
        return place

    monkeypatch.setattr(segment_rollup, "_placement", placement)
    monkeypatch.setattr(segment_rollup, "_fold_soon", lambda stage_ids: None)  # folds below
    stage_ids = [plan.current_stage_id]

    def run(name: str) -> None:
        try:
            if name == "first":
                assert _ingest(first).stored == CAPACITY
                segment_rollup.fold(stage_ids)
            else:
                placed.wait()
                assert _ingest(second).stored == CAPACITY  # after the first fold's delete
                connection.ensure_connection()
                second_pid.append(connection.connection.info.backend_pid)
                segment_rollup.fold(stage_ids)
        except BaseException as exc:
            errors.append(exc)
        finally:
            (second_done if name == "second" else placed).set()
            connection.close()

    threads = [threading.Thread(target=run, args=(n,), name=n) for n in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert not PendingRollup.objects.exists()  # each batch folded, once

    rows = SegmentAggregate.objects.filter(
        stage=plan.current_stage, arm="control", dimension="tenant"
    )
    assert sum(rows.values_list("requests", flat=True)) == 2 * CAPACITY  # each counted once
    assert rows.exclude(value=OTHER).count() <= CAPACITY
