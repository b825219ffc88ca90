"""Typed errors, one class per server error ``code``.

The hot path (``Client.decide``, ``Client.report``, ``Client.feedback``) never raises them
into the host application; they come from parsing snapshots, the admin API and the CLI.
The server renders every error as ``{"code", "message", "details"}`` (docs/contracts.md);
:func:`from_response` turns such a body back into the matching class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turnout.contract import ErrorCode


class TurnoutError(Exception):
    """Base class. ``code`` is the server's stable error code, ``status`` the HTTP status
    (``None`` when the error did not come from a response), ``details`` the field details."""

    code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status
        self.details: dict[str, Any] = details or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, message={self.message!r})"


class SnapshotError(TurnoutError):
    """A plan snapshot that does not follow the contract; a client keeps its last good one."""

    code = "invalid_snapshot"


class InvalidRequest(TurnoutError):
    """400: the request body or a parameter is not valid; ``details`` names the field."""

    code = "validation_failed"


class Unauthorized(TurnoutError):
    """401: no API key, or an unknown or revoked one."""

    code = "unauthenticated"


class Forbidden(TurnoutError):
    """403: the API key lacks the scope the operation needs."""

    code = "forbidden"


class NotFound(TurnoutError):
    """404: no such object."""

    code = "not_found"


class PlanNotFound(NotFound):
    """404: no plan with that key (or not visible to this API key)."""

    code = "plan_not_found"


class IllegalTransition(TurnoutError):
    """409: the plan is not in a state that allows the operation (it changed meanwhile)."""

    code = "illegal_transition"


class PayloadTooLarge(TurnoutError):
    """413: the body (``payload_too_large``) or the batch (``batch_too_large``, ``details``
    has the ``max``) is over the server's limit; a smaller one may pass."""

    code = "payload_too_large"


class Misdirected(TurnoutError):
    """421: this server does not serve the path (``stream_not_served_here``: the change
    stream); ``details["stream_url"]`` names the server that does, or is ``None``."""

    code = "stream_not_served_here"


class RateLimited(TurnoutError):
    """429: too many requests; ``retry_after`` is the server's ``Retry-After`` in seconds."""

    code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, details=details)
        self.retry_after = retry_after


class ServerError(TurnoutError):
    """5xx, or a response that is not the documented error shape."""

    code = "server_error"


#: The class of every code the server answers (turnout.contract.ErrorCode); variants of a class
#: share it, and a caller catches the class and reads ``.code``. ``error`` is the server's word
#: for "no code of its own": the status decides (see :func:`from_response`).
CLASS_BY_CODE: Mapping[ErrorCode, type[TurnoutError]] = {
    ErrorCode.VALIDATION_FAILED: InvalidRequest,
    ErrorCode.PARSE_ERROR: InvalidRequest,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: InvalidRequest,
    ErrorCode.NOT_ACCEPTABLE: InvalidRequest,
    ErrorCode.METHOD_NOT_ALLOWED: InvalidRequest,
    ErrorCode.UNAUTHENTICATED: Unauthorized,
    ErrorCode.FORBIDDEN: Forbidden,
    # A 409 from the server, but what it says is who may act: a person, not a key.
    ErrorCode.PERSON_REQUIRED: Forbidden,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.PLAN_NOT_FOUND: PlanNotFound,
    ErrorCode.UNKNOWN_ACTION: NotFound,
    ErrorCode.DATASET_NOT_FOUND: NotFound,
    ErrorCode.REPLAY_NOT_FOUND: NotFound,
    ErrorCode.ILLEGAL_TRANSITION: IllegalTransition,
    ErrorCode.VERSION_CONFLICT: IllegalTransition,
    ErrorCode.NO_NEXT_STEP: IllegalTransition,
    ErrorCode.ROUTING_FROZEN: IllegalTransition,
    ErrorCode.PLAN_NOT_STARTABLE: IllegalTransition,
    ErrorCode.START_WARNINGS: IllegalTransition,
    ErrorCode.DATASET_IN_USE: IllegalTransition,
    ErrorCode.DATASET_NAME_TAKEN: IllegalTransition,
    ErrorCode.NO_REPLAY_PHASE: IllegalTransition,
    ErrorCode.PAYLOAD_TOO_LARGE: PayloadTooLarge,
    ErrorCode.BATCH_TOO_LARGE: PayloadTooLarge,
    ErrorCode.STREAM_NOT_SERVED_HERE: Misdirected,
    ErrorCode.RATE_LIMITED: RateLimited,
    ErrorCode.ERROR: TurnoutError,
}
_BY_CODE: dict[str, type[TurnoutError]] = {str(code): cls for code, cls in CLASS_BY_CODE.items()}
# The SDK's own code for a 5xx (the server answers none with a body of this shape).
_BY_CODE[ServerError.code] = ServerError
_BY_STATUS: dict[int, type[TurnoutError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: IllegalTransition,
    413: PayloadTooLarge,
    421: Misdirected,
    429: RateLimited,
}


def error_class(code: str) -> type[TurnoutError]:
    """The exception class for a server error ``code`` (:class:`TurnoutError` if unknown)."""
    return _BY_CODE.get(code, TurnoutError)


def from_response(status: int, body: Any, *, retry_after: float | None = None) -> TurnoutError:
    """The typed error for an error response: its status and its decoded JSON body.

    An unknown code keeps its text in ``.code`` and gets the class its HTTP status implies,
    so a newer server's codes still land in a useful ``except`` clause.
    """
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        code: str = body["code"]
        message = str(body.get("message") or f"HTTP {status}")
        details = body.get("details") if isinstance(body.get("details"), dict) else {}
    else:
        code, message, details = "", f"HTTP {status}", {}
    cls = _BY_CODE.get(code, TurnoutError)
    if cls is TurnoutError:  # an unknown code, or the generic "error": the status decides
        cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else TurnoutError)
    if cls is RateLimited:
        return RateLimited(
            message, code=code or None, status=status, details=details, retry_after=retry_after
        )
    return cls(message, code=code or None, status=status, details=details)
