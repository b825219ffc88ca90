"""The routing decision: which model a unit (a user, a session) gets for a plan.

Pure: no I/O, no clock, no randomness. The SDK evaluates it locally on a cached snapshot and
the server imports this same module for ``/api/v1/decide`` and OFREP, so the algorithm exists
once (``sdk/conformance/routing-v1.json`` pins it; changing a vector breaks stickiness for
every user and must not ship).

- bucket(unit) = murmur3_32(f"{salt}:{unit}") % 10000; the candidate when bucket < weight_bp.
  Raising the weight only moves units from control to candidate, never back.
- Shadow sampling hashes ``f"{salt}:shadow:{unit}"``: independent of the split.

Everything a decision needs is parsed and validated once, when a snapshot arrives, into
immutable objects; :func:`decide` then does one hash (two when shadowing) and builds one
:class:`Decision`. Parameters are deep-frozen so that no caller can change, through the
decision it was given, what every other request in the process is routed with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import mmh3

from turnout.errors import SnapshotError

BASIS_POINTS = 10_000
STATUSES = frozenset({"running", "paused", "rolled_back", "completed", "draft"})
PROMPT_MODES = frozenset({"none", "override", "suffix"})
CONTROL = "control"
CANDIDATE = "candidate"
_EMPTY: Mapping[str, Any] = MappingProxyType({})

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


def freeze(value: Any) -> Any:
    """A deep read-only copy of JSON data: objects become mapping proxies, arrays tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The JSON-serialisable twin of :func:`freeze`'s output (plain dicts and lists)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Prompt:
    """How an arm adjusts the system prompt: ``none``, ``override`` (replace) or ``suffix`` (append)."""

    mode: str = "none"
    text: str = ""

    def apply(self, system: str | None) -> str | None:
        """The system prompt to send, given the application's own."""
        if self.mode == "override":
            return self.text
        if self.mode == "suffix":
            return f"{system}\n\n{self.text}" if system else self.text
        return system

    def to_dict(self) -> dict[str, str]:
        return {"mode": self.mode, "text": self.text}


NO_PROMPT = Prompt()


@dataclass(frozen=True, slots=True, kw_only=True)
class ArmSpec:
    """One side of a plan: a model at a provider, its call params and its prompt adjustment.

    ``kind`` names the wire protocol (``openai``, ``anthropic``, ``gemini``,
    ``openai_compatible``); left empty it is the provider's name. ``api_key_env`` names the
    environment variable that holds the provider key: keys never travel in snapshots.
    ``context_window`` is the model's limit in tokens (prompt and answer), when known:
    ``Client.complete()`` sends a prompt too long for the candidate to control instead.
    """

    provider: str
    kind: str = ""
    base_url: str = ""
    api_key_env: str = ""
    model: str
    params: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    prompt: Prompt = NO_PROMPT
    context_window: int | None = None

    def __post_init__(self) -> None:
        # Runs once per arm (at snapshot load or for a default arm), never per decision.
        if not self.kind:
            object.__setattr__(self, "kind", self.provider)
        if not isinstance(self.params, MappingProxyType):
            object.__setattr__(self, "params", freeze(self.params))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, in the snapshot's shape (``context_window`` only when known, so that an
        arm without one reads as it did before the field existed)."""
        data: dict[str, Any] = {
            "provider": self.provider,
            "kind": self.kind,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "model": self.model,
            "params": thaw(self.params),
            "prompt": self.prompt.to_dict(),
        }
        if self.context_window is not None:
            data["context_window"] = self.context_window
        return data


@dataclass(frozen=True, slots=True)
class PlanSnapshot:
    """One plan as the SDK evaluates it, validated and frozen at snapshot load.

    ``fallback_to_control``: ``Client.complete()`` answers from control when the candidate
    fails with a transient error. Snapshots from before the setting existed mean "on", the
    server's default.
    """

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
    fallback_to_control: bool = True


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A whole ``/api/v1/sdk/config`` body: its version (the ETag) and the plans by key."""

    version: str
    plans: Mapping[str, PlanSnapshot]


