"""The judge's guardrails on plain data: the paired preference in shadow and the pointwise score
in a split, as per-request metrics (judge.measures: a Measure each, tested by
stats.paired_metric_test and stats.metric_test like every per-request metric)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from migrations_app.guardrails import stats
from migrations_app.guardrails.rules import GuardrailSpec, PlanSettings, StageState, evaluate_plan
from migrations_app.guardrails.stats import MetricSums, PairedSums
from migrations_app.judge.measures import PREFERENCE_MEASURE, SCORE_MEASURE

ALPHA = 0.0125


def preferences(rng: np.random.Generator, n: int, net: float, users: int) -> PairedSums:
    """``n`` verdicts from ``users`` users: +1 with probability (0.6 + net) / 2, -1 with
    (0.6 - net) / 2, a tie otherwise (net preference ``net``); control's side all zeros."""
    u = rng.random(n)
    win, loss = (0.6 + net) / 2, (0.6 - net) / 2
    s = np.where(u < win, 1.0, np.where(u < win + loss, -1.0, 0.0))
    units = [str(i) for i in rng.integers(0, users, n)]
    return PairedSums.from_values(units, [0.0] * n, s.tolist())


def preference_test(sums: PairedSums, tolerance: float = 0.05) -> stats.Verdict:
    m = PREFERENCE_MEASURE
    return stats.paired_metric_test(
        "judge_preference", sums, kind=m.kind, harm=m.harm, tolerance=tolerance,
        tolerance_kind="absolute", alpha=ALPHA, value_range=m.value_range, label=m.label,
    )  # fmt: skip


def test_a_candidate_the_judge_prefers_less_regresses():
    rng = np.random.default_rng(1)
    v = preference_test(preferences(rng, 3000, -0.2, 1500))
    assert v.status == "regressed", v.summary
    assert v.metric == "judge_preference" and v.harm == "decrease"
    assert v.upper < -0.05 and v.estimate == pytest.approx(-0.2, abs=0.05)
    # Said in points, as the tolerance is written: "may lose at most 5 points net".
    assert "tolerance -5.0 points: regressed" in v.summary
    assert v.summary.startswith("candidate net judge preference is")


def test_an_equal_candidate_is_proven_inside():
    rng = np.random.default_rng(2)
    v = preference_test(preferences(rng, 4000, 0.0, 2000))
    assert v.status == "inside_tolerance", v.summary
    assert v.lower >= -0.05


def test_too_few_pairs_is_not_enough_data():
    rng = np.random.default_rng(3)
    v = preference_test(preferences(rng, stats.MIN_METRIC_SAMPLES - 1, -1.0, 10))
    assert v.status == "not_enough_data"


