"""The fold after an ingest commits (segment_rollup._fold_soon): the first batch of a stage is
folded at once, later ones within FOLD_SECONDS wait for the next fold or read, and a fold
that fails never fails the ingest that triggered it (its pending rows stay for the next)."""

from __future__ import annotations

from typing import Any

import pytest

from migrations_app.models import PendingRollup, PendingSegments, SegmentAggregate
from migrations_app.outcomes import ingest, segment_rollup
from migrations_app.outcomes.metrics import read_counters
from tests.outcomes.conftest import Everyone, outcome, segmented_plan

pytestmark = pytest.mark.django_db(transaction=True)  # on_commit runs only on a real commit


def _ingest(*events: dict[str, Any]) -> Any:
    return ingest.outcomes_ingest(identity=Everyone(), payload={"events": list(events)})


@pytest.fixture(autouse=True)
def _fresh_folds() -> None:
    segment_rollup._folded.clear()


def test_a_commit_folds_at_most_once_per_fold_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(segment_rollup.time, "monotonic", lambda: clock[0])
    plan = segmented_plan("tenant")
    stage = plan.current_stage
    assert _ingest(outcome(plan, segments={"tenant": "acme"})).stored == 1
    rows = SegmentAggregate.objects.filter(stage=stage, arm="control")
    pending = PendingRollup.objects.filter(stage=stage)
    assert [(r.value, r.requests) for r in rows] == [("acme", 1)] and not pending.exists()
    clock[0] += segment_rollup.FOLD_SECONDS / 2
    assert _ingest(outcome(plan, segments={"tenant": "acme"})).stored == 1
    assert rows.get().requests == 1 and pending.count() == 1  # waits for the next fold
    clock[0] += segment_rollup.FOLD_SECONDS / 2
    assert _ingest(outcome(plan, segments={"tenant": "acme"})).stored == 1
    assert rows.get().requests == 3 and not pending.exists()


