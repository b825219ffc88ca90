"""The routing decision: which model a unit (a user, a session) gets for a plan.

Pure: no I/O, no clock, no randomness. The SDK evaluates it locally on a cached snapshot and
the server imports this same module for ``/api/v1/decide`` and OFREP, so the algorithm exists
once (``sdk/conformance/routing-v1.json`` pins it; changing a vector breaks stickiness for
every user and must not ship).

- bucket(unit) = murmur3_32(f"{salt}:{unit}") % 10000; the candidate when bucket < weight_bp.
  Raising the weight only moves units from control to candidate, never back.
- Shadow sampling hashes ``f"{salt}:shadow:{unit}"``: independent of the split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import mmh3

from turnout.errors import SnapshotError

BASIS_POINTS = 10_000
STATUSES = frozenset({"running", "paused", "rolled_back", "completed", "draft"})
PROMPT_MODES = frozenset({"none", "override", "suffix"})
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def bucket(salt: str, unit: str) -> int:
    """The unit's sticky bucket in [0, 10000) for the split."""
    return int(mmh3.hash(f"{salt}:{unit}", 0, False)) % BASIS_POINTS


def shadow_bucket(salt: str, unit: str) -> int:
    """The unit's bucket for shadow sampling, independent of :func:`bucket`."""
    return int(mmh3.hash(f"{salt}:shadow:{unit}", 0, False)) % BASIS_POINTS


@dataclass(frozen=True, slots=True)
class Prompt:
    """How an arm adjusts the system prompt: ``none``, ``override`` (replace) or ``suffix`` (append)."""

    mode: str = "none"
    text: str = ""

    def apply(self, system: str | None) -> str | None:
        if self.mode == "override":
            return self.text
        if self.mode == "suffix":
            return f"{system}\n\n{self.text}" if system else self.text
        return system


@dataclass(frozen=True, slots=True)
class ArmSpec:
    """One side of a plan: a model at a provider, its call params and its prompt adjustment."""

    provider: str
    model: str
    kind: str = "openai"
    base_url: str = ""
    api_key_env: str = ""
    params: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    prompt: Prompt = Prompt()

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "kind": self.kind,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "model": self.model,
            "params": dict(self.params),
            "prompt": {"mode": self.prompt.mode, "text": self.prompt.text},
        }


@dataclass(frozen=True, slots=True)
class PlanSnapshot:
    """One plan as the SDK evaluates it, precomputed at snapshot load."""

    key: str
    version: int
    run: int
    status: str
    phase: str | None
    salt: str
    weight_bp: int
    shadow_bp: int
    control: ArmSpec
    candidate: ArmSpec


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: str
    plans: Mapping[str, PlanSnapshot]


EMPTY_SNAPSHOT = Snapshot(version="", plans=_EMPTY)


