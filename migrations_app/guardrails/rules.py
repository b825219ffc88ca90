"""Plan-level guardrail evaluation over plain data (no ORM, no clock).

The engine maps database rows to the dataclasses of :mod:`rule_types`, calls :func:`evaluate_plan` and acts on
the :class:`PlanDecision`: roll back, pause, alert, advance, or hold. The statistics live in
:mod:`migrations_app.stats`; this module decides what they mean for the plan:

- the plan's family-wise alpha is split evenly across its guardrails (Bonferroni): rollback
  fires on any one, so the union bound is exactly the guarantee;
- each stage of constant weight is tested on its own data, spending ``alpha_share`` of each
  guardrail's alpha (the shares of a run's stages sum to at most 1): pooling stages with
  different weights confounds the arms with time whenever the metric drifts;
- when a step has a minimum sample, a rate-type guardrail (the error rate, a declared rate
  metric) spends most of its alpha on one confirmatory fixed-sample test when both arms
  reach it and the rest on the sequence (Haybittle-Peto; stats.CONFIRMATORY_SHARE says why;
  the look itself is :mod:`confirmatory_look`);
- bounds only tighten: the running intersection of the confidence sequences is kept;
- a circuit breaker rolls back at once on a catastrophic candidate error rate;
- a sample-ratio mismatch holds and alerts, and never rolls back by itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from migrations_app.guardrails import stats
from migrations_app.guardrails.change_rules import with_change
from migrations_app.guardrails.confirmatory_look import rate_look
from migrations_app.guardrails.rule_types import (
    ACTION_RANK,
    Action,
    Bounds,
    GuardrailAction,
    GuardrailResult,
    GuardrailSpec,
    Measure,
    Mode,
    PlanDecision,
    PlanSettings,
    StageState,
)
from migrations_app.guardrails.stats import (
    ArmAggregates,
    MetricSums,
    PairedErrors,
    PairedSums,
    SampleRatio,
    Verdict,
    changes,
    detector,
)
from migrations_app.guardrails.stats.detector import DetectorState

# evaluate_plan and the data it reads and returns (rule_types): one import for its callers.
__all__ = [
    "ACTION_RANK",
    "NOT_IN_SHADOW",
    "Action",
    "Bounds",
    "GuardrailAction",
    "GuardrailResult",
    "GuardrailSpec",
    "Measure",
    "Mode",
    "PlanDecision",
    "PlanSettings",
    "StageState",
    "circuit_breaker",
    "evaluate_guardrail",
    "evaluate_plan",
    "split_alpha",
    "stage_alpha_shares",
    "tested_in",
]


#: Metrics a shadow stage cannot observe for the candidate: users only ever see control's
#: answers, so nobody rates the candidate's (the judge score is the shadow's quality signal).
NOT_IN_SHADOW = frozenset({"satisfaction"})


def tested_in(mode: Mode, guardrails: Sequence[GuardrailSpec]) -> list[GuardrailSpec]:
    """The guardrails a stage of this mode can test. Without this a plan with a satisfaction
    guardrail would wait in shadow for candidate feedback that never comes."""
    if mode != "shadow":
        return [g for g in guardrails if g.measure is None or g.measure.in_split]
    return [
        g
        for g in guardrails
        if (g.measure.in_shadow if g.measure is not None else g.metric not in NOT_IN_SHADOW)
    ]


def split_alpha(alpha: float, guardrails: Sequence[GuardrailSpec]) -> dict[str, float]:
    """Bonferroni: each guardrail gets alpha / (number of guardrails)."""
    if not guardrails:
        return {}
    share = alpha / len(guardrails)
    return {g.metric: share for g in guardrails}


def stage_alpha_shares(stages: int) -> list[float]:
    """Equal shares of each guardrail's alpha for a run's stages of constant weight."""
    return [1.0 / stages] * stages if stages > 0 else []


def circuit_breaker(candidate: ArmAggregates, settings: PlanSettings) -> str | None:
    """The reason to roll back without statistics, or None."""
    if candidate.requests < settings.circuit_breaker_min_requests:
        return None
    rate = candidate.errors / candidate.requests
    if rate > settings.circuit_breaker_error_rate:
        return (
            f"circuit breaker: candidate error rate {rate:.1%} over {candidate.requests} "
            f"requests is above {settings.circuit_breaker_error_rate:.0%}"
        )
    return None


def _samples(metric: str, arm: ArmAggregates) -> int:
    if metric == "satisfaction":
        return arm.feedback_n
    if metric == "cost_per_request":
        return arm.cost_n
    if metric == "ttft_p95":
        return arm.ttft.total
    if metric.startswith("latency"):
        return arm.latency.total
    return arm.requests


def _measure_test(
    spec: GuardrailSpec,
    measure: Measure,
    control: ArmAggregates,
    candidate: ArmAggregates,
    *,
    alpha: float,
    n_star: float,
    paired: PairedSums | None,
) -> tuple[Verdict, int, int]:
    """A per-request metric's test (paired in shadow, per arm otherwise) and its samples."""
    m, tol, kind = measure, spec.tolerance, spec.tolerance_kind
    if paired is not None:
        verdict = stats.paired_metric_test(
            spec.metric, paired, kind=m.kind, harm=m.harm, tolerance=tol, tolerance_kind=kind,
            alpha=alpha, value_range=m.value_range, label=m.label, n_star=n_star,
        )  # fmt: skip
        return verdict, paired.n, paired.n
    a = control.metrics.get(spec.metric, MetricSums())
    b = candidate.metrics.get(spec.metric, MetricSums())
    verdict = stats.metric_test(
        spec.metric, a, b, kind=m.kind, harm=m.harm, tolerance=tol, tolerance_kind=kind,
        alpha=alpha, value_range=m.value_range, label=m.label, n_star=n_star,
    )  # fmt: skip
    return verdict, a.n, b.n


