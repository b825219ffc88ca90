"""The home page's reads: every plan with its state (where its traffic goes, at which step, the
engine's last word) and what needs a person. Nothing here writes.

A fixed number of queries whatever the number of plans: the plans with their models (their
latest evaluation and audit event picked by subqueries the plan-timeline indexes serve), their
phases, those evaluations, those events, the running stages' request counts and the failed
alert deliveries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, OuterRef, Subquery, Sum
from django.urls import reverse

from migrations_app.dashboard.selectors import describe_where
from migrations_app.models import (
    AlertDelivery,
    AuditAction,
    AuditEvent,
    DeliveryStatus,
    Evaluation,
    MigrationPlan,
    PlanStatus,
    StageAggregate,
)
from migrations_app.plans.phases import phase_weights
from migrations_app.plans.preview import duration_text
from migrations_app.plans.selectors import phase_rules_of, plan_position

# Running plans first, then those a person must decide about, then the rest; archived plans
# are counted, not listed.
_ORDER = {
    PlanStatus.RUNNING: 0,
    PlanStatus.PAUSED: 1,
    PlanStatus.ROLLED_BACK: 2,
    PlanStatus.DRAFT: 3,
    PlanStatus.COMPLETED: 4,
}
# A verdict's badge: the worst guardrail status of the evaluation.
_WORST = ("regressed", "warning", "inconclusive", "not_enough_data", "inside_tolerance")
# A stage that has seen no outcome for this long is worth a look (is an SDK connected?).
QUIET_STAGE = timedelta(minutes=10)
# Failed alert deliveries this recent are listed.
FAILED_ALERTS_SINCE = timedelta(days=1)
SEVERITIES = ("critical", "warning", "info")


def engine_silence() -> timedelta:
    """How long a running plan may go without an evaluation before the page says the engine
    may not be running: several beats, and never under five minutes."""
    return max(timedelta(minutes=5), timedelta(seconds=4 * settings.TURNOUT_EVALUATION_INTERVAL))


@dataclass(frozen=True, slots=True)
class Attention:
    """Something a person should look at."""

    severity: str  # critical | warning | info
    plan_key: str
    title: str
    detail: str
    link: str


@dataclass(frozen=True, slots=True)
class PlanRow:
    plan: MigrationPlan
    where: str
    step: str
    verdict: str
    verdict_status: str
    verdict_at: datetime | None
    attention: Sequence[Attention] = field(default_factory=tuple)

    @property
    def verdict_status_text(self) -> str:
        return self.verdict_status.replace("_", " ")


@dataclass(frozen=True, slots=True)
class HomeData:
    rows: Sequence[PlanRow]
    attention: Sequence[Attention]
    counts: Sequence[tuple[str, str, int]]  # (status, its label, plans), in the page's order
    archived: int


def _step(plan: MigrationPlan) -> str:
    """ "phase 3 of 3 (rollout), step 2 of 4" for a running or paused plan."""
    if plan.status not in (PlanStatus.RUNNING, PlanStatus.PAUSED):
        return ""
    phases = list(plan.phases.all())
    if not 0 <= plan.phase_index < len(phases):
        return ""
    phase = phases[plan.phase_index]
    text = f"phase {plan.phase_index + 1} of {len(phases)} ({phase.get_kind_display()})"
    steps = len(phase_weights(phase_rules_of([phase])[0]))
    if steps > 1:
        text += f", step {plan.step_index + 1} of {steps}"
    return text


def _verdict(evaluation: Evaluation | None) -> tuple[str, str]:
    """The engine's last word on a plan, and the worst guardrail status for its badge."""
    if evaluation is None:
        return "", ""
    decision = evaluation.decision or {}
    statuses = [g.get("verdict", {}).get("status", "") for g in decision.get("guardrails", [])]
    worst = next((s for s in _WORST if s in statuses), "")
    reasons = decision.get("reasons") or []
    action = evaluation.action
    if action == "hold" and decision.get("action") == "advance":
        action = "ready to advance"
    text = f"{action}: {reasons[0]}" if reasons else action
    return text, worst


def _ago(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86_400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86_400} d ago"


def _who(event: AuditEvent, now: datetime) -> str:
    why = f": {event.reason}" if event.reason else ""
    return f"by {event.actor_label} {_ago(event.created_at, now)}{why}"


