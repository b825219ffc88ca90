"""A body over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), which Django refuses to read, is 413
``payload_too_large`` in the error format on every API path (the decision endpoints, OFREP, the
DRF views, ingest), through the full stack and the lean decision handler alike; it was Django's
HTML 400 everywhere but ingest. Pages keep Django's own 400."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from turnout.contract import ErrorCode

from controlplane import wsgi
from migrations_app.api.keys import apikey_create

pytestmark = pytest.mark.django_db

BODY = json.dumps({"padding": "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE}).encode()
PATHS = [
    ("post", "/api/v1/decide"),
    ("post", "/ofrep/v1/evaluate/flags/chat"),
    ("post", "/ofrep/v1/evaluate/flags"),
    ("post", "/api/v1/plans"),
    ("put", "/api/v1/plans/chat"),
    ("post", "/api/v1/plans/chat/pause"),
    ("post", "/api/v1/outcomes"),
    ("post", "/api/v1/shadow-samples"),
    ("post", "/api/v1/judge-samples"),
]


@pytest.fixture
def key() -> str:
    return apikey_create(name="all", scopes=["decide", "report", "plans", "admin"])[1]


def _check(status: int, content_type: str, body: bytes) -> None:
    assert (status, content_type) == (413, "application/json"), body[:200]
    assert json.loads(body) == {
        "code": ErrorCode.PAYLOAD_TOO_LARGE,
        "message": "The body is too large.",
        "details": {},
    }


@pytest.mark.parametrize(("method", "path"), PATHS)
def test_a_body_too_large_is_413_in_the_error_format(method: str, path: str, key: str) -> None:
    send = getattr(Client(), method)
    answer = send(
        path, data=BODY, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    _check(answer.status_code, answer["Content-Type"], answer.content)


@pytest.mark.django_db(transaction=True)  # a WSGI request closes the database connection
@pytest.mark.parametrize("path", ["/api/v1/decide", "/ofrep/v1/evaluate/flags/chat"])
def test_the_lean_decision_handler_answers_the_same(path: str, key: str) -> None:
    """What gunicorn runs: controlplane.wsgi.application, whose decision paths skip the
    middleware stack."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1", "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(BODY)), "HTTP_AUTHORIZATION": f"Bearer {key}",
        "wsgi.input": io.BytesIO(BODY), "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }  # fmt: skip
    started: list[Any] = []
    chunks = wsgi.application(environ, lambda status, headers: started.append((status, headers)))
    body = b"".join(chunks)
    status, headers = started[0]
    _check(int(status.split()[0]), dict(headers)["Content-Type"], body)


def test_pages_keep_djangos_400() -> None:
    form = b"username=" + b"x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    answer = Client().post(
        "/admin/login/", data=form, content_type="application/x-www-form-urlencoded"
    )
    assert answer.status_code == 400
    assert answer["Content-Type"].startswith("text/html")
