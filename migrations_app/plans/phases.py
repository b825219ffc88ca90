"""Pure rules about a plan's phases: where traffic goes at each position, what comes next,
and what a valid phase or guardrail looks like. Shared by the services, the admin forms,
the snapshot selector and the engine, so each rule exists once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from turnout.targeting import valid_cohort

from migrations_app.plans.metric_specs import CHECK_SPECS, MetricSpec, validate_metric_guardrail
from migrations_app.replay.metrics import validate_replay

#: A plan's optional first phase: a dataset replayed offline through the candidate, every user
#: on control meanwhile (migrations_app/replay); its settings are the phase's ``replay``.
REPLAY = "replay"

BASIS_POINTS = 10_000
#: The stage a plan with a holdout enters after its last step (plans/holdout.py): not a phase
#: a plan lists, a rule the selectors append; its ``percent`` is the share held on control.
HOLDOUT = "holdout"

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
        # From the split's share up: a first step below it would move users back to control
        # (candidate_share_drops).
        "steps": [10, 25, 50, 100],
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
class CohortStep:
    """A cohort-first rollout step: the cohort (units a targeting rule assigns to it) goes to
    ``percent`` on the candidate before the rest; the general split keeps its weight."""

    cohort: str
    percent: float


Step = float | CohortStep


@dataclass(frozen=True, slots=True)
class PhaseRule:
    kind: str
    percent: float | None
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class Position:
    """Where a running plan sends traffic.

    ``weight_bp`` is the general split's weight; ``cohorts`` each cohort's weight (sorted by
    name), for cohorts a step has targeted so far. ``cohort`` is the population the stage
    compares: the cohort a cohort step targets, or "" for the general split; ``stage_bp`` its
    weight, the stage's.
    """

    phase: str | None
    phase_index: int
    step_index: int
    weight_bp: int
    shadow_bp: int
    cohort: str = ""
    cohorts: tuple[tuple[str, int], ...] = ()

    @property
    def stage_bp(self) -> int:
        return (
            dict(self.cohorts).get(self.cohort, self.weight_bp) if self.cohort else self.weight_bp
        )


def to_bp(percent: float) -> int:
    return max(0, min(BASIS_POINTS, round(percent * 100)))


def step_of(raw: Any) -> Step:
    """A rollout step as stored (a number, or ``{"cohort": name, "percent": p}``) as the rules
    see it; call it on steps ``validate_phase`` accepted."""
    if isinstance(raw, Mapping):
        return CohortStep(str(raw.get("cohort")), float(raw.get("percent") or 0.0))
    return float(raw)


def steps_of(raw: Any) -> tuple[Step, ...]:
    """A phase's stored steps (``PlanPhase.steps``) as the rules see them."""
    return tuple(step_of(s) for s in (raw or []))


def _walk(
    phases: Sequence[PhaseRule], phase_index: int, step_index: int
) -> tuple[int, dict[str, int]]:
    """The general weight at a position and the highest weight each cohort was given at or
    before it: a cohort step leaves the general weight where it was, and a cohort never drops
    below the general weight (``position``)."""
    general = 0
    cohorts: dict[str, int] = {}
    for index, phase in enumerate(phases[: phase_index + 1]):
        if phase.kind in ("shadow", REPLAY):
            general = 0
        elif phase.kind == "ab_split":
            general = to_bp(phase.percent or 0.0)
        elif phase.kind == HOLDOUT:
            general = BASIS_POINTS - to_bp(phase.percent or 0.0)
        else:
            steps = phase.steps or (100.0,)
            last = min(step_index, len(steps) - 1) if index == phase_index else len(steps) - 1
            for step in steps[: last + 1]:
                if isinstance(step, CohortStep):
                    cohorts[step.cohort] = max(cohorts.get(step.cohort, 0), to_bp(step.percent))
                else:
                    general = to_bp(step)
    return general, cohorts


def position(phases: Sequence[PhaseRule], phase_index: int, step_index: int) -> Position:
    """Weights at a position. Out-of-range positions (a phase deleted under a draft) serve control.

    A cohort keeps the highest weight a step gave it, and follows the general split once that
    is higher ("internal 100 %, beta 50 %, then everyone 5 -> 25 -> 50 -> 100": beta stays at
    50 % until everyone reaches it), so no unit of a cohort ever moves back to control."""
    if not 0 <= phase_index < len(phases):
        return Position(None, phase_index, step_index, 0, 0)
    phase = phases[phase_index]
    general, explicit = _walk(phases, phase_index, step_index)
    cohorts = tuple(sorted((name, max(bp, general)) for name, bp in explicit.items()))
    if phase.kind == "shadow":
        return Position(phase.kind, phase_index, 0, 0, to_bp(phase.percent or 0.0), "", cohorts)
    if phase.kind == REPLAY:
        return Position(phase.kind, phase_index, 0, 0, 0)
    if phase.kind == "ab_split":
        return Position(phase.kind, phase_index, 0, general, 0, "", cohorts)
    if phase.kind == HOLDOUT:
        # Every unit at or above the holdout's bucket goes to control, a cohort's too: a
        # cohort split at its own weight here would keep its units out of the holdout.
        return Position(phase.kind, phase_index, 0, general, 0)
    steps = phase.steps or (100.0,)
    index = min(step_index, len(steps) - 1)
    step = steps[index]
    focus = step.cohort if isinstance(step, CohortStep) else ""
    return Position(phase.kind, phase_index, index, general, 0, focus, cohorts)


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


