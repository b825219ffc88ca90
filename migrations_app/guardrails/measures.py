"""A plan's guardrails as the rules test them: the built-in six as they are, and a guardrail on a
per-request metric (an answer check, or a metric the plan or the catalog declares) with the
``Measure`` that says how its values are read and which way is harm."""

from __future__ import annotations

from collections.abc import Mapping

from migrations_app.guardrails.rules import GuardrailSpec, Measure
from migrations_app.models import Guardrail
from migrations_app.plans.metric_specs import MetricSpec, with_direction


def measure_of(spec: MetricSpec, direction: str = "") -> Measure:
    """How a metric's guardrail reads it; ``direction`` overrides the metric's own."""
    spec = with_direction(spec, direction)
    return Measure(
        kind="rate" if spec.kind == "rate" else "mean",
        harm=spec.harm,
        label=spec.label or spec.name,
        value_range=spec.value_range,
        in_split=True,
        in_shadow=spec.in_shadow,
    )


def guardrail_spec(guardrail: Guardrail, specs: Mapping[str, MetricSpec]) -> GuardrailSpec:
    """One stored guardrail as :func:`rules.evaluate_plan` takes it (``specs``:
    ``plans.metrics.plan_metric_specs`` of its plan)."""
    metric = guardrail.metric
    spec = specs.get(metric)
    return GuardrailSpec(
        metric,
        guardrail.tolerance,
        guardrail.tolerance_kind,  # type: ignore[arg-type]
        guardrail.action,  # type: ignore[arg-type]
        guardrail.min_samples,
        measure_of(spec, guardrail.direction) if spec is not None else None,
    )
