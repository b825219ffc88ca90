"""The suite's support for pytest-xdist (tests/conftest.py): each worker its own Redis database
and its own ports, so that two workers' servers, queues and caches never meet."""

from __future__ import annotations

import pytest

from tests.conftest import free_port, worker_redis_url


def test_each_worker_gets_its_own_redis_database() -> None:
    assert worker_redis_url("redis://127.0.0.1:6379/15", 0) == "redis://127.0.0.1:6379/15"
    assert worker_redis_url("redis://127.0.0.1:6379/15", 1) == "redis://127.0.0.1:6379/14"
    assert worker_redis_url("redis://127.0.0.1:6379/0", 1) == "redis://127.0.0.1:6379/15"
    assert worker_redis_url("redis://:pw@redis:6380", 2) == "redis://:pw@redis:6380/14"


# Two workers, worker 0 (even ports) included: with ports asked of the kernel (port 0) it
# never got one, as Linux hands bind() odd ports first, and every live test it ran hung.
@pytest.mark.parametrize(
    ("worker", "count"), [("gw0", 2), ("gw1", 2), ("gw0", 3), ("gw1", 3), ("gw2", 3)]
)
def test_workers_take_ports_of_their_own_residue(
    monkeypatch: pytest.MonkeyPatch, worker: str, count: int
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    index = int(worker.removeprefix("gw"))
    assert all(free_port() % count == index for _ in range(20))
