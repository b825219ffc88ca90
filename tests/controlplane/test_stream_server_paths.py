"""The stream server (``make run``'s uvicorn on TURNOUT_STREAM_PORT) serves the SDK change
stream and ``/healthz`` only: the admin, the API and the metrics used to answer 200 there too,
outside the API server's workers and limits. Everything else is a 404 in the error format."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from migrations_app.api.keys import apikey_create
from tests.conftest import eventually
from tests.controlplane.test_launcher import launcher  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

NOT_SERVED = [
    ("GET", "/admin/login/"),
    ("GET", "/api/v1/plans"),
    ("POST", "/api/v1/decide"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/api/v1/sdk/config"),
]


def test_the_stream_server_serves_the_stream_and_healthz_only(
    launcher: tuple[subprocess.Popen[bytes], str, str, set[int]],  # noqa: F811
) -> None:
    _proc, _web, stream, _started = launcher
    key = apikey_create(name="sdk", scopes=["decide", "report"])[1]
    auth = {"Authorization": f"Bearer {key}"}
    # The first request loads the URLconf and connects: slow on a loaded machine.
    assert eventually(
        lambda: httpx.get(f"{stream}/healthz", timeout=60).status_code == 200, timeout=180
    )
    assert httpx.get(f"{stream}/healthz", timeout=30).json() == {"status": "ok"}
    for method, path in NOT_SERVED:
        response = httpx.request(method, f"{stream}{path}", headers=auth, json={}, timeout=30)
        assert response.status_code == 404, (method, path, response.status_code)
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["code"] == "not_found"
        assert "/api/v1/sdk/stream" in body["message"]
    with httpx.stream(
        "GET", f"{stream}/api/v1/sdk/stream", headers=auth, timeout=httpx.Timeout(30.0)
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        first = next(response.iter_raw())
        assert first.startswith(b"retry:")