EMPTY_SNAPSHOT = Snapshot(version="", plans=_EMPTY)


@dataclass(frozen=True, slots=True)
class Decision:
    """Which model to call for this request, and everything needed to report on it.

    ``spec`` is the arm to call (``None`` only for an unknown plan without a ``default``);
    ``provider``, ``model``, ``params`` and ``prompt`` are its fields, copied for convenience.
    ``fallback`` is the control arm, to retry on when the candidate fails. When ``shadow`` is
    true the application may also send the request to ``shadow_spec`` (the candidate) and
    must show the user only the control's answer.
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
        }


# Decisions are built field by field through the slot descriptors rather than through the
# dataclass __init__: a frozen dataclass's __init__ goes through object.__setattr__ once per
# field, which costs more than the whole rest of decide(). The result is the same immutable
# object (equal to one made with Decision(...), and assignment still raises).
_new = object.__new__
(
    _s_plan, _s_unit, _s_arm, _s_provider, _s_model, _s_params, _s_prompt, _s_spec,
    _s_fallback, _s_shadow, _s_shadow_spec, _s_plan_version, _s_run, _s_phase, _s_reason,
    _s_decision_id,
) = (getattr(Decision, f.name).__set__ for f in fields(Decision))  # fmt: skip


def _build(
    plan: PlanSnapshot,
    unit: str,
    arm: str,
    spec: ArmSpec,
    shadow: bool,
    reason: str,
    decision_id: str,
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
    return d


def decide(
    plan: PlanSnapshot | None, unit: str, *, decision_id: str, default: ArmSpec | None = None
) -> Decision:
    """The decision for ``unit`` under ``plan`` (the rules per status are in docs/contracts.md).

    ``plan`` is ``None`` for a plan the snapshot does not hold: the caller's ``default`` arm
    (or none), reason ``DEFAULT``.
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
        salt = plan.salt
        if (
            int(_hash(f"{salt}:{unit}".encode(_UTF8, _LONE), 0, False)) % BASIS_POINTS
            < plan.weight_bp
        ):
            return _build(plan, unit, CANDIDATE, plan.candidate, False, "SPLIT", decision_id)
        shadow = (
            plan.shadow_bp > 0
            and int(_hash(f"{salt}:shadow:{unit}".encode(_UTF8, _LONE), 0, False)) % BASIS_POINTS
            < plan.shadow_bp
        )
        return _build(plan, unit, CONTROL, plan.control, shadow, "SPLIT", decision_id)
    if status == "completed":
        return _build(plan, unit, CANDIDATE, plan.candidate, False, "STATIC", decision_id)
    # paused, rolled_back, draft
    return _build(plan, unit, CONTROL, plan.control, False, "DISABLED", decision_id)


# --- parsing: strict, so that a bad snapshot is refused whole and the last good one stays ---


def _string(data: Mapping[str, Any], name: str, where: str, *, required: bool = False) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise SnapshotError(
            f"{where}.{name}: expected a {'non-empty ' if required else ''}string, got {value!r}",
            details={"field": f"{where}.{name}"},
        )
    return value


def _integer(value: Any, where: str, low: int, high: int | None = None) -> int:
    # bool is an int in Python, but True is not a weight.
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise SnapshotError(
            f"{where}: expected an integer {bounds}, got {value!r}", details={"field": where}
        )
    return value


