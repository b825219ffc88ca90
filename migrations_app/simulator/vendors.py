"""The three wire formats the simulator speaks: request parsing, success bodies, streams and
error bodies, as the vendors send them (reference/providers.md).

Each vendor is a set of pure functions over plain data; the server does the timing and I/O.
A stream is returned as three lists of frames: ``head`` (sent at once, before the first
token), ``pieces`` (one per text chunk, spread over the latency) and ``tail``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from migrations_app.simulator.profiles import Prompted, chunks

Usage = tuple[int, int] | None  # (input, output) tokens, or None when the profile omits usage


@dataclass(frozen=True, slots=True)
class Stream:
    content_type: str
    head: list[bytes]
    pieces: list[bytes]
    tail: list[bytes]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {_dumps(data)}\n\n".encode()


def _text(content: Any) -> str:
    """Message content as text: a string or a list of parts with ``text`` (every vendor)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


def _retry_headers(retry_after_s: float | None) -> dict[str, str]:
    if retry_after_s is None:
        return {}
    # OpenAI and Anthropic clients read retry-after-ms first, then retry-after in seconds.
    return {
        "retry-after-ms": str(round(retry_after_s * 1000)),
        "retry-after": str(max(0, round(retry_after_s))),
    }


# --- OpenAI chat completions: POST /v1/chat/completions ---


def chat_parse(body: Mapping[str, Any]) -> Prompted:
    system: list[str] = []
    texts: list[str] = []
    for message in body.get("messages") or []:
        if not isinstance(message, Mapping):
            continue
        if message.get("role") in ("system", "developer"):
            system.append(_text(message.get("content")))
        else:
            texts.append(_text(message.get("content")))
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt, Mapping) else None
    options = body.get("stream_options") or {}
    return Prompted(
        model=str(body.get("model", "")),
        system="\n\n".join(system),
        messages=tuple(texts),
        stream=bool(body.get("stream")),
        json_wanted=isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema"),
        schema=schema if isinstance(schema, Mapping) else None,
        include_usage=bool(isinstance(options, Mapping) and options.get("include_usage")),
    )


def _chat_usage(usage: Usage) -> dict[str, int] | None:
    if usage is None:
        return None
    return {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}


def chat_success(p: Prompted, text: str, usage: Usage, finish: str, rid: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": 0,
        "model": p.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text or None, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "system_fingerprint": "fp_sim",
    }
    if usage is not None:
        body["usage"] = _chat_usage(usage)
    return body


def chat_stream(p: Prompted, text: str, usage: Usage, finish: str, pieces: int, rid: str) -> Stream:
    def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": p.model,
            "system_fingerprint": "fp_sim",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }

    tail = [_sse(chunk({}, finish))]
    if p.include_usage and usage is not None:
        last = chunk({}, None)
        last["choices"] = []
        last["usage"] = _chat_usage(usage)
        tail.append(_sse(last))
    tail.append(b"data: [DONE]\n\n")
    return Stream(
        "text/event-stream",
        head=[_sse(chunk({"role": "assistant", "content": ""}, None))],
        pieces=[_sse(chunk({"content": piece}, None)) for piece in chunks(text, pieces)],
        tail=tail,
    )


