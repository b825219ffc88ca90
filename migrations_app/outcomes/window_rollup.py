"""The minute windows' and the stages' running sums (``WindowAggregate``, ``StageAggregate``),
added to by a fold, not by each ingest transaction.

An ingest transaction computes its windows' deltas (outcomes/rollup.py) and leaves them, packed
(:func:`pack`), in its stage's pending row beside the segments' part (outcomes/segment_rollup.py:
``queue``); the fold that adds a stage's pending rows to its segment rows adds their window
deltas to the window rows and their sum per arm to the stage's two rows (:func:`merge`), in
the same transaction, under the stage's fold lock. So no ingest transaction locks a window or
stage row (before, every batch of a plan queued on the same few: the current minutes' windows
and the stage's two totals), and each of those rows is rewritten about once a second per web
process instead of on every batch. Every read of them folds first (``segment_rollup.catch_up``),
so a reader never sees less than ingest had committed when it began.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone

from migrations_app.guardrails.stats import ArmAggregates
from migrations_app.models import StageAggregate, WindowAggregate
from migrations_app.outcomes import aggregate_json
from migrations_app.outcomes.store import fast_path, lock_or_create, update_rows

WindowKey = tuple[int, datetime, str]  # stage, window, arm


def pack(deltas: Mapping[WindowKey, ArmAggregates]) -> dict[int, list[Any]]:
    """Per stage, its windows' deltas in the pending row's form: [epoch seconds, arm, delta]."""
    out: dict[int, list[Any]] = defaultdict(list)
    for (stage_id, window, arm), delta in deltas.items():
        out[stage_id].append([int(window.timestamp()), arm, aggregate_json.to_json(delta)])
    return out


def unpack(stage_id: int, packed: Iterable[Any]) -> list[tuple[WindowKey, ArmAggregates]]:
    """Inverse of :func:`pack` for one stage's part."""
    return [
        (
            (stage_id, datetime.fromtimestamp(int(seconds), UTC), str(arm)),
            aggregate_json.from_json(data),
        )
        for seconds, arm, data in packed
    ]


def merge(deltas: Iterable[tuple[WindowKey, ArmAggregates]]) -> None:
    """Add the deltas to their window rows, and their sum per stage and arm to the stage rows
    (in the caller's transaction: the fold's)."""
    windows: dict[WindowKey, list[ArmAggregates]] = defaultdict(list)
    for key, delta in deltas:
        windows[key].append(delta)
    if not windows:
        return
    merged = {key: ArmAggregates.merge(items) for key, items in windows.items()}
    _merge_windows(merged)
    stages: dict[tuple[int, str], list[ArmAggregates]] = defaultdict(list)
    for (stage_id, _, arm), delta in merged.items():
        stages[(stage_id, arm)].append(delta)
    _merge_stages({key: ArmAggregates.merge(items) for key, items in stages.items()})


def _merge_windows(deltas: Mapping[WindowKey, ArmAggregates]) -> None:
    keys = sorted(deltas)
    if fast_path():
        rows = lock_or_create(
            WindowAggregate, ("stage_id", "window", "arm"), ("bigint", "timestamptz", "text"),
            keys, _WINDOW_BLANK,
        )  # fmt: skip
    else:
        WindowAggregate.objects.bulk_create(
            [WindowAggregate(stage_id=s, window=w, arm=a) for s, w, a in keys],
            ignore_conflicts=True,
        )
        rows = {
            (row.stage_id, row.window, row.arm): row
            for row in WindowAggregate.objects.select_for_update()
            .filter(stage_id__in={k[0] for k in keys}, window__in={k[1] for k in keys})
            .order_by("stage_id", "window", "arm")
        }
    changed = []
    for key in keys:
        row = rows[key]
        row.data = data = aggregate_json.merge_json(row.data, deltas[key])
        for column in _WINDOW_COLUMNS:  # the columns charts group by copy the data
            setattr(row, column, data[column])
        changed.append(row)
    update_rows(WindowAggregate, changed, [*_WINDOW_COLUMNS, "data"], _WINDOW_TYPES)


_WINDOW_COLUMNS = (
    "requests",
    "errors",
    "latency_sum",
    "cost_n",
    "cost_sum",
    "feedback_n",
    "feedback_sum",
)


_WINDOW_TYPES = ("integer", "integer", "float8", "integer", "float8", "integer", "float8", "jsonb")


# A new row's columns, as SQL (the models' defaults live in Python, not in the database).
_WINDOW_BLANK = {**{c: "0" for c in _WINDOW_COLUMNS}, "data": "'{}'::jsonb"}


_STAGE_BLANK = {"requests": "0", "data": "'{}'::jsonb", "updated_at": "now()"}


def _merge_stages(deltas: Mapping[tuple[int, str], ArmAggregates]) -> None:
    keys = sorted(deltas)
    if fast_path():
        rows = lock_or_create(
            StageAggregate, ("stage_id", "arm"), ("bigint", "text"), keys, _STAGE_BLANK
        )
    else:
        StageAggregate.objects.bulk_create(
            [StageAggregate(stage_id=s, arm=a) for s, a in keys], ignore_conflicts=True
        )
        rows = {
            (row.stage_id, row.arm): row
            for row in StageAggregate.objects.select_for_update()
            .filter(stage_id__in={k[0] for k in keys})
            .order_by("stage_id", "arm")
        }
    now = timezone.now()
    for key in keys:
        row = rows[key]
        row.data = aggregate_json.merge_json(row.data, deltas[key])
        row.requests = row.data["requests"]
        row.updated_at = now  # neither path's write applies auto_now
    update_rows(
        StageAggregate,
        [rows[key] for key in keys],
        ["data", "requests", "updated_at"],
        ("jsonb", "integer", "timestamptz"),
    )
