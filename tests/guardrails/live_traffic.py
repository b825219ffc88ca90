"""What the engine's live tests share: the application's traffic through the real SDK, and
waiting for the worker and beat to move a plan."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import turnout

from migrations_app.api.keys import apikey_create
from migrations_app.models import MigrationPlan
from tests.factories import started_plan

# Waiting for a process to do something is not a speed assertion: this bounds how long a
# broken build hangs before failing, far above what a healthy run needs.
PATIENCE_SECONDS = 240.0

# A request's chance of failing, given its decision, its unit's attributes and the requests
# sent before it.
ErrorRate = Callable[[turnout.Decision, Mapping[str, Any], int], float]


def drive(
    client: turnout.Client,
    plan_key: str,
    *,
    error_rate: ErrorRate,
    until: Callable[[], bool],
    seed: int,
    users: int | None = None,
    attributes: Callable[[int], dict[str, Any]] | None = None,
) -> int:
    """Rounds of 500 requests, decided and reported by the SDK, until ``until()``; returns the
    requests sent. Each request comes from a new user, or with ``users``, from one of that many
    sticky users (each with its ``attributes``)."""
    rng = np.random.default_rng(seed)
    fresh = itertools.count()
    sent = 0
    wait_until(lambda: plan_key in client.snapshot.plans)
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not until():
        assert time.monotonic() < deadline, f"gave up after {sent} requests"
        ids = rng.integers(0, users, 500).tolist() if users else itertools.islice(fresh, 500)
        for i in ids:
            attrs = attributes(i) if attributes else {}
            d = client.decide(plan_key, unit=f"user-{i}", attributes=attrs or None)
            failed = rng.random() < error_rate(d, attrs, sent)
            client.report(
                d,
                latency_ms=float(800 * np.exp(rng.normal(0, 0.4))),
                ttft_ms=float(150 * np.exp(rng.normal(0, 0.3))),
                error="server_error" if failed else None,
                input_tokens=1200,
                output_tokens=300,
            )
            sent += 1
        client.flush()
        time.sleep(0.05)
    return sent


def wait_until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def status_of(key: str) -> str:
    return MigrationPlan.objects.get(key=key).status


def app_key() -> str:
    return apikey_create(name="app", scopes=["decide", "report"])[1]


# Rolls back when the candidate's error rate is over 1.5 times control's.
ERROR_RATE_ROLLBACK = {
    "metric": "error_rate",
    "tolerance_kind": "relative",
    "tolerance": 1.5,
    "action": "rollback",
}


def held_ab_split(*, min_duration_minutes: int) -> dict[str, Any]:
    """A 50 % A/B phase that does not advance during a test (it needs a million samples): only
    a guardrail moves the plan."""
    return {
        "kind": "ab_split",
        "percent": 50.0,
        "steps": [],
        "min_duration_minutes": min_duration_minutes,
        "min_samples": 1_000_000,
    }


def start_plan(key: str, **overrides: Any) -> str:
    """A started plan and an SDK key for its application."""
    started_plan(key, **overrides)
    return app_key()
