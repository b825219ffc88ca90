"""Email through Django's mail backend: the plain-text page plus a simple HTML part.

Recipients come from the target. SMTP 4xx replies, a refused connection and a
timeout are transient; 5xx replies (unknown mailbox, rejected sender) are permanent.
"""

from __future__ import annotations

import hashlib
import smtplib
import time
from dataclasses import dataclass
from datetime import datetime
from html import escape

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection

from .base import Channel, DeliveryError, DeliveryResult, Target
from .message import AlertMessage
from .render import arm_line, bounds_line, error_kinds_line, render_text

SUBJECT_PREFIX = "[Turnout] "


@dataclass(frozen=True)
class PreparedEmail:
    """The exact email a channel sends."""

    subject: str
    to: tuple[str, ...]
    text: str
    html: str
    headers: dict[str, str]


def subject(message: AlertMessage) -> str:
    """``[Turnout] support-chat rolled back: error_rate regressed``."""
    return SUBJECT_PREFIX + message.headline


def render_html(message: AlertMessage) -> str:
    """The page as a minimal HTML document (no external assets, readable unstyled)."""
    e = escape
    parts = [
        "<!doctype html>",
        '<html><body style="font-family: sans-serif; line-height: 1.4">',
        f"<h2>{e(message.headline)}</h2>",
        f"<p><strong>{e(message.plan_name)}</strong> ({e(message.plan_key)}, run {message.run})<br>",
        f"<strong>What Turnout did at {e(message.acted_at)}:</strong> {e(message.action_taken)}</p>",
    ]
    verdict = message.guardrail
    if verdict is not None:
        parts += [
            f"<p><strong>Guardrail {e(verdict.metric)}:</strong> {e(verdict.summary)}<br>",
            f"{e(bounds_line(verdict))}</p>",
            '<table cellpadding="4" style="border-collapse: collapse">',
            "<tr><th align=left>control</th><td>"
            f"{e(arm_line(message.control_model, verdict.control_value, verdict.n_control))}</td></tr>",
            "<tr><th align=left>candidate</th><td>"
            f"{e(arm_line(message.candidate_model, verdict.candidate_value, verdict.n_candidate))}"
            "</td></tr>",
            "</table>",
        ]
    if errors := error_kinds_line(message):
        parts.append(f"<p><strong>Errors seen:</strong> {e(errors)}</p>")
    for number, pair in enumerate(message.examples, start=1):
        parts += [
            f"<h3>Example {number}</h3>",
            f"<blockquote>{e(pair.prompt)}</blockquote>",
            f"<p><strong>Control:</strong></p><blockquote>{e(pair.control)}</blockquote>",
            f"<p><strong>Candidate:</strong></p><blockquote>{e(pair.candidate)}</blockquote>",
        ]
    parts += [
        f'<p><a href="{e(message.dashboard_url)}">Open the plan dashboard</a></p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


class EmailChannel(Channel):
    """Sends through ``settings.EMAIL_BACKEND`` from ``DEFAULT_FROM_EMAIL`` to ``target.recipients``."""

    kind = "email"

    def build(self, message: AlertMessage, target: Target, *, now: datetime) -> PreparedEmail:
        if not target.recipients:
            raise DeliveryError("email: no recipients configured", transient=False)
        # A References header shared by every message of one incident makes mail
        # clients thread the trigger, escalation and resolution together.
        thread = hashlib.sha256(message.dedup_key.encode()).hexdigest()[:32]
        return PreparedEmail(
            subject=subject(message),
            to=target.recipients,
            text=render_text(message),
            html=render_html(message),
            headers={
                "References": f"<{thread}@turnout>",
                "X-Turnout-Dedup-Key": message.dedup_key,
                "X-Turnout-Event": message.event,
            },
        )

    def send(self, prepared: PreparedEmail, target: Target) -> DeliveryResult:
        mail = EmailMultiAlternatives(
            subject=prepared.subject,
            body=prepared.text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=list(prepared.to),
            headers=dict(prepared.headers),
            # Django's SMTP backend waits forever by default; a worker must not.
            connection=get_connection(timeout=self.timeout_s),
        )
        mail.attach_alternative(prepared.html, "text/html")
        started = time.perf_counter()
        try:
            sent = mail.send(fail_silently=False)
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(
                f"email: server answered {exc.smtp_code}",
                transient=400 <= exc.smtp_code < 500,
                status_code=exc.smtp_code,
            ) from None
        except smtplib.SMTPRecipientsRefused:
            raise DeliveryError("email: every recipient was refused", transient=False) from None
        except (smtplib.SMTPException, OSError) as exc:
            # Disconnects, refused connections and timeouts: the server may be back soon.
            raise DeliveryError(f"email: {type(exc).__name__}: {exc}", transient=True) from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        return DeliveryResult(
            status_code=None,
            latency_ms=latency_ms,
            response_excerpt=f"sent {sent} message to {len(prepared.to)} recipient(s)",
        )
