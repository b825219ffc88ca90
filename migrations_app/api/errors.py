"""The API's one exception handler: every error is ``{"code", "message", "details"}``."""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from turnout.contract import ErrorCode

from migrations_app.errors import DomainError

log = logging.getLogger(__name__)

_DRF_CODES = {
    exceptions.NotAuthenticated: ErrorCode.UNAUTHENTICATED,
    exceptions.AuthenticationFailed: ErrorCode.UNAUTHENTICATED,
    exceptions.PermissionDenied: ErrorCode.FORBIDDEN,
    exceptions.NotFound: ErrorCode.NOT_FOUND,
    exceptions.MethodNotAllowed: ErrorCode.METHOD_NOT_ALLOWED,
    exceptions.NotAcceptable: ErrorCode.NOT_ACCEPTABLE,
    exceptions.UnsupportedMediaType: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    exceptions.ParseError: ErrorCode.PARSE_ERROR,
    exceptions.Throttled: ErrorCode.RATE_LIMITED,
    exceptions.ValidationError: ErrorCode.VALIDATION_FAILED,
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The error format. ``code`` must be one of the contract's (``ErrorCode``): a code the SDK
    cannot map to an exception fails here, in the tests, not in a client."""
    return {"code": ErrorCode(code).value, "message": message, "details": details or {}}


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> HttpResponse:
    """JSON through orjson, for the views outside DRF (the decision hot path)."""
    try:
        body = orjson.dumps(data)
    except orjson.JSONEncodeError:
        # Integers over 64 bits in a plan's params: orjson refuses them, Python writes them.
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return sized(
        HttpResponse(body, status=status, headers=headers, content_type="application/json")
    )


def sized(response: HttpResponse) -> HttpResponse:
    """With a Content-Length, gunicorn sends the body as is; without, it chunks it, which is
    one more write and one more packet per response."""
    response["Content-Length"] = str(len(response.content))
    return response


def error_response(
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    status: int,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    """The one error format, for the views outside DRF: the same body the handler renders."""
    return json_response(error_body(code, message, details), status=status, headers=headers)


# The paths whose clients read the error format (the API, OFREP); the rest are pages.
API_PATHS = ("/api/", "/ofrep/")


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 400 view (``handler400``), which every view's unhandled ``SuspiciousOperation``
    reaches, DRF's and the lean decision handler's included. A body over
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (Django refuses to read it) is, on the API's paths, 413
    ``payload_too_large`` in the error format, as ingest answers it, not Django's HTML 400."""
    if isinstance(exception, RequestDataTooBig) and request.path.startswith(API_PATHS):
        return error_response(ErrorCode.PAYLOAD_TOO_LARGE, "The body is too large.", status=413)
    return defaults.bad_request(request, exception)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 404 view (``handler404``), reached when no route matches: on the API's paths
    404 ``not_found`` in the error format (a path no route takes, a plan key with a NUL), the
    HTML page elsewhere. A route that matched answers its own 404 (``plan_not_found``...)."""
    if request.path.startswith(API_PATHS):
        return error_response(ErrorCode.NOT_FOUND, "No such API path.", status=404)
    return defaults.page_not_found(request, exception)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status)
    if isinstance(exc, OperationalError | InterfaceError):
        # The database unreachable, a deadlock, a cancelled statement: the server's trouble,
        # not the request's. 503 tells the SDK to keep the batch and wait; a 500 makes it
        # suspect the batch (it splits one answered 500 repeatedly, and drops what fails alone).
        log.warning("database unavailable: %r", exc)
        return Response(
            error_body(ErrorCode.ERROR, "The database is unavailable; try again shortly."),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None  # a real bug: let Django log it and answer 500
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), ErrorCode.ERROR)
    headers: dict[str, str] = {}
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        headers["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
    if isinstance(exc, exceptions.ValidationError):
        details: dict[str, Any] = {
            "fields": exc.detail
            if isinstance(exc.detail, dict)
            else {"non_field_errors": exc.detail}
        }
        message = "The request is not valid."
    else:
        details = {}
        message = str(exc.detail)
    status_code = exc.status_code
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        status_code = status.HTTP_401_UNAUTHORIZED
    return Response(error_body(code, message, details), status=status_code, headers=headers)


def error_paths(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """A serializer's nested errors as one map from each bad field's path to its messages:
    ``{"phases": [{}, {"steps": {0: [...]}}]}`` -> ``{"phases[1].steps[0]": [...]}``."""
    found: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):
                path = f"{prefix}[{key}]"
            elif key in ("non_field_errors", "__all__"):
                path = prefix or "non_field_errors"
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            for sub, messages in error_paths(value, path).items():
                found.setdefault(sub, []).extend(messages)
    elif isinstance(detail, list | tuple):
        if all(isinstance(item, str) for item in detail):
            found.setdefault(prefix or "non_field_errors", []).extend(str(i) for i in detail)
        else:
            for i, item in enumerate(detail):
                if item:
                    for sub, messages in error_paths(item, f"{prefix}[{i}]").items():
                        found.setdefault(sub, []).extend(messages)
    elif detail:
        found.setdefault(prefix or "non_field_errors", []).append(str(detail))
    return found
