"""The rollback engine: evaluate a running plan's guardrails and act on the verdict.

One evaluation reads the current stage's two running totals (``StageAggregate``), the
bounds of the stage's previous evaluation, and the plan's guardrails; runs the pure
``rules.evaluate_plan``; stores the result as an ``Evaluation`` (the dashboard's
"why"); and acts through the lifecycle services only, as the rollback engine, with the
evaluation as evidence: roll back, pause, advance (or complete at the last step), or
nothing. A rollback is absorbing (``lifecycle.plan_rollback``), so nothing flaps.

Concurrency: the evaluation holds the plan's row lock (``SELECT ... FOR UPDATE SKIP
LOCKED``) for its whole transaction. A second evaluation of the same plan at the same time
finds the row locked and skips; a person acting at the same moment waits a few
milliseconds, then acts on the new version or gets a version conflict. The lifecycle
services' compare-and-set would refuse a double action anyway; the lock also keeps the
stored evaluations (and their running bounds) in one sequence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from migrations_app.alerts import oncall, outbox
from migrations_app.errors import IllegalTransition
from migrations_app.guardrails import segment_engine
from migrations_app.guardrails.measures import guardrail_spec
from migrations_app.guardrails.recovery import recovery_check
from migrations_app.guardrails.rules import (
    Bounds,
    PlanDecision,
    PlanSettings,
    StageState,
    evaluate_plan,
)
from migrations_app.guardrails.segments import (
    SegmentedDecision,
    evaluate_with_segments,
    segment_slots,
)
from migrations_app.guardrails.selectors import latest_evaluation
from migrations_app.guardrails.stats import ArmAggregates, changes
from migrations_app.guardrails.stats.detector import DEFAULT_ARL_DAYS, DetectorState
from migrations_app.judge.selectors import judge_spec, run_calibration
from migrations_app.models import (
    AuditEvent,
    Evaluation,
    MigrationPlan,
    PlanPhase,
    PlanStage,
    PlanStatus,
    StageKind,
)
from migrations_app.outcomes import aggregation
from migrations_app.outcomes.selectors import stage_totals, stage_windows, window_totals
from migrations_app.plans import lifecycle
from migrations_app.plans.metrics import plan_metric_specs
from migrations_app.plans.phases import PhaseRule, next_position, stage_count
from migrations_app.plans.selectors import (
    StageCriteria,
    phase_rules_of,
    stage_criteria,
)
from migrations_app.shadow.selectors import example_pairs, paired_errors, paired_metrics

log = logging.getLogger(__name__)

#: Where an evaluation's bounds keep the change detectors' states (not a metric name: those
#: start with a letter): ``{"committed": last folded window, "states": {metric: state}}``.
DETECTORS_KEY = "_detectors"
#: A minute window is folded into the detectors (stored, never read again) once it ended this
#: long ago; younger ones are read at each look but not stored, so reports that arrive a
#: little late still count. Reports later than this count in the cumulative tests only.
COMMIT_LAG = timedelta(minutes=2)


@dataclass(frozen=True, slots=True)
class EvaluationResult:
    """What one evaluation did. ``skipped`` says why nothing was evaluated."""

    plan_key: str
    action: str = "hold"
    acted: bool = False
    evaluation_id: int | None = None
    skipped: str = ""


def running_plan_ids() -> list[int]:
    """The plans the engine watches (the beat task fans out one evaluation each)."""
    return list(
        MigrationPlan.objects.filter(status=PlanStatus.RUNNING)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def _lock(plan_id: int) -> MigrationPlan | None:
    """The plan, row-locked for this transaction; None if another evaluation holds it."""
    return (
        MigrationPlan.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("current_stage", "current_run", "control_model", "candidate_model")
        .filter(pk=plan_id)
        .first()
    )


def plan_evaluate(*, plan_id: int, now: datetime | None = None) -> EvaluationResult:
    """Evaluate one running plan now and act on the verdict. Safe to call concurrently and
    repeatedly (see the module docstring)."""
    now = now or timezone.now()
    with transaction.atomic():
        plan = _lock(plan_id)
        if plan is None:
            return EvaluationResult(str(plan_id), skipped="locked by another evaluation, or gone")
        stage = plan.current_stage
        if plan.status != PlanStatus.RUNNING or stage is None:
            return EvaluationResult(plan.key, skipped=f"plan is {plan.status}")
        if stage.kind == StageKind.REPLAY:
            # No user traffic to test: the replay's gates decide (replay/services.py).
            return EvaluationResult(plan.key, skipped="replay stage: its gates decide")
        phases = list(plan.phases.all())
        phase = phases[plan.phase_index] if plan.phase_index < len(phases) else None
        # The phase's criteria, or the holdout's after the last step (plans/holdout.py).
        criteria = stage_criteria(plan, phases)
        rules = phase_rules_of(phases, plan.holdout_percent)
        totals = stage_totals(stage)
        previous = latest_evaluation(stage)
        stage_state = _stage_state(plan, stage, criteria, stage_count(rules), now)
        # The answer checks and the plan's (and the catalog's) declared metrics.
        metric_specs = plan_metric_specs(plan.pk)
        # Whether the judge's guardrails may act: people's labels against its verdicts.
        trust = run_calibration(plan)
        inputs: dict[str, Any] = dict(
            guardrails=[
                judge_spec(
                    guardrail_spec(g, metric_specs),
                    trust,
                )
                for g in plan.guardrails.all()
            ],
            settings=PlanSettings(
                alpha=plan.alpha,
                circuit_breaker_error_rate=plan.circuit_breaker_error_rate,
                circuit_breaker_min_requests=plan.circuit_breaker_min_requests,
            ),
            stage=stage_state,
            control=totals["control"],
            candidate=totals["candidate"],
            previous={
                m: Bounds.from_dict(b)
                for m, b in (previous.bounds if previous else {}).items()
                if m != DETECTORS_KEY
            },
            # In shadow both models answered the same requests: the paired test is sharper.
            paired_errors=paired_errors(stage) if stage.kind == "shadow" else None,
            paired_metrics=paired_metrics(stage) if stage.kind == "shadow" else None,
            # In a split stage every guardrail also runs its change detector (issue 20).
            windows=(
                _windows(stage, previous, phase, now, arl_days=plan.detector_arl_days)
                if stage_state.detects_changes
                else None
            ),
        )
        segmented: SegmentedDecision | None = None
        if plan.segment_dimensions:
            # Every guardrail per segment too, at its share of the alpha (guardrails/segments.py).
            by_segment = {
                "segments": segment_engine.plan_segments(plan, stage),
                "slots": segment_slots(len(plan.segment_dimensions), plan.segment_top_k),
                "excluded": segment_engine.excluded_segments(plan),
            }
            segmented = evaluate_with_segments(
                **inputs, **by_segment, on_regression=plan.segment_on_regression
            )
            if not segment_engine.room_for(plan, segmented.exclude):
                # The exclusion rules do not fit in the plan's rule list: roll back instead.
                segmented = evaluate_with_segments(**inputs, **by_segment, on_regression="rollback")
            decision = replace(
                segmented.population,
                action=segmented.action,
                reasons=segmented.reasons,
                bounds=segmented.bounds,
                alert=segmented.alert,
            )
        else:
            decision = evaluate_plan(**inputs)
        action = decision.action
        if action == "advance" and not criteria.auto_advance:
            action = "hold"  # the step is done; a person approves the next one
        evidence = _evidence(plan, stage, decision, totals)
        if trust is not None:
            evidence["judge"] = trust.to_dict()
        if segmented is not None:
            evidence["segments"] = [s.to_dict() for s in segmented.segments]
            evidence["segment_alphas"] = dict(segmented.segment_alphas)
            evidence["segment_exclusions"] = [list(e) for e in segmented.exclude]
        evaluation = Evaluation.objects.create(
            plan=plan,
            run_id=stage.run_id,
            stage=stage,
            plan_version=plan.version,
            action=action,
            decision=evidence,
            bounds=_bounds(decision, previous),
            control_requests=totals["control"].requests,
            candidate_requests=totals["candidate"].requests,
            created_at=now,
        )
        evidence["evaluation_id"] = evaluation.pk
        for dimension, value in segmented.exclude if segmented is not None else ():
            excluded = segment_engine.exclude(
                plan,
                dimension,
                value,
                reason=f"Segment {dimension}={value} regressed: excluded by the engine "
                f"(evaluation {evaluation.pk}); its units get control, the run continues.",
            )
            evidence.setdefault("excluded", []).append(excluded)
        if segmented is not None and segmented.exclude:
            plan.refresh_from_db(fields=["version"])
        acted = _act(plan, action, decision, evidence, rules)
        if acted:
            Evaluation.objects.filter(pk=evaluation.pk).update(acted=True)
        page = _page_for(action, acted, decision)
        if page:
            _page(plan, page, evidence, "; ".join(decision.reasons), now)
    return EvaluationResult(plan.key, action, acted, evaluation.pk)


def _detector_states(previous: Evaluation | None) -> tuple[int, dict[str, DetectorState]]:
    """The last window the stage's detectors folded (-1: none) and their states."""
    blob = (previous.bounds if previous else {}).get(DETECTORS_KEY)
    if not isinstance(blob, dict):
        return -1, {}
    states = blob.get("states")
    try:
        committed = int(blob.get("committed", -1))
    except (TypeError, ValueError):
        return -1, {}
    if not isinstance(states, dict):
        return committed, {}
    return committed, {
        str(m): DetectorState.from_dict(s) for m, s in states.items() if isinstance(s, dict)
    }


