"""turnout.providers.Adapters: one adapter per arm per process, made once however many threads
ask for it at the same moment (a worker task's 64 threads used to make 64)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from turnout.providers import REGISTRY, Adapters, Provider
from turnout.routing import ArmSpec


class Counting(Provider):
    kind = "counting-test"
    made: list[Counting] = []
    lock = threading.Lock()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        time.sleep(0.02)  # a vendor client is slow to make (an SSL context): races widen
        self.closed = False
        with Counting.lock:
            Counting.made.append(self)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[Counting]:
    monkeypatch.setitem(REGISTRY, Counting.kind, Counting)
    monkeypatch.setattr(Counting, "made", [])
    return Counting


def arm(model: str) -> ArmSpec:
    return ArmSpec(provider="test", kind=Counting.kind, model=model)


def test_threads_asking_at_once_share_one_adapter_made_once(counting: type[Counting]) -> None:
    adapters = Adapters()
    start = threading.Barrier(32)

    def get(i: int) -> tuple[Provider, bool]:
        start.wait()
        return adapters.get(arm("a" if i % 2 else "b"))

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(get, range(32)))
    assert len(counting.made) == 2  # one per arm
    assert {id(p) for p, _ in got} == {id(p) for p in counting.made}
    assert not any(owned for _, owned in got)
    assert not any(p.closed for p in counting.made)
    adapters.close()
    assert all(p.closed for p in counting.made)


def test_after_close_the_caller_owns_what_it_gets(counting: type[Counting]) -> None:
    adapters = Adapters()
    kept, owned = adapters.get(arm("a"))
    assert not owned and adapters.get(arm("a")) == (kept, False)
    adapters.close()
    fresh, owned = adapters.get(arm("a"))
    assert isinstance(kept, Counting)
    assert owned and fresh is not kept and kept.closed
