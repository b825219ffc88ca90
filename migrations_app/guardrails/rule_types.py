"""The plain data of the plan-level rules (:mod:`rules`), over no ORM and no clock: what a
guardrail, the plan and the current stage are (the rules' input, mapped from the models by the
engine), a guardrail's running bounds kept between evaluations, and what the rules decide.

Its own module so that the pieces of the rules (:mod:`change_rules`, :mod:`segments`) share
these types without importing the evaluation that calls them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from migrations_app.guardrails import stats
from migrations_app.guardrails.stats import SampleRatio, Verdict, changes
from migrations_app.guardrails.stats.detector import DetectorState

Action = Literal["rollback", "pause", "alert", "advance", "hold"]
GuardrailAction = Literal["rollback", "pause", "alert"]
Mode = Literal["split", "shadow"]

# Precedence when several guardrails disagree: the most protective action wins.
ACTION_RANK: dict[str, int] = {"rollback": 4, "pause": 3, "alert": 2, "hold": 1, "advance": 0}


@dataclass(frozen=True, slots=True)
class Measure:
    """How a per-request metric's guardrail is tested: the extension point for every metric
    beyond the built-in six (an application's own metric, an answer check, a judge's score).

    Such a guardrail runs :func:`stats.metric_test` on the two arms' :class:`MetricSums`
    (``ArmAggregates.metrics[name]``) in a split stage, and :func:`stats.paired_metric_test`
    on the stage's :class:`PairedSums` (``evaluate_plan(paired_metrics=...)``) in a shadow
    stage, each with the user-level variance and the plan's alpha split. ``kind``: ``rate``
    (0/1 values) or ``mean``; ``harm``: the bad direction; ``value_range``: a mean's upper
    minus lower bound (the variance floor); ``in_split`` / ``in_shadow``: where the values
    exist (an application's metric is about the answer the user saw, so not in shadow; an
    answer check is computed for both answers of a shadow pair)."""

    kind: stats.MetricKind
    harm: stats.Harm
    label: str = ""
    value_range: float = 1.0
    in_split: bool = True
    in_shadow: bool = False


@dataclass(frozen=True, slots=True)
class GuardrailSpec:
    """One guardrail of a plan (mirrors the Guardrail model). ``measure`` is set for every
    metric that is not one of the built-in six (:class:`Measure`)."""

    metric: str
    tolerance: float
    tolerance_kind: stats.ToleranceKind = "relative"
    action: GuardrailAction = "rollback"
    min_samples: int = 0
    measure: Measure | None = None
    # Why this guardrail may only alert now ("": it may act). A judge the plan's floor does
    # not trust yet (judge.calibration): its verdicts page, but never roll back, pause or
    # hold the plan, so a judge nobody has checked cannot stop a migration by itself.
    alert_only: str = ""


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """Plan-wide settings (mirrors MigrationPlan)."""

    alpha: float = 0.05
    circuit_breaker_error_rate: float = 0.20
    circuit_breaker_min_requests: int = 50
    srm_alpha: float = 0.001
    n_star: float = stats.DEFAULT_N_STAR


@dataclass(frozen=True, slots=True)
class StageState:
    """Where the plan is: the current stage (constant weight) and its advance criteria.

    ``expected_share`` is the candidate's share of units (the weight; unused in shadow
    mode). ``elapsed_seconds`` is computed by the caller from its clock.
    """

    mode: Mode = "split"
    expected_share: float = 0.5
    min_samples: int = 0
    min_duration_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    alpha_share: float = 1.0
    # The holdout's watch (plans/holdout.py): the candidate already served everyone, so the
    # watch looks for a regression and ends without one; a guardrail whose bound is not yet
    # conclusive (or that lacks data) does not keep it waiting, a warning does.
    watch: bool = False

    @property
    def both_arms(self) -> bool:
        """A split where both arms serve: the stages whose arms' sample ratio is tested and
        whose segments are compared."""
        return self.mode == "split" and 0.0 < self.expected_share < 1.0

    @property
    def detects_changes(self) -> bool:
        """A split below 100 %: the change detectors need a control arm to compare with."""
        return self.mode == "split" and self.expected_share < 1.0


@dataclass(frozen=True, slots=True)
class Bounds:
    """A guardrail's running bounds, stored by the caller between evaluations."""

    lower: float = -math.inf
    upper: float = math.inf
    # The guardrail's confirmatory look (rate-type ones) has been taken this stage: it is spent
    # once, so the flag travels with the bounds from one evaluation to the next.
    looked: bool = False

    def intersect(self, other: Bounds) -> Bounds:
        """The tighter of both sides."""
        return Bounds(
            max(self.lower, other.lower),
            min(self.upper, other.upper),
            self.looked or other.looked,
        )

    def to_dict(self) -> dict[str, float | bool | None]:
        """JSON-safe (infinite bounds become None)."""
        return {
            "lower": self.lower if math.isfinite(self.lower) else None,
            "upper": self.upper if math.isfinite(self.upper) else None,
            "looked": self.looked,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Bounds:
        """Inverse of :meth:`to_dict`."""
        lower, upper = data.get("lower"), data.get("upper")
        return cls(
            -math.inf if lower is None else float(lower),
            math.inf if upper is None else float(upper),
            bool(data.get("looked", False)),
        )


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    """One guardrail's verdict after the running intersection, and what it asks for."""

    spec: GuardrailSpec
    verdict: Verdict
    bounds: Bounds
    wants: Action
    # The change detector's reading when it fired (the verdict then speaks for it).
    change: changes.Change | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the audit trail."""
        out = {
            "metric": self.spec.metric,
            "action": self.spec.action,
            "wants": self.wants,
            "verdict": self.verdict.to_dict(),
            "bounds": self.bounds.to_dict(),
        }
        if self.change is not None:
            out["change"] = self.change.to_dict()
        return out


@dataclass(frozen=True, slots=True)
class PlanDecision:
    """What the engine should do, why, and the evidence."""

    action: Action
    reasons: tuple[str, ...]
    results: tuple[GuardrailResult, ...]
    bounds: Mapping[str, Bounds]
    sample_ratio: SampleRatio | None
    circuit_breaker: bool
    alert: bool
    alphas: Mapping[str, float] = field(default_factory=dict)
    # Each guardrail's change detector after this look's committed windows (the engine
    # stores them with the bounds for the next evaluation).
    detectors: Mapping[str, DetectorState] = field(default_factory=dict)

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        """The per-guardrail verdicts."""
        return tuple(r.verdict for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the audit trail."""
        return {
            "action": self.action,
            "alert": self.alert,
            "reasons": list(self.reasons),
            "circuit_breaker": self.circuit_breaker,
            "guardrails": [r.to_dict() for r in self.results],
            "sample_ratio": self.sample_ratio.to_dict() if self.sample_ratio else None,
            "alphas": dict(self.alphas),
        }
