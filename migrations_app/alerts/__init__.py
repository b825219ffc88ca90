"""On-call alerts: one message, four channels, one error type.

Usage from the delivery task::

    message = AlertMessage.from_dict(row.payload)
    target = resolve_target(url_env=ch.url_env, secret_env=ch.secret_env,
                            recipients=ch.recipients)
    result = get_channel(ch.kind).deliver(message, target, now=timezone.now())

``deliver`` returns a :class:`DeliveryResult` or raises :class:`DeliveryError`;
retry only when ``error.transient`` is true.
"""

from __future__ import annotations

from .base import (
    Channel,
    DeliveryError,
    DeliveryResult,
    PreparedRequest,
    Target,
    resolve_target,
)
from .email import EmailChannel
from .message import (
    EVENTS,
    SEVERITIES,
    AlertMessage,
    ExamplePair,
    GuardrailVerdict,
    build_test_message,
    dedup_key,
    format_utc,
)
from .pagerduty import PagerDutyChannel
from .render import render_text
from .slack import SlackChannel
from .webhook import WebhookChannel, verify_signature

CHANNELS: dict[str, type[Channel]] = {
    channel.kind: channel
    for channel in (SlackChannel, PagerDutyChannel, WebhookChannel, EmailChannel)
}
CHANNEL_KINDS = tuple(CHANNELS)


def get_channel(kind: str) -> Channel:
    """The channel for ``kind`` (``slack``, ``pagerduty``, ``webhook``, ``email``).

    An unknown kind raises a permanent :class:`DeliveryError`, like any other
    configuration the outbox cannot retry its way out of.
    """
    try:
        channel = CHANNELS[kind]
    except KeyError:
        raise DeliveryError(f"unknown channel kind {kind!r}", transient=False) from None
    return channel()


__all__ = [
    "CHANNELS",
    "CHANNEL_KINDS",
    "EVENTS",
    "SEVERITIES",
    "AlertMessage",
    "Channel",
    "DeliveryError",
    "DeliveryResult",
    "EmailChannel",
    "ExamplePair",
    "GuardrailVerdict",
    "PagerDutyChannel",
    "PreparedRequest",
    "SlackChannel",
    "Target",
    "WebhookChannel",
    "build_test_message",
    "dedup_key",
    "format_utc",
    "get_channel",
    "render_text",
    "resolve_target",
    "verify_signature",
]
