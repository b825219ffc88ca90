"""A pending segment row (outcomes/segment_rows.py) reads back as it was written, and a row
of the format before (a tuple per event, written by ingest until the columns) is folded
exactly as the same events written as columns: such rows may be pending when a web process
starts on the new code."""

from __future__ import annotations

import math
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest

from migrations_app.models import MetricDefinition, PendingRollup, PendingSegments
from migrations_app.outcomes import (
    aggregate_json,
    aggregation,
    feedback,
    ingest,
    metric_values,
    segment_rollup,
    segment_rows,
)
from migrations_app.outcomes.aggregation import OutcomeFacts
from tests.outcomes import conftest
from tests.outcomes.conftest import Everyone, outcome

WINDOW = datetime(2026, 1, 1, tzinfo=UTC)


def random_facts(rng: random.Random, n: int) -> list[OutcomeFacts]:
    dims = ["tenant", "lang", "tier"]
    return [
        OutcomeFacts(
            rng.choice(["control", "candidate"]),
            f"u{rng.randrange(30)}",
            WINDOW,
            rng.choice([0.0, -1.0, 3.5, rng.lognormvariate(6, 1)]),
            rng.choice([None, 0.0, rng.random() * 300]),
            rng.choice(["", "", "timeout"]),
            rng.choice([None, 0.0, rng.random()]),
            tuple((m, rng.random()) for m in rng.sample(["a", "b"], rng.randrange(3))),
            tuple((d, f"{d}{rng.randrange(4)}") for d in rng.sample(dims, rng.randrange(1, 4))),
        )  # fmt: skip
        for _ in range(n)
    ]


def same_columns(a: segment_rows.Columns, b: segment_rows.Columns) -> None:
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, np.ndarray):
            assert value.shape == other.shape, name
            assert np.array_equal(value, other, equal_nan=True), name
            assert np.array_equal(np.signbit(value), np.signbit(other)), name
        else:
            assert value == other, name


def test_a_row_reads_back_as_written() -> None:
    rng = random.Random(3)
    for _ in range(30):
        facts = random_facts(rng, rng.randrange(0, 60))
        scores = [(f, rng.random()) for f in random_facts(rng, rng.randrange(0, 5))]
        values = [(f, "c", rng.random()) for f in random_facts(rng, rng.randrange(0, 5))]
        r = segment_rows.raw(facts, scores, values)
        keys = sorted({(f.arm, f.unit) for f in [*facts, *(f for f, _ in scores)]})
        width = len(aggregation.UNIT_COLUMNS)
        new = np.array(
            [[rng.choice([0.0, 1.0, 7.0, rng.random(), 2.0**40, -0.0]) for _ in range(width)]
             for _ in keys]
        ).reshape(-1, width)  # fmt: skip
        old = new * np.array([[rng.choice([0.0, 1.0, 0.5])] for _ in keys]).reshape(-1, 1)
        segment_rows.add_moves(r, keys, old, new)
        metric_keys = [(arm, unit, "d") for arm, unit in keys[:3]]
        metric_new = np.array([[2.0, rng.random(), 0.0] for _ in metric_keys]).reshape(-1, 3)
        segment_rows.add_metric_moves(r, metric_keys, metric_new / 2, metric_new)
        same_columns(segment_rows.read(segment_rows.pack(r)), segment_rows.code(r))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        orjson.dumps({"o": [["control", "u", 1.0]], "f": [], "v": [], "u": [], "m": []}),
        segment_rows.MAGIC + b"\x05\x00\x00\x00{}",
    ],
)
def test_a_row_that_is_not_one_raises(data: bytes) -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        segment_rows.read(data)


def test_a_row_whose_columns_disagree_raises() -> None:
    r = segment_rows.raw(random_facts(random.Random(4), 5))
    r.units.append("u99")
    with pytest.raises(ValueError):
        segment_rows.read(segment_rows.pack(r))


def tuple_row(r: segment_rows.Raw) -> bytes:
    """The same row as queue wrote it before the columns (one tuple per event)."""
    o, f, _ = r.counts

    def number(x: float) -> float | None:
        return None if math.isnan(x) else x

    carried: dict[int, list[list[Any]]] = {}
    for (i, name), value in zip(r.carried, r.carried_value.tolist(), strict=True):
        carried.setdefault(i, []).append([name, value])
    latency, ttft, cost = r.latency.tolist(), r.ttft.tolist(), r.cost.tolist()
    part = {
        "o": [
            [r.arms[i], r.units[i], latency[i], number(ttft[i]), r.errors[i], number(cost[i]),
             carried.get(i, []), r.segments[i]]
            for i in range(o)
        ],
        "f": [[r.arms[o + i], r.units[o + i], r.segments[o + i], score]
              for i, score in enumerate(r.score.tolist())],
        "v": [[r.arms[o + f + i], r.units[o + f + i], r.segments[o + f + i],
               r.value_metrics[i], value] for i, value in enumerate(r.value.tolist())],
        "u": [[*key, before, after] for key, before, after in zip(
            r.moved, r.moved_old.tolist(), r.moved_new.tolist(), strict=True)],
        "m": [[*key, before, after] for key, before, after in zip(
            r.metric_moved, r.metric_old.tolist(), r.metric_new.tolist(), strict=True)],
    }  # fmt: skip
    return orjson.dumps(part)


