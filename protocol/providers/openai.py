"""OpenAI Chat Completions and every OpenAI-compatible server (llama.cpp, vLLM, DeepSeek,
OpenRouter, Ollama's ``/v1``...): the description, the request builder, and the normalizer
(:class:`~protocol.normalizers.openai.OpenAIChatNormalizer`).

Request (docs/PROVIDERS.md §1.1): ``POST {base_url}/chat/completions`` with ``Authorization:
Bearer <key>`` when a key is set, ``stream: true`` and ``stream_options.include_usage: true``.
Messages and tools go through unchanged (they are already in OpenAI's shape). ``max_tokens``
is sent as ``max_completion_tokens`` to OpenAI's reasoning models (``o1``, ``o3``, ``o4``,
``gpt-5``), which refuse the older name; compatible servers know only ``max_tokens``.
``response_format``, ``seed``, ``top_p``, ``presence_penalty``, ``frequency_penalty``,
``parallel_tool_calls``, ``user`` and ``n`` are OpenAI's own request fields and go through as
given (OpenAI API reference, "Create chat completion"; every choice of ``n`` streams back with
its index, docs/PROTOCOL.md "Choices"); ``logprobs`` are refused (protocol/request_fields.py;
docs/PROTOCOL.md "Request fields per provider").
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.messages import Completion
from protocol.normalizers.openai import OpenAIChatNormalizer
from protocol.providers.base import ProviderSettings, ProviderSpec, UpstreamRequest, effort_of
from protocol.request_fields import refuse_unsupported

__all__ = ["SPEC", "build_request", "OpenAIChatNormalizer"]

_REASONING_MODELS = ("o1", "o3", "o4", "gpt-5")


def build_request(request: Completion, model: str, settings: ProviderSettings) -> UpstreamRequest:
    """The streaming Chat Completions request for ``request`` sent to ``model``.

    Args:
        request: the client's ``completion`` message (OpenAI-shaped messages and tools).
        model: the upstream model name, prefix removed (``gpt-4o-mini``).
        settings: base URL (``…/v1``) and optional key.

    Returns:
        The request; its body is plain JSON.

    Raises:
        ProviderError: ``invalid_message`` for a field refused for OpenAI (``logprobs``:
            protocol/request_fields.py), naming it.
    """
    refuse_unsupported(request, "openai")
    body: dict[str, Any] = {
        "model": model,
        "messages": [msgspec.to_builtins(m) for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    for key in ("temperature", "tools", "tool_choice", "stop", "response_format", "seed", "top_p",
                "presence_penalty", "frequency_penalty", "parallel_tool_calls", "user", "n"):
        value = getattr(request, key)
        if key == "parallel_tool_calls" and not request.tools:
            continue  # OpenAI answers 400 to it without tools; without tools it means nothing
        if value is not None:
            body[key] = value
    if request.max_tokens is not None:
        key = "max_completion_tokens" if model.startswith(_REASONING_MODELS) else "max_tokens"
        body[key] = request.max_tokens
    effort = effort_of(request)
    if effort:
        body["reasoning_effort"] = effort
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    return SPEC.request(model, settings.base_url.rstrip("/") + "/chat/completions", headers, body)


SPEC = ProviderSpec(
    name="openai",
    title="OpenAI (and OpenAI-compatible servers)",
    prefixes=("openai/",),
    bare_prefixes=("gpt-", "o1", "o3", "o4", "chatgpt-"),
    framing="sse",
    default_base_url="https://api.openai.com/v1",
    build=build_request,
    make_normalizer=OpenAIChatNormalizer,
    needs_key=True,
    config_section="openai",
    api_key_field="openai_api_key",
    api_key_env=("OPENAI_API_KEY",),
    api_key_help="sent as `Authorization: Bearer`",
    base_url_key="base_url",
    base_url_field="openai_base_url",
    base_url_env="OPENAI_BASE_URL",
    base_url_help="OpenAI or any OpenAI-compatible server",
    example_models=("gpt-4o-mini", "gpt-4o", "o4-mini"),
    demo_model="gpt-4o-mini",
    server_path="/v1",
    docs="§1",
    request_id_headers=("x-request-id",),
)
