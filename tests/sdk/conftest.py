"""A stand-in control plane for the SDK tests: a stdlib HTTP server in a thread that speaks
docs/contracts.md exactly (config with ETag/304, the SSE stream, outcomes, feedback, shadow and
judge samples with gzip bodies) and can be told to fail, hang or rate-limit. It records what it received.

The real server has its own tests of the same contract (tests/api, tests/sdk/*_live.py);
these run without Django, PostgreSQL or Redis: ``pytest -p no:django tests/sdk``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import turnout

from tests.providers.conftest import sim, simulator  # noqa: F401 (the simulator, shared)

API_KEY = "tk_test_secret"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The live tests need Django and the real services; without pytest-django, skip them."""
    if collection_path.name.endswith("_live.py") and not config.pluginmanager.has_plugin("django"):
        return True
    return None


def arm(model: str, provider: str = "openai") -> dict[str, Any]:
    return {
        "provider": provider,
        "kind": provider,
        "base_url": "",
        "api_key_env": f"{provider.upper()}_API_KEY",
        "model": model,
        "params": {"temperature": 0.2, "max_tokens": 256},
        "prompt": {"mode": "none", "text": ""},
    }


def plan_entry(
    key: str = "chat",
    *,
    status: str = "running",
    weight_bp: int = 0,
    shadow_bp: int = 0,
    version: int = 1,
    salt: str = "salt-1",
) -> dict[str, Any]:
    return {
        "key": key,
        "version": version,
        "run": 1,
        "status": status,
        "phase": "rollout" if status == "running" else None,
        "phase_index": 0,
        "step_index": 0,
        "salt": salt,
        "weight_bp": weight_bp,
        "shadow_bp": shadow_bp,
        "control": arm("gpt-4o"),
        "candidate": arm("claude-sonnet-4", "anthropic"),
    }


def snapshot_body(plans: list[dict[str, Any]]) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(plans, sort_keys=True).encode()).hexdigest()[:20]
    return {"schema": 1, "version": digest, "plans": plans}


