'''Generic webhook: a signed JSON body with a versioned schema, ``turnout.alert.v1``.

Body (UTF-8 JSON)::

    {
      "schema": "turnout.alert.v1",
      "id": "<32 hex: the same on every retry of this message>",
      "sent_at": "2025-06-03T14:02:09Z",
      "alert": { ...AlertMessage.to_dict(): plan_key, plan_name, run, event, severity,
                 resolve, reason, action_taken, acted_at, dedup_key, control_model,
                 candidate_model, guardrail (or null), error_kinds {control, candidate},
                 examples [{prompt, control, candidate}], dashboard_url }
    }

Within ``v1`` keys are only ever added, never renamed or removed; receivers ignore
keys they do not know. Drop a redelivery by its ``id``.

Headers: ``X-Turnout-Timestamp`` (unix seconds at sending) and
``X-Turnout-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>``. The
timestamp is inside the signature, so a captured request cannot be replayed later
than the receiver's tolerance. Verify against the raw body bytes, before parsing
them. The receiver's check, standard library only, to copy as it is::

    import hashlib
    import hmac
    import time


    def verify_signature(secret, timestamp, body, header, *, tolerance_s=300, now=None):
        """True when ``header`` signs ``body`` at ``timestamp`` with ``secret``, recently."""
        if isinstance(secret, str):
            secret = secret.encode()
        if isinstance(body, str):
            body = body.encode()
        timestamp = str(timestamp).strip()
        if not timestamp.isdigit():
            return False
        now = time.time() if now is None else now
        if abs(now - int(timestamp)) > tolerance_s:
            return False
        expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        # Several signatures, comma-separated, let a sender rotate its secret.
        for part in (header or "").split(","):
            scheme, _, signature = part.strip().partition("=")
            if scheme == "v1" and hmac.compare_digest(signature, expected):
                return True
        return False

In a Django view: ``verify_signature(SECRET, request.headers["X-Turnout-Timestamp"],
request.body, request.headers["X-Turnout-Signature"])``; answer 2xx on success (any
non-2xx is retried when it is 429 or 5xx, and dropped otherwise).
'''

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import datetime

from .base import USER_AGENT, DeliveryError, HttpChannel, PreparedRequest, Target, json_bytes
from .message import AlertMessage, format_utc

SCHEMA = "turnout.alert.v1"
TIMESTAMP_HEADER = "X-Turnout-Timestamp"
SIGNATURE_HEADER = "X-Turnout-Signature"


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-Turnout-Signature`` value for ``body`` sent at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_signature(
    secret: str | bytes,
    timestamp: int | str,
    body: bytes | str,
    header: str,
    *,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """True when ``header`` signs ``body`` at ``timestamp`` with ``secret``, recently.

    The receiver's check, identical to the snippet in this module's docstring (a test
    keeps them in step). ``now`` is unix seconds, the current time by default; a
    timestamp further than ``tolerance_s`` from it fails, which stops replays.
    """
    if isinstance(secret, str):
        secret = secret.encode()
    if isinstance(body, str):
        body = body.encode()
    timestamp = str(timestamp).strip()
    if not timestamp.isdigit():
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance_s:
        return False
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    # Several signatures, comma-separated, let a sender rotate its secret.
    for part in (header or "").split(","):
        scheme, _, signature = part.strip().partition("=")
        if scheme == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


class WebhookChannel(HttpChannel):
    """POSTs the signed ``turnout.alert.v1`` body to ``target.url``, signed with ``target.secret``."""

    kind = "webhook"

    def build(self, message: AlertMessage, target: Target, *, now: datetime) -> PreparedRequest:
        if not target.url:
            raise DeliveryError("webhook: no URL configured", transient=False)
        # Unsigned alerts would let anyone who finds the receiver's URL trigger its
        # automation, so a missing secret is a configuration error, not a fallback.
        if not target.secret:
            raise DeliveryError("webhook: no signing secret configured", transient=False)
        body = json_bytes(
            {
                "schema": SCHEMA,
                "id": message.message_id,
                "sent_at": format_utc(now),
                "alert": message.to_dict(),
            }
        )
        timestamp = int(now.timestamp())
        return PreparedRequest(
            method="POST",
            url=target.url,
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(target.secret, timestamp, body),
            },
            body=body,
        )
