"""Domain errors. Each carries a stable ``code``, an HTTP status and details.

The API's one exception handler renders them as ``{"code", "message", "details"}``;
the SDK maps each code back to a typed exception.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    code = "error"
    status = 400

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details or {}


class ValidationFailed(DomainError):
    """Input does not describe a valid object; ``details["fields"]`` maps each field to its messages."""

    code = "validation_failed"
    status = 400


class NotFound(DomainError):
    code = "not_found"
    status = 404


class IllegalTransition(DomainError):
    """The plan's current status does not allow this action (rolled back is absorbing)."""

    code = "illegal_transition"
    status = 409


class VersionConflict(IllegalTransition):
    """The plan changed since the actor looked at it; act again on what it is now."""

    code = "version_conflict"
    status = 409
