"""ASGI entry points.

``application`` is the SDK change stream server (``make run``'s and compose's uvicorn on
``TURNOUT_STREAM_PORT``): the SSE stream holds connections open without a thread each. It
serves the stream path and ``/healthz`` only; every other path answers 404 in the API's error
format without reaching Django, so the admin, the API and the metrics are not reachable
on the stream port (they are the API server's, with its limits and workers).

``django_application`` is the whole Django app over ASGI (one server for everything: the
tests' live server uses it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
django_application = get_asgi_application()

from turnout.contract import STREAM_PATH, ErrorCode  # noqa: E402  (after Django's setup)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# What the stream server serves: the SDK change stream, and liveness for health checks.
STREAM_SERVER_PATHS = frozenset({STREAM_PATH, "/healthz"})

_NOT_HERE = json.dumps(
    {
        "code": ErrorCode.NOT_FOUND.value,
        "message": (
            "This is Turnout's SDK change stream server: it serves only "
            f"GET {STREAM_PATH} (and /healthz). The API, admin and dashboard are "
            "served by the API server (TURNOUT_PORT)."
        ),
        "details": {"served_paths": sorted(STREAM_SERVER_PATHS)},
    },
    separators=(",", ":"),
).encode()


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    """The stream server: the stream path and ``/healthz`` go to Django, anything else is a
    404 JSON error (lifespan and other scopes go to Django as before)."""
    if scope["type"] == "http" and scope.get("path") not in STREAM_SERVER_PATHS:
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_NOT_HERE)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _NOT_HERE})
        return
    await django_application(scope, receive, send)