def phase_weights(phase: PhaseRule, start_bp: int = 0) -> tuple[int, ...]:
    """The general split's share (basis points) at each of the phase's stages, as
    ``position`` routes them: none in shadow (every user gets control), the share in a
    split, each step of a rollout (100 % when it has none); a cohort step keeps the weight
    before it (``start_bp`` at the phase's start)."""
    if phase.kind in ("shadow", REPLAY):
        return (0,)
    if phase.kind == "ab_split":
        return (to_bp(phase.percent or 0.0),)
    if phase.kind == HOLDOUT:
        return (BASIS_POINTS - to_bp(phase.percent or 0.0),)
    weights = []
    general = start_bp
    for step in phase.steps or (100.0,):
        if not isinstance(step, CohortStep):
            general = to_bp(step)
        weights.append(general)
    return tuple(weights)


_PHASE_NAMES = {
    "shadow": "shadow",
    "ab_split": "A/B split",
    "rollout": "rollout",
    HOLDOUT: "holdout",
    REPLAY: "replay",
}


def _percent(weight_bp: int) -> str:
    return f"{weight_bp / 100:g} %"


def candidate_share_drops(phases: Sequence[PhaseRule]) -> list[str]:
    """Each place where the candidate's share of users goes down from one phase to the next,
    in words naming both phases; empty when it never does.

    A unit is on the candidate while its bucket is below the weight, so a lower weight moves
    units back to control: their users see answers flip between models, and the README
    promises a run only ever moves units forward. A shadow phase routes every user to
    control, so one after a split or a rollout is a drop too. Steps within a rollout are
    strictly increasing already (``validate_phase``); equal shares across phases are fine.
    """
    problems: list[str] = []
    ends = [0]
    for phase in phases:
        ends.append(phase_weights(phase, ends[-1])[-1])
    for index in range(1, len(phases)):
        before, after = phases[index - 1], phases[index]
        # min: a leading cohort step carries the weight before it, so the phase's first
        # general step may be the one below it.
        was, now = ends[index], min(phase_weights(after, ends[index]))
        if now >= was:
            continue
        earlier = f"phase {index} ({_PHASE_NAMES.get(before.kind, before.kind)})"
        this = f"Phase {index + 1} ({_PHASE_NAMES.get(after.kind, after.kind)})"
        if after.kind == "shadow":
            problems.append(
                f"{this} sends every user to control after {earlier} sent {_percent(was)} to "
                f"the candidate: those users would move back to control. Put shadow phases first."
            )
        else:
            problems.append(
                f"{this} starts at {_percent(now)} on the candidate, below the {_percent(was)} "
                f"of {earlier}: {_percent(was - now)} of users would move back from the "
                f"candidate to control. Start it at {_percent(was)} or more, or lower {earlier}."
            )
    return problems + _cohort_drops(phases)


def _cohort_drops(phases: Sequence[PhaseRule]) -> list[str]:
    """Cohort steps that would not raise their cohort's weight (a step at or below the weight
    the cohort has by then, the general split's included, moves no unit and would only wait
    for samples), and shadow phases after a cohort has been on the candidate."""
    problems: list[str] = []
    general, cohorts = 0, {}
    for p_index, phase in enumerate(phases):
        where = f"Phase {p_index + 1} ({_PHASE_NAMES.get(phase.kind, phase.kind)})"
        if phase.kind == "shadow":
            if any(cohorts.values()):
                problems.append(
                    f"{where} sends every user to control after cohort steps sent "
                    f"{', '.join(sorted(n for n, bp in cohorts.items() if bp))} to the "
                    "candidate: those users would move back to control. Put shadow phases first."
                )
            general = 0
            continue
        if phase.kind == "ab_split":
            general = to_bp(phase.percent or 0.0)
            continue
        for s_index, step in enumerate(phase.steps):
            if not isinstance(step, CohortStep):
                general = to_bp(step)
                continue
            had = max(cohorts.get(step.cohort, 0), general)
            if to_bp(step.percent) <= had:
                problems.append(
                    f"{where}, step {s_index + 1} sends cohort {step.cohort!r} to "
                    f"{_percent(to_bp(step.percent))}, but it is at {_percent(had)} by then: a "
                    "cohort step must raise its cohort's share."
                )
            cohorts[step.cohort] = max(cohorts.get(step.cohort, 0), to_bp(step.percent))
    return problems


def replay_problems(phases: Sequence[PhaseRule]) -> list[str]:
    """A replay phase may only open a plan (it runs before any user is touched), once."""
    if any(p.kind == REPLAY for p in phases[1:]):
        return [
            "A replay phase runs before any user sees the candidate: make it the first phase, "
            "and have one at most."
        ]
    return []


