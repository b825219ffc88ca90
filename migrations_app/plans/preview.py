"""What a plan will do, said before it is saved: its stages as a timeline with their minimums,
what it costs a month at a given traffic, and its guardrails in plain words (pure).

The plan form shows it beside the fields; it reads the same phase rules the engine runs
(``phases.py``) and states the engine's own conditions (``guardrails/rules.py``): a stage
moves on after its minimum duration and once each arm has its minimum requests (in shadow,
the candidate's shadow answers; at 100 % the candidate's requests, with no control left).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from migrations_app.plans.phases import BASIS_POINTS, phase_rule, phase_weights, to_bp

MINUTES_PER_MONTH = 30 * 24 * 60

# Metrics whose harm is a drop (the others harm by rising), and how each reads in a sentence.
_LOWER_IS_WORSE = frozenset({"satisfaction"})
_NAMES = {
    "error_rate": "error rate",
    "latency_p95": "p95 latency",
    "latency_p99": "p99 latency",
    "ttft_p95": "p95 time to first token",
    "satisfaction": "user satisfaction",
    "cost_per_request": "cost per request",
}
_NOT_IN_SHADOW = frozenset({"satisfaction"})
_ACTIONS = {
    "rollback": "Roll back (all traffic to control, on-call paged)",
    "pause": "Pause (traffic back on control until a person resumes)",
    "alert": "Alert on-call, traffic unchanged,",
}


@dataclass(frozen=True, slots=True)
class Prices:
    """A catalog model's prices, dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def per_request(self, input_tokens: float, output_tokens: float) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True, slots=True)
