"""WSGI entry point (gunicorn, with controlplane/gunicorn.conf.py).

The decision endpoints are served by a second Django handler whose only middleware is
``SecurityMiddleware`` (SSL redirect, nosniff, referrer policy). They authenticate by API key
and are CSRF-exempt, so sessions, CSRF, auth, messages, static files and frame options do
nothing for them, and the full stack cost about 65 us of their ~120 us in Django; resolving
against the whole project's URLconf (admin first) cost another ~15 us. Everything
else (admin, dashboard, the rest of the API) keeps the full ``MIDDLEWARE``. The ceiling the
decisions are benchmarked against (``/api/v1/ping``) takes the same lean path.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from typing import Any

from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest
from django.urls import ResolverMatch, get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

LEAN_PATHS = frozenset({"/api/v1/decide", "/api/v1/ping"})
LEAN_PREFIX = "/ofrep/v1/evaluate/flags"


DECISION_URLCONF = "migrations_app.api.urls"


class DecisionHandler(WSGIHandler):
    """Django's WSGI handler with ``SecurityMiddleware`` as its whole middleware stack, resolving
    against the decision routes only (``reverse()`` still uses the project's URLconf)."""

    def resolve_request(self, request: HttpRequest) -> ResolverMatch:
        match = get_resolver(DECISION_URLCONF).resolve(request.path_info)
        request.resolver_match = match
        return match

    def load_middleware(self, is_async: bool = False) -> None:
        from django.middleware.security import SecurityMiddleware

        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        inner = convert_exception_to_response(self._get_response)
        self._middleware_chain = convert_exception_to_response(SecurityMiddleware(inner))


_full = get_wsgi_application()  # sets Django up
_decisions = DecisionHandler()


def read_chunked(environ: dict[str, Any]) -> None:
    """A chunked request body (``Transfer-Encoding: chunked``, no ``Content-Length``): gunicorn
    decodes it on ``wsgi.input``, but Django reads ``CONTENT_LENGTH`` bytes, none without the
    header, so the body read as empty (400 parse_error "Expecting value"). Read it here, at
    most one byte over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (a longer one is then refused as any
    too-large body is: 413 payload_too_large), and give Django its length."""
    if (
        environ.get("CONTENT_LENGTH")
        or "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    ):
        return
    from django.conf import settings

    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = environ["wsgi.input"].read(limit + 1 if limit is not None else -1)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    read_chunked(environ)
    path = environ.get("PATH_INFO", "")
    if path in LEAN_PATHS or path.startswith(LEAN_PREFIX):
        return _decisions(environ, start_response)
    return _full(environ, start_response)
