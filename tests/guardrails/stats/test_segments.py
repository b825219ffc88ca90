"""Guardrails per segment (issue 16, item 6; reference quality.md, "Segments"): bounded
segments whatever the cardinality, the alpha split (population + the plan's slots), a
regressed segment rolled back or excluded, OTHER never excluded, small segments untested;
the simulation: 20 segments A/A keep the family-wise false rollback at or below the
guardrail's alpha, and a 3x error regression in one segment of 10 % of the traffic is caught
with power >= 0.9 by 4,000 of its requests per arm while the others stay quiet. Satisfaction
and declared metrics are tested per segment too (a judge's score is not: its samples carry no
segment values), and over 20 segments, A/A and at the tolerance, keep the family-wise false
rollback at or below their alpha."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from turnout import routing, targeting

from migrations_app.guardrails import rules, segments, stats
from migrations_app.judge.measures import SCORE_MEASURE
from tests.guardrails.stats import sim

STANDARD = (
    rules.GuardrailSpec("error_rate", 1.5),
    rules.GuardrailSpec("latency_p95", 1.3),
    rules.GuardrailSpec("satisfaction", 0.1, "absolute"),
    rules.GuardrailSpec("cost_per_request", 1.2, action="alert"),
)
SETTINGS = rules.PlanSettings()
STAGE = rules.StageState(
    expected_share=0.5, min_samples=1000, min_duration_seconds=60, elapsed_seconds=3600
)
SLOTS = segments.segment_slots(1, segments.DEFAULT_TOP_K)  # one dimension: 21


# --- bounded segments --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ja", "ja"),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (2.5, "2.5"),
        (None, None),
        ("", None),
        ("x" * 65, None),
        (float("nan"), None),
        ({"a": 1}, None),
        ([1], None),
        (10**20, None),
    ],
)
def test_segment_value(value: object, expected: str | None) -> None:
    assert targeting.segment_value(value) == expected


def test_segment_values_keep_the_declared_dimensions_only() -> None:
    attributes = {"tenant": "acme", "lang": "ja", "tier": {"bad": 1}, "secret": "x"}
    assert targeting.segment_values(("tenant", "lang", "tier"), attributes) == {
        "tenant": "acme",
        "lang": "ja",
    }
    assert targeting.segment_values(("tenant",), "not a mapping") == {}


def test_a_hundred_thousand_tenants_fold_into_k_plus_one_segments() -> None:
    rng = np.random.default_rng(3)
    counts = {f"tenant-{i}": int(c) for i, c in enumerate(rng.zipf(1.5, 100_000))}
    kept = segments.busiest(counts, 20)
    assert len(kept) == 20
    assert min(counts[v] for v in kept) >= max(counts[v] for v in counts if v not in kept)
    folded = segments.fold(counts, kept, sum)
    assert len(folded) == 21 and sum(folded.values()) == sum(counts.values())
    assert folded[segments.OTHER] == sum(counts[v] for v in counts if v not in kept)
    # Ties break on the value: the choice does not depend on arrival order.
    assert segments.busiest({"b": 1, "a": 1, "c": 1}, 2) == {"a", "b"}
    assert segments.busiest({segments.OTHER: 99, "a": 1}, 5) == {"a"}


def test_the_alpha_adds_up_to_the_guardrails() -> None:
    for dims in (1, 2, 3):
        slots = segments.segment_slots(dims, 20)
        a = 0.0125
        total = a * segments.POPULATION_SHARE + slots * segments.segment_alpha(a, slots)
        assert total == pytest.approx(a)
    assert segments.segment_slots(5, 20) == 63  # at most three dimensions
    assert segments.segment_alpha(0.0125, 0) == 0.0


# --- the decision --------------------------------------------------------------------------


def arms(rng: np.random.Generator, n: int, error_rate: float = 0.02):
    return sim.random_arm(rng, n), sim.random_arm(rng, n, error_rate=error_rate)


def decide(
    parts, on_regression="rollback", guardrails=STANDARD, **kwargs
) -> segments.SegmentedDecision:
    control = stats.ArmAggregates.merge(c for _, c, _ in parts)
    candidate = stats.ArmAggregates.merge(t for _, _, t in parts)
    return segments.evaluate_with_segments(
        guardrails=guardrails,
        settings=SETTINGS,
        stage=kwargs.pop("stage", STAGE),
        control=control,
        candidate=candidate,
        segments=[segments.Segment("lang", v, c, t) for v, c, t in parts],
        slots=SLOTS,
        on_regression=on_regression,
        **kwargs,
    )


@pytest.fixture(scope="module")
def healthy():
    rng = np.random.default_rng(11)
    return [("en", *arms(rng, 30_000)), ("de", *arms(rng, 8_000))]


@pytest.fixture(scope="module")
def bad_ja():
    rng = np.random.default_rng(12)
    return ("ja", *arms(rng, 5_000, error_rate=0.06))


def test_healthy_segments_advance(healthy) -> None:
    d = decide(healthy)
    assert d.action == "advance", d.reasons
    assert [s.tested for s in d.segments] == [True, True]
    assert all(
        r.verdict.alpha == pytest.approx(0.0125 * 0.5 / 21) for s in d.segments for r in s.results
    )
    assert d.population.alphas["error_rate"] == pytest.approx(0.0125 * 0.5)
    # Satisfaction too: feedback counts in its outcome's segments (joined at ingest).
    tested = {r.spec.metric for s in d.segments for r in s.results}
    assert tested == {"error_rate", "latency_p95", "satisfaction", "cost_per_request"}
    assert not d.exclude and not d.alert


def test_a_regressed_segment_rolls_back_by_default(healthy, bad_ja) -> None:
    d = decide([*healthy, bad_ja])
    assert d.action == "rollback"
    assert any("segment lang=ja regressed" in r for r in d.reasons)
    assert d.alert and not d.exclude
    ja = next(s for s in d.segments if s.value == "ja")
    assert [r.spec.metric for r in ja.regressed()] == ["error_rate"]
    assert "error_rate@lang=ja" in d.bounds


def test_a_segment_whose_satisfaction_regresses_is_caught_alone(healthy) -> None:
    """Japanese users rate the candidate 0.3 against 0.7: the population's drop (0.05) is
    inside the tolerance (0.1), the segment's is not."""
    rng = np.random.default_rng(14)
    ja = ("ja", sim.random_arm(rng, 5_000), sim.random_arm(rng, 5_000, satisfaction=0.3))
    d = decide([*healthy, ja])
    assert d.action == "rollback", d.reasons
    population = next(r for r in d.population.results if r.spec.metric == "satisfaction")
    assert population.verdict.status != "regressed"
    regressed = {s.value: [r.spec.metric for r in s.regressed()] for s in d.segments}
    assert regressed == {"en": [], "de": [], "ja": ["satisfaction"]}
    assert "satisfaction@lang=ja" in d.bounds


