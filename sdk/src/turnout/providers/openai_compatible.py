"""Any server that speaks OpenAI's chat completions: vLLM, Ollama, llama.cpp, Together, Groq.

The same adapter as ``openai`` (the same SDK, errors and streaming); it differs in that a base
URL is required and a key is optional (Ollama and a local vLLM take none).
"""

from __future__ import annotations

from typing import Any

from turnout.providers.base import ProviderError, register
from turnout.providers.openai import OpenAIProvider


@register
class OpenAICompatibleProvider(OpenAIProvider):
    """``kind: openai_compatible``: ``base_url`` is the server's OpenAI root (``.../v1``)."""

    kind = "openai_compatible"

    def __init__(self, **kwargs: Any) -> None:
        if not kwargs.get("base_url"):
            raise ProviderError(
                "bad_request", "openai_compatible needs the server's base_url", transient=False
            )
        super().__init__(**kwargs)
