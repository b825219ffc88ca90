"""Every HTTP channel classifies receiver failures the same way."""

from __future__ import annotations

import socket

import pytest

from migrations_app.alerts import DeliveryError, Target, get_channel

from .conftest import FIXED_NOW, Receiver, rollback_message

SECRET = "s3cret-routing-key-and-signing-secret"
KINDS = ["slack", "pagerduty", "webhook"]


def target(url: str) -> Target:
    return Target(url=url + "/T0000/B0000/hook-secret-path", secret=SECRET)


def deliver(kind: str, url: str, timeout_s: float = 2.0) -> DeliveryError:
    channel = get_channel(kind)
    channel.timeout_s = timeout_s
    with pytest.raises(DeliveryError) as caught:
        channel.deliver(rollback_message(), target(url), now=FIXED_NOW)
    error = caught.value
    # Error messages end up in the outbox and the admin: no URL, no secret.
    assert "hook-secret-path" not in str(error) and SECRET not in str(error)
    return error


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_and_rate_limits_are_transient(
    receiver: Receiver, kind: str, status: int
) -> None:
    receiver.reply(status, b"try later", headers={"Retry-After": "30"})
    error = deliver(kind, receiver.url)
    assert error.transient is True
    assert error.status_code == status
    assert error.retry_after_s == 30.0
    assert "try later" in error.message


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_client_errors_are_permanent(receiver: Receiver, kind: str, status: int) -> None:
    receiver.reply(status, b"invalid_payload")
    error = deliver(kind, receiver.url)
    assert error.transient is False
    assert error.status_code == status
    assert error.retry_after_s is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_redirect_is_not_followed(receiver: Receiver, kind: str) -> None:
    receiver.reply(301, headers={"Location": "https://elsewhere.example.com/"})
    assert deliver(kind, receiver.url).transient is False
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_is_transient(receiver: Receiver, kind: str) -> None:
    receiver.reply(200, b"ok", delay_s=1.0)
    error = deliver(kind, receiver.url, timeout_s=0.2)
    assert error.transient is True and error.status_code is None


@pytest.mark.parametrize("kind", KINDS)
def test_nobody_listening_is_transient(kind: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = deliver(kind, f"http://127.0.0.1:{port}")
    assert error.transient is True and error.status_code is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_malformed_url_is_permanent(kind: str) -> None:
    assert deliver(kind, "ftp://example.com").transient is False


def test_recovers_after_transient_failures(receiver: Receiver) -> None:
    receiver.reply(503)
    receiver.reply(429)
    channel = get_channel("webhook")
    for _ in range(2):
        with pytest.raises(DeliveryError):
            channel.deliver(rollback_message(), target(receiver.url), now=FIXED_NOW)
    assert (
        channel.deliver(rollback_message(), target(receiver.url), now=FIXED_NOW).status_code == 200
    )
    assert len(receiver.requests) == 3


def test_unknown_kind_is_permanent() -> None:
    with pytest.raises(DeliveryError) as caught:
        get_channel("carrier-pigeon")
    assert caught.value.transient is False