class Traffic:
    """The traffic a projection assumes: requests a minute and a request's mean tokens."""

    requests_per_minute: float
    input_tokens: float
    output_tokens: float


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of a run at a constant split, as the timeline shows it."""

    number: int
    phase: int
    kind: str
    title: str
    description: str
    candidate_share: float  # of users, 0-1
    shadow_rate: float  # of requests copied to the candidate, 0-1
    min_minutes: int
    min_samples: int
    auto_advance: bool
    waits_for: str
    expected_minutes: float | None  # at the traffic; None without one
    monthly_cost: float | None  # both arms (and shadow copies) at the traffic


@dataclass(frozen=True, slots=True)
class CostPreview:
    traffic: Traffic
    control_per_request: float
    candidate_per_request: float
    monthly_now: float  # every request on control
    monthly_after: float  # every request on the candidate
    shadow_per_day: float  # the most expensive shadow stage's candidate copies
    shadow_budget_per_day: float | None

    @property
    def change(self) -> float:
        """After vs now, as a fraction (0.2: 20 % more); inf when control costs nothing."""
        if self.monthly_now == 0:
            return 0.0 if self.monthly_after == 0 else math.inf
        return self.monthly_after / self.monthly_now - 1


@dataclass(frozen=True, slots=True)
class Preview:
    stages: tuple[Stage, ...]
    minimum_minutes: int
    expected_minutes: float | None
    guardrails: tuple[str, ...]
    safety: tuple[str, ...]
    cost: CostPreview | None


def _pct(share: float) -> str:
    return f"{share * 100:g} %"


def _count(n: int) -> str:
    return f"{n:,}"


def stage_rows(phases: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, Mapping[str, Any]]]:
    """(phase index, step index, phase) per stage of constant weight, in run order."""
    rows = []
    for index, phase in enumerate(phases):
        weights = phase_weights(phase_rule(phase))
        rows.extend((index, step, phase) for step in range(len(weights)))
    return rows


def _waits_for(kind: str, share: float, min_minutes: int, min_samples: int) -> str:
    if kind == "shadow":
        samples = f"{_count(min_samples)} shadow answers from the candidate"
    elif share >= 1:
        samples = f"{_count(min_samples)} requests on the candidate"
    else:
        samples = f"{_count(min_samples)} requests on each arm"
    return f"at least {duration_text(min_minutes)} and {samples}"


def duration_text(minutes: float) -> str:
    """ "45 min", "2 h", "1 h 30 min", "3 d 4 h"."""
    total = int(math.ceil(minutes))
    days, rest = divmod(total, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {mins} min" if mins else f"{hours} h"
    return f"{mins} min"


def _expected_minutes(
    kind: str, share: float, shadow_rate: float, min_minutes: int, min_samples: int, rpm: float
) -> float | None:
    """When the stage's minimums are met at ``rpm``: the slower of its duration and the time
    its smaller arm takes to collect its requests (None: that arm gets no traffic)."""
    if kind == "shadow":
        rate = rpm * shadow_rate
    elif share >= 1:
        rate = rpm
    else:
        rate = rpm * min(share, 1 - share)
    if min_samples == 0:
        return float(min_minutes)
    if rate <= 0:
        return None
    return max(float(min_minutes), min_samples / rate)


def _titles(kind: str, step: int, steps: int) -> str:
    if kind == "shadow":
        return "Shadow"
    if kind == "ab_split":
        return "A/B split"
    return f"Rollout, step {step + 1} of {steps}"


def _description(kind: str, share: float, shadow_rate: float) -> str:
    if kind == "shadow":
        return (
            f"{_pct(shadow_rate)} of requests copied to the candidate; every user gets "
            "control's answer"
        )
    if share >= 1:
        return "every user on the candidate"
    return f"{_pct(share)} of users on the candidate, {_pct(1 - share)} on control"


def timeline(
    phases: Sequence[Mapping[str, Any]],
    *,
    traffic: Traffic | None = None,
    control: Prices | None = None,
    candidate: Prices | None = None,
) -> list[Stage]:
    """The stages a run walks through, with what each waits for (phases ``validate_phase``
    accepted), and at ``traffic`` how long each takes and what a month of it costs."""
    stages = []
    for number, (index, step, phase) in enumerate(stage_rows(phases), start=1):
        rule = phase_rule(phase)
        weights = phase_weights(rule)
        kind = rule.kind
        shadow_rate = to_bp(rule.percent or 0.0) / BASIS_POINTS if kind == "shadow" else 0.0
        share = weights[step] / BASIS_POINTS
        min_minutes = int(phase.get("min_duration_minutes") or 0)
        min_samples = int(phase.get("min_samples") or 0)
        expected = monthly = None
        if traffic is not None:
            rpm = traffic.requests_per_minute
            expected = _expected_minutes(kind, share, shadow_rate, min_minutes, min_samples, rpm)
            if control is not None and candidate is not None:
                cc = control.per_request(traffic.input_tokens, traffic.output_tokens)
                ck = candidate.per_request(traffic.input_tokens, traffic.output_tokens)
                per_request = (1 - share) * cc + share * ck + shadow_rate * ck
                monthly = rpm * MINUTES_PER_MONTH * per_request
        stages.append(
            Stage(
                number=number,
                phase=index + 1,
                kind=kind,
                title=_titles(kind, step, len(weights)),
                description=_description(kind, share, shadow_rate),
                candidate_share=share,
                shadow_rate=shadow_rate,
                min_minutes=min_minutes,
                min_samples=min_samples,
                auto_advance=bool(phase.get("auto_advance", True)),
                waits_for=_waits_for(kind, share, min_minutes, min_samples),
                expected_minutes=expected,
                monthly_cost=monthly,
            )
        )
    return stages


def _tolerance(metric: str, kind: str, tolerance: float) -> str:
    """How far the candidate may be from control, in the metric's words."""
    if kind == "relative":
        return f"{tolerance:g}× control's"
    if metric == "error_rate":
        return f"{tolerance * 100:g} percentage points above control's"
    if metric in ("latency_p95", "latency_p99", "ttft_p95"):
        return f"{tolerance:,g} ms above control's"
    if metric == "cost_per_request":
        return f"${tolerance:g} above control's"
    if metric in _LOWER_IS_WORSE:
        return f"{tolerance:g} below control's (on a 0-1 scale)"
    return f"{tolerance:g} from control's"


