"""What the client reports, off the request path: outcomes, metric values, feedback, shadow
samples and the pointwise judge's samples of a split's answers.

- The request path appends to a bounded buffer and returns; one background thread sends gzip
  batches (every ``flush_interval`` seconds, or sooner once ``batch_size`` are waiting),
  retrying 5xx, 429 and connection errors with backoff, never other 4xx.
- "Nothing lost" holds for what the server can store. 429, 502, 503, 504 and no answer say the
  server is away, not that the batch is bad: those are retried as long as it takes (the
  buffer's bound says what is dropped meanwhile). Any other 5xx may be the batch's own doing
  (an event the server cannot store): after :data:`SERVER_ERROR_ATTEMPTS` such answers the
  batch is split in halves, each sent on its own, down to the one event that still fails,
  which is dropped, counted and logged. One such event must not stop all reporting.
- If a buffer is full the oldest events are dropped and counted, and the count goes to the
  server in the next batch of outcomes (:attr:`Reporter.dropped`).
- Values are checked in the sender's thread (:mod:`turnout.events` checks and shapes each
  kind): a bad one is dropped, counted and logged once, never raised into the host.
- Every event gets its id before the first attempt, so a retried batch is never counted twice
  by the server.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from turnout._log import LogOnce, log
from turnout.contract import (
    FEEDBACK_PATH,
    JUDGE_SAMPLES_PATH,
    METRICS_PATH,
    OUTCOMES_PATH,
    SHADOW_BATCH,
    SHADOW_PATH,
)
from turnout.events import (
    Event,
    feedback_event,
    judge_event,
    metric_event,
    outcome_event,
    shadow_event,
)
from turnout.routing import Decision

SDK_NAME = "turnout-python/0.1.0"
# A server asking for a longer pause than this is treated as asking for this: the buffer
# would overflow anyway, and a stuck sender cannot be told apart from a dead one.
MAX_RETRY_AFTER = 120.0
# Answers that say the server is unavailable, whatever the batch: retried without a bound.
UNAVAILABLE = frozenset({429, 502, 503, 504})
# Other 5xx answers to one batch before it is split (or, alone, its event dropped).
SERVER_ERROR_ATTEMPTS = 3

_time = time.time


class Reporter:
    """The buffers and the thread that empties them, for one process: a forked child makes a
    new one (the parent still owns, and sends, what it had buffered)."""

    def __init__(
        self,
        *,
        batch_size: int,
        flush_interval: float,
        buffer_size: int,
        max_backoff: float,
        timeout: float,
        log_once: LogOnce,
    ) -> None:
        self.batch_size = batch_size
        self._flush_interval = flush_interval
        self.buffer_size = buffer_size
        self._max_backoff = max_backoff
        self._timeout = timeout
        self._log = log_once
        self.outcomes: deque[Event] = deque(maxlen=buffer_size)
        self._feedback: deque[Event] = deque(maxlen=buffer_size)
        self._shadow: deque[Event] = deque(maxlen=buffer_size)
        self._judge: deque[Event] = deque(maxlen=buffer_size)
        # (ts, decision or decision id, name, value): Client.metric appends here itself.
        self.metrics: deque[Event] = deque(maxlen=buffer_size)
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.dropped = 0
        self._unreported = 0  # dropped events the server has not yet been told about
        self.rejected = 0
        self._sending = False
        self._deadline: float | None = None  # set by close(): the final flush must end by then
        self._thread = threading.Thread(target=self._send_loop, name="turnout-report", daemon=True)

    # --- the request path: append and return ------------------------------------------

    def outcome(
        self,
        decision: Decision,
        latency_ms: float,
        ttft_ms: float | None,
        error: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
        fallback: str | None,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue an outcome. :meth:`Client.report` appends the same tuple to :attr:`outcomes`
        itself (one call frame is a third of its cost, and it is the request path)."""
        item = (_time(), decision, latency_ms, ttft_ms, error, input_tokens, output_tokens,
                fallback, metrics)  # fmt: skip
        self._add(self.outcomes, item, self.batch_size)

    def feedback(self, decision_id: str | Decision, score: float, scale: str) -> None:
        self._add(self._feedback, (_time(), decision_id, score, scale), self.batch_size)

    def shadow(
        self,
        decision: Decision,
        messages: list[dict[str, str]],
        params: dict[str, Any] | None,
        json_schema: dict[str, Any] | None,
        control_text: str,
        latency_ms: float,
        ttft_ms: float | None,
        error: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
    ) -> None:
        item = (_time(), decision, messages, params, json_schema, control_text, latency_ms,
                ttft_ms, error, input_tokens, output_tokens)  # fmt: skip
        self._add(self._shadow, item, SHADOW_BATCH)

    def judge(
        self, decision: Decision, arm: str, messages: list[dict[str, str]], answer: str
    ) -> None:
        """Queue one answer ``arm`` served under ``decision`` for the pointwise judge."""
        self._add(self._judge, (_time(), decision, arm, messages, answer), SHADOW_BATCH)

    def _add(self, buffer: deque[Event], item: Event, wake_at: int) -> None:
        if len(buffer) >= self.buffer_size:
            self.count_dropped(1)  # deque(maxlen) is about to push out the oldest
        buffer.append(item)
        if len(buffer) >= wake_at and not self.wake.is_set():
            self.wake.set()

    def count_dropped(self, n: int) -> None:
        if n:
            with self._lock:
                self.dropped += n
                self._unreported += n

    # --- life --------------------------------------------------------------------------

    def start(self, http: httpx.Client) -> None:
        self._http = http
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def flush(self, timeout: float) -> bool:
        """Send everything buffered now; True if it was all handed over within ``timeout``."""
        deadline = time.monotonic() + max(0.0, timeout)
        self.wake.set()
        while True:
            if not self._pending() and not self._sending:
                return True
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            time.sleep(0.005)

    def _pending(self) -> bool:
        return bool(self.outcomes or self.metrics or self._feedback or self._shadow or self._judge)

    def closing(self, deadline: float) -> None:
        """From now on no request may outlast ``deadline`` (monotonic): the client is closing."""
        self._deadline = deadline

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def drop_unsent(self) -> None:
        """Count what is still buffered as dropped, and forget it."""
        buffers = (self.outcomes, self.metrics, self._feedback, self._shadow, self._judge)
        lost = sum(len(b) for b in buffers)
        for b in buffers:
            b.clear()
        self.count_dropped(lost)

    # --- the sender's thread -----------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self.wake.wait(self._flush_interval)
            self.wake.clear()
            try:
                self._send_pending()
            except Exception as exc:  # a bug here must not end reporting for the process
                self._log.warning("send-loop", "turnout: reporting failed: %r", exc)
            finally:
                self._sending = False

    def _send_pending(self) -> None:
        while not self._stop.is_set() and self._pending():
            self._sending = True
            outcomes = self._drain(self.outcomes, outcome_event)
            if outcomes:
                self._send_batch(OUTCOMES_PATH, outcomes)
            # After the outcomes they are about, so that most are counted at once, not held.
            values = self._drain(self.metrics, metric_event)
            if values:
                self._send_batch(METRICS_PATH, values)
            feedback = self._drain(self._feedback, feedback_event)
            if feedback:
                self._send_batch(FEEDBACK_PATH, feedback)
            samples = self._drain(self._shadow, shadow_event, SHADOW_BATCH)
            if samples:
                self._send_batch(SHADOW_PATH, samples)
            judged = self._drain(self._judge, judge_event, SHADOW_BATCH)
            if judged:
                self._send_batch(JUDGE_SAMPLES_PATH, judged)
            self._sending = False

    def _drain(
        self,
        buffer: deque[Event],
        make: Callable[[Event, LogOnce], dict[str, Any] | None],
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        invalid = 0
        while len(events) < min(self.batch_size, limit or self.batch_size):
            try:
                item = buffer.popleft()
            except IndexError:
                break
            try:
                event = make(item, self._log)
            except Exception as exc:
                self._log.warning("bad-event", "turnout: dropping an unusable event: %r", exc)
                event = None
            if event is None:
                invalid += 1
            else:
                events.append(event)
        self.count_dropped(invalid)
        return events

    def _body(self, path: str, events: list[dict[str, Any]]) -> tuple[bytes, int]:
        samples = path in (SHADOW_PATH, JUDGE_SAMPLES_PATH)
        payload: dict[str, Any] = {"samples" if samples else "events": events}
        dropped = 0
        # The contract gives the feedback body no "client" object: drop counts ride on
        # outcome batches, which every reporting application sends.
        if path == OUTCOMES_PATH:
            dropped = self._unreported
            payload = {"client": {"sdk": SDK_NAME, "dropped": dropped}, "events": events}
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        return gzip.compress(body, compresslevel=5), dropped

    def _request_timeout(self) -> float:
        if self._deadline is None:
            return self._timeout
        return max(0.05, min(self._timeout, self._deadline - time.monotonic()))

    def _send_batch(self, path: str, events: list[dict[str, Any]]) -> None:
        """Send one batch until it is accepted, retrying only what may succeed later. A piece
        the server keeps failing on (:meth:`_send_piece`) is halved; one event alone is
        dropped, so a single unstorable event costs itself only."""
        pieces = [events]
        while pieces:
            if self._stop.is_set():  # stopped while splitting: the rest is dropped, counted
                self.count_dropped(sum(len(p) for p in pieces))
                return
            piece = pieces.pop()
            status = self._send_piece(path, piece)
            if status is None:
                continue
            if len(piece) > 1:
                half = len(piece) // 2
                pieces += [piece[half:], piece[:half]]  # the first half is sent first
                continue
            self.count_dropped(1)
            self._log.warning(
                f"poison-{path}",
                "turnout: %s answered %s %d times to one event; dropping it (id %s)",
                path,
                status,
                SERVER_ERROR_ATTEMPTS,
                piece[0].get("id"),
            )

    def _send_piece(self, path: str, events: list[dict[str, Any]]) -> int | None:
        """Send ``events`` until accepted, refused for good, given up (closing), or answered
        :data:`SERVER_ERROR_ATTEMPTS` server errors: then that status, else None."""
        backoff = min(0.5, self._max_backoff)
        server_errors = 0
        while True:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self.count_dropped(len(events))  # closing, and out of time
                return None
            body, dropped = self._body(path, events)
            delay: float | None = None
            try:
                response = self._http.post(
                    path,
                    content=body,
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                    timeout=self._request_timeout(),
                )
                status = response.status_code
                if status < 300:
                    with self._lock:
                        self._unreported -= dropped
                    self._note_rejected(path, response)
                    return None
                if status in UNAVAILABLE:
                    delay = retry_after(response.headers.get("Retry-After"))
                elif status >= 500:
                    server_errors += 1
                    if server_errors >= SERVER_ERROR_ATTEMPTS:
                        return status
                else:
                    # A 4xx will not change by sending it again: drop it, say so once.
                    self.count_dropped(len(events))
                    self._log.warning(
                        f"refused-{path}-{status}",
                        "turnout: %s refused a batch of %d events with %s: %s",
                        path,
                        len(events),
                        status,
                        response.text[:200],
                    )
                    return None
            except httpx.HTTPError as exc:
                log.debug("turnout: sending to %s failed: %r", path, exc)
            if delay is None:
                delay = backoff * random.uniform(0.5, 1.0)
                backoff = min(backoff * 2, self._max_backoff)
            if self._deadline is not None and time.monotonic() + delay > self._deadline:
                self.count_dropped(len(events))  # closing: no time left to retry
                return None
            if self._stop.wait(delay):
                self.count_dropped(len(events))
                return None

    def _note_rejected(self, path: str, response: httpx.Response) -> None:
        try:
            rejected = response.json().get("rejected") or []
        except Exception:
            return
        if rejected:
            with self._lock:
                self.rejected += len(rejected)
            self._log.warning(
                f"rejected-{path}",
                "turnout: %s rejected %d events, e.g. %s",
                path,
                len(rejected),
                rejected[0],
            )


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - _time()
        except (TypeError, ValueError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER))
