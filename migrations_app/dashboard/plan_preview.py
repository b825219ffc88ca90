"""What the plan form shows beside its fields before saving: the chosen models side by side, the
phases as a timeline with their minimums, the monthly cost at the current traffic and the
guardrails in plain words (``plans.preview`` computes them; this module reads what they need).

"The current traffic" is what Turnout saw in the last hour on the control model (its arm in
any plan, shadow copies left out), unless the person typed the traffic they expect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Min, Q, Sum

from migrations_app.models import ModelSpec, Outcome, WindowAggregate
from migrations_app.plans.preview import Preview, Prices, Traffic, plan_preview

TRAFFIC_WINDOW = timedelta(hours=1)
# Outcomes read for the mean token counts: the most recent ones, by the ts index.
TOKEN_SAMPLE = 1000


@dataclass(frozen=True, slots=True)
class MeasuredTraffic:
    traffic: Traffic
    requests: int
    minutes: float


def _served_by(model: ModelSpec, prefix: str = "") -> Q:
    """Rows of the arms that called ``model``: a plan's control arm on its control model, its
    candidate arm on its candidate model."""
    return Q(**{"arm": "control", f"{prefix}control_model": model}) | Q(
        **{"arm": "candidate", f"{prefix}candidate_model": model}
    )


def measured_traffic(model: ModelSpec, *, now: datetime) -> MeasuredTraffic | None:
    """The last hour's requests a minute on ``model`` and a request's mean tokens; None when
    Turnout saw none. Two queries: the window aggregates, and the newest outcomes' tokens."""
    since = now - TRAFFIC_WINDOW
    # Not folded first (segment_rollup.catch_up): an hour's average is the same without the
    # last second of traffic a web process may hold pending, and a form must not fold every
    # running plan's stages.
    windows = (
        WindowAggregate.objects.filter(window__gte=since)
        .filter(_served_by(model, "stage__plan__"))
        # In shadow the candidate answers copies of control's requests: not traffic.
        .exclude(arm="candidate", stage__kind="shadow")
        .aggregate(requests=Sum("requests"), first=Min("window"))
    )
    requests = windows["requests"] or 0
    if not requests:
        return None
    minutes = max(1.0, (now - max(since, windows["first"])).total_seconds() / 60)
    tokens = list(
        Outcome.objects.filter(ts__gte=since, input_tokens__isnull=False,
                               output_tokens__isnull=False)
        .filter(_served_by(model, "plan__"))
        .order_by("-ts")
        .values_list("input_tokens", "output_tokens")[:TOKEN_SAMPLE]
    )  # fmt: skip
    if not tokens:
        return None
    return MeasuredTraffic(
        traffic=Traffic(
            requests_per_minute=requests / minutes,
            input_tokens=sum(t[0] for t in tokens) / len(tokens),
            output_tokens=sum(t[1] for t in tokens) / len(tokens),
        ),
        requests=requests,
        minutes=minutes,
    )


def prices(model: ModelSpec | None) -> Prices | None:
    if model is None:
        return None
    return Prices(float(model.input_price_per_mtok), float(model.output_price_per_mtok))


@dataclass(frozen=True, slots=True)
class PlanPreview:
    """The preview and what it rests on, for the template."""

    preview: Preview
    control: ModelSpec | None
    candidate: ModelSpec | None
    traffic_source: str  # "typed", "measured" or "" (none: the cost is not shown)
    measured: MeasuredTraffic | None
    phases_ok: bool
    guardrails_ok: bool
    problems: int


def _has(errors: Mapping[str, Any], head: str) -> bool:
    return any(path == head or path.startswith(head + "[") for path in errors)


def _float(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) else default


def build(
    values: Mapping[str, Any],
    errors: Mapping[str, Sequence[str]],
    *,
    typed_traffic: Traffic | None,
    now: datetime,
) -> PlanPreview:
    """The preview of a plan as the form holds it (``plan_check``'s input and errors): rows
    the validation refused are left out of the timeline, and said to be."""
    phases_ok = not _has(errors, "phases")
    guardrails_ok = not _has(errors, "guardrails")
    control = values.get("control_model")
    candidate = values.get("candidate_model")
    control = control if isinstance(control, ModelSpec) else None
    candidate = candidate if isinstance(candidate, ModelSpec) else None
    measured = None
    source = ""
    traffic = typed_traffic
    if traffic is not None:
        source = "typed"
    elif control is not None:
        measured = measured_traffic(control, now=now)
        if measured is not None:
            traffic, source = measured.traffic, "measured"
    budget = values.get("shadow_budget_usd_per_day")
    preview = plan_preview(
        phases=(values.get("phases") or []) if phases_ok else [],
        guardrails=(values.get("guardrails") or []) if guardrails_ok else [],
        alpha=_float(values.get("alpha"), 0.05),
        circuit_breaker_error_rate=_float(values.get("circuit_breaker_error_rate"), 0.2),
        circuit_breaker_min_requests=int(values.get("circuit_breaker_min_requests") or 50),
        traffic=traffic,
        control=prices(control),
        candidate=prices(candidate),
        shadow_budget_per_day=None if budget is None else float(budget),
    )
    return PlanPreview(
        preview=preview,
        control=control,
        candidate=candidate,
        traffic_source=source,
        measured=measured,
        phases_ok=phases_ok,
        guardrails_ok=guardrails_ok,
        problems=sum(len(m) for m in errors.values()),
    )
