"""Per-model behaviour of the provider simulator: latency, errors, answers, usage.

Pure data and pure functions of a ``random.Random``: the server owns the generators (seeded,
one per model) and the locking; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

#: Error kinds the simulator can produce (the adapters' list minus the two that are judgments
#: of a successful answer, ``invalid_output`` and ``empty_output``, which come from the
#: ``degraded`` and ``empty`` answer generators instead), plus ``quota``: a 429 that says the
#: account is out of credit (OpenAI's ``insufficient_quota``), which must not be retried.
SIM_ERRORS = (
    "rate_limited",
    "quota",
    "overloaded",
    "server_error",
    "timeout",
    "connection",
    "bad_request",
    "auth",
    "content_filter",
)
ANSWERS = ("echo", "canned", "json", "degraded", "refusal", "empty")
#: z-score of the 95th percentile of the standard normal: sigma = ln(p95 / median) / 1.645.
_Z95 = 1.6448536269514722
REFUSAL_TEXT = "I'm sorry, but I can't help with that request."


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """How one model behaves.

    Latency is lognormal with the given median and p95 (total, to the last byte); time to first
    token is ``ttft_fraction`` of it when streaming. ``errors`` maps kinds in
    :data:`SIM_ERRORS` to probabilities (their sum at most 1). ``fail_next`` is a script: the
    next requests fail with these kinds in order, before any random draw (deterministic tests
    of a retry that succeeds). ``answer`` picks the generator; ``json`` answers are also given
    whenever the request asked for JSON, except by ``degraded``, ``refusal`` and ``empty``.
    ``retry_after_s`` is sent on 429/503/529 (``None``: no header). ``hang_ms`` is how long a
    ``timeout`` error holds the request before answering (past any sane client timeout).
    """

    latency_median_ms: float = 20.0
    latency_p95_ms: float = 40.0
    ttft_fraction: float = 0.3
    errors: Mapping[str, float] = field(default_factory=dict)
    fail_next: Sequence[str] = ()
    answer: str = "echo"
    text: str = "Hello! How can I help you today?"
    usage: bool = True
    stream_chunks: int = 4
    retry_after_s: float | None = None
    hang_ms: float = 5000.0

    def __post_init__(self) -> None:
        if self.answer not in ANSWERS:
            raise ValueError(
                f"answer: unknown generator {self.answer!r}, expected one of {ANSWERS}"
            )
        for kind, rate in self.errors.items():
            if kind not in SIM_ERRORS:
                raise ValueError(f"errors: unknown kind {kind!r}, expected one of {SIM_ERRORS}")
            if not 0.0 <= float(rate) <= 1.0:
                raise ValueError(f"errors.{kind}: rate {rate!r} is not in [0, 1]")
        if sum(float(r) for r in self.errors.values()) > 1.0 + 1e-9:
            raise ValueError("errors: the rates add up to more than 1")
        for kind in self.fail_next:
            if kind not in SIM_ERRORS:
                raise ValueError(f"fail_next: unknown kind {kind!r}")
        if self.latency_median_ms < 0 or self.latency_p95_ms < self.latency_median_ms:
            raise ValueError("latency: need 0 <= median <= p95")
        if not 0.0 <= self.ttft_fraction <= 1.0:
            raise ValueError("ttft_fraction: not in [0, 1]")
        if self.stream_chunks < 1:
            raise ValueError("stream_chunks: at least 1")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = dict(self.errors)
        data["fail_next"] = list(self.fail_next)
        return data

    def updated(self, changes: Mapping[str, Any]) -> Profile:
        """A copy with ``changes`` applied (the body of ``PUT /_sim/profiles/{model}``);
        ``ValueError`` names an unknown field or a bad value."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown profile fields {unknown}")
        values = dict(changes)
        if "errors" in values:
            values["errors"] = {str(k): float(v) for k, v in dict(values["errors"]).items()}
        if "fail_next" in values:
            values["fail_next"] = tuple(values["fail_next"])
        try:
            return replace(self, **values)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    def latency_s(self, rng: random.Random) -> float:
        """One draw of the total latency, in seconds."""
        if self.latency_median_ms <= 0:
            return 0.0
        sigma = math.log(self.latency_p95_ms / self.latency_median_ms) / _Z95
        return rng.lognormvariate(math.log(self.latency_median_ms), sigma) / 1000.0

    def draw_error(self, rng: random.Random) -> str | None:
        """One draw of the error kind (``None``: success). Always consumes one random number,
        so the sequence of draws does not depend on the rates (reproducible across changes)."""
        unit = rng.random()
        edge = 0.0
        for kind in SIM_ERRORS:
            edge += float(self.errors.get(kind, 0.0))
            if unit < edge:
                return kind
        return None


@dataclass(frozen=True, slots=True)
class Prompted:
    """What the simulator needs from a request, whatever the vendor format."""

    model: str
    system: str
    messages: tuple[str, ...]  # the non-system message texts, in order
    stream: bool = False
    json_wanted: bool = False
    schema: Mapping[str, Any] | None = None
    include_usage: bool = True  # OpenAI chat streams carry usage only when asked
    #: The request body as received (for tests that check what an adapter put on the wire).
    body: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def last(self) -> str:
        return self.messages[-1] if self.messages else ""


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: about four characters per token."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _value_for(schema: Mapping[str, Any], prompt: str) -> Any:
    kind = schema.get("type")
    if kind == "object":
        return _object_for(schema, prompt)
    if kind == "array":
        items = schema.get("items")
        return [_value_for(items, prompt)] if isinstance(items, Mapping) else []
    if kind == "integer":
        return len(prompt)
    if kind == "number":
        return len(prompt) / 2
    if kind == "boolean":
        return True
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    return prompt


def _object_for(schema: Mapping[str, Any] | None, prompt: str) -> dict[str, Any]:
    properties = (schema or {}).get("properties")
    if not isinstance(properties, Mapping) or not properties:
        return {"answer": prompt, "ok": True}
    return {
        str(name): _value_for(sub if isinstance(sub, Mapping) else {}, prompt)
        for name, sub in properties.items()
    }


def generate(profile: Profile, prompted: Prompted, rng: random.Random) -> str:
    """The answer text for a request under a profile."""
    if profile.answer == "empty":
        return ""
    if profile.answer == "refusal":
        return REFUSAL_TEXT
    if profile.answer == "degraded":
        # A worse answer, not a random one: half the words of what a good answer would be, in a
        # shuffled order, and a JSON answer cut short so that it no longer parses.
        good = generate(replace(profile, answer="echo"), prompted, rng)
        if prompted.json_wanted:
            return good[: max(1, len(good) // 2)]
        words = good.split()
        keep = words[: max(1, len(words) // 2)]
        rng.shuffle(keep)
        return " ".join(keep)
    if profile.answer == "json" or prompted.json_wanted:
        return json.dumps(_object_for(prompted.schema, prompted.last))
    if profile.answer == "canned":
        return profile.text
    return f"You said: {prompted.last}" if prompted.last else profile.text


def chunks(text: str, count: int) -> list[str]:
    """``text`` cut into ``count`` pieces (fewer when it is shorter), joined back exactly."""
    if not text:
        return []
    size = max(1, math.ceil(len(text) / count))
    return [text[i : i + size] for i in range(0, len(text), size)]