_OPENAI_ERRORS: dict[str, tuple[int, str, str | None, str | None]] = {
    # kind: (status, type, code, message)
    "rate_limited": (
        429, "requests", "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-sim on requests per min (RPM): "
        "Limit 500, Used 500, Requested 1. Please try again in 120ms. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.",
    ),
    "quota": (
        429, "insufficient_quota", "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
    ),
    "overloaded": (503, "server_error", None, "The server is overloaded or not ready yet."),
    "server_error": (
        500, "server_error", None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "bad_request": (
        400, "invalid_request_error", None,
        "Invalid value for 'messages': the request could not be processed.",
    ),
    "auth": (
        401, "invalid_request_error", "invalid_api_key",
        "Incorrect API key provided: sk-sim****. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
}  # fmt: skip


def openai_error(kind: str, model: str, retry_after_s: float | None) -> ErrorReply:
    status, etype, code, message = _OPENAI_ERRORS[kind]
    body = {
        "error": {
            "message": (message or "").format(model=model),
            "type": etype,
            "param": "messages" if kind == "bad_request" else None,
            "code": code,
        }
    }
    headers = _retry_headers(retry_after_s) if status in (429, 503) and kind != "quota" else {}
    return ErrorReply(status, body, headers)


# --- OpenAI responses API: POST /v1/responses ---


def responses_parse(body: Mapping[str, Any]) -> Prompted:
    raw = body.get("input")
    texts: list[str] = []
    system: list[str] = [str(body["instructions"])] if body.get("instructions") else []
    if isinstance(raw, str):
        texts.append(raw)
    elif isinstance(raw, list):
        for item in raw:
            if not isinstance(item, Mapping):
                continue
            if item.get("role") in ("system", "developer"):
                system.append(_text(item.get("content")))
            else:
                texts.append(_text(item.get("content")))
    text_cfg = body.get("text") or {}
    fmt = text_cfg.get("format") if isinstance(text_cfg, Mapping) else None
    fmt = fmt if isinstance(fmt, Mapping) else {}
    schema = fmt.get("schema")
    return Prompted(
        model=str(body.get("model", "")),
        system="\n\n".join(system),
        messages=tuple(texts),
        stream=bool(body.get("stream")),
        json_wanted=fmt.get("type") in ("json_object", "json_schema"),
        schema=schema if isinstance(schema, Mapping) else None,
    )


def _response_object(
    p: Prompted, text: str, usage: Usage, finish: str, rid: str, status: str
) -> dict[str, Any]:
    filtered = finish == "content_filter"
    output = (
        []
        if filtered or status == "in_progress"
        else [
            {
                "type": "message",
                "id": f"msg_{rid}",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                ],
            }
        ]
    )
    return {
        "id": f"resp_{rid}",
        "object": "response",
        "created_at": 0,
        "status": "incomplete" if filtered and status != "in_progress" else status,
        "model": p.model,
        "output": output,
        "error": None,
        "incomplete_details": {"reason": "content_filter"}
        if filtered and status != "in_progress"
        else None,
        "instructions": p.system or None,
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "usage": None
        if usage is None or status == "in_progress"
        else {
            "input_tokens": usage[0],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage[1],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": sum(usage),
        },
    }


def responses_success(
    p: Prompted, text: str, usage: Usage, finish: str, rid: str
) -> dict[str, Any]:
    return _response_object(p, text, usage, finish, rid, "completed")


def responses_stream(
    p: Prompted, text: str, usage: Usage, finish: str, pieces: int, rid: str
) -> Stream:
    seq = iter(range(1_000_000))

    def event(kind: str, **data: Any) -> bytes:
        return _sse({"type": kind, "sequence_number": next(seq), **data}, event=kind)

    item = {
        "type": "message",
        "id": f"msg_{rid}",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    where = {"item_id": f"msg_{rid}", "output_index": 0, "content_index": 0}
    started = _response_object(p, text, usage, finish, rid, "in_progress")
    head = [
        event("response.created", response=started),
        event("response.in_progress", response=started),
    ]
    final = _response_object(p, text, usage, finish, rid, "completed")
    if finish == "content_filter":
        return Stream("text/event-stream", head, [], [event("response.incomplete", response=final)])
    head += [
        event("response.output_item.added", output_index=0, item=item),
        event("response.content_part.added", part=part, **where),
    ]
    body = [
        event("response.output_text.delta", delta=piece, logprobs=[], **where)
        for piece in chunks(text, pieces)
    ]
    done_part = {**part, "text": text}
    tail = [
        event("response.output_text.done", text=text, logprobs=[], **where),
        event("response.content_part.done", part=done_part, **where),
        event("response.output_item.done", output_index=0, item=final["output"][0]),
        event("response.completed", response=final),
    ]
    return Stream("text/event-stream", head, body, tail)


# --- Anthropic messages: POST /v1/messages ---


def anthropic_parse(body: Mapping[str, Any]) -> Prompted:
    texts = [_text(m.get("content")) for m in body.get("messages") or [] if isinstance(m, Mapping)]
    fmt = (
        ((body.get("output_config") or {}).get("format") or {})
        if isinstance(body.get("output_config"), Mapping)
        else {}
    )
    schema = fmt.get("schema") if isinstance(fmt, Mapping) else None
    return Prompted(
        model=str(body.get("model", "")),
        system=_text(body.get("system") or ""),
        messages=tuple(texts),
        stream=bool(body.get("stream")),
        json_wanted=isinstance(fmt, Mapping) and fmt.get("type") == "json_schema",
        schema=schema if isinstance(schema, Mapping) else None,
    )


def _anthropic_stop(finish: str) -> str:
    # Claude's own word for a declined answer; the adapter maps it to content_filter.
    return "refusal" if finish == "content_filter" else "end_turn"


def anthropic_success(
    p: Prompted, text: str, usage: Usage, finish: str, rid: str
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"msg_{rid}",
        "type": "message",
        "role": "assistant",
        "model": p.model,
        "content": [{"type": "text", "text": text}] if text else [],
        "stop_reason": _anthropic_stop(finish),
        "stop_sequence": None,
    }
    if usage is not None:
        body["usage"] = {"input_tokens": usage[0], "output_tokens": usage[1]}
    return body


def anthropic_stream(
    p: Prompted, text: str, usage: Usage, finish: str, pieces: int, rid: str
) -> Stream:
    message = anthropic_success(p, "", None, finish, rid)
    message["stop_reason"] = None
    if usage is not None:
        message["usage"] = {"input_tokens": usage[0], "output_tokens": 1}
    head = [
        _sse({"type": "message_start", "message": message}, "message_start"),
        _sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
        _sse({"type": "ping"}, "ping"),
    ]
    body = [
        _sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            },
            "content_block_delta",
        )
        for piece in chunks(text, pieces)
    ]
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": _anthropic_stop(finish), "stop_sequence": None},
    }
    if usage is not None:
        delta["usage"] = {"output_tokens": usage[1]}
    tail = [
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _sse(delta, "message_delta"),
        _sse({"type": "message_stop"}, "message_stop"),
    ]
    return Stream("text/event-stream", head, body, tail)


