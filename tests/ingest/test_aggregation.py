"""The pure aggregation helpers: the fast forms equal their reference definitions exactly."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from migrations_app import aggregation
from migrations_app.aggregation import OutcomeFacts, UnitTotals
from migrations_app.stats import ArmAggregates, ClusterSums


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
    old = [[rng.randrange(3), 0, 1, rng.random(), 0, 0.0] for _ in range(3)]
    new = [[o[0] + 2, 1, 2, o[3] + rng.random(), 1, 0.5] for o in old]
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
        stored = aggregation.merge_json(stored, delta)
        reference = reference + delta
        assert stored == aggregation.to_json(reference)
        assert aggregation.from_json(stored) == reference


def test_cluster_deltas_of_many_units_equal_the_sum_of_each_units_change() -> None:
    rng = random.Random(6)
    moves = []
    for _ in range(200):
        old = UnitTotals(rng.randrange(5), rng.randrange(3), rng.randrange(3), rng.random(),
                         rng.randrange(3), rng.random())  # fmt: skip
        change = UnitTotals(rng.randrange(3), rng.randrange(2), 1, rng.random(),
                            rng.randrange(2), rng.random())  # fmt: skip
        moves.append((old, old + change))
    together = aggregation.cluster_deltas(
        [o.values() for o, _ in moves], [n.values() for _, n in moves]
    )
    one_by_one = ArmAggregates.merge(aggregation.cluster_delta(o, n) for o, n in moves)
    assert together == one_by_one
    # (Y, N) = (errors, requests) for one unit going from (0, 0) to (1, 2): a new unit
    first = aggregation.cluster_delta(UnitTotals(), UnitTotals(requests=2, errors=1))
    assert first.error_clusters == ClusterSums(units=1, sum_yy=1.0, sum_yn=2.0, sum_nn=4.0)
