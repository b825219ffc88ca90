"""Lifecycle services for migration plans: create, start, advance, pause, resume, roll back,
complete, archive.

Every state change is one function, atomic, and compare-and-set: the UPDATE is conditional on
the status and version the service read, so of two actors racing (the engine and a person, or
two engine workers) exactly one changes the plan; the other gets ``IllegalTransition`` (or its
subclass ``VersionConflict``) and nothing it would have written is written. Each change writes
an audit event with the actor, the reason and the evidence in the same transaction, bumps the
plan version, and publishes the new version after commit so that every SDK refetches.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from migrations_app.errors import IllegalTransition, NotFound, ValidationFailed, VersionConflict
from migrations_app.models import (
    ActorKind,
    AuditAction,
    AuditEvent,
    MigrationPlan,
    PlanRun,
    PlanStage,
    PlanStatus,
    StageKind,
)
from migrations_app.plans import start_checks
from migrations_app.plans.phases import (
    next_position,
    position,
)
from migrations_app.plans.selectors import phase_rules
from migrations_app.routing import changes


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts on a plan: a person, the rollback engine, or an API key (chat-ops, scripts)."""

    kind: str
    label: str
    user_id: int | None = None

    @classmethod
    def for_user(cls, user: Any) -> Actor:
        return cls(ActorKind.USER, user.get_username(), user.pk)

    @classmethod
    def for_api_key(cls, name: str) -> Actor:
        return cls(ActorKind.API, f"api key {name}")


ENGINE = Actor(ActorKind.ENGINE, "rollback engine")


S = PlanStatus


# action -> (statuses it may start from, status it leads to; None keeps the status)
TRANSITIONS: dict[str, tuple[frozenset[str], str | None]] = {
    "start": (frozenset({S.DRAFT, S.ROLLED_BACK}), S.RUNNING),
    "advance": (frozenset({S.RUNNING}), None),
    "pause": (frozenset({S.RUNNING}), S.PAUSED),
    "resume": (frozenset({S.PAUSED}), S.RUNNING),
    "rollback": (frozenset({S.RUNNING, S.PAUSED}), S.ROLLED_BACK),
    "complete": (frozenset({S.RUNNING, S.PAUSED}), S.COMPLETED),
    "archive": (frozenset({S.DRAFT, S.ROLLED_BACK, S.COMPLETED}), S.ARCHIVED),
}


def _locked(plan_key: str) -> MigrationPlan:
    try:
        return MigrationPlan.objects.select_for_update().get(key=plan_key)
    except MigrationPlan.DoesNotExist:
        raise NotFound(
            f"No plan with key {plan_key!r}.", code="plan_not_found", details={"field": "plan"}
        ) from None


def _transition(
    plan_key: str,
    action: str,
    *,
    actor: Actor,
    reason: str,
    evidence: Mapping[str, Any] | None,
    expected_version: int | None,
    changes_for: Callable[[MigrationPlan, datetime], dict[str, Any]] | None = None,
) -> MigrationPlan:
    allowed, target = TRANSITIONS[action]
    now = timezone.now()
    with transaction.atomic():
        # Read under the row lock: a writer that is not a lifecycle action (a rename, a
        # targeting change) bumps the version too, and a read before its commit would make
        # the compare-and-set below match no row, so a rollback that named no version would
        # fail for a change it does not care about. Locked, it waits for that writer and acts
        # on what it committed; a caller that named a version gets VersionConflict clearly.
        plan = _locked(plan_key)
        _check_allowed(plan, action, allowed, expected_version)
        updates: dict[str, Any] = changes_for(plan, now) if changes_for else {}
        if target is not None:
            updates["status"] = target
        new_version = plan.version + 1
        # The compare-and-set: a concurrent change moved the version and this matches no row.
        changed = MigrationPlan.objects.filter(
            pk=plan.pk, status=plan.status, version=plan.version
        ).update(version=new_version, updated_at=now, **updates)
        if changed != 1:
            plan.refresh_from_db()
            _check_allowed(plan, action, allowed, None)
            raise VersionConflict(
                f"Plan {plan.key!r} changed while {action} was being applied; it is now {plan.status} "
                f"at version {plan.version}.",
                details={"status": plan.status, "version": plan.version},
            )
        from_status = plan.status
        plan.refresh_from_db()
        _sync_stage(plan, now)
        _audit(
            plan,
            actor=actor,
            action=action,
            from_status=from_status,
            reason=reason,
            evidence=evidence,
            publish=True,
        )
    return plan


