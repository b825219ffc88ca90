"""The per-process placement cache (segment_rollup._seen): a web process's
threads share it, and one of them may clear it (past 10,000 groups) while another places a
batch. The batch must place from its own view of its groups: a full group whose entry another
thread dropped between the read and the placement was placed as if empty (a row of its own
for a value past the capacity), or raised KeyError."""

from __future__ import annotations

from typing import Any

import pytest

from migrations_app.guardrails.segments import OTHER
from migrations_app.models import SegmentAggregate
from migrations_app.outcomes import ingest, segment_rollup
from migrations_app.outcomes.segment_rollup import CAPACITY
from tests.outcomes.conftest import Everyone, outcome, segmented_plan

pytestmark = pytest.mark.django_db


class _ClearedByAnotherThread(dict[Any, Any]):
    """``_seen`` as a thread sees it when another thread's ``_seen.clear()`` lands right after
    each of its writes."""

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.clear()


def test_a_full_group_stays_full_when_another_thread_clears_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = segmented_plan("tenant")
    events = [outcome(plan, segments={"tenant": f"t{i:03d}"}) for i in range(CAPACITY)]
    assert ingest.outcomes_ingest(identity=Everyone(), payload={"events": events}).stored

    monkeypatch.setattr(segment_rollup, "_seen", _ClearedByAnotherThread())
    late = outcome(plan, segments={"tenant": "late"})
    assert ingest.outcomes_ingest(identity=Everyone(), payload={"events": [late]}).stored == 1

    rows = SegmentAggregate.objects.filter(
        stage=plan.current_stage, arm="control", dimension="tenant"
    )
    assert rows.exclude(value=OTHER).count() == CAPACITY
    assert rows.get(value=OTHER).requests == 1
