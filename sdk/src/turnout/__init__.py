"""Turnout client library: local routing decisions, outcome reporting, provider adapters.

Django-free by design: the control plane imports this package so that the decision
algorithm exists exactly once.

    import turnout
    client = turnout.Client(base_url, api_key)
    d = client.decide("support-chat", unit=user_id)
"""

from turnout.client import Client, arm
from turnout.errors import TurnoutError
from turnout.routing import ArmSpec, Decision, Prompt

__version__ = "0.1.0"
__all__ = ["ArmSpec", "Client", "Decision", "Prompt", "TurnoutError", "arm"]
