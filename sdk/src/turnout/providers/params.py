"""The call params a shadow sample may carry: a contract between the SDK (which strips the rest
before a sample leaves the application) and the server (which refuses the rest at ingest, and
again in the worker, for samples stored before the rule).

A sample's params are the application's own settings for control's call; the worker replays them
to the candidate under the plan's arm params (which win). Anyone holding a report key can post
samples, so what a sample may set is only what shapes an answer without changing what the call
costs or how it is made: sampling controls, per provider kind, each with its type and range,
and ``max_tokens``, an integer from 1 to :data:`MAX_SAMPLE_MAX_TOKENS` (an application's normal
setting: it only caps what the candidate's call may cost, and the worker lowers it to the
candidate model's maximum output). Never ``model``, ``messages``, ``n``, ``stream``, the other
names of ``max_tokens`` (``max_completion_tokens``, ``max_output_tokens``), tools, nor a
transport option (``timeout``, ``extra_headers``, ``extra_body``, ``base_url``): the vendor SDKs
take those as keyword arguments, where one bad value raised ``TypeError`` and lost a whole batch
of paid calls. The plan's own params (set by an operator) are not limited here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from turnout.contract import RejectionCode

#: Codes of the problems :func:`sample_param_problems` reports (stable: the server's ingest
#: answers carry them).
NOT_ALLOWED: str = RejectionCode.PARAM_NOT_ALLOWED.value
INVALID: str = RejectionCode.INVALID.value

MAX_STOP_SEQUENCES = 4  # OpenAI's limit, the lowest of the vendors
MAX_STOP_CHARS = 200
#: The largest ``max_tokens`` a sample may carry (the largest output of a catalog model is
#: lower; the server also caps it at the candidate's own maximum output).
MAX_SAMPLE_MAX_TOKENS = 131_072

Check = Callable[[Any], str | None]  # a value's problem in words, or None


def _number(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        if not (math.isfinite(value) and low <= value <= high):
            return f"must be between {low:g} and {high:g}"
        return None

    return check


def _integer(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
        if not low <= value <= high:
            return f"must be between {low} and {high}"
        return None

    return check


def _stop(value: Any) -> str | None:
    values = [value] if isinstance(value, str) else value
    if (
        not isinstance(values, list)
        or not 1 <= len(values) <= MAX_STOP_SEQUENCES
        or not all(isinstance(v, str) and 0 < len(v) <= MAX_STOP_CHARS for v in values)
    ):
        return (
            f"must be a string or a list of 1 to {MAX_STOP_SEQUENCES} strings of 1 to "
            f"{MAX_STOP_CHARS} characters"
        )
    return None


_PENALTY = _number(-2.0, 2.0)
_MAX_TOKENS = _integer(1, MAX_SAMPLE_MAX_TOKENS)
_OPENAI_CHAT: Mapping[str, Check] = {
    "max_tokens": _MAX_TOKENS,
    "temperature": _number(0.0, 2.0),
    "top_p": _number(0.0, 1.0),
    "stop": _stop,
    "seed": _integer(-(2**63), 2**63 - 1),
    "presence_penalty": _PENALTY,
    "frequency_penalty": _PENALTY,
}
# The responses API takes no stop sequences, seed or penalties (its SDK refuses them).
_OPENAI_RESPONSES: Mapping[str, Check] = {
    "max_tokens": _MAX_TOKENS,
    "temperature": _number(0.0, 2.0),
    "top_p": _number(0.0, 1.0),
}
_ANTHROPIC: Mapping[str, Check] = {
    "max_tokens": _MAX_TOKENS,
    "temperature": _number(0.0, 1.0),
    "top_p": _number(0.0, 1.0),
    "top_k": _integer(1, 1000),
    "stop": _stop,
}
_GEMINI: Mapping[str, Check] = {
    "max_tokens": _MAX_TOKENS,
    "temperature": _number(0.0, 2.0),
    "top_p": _number(0.0, 1.0),
    "top_k": _integer(1, 1000),
    "stop": _stop,
    "seed": _integer(-(2**31), 2**31 - 1),
    "presence_penalty": _PENALTY,
    "frequency_penalty": _PENALTY,
}

#: Provider kind -> the params a sample may set, each with its check. A kind not named here
#: takes none.
SAMPLE_PARAMS: Mapping[str, Mapping[str, Check]] = {
    "openai": _OPENAI_CHAT,
    "openai_compatible": _OPENAI_CHAT,
    "anthropic": _ANTHROPIC,
    "gemini": _GEMINI,
}


def allowed_sample_params(kind: str, arm_params: Mapping[str, Any]) -> Mapping[str, Check]:
    """What a sample may set for a candidate of ``kind`` whose arm has ``arm_params``."""
    if kind in ("openai", "openai_compatible") and arm_params.get("api") == "responses":
        return _OPENAI_RESPONSES
    return SAMPLE_PARAMS.get(kind, {})


def sample_param_problems(
    kind: str, arm_params: Mapping[str, Any], params: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """Each refused param as ``(name, code, message)``, in the params' order; empty when the
    sample may be replayed as it is."""
    allowed = allowed_sample_params(kind, arm_params)
    problems = []
    for name, value in params.items():
        check = allowed.get(name) if isinstance(name, str) else None
        if check is None:
            problems.append(
                (
                    str(name)[:64],
                    NOT_ALLOWED,
                    f"A shadow sample may not set {str(name)[:64]!r} for a {kind} candidate; "
                    f"allowed: {sorted(allowed) or 'none'}.",
                )
            )
            continue
        problem = check(value)
        if problem is not None:
            problems.append((name, INVALID, f"{name} {problem}."))
    return problems


def sample_params(
    kind: str, arm_params: Mapping[str, Any], params: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The params a sample may carry (what the server accepts), and the names left out."""
    allowed = allowed_sample_params(kind, arm_params)
    kept: dict[str, Any] = {}
    left_out: list[str] = []
    for name, value in params.items():
        check = allowed.get(name) if isinstance(name, str) else None
        if check is not None and check(value) is None:
            kept[name] = value
        else:
            left_out.append(str(name))
    return kept, left_out
