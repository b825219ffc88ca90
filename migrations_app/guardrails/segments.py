"""Guardrails per segment (issue 16, item 6; ../shared/reference/quality.md, "Segments").

Pure: plain data in, plain data out (no ORM, no clock). A plan declares up to
:data:`MAX_DIMENSIONS` segment dimensions (attribute names such as ``tenant`` or ``lang``).
Per dimension at most ``top_k`` values are kept, the busiest; the rest fold into
:data:`OTHER`, so the number of segments, the memory and the rows stay bounded whatever the
cardinality (:func:`busiest`, :func:`fold`).

The alpha. Each guardrail's alpha (the plan's, split over its guardrails and the run's stages
by :func:`rules.evaluate_plan`) is split once more: :data:`POPULATION_SHARE` for the whole
population, the rest evenly over the plan's segment *slots*, ``dimensions x (top_k + 1)``
(:func:`segment_alpha`). The slots are fixed by the plan, not by how many segments have data
so far: a segment's confidence sequence keeps one level for the whole stage, and the union
bound over population and slots keeps the family-wise false rollback at or below the plan's
alpha, however many segments reach their minimum sample and whenever they do.

A segment is tested once both arms have the stage's minimum sample in it (at least
:data:`MIN_SEGMENT_SAMPLES`). A regressed segment asks for its guardrail's action; when the
plan says ``exclude``, a rollback becomes the exclusion of that segment (its units go to
control, reason EXCLUDED) and the run goes on: :func:`exclusion_rules` are the rules the
engine adds in front of the plan's (plans/targeting.rule_add). :data:`OTHER` cannot be
excluded (it is no one value): its regression rolls back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from migrations_app.guardrails.rules import (
    ACTION_RANK,
    Action,
    Bounds,
    GuardrailResult,
    GuardrailSpec,
    PlanDecision,
    PlanSettings,
    StageState,
    evaluate_guardrail,
    evaluate_plan,
    split_alpha,
    tested_in,
)
from migrations_app.guardrails.stats import METRICS, ArmAggregates, Verdict, evaluate_metrics

MAX_DIMENSIONS = 3
DEFAULT_TOP_K = 20
MAX_TOP_K = 50
OTHER = "other"
# The share of each guardrail's alpha the whole population keeps; the rest is the segments'.
POPULATION_SHARE = 0.5
# The least sample per arm a segment is tested on, when the step's minimum is smaller.
MIN_SEGMENT_SAMPLES = 200

OnRegression = Literal["rollback", "exclude"]
T = TypeVar("T")


def busiest(counts: Mapping[str, int], top_k: int) -> frozenset[str]:
    """The ``top_k`` values with the most requests (ties: the smaller value first, so the
    choice does not depend on the order they came in). :data:`OTHER` itself is never kept
    as a value: it is where the rest goes."""
    ranked = sorted((v for v in counts if v != OTHER), key=lambda v: (-counts[v], v))
    return frozenset(ranked[: max(0, top_k)])


def fold(
    per_value: Mapping[str, T], kept: Iterable[str], merge: Callable[[list[T]], T]
) -> dict[str, T]:
    """``per_value`` with every value not in ``kept`` merged into :data:`OTHER`."""
    keep = set(kept)
    out: dict[str, T] = {}
    rest: list[T] = []
    for value, item in per_value.items():
        if value in keep:
            out[value] = item
        else:
            rest.append(item)
    if rest:
        out[OTHER] = merge(rest)
    return out


def segment_slots(dimensions: int, top_k: int) -> int:
    """How many segments a plan can ever test: per dimension its kept values and OTHER."""
    return max(0, min(dimensions, MAX_DIMENSIONS)) * (max(0, top_k) + 1)


def segment_alpha(guardrail_alpha: float, slots: int) -> float:
    """Each segment's alpha for one guardrail (the union bound over the plan's slots)."""
    return guardrail_alpha * (1.0 - POPULATION_SHARE) / slots if slots else 0.0


def segment_key(metric: str, dimension: str, value: str) -> str:
    """Where a segment's running bounds are stored beside the population's (by metric)."""
    return f"{metric}@{dimension}={value}"


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment's aggregates in the current stage."""

    dimension: str
    value: str
    control: ArmAggregates
    candidate: ArmAggregates


def kept_in(spec: GuardrailSpec, segment: Segment) -> bool:
    """Whether the segment holds the guardrail's values, and so tests it: always the built-in
    six (satisfaction too: feedback counts in its outcome's segments, joined at ingest), a
    per-request metric once either arm has values of it in the segment (carried by their
    outcome or joined to it). A judge's scores come from judge samples, which carry no
    segment values: its guardrail stays the population's instead of reading "not enough
    data" in every segment."""
    return (
        spec.measure is None
        or spec.metric in segment.control.metrics
        or spec.metric in segment.candidate.metrics
    )


