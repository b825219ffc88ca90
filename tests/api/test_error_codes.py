"""The server answers only the wire contract's codes (turnout.contract): an error made with any
other code fails where it is made, here in the tests, not in an SDK that cannot map it."""

from __future__ import annotations

import pytest
from turnout.contract import ErrorCode, RejectionCode

from migrations_app.api.errors import error_body
from migrations_app.errors import DomainError, IllegalTransition, NotFound
from migrations_app.outcomes.event_checks import Invalid


def test_a_domain_error_carries_a_contract_code() -> None:
    assert DomainError("x").code == ErrorCode.ERROR
    assert NotFound("x", code="plan_not_found").code == ErrorCode.PLAN_NOT_FOUND
    assert IllegalTransition("x", code="routing_frozen").code == ErrorCode.ROUTING_FROZEN
    with pytest.raises(ValueError):
        DomainError("x", code="plan_missing")


def test_an_error_body_names_a_contract_code_as_plain_text() -> None:
    body = error_body("batch_too_large", "too many")
    assert body["code"] == "batch_too_large" and type(body["code"]) is str
    with pytest.raises(ValueError):
        error_body("batch_to_large", "a typo")


def test_a_rejected_event_carries_a_contract_rejection_code() -> None:
    assert Invalid("ts", "out_of_range", "late").code == RejectionCode.OUT_OF_RANGE
    with pytest.raises(ValueError):
        Invalid("ts", "too_late", "not a code of the contract")
