"""Reads for the plan dashboard and the migration report. Nothing here writes.

Every figure comes from the window and stage aggregates (never raw outcomes), the engine's
stored evaluations and the audit trail, and every statistic from ``stats.py``: the page
shows what the engine saw, not a second computation. The number of queries does not grow
with the data: a week of minute windows is one query, binned here into chart points.

``window_series`` was meant to come from the aggregation side (``aggregates.py``); it did
not exist when the dashboard was built, so it lives here, reading the same rows.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import DateTimeField, F, Func, Sum, Value
from django.db.models.expressions import RawSQL

from migrations_app import selectors as core
from migrations_app import stats
from migrations_app.dashboard import blocks
from migrations_app.dashboard import format as fmt
from migrations_app.models import (
    AuditEvent,
    Evaluation,
    Guardrail,
    MigrationPlan,
    PlanPhase,
    PlanRun,
    PlanStage,
    PlanStatus,
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
    StageAggregate,
    WindowAggregate,
)
from migrations_app.phases import Position, next_position, position
from migrations_app.shadow import SCORE_KEYS
from migrations_app.stats import ArmAggregates, Buckets

ARMS = ("control", "candidate")
RECOVERY = "recovery"  # plans.RECOVERY; not imported to keep this module free of writers
# Chart points per series at most: a week of minutes is binned into ~200 points.
MAX_POINTS = 200
STEP_CHOICES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)
DEFAULT_RANGE = timedelta(hours=24)
MAX_RANGE = timedelta(days=14)
PROJECTION_WINDOW = timedelta(hours=1)
MINUTES_PER_MONTH = 30 * 24 * 60
TIMELINE_LIMIT = 50


def step_minutes_for(span: timedelta) -> int:
    """The smallest round bin (in minutes) that keeps a span under MAX_POINTS points."""
    minutes = max(1.0, span.total_seconds() / 60)
    for step in STEP_CHOICES:
        if minutes / step <= MAX_POINTS:
            return step
    return STEP_CHOICES[-1]


# --- window series ----------------------------------------------------------------------


@dataclass(slots=True)
class _Bin:
    requests: int = 0
    errors: int = 0
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    # Bucket keys stay strings (as stored) while summing; converted once per bin.
    latency: dict[str, int] = field(default_factory=dict)
    latency_zero: int = 0
    ttft: dict[str, int] = field(default_factory=dict)
    ttft_zero: int = 0
    cost_n: int = 0
    # Float sums kept as their terms and summed exactly rounded once per bin, as
    # ArmAggregates.merge does: the figure does not depend on the order rows arrive in.
    cost_sums: list[float] = field(default_factory=list)
    feedback_n: int = 0
    feedback_sums: list[float] = field(default_factory=list)

    def aggregates(self) -> ArmAggregates:
        return ArmAggregates(
            requests=self.requests,
            errors=self.errors,
            errors_by_kind=dict(self.errors_by_kind),
            latency=Buckets(
                counts={int(k): v for k, v in self.latency.items()}, zero_count=self.latency_zero
            ),
            ttft=Buckets(
                counts={int(k): v for k, v in self.ttft.items()}, zero_count=self.ttft_zero
            ),
            cost_n=self.cost_n,
            cost_sum=math.fsum(self.cost_sums),
            feedback_n=self.feedback_n,
            feedback_sum=math.fsum(self.feedback_sums),
        )


def _add_counts(acc: dict[str, int], counts: Mapping[str, int] | None) -> None:
    if counts:
        get = acc.get
        for key, count in counts.items():
            acc[key] = get(key, 0) + count


_SCALARS = (
    "window",
    "arm",
    "requests",
    "errors",
    "cost_n",
    "cost_sum",
    "feedback_n",
    "feedback_sum",
)
# PostgreSQL sends the JSON parts a chart reads as one small text per row (one parse each);
# the cluster sums and log sums stay in the database.
_PARTS_SQL = (
    "jsonb_build_array(d->'errors_by_kind', d->'latency'->'counts', d->'latency'->'zero', "
    "d->'ttft'->'counts', d->'ttft'->'zero')::text"
).replace("d->", '"migrations_app_windowaggregate"."data"->')


def _window_rows(stage_ids: Sequence[int], since: datetime, until: datetime) -> Iterable[Any]:
    """(window, arm, requests, errors, cost_n, cost_sum, feedback_n, feedback_sum,
    [errors_by_kind, latency counts, latency zero, ttft counts, ttft zero])."""
    query = WindowAggregate.objects.filter(
        stage_id__in=stage_ids, window__gte=since, window__lt=until
    )
    if connection.vendor == "postgresql":
        for *scalars, parts in query.annotate(parts=RawSQL(_PARTS_SQL, ())).values_list(
            *_SCALARS, "parts"
        ):
            yield (*scalars, json.loads(parts))
        return
    for *scalars, kinds, lat, ttft in query.values_list(
        *_SCALARS, "data__errors_by_kind", "data__latency", "data__ttft"
    ):
        lat, ttft = lat or {}, ttft or {}
        parts = [kinds, lat.get("counts"), lat.get("zero"), ttft.get("counts"), ttft.get("zero")]
        yield (*scalars, parts)


def window_series(
    stage_ids: Sequence[int], *, since: datetime, until: datetime, step_minutes: int
) -> dict[str, list[tuple[datetime, ArmAggregates]]]:
    """Per arm, the stages' windows in [since, until) summed into bins of ``step_minutes``
    (bin start, aggregates): counts, error kinds, latency and ttft buckets, cost and
    feedback sums. Cluster sums are left out: charts do not test, they describe.

    On PostgreSQL through ``dashboard.blocks`` (a stage's rows parsed once per clock hour,
    kept in the process and read again when the hour changes), elsewhere
    :func:`window_series_portable`; the same figures, one query either way."""
    if connection.vendor == "postgresql":
        series: dict[str, list[tuple[datetime, ArmAggregates]]] = {arm: [] for arm in ARMS}
        series.update(
            blocks.window_series(stage_ids, since=since, until=until, step_minutes=step_minutes)
        )
        return series
    return window_series_portable(stage_ids, since=since, until=until, step_minutes=step_minutes)


def window_series_portable(
    stage_ids: Sequence[int], *, since: datetime, until: datetime, step_minutes: int
) -> dict[str, list[tuple[datetime, ArmAggregates]]]:
    """:func:`window_series` row by row in Python, on any database: every row's JSON parts
    read and summed into its bin. One query."""
    step = timedelta(minutes=step_minutes)
    bins: dict[tuple[str, int], _Bin] = {}
    for window, arm, requests, errors, cost_n, cost_sum, fb_n, fb_sum, parts in _window_rows(
        stage_ids, since, until
    ):
        kinds, lat, lat_zero, ttft, ttft_zero = parts
        index = int((window - since) / step)
        b = bins.get((arm, index))
        if b is None:
            b = bins[(arm, index)] = _Bin()
        b.requests += requests
        b.errors += errors
        b.cost_n += cost_n
        b.cost_sums.append(cost_sum)
        b.feedback_n += fb_n
        b.feedback_sums.append(fb_sum)
        if kinds:
            b.errors_by_kind.update(kinds)
        _add_counts(b.latency, lat)
        _add_counts(b.ttft, ttft)
        b.latency_zero += lat_zero or 0
        b.ttft_zero += ttft_zero or 0
    series: dict[str, list[tuple[datetime, ArmAggregates]]] = {arm: [] for arm in ARMS}
    for (arm, index), b in sorted(bins.items(), key=lambda item: item[0][1]):
        series.setdefault(arm, []).append((since + index * step, b.aggregates()))
    return series


# --- figures from aggregates (one definition each, used by the charts and the report) ---


def quantile(buckets: Buckets, p: float) -> float | None:
    """The p-quantile's point estimate, as the engine's quantile test computes it."""
    if buckets.total == 0:
        return None
    return stats.quantile_interval(buckets, p, 0.05)[0]


def error_rate(agg: ArmAggregates) -> float | None:
    return agg.errors / agg.requests if agg.requests else None


def satisfaction(agg: ArmAggregates) -> float | None:
    return agg.feedback_sum / agg.feedback_n if agg.feedback_n else None


def cost_per_request(agg: ArmAggregates) -> float | None:
    return agg.cost_sum / agg.cost_n if agg.cost_n else None


# --- the evaluations' bounds over time ---------------------------------------------------


def bound_series(
    plan: MigrationPlan, run: PlanRun, *, since: datetime, until: datetime, step_minutes: int
) -> list[tuple[datetime, dict[str, Any]]]:
    """The running bounds per guardrail, the last evaluation of each bin: (when, bounds).
    The engine evaluates every few seconds; the chart needs one point per bin. One query."""
    query = Evaluation.objects.filter(
        plan=plan, run=run, created_at__gte=since, created_at__lt=until
    )
    if connection.vendor == "postgresql":
        # DISTINCT ON (bin): PostgreSQL keeps one row per bin, so a week of evaluations
        # every 15 s (40 000 rows) reaches Python as at most MAX_POINTS rows.
        binned = query.annotate(
            bin=Func(
                Value(timedelta(minutes=step_minutes)),
                F("created_at"),
                Value(since),
                function="date_bin",
                output_field=DateTimeField(),
            )
        )
        rows = binned.order_by("bin", "-created_at", "-pk").distinct("bin")
        return [(at, bounds) for at, bounds, _ in rows.values_list("created_at", "bounds", "bin")]
    latest: dict[int, tuple[datetime, dict[str, Any]]] = {}
    step = timedelta(minutes=step_minutes)
    for created_at, bounds in query.order_by("created_at", "pk").values_list(
        "created_at", "bounds"
    ):
        latest[int((created_at - since) / step)] = (created_at, bounds)
    return [latest[k] for k in sorted(latest)]


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
    name = {"ab_split": "A/B split", "rollout": "rollout"}.get(kind, kind)
    return f"{name}: candidate {weight_bp / 100:g} %, control {(10_000 - weight_bp) / 100:g} %"


def next_step(
    plan: MigrationPlan,
    phases: Sequence[PlanPhase],
    stage: PlanStage | None,
    stage_requests: Mapping[str, int],
) -> NextStep | None:
    """The move the engine will make when the stage's criteria are met (None: not running)."""
    if plan.status != PlanStatus.RUNNING or stage is None:
        return None
    rules = core.phase_rules_of(phases)
    phase = phases[plan.phase_index] if plan.phase_index < len(phases) else None
    following = next_position(rules, plan.phase_index, plan.step_index)
    if following is None:
        label = "complete the migration: all traffic to the candidate"
    else:
        there: Position = position(rules, *following)
        label = describe_position(there.phase, there.weight_bp, there.shadow_bp)
    # The minimum duration restarts at a resume (engine._stage_state reads it the same way).
    since = max(stage.started_at, plan.step_started_at or stage.started_at)
    minutes = phase.min_duration_minutes if phase else 0
    return NextStep(
        label=label,
        earliest=since + timedelta(minutes=minutes),
        samples_needed=phase.min_samples if phase else 0,
        samples=stage_requests,
        auto=phase.auto_advance if phase else False,
    )