def guardrail_sentence(guardrail: Mapping[str, Any], *, has_shadow: bool) -> str:
    """A guardrail in plain words: "Roll back (...) if the candidate's p95 latency is more
    than 1.3× control's."."""
    metric = str(guardrail.get("metric"))
    kind = str(guardrail.get("tolerance_kind", "relative"))
    tolerance = float(guardrail.get("tolerance") or 0)
    action = _ACTIONS.get(str(guardrail.get("action", "rollback")), "Act")
    name = _NAMES.get(metric, metric.replace("_", " "))
    if metric in _LOWER_IS_WORSE:
        limit = (
            f"falls below {tolerance:g}× control's"
            if kind == "relative"
            else f"is more than {_tolerance(metric, kind, tolerance)}"
        )
        text = f"{action} if {name} with the candidate {limit}"
    else:
        text = (
            f"{action} if the candidate's {name} is more than {_tolerance(metric, kind, tolerance)}"
        )
    min_samples = int(guardrail.get("min_samples") or 0)
    if min_samples:
        text += f", once each arm has {_count(min_samples)} requests"
    if has_shadow and metric in _NOT_IN_SHADOW:
        text += " (not in shadow: no user sees the candidate's answers there)"
    return text + "."


def safety_sentences(
    *,
    alpha: float,
    circuit_breaker_error_rate: float,
    circuit_breaker_min_requests: int,
    guardrail_count: int,
) -> list[str]:
    """What protects the run besides each guardrail: the statistics' error rate and the
    circuit breaker."""
    out = [
        f"Roll back at once, without statistics, if the candidate's error rate passes "
        f"{circuit_breaker_error_rate * 100:g} % after {_count(circuit_breaker_min_requests)} "
        "requests."
    ]
    if guardrail_count:
        out.append(
            f"The guardrails act on evidence only: their tests stay valid however often the "
            f"engine looks, and all of them together roll back a candidate that is as good as "
            f"control at most {alpha * 100:g} % of the time (alpha {alpha:g})."
        )
    else:
        out.append("No guardrail: only the circuit breaker can roll this plan back.")
    return out


def plan_preview(
    *,
    phases: Sequence[Mapping[str, Any]],
    guardrails: Sequence[Mapping[str, Any]],
    alpha: float,
    circuit_breaker_error_rate: float,
    circuit_breaker_min_requests: int,
    traffic: Traffic | None = None,
    control: Prices | None = None,
    candidate: Prices | None = None,
    shadow_budget_per_day: float | None = None,
) -> Preview:
    """Everything the plan form shows before saving (phases and guardrails as
    ``validate_phase`` / ``validate_guardrail`` accept them)."""
    stages = timeline(phases, traffic=traffic, control=control, candidate=candidate)
    expected: float | None = None
    if traffic is not None and stages:
        known = [s.expected_minutes for s in stages]
        expected = None if any(m is None for m in known) else sum(m or 0 for m in known)
    cost = None
    if traffic is not None and control is not None and candidate is not None:
        rpm = traffic.requests_per_minute
        cc = control.per_request(traffic.input_tokens, traffic.output_tokens)
        ck = candidate.per_request(traffic.input_tokens, traffic.output_tokens)
        busiest_shadow = max((s.shadow_rate for s in stages), default=0.0)
        cost = CostPreview(
            traffic=traffic,
            control_per_request=cc,
            candidate_per_request=ck,
            monthly_now=rpm * MINUTES_PER_MONTH * cc,
            monthly_after=rpm * MINUTES_PER_MONTH * ck,
            shadow_per_day=rpm * 24 * 60 * busiest_shadow * ck,
            shadow_budget_per_day=shadow_budget_per_day,
        )
    has_shadow = any(s.kind == "shadow" for s in stages)
    return Preview(
        stages=tuple(stages),
        minimum_minutes=sum(s.min_minutes for s in stages),
        expected_minutes=expected,
        guardrails=tuple(guardrail_sentence(g, has_shadow=has_shadow) for g in guardrails),
        safety=tuple(
            safety_sentences(
                alpha=alpha,
                circuit_breaker_error_rate=circuit_breaker_error_rate,
                circuit_breaker_min_requests=circuit_breaker_min_requests,
                guardrail_count=len(guardrails),
            )
        ),
        cost=cost,
    )
