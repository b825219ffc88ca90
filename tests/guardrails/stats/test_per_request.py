"""The per-request metric tests (stats.per_request) and their place in the plan rules (a
guardrail with a ``Measure``): unit tests on constructed data, no database."""

from __future__ import annotations

import math

import numpy as np
import pytest

from migrations_app.guardrails import stats
from migrations_app.guardrails.rules import (
    GuardrailSpec,
    Measure,
    PlanSettings,
    StageState,
    evaluate_plan,
    split_alpha,
)
from migrations_app.guardrails.rules import (
    tested_in as stage_tests,
)
from migrations_app.guardrails.stats import MetricSums, PairedSums


def rates(rng: np.random.Generator, n: int, p: float, units: int) -> MetricSums:
    unit = [str(u) for u in rng.integers(0, units, n)]
    return MetricSums.from_values(unit, (rng.random(n) < p).astype(float).tolist())


def test_sums_merge_and_round_trip():
    a = MetricSums.from_values(["u", "u", "v"], [1.0, 0.0, 1.0])
    b = MetricSums.from_values(["w"], [1.0])
    both = MetricSums.from_values(["u", "u", "v", "w"], [1.0, 0.0, 1.0, 1.0])
    assert a + b == both
    assert MetricSums.from_list(both.to_list()) == both
    assert MetricSums.from_list(None) == MetricSums()
    paired = PairedSums.from_values(["u", "v"], [1.0, 0.0], [0.0, 0.0])
    assert paired.difference.total == -1.0
    assert PairedSums.from_dict(paired.to_dict()) == paired


def test_a_clear_drop_in_a_rate_where_higher_is_better_regresses():
    rng = np.random.default_rng(1)
    control, candidate = rates(rng, 4000, 0.80, 800), rates(rng, 4000, 0.65, 800)
    v = stats.metric_test(
        "task_completed", control, candidate, kind="rate", harm="decrease", tolerance=0.03,
        tolerance_kind="absolute", alpha=0.01, label="task completed",
    )  # fmt: skip
    assert v.status == "regressed"
    assert v.upper < -0.03
    assert v.summary.startswith("candidate task completed is -1")
    assert "points" in v.summary


def test_the_same_rates_are_inside_a_tolerance_they_keep():
    rng = np.random.default_rng(2)
    control, candidate = rates(rng, 20_000, 0.80, 4000), rates(rng, 20_000, 0.80, 4000)
    v = stats.metric_test(
        "task_completed", control, candidate, kind="rate", harm="decrease", tolerance=0.03,
        tolerance_kind="absolute", alpha=0.01,
    )  # fmt: skip
    assert v.status == "inside_tolerance"


def test_below_the_minimum_there_is_no_verdict():
    control = MetricSums.from_values(["a"] * 10, [1.0] * 10)
    v = stats.metric_test(
        "m", control, control, kind="rate", harm="decrease", tolerance=0.03,
        tolerance_kind="absolute", alpha=0.01, label="my metric",
    )  # fmt: skip
    assert v.status == "not_enough_data"
    assert v.summary.startswith("my metric: not enough data")


def test_identical_values_do_not_claim_certainty():
    """Thirty identical values per arm: the variance floor keeps the bounds open."""
    same = MetricSums.from_values([str(i) for i in range(30)], [1.0] * 30)
    _, lo, hi = stats.metric_kernel(same, same, kind="rate", tolerance_kind="absolute", alpha=0.01)
    assert hi - lo > 0.1


def test_one_heavy_user_widens_the_bounds():
    """The variance is the unit-level one: a user who sent most requests, all failing the
    task, is one unit, and the bounds say so."""
    rng = np.random.default_rng(3)
    light = (rng.random(1000) < 0.8).astype(float).tolist()
    units = [f"u{i}" for i in range(1000)] + ["heavy"] * 1000
    clustered = MetricSums.from_values(units, light + [0.0] * 1000)
    independent = MetricSums.from_values([str(i) for i in range(2000)], light + [0.0] * 1000)
    control = MetricSums.from_values([str(i) for i in range(2000)],
                                     (rng.random(2000) < 0.4).astype(float).tolist())  # fmt: skip
    _, lo_c, hi_c = stats.metric_kernel(control, clustered, kind="rate",
                                        tolerance_kind="absolute", alpha=0.01)  # fmt: skip
    _, lo_i, hi_i = stats.metric_kernel(control, independent, kind="rate",
                                        tolerance_kind="absolute", alpha=0.01)  # fmt: skip
    assert hi_c - lo_c > 3 * (hi_i - lo_i)


def test_mean_relative_needs_positive_means():
    zero = MetricSums.from_values([str(i) for i in range(50)], [0.0] * 50)
    v = stats.metric_test(
        "score", zero, zero, kind="mean", harm="decrease", tolerance=1.1,
        tolerance_kind="relative", alpha=0.01, value_range=5.0,
    )  # fmt: skip
    assert v.status == "not_enough_data"


def test_mean_relative_uses_the_ratio():
    rng = np.random.default_rng(4)
    units = [str(u) for u in rng.integers(0, 500, 3000)]
    a = MetricSums.from_values(units, rng.uniform(1, 5, 3000).tolist())
    b = MetricSums.from_values(units, (rng.uniform(1, 5, 3000) * 0.5).tolist())
    v = stats.metric_test(
        "score", a, b, kind="mean", harm="decrease", tolerance=1.2,
        tolerance_kind="relative", alpha=0.01, value_range=5.0,
    )  # fmt: skip
    assert v.status == "regressed"
    assert 0.45 < v.estimate < 0.55


