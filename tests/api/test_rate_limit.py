"""The per-key rate limit: per-process windows synced to Redis in batches.

Several web processes are simulated in one by giving each its own window table; the second
is pinned so that a run never straddles two windows.
"""

from __future__ import annotations

import random
import secrets
import time
import types
from collections.abc import Callable, Iterator

import pytest
from django.conf import settings
from django.test import override_settings

from migrations_app.api import auth

needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="the shared counter is in Redis")


def _identity() -> auth.KeyIdentity:
    return auth.KeyIdentity(1, "bench", secrets.token_hex(4), frozenset({"decide"}), None)


@pytest.fixture
def pinned_second(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    second = 4_000_000_000 + secrets.randbelow(1_000_000)  # a window no other run uses
    monkeypatch.setattr(
        auth, "time", types.SimpleNamespace(time=lambda: second + 0.5, monotonic=time.monotonic)
    )
    yield


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch sizes sent to Redis, one entry per round trip."""
    sent: list[int] = []
    real = auth._sync

    def counting(prefix: str, second: int, count: int) -> int:
        sent.append(count)
        return real(prefix, second, count)

    monkeypatch.setattr(auth, "_sync", counting)
    return sent


def _processes(
    monkeypatch: pytest.MonkeyPatch, count: int
) -> list[Callable[[auth.KeyIdentity], int | None]]:
    """One ``rate_limited`` per simulated process, each with its own windows."""

    def process(windows: dict[str, auth._Window]) -> Callable[[auth.KeyIdentity], int | None]:
        def call(identity: auth.KeyIdentity) -> int | None:
            monkeypatch.setattr(auth, "_windows", windows)
            return auth.rate_limited(identity)

        return call

    return [process({}) for _ in range(count)]


@needs_redis
@override_settings(TURNOUT_RATE_LIMIT_PER_KEY=1000)
def test_one_process_admits_exactly_the_limit_in_batches(
    pinned_second: None, syncs: list[int]
) -> None:
    identity = _identity()
    verdicts = [auth.rate_limited(identity) for _ in range(1300)]
    assert verdicts.count(None) == 1000
    assert set(verdicts[1000:]) == {1}  # integer seconds, for Retry-After
    assert syncs == [10] * 100  # one round trip per 1 % of the limit, not per request


@needs_redis
@pytest.mark.parametrize("seed", range(6))
@override_settings(TURNOUT_RATE_LIMIT_PER_KEY=1000)
def test_processes_together_stay_within_one_batch_each_of_the_limit(
    monkeypatch: pytest.MonkeyPatch, pinned_second: None, seed: int
) -> None:
    identity = _identity()
    processes = _processes(monkeypatch, 3)
    draw = random.Random(seed)
    # Seed 0 is strict round robin; the others are skewed interleavings (one process far
    # busier than another), which is where a stale view of the shared counter hurts most.
    weights = [1, 1, 1] if seed == 0 else [draw.random() ** 3 for _ in processes]
    admitted = 0
    for step in range(5000):
        call = processes[step % 3] if seed == 0 else draw.choices(processes, weights)[0]
        admitted += call(identity) is None
    batch = 10
    # Each process can add one refused request (the one that found the budget spent) to the
    # shared counter, so the key can fall short by at most that.
    assert 1000 - 3 <= admitted <= 1000 + 3 * batch


@needs_redis
@override_settings(TURNOUT_RATE_LIMIT_PER_KEY=50)
def test_small_limits_are_exact_across_processes(
    monkeypatch: pytest.MonkeyPatch, pinned_second: None, syncs: list[int]
) -> None:
    identity = _identity()
    processes = _processes(monkeypatch, 4)
    admitted = sum(processes[i % 4](identity) is None for i in range(400))
    assert admitted == 50
    assert set(syncs) == {1}


@override_settings(TURNOUT_RATE_LIMIT_PER_KEY=300)
def test_without_redis_each_process_still_enforces_the_limit(
    monkeypatch: pytest.MonkeyPatch, pinned_second: None
) -> None:
    def unreachable(prefix: str, second: int, count: int) -> int:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(auth, "_sync", unreachable)
    identity = _identity()
    verdicts = [auth.rate_limited(identity) for _ in range(400)]
    assert verdicts.count(None) == 300 and verdicts[300:] == [1] * 100


@override_settings(TURNOUT_RATE_LIMIT_PER_KEY=0)
def test_zero_means_unlimited(pinned_second: None, syncs: list[int]) -> None:
    identity = _identity()
    assert all(auth.rate_limited(identity) is None for _ in range(500))
    assert syncs == []


@needs_redis
@override_settings(TURNOUT_RATE_LIMIT_PER_KEY=200)
def test_a_new_second_is_a_new_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [4_100_000_000.25 + secrets.randbelow(1_000_000)]
    monkeypatch.setattr(
        auth, "time", types.SimpleNamespace(time=lambda: now[0], monotonic=time.monotonic)
    )
    identity = _identity()
    first = [auth.rate_limited(identity) for _ in range(250)]
    now[0] += 1.0
    second = [auth.rate_limited(identity) for _ in range(250)]
    assert first.count(None) == 200 and second.count(None) == 200
