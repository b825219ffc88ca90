"""Email through Django's mail backend (needs Django settings: run with DEBUG=1)."""

from __future__ import annotations

import smtplib

import pytest
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend

from migrations_app.alerts import DeliveryError, EmailChannel, Target, get_channel

from .conftest import FIXED_NOW, assert_snapshot, recovered_message, rollback_message

RECIPIENTS = ("oncall@example.com", "ml-platform@example.com")


@pytest.fixture
def outbox(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.DEFAULT_FROM_EMAIL = "turnout@example.com"
    mail.outbox = []
    return mail.outbox


def test_sends_text_and_html(outbox) -> None:
    result = get_channel("email").deliver(
        rollback_message(), Target(recipients=RECIPIENTS), now=FIXED_NOW
    )
    assert result.status_code is None and result.latency_ms >= 0
    [sent] = outbox
    assert sent.subject == "[Turnout] support-chat rolled back: error_rate regressed"
    assert sent.to == list(RECIPIENTS)
    assert sent.from_email == "turnout@example.com"
    assert sent.extra_headers["X-Turnout-Dedup-Key"] == "turnout:support-chat:3:error_rate"
    [(html, mimetype)] = sent.alternatives
    assert mimetype == "text/html"
    assert_snapshot("text_rolled_back.txt", sent.body.encode())
    assert_snapshot("email_rolled_back.html", html.encode())
    # Answer text is shown, not interpreted.
    assert "&lt;b&gt;there&lt;/b&gt;" in html


def test_resolution_threads_with_the_trigger(outbox) -> None:
    channel = EmailChannel()
    channel.deliver(rollback_message(), Target(recipients=RECIPIENTS), now=FIXED_NOW)
    channel.deliver(recovered_message(), Target(recipients=RECIPIENTS), now=FIXED_NOW)
    trigger, resolution = outbox
    assert resolution.subject == "[Turnout] support-chat recovered: error_rate back to baseline"
    assert trigger.extra_headers["References"] == resolution.extra_headers["References"]


def test_without_recipients_is_permanent() -> None:
    with pytest.raises(DeliveryError) as caught:
        EmailChannel().build(rollback_message(), Target(), now=FIXED_NOW)
    assert caught.value.transient is False


class FailingBackend(BaseEmailBackend):
    error: Exception = OSError("connection refused")

    def send_messages(self, email_messages):
        raise FailingBackend.error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OSError("connection refused"), True),
        (TimeoutError("timed out"), True),
        (smtplib.SMTPServerDisconnected("gone"), True),
        (smtplib.SMTPResponseException(421, b"try again later"), True),
        (smtplib.SMTPSenderRefused(553, b"sender rejected", "turnout@example.com"), False),
        (smtplib.SMTPRecipientsRefused({"oncall@example.com": (550, b"no such user")}), False),
    ],
)
def test_smtp_failures_are_classified(settings, error: Exception, transient: bool) -> None:
    settings.EMAIL_BACKEND = f"{__name__}.FailingBackend"
    FailingBackend.error = error
    with pytest.raises(DeliveryError) as caught:
        EmailChannel().deliver(rollback_message(), Target(recipients=RECIPIENTS), now=FIXED_NOW)
    assert caught.value.transient is transient