RECOVERY = StageKind.RECOVERY


def _routing_stage(plan: MigrationPlan) -> PlanStage | None:
    """The stage outcomes at the plan's current version belong to: the split while running,
    the recovery stage after a rollback, none otherwise (draft, paused, completed)."""
    stage = plan.current_stage
    if stage is None:
        return None
    if plan.status == S.RUNNING or (plan.status == S.ROLLED_BACK and stage.kind == RECOVERY):
        return stage
    return None


def _sync_stage(plan: MigrationPlan, now: datetime) -> None:
    """Keep ``plan.current_stage`` on the plan's position after a transition.

    A stage is one constant split: start and advance open one (closing the last), pause keeps
    it (resume continues at the same weight), complete closes it, and a rollback closes it and
    opens the run's recovery stage (everything on control), which the engine watches."""
    stage = plan.current_stage
    if stage is not None:
        same_place = (stage.run_id, stage.phase_index, stage.step_index) == (
            plan.current_run_id,
            plan.phase_index,
            plan.step_index,
        )
        keep = same_place and (
            (plan.status in (S.RUNNING, S.PAUSED) and stage.kind != RECOVERY)
            or (plan.status == S.ROLLED_BACK and stage.kind == RECOVERY)
        )
        if not keep:
            PlanStage.objects.filter(pk=stage.pk, ended_at__isnull=True).update(ended_at=now)
            stage = None
    if stage is None and plan.current_run_id is not None:
        cohort = ""
        if plan.status == S.RUNNING:
            # A cohort-first step compares its cohort only, at the cohort's weight.
            here = position(phase_rules(plan), plan.phase_index, plan.step_index)
            kind, weight_bp, shadow_bp = here.phase or "", here.stage_bp, here.shadow_bp
            cohort = here.cohort
        elif plan.status == S.ROLLED_BACK:
            kind, weight_bp, shadow_bp = RECOVERY, 0, 0
        else:
            kind = ""
        if kind:
            stage = PlanStage.objects.create(
                plan=plan,
                run_id=plan.current_run_id,
                phase_index=plan.phase_index,
                step_index=plan.step_index,
                kind=kind,
                weight_bp=weight_bp,
                shadow_bp=shadow_bp,
                cohort=cohort,
                started_at=now,
            )
    if stage != plan.current_stage:
        MigrationPlan.objects.filter(pk=plan.pk).update(current_stage=stage)
        plan.current_stage = stage


def _check_allowed(
    plan: MigrationPlan, action: str, allowed: frozenset[str], expected_version: int | None
) -> None:
    if plan.status not in allowed:
        hint = (
            " A rolled-back plan restarts only as a new run, started by a person."
            if plan.status == S.ROLLED_BACK
            else ""
        )
        raise IllegalTransition(
            f"Cannot {action} plan {plan.key!r}: it is {plan.status}.{hint}",
            details={"status": plan.status, "action": action, "allowed_from": sorted(allowed)},
        )
    if expected_version is not None and plan.version != expected_version:
        raise VersionConflict(
            f"Plan {plan.key!r} is at version {plan.version}, not {expected_version}: it changed since you looked.",
            details={
                "status": plan.status,
                "version": plan.version,
                "expected_version": expected_version,
            },
        )