@dataclass(frozen=True, slots=True)
class Decision:
    """Which model to call for this request, and everything needed to report on it."""

    plan: str
    unit: str
    arm: str
    spec: ArmSpec | None
    fallback: ArmSpec | None
    shadow: bool
    shadow_spec: ArmSpec | None
    plan_version: int
    run: int
    phase: str | None
    reason: str
    decision_id: str

    @property
    def provider(self) -> str | None:
        return self.spec.provider if self.spec else None

    @property
    def model(self) -> str | None:
        return self.spec.model if self.spec else None

    @property
    def params(self) -> Mapping[str, Any]:
        return self.spec.params if self.spec else _EMPTY

    @property
    def prompt(self) -> Prompt:
        return self.spec.prompt if self.spec else Prompt()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the body of ``/api/v1/decide`` and the OFREP object value."""
        spec = self.spec
        return {
            "plan": self.plan,
            "arm": self.arm,
            "provider": spec.provider if spec else None,
            "kind": spec.kind if spec else None,
            "model": spec.model if spec else None,
            "params": dict(spec.params) if spec else {},
            "prompt": {"mode": spec.prompt.mode, "text": spec.prompt.text} if spec else None,
            "shadow": self.shadow,
            "shadow_model": self.shadow_spec.model if self.shadow_spec else None,
            "fallback": self.fallback.to_dict() if self.fallback else None,
            "plan_version": self.plan_version,
            "run": self.run,
            "phase": self.phase,
            "reason": self.reason,
            "decision_id": self.decision_id,
        }


def decide(
    plan: PlanSnapshot | None, unit: str, *, decision_id: str, default: ArmSpec | None = None
) -> Decision:
    """The decision for ``unit`` (see docs/contracts.md for the rules per status)."""
    if plan is None:
        return Decision(
            "", unit, "control", default, default, False, None, 0, 0, None, "DEFAULT", decision_id
        )
    if plan.status == "running":
        candidate = bucket(plan.salt, unit) < plan.weight_bp
        shadow = (
            not candidate and plan.shadow_bp > 0 and shadow_bucket(plan.salt, unit) < plan.shadow_bp
        )
        return Decision(
            plan.key,
            unit,
            "candidate" if candidate else "control",
            plan.candidate if candidate else plan.control,
            plan.control,
            shadow,
            plan.candidate if shadow else None,
            plan.version,
            plan.run,
            plan.phase,
            "SPLIT",
            decision_id,
        )
    if plan.status == "completed":
        return Decision(
            plan.key,
            unit,
            "candidate",
            plan.candidate,
            plan.control,
            False,
            None,
            plan.version,
            plan.run,
            None,
            "STATIC",
            decision_id,
        )
    return Decision(
        plan.key,
        unit,
        "control",
        plan.control,
        plan.control,
        False,
        None,
        plan.version,
        plan.run,
        None,
        "DISABLED",
        decision_id,
    )


def _arm(data: Any, where: str) -> ArmSpec:
    if not isinstance(data, Mapping):
        raise SnapshotError(f"{where}: expected an object")
    prompt = data.get("prompt") or {}
    params = data.get("params") or {}
    if not isinstance(prompt, Mapping) or not isinstance(params, Mapping):
        raise SnapshotError(f"{where}: prompt and params must be objects")
    mode = str(prompt.get("mode", "none"))
    if mode not in PROMPT_MODES:
        raise SnapshotError(f"{where}.prompt.mode: unknown mode {mode!r}")
    try:
        return ArmSpec(
            provider=str(data["provider"]),
            model=str(data["model"]),
            kind=str(data.get("kind", "openai")),
            base_url=str(data.get("base_url") or ""),
            api_key_env=str(data.get("api_key_env") or ""),
            params=MappingProxyType(dict(params)),
            prompt=Prompt(mode, str(prompt.get("text", ""))),
        )
    except KeyError as exc:
        raise SnapshotError(f"{where}: missing {exc.args[0]}") from None


def _basis_points(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= BASIS_POINTS:
        raise SnapshotError(f"{where}: expected an integer from 0 to {BASIS_POINTS}, got {value!r}")
    return value


def parse_plan(data: Any) -> PlanSnapshot:
    """One snapshot entry; raises :class:`SnapshotError` naming the field at fault."""
    if not isinstance(data, Mapping):
        raise SnapshotError("plan: expected an object")
    key = data.get("key")
    if not isinstance(key, str) or not key:
        raise SnapshotError("plan.key: expected a non-empty string")
    status = data.get("status")
    if status not in STATUSES:
        raise SnapshotError(f"{key}.status: unknown status {status!r}")
    salt = data.get("salt")
    if not isinstance(salt, str):
        raise SnapshotError(f"{key}.salt: expected a string")
    version, run = data.get("version", 0), data.get("run", 0)
    if not isinstance(version, int) or not isinstance(run, int):
        raise SnapshotError(f"{key}.version and run must be integers")
    phase = data.get("phase")
    return PlanSnapshot(
        key=key,
        version=version,
        run=run,
        status=status,
        phase=phase if isinstance(phase, str) else None,
        salt=salt,
        weight_bp=_basis_points(data.get("weight_bp", 0), f"{key}.weight_bp"),
        shadow_bp=_basis_points(data.get("shadow_bp", 0), f"{key}.shadow_bp"),
        control=_arm(data.get("control"), f"{key}.control"),
        candidate=_arm(data.get("candidate"), f"{key}.candidate"),
    )


def parse_snapshot(data: Any) -> Snapshot:
    """A whole ``/api/v1/sdk/config`` body. All or nothing: one bad plan rejects the snapshot,
    so a client keeps its last good one rather than serving half a configuration."""
    if not isinstance(data, Mapping) or not isinstance(data.get("plans"), list):
        raise SnapshotError("snapshot: expected an object with a 'plans' list")
    if data.get("schema", 1) != 1:
        raise SnapshotError(f"snapshot: unsupported schema {data.get('schema')!r}")
    plans = {}
    for entry in data["plans"]:
        plan = parse_plan(entry)
        plans[plan.key] = plan
    return Snapshot(version=str(data.get("version", "")), plans=MappingProxyType(plans))