@dataclass(frozen=True, slots=True)
class SegmentResult:
    """One segment's guardrails: tested once both arms have ``min_samples``."""

    dimension: str
    value: str
    tested: bool
    requests: tuple[int, int]
    results: tuple[GuardrailResult, ...]
    wants: Action
    min_samples: int

    @property
    def label(self) -> str:
        return f"{self.dimension}={self.value}"

    def regressed(self) -> tuple[GuardrailResult, ...]:
        return tuple(r for r in self.results if r.verdict.status == "regressed")

    def to_dict(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "value": self.value,
            "tested": self.tested,
            "requests": list(self.requests),
            "min_samples": self.min_samples,
            "wants": self.wants,
            "guardrails": [r.to_dict() for r in self.results],
        }


@dataclass(frozen=True, slots=True)
class SegmentedDecision:
    """The plan's decision with its segments: the population's (:class:`PlanDecision`, at its
    share of the alpha), each segment's results, the segments to exclude, and the action."""

    action: Action
    reasons: tuple[str, ...]
    population: PlanDecision
    segments: tuple[SegmentResult, ...]
    exclude: tuple[tuple[str, str], ...]
    bounds: Mapping[str, Bounds]
    alert: bool
    segment_alphas: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.population.to_dict(),
            "action": self.action,
            "alert": self.alert,
            "reasons": list(self.reasons),
            "segments": [s.to_dict() for s in self.segments],
            "exclude": [list(e) for e in self.exclude],
            "segment_alphas": dict(self.segment_alphas),
        }


def evaluate_segment(
    segment: Segment,
    guardrails: Sequence[GuardrailSpec],
    *,
    alphas: Mapping[str, float],
    min_samples: int,
    previous: Mapping[str, Bounds],
    settings: PlanSettings,
    on_regression: OnRegression,
    verdicts: Mapping[str, Verdict] | None = None,
) -> SegmentResult:
    """Test one segment's guardrails at their segment alphas (split stages only).
    ``verdicts``: their tests already run, by metric (:func:`evaluate_with_segments` runs
    each metric's over every tested segment at once)."""
    c, t = segment.control, segment.candidate
    floor = segment_floor(min_samples)
    tested = min(c.requests, t.requests) >= floor
    if not tested:
        return SegmentResult(
            segment.dimension, segment.value, False, (c.requests, t.requests), (), "advance", floor
        )
    results = []
    for spec in guardrails:
        if not kept_in(spec, segment):
            continue
        key = segment_key(spec.metric, segment.dimension, segment.value)
        result = evaluate_guardrail(
            spec, c, t, alpha=alphas[spec.metric], previous=previous.get(key),
            n_star=settings.n_star, design_samples=0,
            verdict=(verdicts or {}).get(spec.metric),
        )  # fmt: skip
        results.append(result)
    # A segment acts on a regression only: proving every segment inside its tolerance at a
    # segment's alpha would hold plans for weeks; advancing is the population's to decide.
    wants: Action = "advance"
    for r in results:
        if r.verdict.status != "regressed":
            continue
        w = r.wants
        if w == "rollback" and on_regression == "exclude" and segment.value != OTHER:
            w = "hold"  # excluded instead (SegmentedDecision.exclude): the run goes on
        if ACTION_RANK[w] > ACTION_RANK[wants]:
            wants = w
    return SegmentResult(
        segment.dimension, segment.value, True, (c.requests, t.requests), tuple(results), wants,
        floor,
    )  # fmt: skip


def segment_floor(min_samples: int) -> int:
    """The requests per arm a segment is tested from: the step's minimum, at least
    :data:`MIN_SEGMENT_SAMPLES`."""
    return max(min_samples, MIN_SEGMENT_SAMPLES)


def _batched_verdicts(
    active: Sequence[Segment],
    specs: Sequence[GuardrailSpec],
    alphas: Mapping[str, float],
    min_samples: int,
    n_star: float,
) -> dict[int, dict[str, Verdict]]:
    """Each testable segment's built-in tests (by index in ``active``, then metric), every
    metric's run once over all of them: 63 segments cost about one vectorised call per
    metric instead of 63 calls of numpy on scalars (bench/bench_segments.py). The verdicts
    are the ones each segment would get alone (tests/guardrails/stats/test_segment_batch.py)."""
    floor = segment_floor(min_samples)
    tested = [
        i for i, s in enumerate(active) if min(s.control.requests, s.candidate.requests) >= floor
    ]
    out: dict[int, dict[str, Verdict]] = {i: {} for i in tested}
    if not tested:
        return out
    pairs = [(active[i].control, active[i].candidate) for i in tested]
    for spec in specs:
        if spec.metric not in METRICS:
            continue
        found = evaluate_metrics(
            spec.metric, pairs, tolerance=spec.tolerance, tolerance_kind=spec.tolerance_kind,
            alpha=alphas[spec.metric], n_star=n_star,
        )  # fmt: skip
        for i, verdict in zip(tested, found, strict=True):
            out[i][spec.metric] = verdict
    return out