@pytest.mark.django_db
def test_rows_of_the_format_before_are_folded_as_the_same_rows_in_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two plans get the same events (outcomes with metrics, then feedback and metric values
    sent alone); one plan's pending rows are rewritten in the format before. Both fold to the
    same segment rows, exactly."""
    plans = [conftest.segmented_plan("tenant", "lang", key=key) for key in ("cols", "tuples")]
    for plan in plans:
        MetricDefinition.objects.create(plan=plan, name="task_completed")
    monkeypatch.setattr(segment_rollup, "_fold_soon", lambda stage_ids: None)
    rng = random.Random(5)
    units = [(f"u{i}", {"tenant": f"t{i % 4}", "lang": "ja" if i % 3 else "en"}) for i in range(9)]
    events: list[list[dict[str, Any]]] = [[], []]
    for _ in range(40):
        unit, segments = rng.choice(units)
        fields = {
            "unit": unit, "segments": segments, "latency_ms": rng.lognormvariate(6, 1),
            "ttft_ms": rng.choice([None, rng.random() * 200]),
            "error": rng.choice([None, None, "timeout"]),
            "arm": rng.choice(["control", "candidate"]),
            "metrics": rng.choice([{}, {"task_completed": rng.choice([0, 1])}]),
        }  # fmt: skip
        for i, plan in enumerate(plans):
            events[i].append(outcome(plan, **fields))
    for i in range(2):
        ingest.outcomes_ingest(identity=Everyone(), payload={"events": events[i][:20]})
        ingest.outcomes_ingest(identity=Everyone(), payload={"events": events[i][20:]})
        feedback.feedback_ingest(identity=Everyone(), payload={"events": [
            {"id": uuid.uuid4().hex, "decision_id": e["decision_id"], "score": j % 2,
             "scale": "thumbs", "ts": time.time() - 1} for j, e in enumerate(events[i][::3])
        ]})  # fmt: skip
        metric_values.metrics_ingest(identity=Everyone(), payload={"events": [
            {"id": uuid.uuid4().hex, "decision_id": e["decision_id"], "name": "task_completed",
             "value": j % 2, "ts": time.time() - 1} for j, e in enumerate(events[i][1::4])
        ]})  # fmt: skip
    # As the code before migration 0026 wrote them: its segment part, in its format, in
    # PendingSegments (its window deltas went to the window rows at once: here they stay
    # pending in the new rows, whose segment part is emptied).
    rewritten = PendingRollup.objects.filter(stage_id=plans[1].current_stage_id)
    rewritten = rewritten.exclude(segments=b"")  # a row of window deltas only
    assert rewritten.count() == 4
    for row in rewritten:
        data = tuple_row(segment_rows.read_raw(bytes(row.segments)))
        assert data.startswith(b"{")
        PendingSegments.objects.create(stage_id=row.stage_id, data=data)
        row.segments = b""
        row.save()
    a, b = (segment_rollup.stage_segments(plan.current_stage_id) for plan in plans)
    assert a.keys() == b.keys() and len(a) == 6
    for key in a:
        assert a[key].keys() == b[key].keys()
        for arm in a[key]:
            assert a[key][arm] == b[key][arm]
            assert aggregate_json.to_json(a[key][arm]) == aggregate_json.to_json(b[key][arm])
    acme = a[("tenant", "t0")]["control"]
    assert acme.requests and acme.metrics["task_completed"].n and acme.feedback_n is not None


@pytest.mark.django_db
def test_a_fold_makes_rows_for_the_arm_and_value_pairs_sent_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A row's arms and values are lists of their own: a fold places (arm, value) pairs its
    events name, not every arm with every value (each pair placed takes a row and a place of
    the group's CAPACITY)."""
    plan = conftest.segmented_plan("tenant", "lang")
    monkeypatch.setattr(segment_rollup, "_fold_soon", lambda stage_ids: None)
    batch = [
        outcome(plan, unit="u1", segments={"tenant": "acme", "lang": "ja"}),
        outcome(plan, unit="u2", arm="candidate", segments={"tenant": "shop"}),
    ]
    assert ingest.outcomes_ingest(identity=Everyone(), payload={"events": batch}).stored == 2
    segments = segment_rollup.stage_segments(plan.current_stage_id)
    assert {key: set(arms) for key, arms in segments.items()} == {
        ("tenant", "acme"): {"control"},
        ("lang", "ja"): {"control"},
        ("tenant", "shop"): {"candidate"},
    }