# --- cost projection ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CostProjection:
    arm: str
    model: str
    input_price: float
    output_price: float
    requests_per_minute: float
    cost_per_request: float | None
    monthly_at_current_split: float | None
    monthly_if_all_traffic: float | None

    @property
    def per_request_text(self) -> str:
        return fmt.value(self.cost_per_request, "$")

    @property
    def split_text(self) -> str:
        return fmt.money(self.monthly_at_current_split)

    @property
    def all_text(self) -> str:
        return fmt.money(self.monthly_if_all_traffic)


def cost_projection(
    plan: MigrationPlan,
    stages: Mapping[int, PlanStage],
    *,
    now: datetime,
) -> list[CostProjection]:
    """Each arm's monthly cost at the last hour's traffic: at the current split, and if all
    traffic went to it. Cost per request is what ingest priced from the catalog. One query."""
    since = now - PROJECTION_WINDOW
    rows = (
        WindowAggregate.objects.filter(stage_id__in=list(stages), window__gte=since)
        .values("stage_id", "arm")
        .annotate(requests=Sum("requests"), cost_n=Sum("cost_n"), cost_sum=Sum("cost_sum"))
        .order_by()
    )
    requests = dict.fromkeys(ARMS, 0)
    cost_n = dict.fromkeys(ARMS, 0)
    cost_sum = dict.fromkeys(ARMS, 0.0)
    production = 0
    for row in rows:
        arm = row["arm"]
        requests[arm] += row["requests"]
        cost_n[arm] += row["cost_n"]
        cost_sum[arm] += row["cost_sum"]
        # In shadow the candidate answers copies of control requests: not extra traffic.
        if not (stages[row["stage_id"]].kind == "shadow" and arm == "candidate"):
            production += row["requests"]
    run_start = min((s.started_at for s in stages.values()), default=since)
    minutes = max(1.0, (now - max(since, run_start)).total_seconds() / 60)
    out = []
    for arm, spec in (("control", plan.control_model), ("candidate", plan.candidate_model)):
        per_request = cost_sum[arm] / cost_n[arm] if cost_n[arm] else None
        rate = requests[arm] / minutes
        out.append(
            CostProjection(
                arm=arm,
                model=str(spec.model_id),
                input_price=float(spec.input_price_per_mtok),
                output_price=float(spec.output_price_per_mtok),
                requests_per_minute=rate,
                cost_per_request=per_request,
                monthly_at_current_split=None
                if per_request is None
                else rate * MINUTES_PER_MONTH * per_request,
                monthly_if_all_traffic=None
                if per_request is None
                else production / minutes * MINUTES_PER_MONTH * per_request,
            )
        )
    return out


