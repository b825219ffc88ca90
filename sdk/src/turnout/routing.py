"""The routing decision: which model a unit (a user, a session) gets for a plan.

Pure: no I/O, no clock, no randomness. The SDK evaluates it locally on a cached snapshot and
the server imports this same module for ``/api/v1/decide`` and OFREP, so the algorithm exists
once (``sdk/conformance/routing-v1.json`` pins it; changing a vector breaks stickiness for
every user and must not ship).

- bucket(unit) = murmur3_32(f"{salt}:{unit}") % 10000; the candidate when bucket < weight_bp.
  Raising the weight only moves units from control to candidate, never back.
- Shadow sampling hashes ``f"{salt}:shadow:{unit}"``: independent of the split.
- Targeting (``turnout.targeting``): a QA override sends its unit to an arm (reason
  ``OVERRIDE``); otherwise the first rule the decision's attributes satisfy excludes the unit
  (control, ``EXCLUDED``), includes it in the general split, or puts it in a cohort, split at
  the cohort's own weight with the same bucket. A unit's bucket never depends on its
  attributes, so a rule added for others, or another cohort's weight, never moves it.

Everything a decision needs is parsed and validated once, when a snapshot arrives, into
immutable objects (:mod:`turnout.snapshot`, whose names this module re-exports);
:func:`decide` then does one hash (two when shadowing) and builds one :class:`Decision`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

import mmh3

from turnout import targeting
from turnout.contract import REASON_ERROR, REASON_EXCLUDED, REASON_OVERRIDE
from turnout.snapshot import (  # the snapshot's objects and parsing, re-exported
    _EMPTY,
    BASIS_POINTS,
    CANDIDATE,
    CONTROL,
    EMPTY_SNAPSHOT,
    NO_PROMPT,
    PROMPT_MODES,
    STATUSES,
    ArmSpec,
    Override,
    PlanSnapshot,
    Prompt,
    Snapshot,
    freeze,
    parse_arm,
    parse_plan,
    parse_snapshot,
    thaw,
)

__all__ = [
    "ArmSpec",
    "BASIS_POINTS",
    "CANDIDATE",
    "CONTROL",
    "Decision",
    "EMPTY_SNAPSHOT",
    "NO_PROMPT",
    "Override",
    "PROMPT_MODES",
    "PlanSnapshot",
    "Prompt",
    "STATUSES",
    "Snapshot",
    "bucket",
    "decide",
    "freeze",
    "judge_bucket",
    "parse_arm",
    "parse_plan",
    "parse_snapshot",
    "shadow_bucket",
    "thaw",
    "with_segments",
]

_hash = mmh3.hash
# Keys are hashed as UTF-8 bytes, encoded here: mmh3 (5.3.1) encodes a str itself and
# segfaults on a lone surrogate ("\ud800", which JSON parsers and str() let through), which
# would take the host process down. For every other string the bytes are those mmh3 hashed,
# so no bucket moves (the conformance vectors pin it); a lone surrogate gets a stable bucket.
_UTF8, _LONE = "utf-8", "surrogatepass"


def bucket(salt: str, unit: str) -> int:
    """The unit's sticky bucket in [0, 10000) for the split."""
    return int(_hash(f"{salt}:{unit}".encode(_UTF8, _LONE), 0, False)) % BASIS_POINTS


def shadow_bucket(salt: str, unit: str) -> int:
    """The unit's bucket for shadow sampling, independent of :func:`bucket`."""
    return int(_hash(f"{salt}:shadow:{unit}".encode(_UTF8, _LONE), 0, False)) % BASIS_POINTS


def judge_bucket(salt: str, decision_id: str) -> int:
    """A request's bucket for the pointwise judge's sample: by decision, not by unit (the
    judge scores a share of each arm's answers, every user's), independent of the split."""
    return int(_hash(f"{salt}:judge:{decision_id}".encode(_UTF8, _LONE), 0, False)) % BASIS_POINTS


