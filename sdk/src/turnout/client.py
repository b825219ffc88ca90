"""The Turnout client: local routing decisions on a snapshot kept fresh in the background, and
outcome / feedback reporting that never slows the request. This module is the front; three
parts do the work, each readable on its own:

- :mod:`turnout.snapshot_source`: the last-known-good file, the config fetch (ETag), the change
  stream, and the poll that stands in for it while the stream is down.
- :mod:`turnout.reporter`: the bounded buffers, the batches, the retries.
- :mod:`turnout.complete`: the provider call path of :meth:`Client.complete`.

The host application must never break because of Turnout:

- ``decide()`` never raises and never touches the network: it reads an immutable snapshot
  that a background thread swaps in whole (one reference assignment, atomic under the GIL),
  so the hot path takes no lock.
- At start the client waits at most ``start_wait`` seconds for the server; if it is down it
  serves the last-known-good snapshot from ``lkg_path``, and with nothing at all, the
  ``default`` arm the caller names in code.
- ``report()``, ``feedback()`` and ``shadow_sample()`` append to a bounded buffer and return;
  a background thread sends the batches. If the buffer is full the oldest events are dropped
  and counted (``client.dropped``).
- ``complete()`` does the whole request: decide, call the arm through its provider adapter,
  report, shadow, and fall back to control when the candidate fails transiently or the
  prompt is too long for it. A vendor failure is a value in the result, never an exception.

Forking (gunicorn ``--preload``, Celery prefork): threads do not survive ``fork()``. The
client registers an ``os.register_at_fork(after_in_child=...)`` hook that gives the child its
own HTTP connection pool and fresh background threads; the child
keeps serving the parent's snapshot meanwhile, and starts with empty report buffers (the
parent still owns and sends what it had buffered, so nothing is sent twice).
"""

from __future__ import annotations

import atexit
import os
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from turnout import routing
from turnout._log import LogOnce, log

# The `name as name` imports: names this module held before it became a front, still
# importable from here (the server's ingest, the package's __init__, applications).
from turnout.complete import CHARS_PER_TOKEN as CHARS_PER_TOKEN
from turnout.complete import Completion as Completion
from turnout.complete import complete as complete_request
from turnout.complete import estimate_tokens as estimate_tokens
from turnout.complete import request_of, warm_up
from turnout.contract import ERROR_KINDS as ERROR_KINDS
from turnout.contract import FALLBACK_CANDIDATE_ERROR as FALLBACK_CANDIDATE_ERROR
from turnout.contract import FALLBACK_CONTEXT_WINDOW as FALLBACK_CONTEXT_WINDOW
from turnout.contract import FALLBACK_REASONS as FALLBACK_REASONS
from turnout.contract import FEEDBACK_SCALES as FEEDBACK_SCALES
from turnout.contract import ROLES as ROLES
from turnout.contract import STREAM_URL_HEADER as STREAM_URL_HEADER
from turnout.providers.base import DEFAULT_RETRY, Adapters, Result, RetryPolicy
from turnout.reporter import SDK_NAME as SDK_NAME
from turnout.reporter import Reporter
from turnout.routing import ArmSpec, Decision, PlanSnapshot
from turnout.snapshot_source import SnapshotSource
from turnout.snapshot_source import advertised_stream_url as advertised_stream_url