def _with_bounds(verdict: Verdict, bounds: Bounds, notes: tuple[str, ...]) -> Verdict:
    limit = stats.threshold(verdict.tolerance, verdict.tolerance_kind, verdict.harm)
    status = stats.classify(verdict.estimate, bounds.lower, bounds.upper, limit, verdict.harm)
    if verdict.status == "inconclusive" and status == "inside_tolerance":
        # The test itself held the verdict back (e.g. different feedback rates).
        status = "inconclusive"
    summary = stats.summarise(
        verdict.metric,
        status,
        verdict.estimate,
        bounds.lower,
        bounds.upper,
        verdict.tolerance,
        verdict.tolerance_kind,
        verdict.harm,
        verdict.alpha,
        label=verdict.label,
        scale=verdict.scale,
    )
    return replace(
        verdict,
        status=status,
        lower=bounds.lower,
        upper=bounds.upper,
        summary=summary,
        notes=verdict.notes + notes,
    )


def evaluate_guardrail(
    spec: GuardrailSpec,
    control: ArmAggregates,
    candidate: ArmAggregates,
    **kwargs: Any,
) -> GuardrailResult:
    """Test one guardrail (:func:`_test_guardrail`) and say what it wants. A guardrail that
    may only alert (``spec.alert_only``) wants an alert when its verdict is regressed or a
    warning, and never holds: anything else lets the plan advance, and the verdict notes why
    it did not act."""
    result = _test_guardrail(spec, control, candidate, **kwargs)
    if not spec.alert_only:
        return result
    wants: Action = "alert" if result.verdict.status in ("regressed", "warning") else "advance"
    note = f"this guardrail only alerts: {spec.alert_only}"
    return replace(
        result, wants=wants, verdict=replace(result.verdict, notes=(*result.verdict.notes, note))
    )


