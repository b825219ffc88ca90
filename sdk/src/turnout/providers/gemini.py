"""Gemini: ``generate_content`` through ``google-genai``, retries off (one attempt).

Gemini's errors are Google RPC statuses; the body's ``details`` say more than the HTTP code:
a bad key is a 400 with ``ErrorInfo.reason = API_KEY_INVALID``, a per-day quota is a 429 whose
``QuotaFailure`` will not clear in seconds, and the wait is ``RetryInfo.retryDelay`` (no
``Retry-After`` header).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from google import genai
from google.genai import errors, types

from turnout.providers.base import (
    Answer,
    Provider,
    ProviderError,
    Request,
    kind_for_status,
    merged_params,
    register,
    schema_for_vendor,
    text_of,
)

_KINDS = {
    "RESOURCE_EXHAUSTED": "rate_limited",
    "UNAVAILABLE": "overloaded",
    "INTERNAL": "server_error",
    "DEADLINE_EXCEEDED": "timeout",
    "UNAUTHENTICATED": "auth",
    "PERMISSION_DENIED": "auth",
    "INVALID_ARGUMENT": "bad_request",
    "FAILED_PRECONDITION": "bad_request",
    "NOT_FOUND": "bad_request",
}
_FILTERED = frozenset(
    {"SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "MODEL_ARMOR"}
)
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
_DURATION = re.compile(r"^\s*([0-9.]+)s\s*$")
#: GenerateContentConfig names for the common params.
_RENAMED = {"max_tokens": "max_output_tokens", "stop": "stop_sequences"}


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(timeouts, other transport failures) of the HTTP clients google-genai may use: httpx,
    and httpx2 in releases that moved to it."""
    timeouts: list[type[BaseException]] = []
    transport: list[type[BaseException]] = []
    for name in ("httpx", "httpx2"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        transport.append(module.TransportError)
    return tuple(timeouts), tuple(transport)


_TIMEOUTS, _TRANSPORT = _transport_errors()


def _details(body: object) -> list[Mapping[str, Any]]:
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("details"), list):
            return [d for d in inner["details"] if isinstance(d, Mapping)]
    return []


def error_from(exc: errors.APIError) -> ProviderError:
    """The :class:`ProviderError` a google-genai ``APIError`` means."""
    status = int(exc.code) if exc.code else 0
    kind = _KINDS.get(exc.status or "", kind_for_status(status) if status else "server_error")
    transient: bool | None = None
    retry_after: float | None = None
    for detail in _details(exc.details):
        dtype = str(detail.get("@type", ""))
        if dtype.endswith("google.rpc.ErrorInfo") and detail.get("reason") == "API_KEY_INVALID":
            kind = "auth"
        elif dtype.endswith("google.rpc.QuotaFailure"):
            violations = detail.get("violations") or []
            if any(
                "PerDay" in str(v.get("quotaId", "")) for v in violations if isinstance(v, Mapping)
            ):
                transient = False  # a daily quota does not come back within a retry budget
        elif dtype.endswith("google.rpc.RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                retry_after = float(match.group(1))
    return ProviderError(
        kind,
        exc.message or str(exc),
        transient=transient,
        status=status or None,
        retry_after=retry_after,
    )


def _finish(candidate: Any) -> str | None:
    reason = getattr(candidate, "finish_reason", None)
    if reason is None:
        return None
    name = str(getattr(reason, "value", reason))
    if name in _FILTERED:
        return "content_filter"
    return _FINISH.get(name, name.lower())


@register
class GeminiProvider(Provider):
    """``kind: gemini``. ``max_tokens`` is sent as ``max_output_tokens`` and ``stop`` as
    ``stop_sequences``; other params must be ``GenerateContentConfig`` fields (an unknown one
    is a ``bad_request``, refused before any call)."""

    kind = "gemini"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        options = types.HttpOptions(
            # google-genai retries only when given retry options: one attempt, said explicitly.
            retry_options=types.HttpRetryOptions(attempts=1),
            base_url=self.base_url or None,
        )
        self.client = genai.Client(api_key=self.api_key or "unused", http_options=options)

    def close(self) -> None:
        self.client.close()

    def _config(self, request: Request) -> types.GenerateContentConfig:
        params = merged_params(self.params, request.params)
        config = {_RENAMED.get(key, key): value for key, value in params.items()}
        if isinstance(config.get("stop_sequences"), str):
            config["stop_sequences"] = [config["stop_sequences"]]
        if request.system is not None:
            config["system_instruction"] = request.system
        if request.json_schema is not None:
            config["response_mime_type"] = "application/json"
            config["response_json_schema"] = schema_for_vendor(request)
        # HttpOptions.timeout is in milliseconds.
        config["http_options"] = types.HttpOptions(timeout=max(1, round(request.timeout * 1000)))
        try:
            return types.GenerateContentConfig(**config)
        except ValueError as exc:  # pydantic: an unknown or mistyped field
            raise ProviderError("bad_request", str(exc), transient=False) from exc

    def _call(self, request: Request, started: float) -> Answer:
        config = self._config(request)
        contents = [
            types.Content(
                role="model" if m["role"] == "assistant" else "user",
                parts=[types.Part(text=m["content"])],
            )
            for m in request.conversation
        ]
        try:
            if not request.stream:
                response = self.client.models.generate_content(
                    model=self.model, contents=contents, config=config
                )
                return self._answer([response], None)
            parts: list[types.GenerateContentResponse] = []
            ttft: float | None = None
            for chunk in self.client.models.generate_content_stream(
                model=self.model, contents=contents, config=config
            ):
                if ttft is None and _text(chunk):
                    ttft = time.monotonic() - started
                parts.append(chunk)
            return self._answer(parts, ttft)
        except errors.APIError as exc:
            raise error_from(exc) from exc
        except _TIMEOUTS as exc:
            raise ProviderError("timeout", str(exc) or "timed out") from exc
        except _TRANSPORT as exc:
            raise ProviderError("connection", str(exc) or "connection failed") from exc

    def _answer(
        self, responses: Iterable[types.GenerateContentResponse], ttft: float | None
    ) -> Answer:
        texts: list[str] = []
        finish: str | None = None
        usage: Any = None
        for response in responses:
            texts.append(_text(response))
            candidate = response.candidates[0] if response.candidates else None
            finish = _finish(candidate) or finish
            feedback = response.prompt_feedback
            if feedback is not None and feedback.block_reason is not None:
                finish = "content_filter"  # the prompt itself was blocked
            # Each chunk carries the usage so far; the last one is the total.
            usage = response.usage_metadata or usage
        return Answer(
            text="".join(texts),
            finish_reason=finish,
            input_tokens=usage.prompt_token_count if usage else None,
            output_tokens=usage.candidates_token_count if usage else None,
            ttft=ttft,
        )


def _text(response: types.GenerateContentResponse) -> str:
    candidate = response.candidates[0] if response.candidates else None
    content = candidate.content if candidate else None
    return text_of(content.parts or []) if content else ""