def with_rate(arm: stats.ArmAggregates, rng: np.random.Generator, rate: float):
    """``arm`` with a 0/1 ``task_completed`` per request, 1 at ``rate`` (five per unit)."""
    n = arm.requests
    units = [str(u) for u in rng.integers(0, max(1, n // 5), n)]
    values = (rng.random(n) < rate).astype(float).tolist()
    sums = stats.MetricSums.from_values(units, values)
    return replace(arm, metrics={"task_completed": sums})


def test_declared_metrics_are_tested_per_segment_a_judge_s_score_is_not() -> None:
    """A per-request metric counts in its outcome's segments (carried by it or joined to it
    at ingest): its guardrail is tested per segment. A pointwise judge's scores carry no
    segment values: its guardrail stays the population's."""
    task = rules.GuardrailSpec(
        "task_completed", 0.05, "absolute",
        measure=rules.Measure(kind="rate", harm="decrease", label="task completed"),
    )  # fmt: skip
    judge = rules.GuardrailSpec("judge_score", 0.3, "absolute", measure=SCORE_MEASURE)
    rng = np.random.default_rng(15)
    parts = []
    for value, n, rate in (("en", 30_000, 0.8), ("de", 8_000, 0.8), ("ja", 5_000, 0.5)):
        control, candidate = arms(rng, n)
        parts.append((value, with_rate(control, rng, 0.8), with_rate(candidate, rng, rate)))
    d = decide(parts, guardrails=(*STANDARD, task, judge))
    assert d.action == "rollback", d.reasons
    population = next(r for r in d.population.results if r.spec.metric == "task_completed")
    assert population.verdict.status != "regressed"
    ja = next(s for s in d.segments if s.value == "ja")
    assert [r.spec.metric for r in ja.regressed()] == ["task_completed"]
    tested = {r.spec.metric for s in d.segments for r in s.results}
    assert "task_completed" in tested and "judge_score" not in tested
    # Six guardrails share the alpha, the judge's included (its segment share unused).
    assert d.segment_alphas["task_completed"] == pytest.approx(0.05 / 6 * 0.5 / SLOTS)


def test_a_regressed_segment_is_excluded_when_the_plan_says_so(healthy, bad_ja) -> None:
    d = decide([*healthy, bad_ja], on_regression="exclude")
    assert d.exclude == (("lang", "ja"),)
    assert d.action == "hold" and d.alert
    assert any("excluded (its units go to control)" in r for r in d.reasons)
    # Once excluded it is not tested again: the rest goes on.
    after = decide([*healthy, bad_ja], on_regression="exclude", excluded=[("lang", "ja")])
    assert after.exclude == () and {s.value for s in after.segments} == {"en", "de"}


def test_other_is_never_excluded(healthy, bad_ja) -> None:
    other = (segments.OTHER, bad_ja[1], bad_ja[2])
    d = decide([*healthy, other], on_regression="exclude")
    assert d.action == "rollback" and d.exclude == ()


def test_a_small_segment_is_not_tested(healthy) -> None:
    rng = np.random.default_rng(13)
    tiny = ("ko", *arms(rng, 150))
    d = decide([*healthy, tiny])
    ko = next(s for s in d.segments if s.value == "ko")
    assert not ko.tested and ko.min_samples == 1000 and ko.results == ()
    assert d.action == "advance", d.reasons
    assert any("below their minimum sample" in r for r in d.reasons)


def test_no_segment_is_tested_at_full_share_or_in_shadow(healthy, bad_ja) -> None:
    full = rules.StageState(expected_share=1.0, min_samples=0)
    assert decide([*healthy, bad_ja], stage=full).segments == ()
    shadow = rules.StageState(mode="shadow", min_samples=0)
    assert decide([*healthy, bad_ja], stage=shadow).segments == ()


def test_previous_bounds_are_kept_per_segment(healthy, bad_ja) -> None:
    first = decide([*healthy, bad_ja])
    again = decide([*healthy, bad_ja], previous=first.bounds)
    key = "error_rate@lang=ja"
    assert again.bounds[key].lower >= first.bounds[key].lower


@pytest.mark.parametrize(
    ("attributes", "excluded"),
    [
        ({"lang": "ja"}, True),
        ({"lang": "en"}, False),
        ({"beta": True}, True),
        ({"beta": "true"}, True),
        ({"beta": False}, False),
        ({"seats": 3}, True),
        ({"seats": 3.0}, True),
        ({"seats": "3"}, True),
        ({"seats": 4}, False),
    ],
)
def test_exclusion_rules_match_what_the_sdk_is_given(attributes: dict, excluded: bool) -> None:
    name = next(iter(attributes))
    value = targeting.segment_value(attributes[name])
    assert value is not None
    bad = {"lang": "ja", "beta": "true", "seats": "3"}[name]
    rules_ = segments.exclusion_rules(name, bad)
    assert targeting.rule_problems(rules_) == []
    plan = routing.parse_plan(
        {
            "key": "p", "version": 1, "run": 1, "status": "running", "phase": "rollout",
            "salt": "s", "weight_bp": 10_000, "shadow_bp": 0,
            "control": {"provider": "o", "kind": "openai", "model": "a", "params": {}},
            "candidate": {"provider": "o", "kind": "openai", "model": "b", "params": {}},
            "rules": rules_,
        }
    )  # fmt: skip
    d = routing.decide(plan, "u1", decision_id="d", attributes=attributes)
    assert (d.reason == "EXCLUDED") is excluded


# --- the simulation ------------------------------------------------------------------------

ALPHA = 0.05 / 4  # the standard plan's per-guardrail alpha
R = 2000


def segment_paths(rng, shares, ratios, per_look_total):
    """Per segment, both arms' cumulative error counts (2 % base, independent requests)."""
    out = []
    for share, ratio in zip(shares, ratios, strict=True):
        n = max(1, round(per_look_total * share))
        out.append((sim.iid_counts(rng, R, n, 0.02), sim.iid_counts(rng, R, n, 0.02 * ratio)))
    return out


def population(paths):
    a = [p[0] for p in paths]
    b = [p[1] for p in paths]

    def add(arms):
        first = arms[0]
        fields = {f: sum(getattr(x, f) for x in arms) for f in first.__dataclass_fields__}
        return sim.CountPaths(**fields)

    return add(a), add(b)


def rollbacks(paths, alpha):
    return [sim.error_rollbacks(a, b, tolerance=1.5, alpha=alpha) for a, b in paths]


@pytest.mark.slow
def test_twenty_segments_a_a_family_wise_at_most_alpha() -> None:
    """20 equal segments of a language dimension (top 20 of 21 slots), A/A, 240 looks up to
    12,000 requests per arm: population and segments together roll back in at most alpha of
    the runs (measured 0.000-0.002: the union bound is conservative)."""
    rng = np.random.default_rng(16)
    paths = segment_paths(rng, [0.05] * 20, [1.0] * 20, 50 * 20)
    seg_alpha = segments.segment_alpha(ALPHA, SLOTS)
    any_rollback = np.zeros(R, dtype=bool)
    for d in rollbacks(paths, seg_alpha):
        any_rollback |= d.any(axis=1)
    pop = sim.error_rollbacks(
        *population(paths), tolerance=1.5, alpha=ALPHA * segments.POPULATION_SHARE
    )
    any_rollback |= pop.any(axis=1)
    hits = int(any_rollback.sum())
    assert sim.rate_ok(hits, R, ALPHA), hits / R


@pytest.mark.slow
def test_a_3x_regression_in_a_tenth_of_traffic_is_caught_and_only_there() -> None:
    """One segment of 10 % of the traffic with 3x errors (2 % -> 6 %), nine healthy ones of
    10 % each: the segment's guardrail rolls back (or excludes) in >= 90 % of runs by 4,000
    of its requests per arm (measured 0.96); the healthy segments together stay at or below
    alpha."""
    rng = np.random.default_rng(17)
    paths = segment_paths(rng, [0.1] * 10, [3.0] + [1.0] * 9, 500)
    seg_alpha = segments.segment_alpha(ALPHA, SLOTS)
    decisions = rollbacks(paths, seg_alpha)
    n = paths[0][0].n[0]
    by_4000 = decisions[0][:, n <= 4000].any(axis=1).mean()
    assert by_4000 >= 0.9, by_4000
    elsewhere = np.zeros(R, dtype=bool)
    for d in decisions[1:]:
        elsewhere |= d.any(axis=1)
    assert sim.rate_ok(int(elsewhere.sum()), R, ALPHA), elsewhere.mean()


def mean_paths(rng, p_control: float, p_candidate: float, per_look: int):
    """Per look, both arms' cumulative n, sum and sum of squares of 0/1 values (one per
    unit: a thumbs rating, a task completed)."""
    return sim.binary_draws(rng, R, per_look, p_control), sim.binary_draws(
        rng, R, per_look, p_candidate
    )


def satisfaction_rollbacks(a, b, alpha):
    return sim.mean_rollbacks(
        *a, *b, alpha=alpha, log_ratio=False, limit=-0.1, harm="decrease",
        min_n=stats.MIN_FEEDBACK_PER_ARM,
    )  # fmt: skip


def rate_rollbacks(a, b, alpha, tolerance=0.03):
    _, _, hi = stats.difference_kernel(
        sim.independent_means(*a), sim.independent_means(*b), kind="rate", alpha=alpha,
        null=-tolerance,
    )  # fmt: skip
    return (np.minimum(a[0], b[0]) >= stats.MIN_METRIC_SAMPLES) & (hi < -tolerance)


def summed(paths):
    return tuple(sum(p[i] for p in paths) for i in range(3))


@pytest.mark.slow
@pytest.mark.parametrize("effect", [0.0, 1.0], ids=["A/A", "at tolerance"])
def test_twenty_segments_satisfaction_and_a_rate_metric_family_wise_at_most_alpha(
    effect: float,
) -> None:
    """Satisfaction (thumbs, 0.7, tolerance 0.1) and a declared rate metric (0.8, tolerance 3
    points), each tested on 20 equal segments at the segment alpha and on the population at
    half of its own, A/A and with every segment's effect exactly at the tolerance: per
    guardrail, population and segments together roll back in at most alpha of the runs. A
    segment is tested from the first look here (the engine waits for its minimum sample:
    fewer looks, no more rollbacks)."""
    rng = np.random.default_rng(19)
    seg_alpha = segments.segment_alpha(ALPHA, SLOTS)
    for name, base, drop, per_look, test in (
        ("satisfaction", 0.7, 0.1, 5, satisfaction_rollbacks),
        ("task_completed", 0.8, 0.03, 10, rate_rollbacks),
    ):
        paths = [mean_paths(rng, base, base - drop * effect, per_look) for _ in range(20)]
        hits = np.zeros(R, dtype=bool)
        for a, b in paths:
            hits |= test(a, b, seg_alpha).any(axis=1)
        pop_a, pop_b = summed([a for a, _ in paths]), summed([b for _, b in paths])
        hits |= test(pop_a, pop_b, ALPHA * segments.POPULATION_SHARE).any(axis=1)
        assert sim.rate_ok(int(hits.sum()), R, ALPHA), (name, hits.mean())
