"""What a replay measures, and the replay phase's settings (pure: no Django, no I/O).

Every answer of a replay (the candidate's, and control's when it is called or recorded) gets
values from the same functions the shadow pipeline and ``complete()`` use: the answer checks
(``turnout.checks``), the comparison with the item's reference answer (``turnout.compare``:
the task's own exact match), the comparison with control's answer (agreement), and the judge's
preference. A gate names one of :data:`METRICS`; ``versus_control`` gates test the candidate's
value minus control's on the same item (only for metrics both answers have: the checks and the
reference scores).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turnout import compare
from turnout.checks import answer_checks

from migrations_app.replay.stats import DIRECTIONS, Gate


@dataclass(frozen=True, slots=True)
class ReplayMetric:
    """``kind`` "rate" (0/1 values) or "mean" (bounded by ``low`` .. ``high``); ``paired``:
    control's answer has it too, so a gate may test the difference; ``higher_is_better`` for
    the page's worst-items order."""

    kind: str
    low: float
    high: float
    paired: bool
    higher_is_better: bool
    help: str


METRICS: dict[str, ReplayMetric] = {
    "json_valid": ReplayMetric("rate", 0, 1, True, True, "answer parses as JSON (JSON asked)"),
    "schema_valid": ReplayMetric("rate", 0, 1, True, True, "answer fits the plan's schema"),
    "refusal": ReplayMetric("rate", 0, 1, True, False, "answer is a refusal"),
    "empty": ReplayMetric("rate", 0, 1, True, False, "answer is empty"),
    "truncated": ReplayMetric("rate", 0, 1, True, False, "answer stopped at max_tokens"),
    "exact_match": ReplayMetric("rate", 0, 1, True, True, "answer equals the reference"),
    "normalized_match": ReplayMetric(
        "rate", 0, 1, True, True, "answer equals the reference after normalising"
    ),
    "reference_similarity": ReplayMetric(
        "mean", 0, 1, True, True, "token similarity to the reference (0-1)"
    ),
    "agreement": ReplayMetric("rate", 0, 1, False, True, "answer matches control's (normalised)"),
    "control_similarity": ReplayMetric(
        "mean", 0, 1, False, True, "token similarity to control's answer (0-1)"
    ),
    "judge_preference": ReplayMetric(
        "mean", -1, 1, False, True, "the judge's preference: +1 candidate, 0 tie, -1 control"
    ),
}

#: The checks of ``turnout.checks`` a replay keeps (``length`` is not a bounded score).
_CHECKS = ("json_valid", "schema_valid", "refusal", "empty", "truncated")


def answer_values(
    text: str,
    *,
    error: str | None,
    finish_reason: str | None,
    json_expected: bool,
    schema: Any,
    reference: str | None,
) -> dict[str, float]:
    """The values of one answer that do not depend on the other arm: the answer checks and
    the reference scores. ``{}`` when the call gave no answer (an error is an outage, not a
    value: counted as not evaluated)."""
    checks = answer_checks(
        text, error=error, finish_reason=finish_reason, json_expected=json_expected, schema=schema
    )
    if not checks:
        return {}
    values = {name: float(checks[name]) for name in _CHECKS if name in checks}
    if reference is not None:
        scores = compare.compare(reference, text, json_expected=json_expected)
        values["exact_match"] = float(scores.exact_match)
        values["normalized_match"] = float(scores.normalized_match)
        values["reference_similarity"] = float(scores.similarity)
    return values


def agreement_values(control_text: str, text: str, *, json_expected: bool) -> dict[str, float]:
    """The candidate's agreement with control's answer on the same item."""
    scores = compare.compare(control_text, text, json_expected=json_expected)
    return {
        "agreement": float(scores.normalized_match),
        "control_similarity": float(scores.similarity),
    }


# --- the replay phase's settings ----------------------------------------------------------

