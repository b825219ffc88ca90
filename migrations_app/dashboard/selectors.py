"""Reads for the plan dashboard and the migration report. Nothing here writes.

Every figure comes from the window and stage aggregates (never raw outcomes), the engine's
stored evaluations and the audit trail, and every statistic from ``guardrails/stats``: the page
shows what the engine saw, not a second computation. The number of queries does not grow
with the data: a week of minute windows is one query, binned into chart points.

This module assembles the page (``dashboard_data``: where the plan is, what comes next, the
verdicts, the timeline); its parts read from ``chart_series`` (the windows, on PostgreSQL
through the process's ``window_cache``, and the bounds), ``costs``, ``shadow`` and
``figures``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from migrations_app.dashboard.chart_series import bound_series, step_minutes_for, window_series
from migrations_app.dashboard.costs import CostProjection, cost_projection
from migrations_app.dashboard.figures import ARMS
from migrations_app.dashboard.shadow import ShadowPair, ShadowSummary, shadow_pairs, shadow_summary
from migrations_app.guardrails.selectors import latest_evaluation
from migrations_app.guardrails.stats import ArmAggregates
from migrations_app.models import (
    AuditEvent,
    Evaluation,
    Guardrail,
    MigrationPlan,
    PlanPhase,
    PlanRun,
    PlanStage,
    PlanStatus,
    StageAggregate,
    StageKind,
)
from migrations_app.outcomes.segment_rollup import catch_up
from migrations_app.plans.phases import HOLDOUT, Position, next_position, position
from migrations_app.plans.selectors import phase_rules_of, plan_position, stage_criteria

RECOVERY = StageKind.RECOVERY


DEFAULT_RANGE = timedelta(hours=24)


MAX_RANGE = timedelta(days=14)


TIMELINE_LIMIT = 50


# --- where the plan is -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NextStep:
    """What happens next: the following position's weights, and what it waits for."""

    label: str
    earliest: datetime | None
    samples_needed: int
    samples: Mapping[str, int]
    auto: bool


def describe_position(kind: str | None, weight_bp: int, shadow_bp: int) -> str:
    """A position in words, e.g. "rollout: candidate 25 %"."""
    if kind is None:
        return "no phase"
    if kind == "shadow":
        return f"shadow: {shadow_bp / 100:g} % of control requests copied to the candidate"
    if kind == RECOVERY:
        return "recovery: all traffic on control"
    if kind == "replay":
        return "replay: a dataset replayed offline through the candidate, all traffic on control"
    name = {"ab_split": "A/B split", "rollout": "rollout", HOLDOUT: "holdout watch"}.get(kind, kind)
    return f"{name}: candidate {weight_bp / 100:g} %, control {(10_000 - weight_bp) / 100:g} %"


_NOT_SPLITTING = {
    PlanStatus.DRAFT: "not started: all traffic on control",
    PlanStatus.PAUSED: "paused: all traffic on control until resumed",
    PlanStatus.ROLLED_BACK: "rolled back: all traffic on control",
    PlanStatus.COMPLETED: "completed: all traffic on the candidate",
    PlanStatus.ARCHIVED: "archived",
}


def describe_where(plan: MigrationPlan, here: Position, stage: PlanStage | None) -> str:
    """Where the plan's traffic goes, in words (the dashboard's and the home page's)."""
    if plan.status == PlanStatus.RUNNING:
        return describe_position(here.phase, here.weight_bp, here.shadow_bp)
    if stage is not None and stage.kind == RECOVERY:
        return describe_position(RECOVERY, 0, 0)
    return _NOT_SPLITTING.get(PlanStatus(plan.status), plan.status)


def next_step(
    plan: MigrationPlan,
    phases: Sequence[PlanPhase],
    stage: PlanStage | None,
    stage_requests: Mapping[str, int],
) -> NextStep | None:
    """The move the engine will make when the stage's criteria are met (None: not running)."""
    if plan.status != PlanStatus.RUNNING or stage is None:
        return None
    rules = phase_rules_of(phases, plan.holdout_percent)
    criteria = stage_criteria(plan, phases)
    following = next_position(rules, plan.phase_index, plan.step_index)
    if following is None:
        label = "complete the migration: all traffic to the candidate"
    else:
        there: Position = position(rules, *following)
        label = describe_position(there.phase, there.weight_bp, there.shadow_bp)
    # The minimum duration restarts at a resume (engine._stage_state reads it the same way).
    since = max(stage.started_at, plan.step_started_at or stage.started_at)
    return NextStep(
        label=label,
        earliest=since + timedelta(minutes=criteria.min_duration_minutes),
        samples_needed=criteria.min_samples,
        samples=stage_requests,
        auto=criteria.auto_advance,
    )


# --- the whole page ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuardrailView:
    metric: str
    label: str
    action: str
    status: str
    summary: str
    estimate: float | None
    lower: float | None
    upper: float | None
    tolerance: float | None
    tolerance_kind: str
    harm: str
    notes: Sequence[str]
    # When the guardrail's change detector fired: the moment since which the candidate has
    # been worse (issue 20); the charts mark it.
    changed_since: datetime | None = None

    @property
    def status_text(self) -> str:
        return self.status.replace("_", " ") or "-"