def _test_guardrail(
    spec: GuardrailSpec,
    control: ArmAggregates,
    candidate: ArmAggregates,
    *,
    alpha: float,
    previous: Bounds | None = None,
    n_star: float = stats.DEFAULT_N_STAR,
    paired_errors: PairedErrors | None = None,
    design_samples: int = 0,
    paired_metrics: Mapping[str, PairedSums] | None = None,
    verdict: Verdict | None = None,
) -> GuardrailResult:
    """Test one guardrail, intersect with its previous bounds, and say what it wants.

    ``verdict``: a built-in metric's test already run on these arms, as the call below
    would run it (segments run :func:`stats.evaluate_metrics` over all of them at once);
    everything after the test is the same.

    ``design_samples`` is the step's minimum sample per arm in a split stage (0: none). A
    rate-type guardrail (:func:`confirmatory_look.rate_look`) then spends
    ``stats.CONFIRMATORY_SHARE`` of its alpha on one fixed-sample test when both arms first
    reach it, and the rest on the confidence sequence at every look (Haybittle-Peto with an
    anytime-valid interim test; the union bound keeps the pair at alpha). A step that must reach
    that sample before it may advance gets, at that moment, the power of a classical
    fixed-horizon test: 0.91 for 2x errors at a 2 % base by 12k per arm at 0.0125, where no test
    valid at every look without a horizon reaches 0.9 (stats.CONFIRMATORY_SHARE); a rate metric
    80 % -> 72 % against 3 points by 3,000 per arm 0.91 (0.78 without;
    tests/guardrails/stats/test_metric_sim).
    """
    look = rate_look(
        spec.metric,
        control,
        candidate,
        tolerance=spec.tolerance,
        tolerance_kind=spec.tolerance_kind,
        measure=(spec.measure.kind, spec.measure.harm) if spec.measure is not None else None,
        paired=paired_errors is not None or paired_metrics is not None,
    )
    look_share = stats.confirmatory_share(design_samples) if look else 0.0
    sequence_alpha = alpha * (1.0 - look_share)
    n_a = n_b = -1
    if spec.measure is not None:
        # ``paired_metrics`` is given in a shadow stage: pairs only, never the arms.
        paired = None
        if paired_metrics is not None:
            paired = paired_metrics.get(spec.metric, PairedSums())
        verdict, n_a, n_b = _measure_test(
            spec, spec.measure, control, candidate, alpha=sequence_alpha, n_star=n_star,
            paired=paired,
        )  # fmt: skip
    elif spec.metric == "error_rate" and paired_errors is not None:
        verdict = stats.paired_error_test(
            paired_errors,
            tolerance=spec.tolerance,
            tolerance_kind=spec.tolerance_kind,
            alpha=alpha,
            n_star=n_star,
        )
    elif verdict is None:
        verdict = stats.evaluate_metric(
            spec.metric,
            control,
            candidate,
            tolerance=spec.tolerance,
            tolerance_kind=spec.tolerance_kind,
            alpha=sequence_alpha,
            n_star=n_star,
        )
    if look_share:
        # The verdict speaks for the guardrail's whole alpha: sequence and look together.
        verdict = replace(verdict, alpha=alpha)
    if n_a < 0:
        n_a, n_b = _samples(spec.metric, control), _samples(spec.metric, candidate)
    if min(n_a, n_b) < spec.min_samples:
        label = spec.metric.replace("_", " ")
        verdict = replace(
            verdict,
            status="not_enough_data",
            summary=f"{label}: not enough data yet ({n_a} control and {n_b} candidate "
            f"samples; this guardrail acts from {spec.min_samples} per arm)",
        )
        bounds = previous or Bounds()
        return GuardrailResult(spec, verdict, bounds, "hold")
    if verdict.status == "not_enough_data":
        return GuardrailResult(spec, verdict, previous or Bounds(), "hold")
    new = Bounds(verdict.lower, verdict.upper)
    notes: tuple[str, ...] = ()
    looked_before = previous is not None and previous.looked
    if look is not None and look_share and not looked_before:
        taken = look.take(alpha * look_share, design_samples)
        if taken is not None:
            lo, hi, note = taken
            new = new.intersect(Bounds(lo, hi, looked=True))
            notes += (note,)
    bounds = new if previous is None else previous.intersect(new)
    if bounds.lower > bounds.upper:
        # Two confidence sequences that no longer overlap: either the effect moved during
        # the stage or one of them missed (probability <= alpha). Keep both sides; the
        # status below checks the harmful side first.
        notes += ("the bounds no longer overlap: the effect changed during this stage",)
    verdict = _with_bounds(verdict, bounds, notes)
    wants: Action
    if verdict.status == "regressed":
        wants = spec.action
    elif verdict.status == "warning":
        wants = "alert"
    elif verdict.status == "inside_tolerance":
        wants = "advance"
    else:
        wants = "hold"
    return GuardrailResult(spec, verdict, bounds, wants)


