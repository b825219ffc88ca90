"""A chunked request body (Transfer-Encoding: chunked, no Content-Length) through gunicorn, as
``make run`` serves the API (issue 14, item 11): it was read as empty (400 parse_error
"Expecting value"); now it is read like any body, on the lean decision path and the DRF API,
and one over DATA_UPLOAD_MAX_MEMORY_SIZE is 413 payload_too_large."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from django.conf import settings

from migrations_app.api.keys import apikey_create
from tests.processes import Gunicorn

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server(transactional_db: None) -> Iterator[Gunicorn]:
    gunicorn = Gunicorn()
    yield gunicorn
    gunicorn.stop()


def chunks(body: bytes, size: int = 7) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def post(url: str, key: str, body: bytes, *, chunked: bool) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    content = chunks(body) if chunked else body  # a generator: httpx sends it chunked
    return httpx.post(url, content=content, headers=headers, timeout=60)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/v1/decide", {"plan": "no-such-plan", "unit": "user-1"}),
        ("/api/v1/plans", {"key": "chunked", "name": ""}),
    ],
)
def test_a_chunked_body_is_read_as_the_same_body_with_a_length(
    server: Gunicorn, path: str, body: dict[str, str]
) -> None:
    key = apikey_create(name="all", scopes=["decide", "report", "plans", "admin"])[1]
    raw = json.dumps(body).encode()
    whole = post(f"{server.url}{path}", key, raw, chunked=False)
    chunked = post(f"{server.url}{path}", key, raw, chunked=True)
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in chunked.request.headers
    assert chunked.json().get("code") != "parse_error", chunked.text
    assert (chunked.status_code, chunked.json()) == (whole.status_code, whole.json())


def test_a_chunked_body_over_the_limit_is_413(transactional_db: None) -> None:
    # Under DEBUG Django answers a refused body with its debug page, not handler400.
    server = Gunicorn({"DEBUG": "0", "SECRET_KEY": "chunked-test-" + "k" * 40})
    try:
        _over_the_limit(server)
    finally:
        server.stop()


def _over_the_limit(server: Gunicorn) -> None:
    key = apikey_create(name="all", scopes=["decide"])[1]
    raw = json.dumps({"padding": "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE}).encode()
    response = post(f"{server.url}/api/v1/decide", key, raw, chunked=True)
    assert response.status_code == 413, response.text[:300]
    assert response.json()["code"] == "payload_too_large"
