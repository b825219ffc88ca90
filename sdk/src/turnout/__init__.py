"""Turnout client library: local routing decisions, outcome reporting, provider adapters.

Django-free by design: the control plane imports this package so that the decision
algorithm exists exactly once.

    import turnout

    client = turnout.Client("https://turnout.example.com", api_key, lkg_path="/var/tmp/turnout.json")
    d = client.decide("support-chat", user_id, default=turnout.arm("openai", "gpt-4o"))
    ...call d.provider / d.model with d.params, d.prompt.apply(system)...
    client.report(d, latency_ms=812.0, input_tokens=1500, output_tokens=420)

or let Turnout make the whole request (route, call, report, shadow, fall back):

    answer = client.complete("support-chat", user_id, messages=[{"role": "user", "content": q}])
    answer.text, answer.arm, answer.fell_back, answer.error
"""

from turnout.client import Client, Completion, arm, estimate_tokens
from turnout.contract import (
    ERROR_KINDS,
    FALLBACK_CANDIDATE_ERROR,
    FALLBACK_CONTEXT_WINDOW,
    ErrorCode,
)
from turnout.errors import (
    Forbidden,
    IllegalTransition,
    InvalidRequest,
    Misdirected,
    NotFound,
    PayloadTooLarge,
    PlanNotFound,
    RateLimited,
    ServerError,
    SnapshotError,
    TurnoutError,
    Unauthorized,
    from_response,
)
from turnout.routing import ArmSpec, Decision, PlanSnapshot, Prompt, Snapshot

__version__ = "0.1.0"
__all__ = [
    "ERROR_KINDS",
    "FALLBACK_CANDIDATE_ERROR",
    "FALLBACK_CONTEXT_WINDOW",
    "ArmSpec",
    "Client",
    "Completion",
    "Decision",
    "ErrorCode",
    "Forbidden",
    "IllegalTransition",
    "InvalidRequest",
    "Misdirected",
    "NotFound",
    "PayloadTooLarge",
    "PlanNotFound",
    "PlanSnapshot",
    "Prompt",
    "RateLimited",
    "ServerError",
    "Snapshot",
    "SnapshotError",
    "TurnoutError",
    "Unauthorized",
    "arm",
    "estimate_tokens",
    "from_response",
]