def plan_start(
    *,
    plan_key: str,
    actor: Actor,
    reason: str = "",
    expected_version: int | None = None,
    acknowledged: Collection[str] | None = None,
) -> MigrationPlan:
    """Start the plan's first run, or a new run after a rollback.

    The start checks (``start_checks``) run inside the transaction: a plan that cannot run is
    refused (``plan_not_startable``), and so is one with a warning not in ``acknowledged``
    (``start_warnings``); ``acknowledged=None`` is for callers that asked no person (scripts,
    tests), whose warnings are only recorded. The audit event's evidence keeps the warnings.
    A person starts any run; an API key only a draft's first one (a rolled-back plan restarts
    by a person's decision); the engine never starts one.
    """
    if actor.kind == ActorKind.ENGINE:
        raise IllegalTransition(
            "Only a person may start a run.", code="person_required", details={"actor": actor.label}
        )
    evidence: dict[str, Any] = {}

    def changes_for(plan: MigrationPlan, now: datetime) -> dict[str, Any]:
        if actor.kind != ActorKind.USER and plan.status == S.ROLLED_BACK:
            raise IllegalTransition(
                "Only a person may restart a rolled-back plan.",
                code="person_required",
                details={"actor": actor.label, "status": plan.status},
            )
        checks = start_checks.start_checks(plan)
        start_checks.require_startable(checks, acknowledged=acknowledged)
        if checks.warnings:
            evidence["start_warnings"] = [w.to_dict() for w in checks.warnings]
            # None: started by a caller that asked no person (a script, a test).
            evidence["acknowledged"] = None if acknowledged is None else checks.warning_codes
        number = (plan.runs.aggregate(m=Max("number"))["m"] or 0) + 1
        try:
            with transaction.atomic():
                run = PlanRun.objects.create(
                    plan=plan, number=number, started_at=now, started_by=actor.label
                )
        except IntegrityError:
            # Another start raced us to this run number: it won, we lose like any CAS loser.
            raise VersionConflict(f"Plan {plan.key!r} was started concurrently.") from None
        return {
            "current_run": run,
            "phase_index": 0,
            "step_index": 0,
            "step_started_at": now,
            "final_status": "",
        }

    return _transition(
        plan_key,
        "start",
        actor=actor,
        reason=reason,
        evidence=evidence,
        expected_version=expected_version,
        changes_for=changes_for,
    )


def plan_advance(
    *,
    plan_key: str,
    actor: Actor,
    reason: str = "",
    evidence: Mapping[str, Any] | None = None,
    expected_version: int | None = None,
) -> MigrationPlan:
    """Move a running plan to its next step (or next phase). At the last step, complete it instead."""

    def changes_for(plan: MigrationPlan, now: datetime) -> dict[str, Any]:
        following = next_position(phase_rules(plan), plan.phase_index, plan.step_index)
        if following is None:
            raise IllegalTransition(
                f"Plan {plan.key!r} is at its last step: complete it instead.",
                code="no_next_step",
                details={"phase_index": plan.phase_index, "step_index": plan.step_index},
            )
        return {"phase_index": following[0], "step_index": following[1], "step_started_at": now}

    return _transition(
        plan_key,
        "advance",
        actor=actor,
        reason=reason,
        evidence=evidence,
        expected_version=expected_version,
        changes_for=changes_for,
    )


def plan_pause(
    *,
    plan_key: str,
    actor: Actor,
    reason: str = "",
    evidence: Mapping[str, Any] | None = None,
    expected_version: int | None = None,
) -> MigrationPlan:
    """Hold a running plan: traffic goes to control until someone resumes it."""
    return _transition(
        plan_key,
        "pause",
        actor=actor,
        reason=reason,
        evidence=evidence,
        expected_version=expected_version,
    )


def plan_resume(
    *, plan_key: str, actor: Actor, reason: str = "", expected_version: int | None = None
) -> MigrationPlan:
    """Resume a paused plan at the step it was paused on; the step's minimum duration restarts."""
    return _transition(
        plan_key,
        "resume",
        actor=actor,
        reason=reason,
        evidence=None,
        expected_version=expected_version,
        changes_for=lambda plan, now: {"step_started_at": now},
    )


