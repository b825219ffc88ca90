"""The change detectors in the plan rules (:func:`rules.evaluate_plan` with ``windows``): a
guardrail's change detector (:mod:`stats.changes`) beside its cumulative test, over plain data.
"""

from __future__ import annotations

from dataclasses import replace

from migrations_app.guardrails.rule_types import Action, GuardrailResult
from migrations_app.guardrails.stats import ArmAggregates, changes, detector
from migrations_app.guardrails.stats.detector import DetectorState


def with_change(
    result: GuardrailResult,
    control: ArmAggregates,
    candidate: ArmAggregates,
    windows: changes.Windows,
    alpha: float,
) -> tuple[GuardrailResult, DetectorState | None]:
    """Run a guardrail's change detector (stats.changes) beside its cumulative test: has
    the candidate become worse than tolerance since some recent window? When it fires, the
    guardrail wants its action whatever the cumulative test says (a stage healthy for a day
    dilutes a new regression in the running totals for hours), and the verdict says since
    when. Below the guardrail's own minimum sample it only watches."""
    spec, verdict = result.spec, result.verdict
    measure = spec.measure
    series = changes.series_for(
        spec.metric, spec.tolerance_kind, measure_kind=measure.kind if measure else None,
        value_range=measure.value_range if measure else 1.0,
    )  # fmt: skip
    if series is None:
        return result, None
    guard = changes.Guard(
        spec.metric, spec.tolerance, spec.tolerance_kind, verdict.harm, verdict.label,
        verdict.scale,
    )  # fmt: skip
    state, change = changes.detect(
        guard, series, control_total=control, candidate_total=candidate,
        committed=windows.committed, recent=windows.recent,
        state=windows.states.get(spec.metric, DetectorState()), alpha=alpha,
        log_threshold=detector.log_threshold(
            alpha=alpha, planned_minutes=windows.planned_minutes, arl_days=windows.arl_days
        ),
        stage_start=windows.stage_start,
    )  # fmt: skip
    watching = min(verdict.n_control, verdict.n_candidate) < spec.min_samples
    if not change.fired or watching:
        return result, state
    notes = (
        *verdict.notes,
        f"over the whole stage: {verdict.summary}",
        f"change detector: evidence {change.log_statistic:.1f} against a threshold of "
        f"{change.log_threshold:.1f} (natural logs; at most one false alarm per "
        f"{windows.arl_days:g} days on average)",
    )
    verdict = replace(
        verdict, status="regressed", summary=change.summary, notes=notes,
        alpha=verdict.alpha + alpha,
    )  # fmt: skip
    if series.family != "quantile":  # the comparison since the change point, on its scale
        if verdict.harm == "increase":
            verdict = replace(verdict, estimate=change.estimate, lower=change.bound)
        else:
            verdict = replace(verdict, estimate=change.estimate, upper=change.bound)
    wants: Action = "alert" if spec.alert_only else spec.action
    return replace(result, verdict=verdict, wants=wants, change=change), state