def evaluate_plan(
    *,
    guardrails: Sequence[GuardrailSpec],
    settings: PlanSettings,
    stage: StageState,
    control: ArmAggregates,
    candidate: ArmAggregates,
    previous: Mapping[str, Bounds] | None = None,
    paired_errors: PairedErrors | None = None,
    paired_metrics: Mapping[str, PairedSums] | None = None,
    windows: changes.Windows | None = None,
) -> PlanDecision:
    """Evaluate every guardrail of a running plan on the current stage's aggregates.

    ``previous`` holds the bounds returned by the last evaluation of this stage (None at
    the start of a stage). The action is the most protective one asked for: rollback
    (circuit breaker, or a regressed guardrail whose action is rollback) > pause > alert
    (a regressed alert-only guardrail, or a warning) > hold > advance. Advance needs every
    guardrail inside its tolerance, the stage's minimum samples per arm and its minimum
    duration, and no sample-ratio mismatch.

    ``paired_metrics``: in a shadow stage, the paired sums of each per-request metric both
    answers of a pair have (the answer checks, a judge's preference), by metric name; the
    guardrails with a :class:`Measure` read theirs from it there, and from the arms'
    ``metrics`` in a split stage.

    ``windows``: the stage's minute windows the change detectors have not folded yet, and
    their states. Given (a split stage with a control arm), every guardrail also runs its
    change detector (:func:`change_rules.with_change`), which gets ``stats.DETECTOR_SHARE`` of the
    guardrail's alpha; the cumulative test keeps the rest. Either one regressed rolls back.
    """
    previous = previous or {}
    # Bonferroni over the tests this stage runs: the union bound needs no more.
    guardrails = tested_in(stage.mode, guardrails)
    alphas = {
        metric: a * stage.alpha_share
        for metric, a in split_alpha(settings.alpha, guardrails).items()
    }
    reasons: list[str] = []
    breaker = circuit_breaker(candidate, settings)
    # At 100 % the candidate serves everyone: there is no control arm left to compare with,
    # so the step ends on its samples and duration, and only the circuit breaker can act.
    full = stage.mode == "split" and stage.expected_share >= 1.0
    detecting = windows is not None and stage.detects_changes
    # The guardrail's alpha, split between its cumulative test and its change detector.
    kept = 1.0 - (detector.DETECTOR_SHARE if detecting else 0.0)
    results = (
        ()
        if full
        else tuple(
            evaluate_guardrail(
                spec,
                control,
                candidate,
                alpha=alphas[spec.metric] * kept,
                previous=previous.get(spec.metric),
                n_star=settings.n_star,
                paired_errors=paired_errors if stage.mode == "shadow" else None,
                design_samples=stage.min_samples if stage.mode == "split" else 0,
                paired_metrics=(paired_metrics or {}) if stage.mode == "shadow" else None,
            )
            for spec in guardrails
        )
    )
    detectors: dict[str, DetectorState] = {}
    if detecting and windows is not None:
        detected = [
            with_change(r, control, candidate, windows, alphas[r.spec.metric] * (1.0 - kept))
            for r in results
        ]
        results = tuple(r for r, _ in detected)
        detectors = {r.spec.metric: state for r, state in detected if state is not None}
    srm: SampleRatio | None = None
    if stage.both_arms:
        srm = stats.sample_ratio_test(
            control.units or control.requests,
            candidate.units or candidate.requests,
            expected_share=stage.expected_share,
            alpha=settings.srm_alpha,
            elapsed_seconds=stage.elapsed_seconds,
        )
    action: Action = "advance"

    def escalate(to: Action, reason: str) -> None:
        nonlocal action
        if ACTION_RANK[to] > ACTION_RANK[action]:
            action = to
        reasons.append(reason)

    if breaker:
        escalate("rollback", breaker)
    for result in results:
        if result.wants in ("rollback", "pause", "alert"):
            escalate(result.wants, f"{result.spec.metric}: {result.verdict.summary}")
        elif result.wants == "hold" and stage.watch:
            reasons.append(f"{result.spec.metric}: {result.verdict.summary}")
        elif result.wants == "hold":
            escalate("hold", f"{result.spec.metric}: {result.verdict.summary}")
    if srm is not None and srm.mismatch:
        # A broken split makes every comparison suspect in either direction: stop moving
        # and page, but a mismatch alone is no evidence that the candidate is worse.
        escalate("hold", f"sample ratio mismatch: {srm.summary}")
    if action == "advance":
        n_min = min(control.requests, candidate.requests)
        if stage.mode == "shadow" or full:
            n_min = candidate.requests
        if n_min < stage.min_samples:
            escalate("hold", f"stage has {n_min} requests per arm of {stage.min_samples}")
        if stage.elapsed_seconds < stage.min_duration_seconds:
            # Whole units run so far, rounded down: "1 of 1 minutes" would read as done.
            unit, size = ("seconds", 1.0) if stage.min_duration_seconds < 120 else ("minutes", 60.0)
            escalate(
                "hold",
                f"stage has run {math.floor(stage.elapsed_seconds / size)} of "
                f"{stage.min_duration_seconds / size:.0f} {unit}",
            )
    if action == "advance":
        reasons.append(
            "the candidate has served all traffic for the step's duration"
            if full
            else "the holdout watch ended without a regression"
            if stage.watch
            else "every guardrail is inside its tolerance"
        )
    alert = action in ("rollback", "pause", "alert") or bool(srm and srm.mismatch)
    return PlanDecision(
        action=action,
        reasons=tuple(reasons),
        results=results,
        bounds={r.spec.metric: r.bounds for r in results},
        sample_ratio=srm,
        circuit_breaker=breaker is not None,
        alert=alert,
        alphas=alphas,
        detectors=detectors,
    )