_time = time.time
_urandom = os.urandom
IDS_PER_DRAW = 128


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
    :param stream_url: where the stream is served, if not where the server says it is (the
        ``Turnout-Stream-URL`` header of its config response) or at ``base_url``.
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

    _ids: list[str]  # decision ids drawn and not yet handed out (see _more_ids)

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
        self._closed = False
        self._started = False
        self._log = LogOnce()
        self._base_url = str(base_url).rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": SDK_NAME}
        self._timeout = float(timeout)
        self._close_timeout = max(0.0, float(close_timeout))
        self._batch_size = max(1, int(batch_size))
        self._flush_interval = max(0.01, float(flush_interval))
        self._buffer_size = max(1, int(buffer_size))
        self._max_backoff = max(0.01, float(max_backoff))
        self._provider_retry = provider_retry
        self._source = SnapshotSource(
            base_url=self._base_url,
            stream_url=stream_url,
            lkg_path=lkg_path,
            poll_interval=max(0.05, float(poll_interval)),
            stream=bool(stream),
            timeout=self._timeout,
            max_backoff=self._max_backoff,
            log_once=self._log,
        )
        self._reset_process_state()
        self._source.load_lkg()
        _live_clients.add(self)
        try:
            self._start_threads()
        except Exception as exc:  # e.g. a base_url httpx refuses: serve LKG / defaults
            log.error("turnout: client could not start, serving defaults: %s", exc)
            return
        self._source.ready.wait(max(0.0, float(start_wait)))

    # --- the hot path ----------------------------------------------------------------

    def decide(
        self,
        plan: str,
        unit: str,
        *,
        default: ArmSpec | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Which model to call for ``unit`` (a user or session id) under ``plan``.

        Never raises, never blocks on I/O. A plan the snapshot does not hold (or no snapshot
        at all) gives ``default`` with reason ``DEFAULT``; build one with :func:`arm`.
        ``attributes`` (strings, numbers, booleans by name, e.g. ``{"tenant": "acme",
        "internal": True}``) are what the plan's targeting rules read; a value a rule cannot
        compare is a rule that does not match, never an error. The decision's ``reason`` is
        ``EXCLUDED`` or ``OVERRIDE`` for a unit a rule excluded or a QA override routed
        (served, counted in neither arm: :meth:`report` marks their outcomes), and its
        ``cohort`` names the cohort a rule put the unit in.
        """
        try:
            try:
                decision_id = self._ids.pop()  # one C call: atomic under the GIL
            except IndexError:
                decision_id = self._more_ids()
            if unit.__class__ is not str:
                unit = str(unit)
            snapshot = self._source.snapshot.plans.get(plan)
            decision = routing.decide(
                snapshot,
                unit,
                decision_id=decision_id,
                default=default,
                attributes=attributes,
                now=_time(),
            )
            if attributes and snapshot is not None and snapshot.segments:
                # Guardrails per segment: the outcome carries the unit's segment values.
                routing.with_segments(decision, snapshot, attributes)
            return decision
        except Exception as exc:  # the host's request must go on, whatever happened here
            self._log.warning("decide", "turnout: decide failed, answering the default: %r", exc)
            return _fallback_decision(unit, default)

    def _more_ids(self) -> str:
        """Decision ids: 128 random bits each (32 hex digits) from the kernel's CSPRNG, so
        that one id tells nothing of another (feedback names its answer by it; a per-process
        prefix and a counter told every other id). Drawn :data:`IDS_PER_DRAW` at a time (one
        ``os.urandom`` call per draw keeps decide() within ~0.1 us of the counter; one per id
        cost ~0.5 us) and popped one by one. Two threads finding the list empty each draw
        one: every id is still fresh randomness, and none is handed out twice."""
        block = _urandom(16 * IDS_PER_DRAW).hex()
        ids = [block[i : i + 32] for i in range(0, len(block), 32)]
        decision_id = ids.pop()
        self._ids = ids
        return decision_id

    def report(
        self,
        decision: Decision,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        error: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Record how the call for ``decision`` went. Returns at once; never raises.

        ``error`` is ``None`` or one of :data:`ERROR_KINDS`; tokens are ``None`` when the
        provider did not say (unknown usage is unknown cost, not zero). Bad values are
        dropped (counted in :attr:`dropped`, logged once), off the request path.
        ``metrics``: the application's own per-request metrics known now, ``{name: value}``
        (names the plan or the catalog declares; a rate takes 0 or 1, ``True`` / ``False``
        too), sent with the outcome.
        """
        if self._closed:
            return
        try:
            # Reporter.outcome() written out: its call frame would be a third of this method's
            # cost (bench/bench_report.py), and this is the request path.
            reporter = self._reporter
            buffer = reporter.outcomes
            if len(buffer) >= reporter.buffer_size:
                reporter.count_dropped(1)  # deque(maxlen) is about to push out the oldest
            buffer.append(
                (
                    _time(),
                    decision,
                    latency_ms,
                    ttft_ms,
                    error,
                    input_tokens,
                    output_tokens,
                    None,
                    metrics,
                )  # fmt: skip
            )
            if len(buffer) >= reporter.batch_size and not reporter.wake.is_set():
                reporter.wake.set()
        except Exception as exc:
            self._log.warning("report", "turnout: report failed: %r", exc)

    def metric(self, decision: Decision | str, name: str, value: float) -> None:
        """The application's own measure of the answer given under ``decision`` (or its
        decision id), e.g. ``client.metric(d, "task_completed", 1)``, known after the
        outcome was reported (a later step of the task, another service). ``name`` is a
        metric the plan or the catalog declares; a rate takes 0 or 1 (``True`` / ``False``
        too), a mean a number within its bounds. Counted on its outcome, held by the server
        until the outcome arrives. Returns at once; never raises."""
        if self._closed:
            return
        try:
            # Reporter's buffer written to here: this is the request path (bench_report.py).
            reporter = self._reporter
            buffer = reporter.metrics
            if len(buffer) >= reporter.buffer_size:
                reporter.count_dropped(1)
            buffer.append((_time(), decision, name, value))
            if len(buffer) >= reporter.batch_size and not reporter.wake.is_set():
                reporter.wake.set()
        except Exception as exc:
            self._log.warning("metric", "turnout: metric failed: %r", exc)

    def feedback(self, decision_id: str, score: float, *, scale: str = "thumbs") -> None:
        """A user's rating of the answer given under ``decision_id`` (a :class:`Decision` is
        accepted too). ``scale``: ``thumbs`` (score -1 or 1) or ``five`` (1 to 5).
        Returns at once; never raises."""
        if self._closed:
            return
        try:
            self._reporter.feedback(decision_id, score, scale)
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
        never raises. The server redacts emails, phone numbers and keys before storing.
        Of ``params`` only the sampling controls the candidate's kind takes travel
        (:data:`turnout.providers.params.SAMPLE_PARAMS`); the others are left out."""
        if self._closed:
            return
        try:
            if not (isinstance(decision, Decision) and decision.shadow):
                return
            self._reporter.shadow(
                decision, messages, params, json_schema, control_text, latency_ms, ttft_ms,
                error, input_tokens, output_tokens,
            )  # fmt: skip
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
        attributes: Mapping[str, Any] | None = None,
    ) -> Completion:
        """Route, call the model, report, and shadow: the whole request in one call.

        ``messages`` are ``{"role": "system" | "user" | "assistant", "content": str}``;
        ``params`` are the application's call params (the arm's own win over them);
        ``json_schema`` asks for JSON (``{}``: any object) and checks the answer; ``stream``
        has the vendor stream (the time to first token is measured; the whole answer is still
        returned); ``timeout`` is per attempt, in seconds. Blocks for the model call(s).

        - The decision is :meth:`decide`'s (``attributes`` as there), and the arm is called through its adapter (the
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
        - In a split or rollout of a plan with the pointwise judge, the share of answers its
          snapshot names (``judge_bp``, drawn by decision id) goes, with the application's
          messages, to ``POST /api/v1/judge-samples`` through the same buffer and sender
          thread as outcomes (batched, idempotent ids, dropped and counted when full).

        Never raises for a vendor failure, or when both arms failed: the :class:`Completion`
        then has ``error`` set (the last call's kind) and every call's result in ``results``.
        An unknown plan without ``default`` is ``error="bad_request"`` with no call made.
        Bad arguments raise :class:`TypeError` or :class:`ValueError`.
        """
        request = request_of(messages, params, json_schema, stream, timeout)
        if not isinstance(plan, str):
            raise TypeError(f"plan must be a string, got {type(plan).__name__}")
        if default is not None and not isinstance(default, ArmSpec):
            raise TypeError("default must be an ArmSpec (see turnout.arm())")
        if self._source.on_install is None:
            # From now on each new snapshot warms up the adapters of the arms it routes to
            # (turnout.complete.warm_up), in the refresh thread: not for decide()-only hosts.
            self._source.on_install = lambda snapshot: warm_up(self._providers, snapshot)
        decision = self.decide(plan, unit, default=default, attributes=attributes)
        try:
            return complete_request(
                decision,
                request,
                providers=self._providers,
                plan_of=self._plan_of,
                report=self._report_result,
                shadow_sample=self.shadow_sample,
                log_once=self._log,
                judge_sample=self._judge_sample,
            )
        except Exception as exc:  # a bug here must not become the host's exception
            self._log.warning("complete", "turnout: complete failed: %r", exc)
            return Completion(
                "", decision, decision.arm, decision.spec, None, (), "server_error", repr(exc)
            )

    def _judge_sample(
        self, decision: Decision, arm: str, messages: list[dict[str, str]], answer: str
    ) -> None:
        """An answer ``complete()`` served, for the pointwise judge: queued, never raised."""
        if self._closed:
            return
        try:
            self._reporter.judge(decision, arm, messages, answer)
        except Exception as exc:
            self._log.warning("judge", "turnout: judge sample failed: %r", exc)

    def _plan_of(self, key: str) -> PlanSnapshot | None:
        return self._source.snapshot.plans.get(key)

    def _report_result(
        self,
        decision: Decision,
        result: Result,
        fallback: str | None,
        checks: Mapping[str, int] | None = None,
    ) -> None:
        """A call ``complete()`` made, with its answer checks as metrics; with a ``fallback``
        reason it goes out as ``arm: control`` and ``fallback: <reason>``, which the server
        stores without counting it in either arm's statistics (see :meth:`complete`)."""
        if self._closed:
            return
        self._reporter.outcome(
            decision, result.latency_ms, result.ttft_ms, result.error,
            result.input_tokens, result.output_tokens, fallback, checks,
        )  # fmt: skip

    # --- state -----------------------------------------------------------------------

    @property
    def snapshot(self) -> routing.Snapshot:
        """The snapshot ``decide()`` reads now (empty until one arrives)."""
        return self._source.snapshot

    @property
    def snapshot_version(self) -> str:
        return self._source.snapshot.version

    @property
    def dropped(self) -> int:
        """Events lost since start (or fork): buffer overflow, invalid values, a batch the
        server refused with a 4xx, or still unsent at close."""
        return self._reporter.dropped

    @property
    def rejected(self) -> int:
        """Events the server received but rejected one by one (its ``rejected`` list)."""
        return self._reporter.rejected

    def flush(self, timeout: float = 5.0) -> bool:
        """Send everything buffered now; True if it was all handed over within ``timeout``."""
        return self._reporter.flush(timeout)

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
        deadline = time.monotonic() + budget
        reporter = self._reporter
        try:
            reporter.closing(deadline)
            if self._started:
                reporter.flush(budget)
            reporter.stop()
            self._source.stop()
            if self._started:
                reporter.join(max(0.1, deadline - time.monotonic()))
                self._source.join(0.5)
            reporter.drop_unsent()
            if self._started and not reporter.is_alive():
                self._http.close()
        except Exception as exc:
            log.debug("turnout: close: %r", exc)
        self._providers.close()
        if reporter.dropped:
            log.info("turnout: closed; %d events were dropped in this process", reporter.dropped)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- process state and threads ---------------------------------------------------

    def _reset_process_state(self) -> None:
        """Everything that must not be shared across ``fork()``: the report buffers and their
        thread, the provider adapters, the decision ids not yet handed out. Called at
        construction and in a forked child (the snapshot source resets its own)."""
        self._ids = []
        self._reporter = Reporter(
            batch_size=self._batch_size,
            flush_interval=self._flush_interval,
            buffer_size=self._buffer_size,
            max_backoff=self._max_backoff,
            timeout=self._timeout,
            log_once=self._log,
        )
        # A forked child makes its own adapters: the parent's hold its connection pools.
        self._providers = Adapters(retry=self._provider_retry)

    def _start_threads(self) -> None:
        self._http = httpx.Client(
            base_url=self._base_url, headers=self._headers, timeout=self._timeout
        )
        self._source.start(self._http)
        self._reporter.start(self._http)
        self._started = True

    def _after_fork_in_child(self) -> None:
        if self._closed:
            return
        # The parent's connection pool is left alone, not closed: its sockets are shared with
        # the parent, and closing them here would cut the parent's connections.
        self._started = False
        self._reset_process_state()
        self._source.after_fork()  # the child inherited the parent's snapshot: serve it at once
        try:
            self._start_threads()
        except Exception as exc:
            log.error("turnout: could not restart after fork: %r", exc)


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