def _end_run(status: str) -> Callable[[MigrationPlan, datetime], dict[str, Any]]:
    def changes_for(plan: MigrationPlan, now: datetime) -> dict[str, Any]:
        if plan.current_run_id is not None:
            PlanRun.objects.filter(pk=plan.current_run_id, ended_at__isnull=True).update(
                ended_at=now, end_status=status
            )
        return {"final_status": status}

    return changes_for


def plan_rollback(
    *,
    plan_key: str,
    actor: Actor,
    reason: str,
    evidence: Mapping[str, Any] | None = None,
    expected_version: int | None = None,
) -> MigrationPlan:
    """Send all traffic back to control and end the run. Absorbing: only a new run restarts it."""
    if not reason.strip():
        raise ValidationFailed(
            "A rollback needs a reason.", details={"fields": {"reason": ["Say why."]}}
        )
    return _transition(
        plan_key,
        "rollback",
        actor=actor,
        reason=reason,
        evidence=evidence,
        expected_version=expected_version,
        changes_for=_end_run(S.ROLLED_BACK),
    )


def plan_complete(
    *,
    plan_key: str,
    actor: Actor,
    reason: str = "",
    evidence: Mapping[str, Any] | None = None,
    expected_version: int | None = None,
) -> MigrationPlan:
    """Send all traffic to the candidate and end the run: the migration is done."""
    return _transition(
        plan_key,
        "complete",
        actor=actor,
        reason=reason,
        evidence=evidence,
        expected_version=expected_version,
        changes_for=_end_run(S.COMPLETED),
    )


def plan_archive(
    *, plan_key: str, actor: Actor, reason: str = "", expected_version: int | None = None
) -> MigrationPlan:
    """Retire a finished plan from the lists. It keeps serving its final routing."""

    def changes_for(plan: MigrationPlan, now: datetime) -> dict[str, Any]:
        return {"final_status": plan.final_status or plan.status}

    return _transition(
        plan_key,
        "archive",
        actor=actor,
        reason=reason,
        evidence=None,
        expected_version=expected_version,
        changes_for=changes_for,
    )


def record_edit(
    plan: MigrationPlan,
    *,
    actor: Actor,
    action: str,
    reason: str,
    evidence: Mapping[str, Any] | None = None,
    publish: bool = True,
) -> None:
    """Audit an event that does not move the plan's status: creation and admin edits (the
    snapshot changes with them, so SDKs are told), or the engine's notes on a rolled-back
    run (``publish=False``: recovered, escalated). ``action`` is an ``AuditAction``
    (ValueError otherwise)."""
    _audit(
        plan,
        actor=actor,
        action=action,
        from_status=plan.status,
        reason=reason,
        evidence=evidence,
        publish=publish,
    )


def _audit(
    plan: MigrationPlan,
    *,
    actor: Actor,
    action: str,
    from_status: str,
    reason: str,
    evidence: Mapping[str, Any] | None,
    publish: bool,
) -> None:
    """The audit event of an action on the plan as it is now (its run, its routing stage, its
    version), and the routing change that tells the SDKs when ``publish``."""
    AuditEvent.objects.create(
        plan=plan,
        run=plan.current_run,
        stage=_routing_stage(plan),
        action=AuditAction(action),
        from_status=from_status,
        to_status=plan.status,
        plan_version=plan.version,
        actor_kind=actor.kind,
        actor_user_id=actor.user_id,
        actor_label=actor.label,
        reason=reason,
        evidence=dict(evidence or {}),
    )
    if publish:
        # Recorded in the caller's transaction (not after its commit): a process that dies
        # between the commit and an after-commit hook would leave the change unseen until
        # the next one.
        changes.routing_changed(f"plan {plan.key} v{plan.version}")


# Each lifecycle action's service, for the callers that dispatch on the action's name (the admin).
LIFECYCLE: dict[str, Callable[..., MigrationPlan]] = {
    "start": plan_start,
    "advance": plan_advance,
    "pause": plan_pause,
    "resume": plan_resume,
    "rollback": plan_rollback,
    "complete": plan_complete,
    "archive": plan_archive,
}
