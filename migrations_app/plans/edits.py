"""Plan creation, edits and deletion. Every write is checked by the one plan validation
(``validation.plan_check``), compare-and-set on the plan's version, and audited.

- ``plan_create`` / ``plan_create_from``: a new draft.
- ``plan_apply``: make a plan what a document says (the plans API's POST / PUT / PATCH, and
  ``python -m turnout plan apply``): created if missing, otherwise only what differs is
  written, and a document that changes nothing writes nothing (no version, no audit event).
- ``plan_edit``: the admin's save, writing only the fields its form owns.
- ``plan_delete``: a draft, never a plan that has run.

None moves a plan's status: that is the lifecycle services' alone (lifecycle.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from migrations_app.errors import IllegalTransition, NotFound, ValidationFailed, VersionConflict
from migrations_app.models import (
    Guardrail,
    MetricDefinition,
    MigrationPlan,
    PlanPhase,
    PlanStatus,
)
from migrations_app.plans import holdout
from migrations_app.plans.document import Change, document_changes, plan_document, resolved_document
from migrations_app.plans.lifecycle import Actor, record_edit
from migrations_app.plans.validation import (
    ARM_COLUMNS,
    ARM_FIELDS,
    COLUMNS,
    FROZEN_PATHS,
    STATISTICS_SETTINGS,
    ResolvedPlan,
    path_of,
    plan_check,
)
from migrations_app.routing import changes as routing_changes

log = logging.getLogger("turnout.audit")

# Fields that decide where traffic goes, and the run's statistical settings: frozen while a
# run is live, so its statistics mean something (and the phases and guardrails with them, and
# the holdout, the run's last stage).
FROZEN_FIELDS = ("key", *ARM_COLUMNS, *holdout.FIELDS, *STATISTICS_SETTINGS)


EDITABLE_STATUSES = frozenset({PlanStatus.DRAFT, PlanStatus.ROLLED_BACK})


# What a person may edit on a plan row. Status, version, position, run and stage are not
# here: they move only through the lifecycle services above.
EDITABLE_FIELDS = frozenset(
    {
        *COLUMNS,  # the plan document's (routing fields among them)
        "owner",
        *holdout.FIELDS,  # the holdout after the last step (plans/holdout.py)
    }
)


def plan_edit(
    *, plan: MigrationPlan, fields: Sequence[str], expected_version: int
) -> MigrationPlan:
    """Write ``fields`` of ``plan`` (an instance carrying the edited values) and nothing else,
    compare-and-set on the version the editor loaded, and bump the version: a lifecycle
    action or another edit that landed since makes this one fail with ``VersionConflict``
    instead of being written over. Frozen fields are written only while the plan is a draft
    or rolled back. The caller audits the edit (``record_edit``) once its related rows
    (phases, guardrails, channels) are saved in the same transaction.
    """
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise ValueError(f"not editable on a plan: {sorted(unknown)}")
    now = timezone.now()
    target = MigrationPlan.objects.filter(pk=plan.pk, version=expected_version)
    if set(fields) & set(FROZEN_FIELDS):
        target = target.filter(status__in=EDITABLE_STATUSES)
    values = {name: getattr(plan, name) for name in fields}
    if target.update(version=expected_version + 1, updated_at=now, **values) != 1:
        current = MigrationPlan.objects.filter(pk=plan.pk).values("status", "version").first()
        if current is None:
            raise NotFound(
                f"No plan with key {plan.key!r}.", code="plan_not_found", details={"field": "plan"}
            )
        details = {**current, "expected_version": expected_version}
        if current["version"] != expected_version:
            raise VersionConflict(
                f"Plan {plan.key!r} changed since it was loaded at version {expected_version}; "
                f"it is now {current['status']} at version {current['version']}.",
                details=details,
            )
        held = sorted(path_of(f) for f in set(fields) & set(FROZEN_FIELDS))
        raise frozen(plan.key, current["status"], held, details)
    plan.version, plan.updated_at = expected_version + 1, now
    return plan


def frozen(
    key: str, status: str, paths: Sequence[str], details: Mapping[str, Any]
) -> IllegalTransition:
    """The refusal of a frozen field's change while a run is live, naming each one."""
    return IllegalTransition(
        f"Plan {key!r} is {status}: {', '.join(paths)} cannot change while a run is live "
        "(they decide where traffic goes, or what the run's tests may spend). Roll it back, "
        "or make a new plan.",
        details={
            **details,
            "fields": {p: [f"Frozen while the plan is {status}."] for p in paths},
        },
    )


