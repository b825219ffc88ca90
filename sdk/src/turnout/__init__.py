"""Turnout client library: local routing decisions, outcome reporting, provider adapters.

Django-free by design: the control plane imports this package so that the decision
algorithm exists exactly once.

    import turnout

    client = turnout.Client("https://turnout.example.com", api_key, lkg_path="/var/tmp/turnout.json")
    d = client.decide("support-chat", user_id, default=turnout.arm("openai", "gpt-4o"))
    ...call d.provider / d.model with d.params, d.prompt.apply(system)...
    client.report(d, latency_ms=812.0, input_tokens=1500, output_tokens=420)
"""

from turnout.client import ERROR_KINDS, Client, arm
from turnout.errors import (
    Forbidden,
    IllegalTransition,
    InvalidRequest,
    NotFound,
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
    "ArmSpec",
    "Client",
    "Decision",
    "Forbidden",
    "IllegalTransition",
    "InvalidRequest",
    "NotFound",
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
    "from_response",
]
