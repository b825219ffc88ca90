"""The snapshot a decision is made on: a plan's arms, prompt adjustments, targeting and
status, parsed and validated once when a snapshot arrives (:func:`parse_snapshot`,
:func:`parse_plan`, :func:`parse_arm`) into immutable objects. Parameters are deep-frozen so
that no caller can change, through the decision it was given, what every other request in the
process is routed with.

Pure, like :mod:`turnout.routing` (the decision), which re-exports every name here: callers
keep writing ``routing.parse_plan`` and ``routing.ArmSpec``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from turnout import targeting
from turnout.contract import MAX_ATTRIBUTE_KEY_LENGTH, MAX_OVERRIDES, MAX_UNIT_LENGTH
from turnout.errors import SnapshotError

BASIS_POINTS = 10_000
STATUSES = frozenset({"running", "paused", "rolled_back", "completed", "draft"})
PROMPT_MODES = frozenset({"none", "override", "suffix"})
CONTROL = "control"
CANDIDATE = "candidate"
_EMPTY: Mapping[str, Any] = MappingProxyType({})


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
class Override:
    """A QA override: the unit gets ``arm`` while the plan runs, until ``expires`` (Unix
    seconds)."""

    arm: str
    expires: float


@dataclass(frozen=True, slots=True)
class PlanSnapshot:
    """One plan as the SDK evaluates it, validated and frozen at snapshot load.

    ``fallback_to_control``: ``Client.complete()`` answers from control when the candidate
    fails with a transient error. Snapshots from before the setting existed mean "on", the
    server's default.

    Targeting: ``rules`` (compiled, in order), ``cohorts`` (each cohort's weight in basis
    points at this step; a cohort not listed is split at ``weight_bp``) and ``overrides`` (by
    unit). ``targeted`` says whether any of them is set (decide() skips them otherwise);
    ``unreadable`` is why this SDK could not read them (then every unit gets control, reason
    ``ERROR``: an exclusion it cannot evaluate must not send anyone to the candidate).
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
    rules: tuple[targeting.Rule, ...] = ()
    #: The JSON Schema answers should satisfy (``turnout.checks``' schema_valid), or None.
    answer_schema: Mapping[str, Any] | None = None
    cohorts: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    overrides: Mapping[str, Override] = field(default_factory=lambda: _EMPTY)
    targeted: bool = False
    unreadable: str = ""
    #: The plan's segment dimensions (attribute names; guardrails per segment).
    segments: tuple[str, ...] = ()
    #: The share (basis points) of each arm's answers ``Client.complete()`` sends to the
    #: pointwise judge (a split or rollout of a plan with a judge; 0: none).
    judge_bp: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A whole ``/api/v1/sdk/config`` body: its version (the ETag) and the plans by key."""

    version: str
    plans: Mapping[str, PlanSnapshot]


EMPTY_SNAPSHOT = Snapshot(version="", plans=_EMPTY)


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
    rules, cohorts, overrides, unreadable = _targeting(data, key)
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
        rules=rules,
        # Only ever read by the answer checks: a malformed one is no schema, not a bad plan.
        answer_schema=schema if isinstance(schema := data.get("answer_schema"), dict) else None,
        cohorts=cohorts,
        overrides=overrides,
        targeted=bool(rules or cohorts or overrides or unreadable),
        unreadable=unreadable,
        segments=_segment_dimensions(data.get("segments")),
        judge_bp=_integer(data.get("judge_bp", 0), f"{key}.judge_bp", 0, BASIS_POINTS),
    )


def _segment_dimensions(data: Any) -> tuple[str, ...]:
    """The plan's segment dimensions; anything malformed reads as none (segments only shape
    the statistics: never a reason to refuse a plan)."""
    if not isinstance(data, list):
        return ()
    names = tuple(n for n in data if isinstance(n, str) and 0 < len(n) <= MAX_ATTRIBUTE_KEY_LENGTH)
    return names[: targeting.MAX_SEGMENT_DIMENSIONS]


def _targeting(
    data: Mapping[str, Any], key: str
) -> tuple[tuple[targeting.Rule, ...], Mapping[str, int], Mapping[str, Override], str]:
    """A plan's rules, cohort weights and overrides; what this SDK cannot read makes the plan
    ``unreadable`` (every unit on control, reason ERROR) rather than refusing the snapshot:
    a newer server's operator must not pin every other plan to a stale snapshot, and must not
    let an exclusion this SDK cannot evaluate send an excluded unit to the candidate."""
    try:
        rules = targeting.compile_rules(data.get("rules"))
        cohorts = _cohorts(data.get("cohorts"))
        overrides = _overrides(data.get("overrides"))
    except (targeting.RuleError, ValueError) as exc:
        return (), _EMPTY, _EMPTY, f"{key}: {exc}"
    return rules, cohorts, overrides, ""


def _cohorts(data: Any) -> Mapping[str, int]:
    if data is None:
        return _EMPTY
    if not isinstance(data, Mapping):
        raise ValueError("cohorts: expected an object of weights")
    weights = {}
    for name, weight in data.items():
        if not targeting.valid_cohort(name):
            raise ValueError(f"cohorts: {name!r} is not a cohort name")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int)
            or not 0 <= weight <= BASIS_POINTS
        ):
            raise ValueError(f"cohorts.{name}: expected basis points from 0 to {BASIS_POINTS}")
        weights[name] = weight
    return MappingProxyType(weights)


def _overrides(data: Any) -> Mapping[str, Override]:
    if data is None:
        return _EMPTY
    if not isinstance(data, Mapping) or len(data) > MAX_OVERRIDES:
        raise ValueError(f"overrides: expected an object of at most {MAX_OVERRIDES} units")
    found = {}
    for unit, entry in data.items():
        if not isinstance(unit, str) or len(unit) > MAX_UNIT_LENGTH:
            raise ValueError("overrides: a unit is a string of at most 256 characters")
        arm = entry.get("arm") if isinstance(entry, Mapping) else None
        expires = entry.get("expires") if isinstance(entry, Mapping) else None
        if arm not in (CONTROL, CANDIDATE):
            raise ValueError(f"overrides[{unit!r}].arm: expected control or candidate")
        if isinstance(expires, bool) or not isinstance(expires, (int, float)):
            raise ValueError(f"overrides[{unit!r}].expires: expected Unix seconds")
        found[unit] = Override(arm, float(expires))
    return MappingProxyType(found)


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
