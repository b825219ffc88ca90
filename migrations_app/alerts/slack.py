"""Slack incoming webhook: a Block Kit message with a plain-text fallback.

The target URL is the webhook URL Slack gives when the app is installed; it is a
secret (anyone holding it can post), so it comes from the environment. Slack answers
200 ``ok``; 400/403/404/410 mean the payload or the webhook is wrong (permanent),
429 and 5xx are transient.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .base import USER_AGENT, DeliveryError, HttpChannel, PreparedRequest, Target, json_bytes
from .message import AlertMessage
from .render import arm_line, bounds_line, error_kinds_line, render_text

# Block Kit limits: header text 150 characters, section text 3,000, field text 2,000.
HEADER_CHARS = 150
SECTION_CHARS = 3000

_ICONS = {"critical": ":red_circle:", "error": ":large_orange_circle:", "warning": ":warning:"}


def escape(text: str) -> str:
    """Slack mrkdwn treats ``&``, ``<`` and ``>`` as control characters; show them as text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _clip(text, SECTION_CHARS)}


def _quote(text: str) -> str:
    return "\n".join(f">{line}" for line in escape(text).splitlines() or [""])


def blocks(message: AlertMessage) -> list[dict[str, Any]]:
    """The Block Kit blocks: header, what happened, control vs candidate, errors, examples, link."""
    icon = ":white_check_mark:" if message.resolve else _ICONS.get(message.severity, "")
    header = f"{icon} {message.headline}".strip()
    out: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(header, HEADER_CHARS)}},
        {
            "type": "section",
            "text": _mrkdwn(
                f"*{escape(message.plan_name)}* (`{escape(message.plan_key)}`, run {message.run})\n"
                f"*What Turnout did at {message.acted_at}:* {escape(message.action_taken)}"
            ),
        },
    ]
    verdict = message.guardrail
    if verdict is not None:
        out.append(
            {
                "type": "section",
                "text": _mrkdwn(
                    f"*Guardrail `{escape(verdict.metric)}`:* {escape(verdict.summary)}\n"
                    f"{escape(bounds_line(verdict))}"
                ),
                "fields": [
                    _mrkdwn(
                        "*Control*\n"
                        + escape(
                            arm_line(
                                message.control_model, verdict.control_value, verdict.n_control
                            )
                        )
                    ),
                    _mrkdwn(
                        "*Candidate*\n"
                        + escape(
                            arm_line(
                                message.candidate_model,
                                verdict.candidate_value,
                                verdict.n_candidate,
                            )
                        )
                    ),
                ],
            }
        )
    elif message.control_model or message.candidate_model:
        out.append(
            {
                "type": "section",
                "fields": [
                    _mrkdwn(f"*Control*\n{escape(message.control_model)}"),
                    _mrkdwn(f"*Candidate*\n{escape(message.candidate_model)}"),
                ],
            }
        )
    if errors := error_kinds_line(message):
        out.append({"type": "context", "elements": [_mrkdwn(f"*Errors seen:* {escape(errors)}")]})
    for number, pair in enumerate(message.examples, start=1):
        out.append(
            {
                "type": "section",
                "text": _mrkdwn(
                    f"*Example {number}*\n{_quote(pair.prompt)}\n"
                    f"*Control:*\n{_quote(pair.control)}\n"
                    f"*Candidate:*\n{_quote(pair.candidate)}"
                ),
            }
        )
    out.append(
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Open the plan dashboard"},
                    "url": message.dashboard_url,
                }
            ],
        }
    )
    return out


class SlackChannel(HttpChannel):
    """Posts to a Slack incoming webhook (``target.url``)."""

    kind = "slack"

    def build(self, message: AlertMessage, target: Target, *, now: datetime) -> PreparedRequest:
        if not target.url:
            raise DeliveryError("slack: no webhook URL configured", transient=False)
        payload = {"text": escape(render_text(message)), "blocks": blocks(message)}
        return PreparedRequest(
            method="POST",
            url=target.url,
            headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT},
            body=json_bytes(payload),
        )