# --- shadow pairs ------------------------------------------------------------------------

SHADOW_PAIRS = 5


@dataclass(frozen=True, slots=True)
class ShadowPair:
    """One request both models answered (redacted at storage), with its comparison scores."""

    at: datetime | None
    prompt: str
    control: str
    candidate: str
    candidate_error: str
    scores: Sequence[tuple[str, str]]


def _score(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


#: The per-pair scores shown beside a pair (the sample keeps the rest: lengths, both arms'
#: refusal flags, the judge's raw answer).
PAIR_SCORES = frozenset(SCORE_KEYS) - {"judge_score"}  # the judge shows as its verdict


def _scores(comparison: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The pair's scores a person reads: the scalar ones, the judge's verdict in words, and
    the JSON diff's counts (the diff itself is in the sample)."""
    out = []
    for key, value in sorted(comparison.items()):
        if key == "judge" and isinstance(value, Mapping):
            reason = str(value.get("reason") or value.get("error") or "")
            out.append(("judge", f"{value.get('winner')}: {reason}".strip(": ")))
        elif key == "json_diff" and isinstance(value, Mapping):
            counts = [f"{len(value.get(k) or [])} {k}" for k in ("added", "removed", "changed")]
            out.append(("json diff", ", ".join(counts)))
        elif key in PAIR_SCORES and value is not None:
            out.append((key, _score(value)))
    return out


#: The shadow aggregate's means, in the order and words the dashboard shows them.
SHADOW_MEANS = (
    ("exact_match", "answers identical", "percent"),
    ("normalized_match", "identical after normalising case, spacing, punctuation", "percent"),
    ("json_valid", "valid JSON, where JSON was asked for", "percent"),
    ("similarity", "text similarity (word-overlap F1, mean)", "ratio"),
    ("length_ratio", "length, candidate / control (mean)", "ratio"),
    ("refusal", "candidate refused where control answered", "percent"),
    ("judge_score", "judge preference, candidate minus control (-1 to +1, mean)", "signed"),
)


@dataclass(frozen=True, slots=True)
class ShadowSummary:
    """A run's shadow comparison so far: the paired failures and each score's mean."""

    pairs: int
    control_only: int
    candidate_only: int
    both: int
    means: Sequence[tuple[str, str, int]]  # label, value in words, pairs it is over


def shadow_summary(stages: Mapping[int, PlanStage]) -> ShadowSummary | None:
    """The run's shadow stages' paired aggregates, summed. One query."""
    ids = [pk for pk, stage in stages.items() if stage.kind == "shadow"]
    if not ids:
        return None
    total: dict[str, float] = {}
    for data in ShadowAggregate.objects.filter(stage_id__in=ids).values_list("data", flat=True):
        for key, value in data.items():
            total[key] = total.get(key, 0) + value
    if not total.get("n"):
        return None
    means = []
    for key, label, kind in SHADOW_MEANS:
        n = int(total.get(f"{key}_n", 0))
        if n:
            mean = total[f"{key}_sum"] / n
            text = {"percent": f"{mean:.1%}", "ratio": f"{mean:.2f}", "signed": f"{mean:+.2f}"}
            means.append((label, text[kind], n))
    return ShadowSummary(
        pairs=int(total["n"]),
        control_only=int(total.get("control_only", 0)),
        candidate_only=int(total.get("candidate_only", 0)),
        both=int(total.get("both", 0)),
        means=means,
    )


def shadow_pairs(plan: MigrationPlan, limit: int = SHADOW_PAIRS) -> list[ShadowPair]:
    """The current run's latest compared shadow pairs, newest first. One query."""
    if plan.current_run_id is None:
        return []
    rows = (
        ShadowSample.objects.filter(plan=plan, run_id=plan.current_run_id, status=ShadowStatus.DONE)
        .order_by("-completed_at")
        .only("request", "control", "candidate", "comparison", "completed_at")[:limit]
    )
    pairs = []
    for sample in rows:
        messages = sample.request.get("messages", []) if isinstance(sample.request, dict) else []
        prompt = next(
            (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        pairs.append(
            ShadowPair(
                at=sample.completed_at,
                prompt=str(prompt),
                control=str(sample.control.get("text", "")),
                candidate=str(sample.candidate.get("text", "")),
                candidate_error=str(sample.candidate.get("error") or ""),
                scores=_scores(sample.comparison),
            )
        )
    return pairs


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
            )
        )
    return out


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
        stage_requests.update(
            StageAggregate.objects.filter(stage=stage).values_list("arm", "requests")
        )
    # The verdicts of the stage being compared; after it ends, the plan's last word.
    if stage is not None and stage.kind != RECOVERY:
        evaluation = core.latest_evaluation(stage)
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
    here = core.plan_position(plan)
    if plan.status == PlanStatus.RUNNING:
        where = describe_position(here.phase, here.weight_bp, here.shadow_bp)
    elif stage is not None and stage.kind == RECOVERY:
        where = describe_position(RECOVERY, 0, 0)
    else:
        where = {
            PlanStatus.DRAFT: "not started: all traffic on control",
            PlanStatus.PAUSED: "paused: all traffic on control until resumed",
            PlanStatus.ROLLED_BACK: "rolled back: all traffic on control",
            PlanStatus.COMPLETED: "completed: all traffic on the candidate",
            PlanStatus.ARCHIVED: "archived",
        }.get(PlanStatus(plan.status), plan.status)
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


def arm_totals(stage_ids: Iterable[int]) -> dict[str, ArmAggregates]:
    """Each arm's aggregates summed over several stages (two rows per stage)."""
    from migrations_app.aggregation import from_json

    parts: dict[str, list[ArmAggregates]] = {arm: [] for arm in ARMS}
    for arm, data in StageAggregate.objects.filter(stage_id__in=list(stage_ids)).values_list(
        "arm", "data"
    ):
        parts.setdefault(arm, []).append(from_json(data))
    return {arm: ArmAggregates.merge(items) for arm, items in parts.items()}


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
