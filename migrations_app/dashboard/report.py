"""The migration report: what changed, the before/after per arm with intervals, how long
it took, every rollback and why. Read-only; built from stage aggregates, the audit trail
and ``guardrails/stats`` (the engine's own tests), in a fixed number of queries."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from migrations_app.dashboard import figures, selectors
from migrations_app.dashboard import format as fmt
from migrations_app.dashboard.shadow import ShadowSummary, shadow_summary
from migrations_app.guardrails import stats
from migrations_app.guardrails.measures import guardrail_spec
from migrations_app.guardrails.stats import ArmAggregates, MetricSums, Verdict
from migrations_app.judge.measures import JUDGE_MEASURES
from migrations_app.models import (
    AuditEvent,
    Guardrail,
    MigrationPlan,
    PlanRun,
    PlanStage,
    StageAggregate,
)
from migrations_app.outcomes.aggregate_json import from_json
from migrations_app.outcomes.segment_rollup import catch_up
from migrations_app.plans.metrics import plan_metric_specs
from migrations_app.replay import selectors as replay_selectors

# --- Markdown: names, prompts and reasons are anyone's text ------------------------------
# Escaped so that a reader's viewer shows them as written: no link, image, raw HTML, heading
# or table cell of their own (the templates/turnout/report.md filters, via report_md).

# Inline constructs (and the table's cell separator): backslash-escaped wherever they are.
_MD_INLINE = re.compile(r"([\\`*_\[\]<>|~&$#])")
# Block markers act only at the start of a line, where a value may follow "- " or "| ".
_MD_BLOCK_START = re.compile(r"^([-+=])|^(\d{1,9})([.)])(?= |$)")
# Controls (an ANSI escape for a terminal reader) become spaces; split() then breaks on
# every Unicode line and paragraph separator.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _one_line(value: object) -> str:
    return " ".join(_CONTROLS.sub(" ", str(value)).split())


def _escape_block_start(match: re.Match[str]) -> str:
    if match.group(1):
        return "\\" + match.group(1)
    return f"{match.group(2)}\\{match.group(3)}"  # "1." as "1\.": a digit is not escapable


# GFM's autolinks: bare URLs, www. names and email addresses (mailto:, xmpp: too) become links.
# GitHub's renderer links an address after backslash escapes and character references are
# resolved, so no escape stops it; a code span does, in every GFM renderer. A run of
# characters holding a trigger is shown as one code span: exactly its characters, never a link.
# The run stops at what ends a GFM autolink (space, "<") and at what a code span cannot hold
# here (a backtick; a pipe, which a table cell splits on even inside code).
_MD_RUN = re.compile(r"[^\s<>`|]+")
_MD_LINK_TRIGGER = re.compile(r"://|www\.|@[\w-]+\.[\w-]", re.IGNORECASE)


def _md_plain(text: str) -> str:
    return _MD_INLINE.sub(r"\\\1", text)


def md_text(value: object) -> str:
    """``value`` as Markdown text that renders as exactly its characters, on one line: no
    markup, and a URL or an email address in it as a code span (GFM would link it)."""
    text = _one_line(value)
    pieces, done = [], 0
    for run in _MD_RUN.finditer(text):
        if _MD_LINK_TRIGGER.search(run.group()):
            pieces += [_md_plain(text[done : run.start()]), f"`{run.group()}`"]
            done = run.end()
    pieces.append(_md_plain(text[done:]))
    # Block markers act only at the start of the value, which is plain text or a code span.
    pieces[0] = _MD_BLOCK_START.sub(_escape_block_start, pieces[0])
    return "".join(pieces)


def md_code(value: object) -> str:
    """``value`` as one code span inside a table cell: fenced by more backticks than it holds,
    its pipes escaped (GitHub's tables split on them even inside code)."""
    text = _one_line(value).replace("|", "\\|")
    if not text:
        return ""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


@dataclass(frozen=True, slots=True)
class ArmFigure:
    """One arm's figure; ``lower``/``upper`` when guardrails/stats has a one-arm interval for it."""

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
    shadow: ShadowSummary | None
    alpha: float
    # The plan's replays, oldest first (replay.selectors.report_rows).
    replays: Sequence[dict[str, Any]] = ()

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
        return ArmFigure(est, buckets.total, lo, hi if figures.finite(hi) else None)
    if metric == "error_rate":
        return ArmFigure(figures.error_rate(agg), agg.requests)
    if metric == "satisfaction":
        return ArmFigure(figures.satisfaction(agg), agg.feedback_n)
    return ArmFigure(figures.cost_per_request(agg), agg.cost_n)


def _per_request_rows(
    plan: MigrationPlan,
    control: ArmAggregates,
    candidate: ArmAggregates,
    guardrails: Mapping[str, Guardrail],
) -> list[MetricRow]:
    """The per-request metrics either arm has values of (the application's, the answer checks,
    the judge's score), guarded ones first, each tested as the engine tests its guardrail."""
    specs = plan_metric_specs(plan.pk)
    names = sorted(
        set(control.metrics) | set(candidate.metrics),
        key=lambda name: (name not in guardrails, name),
    )
    rows = []
    for name in names:
        spec = specs.get(name)
        a = control.metrics.get(name, MetricSums())
        b = candidate.metrics.get(name, MetricSums())
        g = guardrails.get(name)
        comparison = None
        if g is not None:
            measure = guardrail_spec(g, specs).measure or JUDGE_MEASURES.get(name)
            if measure is not None:
                comparison = stats.metric_test(
                    name, a, b, kind=measure.kind, harm=measure.harm, tolerance=g.tolerance,
                    tolerance_kind=g.tolerance_kind,  # type: ignore[arg-type]
                    alpha=plan.alpha, value_range=measure.value_range, label=measure.label,
                )  # fmt: skip
        rate = spec is not None and spec.kind == "rate"
        judge = JUDGE_MEASURES.get(name)
        label = (spec.label or name) if spec is not None else judge.label if judge else name
        rows.append(
            MetricRow(
                name,
                label,
                "%" if rate else "",
                ArmFigure(a.mean if a.n else None, a.n),
                ArmFigure(b.mean if b.n else None, b.n),
                comparison,
            )  # fmt: skip
        )
    return rows


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
        s.pk: {arm: ArmAggregates() for arm in figures.ARMS} for s in stages
    }
    catch_up(totals, wait=False)
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
            where=selectors.describe_position(s.kind, s.weight_bp, s.shadow_bp),
            started_at=s.started_at,
            ended_at=s.ended_at,
            duration=(s.ended_at or now) - s.started_at,
            control_requests=c.requests,
            candidate_requests=k.requests,
            control_error_rate=figures.error_rate(c),
            candidate_error_rate=figures.error_rate(k),
        )
        rows.append(row)
        # The before/after compares the arms within one stage of constant weight (pooling
        # stages confounds the arms with time): the last one where both arms served.
        if s.kind != selectors.RECOVERY and c.requests and k.requests:
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
        metrics += _per_request_rows(plan, control, candidate, guardrails)
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
        shadow=shadow_summary({s.pk: s for s in stages}),
        alpha=plan.alpha,
        replays=replay_selectors.report_rows(plan),
    )
