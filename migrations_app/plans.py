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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from migrations_app import changes
from migrations_app.errors import IllegalTransition, NotFound, ValidationFailed, VersionConflict
from migrations_app.models import (
    ActorKind,
    AuditEvent,
    Guardrail,
    MigrationPlan,
    ModelSpec,
    PlanPhase,
    PlanRun,
    PlanStage,
    PlanStatus,
)
from migrations_app.phases import (
    STANDARD_GUARDRAILS,
    STANDARD_PLAYBOOK,
    Errors,
    next_position,
    position,
    validate_arms,
    validate_guardrail,
    validate_phase,
)
from migrations_app.selectors import phase_rules


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


def _get(plan_key: str) -> MigrationPlan:
    try:
        return MigrationPlan.objects.get(key=plan_key)
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
        plan = _get(plan_key)
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
        routing_stage = _sync_stage(plan, now)
        AuditEvent.objects.create(
            plan=plan,
            run=plan.current_run,
            stage=routing_stage,
            action=action,
            from_status=from_status,
            to_status=plan.status,
            plan_version=plan.version,
            actor_kind=actor.kind,
            actor_user_id=actor.user_id,
            actor_label=actor.label,
            reason=reason,
            evidence=dict(evidence or {}),
        )
        transaction.on_commit(lambda: changes.publish_routing_change(plan.key, plan.version))
    return plan


RECOVERY = "recovery"


def _routing_stage(plan: MigrationPlan) -> PlanStage | None:
    """The stage outcomes at the plan's current version belong to: the split while running,
    the recovery stage after a rollback, none otherwise (draft, paused, completed)."""
    stage = plan.current_stage
    if stage is None:
        return None
    if plan.status == S.RUNNING or (plan.status == S.ROLLED_BACK and stage.kind == RECOVERY):
        return stage
    return None


def _sync_stage(plan: MigrationPlan, now: datetime) -> PlanStage | None:
    """Keep ``plan.current_stage`` on the plan's position after a transition; return the
    routing stage at the new version (:func:`_routing_stage`).

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
        if plan.status == S.RUNNING:
            here = position(phase_rules(plan), plan.phase_index, plan.step_index)
            kind, weight_bp, shadow_bp = here.phase or "", here.weight_bp, here.shadow_bp
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
                started_at=now,
            )
    if stage != plan.current_stage:
        MigrationPlan.objects.filter(pk=plan.pk).update(current_stage=stage)
        plan.current_stage = stage
    return _routing_stage(plan)


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
    *, plan_key: str, actor: Actor, reason: str = "", expected_version: int | None = None
) -> MigrationPlan:
    """Start the plan's first run, or a new run after a rollback. Only a person may start a run."""
    if actor.kind != ActorKind.USER:
        raise IllegalTransition(
            "Only a person may start a run.", code="person_required", details={"actor": actor.label}
        )

    def changes_for(plan: MigrationPlan, now: datetime) -> dict[str, Any]:
        if not plan.phases.exists():
            raise ValidationFailed(
                "The plan has no phases.",
                details={"fields": {"phases": ["Add at least one phase."]}},
            )
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
        evidence=None,
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


# --- creation -------------------------------------------------------------------


def _arm_dict(arm: Mapping[str, Any], model: ModelSpec | None) -> dict[str, Any]:
    return {
        "model": model.pk if model else None,
        "params": arm.get("params", {}),
        "prompt_mode": arm.get("prompt_mode", "none"),
        "prompt_text": arm.get("prompt_text", ""),
    }


def _resolve_model(ref: Any, field: str, errors: Errors) -> ModelSpec | None:
    """A model reference: a ModelSpec, its pk, or "provider:model_id"."""
    if isinstance(ref, ModelSpec):
        return ref
    query = ModelSpec.objects.select_related("provider")
    try:
        if isinstance(ref, int):
            return query.get(pk=ref)
        if isinstance(ref, str) and ":" in ref:
            provider, model_id = ref.split(":", 1)
            return query.get(provider__name=provider, model_id=model_id)
    except ModelSpec.DoesNotExist:
        pass
    errors.setdefault(field, []).append(f"{ref!r} is not in the model catalog.")
    return None


