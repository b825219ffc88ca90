"""The decision endpoints outside DRF: DRF's contract kept (codes, statuses, messages), and no
database query or Redis round trip per request once warm."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.conf import settings
from django.test import Client, override_settings

from migrations_app.api import auth
from migrations_app.routing import changes
from tests.factories import started_plan

pytestmark = pytest.mark.django_db(transaction=True)


def _post(client: Client, url: str, body: Any, **extra: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(
        url, raw, content_type=extra.pop("content_type", "application/json"), **extra
    )


def test_method_media_type_and_auth_answers(api: Client) -> None:
    started_plan("chat")
    wrong_method = api.get("/api/v1/decide")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed" and "POST" in wrong_method["Allow"]
    text = _post(api, "/api/v1/decide", b"plan=chat", content_type="text/plain")
    assert text.status_code == 415 and text.json()["code"] == "unsupported_media_type"
    empty = api.post("/api/v1/decide", b"", content_type="application/json")
    assert empty.status_code == 400
    assert set(empty.json()["details"]["fields"]) == {"plan", "unit"}
    anonymous = _post(Client(), "/api/v1/decide", {"plan": "chat", "unit": "u"})
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    assert set(anonymous.json()) == {"code", "message", "details"}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"plan": None, "unit": True}, {"plan": "null", "unit": "string"}),
        ({"plan": "  ", "unit": " "}, {"plan": "blank"}),  # plan is trimmed, unit is not
        ({"plan": "chat", "unit": "u", "attributes": None}, {"attributes": "null"}),
        ({"plan": "c" * 64, "unit": {"id": 1}}, {"plan": "63", "unit": "string"}),
    ],
)
def test_every_bad_field_is_named_at_once(
    api: Client, body: dict[str, Any], fields: dict[str, str]
) -> None:
    response = _post(api, "/api/v1/decide", body)
    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == "validation_failed"
    named = payload["details"]["fields"]
    assert set(named) == set(fields)
    for name, word in fields.items():
        assert word in named[name][0]


def test_json_python_accepts_is_accepted(api: Client) -> None:
    """orjson refuses NaN and integers over 64 bits; Python's parser, the contract, does not."""
    started_plan("chat")
    body = b'{"plan": "chat", "unit": 123456789012345678901234567890, "attributes": {"x": NaN}}'
    response = _post(api, "/api/v1/decide", body)
    assert response.status_code == 200, response.content
    assert response.json()["unit"] == "123456789012345678901234567890"
    ofrep = _post(
        api, "/ofrep/v1/evaluate/flags/chat", b'{"context": {"targetingKey": "u", "x": NaN}}'
    )
    assert ofrep.status_code == 200


@pytest.mark.skipif(not settings.REDIS_URL, reason="the follower follows Redis")
@override_settings(TURNOUT_RATE_LIMIT_PER_KEY=2000)  # batches of 20
def test_warm_decisions_touch_neither_database_nor_redis(
    api: Client, monkeypatch: pytest.MonkeyPatch, django_assert_num_queries: Any
) -> None:
    started_plan("chat")
    for unit in ("warm-1", "warm-2"):  # the key, the snapshot and the follower, once
        assert _post(api, "/api/v1/decide", {"plan": "chat", "unit": unit}).status_code == 200
    deadline = time.monotonic() + 10
    # The listener has just vouched for the sequence (for TRUST_SECONDS): the 18 requests
    # below take milliseconds, so none of them has a reason to read Redis.
    while (
        changes._follower.trusted_until - time.monotonic() < changes.TRUST_SECONDS / 2
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    auth.forget_windows()  # a fresh window: 18 requests fill less than one batch of 20
    # Counted, not raised: both callers treat a failing Redis as unreachable and carry on.
    round_trips: list[str] = []
    read, sync = changes.current_sequence, auth._sync
    monkeypatch.setattr(
        changes, "current_sequence", lambda: round_trips.append("sequence") or read()
    )
    monkeypatch.setattr(
        auth, "_sync", lambda *args: round_trips.append("rate limit") or sync(*args)
    )
    with django_assert_num_queries(0):
        for i in range(9):
            decide = _post(api, "/api/v1/decide", {"plan": "chat", "unit": f"u{i}"})
            assert decide.status_code == 200
            ofrep = _post(api, "/ofrep/v1/evaluate/flags/chat", {"context": {"targetingKey": "u"}})
            assert ofrep.status_code == 200
    assert round_trips == []


def _wsgi(
    path: str, key: str, body: bytes = b"", method: str = "POST"
) -> tuple[str, dict[str, str], bytes]:
    """One request through the WSGI application gunicorn serves, not Django's test handler."""
    import io

    from controlplane.wsgi import application

    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": f"Bearer {key}",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "REMOTE_ADDR": "127.0.0.1",
    }
    started: list[Any] = []
    chunks = application(
        environ, lambda status, headers, exc=None: started.extend([status, headers])
    )
    content = b"".join(chunks)
    chunks.close()  # type: ignore[attr-defined]
    return started[0], dict(started[1]), content


def test_the_decision_routes_take_the_lean_stack_and_the_rest_the_full_one(sdk_key: str) -> None:
    from controlplane import wsgi
    from migrations_app.api import urls

    started_plan("chat")
    for pattern in urls.urlpatterns:  # every decision route is routed to the lean handler
        sample = "/" + str(pattern.pattern).replace("<str:key>", "chat")
        assert sample in wsgi.LEAN_PATHS or sample.startswith(wsgi.LEAN_PREFIX), sample
    status, headers, content = _wsgi(
        "/api/v1/decide", sdk_key, json.dumps({"plan": "chat", "unit": "u1"}).encode()
    )
    assert status.startswith("200") and json.loads(content)["plan"] == "chat"
    assert headers["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware is kept
    assert "X-Frame-Options" not in headers and headers["Content-Length"] == str(len(content))
    status, headers, content = _wsgi(
        "/ofrep/v1/evaluate/flags/chat", sdk_key, b'{"context": {"targetingKey": "u1"}}'
    )
    assert status.startswith("200") and json.loads(content)["key"] == "chat"
    status, _, content = _wsgi("/api/v1/ping", sdk_key, method="GET")
    assert status.startswith("200") and json.loads(content) == {"status": "ok"}
    status, headers, _ = _wsgi("/api/v1/sdk/config", sdk_key, method="GET")
    assert status.startswith("200") and headers["X-Frame-Options"] == "DENY"  # the full stack
    status, _, content = _wsgi("/api/v1/decide", "tk_nope_nope", b"{}")
    assert status.startswith("401") and json.loads(content)["code"] == "unauthenticated"


@pytest.mark.parametrize(
    ("raw_unit", "message"),
    [(b'"\\ud800"', "Surrogate characters"), (b'"a\\u0000b"', "Null characters")],
)
def test_units_routing_cannot_hash_are_refused(api: Client, raw_unit: bytes, message: str) -> None:
    started_plan("chat")
    response = _post(api, "/api/v1/decide", b'{"plan": "chat", "unit": ' + raw_unit + b"}")
    assert response.status_code == 400
    assert message in response.json()["details"]["fields"]["unit"][0]
    ofrep = _post(api, "/ofrep/v1/evaluate/flags/chat", b'{"context": {"targetingKey": "\\ud800"}}')
    assert ofrep.status_code == 400 and ofrep.json()["errorCode"] == "INVALID_CONTEXT"