@dataclass(frozen=True, slots=True)
class Decision:
    """Which model to call for this request, and everything needed to report on it.

    ``spec`` is the arm to call (``None`` only for an unknown plan without a ``default``);
    ``provider``, ``model``, ``params`` and ``prompt`` are its fields, copied for convenience.
    ``fallback`` is the control arm, to retry on when the candidate fails. When ``shadow`` is
    true the application may also send the request to ``shadow_spec`` (the candidate) and
    must show the user only the control's answer.

    ``reason`` is ``SPLIT``, ``STATIC``, ``DISABLED``, ``DEFAULT``, ``EXCLUDED``, ``OVERRIDE``
    or ``ERROR``; the last three are served but counted in neither arm's statistics (the
    report says so). ``cohort`` is the cohort a rule put the unit in (split at its weight), or
    ``None``.
    """

    plan: str
    unit: str
    arm: str
    provider: str | None
    model: str | None
    params: Mapping[str, Any]
    prompt: Prompt
    spec: ArmSpec | None
    fallback: ArmSpec | None
    shadow: bool
    shadow_spec: ArmSpec | None
    plan_version: int
    run: int
    phase: str | None
    reason: str
    decision_id: str
    cohort: str | None = None
    #: The unit's segment values ({dimension: value}) when the plan declares segment
    #: dimensions and the attributes have them: its outcome carries them.
    segments: Mapping[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the body of ``/api/v1/decide`` and the OFREP object value."""
        spec = self.spec
        return {
            "plan": self.plan,
            "unit": self.unit,
            "arm": self.arm,
            "provider": self.provider,
            "kind": spec.kind if spec else None,
            "base_url": spec.base_url if spec else None,
            "api_key_env": spec.api_key_env if spec else None,
            "model": self.model,
            "params": thaw(self.params),
            "prompt": self.prompt.to_dict(),
            "shadow": self.shadow,
            "shadow_model": self.shadow_spec.model if self.shadow_spec else None,
            "shadow_spec": self.shadow_spec.to_dict() if self.shadow_spec else None,
            "fallback": self.fallback.to_dict() if self.fallback else None,
            "plan_version": self.plan_version,
            "run": self.run,
            "phase": self.phase,
            "reason": self.reason,
            "decision_id": self.decision_id,
            "cohort": self.cohort,
        }


# Decisions are built field by field through the slot descriptors rather than through the
# dataclass __init__: a frozen dataclass's __init__ goes through object.__setattr__ once per
# field, which costs more than the whole rest of decide(). The result is the same immutable
# object (equal to one made with Decision(...), and assignment still raises).
_new = object.__new__
(
    _s_plan, _s_unit, _s_arm, _s_provider, _s_model, _s_params, _s_prompt, _s_spec,
    _s_fallback, _s_shadow, _s_shadow_spec, _s_plan_version, _s_run, _s_phase, _s_reason,
    _s_decision_id, _s_cohort, _s_segments,
) = (getattr(Decision, f.name).__set__ for f in fields(Decision))  # fmt: skip


def _build(
    plan: PlanSnapshot,
    unit: str,
    arm: str,
    spec: ArmSpec,
    shadow: bool,
    reason: str,
    decision_id: str,
    cohort: str | None = None,
) -> Decision:
    d = _new(Decision)
    _s_plan(d, plan.key)
    _s_unit(d, unit)
    _s_arm(d, arm)
    _s_provider(d, spec.provider)
    _s_model(d, spec.model)
    _s_params(d, spec.params)
    _s_prompt(d, spec.prompt)
    _s_spec(d, spec)
    _s_fallback(d, plan.control)
    _s_shadow(d, shadow)
    _s_shadow_spec(d, plan.candidate if shadow else None)
    _s_plan_version(d, plan.version)
    _s_run(d, plan.run)
    _s_phase(d, plan.phase)
    _s_reason(d, reason)
    _s_decision_id(d, decision_id)
    _s_cohort(d, cohort)
    _s_segments(d, None)
    return d


def with_segments(decision: Decision, plan: PlanSnapshot, attributes: Any) -> Decision:
    """``decision`` carrying the unit's segment values under ``plan``'s segment dimensions
    (``targeting.segment_values``), set once, right after it is made."""
    found = targeting.segment_values(plan.segments, attributes)
    if found:
        _s_segments(decision, MappingProxyType(found))
    return decision


def decide(
    plan: PlanSnapshot | None,
    unit: str,
    *,
    decision_id: str,
    default: ArmSpec | None = None,
    attributes: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> Decision:
    """The decision for ``unit`` under ``plan`` (the rules per status are in docs/contracts.md).

    ``plan`` is ``None`` for a plan the snapshot does not hold: the caller's ``default`` arm
    (or none), reason ``DEFAULT``. ``attributes`` (JSON scalars by name) are what targeting
    rules read; more than :data:`~turnout.contract.MAX_ATTRIBUTES` of them, or something
    that is not a mapping, count as none. ``now`` (Unix seconds) is the time QA overrides
    expire against; without it no override applies.
    """
    if plan is None:
        if default is None:
            return Decision(
                "", unit, CONTROL, None, None, _EMPTY, NO_PROMPT, None, None, False, None,
                0, 0, None, "DEFAULT", decision_id,
            )  # fmt: skip
        return Decision(
            "", unit, CONTROL, default.provider, default.model, default.params, default.prompt,
            default, default, False, None, 0, 0, None, "DEFAULT", decision_id,
        )  # fmt: skip
    status = plan.status
    if status == "running":
        weight = plan.weight_bp
        cohort = None
        if plan.targeted:
            if plan.unreadable:
                return _build(plan, unit, CONTROL, plan.control, False, REASON_ERROR, decision_id)
            if now is not None:
                override = plan.overrides.get(unit)
                if override is not None and now < override.expires:
                    arm = override.arm
                    spec = plan.candidate if arm == CANDIDATE else plan.control
                    return _build(plan, unit, arm, spec, False, REASON_OVERRIDE, decision_id)
            if plan.rules:
                rule = targeting.match(plan.rules, attributes)
                if rule is not None:
                    if rule.result == targeting.EXCLUDE:
                        return _build(
                            plan, unit, CONTROL, plan.control, False, REASON_EXCLUDED, decision_id
                        )
                    if rule.result == targeting.COHORT:
                        cohort = rule.cohort
                        weight = plan.cohorts.get(cohort, weight)
        salt = plan.salt
        if int(_hash(f"{salt}:{unit}".encode(_UTF8, _LONE), 0, False)) % BASIS_POINTS < weight:
            return _build(
                plan, unit, CANDIDATE, plan.candidate, False, "SPLIT", decision_id, cohort
            )
        shadow = (
            plan.shadow_bp > 0
            and int(_hash(f"{salt}:shadow:{unit}".encode(_UTF8, _LONE), 0, False)) % BASIS_POINTS
            < plan.shadow_bp
        )
        return _build(plan, unit, CONTROL, plan.control, shadow, "SPLIT", decision_id, cohort)
    if status == "completed":
        if plan.targeted:
            # Done migrating, but an excluded unit (a tenant under contract) stays on control.
            if plan.unreadable:
                return _build(plan, unit, CONTROL, plan.control, False, REASON_ERROR, decision_id)
            rule = targeting.match(plan.rules, attributes)
            if rule is not None and rule.result == targeting.EXCLUDE:
                return _build(
                    plan, unit, CONTROL, plan.control, False, REASON_EXCLUDED, decision_id
                )
        return _build(plan, unit, CANDIDATE, plan.candidate, False, "STATIC", decision_id)
    # paused, rolled_back, draft
    return _build(plan, unit, CONTROL, plan.control, False, "DISABLED", decision_id)