def test_paired_fieller_matches_a_brute_force_inversion():
    ma, mb, va, vb, cov, c = 0.2, 0.3, 1e-4, 2e-4, 5e-5, 2.5
    lo, hi = stats.paired_fieller_bounds(ma, mb, va, vb, cov, c)
    thetas = np.linspace(0.5, 3.0, 250_001)
    kept = thetas[(mb - thetas * ma) ** 2 <= c * c * (vb - 2 * thetas * cov + thetas**2 * va)]
    assert math.isclose(lo, kept.min(), abs_tol=1e-4)
    assert math.isclose(hi, kept.max(), abs_tol=1e-4)


def test_pairs_are_tighter_than_two_independent_arms():
    """Most requests get the same check result from both models: the paired difference
    sees only the discordant ones."""
    rng = np.random.default_rng(5)
    n = 3000
    units = [str(u) for u in rng.integers(0, 600, n)]
    control = (rng.random(n) < 0.3).astype(float)
    flips = rng.random(n) < 0.05
    candidate = np.where(flips, 1 - control, control)
    pairs = PairedSums.from_values(units, control.tolist(), candidate.tolist())
    _, lo_p, hi_p = stats.paired_kernel(pairs, kind="rate", tolerance_kind="absolute",
                                        alpha=0.01)  # fmt: skip
    _, lo_u, hi_u = stats.metric_kernel(pairs.control, pairs.candidate, kind="rate",
                                        tolerance_kind="absolute", alpha=0.01)  # fmt: skip
    assert hi_p - lo_p < 0.5 * (hi_u - lo_u)


def test_paired_refusals_regress():
    rng = np.random.default_rng(6)
    n = 2000
    units = [str(u) for u in rng.integers(0, 400, n)]
    control = (rng.random(n) < 0.01).astype(float)
    candidate = np.maximum(control, (rng.random(n) < 0.10).astype(float))
    pairs = PairedSums.from_values(units, control.tolist(), candidate.tolist())
    for kind, tol in (("absolute", 0.02), ("relative", 2.0)):
        v = stats.paired_metric_test(
            "refusal", pairs, kind="rate", harm="increase", tolerance=tol,
            tolerance_kind=kind, alpha=0.01,
        )  # fmt: skip
        assert v.status == "regressed", v.summary


# --- the rules: guardrails with a Measure ------------------------------------------------

TASK = Measure(kind="rate", harm="decrease", label="task completed")
REFUSAL = Measure(kind="rate", harm="increase", label="refusal", in_split=True, in_shadow=True)


def test_a_measure_is_tested_where_its_values_exist():
    specs = [
        GuardrailSpec("error_rate", 1.5),
        GuardrailSpec("task_completed", 0.03, "absolute", measure=TASK),
        GuardrailSpec("refusal", 0.02, "absolute", measure=REFUSAL),
    ]
    assert [g.metric for g in stage_tests("split", specs)] == [
        "error_rate", "task_completed", "refusal",
    ]  # fmt: skip
    assert [g.metric for g in stage_tests("shadow", specs)] == ["error_rate", "refusal"]
    # The plan's alpha is split over every guardrail a stage tests.
    assert split_alpha(0.05, stage_tests("split", specs))["task_completed"] == pytest.approx(
        0.05 / 3
    )


def test_a_metric_guardrail_rolls_back_a_split():
    rng = np.random.default_rng(7)
    control = stats.ArmAggregates(
        requests=4000, metrics={"task_completed": rates(rng, 4000, 0.8, 800)}
    )
    candidate = stats.ArmAggregates(
        requests=4000, metrics={"task_completed": rates(rng, 4000, 0.6, 800)}
    )
    decision = evaluate_plan(
        guardrails=[GuardrailSpec("task_completed", 0.03, "absolute", measure=TASK)],
        settings=PlanSettings(),
        stage=StageState(mode="split", expected_share=0.5),
        control=control,
        candidate=candidate,
    )
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith("task_completed: candidate task completed is")
    guardrail = decision.to_dict()["guardrails"][0]
    assert guardrail["verdict"]["label"] == "task completed"


def test_a_check_guardrail_reads_the_pairs_in_shadow():
    rng = np.random.default_rng(8)
    n = 3000
    units = [str(u) for u in rng.integers(0, 500, n)]
    control = (rng.random(n) < 0.01).astype(float)
    candidate = np.maximum(control, (rng.random(n) < 0.1).astype(float))
    pairs = PairedSums.from_values(units, control.tolist(), candidate.tolist())
    kwargs = dict(
        guardrails=[GuardrailSpec("refusal", 0.02, "absolute", measure=REFUSAL, min_samples=100)],
        settings=PlanSettings(),
        stage=StageState(mode="shadow"),
        control=stats.ArmAggregates(),
        candidate=stats.ArmAggregates(),
    )
    assert evaluate_plan(**kwargs, paired_metrics={"refusal": pairs}).action == "rollback"
    # No pairs yet: the guardrail waits.
    held = evaluate_plan(**kwargs, paired_metrics={})
    assert held.action == "hold"
    assert "100 per arm" in held.results[0].verdict.summary
