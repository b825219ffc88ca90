"""The pure aggregation helpers: the fast forms equal their reference definitions exactly."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

from migrations_app.guardrails.stats import CLUSTER_MOMENTS, ArmAggregates, ClusterSums
from migrations_app.outcomes import aggregate_json, aggregation
from migrations_app.outcomes.aggregation import OutcomeFacts, UnitTotals


def _random_delta(rng: random.Random) -> ArmAggregates:
    window = datetime(2026, 1, 1, tzinfo=UTC)
    facts = [
        OutcomeFacts(
            "control",
            "u",
            window,
            rng.lognormvariate(6, 1) if rng.random() < 0.9 else 0.0,
            rng.choice([None, rng.random() * 100]),
            rng.choice(["", "timeout", "server_error"]),
            rng.choice([None, rng.random()]),
        )  # fmt: skip
        for _ in range(rng.randrange(1, 30))
    ]
    # Columns as UnitTotals' fields: requests, errors, cost_n, cost_sum, feedback_n,
    # feedback_sum, latency_n, latency_log1p, ttft_n, ttft_log1p.
    old = [[rng.randrange(3), 0, 1, rng.random(), 0, 0.0, 1, 6.0, 0, 0.0] for _ in range(3)]
    new = [[o[0] + 2, 1, 2, o[3] + rng.random(), 1, 0.5, 3, 19.0, 1, 4.5] for o in old]
    return (
        aggregation.outcome_delta(facts)
        + aggregation.feedback_delta([rng.random() for _ in range(rng.randrange(4))])
        + aggregation.cluster_deltas(old, new)
    )


def test_merge_json_equals_the_round_trip_through_arm_aggregates() -> None:
    rng = random.Random(5)
    stored: dict = {}
    reference = ArmAggregates()
    for _ in range(60):
        delta = _random_delta(rng)
        stored = aggregate_json.merge_json(stored, delta)
        reference = reference + delta
        assert stored == aggregate_json.to_json(reference)
        assert aggregate_json.from_json(stored) == reference


def test_cluster_deltas_of_many_units_equal_the_sum_of_each_units_change() -> None:
    rng = random.Random(6)
    moves = []
    for _ in range(200):
        old = UnitTotals(rng.randrange(5), rng.randrange(3), rng.randrange(3), rng.random(),
                         rng.randrange(3), rng.random())  # fmt: skip
        change = UnitTotals(rng.randrange(3), rng.randrange(2), 1, rng.random(),
                            rng.randrange(2), rng.random())  # fmt: skip
        moves.append((old, old + change))
    together = aggregation.cluster_deltas([o for o, _ in moves], [n for _, n in moves])
    one_by_one = ArmAggregates.merge(aggregation.cluster_delta(o, n) for o, n in moves)
    assert together == one_by_one
    # (Y, N) = (errors, requests) for one unit going from (0, 0) to (1, 2): a new unit
    first = aggregation.cluster_delta(UnitTotals(), UnitTotals(requests=2, errors=1))
    assert first.error_clusters == ClusterSums(1, 1.0, 2.0, 4.0, 2.0, 4.0, 8.0)  # ... Y N^2, N^3


def test_unit_totals_of_a_units_outcomes() -> None:
    window = datetime(2026, 1, 1, tzinfo=UTC)
    facts = [
        OutcomeFacts("control", "u", window, 99.0, 9.0, "", 0.25),
        OutcomeFacts("control", "u", window, 999.0, None, "timeout", None),
        OutcomeFacts("control", "u", window, 0.0, 0.0, "", 0.5),
    ]
    totals = aggregation.unit_totals(facts)
    assert totals == UnitTotals(
        requests=3, errors=1, cost_n=2, cost_sum=0.75, latency_n=3,
        latency_log1p=math.log(100) + math.log(1000), ttft_n=2, ttft_log1p=math.log(10),
    )  # fmt: skip
    # (Y, N) = (sum of log(1 + ms), latencies) for the latency clusters of a new unit
    delta = aggregation.cluster_delta(UnitTotals(), totals)
    y = totals.latency_log1p
    expected = ClusterSums(1, y * y, 3 * y, 9.0, y * y * 3, y * 9, 27.0)
    assert delta.latency_clusters.units == 1
    for name in CLUSTER_MOMENTS:
        assert math.isclose(getattr(delta.latency_clusters, name), getattr(expected, name))
    assert delta.ttft_clusters.sum_nn == 4.0


def test_grouped_cluster_deltas_are_each_group_s_own():
    """Segments and windows take their units' cluster changes from one pass over the batch:
    each group's sums are those of its rows alone, exactly (units in several groups too)."""
    rng = random.Random(5)
    columns = len(aggregation.UNIT_COLUMNS)
    new = [[rng.random() * rng.randrange(1, 40) for _ in range(columns)] for _ in range(60)]
    old = [
        [v * rng.random() for v in row] if rng.random() < 0.5 else [0.0] * columns for row in new
    ]
    groups = {g: sorted(rng.sample(range(60), rng.randrange(1, 20))) for g in range(9)}
    got = aggregation.grouped_cluster_deltas(old, new, groups)
    requests = [name for name, _ in aggregation.UNIT_COLUMNS].index("requests")
    for g, rows in groups.items():
        alone = aggregation.cluster_deltas([old[i] for i in rows], [new[i] for i in rows])
        firsts = sum(1 for i in rows if old[i][requests] == 0)  # units seen for the first time
        assert got[g] == alone and got[g].error_clusters.units == firsts


