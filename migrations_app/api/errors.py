"""The API's one exception handler: every error is ``{"code", "message", "details"}``."""

from __future__ import annotations

import json
from typing import Any

import orjson
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from migrations_app.errors import DomainError

_DRF_CODES = {
    exceptions.NotAuthenticated: "unauthenticated",
    exceptions.AuthenticationFailed: "unauthenticated",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.ParseError: "parse_error",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "validation_failed",
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details or {}}


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


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None  # a real bug: let Django log it and answer 500
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
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