def _windows(
    stage: PlanStage,
    previous: Evaluation | None,
    phase: PlanPhase | None,
    now: datetime,
    *,
    arl_days: float = DEFAULT_ARL_DAYS,
) -> changes.Windows:
    """The stage's minute windows the detectors have not folded yet: ``committed`` the ones
    that ended :data:`COMMIT_LAG` ago (folded now and stored), ``recent`` the rest (read
    only). Windows are indexed by minutes since the stage's first; an event stamped before
    the stage began (a client's clock) counts in the first."""
    start = aggregation.window_start(stage.started_at)
    folded, states = _detector_states(previous)
    minute = timedelta(seconds=aggregation.WINDOW_SECONDS)
    since = start + (folded + 1) * minute if folded >= 0 else None
    # Windows starting before this one have ended at least COMMIT_LAG ago.
    cutoff = int((aggregation.window_start(now - COMMIT_LAG) - start) / minute)
    by_index: dict[int, dict[str, ArmAggregates]] = {}
    for window, arm, data in stage_windows(stage, since=since):
        index = max(0, int((window - start) / minute))
        arms = by_index.setdefault(index, {})
        arms[arm] = ArmAggregates.merge((arms[arm], data)) if arm in arms else data
    windows = [
        changes.Window(
            i,
            arms.get("control", ArmAggregates()),
            arms.get("candidate", ArmAggregates()),
        )
        for i, arms in sorted(by_index.items())
    ]
    return changes.Windows(
        committed=[w for w in windows if w.index < cutoff],
        recent=[w for w in windows if w.index >= cutoff],
        stage_start=start,
        states=states,
        planned_minutes=float(phase.min_duration_minutes) if phase else 0.0,
        arl_days=arl_days,
    )


