"""Per-provider call limits shared through Redis (and per process without it)."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from migrations_app.shadow import provider_limits


def fresh(concurrency: int, per_second: int | None = None) -> provider_limits.Limit:
    return provider_limits.Limit(f"test-{uuid.uuid4().hex[:8]}", concurrency, per_second)


def peak_concurrency(limit: provider_limits.Limit, calls: int, hold: float) -> tuple[int, int]:
    """Run ``calls`` holders at once, each holding a slot ``hold`` seconds; the most that held
    one at the same moment, and how many got one."""
    lock = threading.Lock()
    now = peak = done = 0

    def one(_: int) -> None:
        nonlocal now, peak, done
        with provider_limits.provider_slot(limit, lease=30, wait=30):
            with lock:
                now += 1
                peak = max(peak, now)
            time.sleep(hold)
            with lock:
                now -= 1
                done += 1

    with ThreadPoolExecutor(max_workers=calls) as pool:
        list(pool.map(one, range(calls)))
    return peak, done


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "per-process"])
def test_calls_at_once_never_exceed_the_limit(settings, shared: bool) -> None:
    if not shared:
        settings.REDIS_URL = ""
    peak, done = peak_concurrency(fresh(4), calls=24, hold=0.02)
    assert done == 24
    assert 2 <= peak <= 4


def test_the_limit_is_shared_by_every_holder_of_the_key() -> None:
    """Two workers see one count: slots taken under the same provider name elsewhere (here,
    straight in Redis, as another process would) leave fewer for this one."""
    limit = fresh(3)
    for _ in range(3):
        assert provider_limits._try_redis(limit, uuid.uuid4().hex, 30.0) == 1
    assert provider_limits.in_flight(limit.name) == 3
    with pytest.raises(provider_limits.SlotTimeout):
        with provider_limits.provider_slot(limit, lease=30, wait=0.05):
            pass  # pragma: no cover - never entered


def test_a_dead_holders_slot_is_free_again_after_its_lease() -> None:
    limit = fresh(1)
    assert provider_limits._try_redis(limit, "dead-worker", 0.3) == 1  # never released
    with provider_limits.provider_slot(limit, lease=30, wait=5):
        assert provider_limits.in_flight(limit.name) == 1  # ours; the dead one's lease is over
    assert provider_limits.in_flight(limit.name) == 0


def test_calls_per_second_are_capped() -> None:
    limit = fresh(100, per_second=5)
    taken = [provider_limits._try_redis(limit, uuid.uuid4().hex, 30.0) for _ in range(20)]
    # 20 tries in well under a second straddle at most one second boundary.
    assert 5 <= taken.count(1) <= 10
    assert set(taken) == {1, -1}


def test_a_release_frees_the_slot_at_once() -> None:
    limit = fresh(1)
    for _ in range(5):
        with provider_limits.provider_slot(limit, lease=30, wait=0.05):
            assert provider_limits.in_flight(limit.name) == 1
    assert provider_limits.in_flight(limit.name) == 0


def test_an_unreachable_redis_is_no_slot_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller gives the sample back for later (shadow.NotCalled), rather than calling
    without the shared count or failing the whole batch."""
    import redis

    def down(*args: object) -> int:
        raise redis.ConnectionError("Redis is down")

    monkeypatch.setattr(provider_limits, "_try_redis", down)
    with pytest.raises(provider_limits.SlotTimeout, match="unreachable"):
        with provider_limits.provider_slot(fresh(4), lease=30, wait=5):
            pass  # pragma: no cover - never entered
