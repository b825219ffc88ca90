"""The provider simulator's HTTP server: the vendor routes and the ``/_sim`` control endpoint.

One ``ThreadingHTTPServer``: a thread per connection, so hundreds of requests held for their
simulated latency at once cost hundreds of sleeping threads and no CPU (the shadow benchmark
drives it at 200+ calls/s with 200 ms each). Randomness is one ``random.Random`` per model,
seeded from ``(seed, model)``: a model's draws do not depend on how much traffic the other
models got, so a run is reproducible per model (exactly so when its requests are sequential).
"""

from __future__ import annotations

import json
import random
import re
import socket
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from migrations_app.simulator import vendors
from migrations_app.simulator.profiles import Profile, Prompted, count_tokens, generate

_GEMINI = re.compile(
    r"^/(v1|v1beta)/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$"
)
_PROFILE = re.compile(r"^/_sim/profiles/(?P<model>[^/]+)$")
#: The model name whose profile is the default for models without one of their own.
DEFAULT = "*"


@dataclass(frozen=True, slots=True)
class Draw:
    """What happens to one request, decided under the lock."""

    profile: Profile
    error: str | None
    latency_s: float
    rng: random.Random
    number: int


class Simulator:
    """A provider simulator: start it in-process (``with Simulator(...) as sim:``) or run
    ``python -m migrations_app.simulator``. ``url`` is its root; point the SDKs at
    ``url + "/v1"`` (openai), ``url`` (anthropic, google-genai)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        profiles: Mapping[str, Profile] | None = None,
        default: Profile | None = None,
    ) -> None:
        self.seed = seed
        self._initial = {DEFAULT: default or Profile(), **dict(profiles or {})}
        self._lock = threading.Lock()
        self._profiles: dict[str, Profile] = {}
        self._rngs: dict[str, random.Random] = {}
        self._stats: dict[str, Counter[str]] = defaultdict(Counter)
        self._requests = 0
        self._last: dict[str, Prompted] = {}
        self._in_flight = 0
        self._peak = 0
        # Per model, the barrier its ``gather`` holds requests at, and how many it opened.
        self._gates: dict[str, threading.Barrier] = {}
        self._gathered: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.reset()
        self.httpd = _Server((host, port), _Handler)
        self.httpd.simulator = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}"

    # --- lifecycle ---

    def start(self) -> Simulator:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="provider-simulator", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.stopping.set()  # wakes requests held in a simulated latency or hang
        self._open_gates()  # and those held by ``gather``, before shutdown waits on them
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- control ---

    def reset(self) -> None:
        """Profiles back to those given at start, counters to zero, generators reseeded."""
        with self._lock:
            self._profiles = dict(self._initial)
            self._rngs = {}
            self._stats = defaultdict(Counter)
            self._requests = 0
            self._last = {}
            self._peak = self._in_flight
            gates, self._gates = self._gates, {}
            self._gathered = Counter()
        for gate in gates.values():
            gate.abort()  # requests held there go on

    def last_request(self, model: str) -> Prompted | None:
        """What the last request for ``model`` asked, as parsed (system prompt, messages, JSON
        wanted): lets a test see what an adapter actually put on the wire."""
        with self._lock:
            return self._last.get(model)

    def profile(self, model: str) -> Profile:
        with self._lock:
            return self._profiles.get(model) or self._profiles[DEFAULT]

    def set_profile(self, model: str, changes: Mapping[str, Any]) -> Profile:
        """Change some fields of a model's profile (starting from the default when it has
        none) and return the new profile; ``ValueError`` for a bad field or value."""
        with self._lock:
            current = self._profiles.get(model) or self._profiles[DEFAULT]
            self._profiles[model] = current.updated(changes)
            return self._profiles[model]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                # Requests being answered now, and the most at once since the last reset: the
                # evidence that slow answers overlap rather than queue.
                "in_flight": self._in_flight,
                "peak_in_flight": self._peak,
                # Per model, how many times ``gather`` requests were inside at once.
                "gathered": dict(sorted(self._gathered.items())),
                "models": {model: dict(counts) for model, counts in sorted(self._stats.items())},
            }

    def profiles(self) -> dict[str, Any]:
        with self._lock:
            return {model: p.to_dict() for model, p in sorted(self._profiles.items())}

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def gather(self, model: str, parties: int) -> None:
        """Hold this request until ``parties`` requests for ``model`` are held here at once
        (``Profile.gather``); returns at once when the simulator stops or resets."""
        with self._lock:
            gate = self._gates.get(model)
            if gate is None or gate.parties != parties:
                if gate is not None:
                    gate.abort()  # the profile changed: those held go on
                gate = self._gates[model] = threading.Barrier(parties)
            if self.stopping.is_set():
                return
        try:
            if gate.wait() == 0:  # one of the ``parties`` threads, once per opening
                with self._lock:
                    self._gathered[model] += 1
        except threading.BrokenBarrierError:
            pass

    def _open_gates(self) -> None:
        with self._lock:
            gates = list(self._gates.values())
        for gate in gates:
            gate.abort()

    def draw(self, prompted: Prompted, route: str) -> Draw:
        """Decide one request's fate: the scripted failure if any, else a seeded draw."""
        model = prompted.model
        with self._lock:
            self._last[model] = prompted
            profile = self._profiles.get(model) or self._profiles[DEFAULT]
            rng = self._rngs.get(model)
            if rng is None:
                rng = self._rngs[model] = random.Random(f"{self.seed}:{model}")
            error = profile.draw_error(rng)
            latency = profile.latency_s(rng)
            if profile.fail_next:
                error = profile.fail_next[0]
                self._profiles[model] = profile.updated({"fail_next": profile.fail_next[1:]})
            # The answer's own randomness (the degraded shuffle) gets a generator of its own,
            # seeded from the model's, so that it cannot be interleaved with another thread's.
            answer_rng = random.Random(rng.random())
            self._requests += 1
            counts = self._stats[model]
            counts["requests"] += 1
            counts[f"route:{route}"] += 1
            counts[error or "ok"] += 1
            return Draw(profile, error, latency, answer_rng, self._requests)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The listen backlog: a burst of a few hundred new connections must queue, not be refused.
    request_queue_size = 1024
    simulator: Simulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that closes a keep-alive connection (or times out mid-answer) resets it
        # under a handler waiting on it: routine for HTTP clients, not worth a traceback.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            return
        super().handle_error(request, client_address)


