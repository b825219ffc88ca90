"""metric_rollup.ArmValues against the plainest reading of what it must hold: every value's
window and metric, every unit's count and exact sum per metric, whatever mix of units with one
outcome, several, and late values counted on outcomes stored before."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np

from migrations_app.guardrails.stats import ArmAggregates
from migrations_app.outcomes.aggregation import OutcomeFacts, cluster_change
from migrations_app.outcomes.metric_rollup import ArmValues

T0 = datetime(2026, 12, 5, tzinfo=UTC)
# Values whose float sums depend on the order (1e16 + 1 - 1e16): the sums must be exact.
VALUES = (0.0, 1.0, 0.1, 3.3, 1e16, -1e16)


def _facts(rng: random.Random, metrics: tuple[tuple[str, float], ...]) -> OutcomeFacts:
    return OutcomeFacts(
        arm=rng.choice(["control", "candidate"]),
        unit=f"u{rng.randrange(8)}",
        window=T0 + timedelta(minutes=rng.randrange(3)),
        latency_ms=1.0,
        ttft_ms=None,
        error="",
        cost_usd=None,
        metrics=metrics,
        segments=(),
    )


def _batch(seed: int):
    rng = random.Random(seed)
    outcomes = []
    for _ in range(rng.randrange(0, 60)):
        names = rng.sample(["a", "b", "c"], rng.randrange(0, 4))
        metrics = tuple((name, rng.choice(VALUES)) for name in names)
        outcomes.append((rng.choice([1, 2]), _facts(rng, metrics)))
    late = []
    for _ in range(rng.randrange(0, 10)):
        stage, facts = (
            rng.choice(outcomes) if outcomes and rng.random() < 0.7 else (1, _facts(rng, ()))
        )
        wkey = (stage, facts.window, facts.arm)
        late.append((wkey, facts.unit, rng.choice(["a", "b", "d"]), rng.choice(VALUES)))
    return outcomes, late


def _grouped(outcomes):
    """As rollup.aggregate groups them: by window, and by unit with its first window."""
    by_window = defaultdict(list)
    by_unit: dict = {}
    for stage, facts in outcomes:
        wkey = (stage, facts.window, facts.arm)
        by_window[wkey].append(facts)
        by_unit.setdefault((stage, facts.arm, facts.unit), ([], wkey))[0].append(facts)
    return by_window, by_unit


def test_values_by_window_and_unit_sums_are_exact_and_complete() -> None:
    for seed in range(300):
        outcomes, late = _batch(seed)
        flat = [
            ((stage, f.window, f.arm), f.unit, name, value)
            for stage, f in outcomes
            for name, value in f.metrics
        ] + late
        windows, units = defaultdict(list), defaultdict(lambda: defaultdict(list))
        for wkey, unit, name, value in flat:
            windows[(wkey, name)].append(value)
            units[(wkey[0], wkey[2], unit)][name].append(value)

        got = ArmValues(*_grouped(outcomes), late)

        assert {k: sorted(v) for k, v in got.windows.items()} == {
            k: sorted(v) for k, v in windows.items()
        }, seed
        assert got.units == {
            key: {name: [len(v), math.fsum(v)] for name, v in named.items()}
            for key, named in units.items()
        }, seed
        assert set(got.first) == set(got.units), seed


def test_the_deltas_hold_every_value_and_every_units_cluster_change() -> None:
    """Per stage and arm (what is tested), the window deltas add up to the values' sums and
    each moved unit's cluster-sum change, whichever of the unit's windows holds it."""
    for seed in range(100):
        outcomes, late = _batch(seed)
        values = ArmValues(*_grouped(outcomes), late)
        keys = [(*unit, name) for unit, named in values.units.items() for name in named]
        if not keys:
            continue
        rng = np.random.default_rng(seed)
        old = rng.integers(0, 5, (len(keys), 3)).astype(float)
        new = old + rng.integers(0, 3, (len(keys), 3))
        deltas = values.deltas((keys, old, new))
        # A delta sits in a window of the batch's values or of a moved unit's first outcome.
        unit_windows = {values.first[k[:3]] for k in keys}
        for wkey in deltas:
            assert wkey in unit_windows or any(wkey == w for w, _ in values.windows), wkey
        per_arm: dict = defaultdict(list)
        for wkey, items in deltas.items():
            per_arm[(wkey[0], wkey[2])].extend(items)
        merged = {k: ArmAggregates.merge(v) for k, v in per_arm.items()}
        for (stage, arm), total in merged.items():
            for name, sums in total.metrics.items():
                mine = [
                    vs for (w, n), vs in values.windows.items() if (w[0], w[2], n) == (stage, arm, name)
                ]  # fmt: skip
                assert sums.n == sum(len(vs) for vs in mine), seed
                # Each window's sum is exact, and so is their sum.
                assert sums.total == math.fsum(math.fsum(vs) for vs in mine), seed
        # Every moved unit's cluster-sum change, once (whole numbers here: exact).
        for stage, arm, name in {(k[0], k[1], k[3]) for k in keys}:
            rows = [i for i, k in enumerate(keys) if (k[0], k[1], k[3]) == (stage, arm, name)]
            o, n = old[rows], new[rows]
            expected = cluster_change(o[:, 1], o[:, 0], n[:, 1], n[:, 0])
            assert merged[(stage, arm)].metrics[name].clusters == expected, seed
