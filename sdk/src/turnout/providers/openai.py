"""OpenAI: chat completions (the default) or the responses API (arm param ``"api": "responses"``).

The ``openai`` SDK with ``max_retries=0``: :class:`~turnout.providers.base.RetryPolicy` is the
only layer that retries (reference/providers.md, "let exactly one layer own them").
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import openai

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

#: OpenAI ``error.code`` / ``error.type`` values that decide the kind more precisely than the status.
_QUOTA = "insufficient_quota"
_FILTERED = frozenset({"content_filter", "content_policy_violation"})


def error_from(exc: openai.OpenAIError) -> ProviderError:
    """The :class:`ProviderError` an ``openai`` exception means (also for OpenAI-compatible servers)."""
    # APITimeoutError is a subclass of APIConnectionError: test it first.
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError("timeout", str(exc))
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError("connection", str(exc))
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code = getattr(exc, "code", None)
        etype = getattr(exc, "type", None)
        message = _message(exc.body) or str(exc)
        retry_after = retry_after_seconds(exc.response.headers)
        if code in _FILTERED:
            return ProviderError("content_filter", message, status=status)
        if status == 429 and _QUOTA in (code, etype):
            # Out of credit: waiting a second will not refill it.
            return ProviderError("rate_limited", message, transient=False, status=status)
        return ProviderError(
            kind_for_status(status), message, status=status, retry_after=retry_after
        )
    if isinstance(exc, openai.APIResponseValidationError):
        return ProviderError("server_error", str(exc), transient=False)
    return ProviderError("bad_request", str(exc), transient=False)


def _message(body: object) -> str:
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return ""


def _finish_from_incomplete(status: str | None, details: Any) -> str | None:
    if status == "completed":
        return "stop"
    reason = getattr(details, "reason", None)
    if reason == "max_output_tokens":
        return "length"
    return reason or status


@register
class OpenAIProvider(Provider):
    """``kind: openai``. Params go to the SDK as they are, except ``api`` (``chat`` or
    ``responses``) and, for the responses API, ``max_tokens`` (sent as ``max_output_tokens``)."""

    kind = "openai"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = openai.OpenAI(
            api_key=self.api_key or "unused",
            base_url=self.base_url or None,
            max_retries=0,
        )

    def close(self) -> None:
        self.client.close()

    def _call(self, request: Request, started: float) -> Answer:
        params = merged_params(self.params, request.params)
        api = params.pop("api", "chat")
        try:
            if api == "responses":
                return self._responses(request, params, started)
            return self._chat(request, params, started)
        except openai.OpenAIError as exc:
            raise error_from(exc) from exc

    # --- chat completions ---

    def _chat(self, request: Request, params: dict[str, Any], started: float) -> Answer:
        messages: list[dict[str, str]] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.extend(request.conversation)
        if request.json_schema is not None:
            params["response_format"] = (
                {
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "schema": schema_for_vendor(request)},
                }
                if request.json_schema
                else {"type": "json_object"}
            )
        # Arm params are free-form (whatever the model takes), so the SDK's typed overloads
        # cannot be resolved statically: the call is typed Any and the answer read defensively.
        create: Any = self.client.chat.completions.create
        if not request.stream:
            completion = create(
                model=self.model, messages=messages, timeout=request.timeout, **params
            )
            choice = completion.choices[0] if completion.choices else None
            usage = completion.usage
            return Answer(
                text=(choice.message.content or "") if choice else "",
                finish_reason=choice.finish_reason if choice else None,
                input_tokens=usage.prompt_tokens if usage else None,
                output_tokens=usage.completion_tokens if usage else None,
            )
        stream = create(
            model=self.model,
            messages=messages,
            stream=True,
            # The last chunk then carries usage (choices empty); servers that ignore it send none.
            stream_options={"include_usage": True},
            timeout=request.timeout,
            **params,
        )
        parts: list[str] = []
        ttft: float | None = None
        finish: str | None = None
        input_tokens: int | None = None
        output_tokens: int | None = None
        with stream:
            for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        if ttft is None:
                            ttft = time.monotonic() - started
                        parts.append(choice.delta.content)
                    if choice.finish_reason:
                        finish = choice.finish_reason
                if chunk.usage is not None:
                    input_tokens = chunk.usage.prompt_tokens
                    output_tokens = chunk.usage.completion_tokens
        return Answer("".join(parts), finish, input_tokens, output_tokens, ttft)

    # --- responses API ---

    def _responses(self, request: Request, params: dict[str, Any], started: float) -> Answer:
        if "max_tokens" in params:
            params["max_output_tokens"] = params.pop("max_tokens")
        if request.system is not None:
            params["instructions"] = request.system
        if request.json_schema is not None:
            params["text"] = {
                "format": (
                    {"type": "json_schema", "name": "answer", "schema": schema_for_vendor(request)}
                    if request.json_schema
                    else {"type": "json_object"}
                )
            }
        create: Any = self.client.responses.create  # free-form params: see _chat
        if not request.stream:
            response = create(
                model=self.model, input=request.conversation, timeout=request.timeout, **params
            )
            usage = response.usage
            return Answer(
                text=response.output_text,
                finish_reason=_finish_from_incomplete(response.status, response.incomplete_details),
                input_tokens=usage.input_tokens if usage else None,
                output_tokens=usage.output_tokens if usage else None,
            )
        stream = create(
            model=self.model,
            input=request.conversation,
            stream=True,
            timeout=request.timeout,
            **params,
        )
        parts: list[str] = []
        ttft: float | None = None
        final: Any = None
        with stream:
            # The SDK's event union is too wide to narrow usefully; the types tested are these.
            event: Any
            for event in stream:
                if event.type == "response.output_text.delta":
                    if event.delta and ttft is None:
                        ttft = time.monotonic() - started
                    parts.append(event.delta)
                elif event.type in ("response.completed", "response.incomplete"):
                    final = event.response
                elif event.type == "response.failed":
                    error = getattr(event.response, "error", None)
                    raise ProviderError(
                        "server_error", getattr(error, "message", "response failed")
                    )
                elif event.type == "error":
                    raise ProviderError("server_error", event.message)
        usage = getattr(final, "usage", None)
        return Answer(
            text="".join(parts),
            finish_reason=_finish_from_incomplete(
                getattr(final, "status", None), getattr(final, "incomplete_details", None)
            ),
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            ttft=ttft,
        )
