"""Two transactions racing on real PostgreSQL: one holds a row lock until the other is seen
waiting on it (in ``pg_stat_activity``, not guessed from a sleep), then commits."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection, transaction

from tests.conftest import eventually


def waiting_on_a_lock() -> int:
    """How many sessions of this test database wait on a lock now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(cursor.fetchone()[0])


def first_holds_the_lock(
    first: Callable[[], object], second: Callable[[], object]
) -> dict[str, Any]:
    """Run ``first`` in a transaction kept open until ``second`` (another thread, so another
    connection) is seen waiting on a lock in PostgreSQL; then let ``first`` commit. Returns
    what each raised, if anything (``{"first": exc, "second": exc}``)."""
    done, release = threading.Event(), threading.Event()
    raised: dict[str, Any] = {}

    def hold() -> None:
        try:
            with transaction.atomic():
                first()
                done.set()
                release.wait(30)
        except Exception as exc:  # asserted by the caller
            raised["first"] = exc
            done.set()
        finally:
            connection.close()

    def follow() -> None:
        try:
            second()
        except Exception as exc:  # asserted by the caller
            raised["second"] = exc
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert done.wait(30)
    follower = threading.Thread(target=follow)
    follower.start()
    try:
        assert eventually(lambda: waiting_on_a_lock() >= 1, timeout=30)
    finally:
        release.set()
        holder.join()
        follower.join()
    return raised
