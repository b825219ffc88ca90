"""aggregation.grouped_outcome_deltas (segment rollup: each outcome's logs and sketch keys once
per batch) gives every group exactly what outcome_delta gave it outcome by outcome before."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest

from migrations_app.guardrails.stats import ArmAggregates, Buckets
from migrations_app.outcomes import aggregate_json, aggregation
from migrations_app.outcomes.aggregation import OutcomeFacts


@pytest.fixture(autouse=True, params=["columns", "rows"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways of grouped_outcome_deltas: by columns (numpy) and outcome by outcome (what
    a window's few outcomes take)."""
    monkeypatch.setattr(aggregation, "_FEW_OUTCOMES", 0 if request.param == "columns" else 10**9)


def reference_delta(facts: list[OutcomeFacts]) -> ArmAggregates:
    """outcome_delta as it was written before the grouped form (commit 4473046)."""
    rows = list(facts)
    latencies = [r.latency_ms for r in rows]
    ttfts = [r.ttft_ms for r in rows if r.ttft_ms is not None]
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    logs = [math.log1p(max(v, 0.0)) for v in latencies]
    ttft_logs = [math.log1p(max(v, 0.0)) for v in ttfts]
    kinds: dict[str, int] = {}
    for r in rows:
        if r.error:
            kinds[r.error] = kinds.get(r.error, 0) + 1
    return ArmAggregates(
        requests=len(rows),
        errors=sum(kinds.values()),
        errors_by_kind=kinds,
        latency=Buckets.from_values(latencies) if latencies else Buckets(),
        latency_sum=math.fsum(latencies),
        latency_log_sum=math.fsum(math.log(v) for v in latencies if v > 0),
        ttft=Buckets.from_values(ttfts) if ttfts else Buckets(),
        ttft_sum=math.fsum(ttfts),
        ttft_log_sum=math.fsum(math.log(v) for v in ttfts if v > 0),
        latency_log1p_n=len(logs),
        latency_log1p_sum=math.fsum(logs),
        latency_log1p_sum_sq=math.fsum(v * v for v in logs),
        ttft_log1p_n=len(ttft_logs),
        ttft_log1p_sum=math.fsum(ttft_logs),
        ttft_log1p_sum_sq=math.fsum(v * v for v in ttft_logs),
        cost_n=len(costs),
        cost_sum=math.fsum(costs),
        cost_sum_sq=math.fsum(c * c for c in costs),
    )


def random_facts(rng: random.Random, n: int) -> list[OutcomeFacts]:
    window = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        OutcomeFacts(
            rng.choice(["control", "candidate"]),
            f"u{rng.randrange(50)}",
            window,
            rng.choice([0.0, -1.0, 1e-12, 3.0, rng.lognormvariate(6, 1.5)]),
            rng.choice([None, 0.0, rng.random() * 300]),
            rng.choice(["", "", "timeout", "server_error"]),
            rng.choice([None, 0.0, rng.random()]),
        )  # fmt: skip
        for _ in range(n)
    ]


def test_every_group_gets_what_its_outcomes_alone_give() -> None:
    rng = random.Random(16)
    for _ in range(40):
        facts = random_facts(rng, rng.randrange(1, 600))
        # Overlapping groups, as a batch's segments are (one per dimension), and an empty one.
        groups = {
            g: sorted(rng.sample(range(len(facts)), rng.randrange(0, len(facts) + 1)))
            for g in range(rng.randrange(1, 8))
        }
        grouped = aggregation.grouped_outcome_deltas(facts, groups)
        for g, indices in groups.items():
            expected = reference_delta([facts[i] for i in indices])
            assert grouped[g] == expected
            assert aggregate_json.to_json(grouped[g]) == aggregate_json.to_json(expected)
        assert aggregation.outcome_delta(facts) == reference_delta(facts)


def test_a_group_of_one_outcome_gets_what_it_alone_gives() -> None:
    # Most of a batch's segments hold one outcome: they take a path of their own.
    rng = random.Random(17)
    facts = random_facts(rng, 400)
    grouped = aggregation.grouped_outcome_deltas(facts, {i: [i] for i in range(len(facts))})
    for i, fact in enumerate(facts):
        assert grouped[i] == reference_delta([fact])
        assert aggregate_json.to_json(grouped[i]) == aggregate_json.to_json(reference_delta([fact]))
