"""Roll new outcomes and feedback up into the aggregates the statistics read, in the caller's
transaction: each unit's running totals are upserted here; the minute windows', the stages'
and the segments' deltas are left in the stage's pending row for a fold to add
(window_rollup.py, segment_rollup.py).

The deltas come from ``aggregation`` (pure); the rows are upserted and merged by addition, so
batches may arrive in any order. Shadow results come in here too, as the candidate's outcomes
in a shadow stage.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from migrations_app.guardrails.stats import ArmAggregates
from migrations_app.outcomes import aggregation, metric_rollup, segment_rollup, unit_rows
from migrations_app.outcomes.aggregation import OutcomeFacts, UnitTotals


def aggregate(
    outcomes: Sequence[tuple[int, OutcomeFacts]],
    feedback: Sequence[tuple[int, OutcomeFacts, float]],
    metric_values: Sequence[tuple[int, OutcomeFacts, str, float]] = (),
) -> None:
    """Fold new outcomes (with the metrics they carry), newly applied feedback and newly
    applied late metric values into unit totals, windows and stage totals, and each into the
    segments its facts name (feedback and late values: their outcome's). Inside the
    caller's transaction. Shadow results come in here too, as the candidate's outcomes in a
    shadow stage."""
    if not outcomes and not feedback and not metric_values:
        return
    by_window: dict[tuple[int, datetime, str], list[OutcomeFacts]] = defaultdict(list)
    # Per unit, in one pass (hundreds of units per batch): its outcomes, and the window of its
    # first event in the batch. The unit's cluster-sum change is booked in that window: only
    # the stage's sum of windows is ever tested, so any of them will do.
    units: dict[tuple[int, str, str], tuple[list[OutcomeFacts], tuple[int, datetime, str]]]
    units = {}
    for stage_id, facts in outcomes:
        wkey = (stage_id, facts.window, facts.arm)
        by_window[wkey].append(facts)
        ukey = (stage_id, facts.arm, facts.unit)
        unit = units.get(ukey)
        if unit is None:
            unit = units[ukey] = ([], wkey)
        unit[0].append(facts)
    deltas: dict[tuple[int, datetime, str], list[ArmAggregates]] = defaultdict(list)
    for key, rows in by_window.items():
        deltas[key].append(aggregation.outcome_delta(rows))
    changes: dict[tuple[int, str, str], UnitTotals] = {
        key: aggregation.unit_totals(rows) for key, (rows, _) in units.items()
    }
    unit_window = {key: window for key, (_, window) in units.items()}
    scores: dict[tuple[int, datetime, str], list[float]] = defaultdict(list)
    feedback_units: dict[tuple[int, str, str], list[float]] = defaultdict(list)
    for stage_id, facts, score in feedback:
        wkey = (stage_id, facts.window, facts.arm)
        ukey = (stage_id, facts.arm, facts.unit)
        scores[wkey].append(score)
        feedback_units[ukey].append(score)
        unit_window.setdefault(ukey, wkey)
    for wkey, values in scores.items():
        deltas[wkey].append(aggregation.feedback_delta(values))
    for ukey, values in feedback_units.items():
        changes[ukey] = changes.get(ukey, UnitTotals()) + UnitTotals(
            feedback_n=len(values), feedback_sum=math.fsum(values)
        )
    # The metric values the outcomes carry, and late ones now counted on their outcomes.
    arm_values = metric_rollup.ArmValues(
        by_window,
        units,
        [
            ((stage_id, facts.window, facts.arm), facts.unit, name, value)
            for stage_id, facts, name, value in metric_values
        ],
    )
    # One row per unit holds its built-in totals and its metric sums: one upsert.
    unit_moves, metric_units = unit_rows.upsert(changes, arm_values.units)
    keys, old, new = unit_moves
    if keys:
        moves: dict[tuple[int, datetime, str], list[int]] = defaultdict(list)
        for i, ukey in enumerate(keys):
            moves[unit_window[ukey]].append(i)
        for wkey, moved in aggregation.grouped_cluster_deltas(old, new, moves).items():
            deltas[wkey].append(moved)
    for wkey, items in arm_values.deltas(metric_units).items():
        deltas[wkey].extend(items)
    window_deltas = {key: ArmAggregates.merge(items) for key, items in deltas.items()}
    # The windows', stages' and segments' parts wait for a fold (segment_rollup.py,
    # window_rollup.py): no window, stage or segment row is locked here.
    segment_rollup.queue(
        outcomes,
        feedback,
        metric_values,
        units=unit_moves,
        metric_units=metric_units,
        windows=window_deltas,
    )
