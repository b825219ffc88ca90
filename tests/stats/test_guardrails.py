"""migrations_app.guardrails: alpha split, circuit breaker, SRM, advance rule, intersection."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from migrations_app import guardrails as G
from migrations_app import stats as S
from tests.stats import sim

STANDARD = (
    G.GuardrailSpec("error_rate", 1.5),
    G.GuardrailSpec("latency_p95", 1.3),
    G.GuardrailSpec("satisfaction", 0.1, "absolute"),
    G.GuardrailSpec("cost_per_request", 1.2, action="alert"),
)
SETTINGS = G.PlanSettings()
DONE = G.StageState(
    expected_share=0.5, min_samples=1000, min_duration_seconds=1800, elapsed_seconds=3600
)


@pytest.fixture(scope="module")
def arms() -> tuple[S.ArmAggregates, S.ArmAggregates]:
    rng = np.random.default_rng(7)
    return sim.random_arm(rng, 40_000), sim.random_arm(rng, 40_000)


def decide(control, candidate, stage=DONE, guardrails=STANDARD, **kwargs) -> G.PlanDecision:
    return G.evaluate_plan(
        guardrails=guardrails,
        settings=kwargs.pop("settings", SETTINGS),
        stage=stage,
        control=control,
        candidate=candidate,
        **kwargs,
    )


def test_alpha_split():
    assert G.split_alpha(0.05, STANDARD) == {g.metric: 0.0125 for g in STANDARD}
    assert G.split_alpha(0.05, STANDARD[:1]) == {"error_rate": 0.05}
    assert G.stage_alpha_shares(4) == [0.25] * 4
    d = decide(S.ArmAggregates(), S.ArmAggregates(), replace(DONE, alpha_share=0.5))
    assert d.alphas == {g.metric: 0.00625 for g in STANDARD}
    assert all(v.alpha == 0.00625 for v in d.verdicts)


def test_healthy_candidate_advances_only_when_samples_and_duration_are_met(arms):
    control, candidate = arms
    d = decide(control, candidate)
    assert [v.status for v in d.verdicts] == ["inside_tolerance"] * 4, [
        v.summary for v in d.verdicts
    ]
    assert d.action == "advance" and not d.alert
    early = decide(control, candidate, replace(DONE, elapsed_seconds=600))
    assert early.action == "hold" and any("10 of 30 minutes" in r for r in early.reasons)
    almost = decide(control, candidate, replace(DONE, elapsed_seconds=1799.5))
    assert any("29 of 30 minutes" in r for r in almost.reasons)
    short = replace(DONE, min_duration_seconds=60, elapsed_seconds=36.6)
    assert any("36 of 60 seconds" in r for r in decide(control, candidate, short).reasons)
    few = decide(control, candidate, replace(DONE, min_samples=50_000))
    assert few.action == "hold"
    json.dumps(d.to_dict(), allow_nan=False)


def test_not_enough_data_holds():
    rng = np.random.default_rng(8)
    d = decide(sim.random_arm(rng, 20), sim.random_arm(rng, 20))
    assert d.action == "hold"
    assert {v.status for v in d.verdicts} == {"not_enough_data"}
    guard = (G.GuardrailSpec("error_rate", 1.5, min_samples=10**6),)
    d = decide(*[sim.random_arm(rng, 40_000) for _ in range(2)], guardrails=guard)
    assert d.verdicts[0].status == "not_enough_data" and d.action == "hold"


def test_regressions_map_to_the_guardrail_action(arms):
    control, _ = arms
    rng = np.random.default_rng(9)
    slow = sim.random_arm(rng, 40_000, latency_factor=2.0)
    assert decide(control, slow).action == "rollback"
    pause = tuple(replace(g, action="pause") if g.metric == "latency_p95" else g for g in STANDARD)
    assert decide(control, slow, guardrails=pause).action == "pause"
    pricey = sim.random_arm(rng, 40_000, cost_factor=2.0)
    d = decide(control, pricey)
    assert d.action == "alert" and d.alert
    assert any(r.startswith("cost_per_request: candidate cost per request is") for r in d.reasons)


def test_circuit_breaker_rolls_back_at_once():
    def arm(n: int, e: int) -> S.ArmAggregates:
        return S.ArmAggregates(requests=n, errors=e)

    assert G.circuit_breaker(arm(50, 11), SETTINGS) is not None
    assert G.circuit_breaker(arm(50, 10), SETTINGS) is None  # 20 % is not above 20 %
    assert G.circuit_breaker(arm(49, 40), SETTINGS) is None
    d = decide(arm(50, 0), arm(50, 11))
    assert d.action == "rollback" and d.circuit_breaker and d.alert
    strict = G.PlanSettings(circuit_breaker_error_rate=0.05)
    assert decide(arm(60, 0), arm(60, 4), settings=strict).action == "rollback"


def test_sample_ratio_mismatch_holds_and_alerts_never_rolls_back(arms):
    control, candidate = arms
    stage = replace(DONE, expected_share=0.4)  # units arrive 50/50: a broken split
    d = decide(control, candidate, stage)
    assert d.sample_ratio is not None and d.sample_ratio.mismatch
    assert d.action == "hold" and d.alert
    assert any(r.startswith("sample ratio mismatch") for r in d.reasons)
    shadow = replace(stage, mode="shadow")
    assert decide(control, candidate, shadow).sample_ratio is None


def test_running_intersection_only_tightens():
    rng = np.random.default_rng(10)
    windows_a, windows_b = [], []
    previous: dict[str, G.Bounds] = {}
    history: list[dict[str, G.Bounds]] = []
    for _ in range(12):
        windows_a.append(sim.random_arm(rng, 3000, units=600))
        windows_b.append(sim.random_arm(rng, 3000, units=600))
        d = decide(
            S.ArmAggregates.merge(windows_a), S.ArmAggregates.merge(windows_b), previous=previous
        )
        for metric, bounds in d.bounds.items():
            if metric in previous:
                assert bounds.lower >= previous[metric].lower
                assert bounds.upper <= previous[metric].upper
        for result in d.results:
            if result.verdict.status != "not_enough_data":
                assert result.verdict.lower == result.bounds.lower
        previous = dict(d.bounds)
        history.append(previous)
    assert all(math.isfinite(b.upper) for b in history[-1].values())
    stored = {
        m: G.Bounds.from_dict(json.loads(json.dumps(b.to_dict()))) for m, b in previous.items()
    }
    assert stored == previous


def test_crossed_bounds_check_harm_first():
    rng = np.random.default_rng(11)
    control = sim.random_arm(rng, 40_000)
    slow = sim.random_arm(rng, 40_000, latency_factor=2.0)
    previous = {"latency_p95": G.Bounds(0.5, 1.0)}
    d = decide(control, slow, guardrails=STANDARD[1:2], previous=previous)
    result = d.results[0]
    assert result.bounds.lower > result.bounds.upper
    assert result.verdict.status == "regressed" and d.action == "rollback"
    assert any("no longer overlap" in n for n in result.verdict.notes)


def test_shadow_mode_uses_paired_errors():
    rng = np.random.default_rng(12)
    arm = sim.random_arm(rng, 5000)
    pairs = S.PairedErrors(n=5000, control_only=10, candidate_only=120, both=40)
    d = decide(arm, arm, replace(DONE, mode="shadow"), STANDARD[:1], paired_errors=pairs)
    assert d.action == "rollback" and d.verdicts[0].status == "regressed"


def test_shadow_does_not_wait_for_feedback_on_answers_no_user_saw(arms):
    """In shadow the candidate's answers reach no user, so it has no feedback: the
    satisfaction guardrail is not tested there (it would hold the phase forever), and the
    plan's alpha is split over the guardrails that are."""
    control, candidate = arms
    unrated = replace(
        candidate, feedback_n=0, feedback_sum=0.0, feedback_sum_sq=0.0,
        feedback_clusters=S.ClusterSums(), feedback_rate_clusters=S.ClusterSums(),
    )  # fmt: skip
    pairs = S.PairedErrors(n=40_000, control_only=400, candidate_only=400, both=100)
    shadow = replace(DONE, mode="shadow")
    d = decide(control, unrated, shadow, paired_errors=pairs)
    assert [v.metric for v in d.verdicts] == ["error_rate", "latency_p95", "cost_per_request"]
    assert d.alphas == {m: 0.05 / 3 for m in ("error_rate", "latency_p95", "cost_per_request")}
    assert d.action == "advance", d.reasons
    # The same unrated candidate in a split holds: there users do see its answers.
    assert decide(control, unrated).action == "hold"