def _attention(
    plan: MigrationPlan,
    *,
    evaluation: Evaluation | None,
    event: AuditEvent | None,
    stage_requests: int | None,
    failed: Sequence[tuple[str, int]],
    now: datetime,
) -> list[Attention]:
    """What about this plan needs a person, most urgent first."""
    dashboard = reverse("plan-dashboard", args=[plan.key])
    found: list[Attention] = []

    def add(severity: str, title: str, detail: str, link: str = dashboard) -> None:
        found.append(Attention(severity, plan.key, title, detail, link))

    if failed:
        count = sum(n for _, n in failed)
        channels = ", ".join(sorted({name for name, _ in failed}))
        add(
            "critical",
            f"{count} alert deliver{'y' if count == 1 else 'ies'} failed",
            f"To {channels} in the last day: on-call may not have been paged.",
            reverse("admin:migrations_app_alertdelivery_changelist")
            + f"?status__exact=failed&plan__id__exact={plan.pk}",
        )
    if plan.status == PlanStatus.ROLLED_BACK:
        if event is not None and event.action == AuditAction.ESCALATED:
            add("critical", "Not recovered after the rollback", event.reason or "Escalated.")
        elif event is not None and event.action == AuditAction.ROLLBACK:
            add("critical", "Rolled back", f"Rolled back {_who(event, now)}.")
        else:
            add(
                "info",
                "Rolled back",
                "All traffic is on control. Fix the candidate and start a new run, or archive it.",
            )
    elif plan.status == PlanStatus.PAUSED:
        who = f" {_who(event, now)}" if event is not None and event.action == "pause" else ""
        add("warning", "Paused", f"Paused{who}. Resume it or roll it back.")
    elif plan.status == PlanStatus.RUNNING:
        decision = (evaluation.decision or {}) if evaluation is not None else {}
        reasons = decision.get("reasons") or []
        since = plan.step_started_at or plan.updated_at
        last = evaluation.created_at if evaluation is not None else since
        if now - last > engine_silence():
            add(
                "warning",
                "The engine is not evaluating",
                f"No evaluation for {duration_text((now - last).total_seconds() / 60)}: are "
                "the Celery worker and beat running?",
            )
        if evaluation is not None and decision.get("alert"):
            add("warning", "Guardrail alert", reasons[0] if reasons else "See the verdicts.")
        if (
            evaluation is not None
            and evaluation.action == "hold"
            and decision.get("action") == "advance"
        ):
            add(
                "info",
                "Ready to advance",
                "The step met its minimums with every guardrail inside its tolerance; "
                "auto-advance is off, so a person approves the next step.",
            )
        stage = plan.current_stage
        if (
            stage is not None
            and not stage_requests
            and now - max(stage.started_at, plan.step_started_at or stage.started_at) > QUIET_STAGE
        ):
            add(
                "warning",
                "No traffic reported",
                f"No outcome in this stage since it began {_ago(stage.started_at, now)}: is an "
                "SDK with a key that sees this plan deciding and reporting?",
            )
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(found, key=lambda a: rank[a.severity])


def home_data(*, now: datetime) -> HomeData:
    """Every plan but the archived, with its state, and what needs attention."""
    latest_evaluation = Evaluation.objects.filter(plan=OuterRef("pk")).order_by(
        "-created_at", "-pk"
    )
    latest_event = AuditEvent.objects.filter(plan=OuterRef("pk")).order_by("-created_at", "-pk")
    plans = list(
        MigrationPlan.objects.exclude(status=PlanStatus.ARCHIVED)
        .select_related("control_model", "candidate_model", "current_stage")
        .prefetch_related("phases")
        .annotate(
            latest_evaluation_id=Subquery(latest_evaluation.values("pk")[:1]),
            latest_event_id=Subquery(latest_event.values("pk")[:1]),
        )
    )
    evaluations = Evaluation.objects.in_bulk(
        [p.latest_evaluation_id for p in plans if p.latest_evaluation_id]  # type: ignore[attr-defined]
    )
    events = AuditEvent.objects.in_bulk(
        [p.latest_event_id for p in plans if p.latest_event_id]  # type: ignore[attr-defined]
    )
    running = [p.current_stage_id for p in plans if p.status == PlanStatus.RUNNING]
    # Not folded first (segment_rollup.catch_up): a count on an overview may lag by the second
    # a web process holds pending, and a page listing every running plan must not fold them.
    requests = dict(
        StageAggregate.objects.filter(stage_id__in=[s for s in running if s])
        .values("stage_id")
        .annotate(n=Sum("requests"))
        .values_list("stage_id", "n")
        .order_by()
    )
    failed: dict[int, list[tuple[str, int]]] = {}
    for plan_id, channel, n in (
        AlertDelivery.objects.filter(
            status=DeliveryStatus.FAILED, created_at__gte=now - FAILED_ALERTS_SINCE
        )
        .values("plan_id", "channel__name")
        .annotate(n=Count("pk"))
        .values_list("plan_id", "channel__name", "n")
        .order_by()
    ):
        failed.setdefault(plan_id, []).append((channel, n))
    archived = MigrationPlan.objects.filter(status=PlanStatus.ARCHIVED).count()

    rows = []
    for plan in sorted(plans, key=lambda p: (_ORDER.get(PlanStatus(p.status), 9), p.key)):
        evaluation = evaluations.get(plan.latest_evaluation_id)  # type: ignore[attr-defined]
        verdict, worst = _verdict(evaluation)
        rows.append(
            PlanRow(
                plan=plan,
                where=describe_where(plan, plan_position(plan), plan.current_stage),
                step=_step(plan),
                verdict=verdict,
                verdict_status=worst,
                verdict_at=evaluation.created_at if evaluation else None,
                attention=_attention(
                    plan,
                    evaluation=evaluation,
                    event=events.get(plan.latest_event_id),  # type: ignore[attr-defined]
                    stage_requests=requests.get(plan.current_stage_id),
                    failed=failed.get(plan.pk, []),
                    now=now,
                ),
            )
        )
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    attention = sorted((a for row in rows for a in row.attention), key=lambda a: rank[a.severity])
    tally: dict[str, int] = {}
    for plan in plans:
        tally[plan.status] = tally.get(plan.status, 0) + 1
    counts = [(str(s), PlanStatus(s).label, tally[s]) for s in _ORDER if s in tally]
    return HomeData(rows=rows, attention=attention, counts=counts, archived=archived)