def evaluate_with_segments(
    *,
    guardrails: Sequence[GuardrailSpec],
    settings: PlanSettings,
    stage: StageState,
    control: ArmAggregates,
    candidate: ArmAggregates,
    segments: Sequence[Segment],
    slots: int,
    on_regression: OnRegression = "rollback",
    previous: Mapping[str, Bounds] | None = None,
    excluded: Iterable[tuple[str, str]] = (),
    **population_kwargs: Any,
) -> SegmentedDecision:
    """:func:`rules.evaluate_plan` on the population at :data:`POPULATION_SHARE` of the
    plan's alpha, and every segment with enough samples at :func:`segment_alpha` of each
    guardrail's (``slots``: :func:`segment_slots` of the plan). Segments are tested in split
    stages below 100 % only (elsewhere there is no control arm to compare each with), and
    never one already ``excluded``. The action is the most protective asked for; a segment
    whose rollback becomes an exclusion holds the plan for this evaluation (its units leave
    the stage's comparison from the next decision on) and says so. Segments act on
    regressions only (their guardrail's action, or the exclusion): holding until every
    segment is shown inside its tolerance at a segment's alpha would stall plans for weeks,
    so advancing stays the population's decision."""
    previous = previous or {}
    population = evaluate_plan(
        guardrails=guardrails,
        settings=replace(settings, alpha=settings.alpha * POPULATION_SHARE),
        stage=stage,
        control=control,
        candidate=candidate,
        previous={k: v for k, v in previous.items() if "@" not in k},
        **population_kwargs,
    )
    specs = tested_in(stage.mode, guardrails)
    # The alpha is split over every guardrail the stage tests (as the population's); one a
    # segment does not hold (kept_in) leaves its share there unspent.
    alphas = {
        metric: segment_alpha(a * stage.alpha_share, slots)
        for metric, a in split_alpha(settings.alpha, specs).items()
    }
    skip = set(excluded)
    results: list[SegmentResult] = []
    if stage.both_arms and slots:
        active = [s for s in segments if (s.dimension, s.value) not in skip]
        verdicts = _batched_verdicts(active, specs, alphas, stage.min_samples, settings.n_star)
        for i, segment in enumerate(active):
            results.append(
                evaluate_segment(
                    segment,
                    specs,
                    alphas=alphas,
                    min_samples=stage.min_samples,
                    previous=previous,
                    settings=settings,
                    on_regression=on_regression,
                    verdicts=verdicts.get(i),
                )  # fmt: skip
            )
    action: Action = population.action
    reasons = list(population.reasons)
    exclude: list[tuple[str, str]] = []
    alert = population.alert
    for s in results:
        regressed = s.regressed()
        if not regressed:
            continue
        names = ", ".join(f"{r.spec.metric}: {r.verdict.summary}" for r in regressed)
        to_exclude = (
            on_regression == "exclude"
            and s.value != OTHER
            and any(r.wants == "rollback" for r in regressed)
        )
        if to_exclude:
            exclude.append((s.dimension, s.value))
            reasons.append(
                f"segment {s.label} regressed, excluded (its units go to control): {names}"
            )
        else:
            reasons.append(f"segment {s.label} regressed: {names}")
        alert = True
    for s in results:
        if ACTION_RANK[s.wants] > ACTION_RANK[action]:
            action = s.wants
    if exclude and action == "advance":
        action = "hold"
        reasons.append("the plan holds this evaluation while the excluded units leave the split")
    if action == "advance" and population.action == "advance":
        untested = [s.label for s in results if not s.tested]
        if untested:
            # Advancing with a segment too small to test is allowed: it has no evidence
            # either way, and waiting for every tenant would hold a plan forever.
            reasons.append(
                f"{len(untested)} segment(s) below their minimum sample, not tested: "
                + ", ".join(untested[:5])
                + (" ..." if len(untested) > 5 else "")
            )
    bounds = dict(population.bounds)
    for s in results:
        for r in s.results:
            bounds[segment_key(r.spec.metric, s.dimension, s.value)] = r.bounds
    return SegmentedDecision(
        action=action,
        reasons=tuple(reasons),
        population=population,
        segments=tuple(results),
        exclude=tuple(exclude),
        bounds=bounds,
        alert=alert,
        segment_alphas=alphas,
    )


def exclusion_rules(dimension: str, value: str) -> list[dict[str, Any]]:
    """The targeting rules that exclude a segment: the string value, and the boolean or
    number it stands for when it is one (an attribute ``lang: "ja"`` and ``beta: true`` both
    become segment values as strings; the rule must match what the SDK is given)."""
    name = f"segment {dimension}={value}"[:100]
    rules: list[dict[str, Any]] = [
        {"name": name, "when": [{"attribute": dimension, "op": "in", "values": [value]}], "then": "exclude"}
    ]  # fmt: skip
    typed: Any = None
    if value in ("true", "false"):
        typed = value == "true"
    else:
        try:
            typed = json.loads(value)
        except ValueError:
            typed = None
        if isinstance(typed, bool) or not isinstance(typed, int | float):
            typed = None
        elif not math.isfinite(typed):
            typed = None
    if typed is not None:
        rules.append(
            {"name": name, "when": [{"attribute": dimension, "op": "equals", "value": typed}], "then": "exclude"}
        )  # fmt: skip
    return rules