def _arm(data: Any, where: str) -> ArmSpec:
    if not isinstance(data, Mapping):
        raise SnapshotError(f"{where}: expected an object", details={"field": where})
    prompt = data.get("prompt")
    if prompt is None:
        prompt = {}
    params = data.get("params")
    if params is None:
        params = {}
    if not isinstance(prompt, Mapping):
        raise SnapshotError(f"{where}.prompt: expected an object", details={"field": where})
    if not isinstance(params, Mapping):
        raise SnapshotError(f"{where}.params: expected an object", details={"field": where})
    mode = prompt.get("mode", "none")
    if mode not in PROMPT_MODES:
        raise SnapshotError(
            f"{where}.prompt.mode: unknown mode {mode!r}", details={"field": f"{where}.prompt"}
        )
    provider = _string(data, "provider", where, required=True)
    window = data.get("context_window")
    if window is not None:
        window = _integer(window, f"{where}.context_window", 1)
    # Unknown kinds are accepted: refusing them would pin an older SDK to a stale snapshot for
    # every plan; the provider adapters are where an unsupported kind is an error.
    return ArmSpec(
        provider=provider,
        kind=_string(data, "kind", where) or provider,
        base_url=_string(data, "base_url", where),
        api_key_env=_string(data, "api_key_env", where),
        model=_string(data, "model", where, required=True),
        params=freeze(params),
        prompt=Prompt(mode, _string(prompt, "text", f"{where}.prompt")),
        context_window=window,
    )


def parse_arm(data: Any, where: str = "arm") -> ArmSpec:
    """One arm of a snapshot entry; raises :class:`~turnout.errors.SnapshotError` naming the
    field at fault."""
    return _arm(data, where)


def parse_plan(data: Any) -> PlanSnapshot:
    """One snapshot entry; raises :class:`~turnout.errors.SnapshotError` naming the field at fault."""
    if not isinstance(data, Mapping):
        raise SnapshotError("plan: expected an object", details={"field": "plans"})
    key = _string(data, "key", "plan", required=True)
    status = data.get("status")
    if status not in STATUSES:
        raise SnapshotError(
            f"{key}.status: unknown status {status!r}", details={"field": f"{key}.status"}
        )
    salt = data.get("salt")
    if not isinstance(salt, str):
        raise SnapshotError(f"{key}.salt: expected a string", details={"field": f"{key}.salt"})
    phase = data.get("phase")
    if phase is not None and not isinstance(phase, str):
        raise SnapshotError(
            f"{key}.phase: expected a string or null", details={"field": f"{key}.phase"}
        )
    fallback = data.get("fallback_to_control", True)
    if not isinstance(fallback, bool):
        raise SnapshotError(
            f"{key}.fallback_to_control: expected a boolean",
            details={"field": f"{key}.fallback_to_control"},
        )
    return PlanSnapshot(
        key=key,
        version=_integer(data.get("version", 0), f"{key}.version", 0),
        run=_integer(data.get("run", 0), f"{key}.run", 0),
        status=status,
        phase=phase,
        salt=salt,
        weight_bp=_integer(data.get("weight_bp", 0), f"{key}.weight_bp", 0, BASIS_POINTS),
        shadow_bp=_integer(data.get("shadow_bp", 0), f"{key}.shadow_bp", 0, BASIS_POINTS),
        control=_arm(data.get("control"), f"{key}.control"),
        candidate=_arm(data.get("candidate"), f"{key}.candidate"),
        fallback_to_control=fallback,
    )


def parse_snapshot(data: Any) -> Snapshot:
    """A whole ``/api/v1/sdk/config`` body, validated and frozen.

    All or nothing: one bad plan rejects the snapshot (:class:`~turnout.errors.SnapshotError`),
    so a client keeps its last good one rather than serving half a configuration.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("plans"), list):
        raise SnapshotError(
            "snapshot: expected an object with a 'plans' list", details={"field": "plans"}
        )
    schema = data.get("schema", 1)
    if schema != 1 or isinstance(schema, bool):
        raise SnapshotError(f"snapshot: unsupported schema {schema!r}", details={"field": "schema"})
    version = data.get("version", "")
    if not isinstance(version, str):
        raise SnapshotError("snapshot.version: expected a string", details={"field": "version"})
    plans: dict[str, PlanSnapshot] = {}
    for entry in data["plans"]:
        plan = parse_plan(entry)
        if plan.key in plans:
            raise SnapshotError(
                f"snapshot: plan {plan.key!r} appears twice", details={"field": "plans"}
            )
        plans[plan.key] = plan
    return Snapshot(version=version, plans=MappingProxyType(plans))
