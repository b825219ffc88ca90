"""DDSketch accuracy: quantiles read from the stored buckets are within 1 % of the exact ones."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from ddsketch import DDSketch

from migrations_app.guardrails import stats
from migrations_app.models import StageAggregate
from migrations_app.outcomes import aggregate_json, ingest
from migrations_app.outcomes.segment_rollup import catch_up
from tests.outcomes.conftest import Everyone, outcome, split_plan

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("seed", [1, 2])
def test_stored_quantiles_are_within_one_percent_of_the_exact_quantiles(seed: int) -> None:
    rng = np.random.default_rng(seed)
    latencies = rng.lognormal(mean=6.5, sigma=0.8, size=4000)  # median ~665 ms, long tail
    ttfts = rng.lognormal(mean=5.0, sigma=0.5, size=4000)
    plan = split_plan()
    now = time.time()
    events = [
        outcome(plan, latency_ms=float(lat), ttft_ms=float(ttft), ts=now - 1 - (i % 170))
        for i, (lat, ttft) in enumerate(zip(latencies, ttfts, strict=True))
    ]
    for start in range(0, len(events), 500):
        batch = {"events": events[start : start + 500]}
        assert ingest.outcomes_ingest(identity=Everyone(), payload=batch).stored == 500

    catch_up()
    row = StageAggregate.objects.get(stage=plan.current_stage, arm="control")
    stored = aggregate_json.from_json(row.data)
    assert stored.latency.total == len(latencies)
    for values, buckets in ((latencies, stored.latency), (ttfts, stored.ttft)):
        exact_sorted = np.sort(values)
        for p in (0.5, 0.95, 0.99):
            exact = float(exact_sorted[math.ceil(p * len(values)) - 1])  # the rank ceil(p n)
            estimate, lower, upper = stats.quantile_interval(buckets, p, alpha=0.05)
            assert abs(estimate - exact) <= 0.01 * exact, (p, estimate, exact)
            assert lower <= exact <= upper  # the confidence interval holds the truth here
        # the buckets are the ddsketch package's own (LogarithmicMapping, 1 % accuracy)
        sketch = DDSketch(relative_accuracy=stats.RELATIVE_ACCURACY)
        for v in values:
            sketch.add(float(v))
        assert stats.buckets_from_ddsketch(sketch) == buckets
        for p in (0.5, 0.95, 0.99):
            assert sketch.get_quantile_value(p) == pytest.approx(
                stats.quantile_interval(buckets, p, alpha=0.05)[0], rel=0.01
            )
