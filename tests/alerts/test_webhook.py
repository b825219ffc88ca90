from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from migrations_app.alerts import DeliveryError, Target, WebhookChannel, get_channel, webhook
from migrations_app.alerts.webhook import SCHEMA, sign, verify_signature

from .conftest import FIXED_NOW, Receiver, assert_snapshot, http_snapshot, rollback_message

SECRET = "whsec-test-0123456789"
HEADERS = ["Content-Type", "User-Agent", "X-Turnout-Timestamp", "X-Turnout-Signature"]
SENT = int(FIXED_NOW.timestamp())


def snippet_verify() -> Any:
    """The verification snippet exactly as the module docstring documents it."""
    doc = webhook.__doc__ or ""
    start = doc.index("    import hashlib")
    end = doc.index("\nIn a Django view")
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent(doc[start:end]), namespace)
    return namespace["verify_signature"]


@pytest.fixture(params=["module", "docstring snippet"])
def verify(request: pytest.FixtureRequest) -> Any:
    return verify_signature if request.param == "module" else snippet_verify()


def test_payload_snapshot_and_signature(receiver: Receiver, verify: Any) -> None:
    result = get_channel("webhook").deliver(
        rollback_message(),
        Target(url=receiver.url + "/hooks/turnout", secret=SECRET),
        now=FIXED_NOW,
    )
    assert result.status_code == 200
    [request] = receiver.requests
    assert_snapshot("webhook_rolled_back.http", http_snapshot(request, HEADERS))
    body = json.loads(request.body)
    assert body["schema"] == SCHEMA == "turnout.alert.v1"
    assert body["alert"] == rollback_message().to_dict()
    assert SECRET not in request.body.decode()
    timestamp = request.headers["X-Turnout-Timestamp"]
    assert timestamp == str(SENT)
    assert verify(
        SECRET, timestamp, request.body, request.headers["X-Turnout-Signature"], now=SENT + 5
    )


def test_tampering_and_staleness_fail(verify: Any) -> None:
    prepared = WebhookChannel().build(
        rollback_message(), Target(url="https://x", secret=SECRET), now=FIXED_NOW
    )
    body, header = prepared.body, prepared.headers["X-Turnout-Signature"]
    assert verify(SECRET, SENT, body, header, now=SENT)
    assert not verify(SECRET, SENT, body.replace(b"critical", b"info"), header, now=SENT)
    assert not verify(SECRET, SENT + 1, body, header, now=SENT)
    assert not verify("another-secret", SENT, body, header, now=SENT)
    assert not verify(SECRET, SENT, body, header, now=SENT + 301)
    assert not verify(SECRET, SENT, body, header, now=SENT - 301)
    assert verify(SECRET, SENT, body, header, now=SENT + 3600, tolerance_s=3600)
    assert not verify(SECRET, "-1", body, header, now=SENT)
    assert not verify(SECRET, SENT, body, "", now=SENT)
    assert not verify(SECRET, SENT, body, header.replace("v1=", "v0="), now=SENT)


def test_accepts_any_of_several_signatures_for_rotation(verify: Any) -> None:
    body = b'{"schema": "turnout.alert.v1"}'
    header = f"{sign('old-secret', SENT, body)}, {sign(SECRET, SENT, body)}"
    assert verify(SECRET, SENT, body, header, now=SENT)
    assert verify("old-secret", SENT, body, header, now=SENT)


def test_retry_keeps_the_id_and_signs_a_new_timestamp() -> None:
    target = Target(url="https://x", secret=SECRET)
    first = WebhookChannel().build(rollback_message(), target, now=FIXED_NOW)
    later = WebhookChannel().build(rollback_message(), target, now=FIXED_NOW.replace(minute=7))
    assert json.loads(first.body)["id"] == json.loads(later.body)["id"]
    assert first.headers["X-Turnout-Timestamp"] != later.headers["X-Turnout-Timestamp"]


@pytest.mark.parametrize("target", [Target(url="https://x"), Target(secret=SECRET)])
def test_missing_url_or_secret_is_permanent(target: Target) -> None:
    with pytest.raises(DeliveryError) as caught:
        WebhookChannel().build(rollback_message(), target, now=FIXED_NOW)
    assert caught.value.transient is False
