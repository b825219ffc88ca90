"""The provider layer's shared parts: the normalised request and result, the one error type,
the one retry policy, the prompt adapter and the registry of adapters by kind.

An adapter turns a :class:`Request` into one vendor call through the vendor's own SDK, with the
SDK's retries off, and reports a :class:`Result`. :meth:`Provider.complete` never raises for a
vendor failure: the failure is a result (``error`` set), because the shadow pipeline and the
statistics count what the user would have seen, not an exception.
"""

from __future__ import annotations

import email.utils
import importlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar

from turnout.contract import ERROR_KINDS, TRANSIENT_KINDS
from turnout.routing import NO_PROMPT, ArmSpec, Prompt, thaw

_EMPTY: Mapping[str, Any] = MappingProxyType({})
log = logging.getLogger("turnout")


class ProviderError(Exception):
    """Every vendor failure, whatever the SDK raised: a ``kind`` from :data:`ERROR_KINDS`,
    whether another attempt may succeed (``transient``), the HTTP status when there was one,
    and the server's ``retry_after`` in seconds when it said how long to wait."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        transient: bool | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.transient = kind in TRANSIENT_KINDS if transient is None else transient
        self.status = status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ProviderError({self.kind!r}, status={self.status}, transient={self.transient})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One model call, vendor-neutral.

    ``messages`` are ``{"role": "system" | "user" | "assistant", "content": str}``; system
    messages are joined into the vendor's system prompt. ``json_schema`` asks for JSON: a JSON
    schema, or ``{}`` for any JSON object; the answer is then checked (``invalid_output``).
    ``timeout`` is per attempt, in seconds.
    """

    messages: Sequence[Mapping[str, str]]
    params: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    json_schema: Mapping[str, Any] | None = None
    stream: bool = False
    timeout: float = 30.0

    @property
    def system(self) -> str | None:
        """The system prompt: every system message's content, in order, or ``None``."""
        parts = [m["content"] for m in self.messages if m.get("role") == "system"]
        return "\n\n".join(parts) if parts else None

    @property
    def conversation(self) -> list[dict[str, str]]:
        """The messages without the system ones."""
        return [
            {"role": m["role"], "content": m["content"]}
            for m in self.messages
            if m.get("role") != "system"
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """What one :meth:`Provider.complete` produced, success or failure.

    Tokens are ``None`` when the server did not say (the cost is then unknown, never zero).
    ``latency_ms`` runs from the call to the last byte, retries and back-off included (what the
    user would have waited); ``ttft_ms`` likewise to the first text, when streaming.
    ``error`` is ``None`` or a kind from :data:`ERROR_KINDS`; ``text`` may be set on an error
    (``invalid_output`` keeps the unparsable answer).
    """

    text: str
    model: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    finish_reason: str | None = None
    error: str | None = None
    transient: bool = False
    status: int | None = None
    error_message: str = ""
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "finish_reason": self.finish_reason,
            "error": self.error,
            "transient": self.transient,
            "status": self.status,
            "error_message": self.error_message,
            "attempts": self.attempts,
        }


@dataclass(frozen=True, slots=True)
class Answer:
    """What an adapter's single attempt returns on success (normalised, before checks).

    ``finish_reason`` is normalised to ``stop``, ``length``, ``content_filter`` or the vendor's
    own word when none of those fits. ``ttft`` is seconds since the call began, when streamed.
    """

    text: str
    finish_reason: str | None
    input_tokens: int | None
    output_tokens: int | None
    ttft: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """The one retry policy (the SDKs' own are off).

    Transient kinds only; at most ``max_attempts`` attempts and ``max_total_s`` seconds from the
    first call (attempts plus waits); the wait is the server's ``Retry-After`` when it sent one
    (a wait longer than ``max_retry_after_s`` or than the time left means give up now, not
    later), otherwise "full jitter": uniform in [0, min(cap, base * 2**n)] (AWS Architecture
    Blog, "Exponential Backoff And Jitter", 2015: spreads a burst of clients that failed
    together, which equal-jitter and no-jitter do not).
    """

    max_attempts: int = 3
    base_s: float = 0.5
    max_backoff_s: float = 8.0
    max_total_s: float = 60.0
    max_retry_after_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, unit: float) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based); ``unit`` in [0, 1)."""
        if retry_after is not None:
            return max(0.0, retry_after)
        return unit * min(self.max_backoff_s, self.base_s * 2.0 ** (attempt - 1))

    def next_wait(
        self, error: ProviderError, attempt: int, elapsed: float, unit: float
    ) -> float | None:
        """The wait before another attempt, or ``None`` when the call should give up."""
        if not error.transient or attempt >= self.max_attempts:
            return None
        if error.retry_after is not None and error.retry_after > self.max_retry_after_s:
            return None
        wait = self.delay(attempt, error.retry_after, unit)
        if elapsed + wait >= self.max_total_s:
            return None
        return wait


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


def retry_after_seconds(
    headers: Mapping[str, str] | None, now: float | None = None
) -> float | None:
    """The server's requested wait: ``retry-after-ms``, then ``retry-after`` in seconds or as
    an HTTP date (RFC 9110 §10.2.3); ``None`` when absent or unreadable."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def kind_for_status(status: int) -> str:
    """The error kind an HTTP status means when the vendor's body says nothing more precise."""
    if status in (401, 403):
        return "auth"
    if status in (408, 504):
        return "timeout"
    if status == 429:
        return "rate_limited"
    if status in (503, 529):
        return "overloaded"
    if status >= 500:
        return "server_error"
    return "bad_request"