def _checked(values: Mapping[str, Any], plan: MigrationPlan | None = None) -> ResolvedPlan:
    check = plan_check(values, plan=plan)
    if check.plan is None:
        raise ValidationFailed("The plan is not valid.", details={"fields": check.errors})
    return check.plan


def _write_rows(
    plan: MigrationPlan,
    resolved: ResolvedPlan,
    *,
    phases: bool,
    guardrails: bool,
    metrics: bool = False,
) -> None:
    if phases:
        plan.phases.all().delete()
        PlanPhase.objects.bulk_create(
            PlanPhase(plan=plan, order=order, **{**row, "steps": list(row["steps"] or [])})
            for order, row in enumerate(resolved.phases)
        )
    if metrics and resolved.metrics is not None:
        plan.metric_definitions.all().delete()
        MetricDefinition.objects.bulk_create(
            MetricDefinition(plan=plan, **row) for row in resolved.metrics
        )
    if guardrails:
        plan.guardrails.all().delete()
        Guardrail.objects.bulk_create(Guardrail(plan=plan, **row) for row in resolved.guardrails)


def _create(resolved: ResolvedPlan, *, owner: Any, actor: Actor) -> MigrationPlan:
    with transaction.atomic():
        plan = MigrationPlan(**resolved.columns, owner=owner)
        plan.save()
        _write_rows(plan, resolved, phases=True, guardrails=True, metrics=True)
        plan.alert_channels.set(resolved.alert_channels)
        record_edit(plan, actor=actor, action="create", reason="")
    return plan


def plan_create_from(
    values: Mapping[str, Any], *, owner: Any = None, actor: Actor
) -> MigrationPlan:
    """Create a draft from a plan's values (``validation.plan_check`` says what they hold)."""
    return _create(_checked(values), owner=owner, actor=actor)


def plan_create(
    *,
    key: str,
    name: str,
    control: Mapping[str, Any],
    candidate: Mapping[str, Any],
    phases: Sequence[Mapping[str, Any]] | None = None,
    guardrails: Sequence[Mapping[str, Any]] | None = None,
    description: str = "",
    owner: Any = None,
    actor: Actor,
    **settings: Any,
) -> MigrationPlan:
    """Create a draft plan, validated as the admin validates it. Arms are dicts: model
    ("provider:model_id", a pk or a ModelSpec), params, prompt_mode, prompt_text. Phases
    default to the standard playbook (or ``template``'s), guardrails to the default set;
    ``settings``: other columns by name, ``alert_channels``, ``template``, ``guardrail_set``.
    """
    values: dict[str, Any] = {
        "key": key,
        "name": name,
        "description": description,
        "phases": phases,
        "guardrails": guardrails,
        **settings,
    }
    for arm, given in (("control", control), ("candidate", candidate)):
        values.update({f"{arm}_{f}": given[f] for f in ARM_FIELDS if f in given})
    return plan_create_from(values, owner=owner, actor=actor)


@dataclass
class Applied:
    """What ``plan_apply`` did: the plan (None for a dry run that would create it), whether it
    was (or would be) created, and every change in document paths (empty: nothing to do)."""

    plan: MigrationPlan | None
    created: bool
    changes: list[Change] = field(default_factory=list)


def _changed_columns(changes: Sequence[Change]) -> list[str]:
    paths = [c.path for c in changes]
    return [
        column
        for column in COLUMNS
        if any(
            p == path_of(column) or p.startswith((f"{path_of(column)}.", f"{path_of(column)}["))
            for p in paths
        )
    ]


def _touches(changes: Sequence[Change], head: str) -> bool:
    return any(c.path == head or c.path.startswith((f"{head}.", f"{head}[")) for c in changes)