def _independent(requests: int, errors: int) -> S.ArmAggregates:
    return S.ArmAggregates(
        requests=requests,
        errors=errors,
        error_clusters=S.ClusterSums(requests, errors, errors, requests),
    )


def test_confirmatory_look_is_taken_once_at_the_step_minimum():
    """240 vs 438 errors in 12k requests per arm, the error guardrail alone (alpha 0.05):
    the sequence is not yet sure the ratio is above 1.5, even with all the alpha; the
    fixed-sample look at the step's minimum is, with 2/3 of it."""
    control, candidate = _independent(12_000, 240), _independent(12_000, 438)
    errors_only = STANDARD[:1]
    alpha = SETTINGS.alpha
    no_minimum = decide(control, candidate, replace(DONE, min_samples=0), errors_only)
    assert no_minimum.verdicts[0].status == "warning" and no_minimum.action == "alert"
    assert not no_minimum.bounds["error_rate"].looked
    first = decide(control, candidate, replace(DONE, min_samples=12_000), errors_only)
    verdict = first.verdicts[0]
    assert verdict.status == "regressed" and first.action == "rollback", verdict.summary
    assert verdict.alpha == alpha
    assert any(n.startswith("confirmatory look at 12000 control") for n in verdict.notes)
    stored = {
        m: G.Bounds.from_dict(json.loads(json.dumps(b.to_dict()))) for m, b in first.bounds.items()
    }
    assert stored["error_rate"].looked and stored == first.bounds
    # Spent: later evaluations keep its bound through the intersection and do not look again.
    more_c, more_b = _independent(13_000, 250), _independent(13_000, 470)
    later = decide(more_c, more_b, replace(DONE, min_samples=12_000), errors_only, previous=stored)
    assert later.bounds["error_rate"].lower >= stored["error_rate"].lower
    assert not any(n.startswith("confirmatory") for n in later.verdicts[0].notes)
    fresh = decide(more_c, more_b, replace(DONE, min_samples=12_000), errors_only)
    assert fresh.bounds["error_rate"].looked
    # Before the minimum, or before 10 errors, the look waits.
    early = decide(control, candidate, replace(DONE, min_samples=20_000), errors_only)
    assert not early.bounds["error_rate"].looked
    quiet = decide(
        _independent(12_000, 2), _independent(12_000, 5), replace(DONE, min_samples=100),
        errors_only,
    )  # fmt: skip
    assert not quiet.bounds.get("error_rate", G.Bounds()).looked
