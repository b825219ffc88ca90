"""Datasets' test data: a plan in shadow with samples stored through the real ingest (redacted
as production stores them), and outcomes carrying segments (the samples' tags)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from migrations_app.models import MigrationPlan
from migrations_app.outcomes import ingest as outcome_ingest
from migrations_app.plans import lifecycle
from migrations_app.shadow import samples
from tests.factories import make_plan, person
from tests.outcomes.conftest import Everyone, outcome


def shadow_plan(key: str | None = None, **fields: Any) -> MigrationPlan:
    """A plan in its shadow stage, with ``fields`` set first (e.g. segment dimensions)."""
    plan = make_plan(key)
    MigrationPlan.objects.filter(pk=plan.pk).update(**fields)
    lifecycle.plan_start(plan_key=plan.key, actor=person())
    outcome_ingest._plan_cache.clear()
    return MigrationPlan.objects.select_related("current_run").get(pk=plan.pk)


def item(content: str = "Where is my order?", **fields: Any) -> dict[str, Any]:
    """A dataset item as a JSONL line or an API body holds it."""
    return {"request": {"messages": [{"role": "user", "content": content}]}, **fields}


def store_samples(
    plan: MigrationPlan,
    count: int,
    *,
    ts: float | None = None,
    segments: dict[str, str] | None = None,
    **control: Any,
) -> list[str]:
    """``count`` shadow samples through the ingest (and, with ``segments``, the control outcome
    of each decision carrying them); their ids."""
    events, outcomes = [], []
    for i in range(count):
        decision = uuid.uuid4().hex
        events.append(
            {
                "id": uuid.uuid4().hex,
                "decision_id": decision,
                "plan": plan.key,
                "run": plan.current_run.number,
                "plan_version": plan.version,
                "unit": f"user-{i}",
                "ts": ts if ts is not None else time.time(),
                "request": {
                    "messages": [{"role": "user", "content": f"Question {i}: order {1000 + i}?"}],
                    "params": {"temperature": 0.2},
                },
                "control": {"text": f"Answer {i}", "latency_ms": 900.0, "error": None, **control},
            }
        )
        if segments:
            outcomes.append(outcome(plan, decision_id=decision, segments=segments))
    result = samples.shadow_samples_ingest(identity=Everyone(), payload={"samples": events})
    assert result.stored == count and not result.rejected, result.to_dict()
    if outcomes:
        stored = outcome_ingest.outcomes_ingest(identity=Everyone(), payload={"events": outcomes})
        assert stored.stored == count and not stored.rejected, stored.to_dict()
    return [e["id"] for e in events]
