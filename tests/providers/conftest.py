"""A provider simulator per test module, reset before each test, and adapters pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from turnout.providers import Provider, RetryPolicy, provider_class

from migrations_app.simulator import Profile, Simulator

#: Fast enough for a test suite, slow enough that time to first token is measurably earlier
#: than the last byte when streaming.
FAST = Profile(latency_median_ms=8.0, latency_p95_ms=16.0, ttft_fraction=0.2)

#: Retries as in production (attempt cap, jitter, Retry-After), with back-off short enough for
#: tests; ``sleeper`` records the waits instead of sleeping.
TEST_RETRY = RetryPolicy(max_attempts=3, base_s=0.05, max_backoff_s=0.2, max_total_s=5.0)


class Sleeper:
    """Stands in for ``time.sleep`` in the retry loop: records each wait it is asked for."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with Simulator(seed=7, default=FAST) as sim:
        yield sim


@pytest.fixture
def sim(simulator: Simulator) -> Simulator:
    simulator.reset()
    return simulator


@pytest.fixture
def sleeper() -> Sleeper:
    return Sleeper()


#: How each adapter flavour reaches the simulator: (kind, base_url suffix, extra params).
FLAVOURS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "openai-chat": ("openai", "/v1", {}),
    "openai-responses": ("openai", "/v1", {"api": "responses"}),
    "openai_compatible": ("openai_compatible", "/v1", {}),
    "anthropic": ("anthropic", "", {}),
    "gemini": ("gemini", "", {}),
}


@pytest.fixture
def make(sim: Simulator, sleeper: Sleeper) -> Callable[..., Provider]:
    """``make(flavour, model=..., retry=..., params=...)``: an adapter at the simulator."""
    made: list[Provider] = []

    def build(
        flavour: str,
        *,
        model: str = "model-a",
        retry: RetryPolicy = TEST_RETRY,
        params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Provider:
        kind, suffix, extra = FLAVOURS[flavour]
        provider = provider_class(kind)(
            model=model,
            api_key="sk-test",
            base_url=sim.url + suffix,
            params={**extra, **(params or {})},
            retry=retry,
            sleep=sleeper,
            **kwargs,
        )
        made.append(provider)
        return provider

    yield build  # type: ignore[misc]
    for provider in made:
        provider.close()
