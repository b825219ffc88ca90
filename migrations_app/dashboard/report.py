"""The migration report: what changed, the before/after per arm with intervals, how long
it took, every rollback and why. Read-only; built from stage aggregates, the audit trail
and ``stats.py`` (the engine's own tests), in a fixed number of queries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from migrations_app import stats
from migrations_app.aggregation import from_json
from migrations_app.dashboard import format as fmt
from migrations_app.dashboard import selectors as sel
from migrations_app.models import AuditEvent, MigrationPlan, PlanRun, PlanStage, StageAggregate
from migrations_app.stats import ArmAggregates, Verdict


@dataclass(frozen=True, slots=True)
class ArmFigure:
    """One arm's figure; ``lower``/``upper`` when stats.py has a one-arm interval for it."""

    value: float | None
    n: int
    lower: float | None = None
    upper: float | None = None

    def text(self, unit: str) -> str:
        shown = fmt.value(self.value, unit)
        bounds = fmt.interval(self.lower, self.upper, unit) if self.lower is not None else ""
        return f"{shown} {bounds} (n={self.n})".replace("  ", " ")


@dataclass(frozen=True, slots=True)
class MetricRow:
    metric: str
    label: str
    unit: str
    control: ArmFigure
    candidate: ArmFigure
    # The engine's test of this guardrail on this stage (None: the plan has no such guardrail).
    comparison: Verdict | None

    @property
    def control_text(self) -> str:
        return self.control.text(self.unit)

    @property
    def candidate_text(self) -> str:
        return self.candidate.text(self.unit)

    @property
    def comparison_text(self) -> str:
        return self.comparison.summary if self.comparison else "no guardrail on this metric"


@dataclass(frozen=True, slots=True)
class StageRow:
    run: int
    kind: str
    where: str
    started_at: datetime
    ended_at: datetime | None
    duration: timedelta
    control_requests: int
    candidate_requests: int
    control_error_rate: float | None
    candidate_error_rate: float | None

    @property
    def duration_text(self) -> str:
        return fmt.duration(self.duration)

    @property
    def control_error_text(self) -> str:
        return fmt.value(self.control_error_rate, "%")

    @property
    def candidate_error_text(self) -> str:
        return fmt.value(self.candidate_error_rate, "%")


@dataclass(frozen=True, slots=True)
class RollbackRow:
    at: datetime
    run: int | None
    actor: str
    reason: str
    reasons: Sequence[str]


@dataclass(frozen=True, slots=True)
class Report:
    plan: MigrationPlan
    ended: bool
    started_at: datetime
    ended_at: datetime | None
    duration: timedelta
    runs: Sequence[PlanRun]
    changes: Sequence[tuple[str, str, str]]
    stages: Sequence[StageRow]
    compared: StageRow | None
    metrics: Sequence[MetricRow]
    rollbacks: Sequence[RollbackRow]
    shadow: sel.ShadowSummary | None
    alpha: float

    @property
    def duration_text(self) -> str:
        return fmt.duration(self.duration)

    @property
    def confidence(self) -> str:
        return f"{100 * (1 - self.alpha):.4g} %"


# (metric, label, unit) in the order the report shows them.
METRICS = (
    ("error_rate", "error rate", "%"),
    ("latency_p50", "p50 latency", "ms"),
    ("latency_p95", "p95 latency", "ms"),
    ("latency_p99", "p99 latency", "ms"),
    ("ttft_p95", "p95 time to first token", "ms"),
    ("satisfaction", "satisfaction (0-1)", ""),
    ("cost_per_request", "cost per request", "$"),
)
QUANTILES = {"latency_p50": ("latency", 0.5), **{
    m: ("ttft" if m.startswith("ttft") else "latency", p) for m, p in stats.QUANTILES.items()
}}  # fmt: skip


def _figure(metric: str, agg: ArmAggregates, alpha: float) -> ArmFigure:
    if metric in QUANTILES:
        source, p = QUANTILES[metric]
        buckets = getattr(agg, source)
        if buckets.total == 0:
            return ArmFigure(None, 0)
        est, lo, hi = stats.quantile_interval(buckets, p, alpha)
        return ArmFigure(est, buckets.total, lo, hi if sel.finite(hi) else None)
    if metric == "error_rate":
        return ArmFigure(sel.error_rate(agg), agg.requests)
    if metric == "satisfaction":
        return ArmFigure(sel.satisfaction(agg), agg.feedback_n)
    return ArmFigure(sel.cost_per_request(agg), agg.cost_n)