def plan_create(
    *,
    key: str,
    name: str,
    control: Mapping[str, Any],
    candidate: Mapping[str, Any],
    phases: Sequence[Mapping[str, Any]] | None = None,
    guardrails: Sequence[Mapping[str, Any]] | None = None,
    description: str = "",
    alpha: float = 0.05,
    owner: Any = None,
    actor: Actor,
) -> MigrationPlan:
    """Create a draft plan, validated as the admin validates it. Phases and guardrails default
    to the standard playbook. Arms are dicts: model ("provider:model_id" or a pk), params,
    prompt_mode, prompt_text.
    """
    errors: Errors = {}
    control_model = _resolve_model(control.get("model"), "control_model", errors)
    candidate_model = _resolve_model(candidate.get("model"), "candidate_model", errors)
    if not errors:
        errors.update(
            validate_arms(
                control=_arm_dict(control, control_model),
                candidate=_arm_dict(candidate, candidate_model),
                control_max_output=control_model.max_output_tokens if control_model else None,
                candidate_max_output=candidate_model.max_output_tokens if candidate_model else None,
            )
        )
    phase_list = [dict(p) for p in (STANDARD_PLAYBOOK if phases is None else phases)]
    guardrail_list = [dict(g) for g in (STANDARD_GUARDRAILS if guardrails is None else guardrails)]
    if not phase_list:
        errors.setdefault("phases", []).append("Add at least one phase.")
    for i, phase in enumerate(phase_list):
        phase.setdefault("min_duration_minutes", 30)
        phase.setdefault("min_samples", 1000)
        for field, messages in validate_phase(phase).items():
            errors.setdefault(f"phases[{i}].{field}", []).extend(messages)
    metrics_seen: set[str] = set()
    for i, guardrail in enumerate(guardrail_list):
        for field, messages in validate_guardrail(guardrail).items():
            errors.setdefault(f"guardrails[{i}].{field}", []).extend(messages)
        if guardrail.get("metric") in metrics_seen:
            errors.setdefault(f"guardrails[{i}].metric", []).append("One guardrail per metric.")
        metrics_seen.add(str(guardrail.get("metric")))
    if not (isinstance(alpha, int | float) and 0.001 <= alpha <= 0.2):
        errors.setdefault("alpha", []).append(
            "Alpha is a probability from 0.001 to 0.2, e.g. 0.05."
        )
    if MigrationPlan.objects.filter(key=key).exists():
        errors.setdefault("key", []).append(f"A plan with key {key!r} exists.")
    plan = MigrationPlan(
        key=key,
        name=name,
        description=description,
        owner=owner,
        control_model=control_model,
        control_params=dict(control.get("params", {})),
        control_prompt_mode=control.get("prompt_mode", "none"),
        control_prompt_text=control.get("prompt_text", ""),
        candidate_model=candidate_model,
        candidate_params=dict(candidate.get("params", {})),
        candidate_prompt_mode=candidate.get("prompt_mode", "none"),
        candidate_prompt_text=candidate.get("prompt_text", ""),
        alpha=alpha,
    )
    if not errors:
        try:
            plan.full_clean(exclude=["control_model", "candidate_model", "owner", "current_run"])
        except Exception as exc:  # django ValidationError
            for field, messages in getattr(exc, "message_dict", {"__all__": [str(exc)]}).items():
                errors.setdefault(field, []).extend(messages)
    if errors:
        raise ValidationFailed("The plan is not valid.", details={"fields": errors})
    with transaction.atomic():
        plan.save()
        for order, phase in enumerate(phase_list):
            PlanPhase.objects.create(
                plan=plan,
                order=order,
                kind=phase["kind"],
                percent=phase.get("percent"),
                steps=list(phase.get("steps") or []),
                min_duration_minutes=phase["min_duration_minutes"],
                min_samples=phase["min_samples"],
                auto_advance=phase.get("auto_advance", True),
            )
        for guardrail in guardrail_list:
            Guardrail.objects.create(
                plan=plan,
                metric=guardrail["metric"],
                tolerance_kind=guardrail["tolerance_kind"],
                tolerance=guardrail["tolerance"],
                action=guardrail.get("action", "rollback"),
                min_samples=guardrail.get("min_samples", 0),
            )
        record_edit(plan, actor=actor, action="create", reason="")
    return plan


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
    run (``publish=False``: recovered, escalated)."""
    AuditEvent.objects.create(
        plan=plan,
        run=plan.current_run,
        stage=_routing_stage(plan),
        action=action,
        from_status=plan.status,
        to_status=plan.status,
        plan_version=plan.version,
        actor_kind=actor.kind,
        actor_user_id=actor.user_id,
        actor_label=actor.label,
        reason=reason,
        evidence=dict(evidence or {}),
    )
    if publish:
        transaction.on_commit(lambda: changes.publish_routing_change(plan.key, plan.version))


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
