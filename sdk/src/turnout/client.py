"""The Turnout client: local routing decisions on a snapshot kept fresh in the background, and
outcome / feedback reporting that never slows the request.

The host application must never break because of Turnout:

- ``decide()`` never raises and never touches the network: it reads an immutable snapshot
  that a background thread swaps in whole.
- At start the client waits at most ``start_wait`` seconds for the server; if it is down it
  serves the last-known-good snapshot from ``lkg_path``, and with nothing at all, the
  ``default`` arm the caller names in code.
- ``report()`` and ``feedback()`` append to a bounded buffer and return; a background thread
  sends batches. If the buffer is full the oldest events are dropped and counted, and the
  count is sent to the server with the next batch.

Forking (gunicorn ``--preload``, Celery prefork): threads do not survive ``fork()``. The
client registers an ``after_in_child`` hook that gives the child its own HTTP connection,
its own decision-id prefix and fresh background threads, and drops the parent's unsent
events in the child (the parent still owns and sends them).
"""

from __future__ import annotations

import atexit
import gzip
import itertools
import json
import logging
import os
import random
import secrets
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from turnout import routing

log = logging.getLogger("turnout")

ERROR_KINDS = frozenset(
    {
        "rate_limited",
        "overloaded",
        "server_error",
        "timeout",
        "connection",
        "bad_request",
        "auth",
        "content_filter",
        "invalid_output",
        "empty_output",
    }
)
SDK_NAME = "turnout-python/0.1.0"