@dataclass(frozen=True, slots=True)
class DashboardData:
    plan: MigrationPlan
    run: PlanRun | None
    stage: PlanStage | None
    stages: Mapping[int, PlanStage]
    phases: Sequence[PlanPhase]
    guardrails: Sequence[Guardrail]
    position: Position
    where: str
    next: NextStep | None
    stage_requests: Mapping[str, int]
    evaluation: Evaluation | None
    verdicts: Sequence[GuardrailView]
    windows: Mapping[str, list[tuple[datetime, ArmAggregates]]]
    bounds: Sequence[tuple[datetime, dict[str, Any]]]
    costs: Sequence[CostProjection]
    shadow: Sequence[ShadowPair]
    shadow_summary: ShadowSummary | None
    timeline: Sequence[AuditEvent]
    since: datetime
    until: datetime
    step_minutes: int


def plan_for_dashboard(key: str) -> MigrationPlan | None:
    return (
        MigrationPlan.objects.select_related(
            "current_run", "current_stage", "control_model", "candidate_model"
        )
        .filter(key=key)
        .first()
    )


def verdict_views(evaluation: Evaluation | None) -> list[GuardrailView]:
    """The evaluation's per-guardrail verdicts, with the sentence ``stats.summarise`` wrote."""
    if evaluation is None:
        return []
    out = []
    for g in evaluation.decision.get("guardrails", []):
        v = g.get("verdict", {})
        out.append(
            GuardrailView(
                metric=g["metric"],
                label=g["metric"].replace("_", " "),
                action=g.get("action", ""),
                status=v.get("status", ""),
                summary=v.get("summary", ""),
                estimate=v.get("estimate"),
                lower=v.get("lower"),
                upper=v.get("upper"),
                tolerance=v.get("tolerance"),
                tolerance_kind=v.get("tolerance_kind", "relative"),
                harm=v.get("harm", "increase"),
                notes=v.get("notes", []),
                changed_since=_changed_since(g.get("change")),
            )
        )
    return out


def _changed_since(change: Any) -> datetime | None:
    """A fired change detector's change point, or None (also for anything malformed)."""
    if not isinstance(change, dict) or not change.get("fired"):
        return None
    try:
        return datetime.fromisoformat(str(change.get("since")))
    except ValueError:
        return None


def dashboard_data(
    plan: MigrationPlan, *, now: datetime, span: timedelta | None = None
) -> DashboardData:
    """Everything the page shows, in a fixed number of queries."""
    run = plan.current_run
    phases = list(plan.phases.all())
    guardrails = list(plan.guardrails.all())
    stages: dict[int, PlanStage] = (
        {s.pk: s for s in PlanStage.objects.filter(run=run).order_by("started_at", "pk")}
        if run
        else {}
    )
    stage = plan.current_stage
    stage_requests = dict.fromkeys(ARMS, 0)
    if stage is not None:
        catch_up([stage.pk], wait=False)
        stage_requests.update(
            StageAggregate.objects.filter(stage=stage).values_list("arm", "requests")
        )
    # The verdicts of the stage being compared; after it ends, the plan's last word.
    if stage is not None and stage.kind != RECOVERY:
        evaluation = latest_evaluation(stage)
    else:
        evaluation = Evaluation.objects.filter(plan=plan).order_by("-created_at", "-pk").first()
    until = (run.ended_at if run and run.ended_at else now) + timedelta(minutes=1)
    run_start = run.started_at if run else now
    since = max(run_start, until - (span or DEFAULT_RANGE))
    since = since.replace(second=0, microsecond=0)
    step = step_minutes_for(until - since)
    windows = (
        window_series(list(stages), since=since, until=until, step_minutes=step)
        if stages
        else {arm: [] for arm in ARMS}
    )
    bounds = bound_series(plan, run, since=since, until=until, step_minutes=step) if run else []
    here = plan_position(plan)
    where = describe_where(plan, here, stage)
    timeline = list(
        AuditEvent.objects.filter(plan=plan)
        .select_related("run")
        .order_by("-created_at", "-pk")[:TIMELINE_LIMIT]
    )
    return DashboardData(
        plan=plan,
        run=run,
        stage=stage,
        stages=stages,
        phases=phases,
        guardrails=guardrails,
        position=here,
        where=where,
        next=next_step(plan, phases, stage, stage_requests),
        stage_requests=stage_requests,
        evaluation=evaluation,
        verdicts=verdict_views(evaluation),
        windows=windows,
        bounds=bounds,
        costs=cost_projection(plan, stages, now=now) if stages else [],
        shadow=shadow_pairs(plan),
        shadow_summary=shadow_summary(stages),
        timeline=timeline,
        since=since,
        until=until,
        step_minutes=step,
    )