def _changes(plan: MigrationPlan) -> list[tuple[str, str, str]]:
    rows = [("model", str(plan.control_model), str(plan.candidate_model))]
    if plan.control_params != plan.candidate_params:
        rows.append(("params", _json(plan.control_params), _json(plan.candidate_params)))
    for attr in ("prompt_mode", "prompt_text"):
        a, b = getattr(plan, f"control_{attr}"), getattr(plan, f"candidate_{attr}")
        if a != b:
            rows.append((attr.replace("_", " "), str(a) or "-", str(b) or "-"))
    return rows


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def plan_report(plan: MigrationPlan, *, now: datetime) -> Report | None:
    """The report of every run of ``plan`` (None before the first run)."""
    runs = list(PlanRun.objects.filter(plan=plan).order_by("number"))
    if not runs:
        return None
    numbers = {r.pk: r.number for r in runs}
    stages = list(PlanStage.objects.filter(plan=plan).order_by("started_at", "pk"))
    totals: dict[int, dict[str, ArmAggregates]] = {
        s.pk: {arm: ArmAggregates() for arm in sel.ARMS} for s in stages
    }
    for stage_id, arm, data in StageAggregate.objects.filter(stage__plan=plan).values_list(
        "stage_id", "arm", "data"
    ):
        totals[stage_id][arm] = from_json(data)
    rows: list[StageRow] = []
    compared: tuple[PlanStage, StageRow] | None = None
    for s in stages:
        c, k = totals[s.pk]["control"], totals[s.pk]["candidate"]
        row = StageRow(
            run=numbers[s.run_id],
            kind=s.kind,
            where=sel.describe_position(s.kind, s.weight_bp, s.shadow_bp),
            started_at=s.started_at,
            ended_at=s.ended_at,
            duration=(s.ended_at or now) - s.started_at,
            control_requests=c.requests,
            candidate_requests=k.requests,
            control_error_rate=sel.error_rate(c),
            candidate_error_rate=sel.error_rate(k),
        )
        rows.append(row)
        # The before/after compares the arms within one stage of constant weight (pooling
        # stages confounds the arms with time): the last one where both arms served.
        if s.kind != sel.RECOVERY and c.requests and k.requests:
            compared = (s, row)
    guardrails = {g.metric: g for g in plan.guardrails.all()}
    metrics: list[MetricRow] = []
    if compared is not None:
        control, candidate = totals[compared[0].pk]["control"], totals[compared[0].pk]["candidate"]
        for metric, label, unit in METRICS:
            g = guardrails.get(metric)
            comparison = (
                stats.evaluate_metric(
                    metric,
                    control,
                    candidate,
                    tolerance=g.tolerance,
                    tolerance_kind=g.tolerance_kind,  # type: ignore[arg-type]
                    alpha=plan.alpha,
                )  # fmt: skip
                if g is not None
                else None
            )
            metrics.append(
                MetricRow(
                    metric,
                    label,
                    unit,
                    _figure(metric, control, plan.alpha),
                    _figure(metric, candidate, plan.alpha),
                    comparison,
                )  # fmt: skip
            )
    rollbacks = [
        RollbackRow(
            at=e.created_at,
            run=numbers.get(e.run_id) if e.run_id else None,
            actor=e.actor_label,
            reason=e.reason,
            reasons=list((e.evidence or {}).get("reasons", [])),
        )
        for e in AuditEvent.objects.filter(plan=plan, action="rollback").order_by(
            "created_at", "pk"
        )
    ]
    last = runs[-1]
    ended = last.ended_at is not None
    return Report(
        plan=plan,
        ended=ended,
        started_at=runs[0].started_at,
        ended_at=last.ended_at,
        duration=(last.ended_at or now) - runs[0].started_at,
        runs=runs,
        changes=_changes(plan),
        stages=rows,
        compared=compared[1] if compared else None,
        metrics=metrics,
        rollbacks=rollbacks,
        shadow=sel.shadow_summary({s.pk: s for s in stages}),
        alpha=plan.alpha,
    )
