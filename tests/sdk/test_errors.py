"""turnout.errors: each server error code maps back to one typed exception."""

from __future__ import annotations

import pytest
import turnout
from turnout import errors


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "plan_not_found", turnout.PlanNotFound),
        (401, "unauthenticated", turnout.Unauthorized),
        (403, "forbidden", turnout.Forbidden),
        (429, "rate_limited", turnout.RateLimited),
        (400, "validation_failed", turnout.InvalidRequest),
        (400, "parse_error", turnout.InvalidRequest),
        (409, "illegal_transition", turnout.IllegalTransition),
        (409, "version_conflict", turnout.IllegalTransition),
        (404, "not_found", turnout.NotFound),
        # Codes without a class of their own land in their family.
        (413, "payload_too_large", turnout.PayloadTooLarge),
        (413, "batch_too_large", turnout.PayloadTooLarge),
        (404, "unknown_action", turnout.NotFound),
        (421, "stream_not_served_here", turnout.Misdirected),
        (409, "routing_frozen", turnout.IllegalTransition),
        (409, "plan_not_startable", turnout.IllegalTransition),
        (409, "start_warnings", turnout.IllegalTransition),
        (409, "person_required", turnout.Forbidden),
        (405, "method_not_allowed", turnout.InvalidRequest),
    ],
)
def test_codes_map_to_classes(status: int, code: str, cls: type[turnout.TurnoutError]) -> None:
    body = {"code": code, "message": "No plan with key 'x'.", "details": {"field": "plan"}}
    error = errors.from_response(status, body)
    assert type(error) is cls and isinstance(error, turnout.TurnoutError)
    assert (error.code, error.status, error.details) == (code, status, {"field": "plan"})
    assert str(error) == "No plan with key 'x'." and errors.error_class(code) is cls


def test_a_plan_not_found_is_a_not_found() -> None:
    with pytest.raises(turnout.NotFound):
        raise errors.from_response(404, {"code": "plan_not_found", "message": "m", "details": {}})


def test_unknown_codes_and_bodies_fall_back_on_the_status() -> None:
    newer = errors.from_response(403, {"code": "quota_exceeded", "message": "m"})
    assert type(newer) is turnout.Forbidden and newer.code == "quota_exceeded"
    assert type(errors.from_response(502, "<html>bad gateway</html>")) is turnout.ServerError
    assert type(errors.from_response(418, None)) is turnout.TurnoutError
    limited = errors.from_response(429, {"code": "rate_limited", "message": "m"}, retry_after=2.0)
    assert isinstance(limited, turnout.RateLimited) and limited.retry_after == 2.0


def test_class_defaults() -> None:
    error = turnout.SnapshotError("bad", details={"field": "plans"})
    assert (error.code, error.status, error.details) == (
        "invalid_snapshot",
        None,
        {"field": "plans"},
    )
    assert "invalid_snapshot" in repr(error)