def test_a_failing_fold_fails_no_ingest_and_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    plan = segmented_plan("tenant")
    stage = plan.current_stage
    original = segment_rollup.merge_segments

    def broken(deltas: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(segment_rollup, "merge_segments", broken)
    assert _ingest(outcome(plan, segments={"tenant": "acme"})).stored == 1
    assert "fold failed for stages" in caplog.text
    assert PendingRollup.objects.filter(stage=stage).count() == 1  # rolled back, kept
    monkeypatch.setattr(segment_rollup, "merge_segments", original)
    arms = segment_rollup.stage_segments(stage.pk)[("tenant", "acme")]
    assert arms["control"].requests == 1
    assert not PendingRollup.objects.filter(stage=stage).exists()


def test_an_unreadable_pending_row_is_left_out_and_the_others_fold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only a bug or a damaged database makes one; kept, it would stop every fold of its stage
    and so its segment tests. Each is counted where failed folds are (/metrics)."""
    failed_before = read_counters().get("turnout_fold_failures", 0.0)
    plan = segmented_plan("tenant")
    stage = plan.current_stage
    assert _ingest(outcome(plan, segments={"tenant": "acme"})).stored == 1
    for data in (b"{not json", b'{"o": [["control"]], "f": [], "v": [], "u": [], "m": []}'):
        PendingRollup.objects.create(stage=stage, segments=data, windows=b"")
    assert _ingest(outcome(plan, segments={"tenant": "acme"})).stored == 1
    arms = segment_rollup.stage_segments(stage.pk)[("tenant", "acme")]
    assert arms["control"].requests == 2
    assert caplog.text.count("cannot be read, left out") == 2
    assert read_counters().get("turnout_fold_failures", 0.0) - failed_before == 2
    assert not PendingRollup.objects.filter(stage=stage).exists()


def test_a_read_whose_fold_fails_reads_the_sums_folded_so_far(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The segment tests are one layer of the guardrails: a fold that fails on a read (inside
    the evaluation's transaction) is logged, and the evaluation goes on with what is folded."""
    from django.db import transaction

    plan = segmented_plan("tenant")
    stage = plan.current_stage
    assert _ingest(outcome(plan, segments={"tenant": "acme"})).stored == 1  # folded
    assert _ingest(outcome(plan, segments={"tenant": "acme"})).stored == 1  # pending
    monkeypatch.setattr(segment_rollup, "merge_segments", lambda deltas: 1 / 0)
    with transaction.atomic():
        arms = segment_rollup.stage_segments(stage.pk)[("tenant", "acme")]
        assert PendingRollup.objects.filter(stage=stage).count() == 1  # usable, and kept
    assert arms["control"].requests == 1
    assert "fold failed for stages" in caplog.text


def test_windows_and_stage_totals_wait_for_the_fold_and_a_read_folds_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ingest transaction leaves its windows' deltas pending (no window or stage row is
    written, so none is locked); the fold after a commit adds them, and a read of the totals
    folds what is still pending first."""
    from migrations_app.models import StageAggregate, WindowAggregate
    from migrations_app.outcomes import selectors

    clock = [1000.0]
    monkeypatch.setattr(segment_rollup.time, "monotonic", lambda: clock[0])
    plan = segmented_plan("tenant")
    stage = plan.current_stage
    assert _ingest(outcome(plan), outcome(plan, arm="candidate")).stored == 2  # folded at once
    stored = StageAggregate.objects.filter(stage=stage)
    assert dict(stored.values_list("arm", "requests")) == {"control": 1, "candidate": 1}
    assert _ingest(outcome(plan), outcome(plan)).stored == 2  # within FOLD_SECONDS: pending
    assert PendingRollup.objects.filter(stage=stage).count() == 1
    assert dict(stored.values_list("arm", "requests")) == {"control": 1, "candidate": 1}
    assert sum(WindowAggregate.objects.filter(stage=stage).values_list("requests", flat=True)) == 2
    totals = selectors.stage_totals(stage)  # folds first
    assert (totals["control"].requests, totals["candidate"].requests) == (3, 1)
    assert sum(WindowAggregate.objects.filter(stage=stage).values_list("requests", flat=True)) == 4
    assert not PendingRollup.objects.filter(stage=stage).exists()


def test_an_unreadable_window_part_is_left_out_and_a_row_of_the_code_before_folds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The code before migration 0026 left its segment part, in its format, in PendingSegments
    (its windows it wrote at once): the fold takes such a row over and folds it. A window part
    that cannot be read is logged and left out like an unreadable segment part."""
    import orjson

    from migrations_app.outcomes import selectors

    plan = segmented_plan("tenant")
    stage = plan.current_stage
    assert _ingest(outcome(plan, segments={"tenant": "acme"})).stored == 1
    legacy = {"o": [["control", "u-before", 500.0, None, "", None, [], [["tenant", "acme"]]]],
              "f": [], "v": [], "u": [], "m": []}  # fmt: skip
    PendingSegments.objects.create(stage=stage, data=orjson.dumps(legacy))
    PendingRollup.objects.create(stage=stage, segments=b"", windows=b'[[1, "control", {"requests"')
    assert _ingest(outcome(plan, segments={"tenant": "acme"})).stored == 1
    assert selectors.stage_totals(stage)["control"].requests == 2
    assert segment_rollup.stage_segments(stage.pk)[("tenant", "acme")]["control"].requests == 3
    assert caplog.text.count("cannot be read, left out") == 1
    assert not PendingRollup.objects.filter(stage=stage).exists()
    assert not PendingSegments.objects.filter(stage=stage).exists()


def test_a_fold_runs_with_the_collector_paused_and_resumes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Like a batch, a fold makes many short-lived objects and no garbage that must go sooner
    (outcomes/collector.py); a read's fold (catch_up) outside any ingest pauses it too."""
    import gc

    seen = []
    original = segment_rollup._fold_chunk

    def spy(*args: Any) -> bool:
        seen.append(gc.isenabled())
        return original(*args)

    monkeypatch.setattr(segment_rollup, "_fold_chunk", spy)
    plan = segmented_plan("tenant")
    PendingRollup.objects.create(stage=plan.current_stage, segments=b"", windows=b"")
    assert gc.isenabled()
    segment_rollup.catch_up([plan.current_stage_id])
    assert seen == [False] and gc.isenabled()


def test_the_periodic_task_folds_what_traffic_left_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last batches of a burst wait for the next ingest's fold or a read; beat's
    turnout.fold_pending folds them meanwhile (the pending age in /metrics stays small)."""
    from migrations_app.outcomes import tasks

    monkeypatch.setattr(segment_rollup.time, "monotonic", lambda: 1000.0)
    plan = segmented_plan("tenant")
    stage = plan.current_stage
    assert _ingest(outcome(plan, segments={"tenant": "acme"})).stored == 1  # folded at once
    assert _ingest(outcome(plan, segments={"tenant": "acme"})).stored == 1  # pending
    assert PendingRollup.objects.filter(stage=stage).count() == 1
    assert tasks.fold_pending()
    assert not PendingRollup.objects.filter(stage=stage).exists()
    assert SegmentAggregate.objects.get(stage=stage, arm="control").requests == 2