def test_the_fast_forms_for_one_unit_or_one_row_give_the_general_sums() -> None:
    """Ingest takes shortcuts for what a batch mostly holds (a unit with one outcome, a segment
    with one unit) and per-metric cluster changes in one pass: the same values exactly."""
    rng = random.Random(8)
    window = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(200):
        fact = OutcomeFacts(
            "control", "u", window, rng.choice([0.0, -1.0, rng.lognormvariate(6, 1)]),
            rng.choice([None, 0.0, rng.random() * 99]), rng.choice(["", "timeout"]),
            rng.choice([None, 0.0, rng.random()]),
        )  # fmt: skip
        assert aggregation.unit_totals([fact]) == aggregation.unit_totals(iter([fact, fact][:1]))
        one = aggregation.unit_totals([fact])
        assert one.cost_sum == math.fsum([fact.cost_usd] if fact.cost_usd is not None else [])
        assert one.latency_log1p == math.fsum([math.log1p(max(fact.latency_ms, 0.0))])
    columns = len(aggregation.UNIT_COLUMNS)
    new = [[rng.random() * rng.randrange(1, 40) for _ in range(columns)] for _ in range(30)]
    old = [
        [v * rng.random() for v in row] if rng.random() < 0.5 else [0.0] * columns for row in new
    ]
    singles = aggregation.grouped_cluster_deltas(old, new, {i: [i] for i in range(30)})
    for i in range(30):
        assert singles[i] == aggregation.cluster_deltas([old[i]], [new[i]])
    # Metric sums: (n, total, control_total) per unit, grouped as a batch's windows are.
    import numpy as np

    after = np.array([[rng.randrange(1, 9), rng.random() * 5, 0.0] for _ in range(40)])
    before = after * np.array([[rng.random() < 0.5] for _ in range(40)])
    groups = {g: sorted(rng.sample(range(40), rng.randrange(1, 12))) for g in range(7)}
    got = aggregation.grouped_cluster_change(
        before[:, 1], before[:, 0], after[:, 1], after[:, 0], groups
    )
    for g, rows in groups.items():
        o, n = before[rows], after[rows]
        assert got[g] == aggregation.cluster_change(o[:, 1], o[:, 0], n[:, 1], n[:, 0])


def test_merge_json_of_metrics_and_of_an_empty_delta() -> None:
    from migrations_app.guardrails.stats import MetricSums

    rng = random.Random(9)
    stored: dict = {}
    reference = ArmAggregates()
    for _ in range(30):
        delta = _random_delta(rng)
        sums = MetricSums(
            rng.randrange(1, 5), rng.random(), rng.random(),
            ClusterSums(rng.randrange(2), *(rng.random() for _ in CLUSTER_MOMENTS)),
        )  # fmt: skip
        delta = delta + ArmAggregates(metrics={rng.choice(["a", "b"]): sums})
        for step in (delta, ArmAggregates()):
            stored = aggregate_json.merge_json(stored, step)
            reference = reference + step
            assert stored == aggregate_json.to_json(reference)
            assert aggregate_json.from_json(stored) == reference


def test_unit_columns_are_the_models_columns_with_their_types() -> None:
    """The upsert casts each column to its UNIT_COLUMNS type: counts must go as integers (a
    float8 cast into an integer column rounds silently), sums as float8."""
    from migrations_app.models import UnitTotals as Row

    kinds = {"IntegerField": "integer", "PositiveIntegerField": "integer",
             "BigIntegerField": "integer", "FloatField": "float8"}  # fmt: skip
    expected = tuple(
        (name, kinds[Row._meta.get_field(name).get_internal_type()]) for name in UnitTotals._fields
    )
    assert aggregation.UNIT_COLUMNS == expected
    assert dict(aggregation.UNIT_COLUMNS)["requests"] == "integer"
    assert dict(aggregation.UNIT_COLUMNS)["cost_sum"] == "float8"
