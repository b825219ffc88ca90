"""The Turnout client: local routing decisions on a snapshot kept fresh in the background, and
outcome / feedback reporting that never slows the request.

The host application must never break because of Turnout:

- ``decide()`` never raises and never touches the network: it reads an immutable snapshot
  that a background thread swaps in whole (one reference assignment, atomic under the GIL),
  so the hot path takes no lock.
- At start the client waits at most ``start_wait`` seconds for the server; if it is down it
  serves the last-known-good snapshot from ``lkg_path``, and with nothing at all, the
  ``default`` arm the caller names in code.
- Changes arrive over Server-Sent Events (``GET /api/v1/sdk/stream``, reconnecting with
  backoff and ``Last-Event-ID``); while the stream is down the same thread polls
  ``/api/v1/sdk/config`` with ``If-None-Match`` every ``poll_interval`` seconds.
- ``report()`` and ``feedback()`` append to a bounded buffer and return; a background thread
  sends gzip batches (every ``flush_interval`` seconds, or sooner once ``batch_size`` are
  waiting), retrying 5xx, 429 and connection errors with backoff, never other 4xx. If the
  buffer is full the oldest events are dropped and counted, and the count goes to the server
  in the next batch (``client.dropped``). Every event gets its id before the first attempt,
  so a retried batch is never counted twice by the server.
- ``complete()`` does the whole request: decide, call the arm through its provider adapter,
  report, shadow, and fall back to control when the candidate fails transiently or the
  prompt is too long for it. A vendor failure is a value in the result, never an exception.

Forking (gunicorn ``--preload``, Celery prefork): threads do not survive ``fork()``. The
client registers an ``os.register_at_fork(after_in_child=...)`` hook that gives the child its
own HTTP connection pool, its own decision-id prefix and fresh background threads; the child
keeps serving the parent's snapshot meanwhile, and starts with empty report buffers (the
parent still owns and sends what it had buffered, so nothing is sent twice).
"""

from __future__ import annotations

import atexit
import gzip
import itertools
import json
import logging
import math
import os
import random
import secrets
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from turnout import routing
from turnout.providers.base import (
    DEFAULT_RETRY,
    Adapters,
    Provider,
    ProviderError,
    Request,
    Result,
    RetryPolicy,
    with_prompt,
)
from turnout.routing import ArmSpec, Decision

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
FEEDBACK_SCALES = frozenset({"thumbs", "five"})
SDK_NAME = "turnout-python/0.1.0"
CONFIG_PATH = "/api/v1/sdk/config"
STREAM_PATH = "/api/v1/sdk/stream"
OUTCOMES_PATH = "/api/v1/outcomes"
FEEDBACK_PATH = "/api/v1/feedback"
SHADOW_PATH = "/api/v1/shadow-samples"
SHADOW_BATCH = 100  # the server's batches are capped; samples carry whole prompts
#: Why ``complete()`` answered from control for a unit routed to the candidate: the candidate
#: failed with a transient error, or the prompt was too long for the candidate's context window.
FALLBACK_CANDIDATE_ERROR = "candidate_error"
FALLBACK_CONTEXT_WINDOW = "context_window"
FALLBACK_REASONS = frozenset({FALLBACK_CANDIDATE_ERROR, FALLBACK_CONTEXT_WINDOW})
#: The estimate of prompt tokens is characters / 4 (OpenAI's rule of thumb for English text):
#: no tokenizer to download, and a few microseconds. It undercounts code and non-Latin scripts,
#: so a prompt right at a window's edge may still reach the candidate and fail there.
CHARS_PER_TOKEN = 4
ROLES = frozenset({"system", "user", "assistant"})
# A server asking for a longer pause than this is treated as asking for this: the buffer
# would overflow anyway, and a stuck sender cannot be told apart from a dead one.
MAX_RETRY_AFTER = 120.0

_time = time.time
_Event = tuple[Any, ...]


class _LogOnce:
    """Warn the first time a given problem happens, then stay quiet: a bad call in a hot loop
    must not flood the host's logs."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def warning(self, key: str, message: str, *args: Any) -> None:
        if key in self._seen or len(self._seen) > 1000:
            return
        self._seen.add(key)
        log.warning(message, *args)


@dataclass(frozen=True, slots=True)
class Completion:
    """What :meth:`Client.complete` served.

    ``text`` is the answer the user gets (``""`` when ``error`` is set; the failed call's own
    text, e.g. the unparsable answer of an ``invalid_output``, stays in its :class:`Result`).
    ``arm`` and ``spec`` are the arm actually served, which differs from ``decision.arm``
    when it fell back: ``fallback_reason`` is then :data:`FALLBACK_CANDIDATE_ERROR` or
    :data:`FALLBACK_CONTEXT_WINDOW`. ``results`` holds every model call made, in order (the
    candidate's failure, then control's answer, after a fallback; empty when no arm could be
    chosen). ``error`` is ``None`` or a kind from :data:`ERROR_KINDS`, with words for a
    person in ``error_message``. Give feedback on the answer with ``decision_id``.
    """

    text: str
    decision: Decision
    arm: str
    spec: ArmSpec | None
    fallback_reason: str | None
    results: tuple[Result, ...]
    error: str | None
    error_message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def fell_back(self) -> bool:
        return self.fallback_reason is not None

    @property
    def result(self) -> Result | None:
        """The served call's result (the last one made)."""
        return self.results[-1] if self.results else None

    @property
    def decision_id(self) -> str:
        return self.decision.decision_id

    @property
    def model(self) -> str | None:
        return self.spec.model if self.spec is not None else None

    def __str__(self) -> str:
        return self.text


