"""Domain errors. Each carries a stable ``code``, an HTTP status and details.

The API's one exception handler renders them as ``{"code", "message", "details"}``;
the SDK maps each code back to a typed exception. Codes are the wire contract's
(``turnout.contract.ErrorCode``): an error made with any other code fails where it is made,
so the server cannot answer a code the SDK does not know.
"""

from __future__ import annotations

from typing import Any

from turnout.contract import ErrorCode


class DomainError(Exception):
    code: str = ErrorCode.ERROR
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
            self.code = ErrorCode(code)  # ValueError: not a code of the contract
        if status is not None:
            self.status = status
        self.details = details or {}


class ValidationFailed(DomainError):
    """Input does not describe a valid object; ``details["fields"]`` maps each field to its messages."""

    code = ErrorCode.VALIDATION_FAILED
    status = 400


class NotFound(DomainError):
    code = ErrorCode.NOT_FOUND
    status = 404


class IllegalTransition(DomainError):
    """The plan's current status does not allow this action (rolled back is absorbing)."""

    code = ErrorCode.ILLEGAL_TRANSITION
    status = 409


class VersionConflict(IllegalTransition):
    """The plan changed since the actor looked at it; act again on what it is now."""

    code = ErrorCode.VERSION_CONFLICT
    status = 409