_ANTHROPIC_ERRORS: dict[str, tuple[int, str, str]] = {
    "rate_limited": (
        429, "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit "
        "(https://docs.anthropic.com/en/api/rate-limits); see the response headers for current "
        "usage. Please reduce the prompt length or the maximum tokens requested, or try again later.",
    ),
    # Anthropic says "out of credit" with a 400, not a 429.
    "quota": (
        400, "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
        "Billing to upgrade or purchase credits.",
    ),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "server_error": (500, "api_error", "Internal server error"),
    "bad_request": (400, "invalid_request_error", "messages: at least one message is required"),
    "auth": (401, "authentication_error", "invalid x-api-key"),
}  # fmt: skip


def anthropic_error(kind: str, model: str, retry_after_s: float | None, rid: str) -> ErrorReply:
    status, etype, message = _ANTHROPIC_ERRORS[kind]
    headers = {"request-id": f"req_{rid}"}
    if status in (429, 529):
        headers.update(_retry_headers(retry_after_s))
    body = {
        "type": "error",
        "error": {"type": etype, "message": message},
        "request_id": f"req_{rid}",
    }
    return ErrorReply(status, body, headers)


# --- Gemini: POST /v1beta/models/{model}:generateContent and :streamGenerateContent ---


def gemini_parse(body: Mapping[str, Any], model: str, stream: bool) -> Prompted:
    texts = [_text(c.get("parts")) for c in body.get("contents") or [] if isinstance(c, Mapping)]
    system_raw = body.get("systemInstruction") or body.get("system_instruction") or {}
    system = _text(system_raw.get("parts")) if isinstance(system_raw, Mapping) else ""
    config = body.get("generationConfig") or {}
    config = config if isinstance(config, Mapping) else {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    return Prompted(
        model=model,
        system=system,
        messages=tuple(texts),
        stream=stream,
        json_wanted=config.get("responseMimeType") == "application/json",
        schema=schema if isinstance(schema, Mapping) else None,
    )


def _gemini_usage(usage: Usage) -> dict[str, int]:
    assert usage is not None
    return {
        "promptTokenCount": usage[0],
        "candidatesTokenCount": usage[1],
        "totalTokenCount": sum(usage),
    }


_SAFETY = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]


def gemini_success(p: Prompted, text: str, usage: Usage, finish: str, rid: str) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    if finish == "content_filter":
        candidate.update(finishReason="SAFETY", safetyRatings=_SAFETY)
    else:
        candidate.update(content={"role": "model", "parts": [{"text": text}]}, finishReason="STOP")
    body: dict[str, Any] = {"candidates": [candidate], "modelVersion": p.model, "responseId": rid}
    if usage is not None:
        body["usageMetadata"] = _gemini_usage(usage)
    return body


def gemini_stream(
    p: Prompted, text: str, usage: Usage, finish: str, pieces: int, rid: str
) -> Stream:
    def frame(data: Any) -> bytes:
        # Google's SSE frames end in CRLF CRLF.
        return f"data: {_dumps(data)}\r\n\r\n".encode()

    if finish == "content_filter":
        return Stream(
            "text/event-stream", [], [], [frame(gemini_success(p, "", usage, finish, rid))]
        )
    parts = chunks(text, pieces)
    frames = []
    for i, piece in enumerate(parts):
        body: dict[str, Any] = {
            "candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": piece}]}}],
            "modelVersion": p.model,
            "responseId": rid,
        }
        if i == len(parts) - 1:
            body["candidates"][0]["finishReason"] = "STOP"
            if usage is not None:
                body["usageMetadata"] = _gemini_usage(usage)
        frames.append(frame(body))
    return Stream("text/event-stream", [], frames, [])


_GEMINI_ERRORS: dict[str, tuple[int, str, str]] = {
    "rate_limited": (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    "quota": (
        429, "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "overloaded": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    "server_error": (
        500, "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    "bad_request": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    # A bad Gemini key is a 400, told apart from other bad requests by its ErrorInfo reason.
    "auth": (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
}  # fmt: skip


def gemini_error(kind: str, model: str, retry_after_s: float | None) -> ErrorReply:
    code, status, message = _GEMINI_ERRORS[kind]
    details: list[dict[str, Any]] = []
    if kind == "auth":
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        )
    if kind == "quota":
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                        "quotaDimensions": {"model": model, "location": "global"},
                        "quotaValue": "250",
                    }
                ],
            }
        )
    if kind == "rate_limited" and retry_after_s is not None:
        # Gemini says how long to wait in the body (google.rpc.RetryInfo), not in a header.
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{retry_after_s:g}s",
            }
        )
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return ErrorReply(code, {"error": error})
