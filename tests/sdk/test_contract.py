"""turnout.contract: the codes the server answers are the contract's, and each maps to a typed
SDK exception.

The server's codes are read from its source (an AST walk over migrations_app/), not from its
modules: these tests run without Django (``pytest -p no:django tests/sdk``) and keep working
while the server's modules move. A walk that finds too little fails loudly, so it cannot pass
by going blind.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import turnout
from turnout import contract, errors
from turnout.contract import ErrorCode, RejectionCode

SERVER = Path(__file__).resolve().parents[2] / "migrations_app"
# Not the JSON API: the simulator speaks the vendors' error formats, the dashboard and the
# admin render HTML pages for people, and schema migrations hold no errors.
NOT_THE_API = {"simulator", "dashboard", "migrations", "templatetags", "admin", "admin.py"}
# The exception handler's name for an APIException it has no code for (a default argument,
# not a literal the walk below can tell from any other string).
HANDLER_DEFAULT = "error"


def _server_modules() -> Iterator[ast.Module]:
    for path in sorted(SERVER.rglob("*.py")):
        if NOT_THE_API.isdisjoint(path.relative_to(SERVER).parts):
            yield ast.parse(path.read_text(), filename=str(path))


def _text(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name | ast.Attribute)
        and node.attr in ErrorCode.__members__
        and (getattr(node.value, "id", "") or getattr(node.value, "attr", "")) == "ErrorCode"
    ):
        return ErrorCode[node.attr].value  # the server naming the contract's enum
    return None


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def _error_codes(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        found: list[str | None] = []
        if isinstance(node, ast.Call):
            # DomainError(..., code="x"), and the views' error_response("x", ...).
            found += [_text(k.value) for k in node.keywords if k.arg == "code"]
            if _callee(node) in {"error_response", "error_body"} and node.args:
                found.append(_text(node.args[0]))
        elif isinstance(node, ast.ClassDef):
            # class NotFound(DomainError): code = "not_found"
            for item in node.body:
                if isinstance(item, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "code" for t in item.targets
                ):
                    found.append(_text(item.value))
        elif isinstance(node, ast.Dict):
            # {"code": "x", ...} bodies written by hand
            found += [
                _text(v) for k, v in zip(node.keys, node.values, strict=True) if _text(k) == "code"
            ]
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            # _DRF_CODES = {exceptions.NotFound: "not_found", ...}
            if any(isinstance(t, ast.Name) and t.id.endswith("_CODES") for t in node.targets):
                found += [_text(v) for v in node.value.values]
        elif isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            # b'event: error\ndata: {"code":"unauthenticated",...}'
            for part in node.value.split(b'"code":"')[1:]:
                found.append(part.split(b'"', 1)[0].decode())
        yield from (code for code in found if code)


def _rejection_codes(tree: ast.Module) -> Iterator[str]:
    # Invalid(field, code, message) and Rejection(index, field, code, message)
    position = {"Invalid": 1, "Rejection": 2}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) in position:
            index = position[_callee(node)]
            code = _text(node.args[index]) if len(node.args) > index else None
            if code:
                yield code


def server_error_codes() -> set[str]:
    codes = {HANDLER_DEFAULT}
    for tree in _server_modules():
        codes.update(_error_codes(tree))
    return codes


def server_rejection_codes() -> set[str]:
    return {code for tree in _server_modules() for code in _rejection_codes(tree)}


def test_the_walk_sees_the_server_s_codes() -> None:
    """Codes answered in each way the server answers them: raised with code=, a class's code,
    error_response(), DRF's exceptions, the stream's hand-written error event."""
    seen = server_error_codes()
    assert {
        "payload_too_large",  # code= in the ingest view
        "batch_too_large",  # code= in the batch checks
        "unknown_action",  # code= in the plans API
        "validation_failed",  # a DomainError subclass's code
        "method_not_allowed",  # error_response() in the decide view, and DRF
        "unsupported_media_type",  # DRF
        "not_acceptable",  # DRF
        "stream_not_served_here",  # error_body() in the stream view
        "unauthenticated",  # the stream's error event (bytes)
    } <= seen
    assert {"invalid", "required", "out_of_range", "over_model_limit", "run_mismatch"} <= (
        server_rejection_codes()
    )


def test_every_code_the_server_answers_is_in_the_contract() -> None:
    unknown = server_error_codes() - set(ErrorCode)
    assert not unknown, f"add these to turnout.contract.ErrorCode: {sorted(unknown)}"


def test_every_rejection_code_the_server_answers_is_in_the_contract() -> None:
    unknown = server_rejection_codes() - set(RejectionCode)
    assert not unknown, f"add these to turnout.contract.RejectionCode: {sorted(unknown)}"


def test_every_code_maps_to_an_sdk_exception() -> None:
    assert set(errors.CLASS_BY_CODE) == set(ErrorCode)
    for code in server_error_codes():
        assert issubclass(errors.error_class(code), turnout.TurnoutError)
        assert code == HANDLER_DEFAULT or errors.error_class(code) is not turnout.TurnoutError, code


def test_the_generic_code_is_classed_by_its_status() -> None:
    assert type(errors.from_response(404, {"code": "error", "message": "m"})) is turnout.NotFound
    assert type(errors.from_response(503, {"code": "error", "message": "m"})) is turnout.ServerError
    assert (
        type(errors.from_response(418, {"code": "error", "message": "m"})) is turnout.TurnoutError
    )


def test_the_sdk_reads_the_contract() -> None:
    """One definition each: the SDK's public names are the contract's objects."""
    from turnout import client, providers
    from turnout.providers import params

    assert turnout.ERROR_KINDS is contract.ERROR_KINDS is providers.ERROR_KINDS
    assert providers.TRANSIENT_KINDS is contract.TRANSIENT_KINDS
    assert turnout.FALLBACK_CANDIDATE_ERROR == contract.FALLBACK_CANDIDATE_ERROR
    assert client.FEEDBACK_SCALES is contract.FEEDBACK_SCALES
    assert client.FALLBACK_REASONS is contract.FALLBACK_REASONS
    assert client.ROLES is contract.ROLES
    assert (params.NOT_ALLOWED, params.INVALID) == (
        RejectionCode.PARAM_NOT_ALLOWED,
        RejectionCode.INVALID,
    )
