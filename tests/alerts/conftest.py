"""A local HTTP receiver for the channels, the example messages and the snapshot helper."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from migrations_app.alerts import AlertMessage, ExamplePair, GuardrailVerdict, dedup_key

SNAPSHOTS = Path(__file__).parent / "snapshots"
# The clock every build sees, so timestamps and signatures are the same on every run.
FIXED_NOW = datetime(2025, 6, 3, 14, 2, 9, tzinfo=UTC)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    # Held until the test sets it: a receiver that is slow for exactly as long as needed.
    gate: threading.Event | None = None


class Receiver:
    """Records every request; answers with the queued replies, then with the default one."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.replies: list[Reply] = []
        self.default = Reply()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        Recorded("POST", self.path, dict(self.headers.items()), body)
                    )
                    reply = receiver.replies.pop(0) if receiver.replies else receiver.default
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.gate is not None:
                    reply.gate.wait()
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                try:
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the client gave up waiting (the timeout tests)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def reply(self, status: int, body: bytes = b"", **kwargs: object) -> None:
        self.replies.append(Reply(status, body, **kwargs))  # type: ignore[arg-type]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.close()


def rollback_message(**overrides: object) -> AlertMessage:
    """A rollback on error rate with full evidence: the example in every snapshot."""
    fields: dict[str, object] = {
        "plan_key": "support-chat",
        "plan_name": "Support chat: GPT-4o to Claude Sonnet 4",
        "run": 3,
        "event": "rolled_back",
        "severity": "critical",
        "reason": "error_rate regressed",
        "action_taken": "Rolled back: candidate traffic 25% -> 0%, every user on control",
        "acted_at": "2025-06-03T14:02:07+00:00",
        "dedup_key": dedup_key("support-chat", 3, "error_rate"),
        "dashboard_url": "https://turnout.example.com/plans/support-chat/runs/3/",
        "control_model": "openai:gpt-4o",
        "candidate_model": "anthropic:claude-sonnet-4",
        "guardrail": GuardrailVerdict(
            metric="error_rate",
            estimate=3.1,
            lower=2.2,
            upper=None,
            tolerance=1.5,
            tolerance_kind="relative",
            n_control=4812,
            n_candidate=1604,
            alpha=0.05,
            summary=(
                "candidate error rate is 3.1x control, at least 2.2x with 95% confidence; "
                "tolerance 1.5x: regressed"
            ),
            control_value=0.0121,
            candidate_value=0.0375,
        ),
        "error_kinds_control": {"timeout": 3, "server_error": 2},
        "error_kinds_candidate": {"server_error": 7, "rate_limit": 41, "timeout": 12},
        "examples": (
            ExamplePair(
                prompt="My order #4411 arrived damaged, can I get a refund?",
                control="I'm sorry to hear that! I've opened a refund request for order #4411.",
                candidate="(no answer: 429 rate_limit_error)",
            ),
            ExamplePair(
                prompt="How do I change the email on my account?",
                control="Go to Settings > Account > Email, enter the new address and confirm.",
                candidate="Open Settings, then Account, and edit the Email field <b>there</b>.",
            ),
        ),
    }
    fields.update(overrides)
    return AlertMessage(**fields)  # type: ignore[arg-type]


def recovered_message() -> AlertMessage:
    """The resolution of ``rollback_message``: same dedup key, ``resolve=True``."""
    return AlertMessage(
        plan_key="support-chat",
        plan_name="Support chat: GPT-4o to Claude Sonnet 4",
        run=3,
        event="recovered",
        severity="info",
        resolve=True,
        reason="error_rate back to baseline",
        action_taken="Nothing more: control error rate is back to its pre-migration level",
        acted_at="2025-06-03T14:09:37Z",
        dedup_key=dedup_key("support-chat", 3, "error_rate"),
        dashboard_url="https://turnout.example.com/plans/support-chat/runs/3/",
        control_model="openai:gpt-4o",
        candidate_model="anthropic:claude-sonnet-4",
    )


def cannot_evaluate_message() -> AlertMessage:
    """No guardrail verdict: the sample ratio does not match the configured split."""
    return AlertMessage(
        plan_key="support-chat",
        plan_name="Support chat: GPT-4o to Claude Sonnet 4",
        run=3,
        event="cannot_evaluate",
        severity="warning",
        reason="sample ratio mismatch",
        action_taken="Paused at 25%: 31% of outcomes come from the candidate, expected 25% (p < 0.001)",
        acted_at="2025-06-03T13:40:00Z",
        dedup_key=dedup_key("support-chat", 3, "sample_ratio"),
        dashboard_url="https://turnout.example.com/plans/support-chat/runs/3/",
        control_model="openai:gpt-4o",
        candidate_model="anthropic:claude-sonnet-4",
    )


def http_snapshot(request: Recorded, header_names: list[str]) -> bytes:
    """The request as on the wire: request line, the headers the channel sets, raw body."""
    lines = [f"{request.method} {request.path}"]
    lowered = {name.lower(): value for name, value in request.headers.items()}
    lines += [f"{name}: {lowered[name.lower()]}" for name in header_names]
    return ("\n".join(lines) + "\n\n").encode() + request.body + b"\n"


def assert_snapshot(name: str, data: bytes) -> None:
    """``data`` equals ``snapshots/<name>`` byte for byte; ``UPDATE_SNAPSHOTS=1`` rewrites it."""
    path = SNAPSHOTS / name
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.write_bytes(data)
    assert path.exists(), f"no snapshot {name}: run with UPDATE_SNAPSHOTS=1 and review the file"
    assert data == path.read_bytes(), f"{name} differs from its snapshot"