class Client:
    """A Turnout client: one per process (it survives ``fork()``), shared by all threads.

    :param base_url: the control plane, e.g. ``https://turnout.example.com``.
    :param api_key: an SDK API key (scopes ``decide`` and ``report``).
    :param timeout: per-request timeout in seconds for background HTTP calls.
    :param start_wait: the longest the constructor waits for the first snapshot.
    :param lkg_path: a file for the last-known-good snapshot, written atomically on every
        change and read at start when the server cannot be reached.
    :param poll_interval: seconds between ``If-None-Match`` polls while the stream is down
        (or always, with ``stream=False``).
    :param stream: follow the change stream (Server-Sent Events).
    :param stream_url: where the stream is served, if not at ``base_url``.
    :param batch_size: events per POST; also the buffer level that triggers an early flush.
    :param flush_interval: seconds between flushes.
    :param buffer_size: events buffered per kind before the oldest are dropped (and counted).
    :param max_backoff: cap in seconds of the exponential backoff (stream and reports).
    :param close_timeout: how long ``close()`` (and interpreter exit) may spend flushing.
    :param provider_retry: the retry policy of the model calls ``complete()`` makes (both
        arms get the same one, so neither's error rate is flattered by more attempts).

    The constructor does not raise for an unreachable, slow or misbehaving server: it waits
    at most ``start_wait`` and then answers from the last-known-good snapshot or the caller's
    ``default`` until a snapshot arrives.
    """

    _deadline: float | None  # set by close(): the final flush must end by then

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 5.0,
        start_wait: float = 2.0,
        lkg_path: str | os.PathLike[str] | None = None,
        poll_interval: float = 15.0,
        stream: bool = True,
        stream_url: str | None = None,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        buffer_size: int = 10_000,
        max_backoff: float = 30.0,
        close_timeout: float = 5.0,
        provider_retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._snapshot: routing.Snapshot = routing.EMPTY_SNAPSHOT
        self._etag: str | None = None
        self._closed = False
        self._started = False
        self._log = _LogOnce()
        self._base_url = str(base_url).rstrip("/")
        # Streams may be served apart from the API (a long-lived-connection server).
        self._stream_url = str(stream_url or base_url).rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": SDK_NAME}
        self._timeout = float(timeout)
        self._lkg_path = Path(lkg_path) if lkg_path else None
        self._poll_interval = max(0.05, float(poll_interval))
        self._stream_enabled = bool(stream)
        self._batch_size = max(1, int(batch_size))
        self._flush_interval = max(0.01, float(flush_interval))
        self._buffer_size = max(1, int(buffer_size))
        self._max_backoff = max(0.01, float(max_backoff))
        self._close_timeout = max(0.0, float(close_timeout))
        self._provider_retry = provider_retry
        self._reset_process_state()
        # Before the threads start, so a fresh fetch can never be overwritten by the older file.
        self._load_lkg()
        _live_clients.add(self)
        try:
            self._start_threads()
        except Exception as exc:  # e.g. a base_url httpx refuses: serve LKG / defaults
            log.error("turnout: client could not start, serving defaults: %s", exc)
            return
        self._ready.wait(max(0.0, float(start_wait)))

    # --- the hot path ----------------------------------------------------------------

    def decide(self, plan: str, unit: str, *, default: ArmSpec | None = None) -> Decision:
        """Which model to call for ``unit`` (a user or session id) under ``plan``.

        Never raises, never blocks on I/O. A plan the snapshot does not hold (or no snapshot
        at all) gives ``default`` with reason ``DEFAULT``; build one with :func:`arm`.
        """
        try:
            decision_id = f"{self._id_prefix}{next(self._ids):x}"
            if unit.__class__ is not str:
                unit = str(unit)
            return routing.decide(
                self._snapshot.plans.get(plan), unit, decision_id=decision_id, default=default
            )
        except Exception as exc:  # the host's request must go on, whatever happened here
            self._log.warning("decide", "turnout: decide failed, answering the default: %r", exc)
            return _fallback_decision(unit, default)

    def report(
        self,
        decision: Decision,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        error: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """Record how the call for ``decision`` went. Returns at once; never raises.

        ``error`` is ``None`` or one of :data:`ERROR_KINDS`; tokens are ``None`` when the
        provider did not say (unknown usage is unknown cost, not zero). Bad values are
        dropped (counted in :attr:`dropped`, logged once), off the request path.
        """
        if self._closed:
            return
        try:
            buffer = self._outcomes
            if len(buffer) >= self._buffer_size:
                self._count_dropped(1)  # deque(maxlen) is about to push out the oldest
            buffer.append(
                (_time(), decision, latency_ms, ttft_ms, error, input_tokens, output_tokens, None)
            )
            if len(buffer) >= self._batch_size and not self._wake.is_set():
                self._wake.set()
        except Exception as exc:
            self._log.warning("report", "turnout: report failed: %r", exc)

    def _report_fallback(self, decision: Decision, result: Result, reason: str) -> None:
        """The outcome of control's call made for a unit routed to the candidate: sent with
        ``arm: control`` and ``fallback: <reason>``, so the server stores it without counting
        it in either arm's statistics (see :meth:`complete`)."""
        if self._closed:
            return
        if len(self._outcomes) >= self._buffer_size:
            self._count_dropped(1)
        self._outcomes.append(
            (
                _time(),
                decision,
                result.latency_ms,
                result.ttft_ms,
                result.error,
                result.input_tokens,
                result.output_tokens,
                reason,
            )  # fmt: skip
        )
        if len(self._outcomes) >= self._batch_size and not self._wake.is_set():
            self._wake.set()

    def feedback(self, decision_id: str, score: float, *, scale: str = "thumbs") -> None:
        """A user's rating of the answer given under ``decision_id`` (a :class:`Decision` is
        accepted too). ``scale``: ``thumbs`` (score -1 or 1) or ``five`` (1 to 5).
        Returns at once; never raises."""
        if self._closed:
            return
        try:
            buffer = self._feedback
            if len(buffer) >= self._buffer_size:
                self._count_dropped(1)
            buffer.append((_time(), decision_id, score, scale))
            if len(buffer) >= self._batch_size and not self._wake.is_set():
                self._wake.set()
        except Exception as exc:
            self._log.warning("feedback", "turnout: feedback failed: %r", exc)

    def shadow_sample(
        self,
        decision: Decision,
        *,
        messages: list[dict[str, str]],
        control_text: str,
        latency_ms: float,
        params: dict[str, Any] | None = None,
        json_schema: dict[str, Any] | None = None,
        ttft_ms: float | None = None,
        error: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """Hand Turnout a request ``decision`` marked for shadowing (``decision.shadow``), with
        the production (control) answer: the candidate answers it in the background and the
        two are compared. Ignored when the decision is not a shadow one. Returns at once;
        never raises. The server redacts emails, phone numbers and keys before storing."""
        if self._closed or not decision.shadow:
            return
        try:
            buffer = self._shadow
            if len(buffer) >= self._buffer_size:
                self._count_dropped(1)
            buffer.append(
                (
                    _time(),
                    decision,
                    messages,
                    params,
                    json_schema,
                    control_text,
                    latency_ms,
                    ttft_ms,
                    error,
                    input_tokens,
                    output_tokens,
                )  # fmt: skip
            )
            if len(buffer) >= SHADOW_BATCH and not self._wake.is_set():
                self._wake.set()
        except Exception as exc:
            self._log.warning("shadow", "turnout: shadow_sample failed: %r", exc)

    # --- the whole request -----------------------------------------------------------

    def complete(
        self,
        plan: str,
        unit: str,
        *,
        messages: Sequence[Mapping[str, str]],
        params: Mapping[str, Any] | None = None,
        json_schema: Mapping[str, Any] | None = None,
        stream: bool = False,
        timeout: float = 30.0,
        default: ArmSpec | None = None,
    ) -> Completion:
        """Route, call the model, report, and shadow: the whole request in one call.

        ``messages`` are ``{"role": "system" | "user" | "assistant", "content": str}``;
        ``params`` are the application's call params (the arm's own win over them);
        ``json_schema`` asks for JSON (``{}``: any object) and checks the answer; ``stream``
        has the vendor stream (the time to first token is measured; the whole answer is still
        returned); ``timeout`` is per attempt, in seconds. Blocks for the model call(s).

        - The decision is :meth:`decide`'s, and the arm is called through its adapter (the
          arm's params and prompt adjustment applied, one retry policy), kept per arm.
        - A unit routed to the candidate falls back to control when the candidate fails with
          a transient error and the plan's ``fallback_to_control`` is on (the default). Two
          outcomes go out: the candidate's failure, counted in its statistics as the error
          the user would have seen without the fallback, and control's answer, marked
          ``fallback``, which the server stores but counts in neither arm (the unit is in the
          candidate's bucket: counting it for control would mix the candidate's units, and its
          failed requests, into control's sample). A non-transient failure (a bad request, a
          filtered or invalid answer, a bad key) is returned as it is: control would not do
          better with the same request, or the candidate's problem must be seen.
        - A prompt whose estimated size (characters / 4, the candidate's prompt adjustment
          included) exceeds the candidate's context window goes to control whatever the
          fallback setting: one ``fallback: context_window`` outcome, no candidate error.
          The same prompt from a unit in control's bucket is marked the same way, so that
          neither arm's sample holds the long prompts the other's cannot. A shadowed request
          too long for the candidate is not sampled.
        - On a shadow decision the request and control's answer are handed to
          :meth:`shadow_sample`; the server's workers then call the candidate.

        Never raises for a vendor failure, or when both arms failed: the :class:`Completion`
        then has ``error`` set (the last call's kind) and every call's result in ``results``.
        An unknown plan without ``default`` is ``error="bad_request"`` with no call made.
        Bad arguments raise :class:`TypeError` or :class:`ValueError`.
        """
        request = _request(messages, params, json_schema, stream, timeout)
        if not isinstance(plan, str):
            raise TypeError(f"plan must be a string, got {type(plan).__name__}")
        if default is not None and not isinstance(default, ArmSpec):
            raise TypeError("default must be an ArmSpec (see turnout.arm())")
        decision = self.decide(plan, unit, default=default)
        try:
            return self._complete(decision, request)
        except Exception as exc:  # a bug here must not become the host's exception
            self._log.warning("complete", "turnout: complete failed: %r", exc)
            return Completion(
                "", decision, decision.arm, decision.spec, None, (), "server_error", repr(exc)
            )

    def _complete(self, decision: Decision, request: Request) -> Completion:
        spec = decision.spec
        if spec is None:
            message = f"plan {decision.plan or '?'} is not in the snapshot and no default was given"
            return Completion("", decision, decision.arm, None, None, (), "bad_request", message)
        # A decision for no plan (the caller's default) has nothing to report against.
        reporting = bool(decision.plan)
        control = decision.fallback
        if decision.arm == routing.CANDIDATE and control is not None:
            if _too_long(request, spec):
                served = self._call(control, request)
                if reporting:
                    self._report_fallback(decision, served, FALLBACK_CONTEXT_WINDOW)
                return _completion(decision, control, FALLBACK_CONTEXT_WINDOW, (served,))
            first = self._call(spec, request)
            if first.ok or not first.transient or not self._fallback_on(decision):
                if reporting:
                    self._report(decision, first)
                return _completion(decision, spec, None, (first,))
            served = self._call(control, request)
            if reporting:
                # Queued together, after both calls: they travel in one batch, so feedback on
                # the answer (given after this returns) finds both outcomes stored.
                self._report(decision, first)
                self._report_fallback(decision, served, FALLBACK_CANDIDATE_ERROR)
            return _completion(decision, control, FALLBACK_CANDIDATE_ERROR, (first, served))
        result = self._call(spec, request)
        too_long = self._too_long_for_candidate(decision, request)
        if reporting:
            if too_long:
                # The same prompt routed to the candidate would have gone to control,
                # uncounted: counted here it would put only the long prompts (slower,
                # costlier, likelier to fail) in control's sample and flatter the candidate.
                self._report_fallback(decision, result, FALLBACK_CONTEXT_WINDOW)
            else:
                self._report(decision, result)
        # Nor is such a prompt shadowed: the candidate could not take it.
        if decision.shadow and decision.shadow_spec is not None and not too_long:
            self.shadow_sample(
                decision,
                # The application's own request: the worker applies the candidate's params
                # and prompt adjustment itself, as complete() would have.
                messages=[dict(m) for m in request.messages],
                control_text=result.text,
                latency_ms=result.latency_ms,
                params=dict(request.params) or None,
                json_schema=None if request.json_schema is None else dict(request.json_schema),
                ttft_ms=result.ttft_ms,
                error=result.error,
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
            )
        return _completion(decision, spec, None, (result,))

    def _report(self, decision: Decision, result: Result) -> None:
        self.report(
            decision,
            latency_ms=result.latency_ms,
            ttft_ms=result.ttft_ms,
            error=result.error,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
        )

    def _too_long_for_candidate(self, decision: Decision, request: Request) -> bool:
        """A control unit's prompt that the candidate's context window could not take, while
        the plan splits or shadows traffic (its outcome then counts in neither arm)."""
        if decision.arm != routing.CONTROL or decision.reason != "SPLIT":
            return False
        plan = self._snapshot.plans.get(decision.plan)
        return plan is not None and _too_long(request, plan.candidate)

    def _fallback_on(self, decision: Decision) -> bool:
        plan = self._snapshot.plans.get(decision.plan)
        return True if plan is None else plan.fallback_to_control

    def _call(self, spec: ArmSpec, request: Request) -> Result:
        """One arm's answer as a :class:`Result`, whatever went wrong (a missing key variable,
        a vendor SDK not installed, a bug in an adapter)."""
        try:
            provider, owned = self._provider(spec)
        except ProviderError as exc:
            return Result(
                text="", model=spec.model, error=exc.kind, transient=exc.transient,
                status=exc.status, error_message=exc.message, attempts=0,
            )  # fmt: skip
        except Exception as exc:  # e.g. ImportError: the arm's vendor SDK is not installed
            return Result(
                text="", model=spec.model, error="bad_request",
                error_message=f"no adapter for {spec.kind}: {exc!r}", attempts=0,
            )  # fmt: skip
        try:
            return provider.complete(request)
        except Exception as exc:
            self._log.warning(
                f"adapter-{spec.kind}", "turnout: %s adapter failed: %r", spec.kind, exc
            )
            return Result(text="", model=spec.model, error="server_error", error_message=repr(exc))
        finally:
            if owned:
                provider.close()

    def _provider(self, spec: ArmSpec) -> tuple[Provider, bool]:
        """The arm's adapter, kept for the client's life; ``True`` with it when the caller
        must close it (a client already closed keeps none)."""
        return self._providers.get(spec)

    # --- state -----------------------------------------------------------------------

    @property
    def snapshot(self) -> routing.Snapshot:
        """The snapshot ``decide()`` reads now (empty until one arrives)."""
        return self._snapshot

    @property
    def snapshot_version(self) -> str:
        return self._snapshot.version

    @property
    def dropped(self) -> int:
        """Events lost since start (or fork): buffer overflow, invalid values, a batch the
        server refused with a 4xx, or still unsent at close."""
        return self._dropped

    @property
    def rejected(self) -> int:
        """Events the server received but rejected one by one (its ``rejected`` list)."""
        return self._rejected

    def flush(self, timeout: float = 5.0) -> bool:
        """Send everything buffered now; True if it was all handed over within ``timeout``."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._wake.set()
        while True:
            if not self._outcomes and not self._feedback and not self._shadow and not self._sending:
                return True
            if time.monotonic() >= deadline or not self._sender.is_alive():
                return False
            time.sleep(0.005)

    def close(self, timeout: float | None = None) -> None:
        """Flush (for at most ``timeout`` seconds, default ``close_timeout``) and stop.

        Called at interpreter exit too. Events still unsent at the deadline are counted in
        :attr:`dropped`. After ``close()``, ``decide()`` keeps answering from the last
        snapshot and ``report()`` is a no-op.
        """
        if self._closed:
            return
        self._closed = True
        budget = self._close_timeout if timeout is None else max(0.0, timeout)
        self._deadline = time.monotonic() + budget
        try:
            if self._started:
                self.flush(budget)
            self._stop.set()
            self._wake.set()
            response = self._stream_response
            if response is not None:
                response.close()  # unblocks the refresher's read
            if self._started:
                remaining = max(0.1, self._deadline - time.monotonic())
                self._sender.join(remaining)
                self._refresher.join(0.5)
            lost = len(self._outcomes) + len(self._feedback) + len(self._shadow)
            self._outcomes.clear()
            self._feedback.clear()
            self._shadow.clear()
            self._count_dropped(lost)
            if self._started and not self._sender.is_alive():
                self._http.close()
        except Exception as exc:
            log.debug("turnout: close: %r", exc)
        self._providers.close()
        if self._dropped:
            log.info("turnout: closed; %d events were dropped in this process", self._dropped)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- process state and threads ---------------------------------------------------

    def _reset_process_state(self) -> None:
        """Everything that must not be shared across ``fork()``: locks, events, buffers,
        the id prefix. Called at construction and in a forked child."""
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._stream_response: httpx.Response | None = None
        self._outcomes: deque[_Event] = deque(maxlen=self._buffer_size)
        self._feedback: deque[_Event] = deque(maxlen=self._buffer_size)
        self._shadow: deque[_Event] = deque(maxlen=self._buffer_size)
        self._dropped = 0
        self._unreported = 0  # dropped events the server has not yet been told about
        self._rejected = 0
        self._sending = False
        self._deadline = None
        # A forked child makes its own adapters: the parent's hold its connection pools.
        self._providers = Adapters(retry=self._provider_retry)
        if self._closed:
            self._providers.close()
        self._refresher = threading.Thread(
            target=self._refresh_loop, name="turnout-refresh", daemon=True
        )
        self._sender = threading.Thread(target=self._send_loop, name="turnout-report", daemon=True)

    def _start_threads(self) -> None:
        self._http = httpx.Client(
            base_url=self._base_url, headers=self._headers, timeout=self._timeout
        )
        self._refresher.start()
        self._sender.start()
        self._started = True

    def _after_fork_in_child(self) -> None:
        if self._closed:
            return
        # The parent's connection pool is left alone, not closed: its sockets are shared with
        # the parent, and closing them here would cut the parent's connections.
        self._started = False
        self._reset_process_state()
        self._ready.set()  # the child inherited the parent's snapshot: serve it at once
        try:
            self._start_threads()
        except Exception as exc:
            log.error("turnout: could not restart after fork: %r", exc)

    def _count_dropped(self, n: int) -> None:
        if n:
            with self._lock:
                self._dropped += n
                self._unreported += n

    # --- snapshot: last-known-good file, fetch, stream -------------------------------

    def _load_lkg(self) -> None:
        if self._lkg_path is None:
            return
        try:
            body = self._lkg_path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("turnout: cannot read the last-known-good snapshot: %s", exc)
            return
        try:
            self._snapshot = routing.parse_snapshot(json.loads(body))
        except Exception as exc:  # a corrupt file must not stop the host from starting
            log.warning(
                "turnout: ignoring unreadable last-known-good snapshot %s: %s", self._lkg_path, exc
            )

    def _install(self, data: Any, etag: str | None, body: bytes) -> None:
        """Swap in a new snapshot whole; raises on a bad one, leaving the old in place."""
        snapshot = routing.parse_snapshot(data)
        self._snapshot = snapshot
        self._etag = etag or (f'"{snapshot.version}"' if snapshot.version else None)
        self._save_lkg(body)

    def _save_lkg(self, body: bytes) -> None:
        if self._lkg_path is None:
            return
        tmp = self._lkg_path.with_name(
            f".{self._lkg_path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        )
        try:
            with open(tmp, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            # Atomic: a reader (another process starting now) never sees half a file.
            os.replace(tmp, self._lkg_path)
        except OSError as exc:
            self._log.warning("lkg-write", "turnout: cannot write %s: %s", self._lkg_path, exc)
            tmp.unlink(missing_ok=True)

    def _fetch(self) -> None:
        headers = {"If-None-Match": self._etag} if self._etag else {}
        try:
            response = self._http.get(CONFIG_PATH, headers=headers)
            if response.status_code == 304:
                return
            if response.status_code != 200:
                self._log.warning(
                    f"fetch-{response.status_code}",
                    "turnout: %s answered %s",
                    CONFIG_PATH,
                    response.status_code,
                )
                return
            self._install(response.json(), response.headers.get("ETag"), response.content)
        except Exception as exc:  # down, or a bad snapshot: keep serving the last good one
            log.debug("turnout: config fetch failed: %r", exc)
        finally:
            self._ready.set()

    def _refresh_loop(self) -> None:
        backoff = min(1.0, self._max_backoff)
        last_event_id: str | None = None
        while not self._stop.is_set():
            try:
                self._fetch()
                if self._stream_enabled and not self._stop.is_set():
                    last_event_id, delivered, retry = self._follow_stream(last_event_id)
                    if delivered:
                        backoff = retry  # it was up: reconnect soon, as the server asked
            except Exception as exc:
                log.debug("turnout: change stream unavailable: %r", exc)
            if self._stream_enabled:
                # While the stream is down this loop is the poll: fetch (ETag), wait, retry.
                wait = min(backoff, self._poll_interval)
                backoff = min(backoff * 2, self._max_backoff)
            else:
                wait = self._poll_interval
            self._stop.wait(wait * random.uniform(0.9, 1.1))

    def _follow_stream(self, last_event_id: str | None) -> tuple[str | None, bool, float]:
        """Read the stream until it ends; returns the last event id, whether any event came,
        and the reconnection delay the server asked for (its ``retry:`` field)."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        # Heartbeats come every 15 s: a minute of silence means the connection is dead.
        timeout = httpx.Timeout(self._timeout, read=60.0)
        url = f"{self._stream_url}{STREAM_PATH}"
        delivered, retry = False, 1.0
        with self._http.stream("GET", url, headers=headers, timeout=timeout) as response:
            if response.status_code != 200:
                raise RuntimeError(f"stream answered {response.status_code}")
            self._stream_response = response
            try:
                event = ""
                data: list[str] = []
                for line in response.iter_lines():
                    if self._stop.is_set():
                        break
                    if not line:
                        if data:
                            self._on_event(event or "message", "\n".join(data))
                            delivered = True
                        event, data = "", []
                        continue
                    if line.startswith(":"):
                        continue  # heartbeat
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "data":
                        data.append(value)
                    elif name == "event":
                        event = value
                    elif name == "id" and "\0" not in value:
                        last_event_id = value
                    elif name == "retry" and value.isdigit():
                        retry = max(0.1, int(value) / 1000)
            finally:
                self._stream_response = None
        return last_event_id, delivered, retry

    def _on_event(self, event: str, data: str) -> None:
        if event != "config":
            return
        try:
            payload = json.loads(data)
            version = payload["version"]
        except (ValueError, TypeError, KeyError):
            self._fetch()
            return
        if version == self._snapshot.version:
            return
        snapshot = payload.get("snapshot")
        if not isinstance(snapshot, dict):
            self._fetch()
            return
        # The event carries the snapshot: no refetch, no burst of requests per change.
        try:
            self._install(snapshot, f'"{version}"', json.dumps(snapshot).encode())
        except Exception as exc:
            log.debug("turnout: streamed snapshot unusable (%r); fetching", exc)
            self._fetch()

    # --- reporting -------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            try:
                self._send_pending()
            except Exception as exc:  # a bug here must not end reporting for the process
                self._log.warning("send-loop", "turnout: reporting failed: %r", exc)
            finally:
                self._sending = False

    def _send_pending(self) -> None:
        while not self._stop.is_set() and (self._outcomes or self._feedback or self._shadow):
            self._sending = True
            outcomes = self._drain(self._outcomes, self._outcome_event)
            if outcomes:
                self._send_batch(OUTCOMES_PATH, outcomes)
            feedback = self._drain(self._feedback, self._feedback_event)
            if feedback:
                self._send_batch(FEEDBACK_PATH, feedback)
            samples = self._drain(self._shadow, self._shadow_event, SHADOW_BATCH)
            if samples:
                self._send_batch(SHADOW_PATH, samples)
            self._sending = False

    def _drain(
        self,
        buffer: deque[_Event],
        make: Callable[[_Event], dict[str, Any] | None],
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        invalid = 0
        while len(events) < min(self._batch_size, limit or self._batch_size):
            try:
                item = buffer.popleft()
            except IndexError:
                break
            try:
                event = make(item)
            except Exception as exc:
                self._log.warning("bad-event", "turnout: dropping an unusable event: %r", exc)
                event = None
            if event is None:
                invalid += 1
            else:
                events.append(event)
        self._count_dropped(invalid)
        return events

    def _body(self, path: str, events: list[dict[str, Any]]) -> tuple[bytes, int]:
        payload: dict[str, Any] = {"samples" if path == SHADOW_PATH else "events": events}
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
        """Send one batch until it is accepted, retrying only what may succeed later."""
        backoff = min(0.5, self._max_backoff)
        while True:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self._count_dropped(len(events))  # closing, and out of time
                return
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
                    return
                if status == 429 or status >= 500:
                    delay = _retry_after(response.headers.get("Retry-After"))
                else:
                    # A 4xx will not change by sending it again: drop it, say so once.
                    self._count_dropped(len(events))
                    self._log.warning(
                        f"refused-{path}-{status}",
                        "turnout: %s refused a batch of %d events with %s: %s",
                        path,
                        len(events),
                        status,
                        response.text[:200],
                    )
                    return
            except httpx.HTTPError as exc:
                log.debug("turnout: sending to %s failed: %r", path, exc)
            if delay is None:
                delay = backoff * random.uniform(0.5, 1.0)
                backoff = min(backoff * 2, self._max_backoff)
            if self._deadline is not None and time.monotonic() + delay > self._deadline:
                self._count_dropped(len(events))  # closing: no time left to retry
                return
            if self._stop.wait(delay):
                self._count_dropped(len(events))
                return

    def _note_rejected(self, path: str, response: httpx.Response) -> None:
        try:
            rejected = response.json().get("rejected") or []
        except Exception:
            return
        if rejected:
            with self._lock:
                self._rejected += len(rejected)
            self._log.warning(
                f"rejected-{path}",
                "turnout: %s rejected %d events, e.g. %s",
                path,
                len(rejected),
                rejected[0],
            )

    def _outcome_event(self, item: _Event) -> dict[str, Any] | None:
        ts, decision, latency_ms, ttft_ms, error, input_tokens, output_tokens, fallback = item
        problem = (
            _check_ms("latency_ms", latency_ms, required=True)
            or _check_ms("ttft_ms", ttft_ms)
            or _check_tokens("input_tokens", input_tokens)
            or _check_tokens("output_tokens", output_tokens)
        )
        if error is not None and error not in ERROR_KINDS:
            problem = f"error {error!r} is not one of {sorted(ERROR_KINDS)}"
        if not isinstance(decision, Decision):
            problem = f"report() needs the Decision from decide(), got {type(decision).__name__}"
        if problem:
            self._log.warning(
                f"outcome:{problem.split()[0]}", "turnout: dropping an outcome: %s", problem
            )
            return None
        event = {
            "id": _event_id(),
            "decision_id": decision.decision_id,
            "plan": decision.plan,
            "run": decision.run,
            "plan_version": decision.plan_version,
            "arm": routing.CONTROL if fallback else decision.arm,
            "unit": decision.unit,
            "ts": ts,
            "latency_ms": float(latency_ms),
            "ttft_ms": None if ttft_ms is None else float(ttft_ms),
            "error": error,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        }
        if fallback:
            event["fallback"] = fallback
        return event

    def _feedback_event(self, item: _Event) -> dict[str, Any] | None:
        ts, decision_id, score, scale = item
        if isinstance(decision_id, Decision):
            decision_id = decision_id.decision_id
        problem = None
        if not isinstance(decision_id, str) or not decision_id:
            problem = "decision_id must be a non-empty string"
        elif scale not in FEEDBACK_SCALES:
            problem = f"scale {scale!r} is not one of {sorted(FEEDBACK_SCALES)}"
        elif not _is_number(score) or (
            score not in (-1, 1) if scale == "thumbs" else not 1 <= score <= 5
        ):
            problem = f"score {score!r} is out of range for scale {scale!r}"
        if problem:
            self._log.warning(
                f"feedback:{problem.split()[0]}", "turnout: dropping feedback: %s", problem
            )
            return None
        return {
            "id": _event_id(),
            "decision_id": decision_id,
            "score": score,
            "scale": scale,
            "ts": ts,
        }

    def _shadow_event(self, item: _Event) -> dict[str, Any] | None:
        (ts, decision, messages, params, schema, text, latency_ms, ttft_ms, error,
         input_tokens, output_tokens) = item  # fmt: skip
        problem = (
            _check_ms("latency_ms", latency_ms, required=True)
            or _check_ms("ttft_ms", ttft_ms)
            or _check_tokens("input_tokens", input_tokens)
            or _check_tokens("output_tokens", output_tokens)
        )
        if error is not None and error not in ERROR_KINDS:
            problem = f"error {error!r} is not one of {sorted(ERROR_KINDS)}"
        if not isinstance(messages, list) or not isinstance(text, str):
            problem = "messages must be a list and control_text a string"
        if problem:
            self._log.warning(
                f"shadow:{problem.split()[0]}", "turnout: dropping a shadow sample: %s", problem
            )
            return None
        return {
            "id": _event_id(),
            "decision_id": decision.decision_id,
            "plan": decision.plan,
            "run": decision.run,
            "plan_version": decision.plan_version,
            "unit": decision.unit,
            "ts": ts,
            "request": {"messages": messages, "params": params or {}, "json_schema": schema},
            "control": {
                "text": text,
                "latency_ms": float(latency_ms),
                "ttft_ms": None if ttft_ms is None else float(ttft_ms),
                "error": error,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
            },
        }


def estimate_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """Prompt tokens, estimated as characters / 4 rounded up (see :data:`CHARS_PER_TOKEN`)."""
    chars = sum(len(m.get("content") or "") for m in messages)
    return -(-chars // CHARS_PER_TOKEN)


def _too_long(request: Request, spec: ArmSpec) -> bool:
    window = spec.context_window
    if window is None:
        return False
    return estimate_tokens(with_prompt(request, spec.prompt).messages) > window


def _request(messages: Any, params: Any, json_schema: Any, stream: Any, timeout: Any) -> Request:
    """The normalised request, or TypeError / ValueError for what the caller got wrong."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} objects")
    if not messages:
        raise ValueError("messages must not be empty")
    copied: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{index}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{index}].role must be one of {sorted(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise TypeError(f"messages[{index}].content must be a string")
        copied.append({"role": role, "content": content})
    if params is not None and not isinstance(params, Mapping):
        raise TypeError("params must be a mapping or None")
    if json_schema is not None and not isinstance(json_schema, Mapping):
        raise TypeError("json_schema must be a mapping (a JSON schema, or {}) or None")
    if not isinstance(stream, bool):
        raise TypeError("stream must be a bool")
    if not _is_number(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    return Request(
        messages=copied,
        params=dict(params or {}),
        json_schema=None if json_schema is None else dict(json_schema),
        stream=stream,
        timeout=float(timeout),
    )


def _completion(
    decision: Decision, spec: ArmSpec, reason: str | None, results: tuple[Result, ...]
) -> Completion:
    served = results[-1]
    arm = routing.CONTROL if reason else decision.arm
    text = served.text if served.ok else ""
    return Completion(
        text, decision, arm, spec, reason, results, served.error, served.error_message
    )


def _event_id() -> str:
    """128 random bits as 32 hex digits, like ``uuid4().hex`` at a quarter of the cost: the
    server is idempotent on it, so it only has to be unique."""
    return os.urandom(16).hex()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_ms(name: str, value: Any, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not _is_number(value) or value < 0:
        return f"{name} must be a finite number >= 0, got {value!r}"
    return None


def _check_tokens(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return f"{name} must be an integer >= 0 or None, got {value!r}"
    return None


def _retry_after(value: str | None) -> float | None:
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


def _fallback_decision(unit: Any, default: Any) -> Decision:
    """The answer when deciding itself failed: the default arm, built from nothing that can
    raise again."""
    spec = default if isinstance(default, ArmSpec) else None
    return Decision(
        "",
        unit if isinstance(unit, str) else "",
        routing.CONTROL,
        spec.provider if spec else None,
        spec.model if spec else None,
        spec.params if spec else routing.freeze({}),
        spec.prompt if spec else routing.NO_PROMPT,
        spec,
        spec,
        False,
        None,
        0,
        0,
        None,
        "ERROR",
        "",
    )


_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _restart_after_fork() -> None:
    for client in list(_live_clients):
        client._after_fork_in_child()


def _close_all() -> None:
    for client in list(_live_clients):
        client.close()


# One hook each for every client, rather than one per client: a closed client is then free
# to be collected instead of being kept alive by the atexit registry.
os.register_at_fork(after_in_child=_restart_after_fork)
atexit.register(_close_all)


def arm(
    provider: str,
    model: str,
    *,
    kind: str = "",
    params: Mapping[str, Any] | None = None,
    prompt: routing.Prompt | None = None,
    base_url: str = "",
    api_key_env: str = "",
    context_window: int | None = None,
) -> ArmSpec:
    """An arm named in code, e.g. ``decide(..., default=turnout.arm("openai", "gpt-4o"))``."""
    return ArmSpec(
        provider=provider,
        kind=kind or provider,
        base_url=base_url,
        api_key_env=api_key_env,
        model=model,
        params=dict(params or {}),
        prompt=prompt or routing.NO_PROMPT,
        context_window=context_window,
    )