def with_prompt(request: Request, prompt: Prompt) -> Request:
    """The request with the arm's prompt adapter applied to its system prompt."""
    if prompt.mode == "none":
        return request
    system = prompt.apply(request.system)
    messages: list[Mapping[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.extend(request.conversation)
    return replace(request, messages=messages)


def check_output(answer: Answer, request: Request) -> ProviderError | None:
    """The failure a successful HTTP answer still is: filtered, empty, or not the JSON asked for.

    The JSON check is validity plus the schema's top-level ``type: object`` and ``required``
    keys; a full JSON Schema validator would be a dependency for a rare benefit.
    """
    if answer.finish_reason == "content_filter":
        return ProviderError("content_filter", "the answer was withheld by the content filter")
    if not answer.text.strip():
        return ProviderError("empty_output", "the model returned no text")
    if request.json_schema is None:
        return None
    from turnout.compare import parse_json  # the one JSON reader (code fences tolerated)

    ok, value = parse_json(answer.text)
    if not ok:
        return ProviderError("invalid_output", "the answer is not valid JSON")
    schema = request.json_schema
    if schema.get("type") == "object" and not isinstance(value, dict):
        return ProviderError("invalid_output", "the answer is JSON but not an object")
    required = schema.get("required") or ()
    if isinstance(value, dict):
        missing = [key for key in required if key not in value]
        if missing:
            return ProviderError("invalid_output", f"the answer lacks required keys {missing}")
    return None


def schema_for_vendor(request: Request) -> dict[str, Any]:
    """The JSON schema to send: the request's, or "any object" when it asked for JSON only."""
    schema = dict(request.json_schema or {})
    return schema or {"type": "object"}


def merged_params(arm: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
    """Request params overlaid by the arm's: the plan's params for its model win (a candidate
    may need its own ``max_tokens`` or temperature), the application's fill the rest."""
    params = dict(request)
    params.update(arm)
    return params


class Provider:
    """One model at one provider. Subclasses implement :meth:`_call` (one attempt, through the
    vendor SDK with its retries off) and raise :class:`ProviderError` for every failure.

    Thread-safe: the vendor clients are, and the only state here is read-only configuration,
    so one instance serves a worker's whole thread pool (and its connection pool).
    """

    kind: ClassVar[str] = ""

    def __init__(
        self,
        *,
        model: str,
        api_key: str = "",
        base_url: str = "",
        params: Mapping[str, Any] | None = None,
        prompt: Prompt = NO_PROMPT,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.model = model
        self.api_key = api_key
        self.base_url = base_url
        self.params: Mapping[str, Any] = dict(params or {})
        self.prompt = prompt
        self.retry = retry
        self._sleep = sleep
        self._rng = rng or random.Random()

    def _call(self, request: Request, started: float) -> Answer:
        raise NotImplementedError

    def close(self) -> None:
        """Release the vendor client's connections."""

    def complete(self, request: Request) -> Result:
        """Call the model (prompt adapter applied, retries per :attr:`retry`) and report.

        Never raises a vendor failure: it comes back as ``Result.error``.
        """
        request = with_prompt(request, self.prompt)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = self._call(request, started)
            except ProviderError as exc:
                error = exc
                wait = self.retry.next_wait(
                    error, attempt, time.monotonic() - started, self._rng.random()
                )
                if wait is None:
                    return self._failure(error, started, attempt)
                self._sleep(wait)
                continue
            latency_ms = (time.monotonic() - started) * 1000.0
            ttft_ms = answer.ttft * 1000.0 if answer.ttft is not None else None
            failed = check_output(answer, request)
            return Result(
                text=answer.text,
                model=self.model,
                input_tokens=answer.input_tokens,
                output_tokens=answer.output_tokens,
                latency_ms=latency_ms,
                ttft_ms=ttft_ms,
                finish_reason=answer.finish_reason,
                error=failed.kind if failed else None,
                error_message=failed.message if failed else "",
                attempts=attempt,
            )

    def _failure(self, error: ProviderError, started: float, attempts: int) -> Result:
        return Result(
            text="",
            model=self.model,
            latency_ms=(time.monotonic() - started) * 1000.0,
            error=error.kind,
            transient=error.transient,
            status=error.status,
            error_message=error.message,
            attempts=attempts,
        )


# --- registry ---

#: kind -> module holding its adapter. Imported on first use: the vendor SDKs are an optional
#: extra of the turnout package, and an application using one vendor needs only that SDK.
_MODULES = {
    "openai": "turnout.providers.openai",
    "anthropic": "turnout.providers.anthropic",
    "gemini": "turnout.providers.gemini",
    "openai_compatible": "turnout.providers.openai_compatible",
}
REGISTRY: dict[str, type[Provider]] = {}


def register(cls: type[Provider]) -> type[Provider]:
    """Class decorator: make an adapter available under its ``kind``."""
    REGISTRY[cls.kind] = cls
    return cls


def provider_class(kind: str) -> type[Provider]:
    """The adapter class for ``kind``; :class:`ProviderError` (``bad_request``) when unknown."""
    if kind not in REGISTRY and kind in _MODULES:
        importlib.import_module(_MODULES[kind])
    try:
        return REGISTRY[kind]
    except KeyError:
        raise ProviderError(
            "bad_request", f"no provider adapter for kind {kind!r}", transient=False
        ) from None


def provider_for(
    spec: ArmSpec,
    *,
    env: Mapping[str, str] | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> Provider:
    """The adapter for an arm: its kind, model, base URL, params and prompt adapter, with the
    API key read from the environment variable the arm names (keys never travel in snapshots).

    Raises :class:`ProviderError` (``auth``) when the arm names a variable that is not set, and
    (``bad_request``) for a kind no adapter serves.
    """
    environ = os.environ if env is None else env
    api_key = ""
    if spec.api_key_env:
        api_key = environ.get(spec.api_key_env, "")
        if not api_key:
            raise ProviderError(
                "auth", f"environment variable {spec.api_key_env} is not set", transient=False
            )
    cls = provider_class(spec.kind)
    return cls(
        model=spec.model,
        api_key=api_key,
        base_url=spec.base_url,
        params=thaw(spec.params),
        prompt=spec.prompt,
        retry=retry,
        sleep=sleep,
        rng=rng,
    )


def spec_key(spec: ArmSpec) -> str:
    """An arm's identity for an adapter cache (ArmSpec holds mappings, so it has no hash)."""
    return json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"), default=repr)


class Adapters:
    """One adapter per arm, made on first use and kept (its connection pool with it), shared
    by every thread of the process: :class:`Provider` is thread-safe.

    After :meth:`close` (which closes every kept adapter) :meth:`get` still answers, with an
    adapter the caller owns and must close.
    """

    def __init__(self, *, retry: RetryPolicy = DEFAULT_RETRY) -> None:
        self._retry = retry
        self._kept: dict[str, Provider] = {}
        self._lock = threading.Lock()
        self._making: dict[str, threading.Lock] = {}
        self._closed = False

    def get(self, spec: ArmSpec) -> tuple[Provider, bool]:
        """The arm's adapter, and whether the caller owns it (must close it). Raises
        :class:`ProviderError` as :func:`provider_for` does."""
        key = spec_key(spec)
        provider = self._kept.get(key)  # no lock on the common path: dict reads are atomic
        if provider is not None:
            return provider, False
        with self._lock:
            making = self._making.setdefault(key, threading.Lock())
        # One lock per arm: an arm's adapter is made once, by the first thread, while the
        # others calling it wait for that one (a worker's 64 threads used to make 64 clients,
        # each with its SSL context, and close 63). The first use of a vendor imports its SDK
        # (a second or so): threads calling other arms are not held up by it.
        with making:
            provider = self._kept.get(key)
            if provider is not None:
                return provider, False
            made = provider_for(spec, retry=self._retry)
            with self._lock:
                if self._closed:
                    return made, True
                self._kept[key] = made
        return made, False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            adapters = list(self._kept.values())
            self._kept.clear()
        for adapter in adapters:
            try:
                adapter.close()
            except Exception as exc:  # closing connections: nothing left to do
                log.debug("turnout: closing an adapter: %r", exc)


def text_of(parts: Iterable[Any]) -> str:
    """Concatenated text of vendor content parts (objects with a ``text`` attribute or None)."""
    return "".join(getattr(p, "text", None) or "" for p in parts)


def json_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