class FakeTurnout:
    """The control plane's SDK endpoints. Tests change its behaviour through attributes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.snapshot = snapshot_body([plan_entry()])
        self.event_id = 1
        self.config_status = 200
        self.config_delay = 0.0
        self.config_body: bytes | None = None  # raw override, e.g. malformed JSON
        self.stream_status = 200
        # Extra headers on config answers and on a refused stream (Turnout-Stream-URL).
        self.config_headers: dict[str, str] = {}
        self.stream_headers: dict[str, str] = {}
        self.stream_with_snapshot = True
        self.down = False  # drop every connection without an answer
        # While down, hold each connection unanswered until this opens (a server that hangs).
        self.down_until: threading.Event | None = None
        # A report batch holding an event this says yes to is answered 500, every time: an
        # event the server cannot store (a "poison" event).
        self.poison: Callable[[dict[str, Any]], bool] | None = None
        self.streams: list[queue.Queue[bytes | None]] = []
        self.requests: list[dict[str, Any]] = []  # every request: method, path, headers, status
        # Scripted answers per path, used first-in first-out before the normal 200.
        self.script: dict[str, deque[tuple[int, dict[str, str], bool]]] = {}
        self.batches: list[dict[str, Any]] = []  # every report POST: path, headers, body, status
        self.stored: dict[str, list[dict[str, Any]]] = {
            "outcomes": [],
            "feedback": [],
            "metrics": [],
            "shadow": [],
            "judge": [],
        }
        self.stored_ids: set[str] = set()
        self.duplicates = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # Connections the tests cut on purpose (``down``) are not errors worth a traceback.
        self._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    # --- what tests call ---

    @property
    def version(self) -> str:
        return str(self.snapshot["version"])

    def set_plans(self, plans: list[dict[str, Any]], *, push: bool = True) -> str:
        """Change the routing; with ``push`` every connected stream gets a config event."""
        with self.lock:
            self.snapshot = snapshot_body(plans)
            self.event_id += 1
            streams = list(self.streams)
        if push:
            for q in streams:
                q.put(self.config_event())
        return self.version

    def config_event(self) -> bytes:
        data: dict[str, Any] = {"version": self.version}
        if self.stream_with_snapshot:
            data["snapshot"] = self.snapshot
        return f"id: {self.event_id}\nevent: config\ndata: {json.dumps(data)}\n\n".encode()

    def end_streams(self) -> None:
        for q in list(self.streams):
            q.put(None)

    def then(
        self,
        path: str,
        status: int,
        headers: dict[str, str] | None = None,
        times: int = 1,
        *,
        store: bool = False,
    ) -> None:
        """Answer the next ``times`` requests to ``path`` with ``status``; with ``store`` the
        events are stored first (an answer lost on the way back)."""
        for _ in range(times):
            self.script.setdefault(path, deque()).append((status, headers or {}, store))

    def active_streams(self) -> int:
        return len(self.streams)

    def requests_to(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def stop(self) -> None:
        self._stopping.set()
        self.end_streams()
        self._server.shutdown()
        self._server.server_close()

    # --- the server ---

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without this, Nagle and delayed ACKs
            # stall every answer by 40 ms.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _record(self, status: int) -> None:
                with fake.lock:
                    fake.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": dict(self.headers),
                            "status": status,
                            "at": time.monotonic(),
                        }
                    )

            def _send(
                self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
            ) -> None:
                self._record(status)
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if status != 304:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body and status != 304:
                    self.wfile.write(body)

            def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
                self._send(
                    status,
                    json.dumps(data).encode(),
                    {"Content-Type": "application/json", **(headers or {})},
                )

            def _authorised(self) -> bool:
                auth = self.headers.get("Authorization", "")
                if auth == f"Bearer {API_KEY}" or self.headers.get("X-API-Key") == API_KEY:
                    return True
                self._json(
                    401,
                    {
                        "code": "unauthenticated",
                        "message": "An API key is required.",
                        "details": {},
                    },
                )
                return False

            def _drop_if_down(self) -> bool:
                if fake.down:
                    if fake.down_until is not None:
                        fake.down_until.wait()
                    self._record(0)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return True
                return False

            def do_GET(self) -> None:
                if self._drop_if_down() or not self._authorised():
                    return
                if self.path == "/api/v1/sdk/config":
                    self._config()
                elif self.path == "/api/v1/sdk/stream":
                    self._stream()
                else:
                    self._json(404, {"code": "not_found", "message": "Not found.", "details": {}})

            def _config(self) -> None:
                if fake.config_delay:
                    time.sleep(fake.config_delay)
                if fake.config_status != 200:
                    self._json(
                        fake.config_status, {"code": "error", "message": "down", "details": {}}
                    )
                    return
                etag = f'"{fake.version}"'
                if self.headers.get("If-None-Match") == etag:
                    self._send(304, headers={"ETag": etag, **fake.config_headers})
                    return
                body = (
                    fake.config_body
                    if fake.config_body is not None
                    else json.dumps(fake.snapshot).encode()
                )
                self._send(
                    200,
                    body,
                    {"Content-Type": "application/json", "ETag": etag, **fake.config_headers},
                )

            def _stream(self) -> None:
                if fake.stream_status != 200:
                    self._json(
                        fake.stream_status,
                        {"code": "error", "message": "no stream", "details": {}},
                        fake.stream_headers,
                    )
                    return
                self._record(200)
                q: queue.Queue[bytes | None] = queue.Queue()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                with fake.lock:
                    fake.streams.append(q)
                try:
                    self._chunk(b"retry: 100\n\n" + fake.config_event())
                    while not fake._stopping.is_set():
                        try:
                            item = q.get(timeout=0.1)
                        except queue.Empty:
                            continue
                        if item is None:
                            break
                        self._chunk(item)
                    self._chunk(b"")
                except OSError:
                    pass
                finally:
                    with fake.lock:
                        fake.streams.remove(q)
                    self.close_connection = True

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def do_POST(self) -> None:
                if self._drop_if_down():
                    return
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not self._authorised():
                    return
                kind = {
                    "/api/v1/outcomes": "outcomes",
                    "/api/v1/feedback": "feedback",
                    "/api/v1/metrics": "metrics",
                    "/api/v1/shadow-samples": "shadow",
                    "/api/v1/judge-samples": "judge",
                }.get(self.path)
                if kind is None:
                    self._json(404, {"code": "not_found", "message": "Not found.", "details": {}})
                    return
                body = (
                    gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                )
                payload = json.loads(body)
                scripted = fake.script.get(self.path)
                status, headers, store = scripted.popleft() if scripted else (200, {}, True)
                listed = payload["samples"] if kind in ("shadow", "judge") else payload["events"]
                if fake.poison is not None and any(fake.poison(e) for e in listed):
                    status, headers, store = 500, {}, False
                with fake.lock:
                    fake.batches.append(
                        {
                            "path": self.path,
                            "kind": kind,
                            "headers": dict(self.headers),
                            "raw": raw,
                            "payload": payload,
                            "status": status,
                        }
                    )
                stored = duplicates = 0
                with fake.lock:
                    for event in listed if store else []:
                        if event["id"] in fake.stored_ids:
                            duplicates += 1
                            fake.duplicates += 1
                            continue
                        fake.stored_ids.add(event["id"])
                        fake.stored[kind].append(event)
                        stored += 1
                if status != 200:
                    self._json(
                        status,
                        {"code": "error", "message": f"scripted {status}", "details": {}},
                        headers,
                    )
                    return
                self._json(200, {"stored": stored, "duplicates": duplicates, "rejected": []})

        return Handler


@pytest.fixture
def fake() -> Iterator[FakeTurnout]:
    server = FakeTurnout()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_client(fake: FakeTurnout) -> Iterator[Callable[..., turnout.Client]]:
    """Clients on the fake server, closed before it stops. Short intervals keep tests quick."""
    clients: list[turnout.Client] = []

    def make(**kwargs: Any) -> turnout.Client:
        options: dict[str, Any] = {"start_wait": 5.0, "max_backoff": 0.05, "flush_interval": 0.05}
        options.update(kwargs)
        url = options.pop("base_url", fake.url)
        clients.append(turnout.Client(url, options.pop("api_key", API_KEY), **options))
        return clients[-1]

    try:
        yield make
    finally:
        for client in clients:
            client.close(timeout=1.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