class Client:
    """One per process. See the module docstring for what it promises the host application."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        start_wait: float = 2.0,
        timeout: float = 5.0,
        lkg_path: str | os.PathLike[str] | None = None,
        poll_interval: float = 15.0,
        stream: bool = True,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        buffer_size: int = 10_000,
        max_backoff: float = 30.0,
        stream_url: str | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        # Streams may be served apart from the API (a long-lived-connection server); default: the same.
        self._stream_url = (stream_url or base_url).rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": SDK_NAME}
        self._timeout = timeout
        self._lkg_path = Path(lkg_path) if lkg_path else None
        self._poll_interval = poll_interval
        self._stream_enabled = stream
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._buffer_size = buffer_size
        self._max_backoff = max_backoff
        self._snapshot: routing.Snapshot = routing.EMPTY_SNAPSHOT
        self._etag: str | None = None
        self._closed = False
        self._start_threads()
        self._load_lkg()
        self._ready.wait(max(0.0, start_wait))
        atexit.register(self.close)
        _live_clients.add(self)

    # --- the hot path ----------------------------------------------------------------

    def decide(
        self, plan: str, unit: str, *, default: routing.ArmSpec | None = None
    ) -> routing.Decision:
        """Which model to call for ``unit`` under ``plan``. Never raises, never blocks on I/O."""
        decision_id = f"{self._id_prefix}{next(self._ids):x}"
        try:
            return routing.decide(
                self._snapshot.plans.get(plan), unit, decision_id=decision_id, default=default
            )
        except Exception:  # the host's request must go on, whatever happened here
            log.exception("turnout: decide failed; answering with the default")
            return routing.decide(None, str(unit), decision_id=decision_id, default=default)

    def report(
        self,
        decision: routing.Decision,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        error: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """Record how the call went. Returns at once; a background thread sends it."""
        if len(self._outcomes) >= self._buffer_size:
            self._dropped += 1  # deque(maxlen) is about to push out the oldest
        self._outcomes.append(
            (time.time(), decision, latency_ms, ttft_ms, error, input_tokens, output_tokens)
        )

    def feedback(self, decision_id: str, score: float, *, scale: str = "thumbs") -> None:
        """A user's rating of a decision's answer (``thumbs``: -1 or 1; ``five``: 1 to 5). Returns at once."""
        if len(self._feedback) >= self._buffer_size:
            self._dropped += 1
        self._feedback.append((time.time(), decision_id, score, scale))

    # --- state -----------------------------------------------------------------------

    @property
    def snapshot_version(self) -> str:
        return self._snapshot.version

    @property
    def dropped(self) -> int:
        """Events dropped since start: buffer overflow, or rejected by the server."""
        return self._dropped

    def flush(self, timeout: float = 5.0) -> bool:
        """Send everything buffered now; True if the buffers emptied within ``timeout``."""
        deadline = time.monotonic() + timeout
        self._flush_now.set()
        while time.monotonic() < deadline:
            if not self._outcomes and not self._feedback and not self._sending:
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Stop the background threads after a final flush bounded by ``timeout``."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._stop.set()
        self._flush_now.set()
        response = self._stream_response
        if response is not None:
            response.close()
        for thread in (self._refresher, self._sender):
            thread.join(timeout=1.0)
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- background ------------------------------------------------------------------

    def _start_threads(self) -> None:
        self._http = httpx.Client(
            base_url=self._base_url, headers=self._headers, timeout=self._timeout
        )
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._flush_now = threading.Event()
        self._stream_response: httpx.Response | None = None
        self._outcomes: deque[tuple[Any, ...]] = deque(maxlen=self._buffer_size)
        self._feedback: deque[tuple[Any, ...]] = deque(maxlen=self._buffer_size)
        self._dropped = 0
        self._reported_dropped = 0
        self._sending = False
        self._refresher = threading.Thread(
            target=self._refresh_loop, name="turnout-refresh", daemon=True
        )
        self._sender = threading.Thread(target=self._send_loop, name="turnout-report", daemon=True)
        self._refresher.start()
        self._sender.start()

    def _after_fork_in_child(self) -> None:
        if not self._closed:
            self._start_threads()
            self._ready.set()  # the child inherited the parent's snapshot: serve it at once

    def _load_lkg(self) -> None:
        if self._lkg_path is None or not self._lkg_path.exists() or self._snapshot.plans:
            return
        try:
            snapshot = routing.parse_snapshot(json.loads(self._lkg_path.read_text()))
        except Exception as exc:
            log.warning(
                "turnout: ignoring unreadable last-known-good snapshot %s: %s", self._lkg_path, exc
            )
            return
        if not self._snapshot.plans:
            self._snapshot = snapshot

    def _fetch(self) -> None:
        headers = {"If-None-Match": self._etag} if self._etag else {}
        try:
            response = self._http.get("/api/v1/sdk/config", headers=headers)
            if response.status_code == 304:
                return
            if response.status_code != 200:
                log.warning("turnout: config fetch answered %s", response.status_code)
                return
            self._install(response.json(), response.headers.get("ETag"), response.content)
        except Exception as exc:  # down, or a bad snapshot: keep serving the last good one
            log.debug("turnout: config fetch failed: %s", exc)
        finally:
            self._ready.set()

    def _install(self, data: Any, etag: str | None, body: bytes) -> None:
        """Swap in a new snapshot whole (raises on a bad one, leaving the old in place)."""
        self._snapshot = routing.parse_snapshot(data)
        self._etag = etag
        self._save_lkg(body)

    def _save_lkg(self, body: bytes) -> None:
        if self._lkg_path is None:
            return
        try:
            tmp = self._lkg_path.with_name(f".{self._lkg_path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(body)
            os.replace(tmp, self._lkg_path)  # atomic: a reader never sees half a file
        except OSError as exc:
            log.warning("turnout: cannot write the last-known-good snapshot: %s", exc)

    def _refresh_loop(self) -> None:
        backoff = 1.0
        last_event_id: str | None = None
        while not self._stop.is_set():
            self._fetch()
            if self._stream_enabled:
                try:
                    last_event_id = self._follow_stream(last_event_id)
                    backoff = 1.0  # the stream was up: reconnect quickly
                except Exception as exc:
                    log.debug("turnout: change stream unavailable: %s", exc)
                wait = min(backoff, self._poll_interval)
                backoff = min(backoff * 2, self._max_backoff)
            else:
                wait = self._poll_interval
            # While the stream is down this loop is the poll: fetch (with ETag), wait, retry.
            self._stop.wait(wait + random.uniform(0, wait * 0.1))

    def _follow_stream(self, last_event_id: str | None) -> str | None:
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(self._timeout, read=60.0)  # heartbeats come every 15 s
        url = f"{self._stream_url}/api/v1/sdk/stream"
        with self._http.stream("GET", url, headers=headers, timeout=timeout) as response:
            if response.status_code != 200:
                raise RuntimeError(f"stream answered {response.status_code}")
            self._stream_response = response
            try:
                data = ""
                for line in response.iter_lines():
                    if self._stop.is_set():
                        break
                    if line.startswith("id:"):
                        last_event_id = line[3:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif line == "" and data:
                        payload, data = json.loads(data), ""
                        version = payload.get("version")
                        if version == self._snapshot.version:
                            continue
                        # The event carries the snapshot: no refetch, no burst of requests per change.
                        if isinstance(payload.get("snapshot"), dict):
                            snapshot = payload["snapshot"]
                            self._install(snapshot, f'"{version}"', json.dumps(snapshot).encode())
                        else:
                            self._fetch()
            finally:
                self._stream_response = None
        return last_event_id

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._flush_now.wait(self._flush_interval)
            self._flush_now.clear()
            while (self._outcomes or self._feedback) and not self._stop.is_set():
                self._sending = True
                try:
                    self._send_batch(
                        "/api/v1/outcomes", self._drain(self._outcomes, _outcome_event)
                    )
                    self._send_batch(
                        "/api/v1/feedback", self._drain(self._feedback, _feedback_event)
                    )
                finally:
                    self._sending = False
                if (
                    len(self._outcomes) < self._batch_size
                    and len(self._feedback) < self._batch_size
                ):
                    break

    def _drain(self, buffer: deque[tuple[Any, ...]], make: Any) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while buffer and len(events) < self._batch_size:
            try:
                item = buffer.popleft()
            except IndexError:
                break
            event = make(item)
            if event is None:
                self._dropped += 1
            else:
                events.append(event)
        return events

    def _send_batch(self, path: str, events: list[dict[str, Any]]) -> None:
        """Send one batch until it is accepted, retrying only what may succeed later. The event
        ids were made before the first attempt, so a retry can never be counted twice."""
        if not events:
            return
        backoff = 0.5
        while True:
            dropped = self._dropped - self._reported_dropped
            body = gzip.compress(
                json.dumps(
                    {"client": {"sdk": SDK_NAME, "dropped": dropped}, "events": events}
                ).encode()
            )
            retry_after: float | None = None
            try:
                response = self._http.post(
                    path,
                    content=body,
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                )
                status = response.status_code
                if status < 300:
                    self._reported_dropped += dropped
                    rejected = response.json().get("rejected", [])
                    if rejected:
                        self._dropped += len(rejected)
                        self._reported_dropped += len(rejected)
                        log.warning(
                            "turnout: server rejected %d events, e.g. %s",
                            len(rejected),
                            rejected[0],
                        )
                    return
                if status == 429 or status >= 500:
                    retry_after = _retry_after(response.headers.get("Retry-After"))
                else:
                    self._dropped += len(events)
                    self._reported_dropped += len(events)
                    log.warning(
                        "turnout: %s refused a batch of %d: %s %s",
                        path,
                        len(events),
                        status,
                        response.text[:200],
                    )
                    return
            except httpx.HTTPError as exc:
                log.debug("turnout: sending to %s failed: %s", path, exc)
            if self._stop.is_set():
                self._dropped += len(events)
                return
            delay = retry_after if retry_after is not None else backoff * random.uniform(0.5, 1.0)
            backoff = min(backoff * 2, self._max_backoff)
            self._stop.wait(delay)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, min(float(value), 120.0))
    except ValueError:
        return None


def _outcome_event(item: tuple[Any, ...]) -> dict[str, Any] | None:
    ts, decision, latency_ms, ttft_ms, error, input_tokens, output_tokens = item
    if error is not None and error not in ERROR_KINDS:
        log.warning("turnout: unknown error kind %r; use one of %s", error, sorted(ERROR_KINDS))
        return None
    return {
        "id": uuid.uuid4().hex,
        "decision_id": decision.decision_id,
        "plan": decision.plan,
        "run": decision.run,
        "plan_version": decision.plan_version,
        "arm": decision.arm,
        "unit": decision.unit,
        "ts": ts,
        "latency_ms": latency_ms,
        "ttft_ms": ttft_ms,
        "error": error,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }


def _feedback_event(item: tuple[Any, ...]) -> dict[str, Any] | None:
    ts, decision_id, score, scale = item
    return {
        "id": uuid.uuid4().hex,
        "decision_id": decision_id,
        "score": score,
        "scale": scale,
        "ts": ts,
    }


_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _restart_after_fork() -> None:
    for client in list(_live_clients):
        client._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_after_fork)


def arm(provider: str, model: str, *, params: Mapping[str, Any] | None = None) -> routing.ArmSpec:
    """A default arm for ``decide(..., default=turnout.arm("openai", "gpt-4o"))``."""
    return routing.ArmSpec(provider=provider, model=model, kind=provider, params=dict(params or {}))
