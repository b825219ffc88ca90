from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from migrations_app.api.auth import forget_keys
from migrations_app.models import MigrationPlan
from migrations_app.routing.snapshots import forget_served
from tests.factories import started_plan

_units = itertools.count()


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    forget_keys()
    forget_served()
    yield
    forget_keys()


class Everyone:
    """An API key identity that may see every plan."""

    plan_ids = None

    def may_see(self, plan_pk: int) -> bool:
        return True


def split_plan(key: str | None = None) -> MigrationPlan:
    """A plan running its A/B split stage (10 % candidate)."""
    return started_plan(key, advances=1)  # shadow -> A/B split


def segmented_plan(*dimensions: str, key: str | None = None) -> MigrationPlan:
    """A plan in its A/B split with these segment dimensions (ingest's plan cache forgotten, so
    the next batch reads them)."""
    from migrations_app.outcomes import ingest

    plan = split_plan(key)
    MigrationPlan.objects.filter(pk=plan.pk).update(segment_dimensions=list(dimensions))
    plan.refresh_from_db()
    ingest._plan_cache.clear()
    return plan


def outcome(plan: MigrationPlan, **fields: Any) -> dict[str, Any]:
    event = {
        "id": uuid.uuid4().hex,
        "decision_id": uuid.uuid4().hex,
        "plan": plan.key,
        "run": plan.current_run.number if plan.current_run else 0,
        "plan_version": plan.version,
        "arm": "control",
        "unit": f"user-{next(_units)}",
        "ts": time.time() - 1,
        "latency_ms": 800.0,
        "ttft_ms": 150.0,
        "error": None,
        "input_tokens": 1000,
        "output_tokens": 200,
    }
    event.update(fields)
    return event