def step_cohorts(phases: Sequence[PhaseRule]) -> list[str]:
    """The cohorts the phases' steps target, in order of first appearance."""
    names = [s.cohort for p in phases for s in p.steps if isinstance(s, CohortStep)]
    return list(dict.fromkeys(names))


def phase_rule(phase: Mapping[str, Any]) -> PhaseRule:
    """A phase given as a dict (a form's cleaned data, a plan file) as the rules see it; call
    it on phases ``validate_phase`` accepted."""
    return PhaseRule(
        kind=str(phase.get("kind")),
        percent=phase.get("percent"),
        steps=steps_of(phase.get("steps")),
    )


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
    # The judge's (migrations_app.judge.measures): absolute only, on their own scales.
    "judge_preference": (2.0, "net preference from -1 to +1: 0.05 is five points"),
    "judge_score": (4.0, "points on the 1-5 rubric"),
}
#: Guardrails whose tolerance can only be absolute (a drop on a bounded scale).
_ABSOLUTE_ONLY = {
    "satisfaction": "Satisfaction tolerances are absolute drops on the 0-1 scale, e.g. 0.1.",
    "judge_preference": "The judge's preference is tolerated as an absolute net drop, e.g. 0.05 "
    "(the candidate may lose at most five points net).",
    "judge_score": "The judge's score is tolerated as an absolute drop on the 1-5 rubric, e.g. "
    "0.1.",
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
    if kind not in ("shadow", "ab_split", "rollout", REPLAY):
        _add(errors, "kind", "Choose replay, shadow, ab_split or rollout.")
        return errors
    if kind == REPLAY:
        errors.update(validate_replay(phase.get("replay")))
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
        # A bad step is named by its index (``steps[2]``), so a form or a plan file's error
        # points at the value to fix.
        if not isinstance(steps, list) or not steps:
            _add(errors, "steps", "A rollout needs its steps, e.g. [5, 25, 50, 100].")
        elif bad := [(i, m) for i, s in enumerate(steps) if (m := _step_problem(s))]:
            for i, message in bad:
                _add(errors, f"steps[{i}]", message)
        else:
            # Strictly increasing within each population: the general steps, and each
            # cohort's own (a cohort step at or below the general weight is refused across
            # phases, candidate_share_drops).
            last: dict[str, float] = {}
            for i, raw in enumerate(steps):
                step = step_of(raw)
                cohort, value = (
                    (step.cohort, step.percent) if isinstance(step, CohortStep) else ("", step)
                )
                if cohort in last and value <= last[cohort]:
                    _add(
                        errors,
                        f"steps[{i}]",
                        "Steps must be strictly increasing."
                        if not cohort
                        else f"Cohort {cohort!r}'s steps must be strictly increasing.",
                    )
                last[cohort] = value
    for name in ("min_duration_minutes", "min_samples"):
        value = phase.get(name, 0)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            _add(errors, name, "Must be a whole number, 0 or more.")
    return errors


_STEP = (
    "Each step is a candidate percentage above 0 and at most 100, or a cohort step such as "
    '{"cohort": "internal", "percent": 100}.'
)


def _step_problem(step: Any) -> str:
    """What is wrong with one rollout step ("" when nothing is)."""
    if isinstance(step, Mapping):
        if set(step) != {"cohort", "percent"}:
            return _STEP
        if not valid_cohort(step["cohort"]):
            return (
                "A cohort is named with lowercase letters, digits, '_' and '-' (at most 63), "
                "as its targeting rule names it."
            )
        step = step["percent"]
    if not (_finite(step) and 0 < step <= 100):
        return _STEP
    return ""


def validate_guardrail(
    guardrail: Mapping[str, Any], metrics: Mapping[str, MetricSpec] | None = None
) -> Errors:
    """A guardrail's fields. ``metrics``: the per-request metrics the plan may guard besides
    the built-in six (plans.metrics.plan_metric_specs: the answer checks, the catalog's and
    the plan's declarations); the answer checks when not given."""
    errors: Errors = {}
    metric = guardrail.get("metric")
    declared = CHECK_SPECS if metrics is None else metrics
    if isinstance(metric, str) and metric not in _ABSOLUTE_LIMITS and metric in declared:
        return validate_metric_guardrail(guardrail, declared[metric])
    kind = guardrail.get("tolerance_kind")
    tolerance = guardrail.get("tolerance")
    if metric not in _ABSOLUTE_LIMITS:
        _add(
            errors,
            "metric",
            f"Choose one of {', '.join(METRICS)}, an answer check, or a metric the plan "
            "or the catalog declares.",
        )
        return errors
    if guardrail.get("action", "rollback") not in ("rollback", "pause", "alert"):
        _add(errors, "action", "Choose rollback, pause or alert.")
    if guardrail.get("direction"):
        _add(
            errors,
            "direction",
            f"{metric}'s direction is fixed; only a per-request metric's guardrail takes one "
            "(leave it empty).",
        )
    if not _finite(tolerance):
        _add(errors, "tolerance", "A number is required.")
        return errors
    if kind == "relative":
        if metric in _ABSOLUTE_ONLY:
            _add(errors, "tolerance_kind", _ABSOLUTE_ONLY[metric])
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
