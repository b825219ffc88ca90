"""``python -m turnout replay``: what it sends, what it prints while it waits, and its exit
status (0 only on a pass), against a fake control plane (httpx.MockTransport)."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
from turnout import cli


def _replay(status: str, done: int, gates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "plan": {"key": "support-chat"},
        "replay": {
            "id": 7, "status": status, "decision": "", "dataset": "tickets",
            "dataset_version": 2, "repeats": 3, "items": 10, "calls_total": 30,
            "progress": {"pending": 30 - done, "running": 0, "done": done, "failed": 0,
                         "cancelled": 0},
            "gates": gates or [], "cost_usd": None, "seconds": None,
        },
    }  # fmt: skip


GATE = {
    "metric": "json_valid", "gate": "json_valid >= 0.99", "outcome": "fail",
    "interval": {"estimate": 0.9, "lower": 0.85, "upper": 0.95, "items": 10, "values": 30,
                 "level": 0.95},
    "reason": "...",
}  # fmt: skip


def run(answers: list[tuple[int, dict[str, Any]]], *args: str) -> tuple[int, str, str, list[Any]]:
    seen: list[Any] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, json.loads(request.content or b"null")))
        status, body = queue.pop(0) if len(queue) > 1 else queue[0]
        return httpx.Response(status, json=body)

    out, err = io.StringIO(), io.StringIO()
    code = cli.main(
        ["--url", "http://turnout.test", "--api-key", "tk_x", "replay", "support-chat",
         "--poll", "0", *args],
        out=out, err=err, transport=httpx.MockTransport(handler),
    )  # fmt: skip
    return code, out.getvalue(), err.getvalue(), seen


def test_wait_prints_progress_and_exits_0_on_a_pass():
    passed = {**GATE, "outcome": "pass"}
    code, out, _, seen = run(
        [(202, _replay("running", 0)), (200, _replay("running", 12)),
         (200, _replay("passed", 30, [passed]))],
        "--dataset", "tickets", "--wait",
    )  # fmt: skip
    assert code == 0
    assert seen[0] == (
        "POST", "/api/v1/plans/support-chat/replay",
        {"reason": "replay from the command line", "dataset": "tickets"},
    )  # fmt: skip
    assert {m for m, _, _ in seen[1:]} == {"GET"}
    assert "0/30 calls done" in out and "12/30 calls done" in out
    assert "pass  json_valid >= 0.99: 0.9 [0.85, 0.95] over 10 items" in out


def test_wait_exits_1_unless_it_passed():
    for status in ("failed", "inconclusive", "not_evaluated", "cancelled"):
        code, out, _, _ = run([(202, _replay("running", 0)), (200, _replay(status, 30, [GATE]))],
                              "--wait")  # fmt: skip
        assert code == 1, status


def test_refusal_exits_1_and_says_why():
    code, _, err, _ = run(
        [(404, {"code": "dataset_not_found", "message": "No dataset 'x'.", "details": {}})],
        "--dataset", "x",
    )  # fmt: skip
    assert code == 1 and "dataset_not_found" in err


def test_without_wait_it_returns_once_started():
    code, out, _, seen = run([(202, _replay("running", 0))])
    assert code == 0 and len(seen) == 1 and "running" in out


def test_unreachable_exits_3():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    err = io.StringIO()
    code = cli.main(
        ["--url", "http://turnout.test", "--api-key", "k", "replay", "p", "--wait"],
        out=io.StringIO(), err=err, transport=httpx.MockTransport(handler),
    )  # fmt: skip
    assert code == 3 and "cannot reach" in err.getvalue()
