"""A fold's chunk is bounded by the pending rows' bytes as well as their number
(segment_rollup.FOLD_BYTES): a pending row holds a whole batch, up to
TURNOUT_INGEST_MAX_BATCH events (1,000 by default, up to 100,000), so FOLD_ROWS alone let one
ingest request fold 100 batches of 1,000 segmented outcomes (~38 MB of JSON: ~780 MB and ~6 s
in the web process, review of the fold). A read still folds everything, chunk after chunk,
also when a chunk stopped at the bytes before FOLD_ROWS."""

from __future__ import annotations

from typing import Any

import pytest
from django.db.models.functions import Length

from migrations_app.models import MigrationPlan, PendingRollup
from migrations_app.outcomes import ingest, segment_rollup
from migrations_app.outcomes.segment_rollup import stage_segments
from tests.outcomes.conftest import Everyone, outcome, segmented_plan

# Not transaction=True: the ingests' on_commit folds never run, so only the folds below do.
pytestmark = pytest.mark.django_db


def _ingest(events: list[dict[str, Any]]) -> Any:
    return ingest.outcomes_ingest(identity=Everyone(), payload={"events": events})


def _three_pending() -> MigrationPlan:
    """A segmented plan whose stage has three pending rows, one outcome of its own tenant each."""
    plan = segmented_plan("tenant")
    for b in range(3):
        assert _ingest([outcome(plan, segments={"tenant": f"t{b}"})]).stored == 1
    return plan


def test_a_chunk_stops_at_fold_bytes_and_a_read_folds_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = segmented_plan("tenant")
    stage_id = plan.current_stage_id
    for b in range(5):
        batch = [outcome(plan, segments={"tenant": f"t{b}"}) for _ in range(20)]
        assert _ingest(batch).stored == 20
    pending = PendingRollup.objects.filter(stage_id=stage_id).order_by("id")
    sizes = list(
        pending.annotate(size=Length("segments") + Length("windows")).values_list("size", flat=True)
    )
    assert len(sizes) == 5
    # Room for the first two rows: the third starts at FOLD_BYTES and waits.
    monkeypatch.setattr(segment_rollup, "FOLD_BYTES", sizes[0] + sizes[1])
    segment_rollup.fold([stage_id], wait=False)  # an ingest's fold: one chunk
    assert pending.count() == 3
    assert sorted(stage_segments(stage_id)) == [("tenant", f"t{b}") for b in range(5)]
    assert not pending.exists()  # the read folded on past chunks of fewer than FOLD_ROWS
    assert {arms["control"].requests for arms in stage_segments(stage_id).values()} == {20}


def test_one_row_larger_than_fold_bytes_is_folded_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment_rollup, "FOLD_BYTES", 1)
    stage_id = _three_pending().current_stage_id
    pending = PendingRollup.objects.filter(stage_id=stage_id)
    segment_rollup.fold([stage_id], wait=False)
    assert pending.count() == 2
    assert len(stage_segments(stage_id)) == 3 and not pending.exists()


def test_a_read_folds_what_was_pending_when_it_began(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read (the engine's, inside its evaluation's transaction: it holds the stage's lock
    from its first chunk to its commit, so every ingest's fold meanwhile leaves the stage to
    it) folds the rows pending when it began, not on and on while ingest commits more: it
    folded until a chunk came back short, so an ingest faster than one process folding kept
    the evaluation (and its plan lock) from ever ending. Here each chunk of the read commits
    a new batch before the next chunk, as a faster ingest does."""
    monkeypatch.setattr(segment_rollup, "FOLD_ROWS", 1)
    plan = _three_pending()
    stage_id = plan.current_stage_id
    original = segment_rollup.merge_segments
    merges: list[int] = []

    def merge_then_ingest(deltas: Any) -> None:
        original(deltas)
        merges.append(len(deltas))
        assert len(merges) <= 10, "the read folds on as long as ingest adds rows"
        assert _ingest([outcome(plan, segments={"tenant": "late"})]).stored == 1

    monkeypatch.setattr(segment_rollup, "merge_segments", merge_then_ingest)
    segments = stage_segments(stage_id)
    assert len(merges) == 3
    assert sorted(segments) == [("tenant", f"t{b}") for b in range(3)]
    assert PendingRollup.objects.filter(stage_id=stage_id).count() == 3  # the late ones
    monkeypatch.setattr(segment_rollup, "merge_segments", original)
    assert stage_segments(stage_id)[("tenant", "late")]["control"].requests == 3
