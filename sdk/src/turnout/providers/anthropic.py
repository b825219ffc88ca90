"""Anthropic: the messages API through the ``anthropic`` SDK (``max_retries=0``).

Claude takes the system prompt as a top-level ``system`` field, not as a message, and requires
``max_tokens``; JSON is asked for with structured outputs (``output_config.format``).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
from typing import Any

import anthropic

from turnout.providers.base import (
    Answer,
    Provider,
    ProviderError,
    Request,
    kind_for_status,
    merged_params,
    register,
    retry_after_seconds,
    schema_for_vendor,
)

#: Sent when neither the arm nor the request sets ``max_tokens`` (the API refuses a call
#: without it; the other vendors default to the model's limit).
DEFAULT_MAX_TOKENS = 1024

#: Anthropic's ``error.type`` values; they decide the kind before the status does (a 400 may
#: be "credit balance too low", which is no more retryable than any other 400).
_KINDS = {
    "rate_limit_error": "rate_limited",
    "overloaded_error": "overloaded",
    "api_error": "server_error",
    "timeout_error": "timeout",
    "authentication_error": "auth",
    "permission_error": "auth",
    "invalid_request_error": "bad_request",
    "not_found_error": "bad_request",
    "request_too_large": "bad_request",
}
#: The keyword arguments this SDK release names. Sampling params (``temperature``, ``top_p``,
#: ``top_k``) are no longer among them in anthropic 2.x, though models still accept them on the
#: wire: whatever the SDK does not name goes in ``extra_body``, so an arm's params reach the API
#: whatever the SDK release, and the API (not the SDK) says when one is wrong.
_NAMED = frozenset(inspect.signature(anthropic.resources.messages.Messages.create).parameters) - {
    "self",
    "extra_body",
}

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    # Claude 4 declines with stop_reason "refusal": the content filter, in the common list.
    "refusal": "content_filter",
}


def error_from(exc: anthropic.AnthropicError) -> ProviderError:
    """The :class:`ProviderError` an ``anthropic`` exception means."""
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderError("timeout", str(exc))
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderError("connection", str(exc))
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        etype, message = _error_fields(exc.body)
        kind = _KINDS.get(etype or "", kind_for_status(status))
        return ProviderError(
            kind,
            message or str(exc),
            status=status,
            retry_after=retry_after_seconds(exc.response.headers),
        )
    if isinstance(exc, anthropic.APIResponseValidationError):
        return ProviderError("server_error", str(exc), transient=False)
    return ProviderError("bad_request", str(exc), transient=False)


def _error_fields(body: object) -> tuple[str | None, str]:
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            etype = inner.get("type")
            message = inner.get("message")
            return (
                etype if isinstance(etype, str) else None,
                message if isinstance(message, str) else "",
            )
    return None, ""


def _finish(stop_reason: str | None) -> str | None:
    return _FINISH.get(stop_reason or "", stop_reason)


@register
class AnthropicProvider(Provider):
    """``kind: anthropic``. ``max_tokens`` defaults to :data:`DEFAULT_MAX_TOKENS`; ``stop`` is
    sent as ``stop_sequences``; other params (``temperature``, ``top_p``, ``top_k``) as they are."""

    kind = "anthropic"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = anthropic.Anthropic(
            api_key=self.api_key or "unused",
            base_url=self.base_url or None,
            max_retries=0,
        )

    def close(self) -> None:
        self.client.close()

    def _call(self, request: Request, started: float) -> Answer:
        params = merged_params(self.params, request.params)
        params.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        if "stop" in params:
            stop = params.pop("stop")
            params["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if request.system is not None:
            params["system"] = request.system
        if request.json_schema is not None:
            params["output_config"] = {
                "format": {"type": "json_schema", "schema": schema_for_vendor(request)}
            }
        extra = {key: params.pop(key) for key in list(params) if key not in _NAMED}
        if extra:
            params["extra_body"] = extra
        # Free-form arm params: the SDK's overloads cannot be resolved statically.
        create: Any = self.client.messages.create
        try:
            if not request.stream:
                message = create(
                    model=self.model,
                    messages=request.conversation,
                    timeout=request.timeout,
                    **params,
                )
                usage = getattr(message, "usage", None)
                return Answer(
                    text="".join(block.text for block in message.content if block.type == "text"),
                    finish_reason=_finish(message.stop_reason),
                    input_tokens=usage.input_tokens if usage else None,
                    output_tokens=usage.output_tokens if usage else None,
                )
            return self._stream(create, request, params, started)
        except anthropic.AnthropicError as exc:
            raise error_from(exc) from exc

    def _stream(
        self, create: Any, request: Request, params: dict[str, Any], started: float
    ) -> Answer:
        stream = create(
            model=self.model,
            messages=request.conversation,
            stream=True,
            timeout=request.timeout,
            **params,
        )
        parts: list[str] = []
        ttft: float | None = None
        finish: str | None = None
        input_tokens: int | None = None
        output_tokens: int | None = None
        with stream:
            event: Any
            for event in stream:
                if event.type == "message_start":
                    usage = getattr(event.message, "usage", None)
                    input_tokens = usage.input_tokens if usage else None
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    if event.delta.text and ttft is None:
                        ttft = time.monotonic() - started
                    parts.append(event.delta.text)
                elif event.type == "message_delta":
                    finish = _finish(event.delta.stop_reason)
                    usage = getattr(event, "usage", None)
                    # Cumulative: the last message_delta holds the answer's total.
                    if usage is not None:
                        output_tokens = usage.output_tokens
        return Answer("".join(parts), finish, input_tokens, output_tokens, ttft)