def _bounds(decision: PlanDecision, previous: Evaluation | None) -> dict[str, Any]:
    """The evaluation's stored bounds, with the detectors' states for the next one."""
    out: dict[str, Any] = {m: b.to_dict() for m, b in decision.bounds.items()}
    if decision.detectors:
        committed = max(s.committed for s in decision.detectors.values())
        out[DETECTORS_KEY] = {
            "committed": max(committed, _detector_states(previous)[0]),
            "states": {m: s.to_dict() for m, s in decision.detectors.items()},
        }
    return out


def _page_for(action: str, acted: bool, decision: PlanDecision) -> str | None:
    """Which page an evaluation sends: its own rollback or pause (not one another actor beat
    it to), a warning, or a hold that needs eyes (a sample-ratio mismatch)."""
    if action in ("rollback", "pause"):
        return action if acted else None
    if action == "alert":
        return "alert"
    if decision.alert:
        return "hold"
    return None


def _page(
    plan: MigrationPlan,
    action: str,
    evidence: dict[str, Any],
    reason: str,
    now: datetime,
    about: str | None = None,
) -> None:
    """Queue the page in the current transaction (it commits with the action or not at all)."""
    message = oncall.alert_message(
        action=action,
        plan_key=plan.key,
        plan_name=plan.name,
        run=plan.current_run.number if plan.current_run else 0,
        control_model=plan.control_model.model_id,
        candidate_model=plan.candidate_model.model_id,
        evidence=evidence,
        reason=reason,
        at=now,
        dashboard_url=f"{settings.SITE_URL}/plans/{plan.key}/",
        about=about,
        examples=example_pairs(plan) if action != "recovered" else (),
    )
    outbox.alert_enqueue(plan=plan, message=message, now=now)


