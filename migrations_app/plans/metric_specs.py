"""Per-request metrics as a plan sees them (pure: no ORM): the answer checks, built in, and the
metrics the plan or the catalog declares. What a value may be, and what a guardrail on one
may ask, are checked here for ingest, the admin and the API alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from turnout.contract import (
    ANSWER_CHECKS,
    CHECK_LENGTH,
    MAX_ANSWER_CHARS,
    METRIC_HIGHER_IS_BETTER,
    METRIC_LOWER_IS_BETTER,
)

Source = Literal["check", "plan", "catalog"]

# What people read for each answer check.
CHECK_LABELS = {
    "json_valid": "valid JSON",
    "schema_valid": "valid against the schema",
    "refusal": "refusal rate",
    "empty_answer": "empty answers",
    "truncated": "truncated answers",
    "answer_chars": "answer length (characters)",
}

MAX_METRIC_RELATIVE_TOLERANCE = 10.0


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One per-request metric: its kind (``rate``: 0 or 1, ``mean``: within ``lower`` ..
    ``upper``), which way is better, and where it comes from."""

    name: str
    kind: str
    direction: str
    lower: float = 0.0
    upper: float = 1.0
    label: str = ""
    description: str = ""
    source: Source = "plan"

    @property
    def harm(self) -> Literal["increase", "decrease"]:
        """The bad direction, as the statistics name it."""
        return "decrease" if self.direction == METRIC_HIGHER_IS_BETTER else "increase"

    @property
    def value_range(self) -> float:
        return self.upper - self.lower

    @property
    def in_shadow(self) -> bool:
        """Checks are computed for both answers of a shadow pair; the application's metrics
        exist only for the answer its user saw (control's, in shadow)."""
        return self.source == "check"

    def value_problem(self, value: Any) -> tuple[str, str] | None:
        """(code, message) when ``value`` cannot be this metric's, else None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):  # a tuple: faster
            return "invalid", f"{self.name} must be a number."
        if isinstance(value, float) and not math.isfinite(value):
            return "invalid", f"{self.name} must be a finite number (not NaN or infinite)."
        if self.kind == "rate":
            if value not in (0, 1):
                return "out_of_range", f"{self.name} is a rate: 0 or 1."
        elif not self.lower <= value <= self.upper:
            return "out_of_range", f"{self.name} must be between {self.lower:g} and {self.upper:g}."
        return None


CHECK_SPECS: dict[str, MetricSpec] = {
    name: MetricSpec(
        name=name,
        kind=kind,
        direction=direction,
        lower=0.0,
        upper=float(MAX_ANSWER_CHARS) if name == CHECK_LENGTH else 1.0,
        label=CHECK_LABELS.get(name, name),
        source="check",
    )
    for name, (kind, direction) in ANSWER_CHECKS.items()
}


def with_direction(spec: MetricSpec, direction: str) -> MetricSpec:
    """The spec as a guardrail overrides its direction ("" keeps it)."""
    if direction not in (METRIC_HIGHER_IS_BETTER, METRIC_LOWER_IS_BETTER):
        return spec
    return MetricSpec(
        spec.name, spec.kind, direction, spec.lower, spec.upper, spec.label,
        spec.description, spec.source,
    )  # fmt: skip


def validate_metric_guardrail(
    guardrail: Mapping[str, Any], spec: MetricSpec
) -> dict[str, list[str]]:
    """A guardrail on a per-request metric: its tolerance on the metric's scale, its action,
    its minimum samples and an optional direction override."""
    errors: dict[str, list[str]] = {}

    def add(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    tolerance = guardrail.get("tolerance")
    kind = guardrail.get("tolerance_kind")
    if guardrail.get("action", "rollback") not in ("rollback", "pause", "alert"):
        add("action", "Choose rollback, pause or alert.")
    direction = guardrail.get("direction", "") or ""
    if direction not in ("", METRIC_HIGHER_IS_BETTER, METRIC_LOWER_IS_BETTER):
        add("direction", "Leave empty (the metric's own), or higher_is_better / lower_is_better.")
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, int | float)
        or not math.isfinite(tolerance)
    ):
        add("tolerance", "A number is required.")
    elif kind == "relative":
        if spec.kind == "mean" and spec.lower < 0:
            add(
                "tolerance_kind",
                f"{spec.name} can be negative: a ratio means nothing; use an absolute tolerance.",
            )
        elif not 1.0 < tolerance <= MAX_METRIC_RELATIVE_TOLERANCE:
            add(
                "tolerance",
                "A relative tolerance is a ratio above 1 and at most "
                f"{MAX_METRIC_RELATIVE_TOLERANCE:g}, e.g. 1.1.",
            )
    elif kind == "absolute":
        if not 0 < tolerance <= spec.value_range:
            unit = (
                "a share of requests, e.g. 0.03 for 3 points"
                if spec.kind == "rate"
                else (f"in {spec.name}'s units")
            )
            add(
                "tolerance",
                f"An absolute tolerance for {spec.name} is above 0 and at most "
                f"{spec.value_range:g} ({unit}).",
            )
    else:
        add("tolerance_kind", "Choose relative or absolute.")
    min_samples = guardrail.get("min_samples", 0)
    if not (
        isinstance(min_samples, int) and not isinstance(min_samples, bool) and min_samples >= 0
    ):
        add("min_samples", "Must be a whole number, 0 or more.")
    return errors
