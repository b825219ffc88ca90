"""PagerDuty Events API v2.

One incident per plan run and guardrail: every event carries the message's
``dedup_key``, so the trigger, any re-trigger and the resolution land on the same
alert. The routing key (the integration key of a PagerDuty service) is the target's
secret; ``target.url`` overrides the endpoint (an EU account, or a test receiver).
PagerDuty answers 202 on success, 400 on a malformed event (permanent), 429 when
rate limited and 5xx on its own failures (both transient).

Note for escalation: PagerDuty appends a trigger whose ``dedup_key`` matches an open
alert to that alert's log instead of paging again. An escalation that must page
again needs its own key (e.g. ``dedup_key(...) + ":escalated"``), and the recovery
must then resolve both keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .base import USER_AGENT, DeliveryError, HttpChannel, PreparedRequest, Target, json_bytes
from .message import AlertMessage

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
ACTIONS = ("trigger", "acknowledge", "resolve")
# Turnout's severities are PagerDuty's; the map is explicit so a new Turnout
# severity fails loudly here instead of reaching PagerDuty as a 400.
SEVERITY = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}
SUMMARY_CHARS = 1024  # the Events API rejects longer summaries


def event_action(message: AlertMessage) -> str:
    """``resolve`` for resolution messages, ``trigger`` for everything else."""
    return "resolve" if message.resolve else "trigger"


def custom_details(message: AlertMessage) -> dict[str, Any]:
    """The evidence, laid out for PagerDuty's incident page."""
    details: dict[str, Any] = {
        "plan": f"{message.plan_name} ({message.plan_key}), run {message.run}",
        "event": message.event,
        "action_taken": message.action_taken,
        "acted_at": message.acted_at,
        "control_model": message.control_model,
        "candidate_model": message.candidate_model,
    }
    if message.guardrail is not None:
        details["guardrail"] = message.guardrail.to_dict()
    if message.error_kinds_control or message.error_kinds_candidate:
        details["error_kinds"] = {
            "control": dict(message.error_kinds_control),
            "candidate": dict(message.error_kinds_candidate),
        }
    if message.examples:
        details["examples"] = [pair.to_dict() for pair in message.examples]
    details["dashboard_url"] = message.dashboard_url
    return details


class PagerDutyChannel(HttpChannel):
    """Sends Events API v2 events; the routing key is ``target.secret``."""

    kind = "pagerduty"

    def build(
        self,
        message: AlertMessage,
        target: Target,
        *,
        now: datetime,
        action: str | None = None,
    ) -> PreparedRequest:
        """The event for ``message``; ``action`` overrides :func:`event_action`.

        ``acknowledge`` and ``resolve`` carry only the routing and dedup keys: PagerDuty
        ignores a payload on them.
        """
        if not target.secret:
            raise DeliveryError("pagerduty: no routing key configured", transient=False)
        action = action or event_action(message)
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}")
        event: dict[str, Any] = {
            "routing_key": target.secret,
            "event_action": action,
            "dedup_key": message.dedup_key,
        }
        if action == "trigger":
            summary = message.headline
            if message.guardrail is not None:
                summary += f" ({message.guardrail.summary})"
            event["payload"] = {
                "summary": summary[:SUMMARY_CHARS],
                "source": f"turnout/{message.plan_key}",
                "severity": SEVERITY[message.severity],
                "timestamp": message.acted_at,
                "component": message.plan_key,
                "group": "turnout",
                "class": message.guardrail.metric if message.guardrail else message.event,
                "custom_details": custom_details(message),
            }
            event["client"] = "Turnout"
            event["client_url"] = message.dashboard_url
            event["links"] = [{"href": message.dashboard_url, "text": "Plan dashboard"}]
        return PreparedRequest(
            method="POST",
            url=target.url or EVENTS_URL,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
            body=json_bytes(event),
        )