def test_the_preference_is_tested_over_users_not_pairs():
    """The same 1,000 verdicts, spread over 1,000 users or given by 10 users who each
    always say the same: the second bound is far wider (10 effective users, t with 9 df)."""
    s = [1.0] * 450 + [-1.0] * 550
    spread = PairedSums.from_values([str(i) for i in range(1000)], [0.0] * 1000, s)
    few = PairedSums.from_values([str(i // 100) for i in range(1000)], [0.0] * 1000, s)
    a, b = preference_test(spread), preference_test(few)
    assert a.estimate == b.estimate == pytest.approx(-0.1)
    assert (b.upper - b.lower) > 3 * (a.upper - a.lower)


def scores(rng: np.random.Generator, n: int, good: float, users: int) -> MetricSums:
    """Rubric scores 1-5: 1 + Binomial(4, good), mean 1 + 4 good."""
    values = 1.0 + rng.binomial(4, good, n)
    return MetricSums.from_values([str(u) for u in rng.integers(0, users, n)], values.tolist())


def score_test(control: MetricSums, candidate: MetricSums) -> stats.Verdict:
    m = SCORE_MEASURE
    return stats.metric_test(
        "judge_score", control, candidate, kind=m.kind, harm=m.harm, tolerance=0.1,
        tolerance_kind="absolute", alpha=ALPHA, value_range=m.value_range, label=m.label,
    )  # fmt: skip


def test_a_worse_scored_candidate_regresses_and_an_equal_one_is_inside():
    rng = np.random.default_rng(4)
    control = scores(rng, 2000, 0.7, 800)
    worse = scores(rng, 2000, 0.6, 800)  # -0.4 on the 1-5 scale
    v = score_test(control, worse)
    assert v.status == "regressed", v.summary
    assert v.estimate == pytest.approx(-0.4, abs=0.1)
    assert v.summary.startswith("candidate judge score (1-5) is")
    same = score_test(control, scores(rng, 4000, 0.7, 1600))
    assert same.status == "inside_tolerance", same.summary


def test_score_test_waits_for_its_minimum_per_arm():
    rng = np.random.default_rng(5)
    v = score_test(scores(rng, 500, 0.7, 100), scores(rng, 29, 0.1, 10))
    assert v.status == "not_enough_data"
    assert math.isinf(v.lower) and math.isinf(v.upper)


def test_the_vectorised_kernels_are_the_tests():
    """The simulations run stats.paired_difference_kernel and stats.difference_kernel over
    rollouts x looks; for one evaluation they give what the guardrails' tests give."""
    rng = np.random.default_rng(6)
    pairs = preferences(rng, 800, -0.1, 300)
    verdict = preference_test(pairs)
    est, lo, hi = stats.paired_difference_kernel(
        pairs.difference.ratio_arm(), alpha=ALPHA, value_range=1.0
    )
    assert (float(est), float(lo), float(hi)) == (verdict.estimate, verdict.lower, verdict.upper)
    a, b = scores(rng, 600, 0.7, 200), scores(rng, 700, 0.65, 250)
    verdict = score_test(a, b)
    est, lo, hi = stats.difference_kernel(
        a.ratio_arm(), b.ratio_arm(), kind="mean", alpha=ALPHA, value_range=4.0
    )
    assert (float(est), float(lo), float(hi)) == (verdict.estimate, verdict.lower, verdict.upper)


def test_the_judge_guardrails_are_tested_where_their_values_exist():
    """The preference only in shadow (pairs), the score only in a split (per arm)."""
    specs = [
        GuardrailSpec("judge_preference", 0.05, "absolute", measure=PREFERENCE_MEASURE),
        GuardrailSpec("judge_score", 0.1, "absolute", measure=SCORE_MEASURE),
    ]
    rng = np.random.default_rng(7)
    arms = stats.ArmAggregates(requests=5000)
    shadow = evaluate_plan(
        guardrails=specs, settings=PlanSettings(), stage=StageState(mode="shadow"),
        control=arms, candidate=arms,
        paired_metrics={"judge_preference": preferences(rng, 3000, -0.25, 1500)},
    )  # fmt: skip
    assert [r.spec.metric for r in shadow.results] == ["judge_preference"]
    assert shadow.action == "rollback"
    control = stats.ArmAggregates(
        requests=5000, metrics={"judge_score": scores(rng, 2000, 0.7, 800)}
    )
    candidate = stats.ArmAggregates(
        requests=5000, metrics={"judge_score": scores(rng, 2000, 0.55, 800)}
    )
    split = evaluate_plan(
        guardrails=specs, settings=PlanSettings(), stage=StageState(mode="split"),
        control=control, candidate=candidate,
    )  # fmt: skip
    assert [r.spec.metric for r in split.results] == ["judge_score"]
    assert split.action == "rollback"


def test_a_judge_below_the_floor_cannot_roll_back_or_hold_only_alert():
    """The same regressed preference: with a trusted judge the plan rolls back; with one the
    plan's floor does not trust, it alerts (and says why), and a judge guardrail without
    enough data does not hold a shadow that is otherwise done."""
    rng = np.random.default_rng(8)
    worse = {"judge_preference": preferences(rng, 3000, -0.25, 1500)}
    arms = stats.ArmAggregates(requests=5000)
    why = "12 of the 50 human labels the plan asks for"

    def decide(spec: GuardrailSpec, paired: dict[str, PairedSums]):
        return evaluate_plan(
            guardrails=[spec], settings=PlanSettings(), stage=StageState(mode="shadow"),
            control=arms, candidate=arms, paired_metrics=paired,
        )  # fmt: skip

    trusted = GuardrailSpec("judge_preference", 0.05, "absolute", measure=PREFERENCE_MEASURE)
    assert decide(trusted, worse).action == "rollback"
    untrusted = GuardrailSpec(
        "judge_preference", 0.05, "absolute", measure=PREFERENCE_MEASURE, alert_only=why
    )
    alerted = decide(untrusted, worse)
    assert alerted.action == "alert" and alerted.alert
    (result,) = alerted.results
    assert result.verdict.status == "regressed" and result.wants == "alert"
    assert f"this guardrail only alerts: {why}" in result.verdict.notes
    # Too few pairs: the trusted judge holds the plan; the untrusted one does not.
    few = {"judge_preference": preferences(rng, 10, -0.25, 10)}
    assert decide(trusted, few).action == "hold"
    assert decide(untrusted, few).action == "advance"
    # A pause asked for by a trusted judge is still a pause.
    pausing = GuardrailSpec(
        "judge_preference", 0.05, "absolute", "pause", measure=PREFERENCE_MEASURE
    )
    assert decide(pausing, worse).action == "pause"