MIN_REPEATS, MAX_REPEATS, DEFAULT_REPEATS = 1, 10, 3
MAX_GATES = 20
ON_FAIL = ("stop", "approval")
MAX_BUDGET_USD = 10_000.0
SETTINGS_KEYS = frozenset(
    {"dataset", "version", "repeats", "fresh_baseline", "gates", "on_fail", "budget_usd"}
)
GATE_KEYS = frozenset({"metric", "threshold", "direction", "versus_control"})
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_replay(settings: Any) -> dict[str, list[str]]:
    """Problems with a replay phase's settings, by path under the phase (``replay.gates[1].
    threshold``); empty when they are fine. Bounds and allowlists only: whether the dataset
    exists is the start checks' question (a draft may name a set made later)."""
    errors: dict[str, list[str]] = {}

    def add(path: str, message: str) -> None:
        errors.setdefault(path, []).append(message)

    if not isinstance(settings, Mapping):
        add("replay", 'A JSON object, e.g. {"dataset": "support-tickets", "gates": [...]}.')
        return errors
    for key in sorted(set(settings) - SETTINGS_KEYS, key=str):
        add(f"replay.{key}", f"Unknown setting; known: {', '.join(sorted(SETTINGS_KEYS))}.")
    name = settings.get("dataset")
    if not (
        isinstance(name, str) and 0 < len(name) <= 63 and set(name) <= _NAME_CHARS
        and name[0] not in "._-"
    ):  # fmt: skip
        add("replay.dataset", "Name the dataset to replay (lowercase letters, digits, . _ -).")
    version = settings.get("version")
    if version is not None and not (_whole(version) and version >= 1):
        add("replay.version", "A dataset version is a whole number from 1 (omit for the latest).")
    repeats = settings.get("repeats", DEFAULT_REPEATS)
    if not (_whole(repeats) and MIN_REPEATS <= repeats <= MAX_REPEATS):
        add(
            "replay.repeats",
            f"Repeats per item: a whole number from {MIN_REPEATS} to {MAX_REPEATS}.",
        )
    if not isinstance(settings.get("fresh_baseline", False), bool):
        add("replay.fresh_baseline", "true or false.")
    if settings.get("on_fail", "stop") not in ON_FAIL:
        add("replay.on_fail", "stop (the plan stops) or approval (a person decides).")
    budget = settings.get("budget_usd")
    if budget is not None and not (_finite(budget) and 0 < budget <= MAX_BUDGET_USD):
        add("replay.budget_usd", f"A budget in dollars above 0 and at most {MAX_BUDGET_USD:g}.")
    gates = settings.get("gates")
    if not isinstance(gates, list) or not gates:
        add("replay.gates", 'At least one gate, e.g. {"metric": "json_valid", "threshold": 0.99}.')
        return errors
    if len(gates) > MAX_GATES:
        add("replay.gates", f"At most {MAX_GATES} gates.")
        return errors
    for i, gate in enumerate(gates):
        for path, message in _gate_problems(gate):
            add(f"replay.gates[{i}]{path}", message)
    return errors


def _gate_problems(gate: Any) -> list[tuple[str, str]]:
    if not isinstance(gate, Mapping):
        return [("", 'An object, e.g. {"metric": "json_valid", "threshold": 0.99}.')]
    problems = [(f".{k}", "Unknown field.") for k in sorted(set(gate) - GATE_KEYS, key=str)]
    metric = gate.get("metric")
    spec = METRICS.get(metric) if isinstance(metric, str) else None
    if spec is None:
        problems.append((".metric", f"Choose one of {', '.join(METRICS)}."))
    versus = gate.get("versus_control", False)
    if not isinstance(versus, bool):
        problems.append((".versus_control", "true or false."))
    elif versus and spec is not None and not spec.paired:
        problems.append(
            (".versus_control", f"{metric} compares with control already; test it alone.")
        )
    if gate.get("direction", "at_least") not in DIRECTIONS:
        problems.append((".direction", "at_least or at_most."))
    threshold = gate.get("threshold")
    if not _finite(threshold):
        problems.append((".threshold", "A number is required."))
    elif spec is not None and isinstance(versus, bool):
        span = spec.high - spec.low
        low, high = (-span, span) if versus else (spec.low, spec.high)
        if not low <= threshold <= high:
            problems.append((".threshold", f"Between {low:g} and {high:g} for {metric}."))
    return problems


def gates_of(settings: Mapping[str, Any]) -> list[Gate]:
    """The gates of settings :func:`validate_replay` accepted."""
    return [
        Gate(
            metric=str(g["metric"]),
            threshold=float(g["threshold"]),
            direction=g.get("direction", "at_least"),
            versus_control=bool(g.get("versus_control", False)),
        )
        for g in settings.get("gates") or []
    ]
