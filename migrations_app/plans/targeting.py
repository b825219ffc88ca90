"""A plan's targeting: its ordered rules and its QA overrides (docs/contracts.md, "Targeting").

Every write checks its input with the SDK's own ``turnout.targeting`` (what is stored is what
every SDK can evaluate), bumps the plan's version under its row lock, audits the change and
records a routing change in the same transaction, so every SDK has it within a second. Rules
and overrides may change while a plan runs: a rule moves only the units it holds for, an
override only its unit (the bucketing never reads them), so the running stage's statistics
keep their meaning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone
from turnout import targeting
from turnout.contract import MAX_OVERRIDE_DAYS, MAX_OVERRIDES, MAX_UNIT_LENGTH

from migrations_app.errors import NotFound, ValidationFailed, VersionConflict
from migrations_app.models import (
    AuditAction,
    MigrationPlan,
    OverrideArm,
    TargetingRule,
    UnitOverride,
)
from migrations_app.plans.json_checks import unstorable
from migrations_app.plans.lifecycle import Actor, record_edit
from migrations_app.routing.snapshots import rule_entry


def rule_errors(rules: Sequence[Any]) -> dict[str, list[str]]:
    """Each rule that cannot be evaluated, by field (``rules[2].when.0.op``), with a message
    naming the rule; empty when every rule is fine."""
    errors: dict[str, list[str]] = {}
    for problem in targeting.rule_problems(list(rules)):
        where = "rules" if problem.index is None else f"rules[{problem.index}].{problem.field}"
        errors.setdefault(where, []).append(problem.message)
    return errors


def cohort_errors(rules: Sequence[Any], step_cohorts: Sequence[str]) -> list[str]:
    """Cohorts a rollout step targets that no cohort rule assigns: such a step would wait for
    samples no unit can ever bring."""
    assigned = {
        r.get("cohort") for r in rules if isinstance(r, Mapping) and r.get("then") == "cohort"
    }
    return [
        f"A rollout step targets cohort {name!r}, which no rule assigns: add a cohort rule "
        f"for it or remove the step."
        for name in dict.fromkeys(step_cohorts)
        if name not in assigned
    ]


def _locked(plan_key: str, expected_version: int | None) -> MigrationPlan:
    try:
        plan = MigrationPlan.objects.select_for_update().get(key=plan_key)
    except MigrationPlan.DoesNotExist:
        raise NotFound(
            f"No plan with key {plan_key!r}.", code="plan_not_found", details={"field": "plan"}
        ) from None
    if expected_version is not None and plan.version != expected_version:
        raise VersionConflict(
            f"Plan {plan.key!r} is at version {plan.version}, not {expected_version}: it "
            "changed since you looked.",
            details={"version": plan.version, "expected_version": expected_version},
        )
    return plan


def _bump(plan: MigrationPlan, now: datetime) -> None:
    # Under the row lock (select_for_update above): no other writer moves the version between.
    MigrationPlan.objects.filter(pk=plan.pk).update(version=plan.version + 1, updated_at=now)
    plan.version += 1


def rules_replace(
    *,
    plan_key: str,
    rules: Sequence[Mapping[str, Any]],
    actor: Actor,
    reason: str = "",
    expected_version: int | None = None,
) -> MigrationPlan:
    """Make the plan's rules ``rules`` (in order). Refused whole, naming each rule that cannot
    be evaluated (``validation_failed``, ``details.fields``), with nothing written."""
    errors = rule_errors(rules)
    if errors:
        raise ValidationFailed("Some rules cannot be evaluated.", details={"fields": errors})
    now = timezone.now()
    with transaction.atomic():
        plan = _locked(plan_key, expected_version)
        TargetingRule.objects.filter(plan=plan).delete()
        TargetingRule.objects.bulk_create(
            TargetingRule(
                plan=plan,
                order=index,
                name=rule.get("name") or "",
                conditions=list(rule.get("when") or []),
                result=rule["then"],
                cohort=rule.get("cohort") or "",
            )
            for index, rule in enumerate(rules)
        )
        _bump(plan, now)
        record_edit(
            plan,
            actor=actor,
            action=AuditAction.TARGETING,
            reason=reason,
            evidence={"rules": [dict(rule) for rule in rules]},
        )
    return plan


def rule_add(
    *,
    plan_key: str,
    rule: Mapping[str, Any],
    actor: Actor,
    reason: str,
    position: int = 0,
) -> MigrationPlan:
    """Insert one rule at ``position`` (0: first, read before every other), e.g. the engine
    excluding a regressed segment. The units it holds for move; no other unit does."""
    with transaction.atomic():
        plan = _locked(plan_key, None)
        current = [rule_entry(r) for r in plan.targeting_rules.all()]
        current.insert(max(0, min(position, len(current))), dict(rule))
        return rules_replace(plan_key=plan_key, rules=current, actor=actor, reason=reason)


def override_errors(*, unit: Any, arm: Any, expires_at: Any, now: datetime) -> dict[str, list[str]]:
    """What is wrong with an override, by field; empty when nothing is."""
    errors: dict[str, list[str]] = {}
    if not isinstance(unit, str) or not unit or len(unit) > MAX_UNIT_LENGTH:
        errors["unit"] = [f"A unit id of 1 to {MAX_UNIT_LENGTH} characters."]
    elif unstorable(unit):
        errors["unit"] = ["A unit id without NUL or lone surrogate characters."]
    if arm not in OverrideArm.values:
        errors["arm"] = ["control or candidate."]
    if not isinstance(expires_at, datetime):
        errors["expires_at"] = ["When the override ends."]
    elif expires_at <= now:
        errors["expires_at"] = ["An override ends in the future."]
    elif expires_at > now + timedelta(days=MAX_OVERRIDE_DAYS):
        errors["expires_at"] = [
            f"At most {MAX_OVERRIDE_DAYS} days ahead: an override is for testing, not a rule."
        ]
    return errors


def override_set(
    *,
    plan_key: str,
    unit: str,
    arm: str,
    expires_at: datetime,
    actor: Actor,
    reason: str = "",
) -> UnitOverride:
    """Send ``unit`` to ``arm`` while the plan runs, until ``expires_at`` (replacing the unit's
    override if it has one). Its outcomes are stored, counted in neither arm."""
    now = timezone.now()
    errors = override_errors(unit=unit, arm=arm, expires_at=expires_at, now=now)
    if errors:
        raise ValidationFailed("The override is not valid.", details={"fields": errors})
    with transaction.atomic():
        plan = _locked(plan_key, None)
        # Expired overrides are gone from every snapshot already; dropping them here keeps the
        # cap about the live ones.
        UnitOverride.objects.filter(plan=plan, expires_at__lte=now).delete()
        live = UnitOverride.objects.filter(plan=plan).exclude(unit=unit).count()
        if live >= MAX_OVERRIDES:
            raise ValidationFailed(
                f"Plan {plan.key!r} has {live} overrides, the most a plan may have: every SDK "
                "holds them. Remove some, or target a cohort with a rule instead.",
                details={"fields": {"unit": [f"At most {MAX_OVERRIDES} overrides per plan."]}},
            )
        override, _ = UnitOverride.objects.update_or_create(
            plan=plan,
            unit=unit,
            defaults={
                "arm": arm,
                "expires_at": expires_at,
                "reason": reason[:200],
                "created_by": actor.label,
            },
        )
        _bump(plan, now)
        record_edit(
            plan,
            actor=actor,
            action=AuditAction.OVERRIDE,
            reason=reason,
            evidence={"unit": unit, "arm": arm, "expires_at": expires_at.isoformat()},
        )
    return override


def override_remove(*, plan_key: str, unit: str, actor: Actor, reason: str = "") -> bool:
    """End ``unit``'s override now; False when it had none."""
    now = timezone.now()
    with transaction.atomic():
        plan = _locked(plan_key, None)
        deleted, _ = UnitOverride.objects.filter(plan=plan, unit=unit).delete()
        if not deleted:
            return False
        _bump(plan, now)
        record_edit(
            plan,
            actor=actor,
            action=AuditAction.OVERRIDE,
            reason=reason,
            evidence={"unit": unit, "removed": True},
        )
    return True