Parse = Callable[[dict[str, Any]], Prompted]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # hundreds of lines a second would drown a test's output

    # --- plumbing ---

    def _send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else {}

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self.server.simulator.stopping.wait(seconds)

    # --- control endpoint ---

    def do_GET(self) -> None:
        sim = self.server.simulator
        path = urlsplit(self.path).path
        if path == "/_sim/stats":
            return self._send_json(200, sim.stats())
        if path == "/_sim/profiles":
            return self._send_json(200, sim.profiles())
        match = _PROFILE.match(path)
        if match:
            return self._send_json(200, sim.profile(match["model"]).to_dict())
        self._send_json(404, {"error": f"no route GET {path}"})

    def do_PUT(self) -> None:
        sim = self.server.simulator
        match = _PROFILE.match(urlsplit(self.path).path)
        if not match:
            return self._send_json(404, {"error": f"no route PUT {self.path}"})
        try:
            changes = self._body()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of profile fields")
            profile = sim.set_profile(match["model"], changes)
        except (ValueError, TypeError) as exc:
            return self._send_json(400, {"error": str(exc)})
        self._send_json(200, profile.to_dict())

    # --- vendor routes ---

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == "/_sim/reset":
            self._body()
            self.server.simulator.reset()
            return self._send_json(200, {"reset": True})
        try:
            body = self._body()
        except ValueError:
            body = None
        if path == "/v1/chat/completions":
            return self._vendor("openai_chat", body, vendors.chat_parse)
        if path == "/v1/responses":
            return self._vendor("openai_responses", body, vendors.responses_parse)
        if path == "/v1/messages":
            return self._vendor("anthropic", body, vendors.anthropic_parse)
        match = _GEMINI.match(path)
        if match:
            stream = match["method"] == "streamGenerateContent"
            model = match["model"]
            return self._vendor("gemini", body, lambda b: vendors.gemini_parse(b, model, stream))
        self._send_json(404, {"error": f"no route POST {path}"})

    def _authenticated(self, route: str) -> bool:
        if route == "gemini":
            return bool(self.headers.get("x-goog-api-key"))
        # Anthropic's SDK sends a bearer token now and x-api-key in older releases: accept both.
        return bool(self.headers.get("Authorization") or self.headers.get("x-api-key"))

    def _error(self, route: str, kind: str, model: str, profile: Profile, rid: str) -> None:
        if route == "anthropic":
            reply = vendors.anthropic_error(kind, model, profile.retry_after_s, rid)
        elif route == "gemini":
            reply = vendors.gemini_error(kind, model, profile.retry_after_s)
        else:
            reply = vendors.openai_error(kind, model, profile.retry_after_s)
        self._send_json(reply.status, reply.body, reply.headers)

    def _vendor(self, route: str, body: Any, parse: Parse) -> None:
        sim = self.server.simulator
        sim.enter()
        try:
            self._answer(route, body, parse)
        finally:
            sim.leave()

    def _answer(self, route: str, body: Any, parse: Parse) -> None:
        sim = self.server.simulator
        if not isinstance(body, dict):
            return self._error(route, "bad_request", "", sim.profile(DEFAULT), "0")
        prompted = replace(parse(body), body=body)
        draw = sim.draw(prompted, route)
        profile = draw.profile
        if profile.gather > 1:
            sim.gather(prompted.model, profile.gather)
        rid = f"sim{draw.number}"
        error = draw.error
        if error is None and not self._authenticated(route):
            error = "auth"
        try:
            if error == "connection":
                # Drop the connection without a byte of answer: the SDK sees it as a broken
                # connection (openai/anthropic APIConnectionError, httpx RemoteProtocolError).
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if error == "timeout":
                # Hold the request past the client's timeout, then answer as if nothing happened.
                self._wait(profile.hang_ms / 1000.0)
                error = None
            if error is not None and error != "content_filter":
                self._wait(draw.latency_s)
                return self._error(route, error, prompted.model, profile, rid)
            finish = "content_filter" if error == "content_filter" else "stop"
            text = "" if finish == "content_filter" else generate(profile, prompted, draw.rng)
            usage = (
                (count_tokens(prompted.system + "".join(prompted.messages)), count_tokens(text))
                if profile.usage
                else None
            )
            if not prompted.stream:
                self._wait(draw.latency_s)
                success = {
                    "openai_chat": vendors.chat_success,
                    "openai_responses": vendors.responses_success,
                    "anthropic": vendors.anthropic_success,
                    "gemini": vendors.gemini_success,
                }[route]
                return self._send_json(200, success(prompted, text, usage, finish, rid))
            streamer = {
                "openai_chat": vendors.chat_stream,
                "openai_responses": vendors.responses_stream,
                "anthropic": vendors.anthropic_stream,
                "gemini": vendors.gemini_stream,
            }[route]
            self._stream(streamer(prompted, text, usage, finish, profile.stream_chunks, rid), draw)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout): nothing to answer to.
            self.close_connection = True

    def _stream(self, stream: vendors.Stream, draw: Draw) -> None:
        self.send_response(200)
        self.send_header("Content-Type", stream.content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for frame in stream.head:
            self._chunk(frame)
        ttft = draw.latency_s * draw.profile.ttft_fraction
        self._wait(ttft)
        gap = (draw.latency_s - ttft) / max(1, len(stream.pieces) - 1) if stream.pieces else 0.0
        for i, frame in enumerate(stream.pieces):
            if i:
                self._wait(gap)
            self._chunk(frame)
        for frame in stream.tail:
            self._chunk(frame)
        self.wfile.write(b"0\r\n\r\n")