def _stage_state(
    plan: MigrationPlan, stage: PlanStage, criteria: StageCriteria, stages: int, now: datetime
) -> StageState:
    # A resumed step's minimum duration restarts at the resume (lifecycle.plan_resume).
    since = max(stage.started_at, plan.step_started_at or stage.started_at)
    return StageState(
        mode="shadow" if stage.kind == "shadow" else "split",
        expected_share=stage.weight_bp / 10_000,
        min_samples=criteria.min_samples,
        min_duration_seconds=criteria.min_duration_minutes * 60.0,
        elapsed_seconds=max(0.0, (now - since).total_seconds()),
        # Each stage of the run spends its own share of every guardrail's alpha, so the
        # run as a whole stays within the plan's alpha (rules.py).
        alpha_share=1.0 / max(1, stages),
        # The holdout ends on its watch without a regression (rules.StageState.watch).
        watch=criteria.watch,
    )


def _arm_summary(arm: ArmAggregates) -> dict[str, Any]:
    return {
        "requests": arm.requests,
        "units": arm.units,
        "errors": arm.errors,
        "errors_by_kind": dict(sorted(arm.errors_by_kind.items())),
        "feedback": arm.feedback_n,
        "costed_requests": arm.cost_n,
    }


def _evidence(
    plan: MigrationPlan,
    stage: PlanStage,
    decision: PlanDecision,
    totals: dict[str, ArmAggregates],
) -> dict[str, Any]:
    return {
        **decision.to_dict(),
        "plan_version": plan.version,
        "stage": {
            "id": stage.pk,
            "kind": stage.kind,
            "phase_index": stage.phase_index,
            "step_index": stage.step_index,
            "weight_bp": stage.weight_bp,
            "started_at": stage.started_at.isoformat(),
        },
        "arms": {name: _arm_summary(arm) for name, arm in totals.items()},
    }


def _reason(decision: PlanDecision, action: str) -> str:
    lead = {
        "rollback": "Rolled back by the engine",
        "pause": "Paused by the engine",
        "advance": "Advanced by the engine",
    }[action]
    return f"{lead}: " + "; ".join(decision.reasons)


def _act(
    plan: MigrationPlan,
    action: str,
    decision: PlanDecision,
    evidence: dict[str, Any],
    rules: list[PhaseRule],
) -> bool:
    """Carry out the action through the lifecycle services. False when it was not an action
    or another actor changed the plan first (the compare-and-set refused ours). ``rules``: the
    stages of the run, read under the plan's lock."""
    common = {
        "plan_key": plan.key,
        "actor": lifecycle.ENGINE,
        "evidence": evidence,
        "expected_version": plan.version,
    }
    try:
        if action == "rollback":
            lifecycle.plan_rollback(reason=_reason(decision, action), **common)
        elif action == "pause":
            lifecycle.plan_pause(reason=_reason(decision, action), **common)
        elif action == "advance":
            at_last = next_position(rules, plan.phase_index, plan.step_index) is None
            if at_last:
                lifecycle.plan_complete(reason=_reason(decision, action), **common)
            else:
                lifecycle.plan_advance(reason=_reason(decision, action), **common)
        else:
            return False
    except IllegalTransition as exc:  # includes VersionConflict
        log.info("engine: %s on %s not applied: %s", action, plan.key, exc.message)
        return False
    return True


