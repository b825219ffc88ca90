"""Typed errors. The hot path (``decide``, ``report``) never raises them into the host
application; they come from parsing, the admin API and the CLI. Each server error ``code``
maps to one class."""

from __future__ import annotations

from typing import Any


class TurnoutError(Exception):
    """Base class: ``code`` is the server's stable error code, ``status`` the HTTP status."""

    code = "error"

    def __init__(
        self, message: str, *, status: int | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.details = details or {}


class SnapshotError(TurnoutError):
    """A plan snapshot that does not follow the contract; the client keeps its last good one."""

    code = "invalid_snapshot"


class InvalidRequest(TurnoutError):
    code = "validation_failed"


class Unauthorized(TurnoutError):
    code = "unauthenticated"


class Forbidden(TurnoutError):
    code = "forbidden"


class PlanNotFound(TurnoutError):
    code = "plan_not_found"


class IllegalTransition(TurnoutError):
    code = "illegal_transition"


class RateLimited(TurnoutError):
    code = "rate_limited"


_BY_CODE: dict[str, type[TurnoutError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        Unauthorized,
        Forbidden,
        PlanNotFound,
        IllegalTransition,
        RateLimited,
    )
}
_BY_CODE["version_conflict"] = IllegalTransition
_BY_CODE["no_next_step"] = IllegalTransition
_BY_CODE["parse_error"] = InvalidRequest


def from_response(status: int, body: Any) -> TurnoutError:
    """The typed error for a server error body ``{"code", "message", "details"}``."""
    code = body.get("code", "error") if isinstance(body, dict) else "error"
    message = body.get("message", f"HTTP {status}") if isinstance(body, dict) else f"HTTP {status}"
    details = body.get("details", {}) if isinstance(body, dict) else {}
    error = _BY_CODE.get(code, TurnoutError)(message, status=status, details=details)
    error.code = code
    return error