def plan_apply(
    *,
    key: str,
    values: Mapping[str, Any],
    actor: Actor,
    expected_version: int | None = None,
    dry_run: bool = False,
    owner: Any = None,
) -> Applied:
    """Make plan ``key`` what ``values`` say (a whole plan: what is left out takes its
    default). Creates it when there is none. Otherwise compares the stored plan with the
    checked one and writes only the difference, compare-and-set on the version (on
    ``expected_version`` when given: ``VersionConflict`` names the current one), with one
    audit event listing the changed paths. Frozen paths (``FROZEN_PATHS``) may change only
    while the plan is a draft or rolled back (``IllegalTransition`` naming them). Nothing
    written for a dry run, nor when nothing differs."""
    if values.get("key", key) != key:
        raise ValidationFailed(
            "The plan is not valid.",
            details={"fields": {"key": [f"The document's key must be the plan's, {key!r}."]}},
        )
    values = {**values, "key": key}
    with transaction.atomic():
        plan = MigrationPlan.objects.select_for_update(of=("self",)).filter(key=key).first()
        if plan is None:
            if expected_version is not None:
                raise NotFound(
                    f"No plan with key {key!r}.", code="plan_not_found", details={"field": "plan"}
                )
            resolved = _checked(values)
            after = resolved_document(resolved)
            created = None if dry_run else _create(resolved, owner=owner, actor=actor)
            return Applied(created, True, document_changes({}, after))
        current = _as_loaded(plan, expected_version)
        resolved = _checked(values, plan)
        found = document_changes(plan_document(plan), resolved_document(resolved))
        if not found:
            return Applied(plan, False, [])
        if plan.status not in EDITABLE_STATUSES:
            held = sorted(
                {c.path for c in found if c.path.split(".")[0].split("[")[0] in FROZEN_PATHS}
            )
            if held:
                raise frozen(key, plan.status, held, current)
        if dry_run:
            return Applied(plan, False, found)
        columns = _changed_columns(found)
        for column in columns:
            setattr(plan, column, resolved.columns[column])
        plan_edit(plan=plan, fields=columns, expected_version=plan.version)
        _write_rows(
            plan,
            resolved,
            phases=_touches(found, "phases"),
            guardrails=_touches(found, "guardrails"),
            metrics=_touches(found, "metrics"),
        )
        if _touches(found, "alert_channels"):
            plan.alert_channels.set(resolved.alert_channels)
        record_edit(
            plan,
            actor=actor,
            action="edit",
            reason="",
            evidence={"changed": [c.path for c in found]},
        )
    return Applied(plan, False, found)


def _as_loaded(plan: MigrationPlan, expected_version: int | None) -> dict[str, Any]:
    """The plan's status and version, after checking it is still at the version the caller
    loaded (``VersionConflict`` otherwise; any version when none is given)."""
    current = {"status": plan.status, "version": plan.version}
    if expected_version is not None and expected_version != plan.version:
        raise VersionConflict(
            f"Plan {plan.key!r} changed since it was loaded at version {expected_version}; it "
            f"is now {plan.status} at version {plan.version}.",
            details={**current, "expected_version": expected_version},
        )
    return current


def plan_delete(*, key: str, actor: Actor, expected_version: int | None = None) -> None:
    """Delete a draft (a plan that never ran: no outcomes, no runs). Any other status is an
    ``IllegalTransition``: a plan that has run is archived, so its trail is kept. The draft's
    own audit trail goes with it; the deletion is logged (``turnout.audit``) with its actor."""
    with transaction.atomic():
        plan = MigrationPlan.objects.select_for_update(of=("self",)).filter(key=key).first()
        if plan is None:
            raise NotFound(
                f"No plan with key {key!r}.", code="plan_not_found", details={"field": "plan"}
            )
        current = _as_loaded(plan, expected_version)
        if plan.status != PlanStatus.DRAFT or plan.runs.exists():
            raise IllegalTransition(
                f"Plan {key!r} is {plan.status}: only a draft can be deleted. Archive it instead.",
                details=current,
            )
        plan.delete()
        routing_changes.routing_changed(f"plan {key} deleted")
    log.info("plan %s deleted by %s (%s)", key, actor.label, actor.kind)