# --- the closed loop after a rollback --------------------------------------------------

# The recent control traffic a recovery check looks at, and how long a rolled-back run is
# watched before the engine stops (a person takes it from there).
RECOVERY_WINDOW = timedelta(minutes=5)
RECOVERY_WATCH = timedelta(hours=24)


def _incident_subject(plan: MigrationPlan, run_id: int) -> str:
    """What the run's rollback paged about (its dedup subject)."""
    rollback = (
        AuditEvent.objects.filter(plan=plan, run_id=run_id, action="rollback")
        .order_by("-pk")
        .values_list("evidence", flat=True)
        .first()
    )
    return oncall.subject(rollback or {})


def recovering_plan_ids(now: datetime | None = None) -> list[int]:
    """Rolled-back plans whose recovery is still being watched."""
    since = (now or timezone.now()) - RECOVERY_WATCH
    return list(
        MigrationPlan.objects.filter(
            status=PlanStatus.ROLLED_BACK,
            current_stage__kind=lifecycle.RECOVERY,
            current_stage__ended_at__isnull=True,
            current_stage__started_at__gte=since,
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def plan_watch_recovery(*, plan_id: int, now: datetime | None = None) -> str:
    """After a rollback, compare the control arm's recent traffic with its level before the
    regression. Recovered: note it (the page resolves) and stop watching. Still not back
    ``escalate_after_minutes`` after the rollback: note an escalation, once (the page
    re-triggers at a higher severity; a rollback that did not fix the problem is worse news
    than the regression). Returns what it found."""
    now = now or timezone.now()
    with transaction.atomic():
        plan = _lock(plan_id)
        recovery = plan.current_stage if plan else None
        if (
            plan is None
            or recovery is None
            or plan.status != PlanStatus.ROLLED_BACK
            or recovery.kind != lifecycle.RECOVERY
            or recovery.ended_at is not None
        ):
            return "skipped"
        rolled_back = (
            PlanStage.objects.filter(run_id=recovery.run_id)
            .exclude(kind=lifecycle.RECOVERY)
            .order_by("-started_at", "-pk")
            .first()
        )
        baseline = stage_totals(rolled_back)["control"] if rolled_back else None
        # Whole windows: the one the rollback fell in belongs to the recovery stage anyway.
        since = aggregation.window_start(max(recovery.started_at, now - RECOVERY_WINDOW))
        recent = window_totals(recovery, "control", since=since)
        check = recovery_check(baseline or ArmAggregates(), recent)
        evidence = {
            "check": check.status,
            "summary": check.summary,
            "recent": _arm_summary(recent),
            "baseline": _arm_summary(baseline) if baseline else None,
        }
        subject = _incident_subject(plan, recovery.run_id)
        escalated = AuditEvent.objects.filter(
            plan=plan, run_id=recovery.run_id, action="escalated"
        ).exists()
        if check.status == "recovered":
            PlanStage.objects.filter(pk=recovery.pk).update(ended_at=now)
            lifecycle.record_edit(
                plan, actor=lifecycle.ENGINE, action="recovered", reason=check.summary,
                evidence=evidence, publish=False,
            )  # fmt: skip
            # Resolve the rollback's page, and the escalation's, which has a key of its own.
            _page(plan, "recovered", evidence, check.summary, now, about=subject)
            if escalated:
                _page(plan, "recovered", evidence, check.summary, now, about=f"{subject}:escalated")
            return "recovered"
        overdue = now - recovery.started_at >= timedelta(minutes=plan.escalate_after_minutes)
        if check.status == "not_recovered" and overdue and not escalated:
            reason = (
                f"Not recovered {plan.escalate_after_minutes} minutes after the rollback: "
                f"{check.summary}"
            )
            lifecycle.record_edit(
                plan, actor=lifecycle.ENGINE, action="escalated", reason=reason,
                evidence=evidence, publish=False,
            )  # fmt: skip
            # PagerDuty folds a trigger into an open alert with the same key: an escalation
            # that must page again needs its own.
            _page(plan, "escalated", evidence, reason, now, about=f"{subject}:escalated")
            return "escalated"
        return check.status
