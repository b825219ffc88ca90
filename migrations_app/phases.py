"""Pure rules about a plan's phases: where traffic goes at each position, what comes next,
and what a valid phase or guardrail looks like. Shared by the services, the admin forms,
the snapshot selector and the engine, so each rule exists once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BASIS_POINTS = 10_000

# The standard playbook a new plan starts from (the engineer edits it).
STANDARD_PLAYBOOK: list[dict[str, Any]] = [
    {
        "kind": "shadow",
        "percent": 10.0,
        "steps": [],
        "min_duration_minutes": 60,
        "min_samples": 500,
    },
    {
        "kind": "ab_split",
        "percent": 10.0,
        "steps": [],
        "min_duration_minutes": 120,
        "min_samples": 2000,
    },
    {
        "kind": "rollout",
        "percent": None,
        "steps": [5, 25, 50, 100],
        "min_duration_minutes": 30,
        "min_samples": 1000,
    },
]
STANDARD_GUARDRAILS: list[dict[str, Any]] = [
    {"metric": "error_rate", "tolerance_kind": "relative", "tolerance": 1.5, "action": "rollback"},
    {"metric": "latency_p95", "tolerance_kind": "relative", "tolerance": 1.3, "action": "rollback"},
    {
        "metric": "satisfaction",
        "tolerance_kind": "absolute",
        "tolerance": 0.1,
        "action": "rollback",
    },
    {
        "metric": "cost_per_request",
        "tolerance_kind": "relative",
        "tolerance": 1.2,
        "action": "alert",
    },
]


@dataclass(frozen=True, slots=True)
class PhaseRule:
    kind: str
    percent: float | None
    steps: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Position:
    """Where a running plan sends traffic."""

    phase: str | None
    phase_index: int
    step_index: int
    weight_bp: int
    shadow_bp: int


def to_bp(percent: float) -> int:
    return max(0, min(BASIS_POINTS, round(percent * 100)))


def position(phases: Sequence[PhaseRule], phase_index: int, step_index: int) -> Position:
    """Weights at a position. Out-of-range positions (a phase deleted under a draft) serve control."""
    if not 0 <= phase_index < len(phases):
        return Position(None, phase_index, step_index, 0, 0)
    phase = phases[phase_index]
    if phase.kind == "shadow":
        return Position(phase.kind, phase_index, 0, 0, to_bp(phase.percent or 0.0))
    if phase.kind == "ab_split":
        return Position(phase.kind, phase_index, 0, to_bp(phase.percent or 0.0), 0)
    steps = phase.steps or (100.0,)
    index = min(step_index, len(steps) - 1)
    return Position(phase.kind, phase_index, index, to_bp(steps[index]), 0)


def next_position(
    phases: Sequence[PhaseRule], phase_index: int, step_index: int
) -> tuple[int, int] | None:
    """The position after this one, or None at the last step of the last phase."""
    if 0 <= phase_index < len(phases):
        phase = phases[phase_index]
        if phase.kind == "rollout" and step_index + 1 < len(phase.steps):
            return phase_index, step_index + 1
    if phase_index + 1 < len(phases):
        return phase_index + 1, 0
    return None


def stage_count(phases: Sequence[PhaseRule]) -> int:
    """How many stages of constant weight a run passes through (each rollout step is one)."""
    return sum(len(p.steps) or 1 if p.kind == "rollout" else 1 for p in phases)


# --- validation -----------------------------------------------------------------

Errors = dict[str, list[str]]

_PARAM_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}

# Absolute tolerances per metric: (upper bound, unit) for a sanity check.
_ABSOLUTE_LIMITS: dict[str, tuple[float, str]] = {
    "error_rate": (1.0, "a fraction of requests"),
    "latency_p95": (600_000.0, "milliseconds"),
    "latency_p99": (600_000.0, "milliseconds"),
    "ttft_p95": (600_000.0, "milliseconds"),
    "satisfaction": (1.0, "on the 0-1 satisfaction scale"),
    "cost_per_request": (100.0, "dollars"),
}
METRICS = tuple(_ABSOLUTE_LIMITS)
MAX_RELATIVE_TOLERANCE = 10.0


def _add(errors: Errors, field: str, message: str) -> None:
    errors.setdefault(field, []).append(message)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_params(params: Any, *, max_output_tokens: int | None, field: str) -> Errors:
    errors: Errors = {}
    if not isinstance(params, Mapping):
        _add(errors, field, 'Must be a JSON object, e.g. {"temperature": 0.2, "max_tokens": 1024}.')
        return errors
    for name, (low, high) in _PARAM_RANGES.items():
        if name in params and not (_finite(params[name]) and low <= params[name] <= high):
            _add(errors, field, f"{name} must be a number from {low} to {high}.")
    if "max_tokens" in params:
        value = params["max_tokens"]
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            _add(errors, field, "max_tokens must be a positive integer.")
        elif max_output_tokens is not None and value > max_output_tokens:
            _add(
                errors,
                field,
                f"max_tokens {value} exceeds the model's maximum output of {max_output_tokens}.",
            )
    return errors


def validate_arms(
    *,
    control: Mapping[str, Any] | None,
    candidate: Mapping[str, Any] | None,
    control_max_output: int | None,
    candidate_max_output: int | None,
) -> Errors:
    """Arms: dicts with model (an id or object), params, prompt_mode, prompt_text."""
    errors: Errors = {}
    if control is None or control.get("model") is None:
        _add(errors, "control_model", "Choose a control model from the catalog.")
    if candidate is None or candidate.get("model") is None:
        _add(errors, "candidate_model", "Choose a candidate model from the catalog.")
    for prefix, arm, limit in (
        ("control", control, control_max_output),
        ("candidate", candidate, candidate_max_output),
    ):
        if arm is None:
            continue
        errors.update(
            validate_params(
                arm.get("params", {}), max_output_tokens=limit, field=f"{prefix}_params"
            )
        )
        if arm.get("prompt_mode", "none") != "none" and not str(arm.get("prompt_text", "")).strip():
            _add(errors, f"{prefix}_prompt_text", "A prompt adjustment needs its text.")
    if not errors and control is not None and candidate is not None:
        same = all(
            control.get(k) == candidate.get(k)
            for k in ("model", "params", "prompt_mode", "prompt_text")
        )
        if same:
            _add(
                errors,
                "candidate_model",
                "The candidate must differ from the control (model, params or prompt).",
            )
    return errors


def validate_phase(phase: Mapping[str, Any]) -> Errors:
    errors: Errors = {}
    kind = phase.get("kind")
    percent = phase.get("percent")
    steps = phase.get("steps") or []
    if kind not in ("shadow", "ab_split", "rollout"):
        _add(errors, "kind", "Choose shadow, ab_split or rollout.")
        return errors
    if kind in ("shadow", "ab_split"):
        if not (_finite(percent) and 0 < percent <= 100):
            what = "shadow sample rate" if kind == "shadow" else "candidate share"
            _add(errors, "percent", f"The {what} must be a percentage above 0 and at most 100.")
        elif kind == "ab_split" and percent >= 100:
            _add(
                errors,
                "percent",
                "An A/B split keeps some control traffic: use a rollout to reach 100 %.",
            )
    else:
        if not isinstance(steps, list) or not steps:
            _add(errors, "steps", "A rollout needs its steps, e.g. [5, 25, 50, 100].")
        elif not all(_finite(s) and 0 < s <= 100 for s in steps):
            _add(errors, "steps", "Each step is a candidate percentage above 0 and at most 100.")
        elif any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            _add(errors, "steps", "Steps must be strictly increasing.")
    for name in ("min_duration_minutes", "min_samples"):
        value = phase.get(name, 0)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            _add(errors, name, "Must be a whole number, 0 or more.")
    return errors


def validate_guardrail(guardrail: Mapping[str, Any]) -> Errors:
    errors: Errors = {}
    metric = guardrail.get("metric")
    kind = guardrail.get("tolerance_kind")
    tolerance = guardrail.get("tolerance")
    if metric not in _ABSOLUTE_LIMITS:
        _add(errors, "metric", f"Choose one of {', '.join(METRICS)}.")
        return errors
    if guardrail.get("action", "rollback") not in ("rollback", "pause", "alert"):
        _add(errors, "action", "Choose rollback, pause or alert.")
    if not _finite(tolerance):
        _add(errors, "tolerance", "A number is required.")
        return errors
    if kind == "relative":
        if metric == "satisfaction":
            _add(
                errors,
                "tolerance_kind",
                "Satisfaction tolerances are absolute drops on the 0-1 scale, e.g. 0.1.",
            )
        elif not 1.0 < tolerance <= MAX_RELATIVE_TOLERANCE:
            _add(
                errors,
                "tolerance",
                f"A relative tolerance is a ratio above 1 and at most {MAX_RELATIVE_TOLERANCE:g}, e.g. 1.5.",
            )
    elif kind == "absolute":
        limit, unit = _ABSOLUTE_LIMITS[metric]
        if not 0 < tolerance <= limit:
            _add(
                errors,
                "tolerance",
                f"An absolute tolerance for {metric} is above 0 and at most {limit:g} ({unit}).",
            )
    else:
        _add(errors, "tolerance_kind", "Choose relative or absolute.")
    min_samples = guardrail.get("min_samples", 0)
    if not (
        isinstance(min_samples, int) and not isinstance(min_samples, bool) and min_samples >= 0
    ):
        _add(errors, "min_samples", "Must be a whole number, 0 or more.")
    return errors
