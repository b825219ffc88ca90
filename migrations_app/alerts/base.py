"""The channel contract: build a request (pure), deliver it (I/O), fail with one error type.

A channel module defines one :class:`Channel` subclass; the registry in
``migrations_app.alerts`` maps each kind to it. ``build`` is a pure function of the
message, the target and the clock value passed in, so snapshot tests pin the exact
bytes; ``deliver`` sends and turns every vendor failure into :class:`DeliveryError`,
which says whether a retry may help.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from migrations_app.plans.json_checks import whole_number

from .message import AlertMessage

USER_AGENT = "Turnout-Alerts/1"
EXCERPT_CHARS = 300
# Alerts go out from a Celery worker that must not hang on a dead receiver: a short
# timeout turns a stuck endpoint into a transient failure the outbox retries later.
DEFAULT_TIMEOUT_S = 5.0


class DeliveryError(Exception):
    """A channel could not deliver a message.

    ``transient`` is True when the same delivery may succeed later (5xx, 429, timeout,
    connection error) and the outbox should retry with backoff; False when it will
    fail again until someone fixes the configuration or the payload (other 4xx, a
    missing URL, secret or recipient), so the outbox should mark it failed at once.
    ``retry_after_s`` carries a receiver's ``Retry-After`` when it sent one. The
    message never contains the target URL or secret.
    """

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.status_code = status_code
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return (
            f"DeliveryError({self.message!r}, transient={self.transient}, "
            f"status_code={self.status_code})"
        )


@dataclass(frozen=True)
class Target:
    """Where a channel delivers: resolved at delivery time, never stored or logged.

    ``url``: the Slack or webhook URL, or a PagerDuty endpoint override. ``secret``:
    the webhook signing secret or the PagerDuty routing key. ``recipients``: email
    addresses. The repr masks the URL and secret, since a Slack URL is itself a secret.
    """

    url: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)
    recipients: tuple[str, ...] = ()

    def redact(self, text: str) -> str:
        """``text`` with the URL and secret replaced, for error messages and logs."""
        for value in (self.url, self.secret):
            if value:
                text = text.replace(value, "[redacted]")
        return text


def resolve_target(
    *,
    url: str = "",
    url_env: str = "",
    secret_env: str = "",
    recipients: str | Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Target:
    """Build a :class:`Target` from the environment-variable names a channel row stores.

    ``NAME_FILE`` is read when ``NAME`` is unset, as for the other secrets. A named
    variable that is unset or empty raises a permanent :class:`DeliveryError`: no
    retry fixes a missing secret. ``recipients`` may be the row's comma-separated text.
    """
    env = os.environ if environ is None else environ
    if url_env:
        url = _env_value(url_env, env)
    secret = _env_value(secret_env, env) if secret_env else ""
    if isinstance(recipients, str):
        recipients = recipients.split(",")
    return Target(
        url=url.strip(),
        secret=secret.strip(),
        recipients=tuple(r.strip() for r in recipients if r.strip()),
    )


def shown_location(value: str) -> str:
    """Where a URL-valued secret points, safe to show: its scheme, host and port. The rest
    (a Slack path, a user and password, a database name) is the secret; a value that is not
    a URL is not shown at all."""
    if not value:
        return "(not set)"
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return "(set, not a URL)"
    host = parts.hostname
    if not parts.scheme or not host or not value.strip().startswith(f"{parts.scheme}://"):
        return "(set, not a URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}/…"


def _env_value(name: str, env: Mapping[str, str]) -> str:
    if value := env.get(name, ""):
        return value
    if path := env.get(f"{name}_FILE", ""):
        try:
            with open(path, encoding="utf-8") as handle:
                value = handle.read().strip()
        except OSError as exc:
            raise DeliveryError(
                f"cannot read {name}_FILE: {exc.strerror}", transient=False
            ) from None
        if value:
            return value
    raise DeliveryError(f"environment variable {name} is not set", transient=False)


@dataclass(frozen=True)
class PreparedRequest:
    """The exact HTTP request a channel sends; the URL stays out of the repr."""

    method: str
    url: str = field(repr=False)
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class DeliveryResult:
    """What the receiver answered: record it with the attempt."""

    status_code: int | None
    latency_ms: float
    response_excerpt: str


class Channel:
    """A kind of alert destination. Subclasses set ``kind`` and implement ``build``.

    ``deliver`` = ``send(build(...))``. Channels hold no state besides their timeout,
    so one instance serves every plan and thread.
    """

    kind: ClassVar[str] = ""

    def __init__(self, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s

    def build(self, message: AlertMessage, target: Target, *, now: datetime) -> Any:
        """The request for ``message``: pure, deterministic given ``now``.

        Raises a permanent :class:`DeliveryError` when ``target`` lacks what the
        channel needs.
        """
        raise NotImplementedError

    def send(self, prepared: Any, target: Target) -> DeliveryResult:
        """Send a built request; raises :class:`DeliveryError` on any failure."""
        raise NotImplementedError

    def deliver(self, message: AlertMessage, target: Target, *, now: datetime) -> DeliveryResult:
        """Build and send ``message`` to ``target``; raises :class:`DeliveryError`."""
        return self.send(self.build(message, target, now=now), target)


class HttpChannel(Channel):
    """A channel that POSTs JSON; success is any 2xx, everything else is classified."""

    def send(self, prepared: PreparedRequest, target: Target) -> DeliveryResult:
        started = time.perf_counter()
        try:
            # No redirects: a receiver that moved is a configuration to fix, and
            # following it could carry a signed body somewhere nobody chose.
            with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
                response = client.request(
                    prepared.method,
                    prepared.url,
                    headers=dict(prepared.headers),
                    content=prepared.body,
                )
        except httpx.TimeoutException:
            raise DeliveryError(
                f"{self.kind}: no answer within {self.timeout_s:g} s", transient=True
            ) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise DeliveryError(
                f"{self.kind}: bad URL: {target.redact(str(exc))}", transient=False
            ) from None
        except httpx.TransportError as exc:
            raise DeliveryError(
                f"{self.kind}: {type(exc).__name__}: {target.redact(str(exc))}", transient=True
            ) from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        text = target.redact(response.text[:EXCERPT_CHARS])
        status = response.status_code
        if 200 <= status < 300:
            return DeliveryResult(status_code=status, latency_ms=latency_ms, response_excerpt=text)
        transient = status == 429 or status >= 500
        raise DeliveryError(
            f"{self.kind}: receiver answered {status}: {text}".rstrip(": "),
            transient=transient,
            status_code=status,
            retry_after_s=_retry_after(response.headers.get("retry-after")) if transient else None,
        )


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), if usable."""
    if not value:
        return None
    value = value.strip()
    seconds = whole_number(value, 10**9)
    if seconds is not None:
        return float(seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def json_bytes(payload: Any) -> bytes:
    """The wire form of every JSON body: indented so snapshots and docs read as sent."""
    return json.dumps(payload, indent=2, ensure_ascii=False).encode("utf-8")
