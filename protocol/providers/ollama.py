"""Ollama's native chat API: the description, the request builder, and the normalizer
(:class:`~protocol.normalizers.ollama.OllamaChatNormalizer`).

Request (docs/PROVIDERS.md §4.1): ``POST {host}/api/chat``, answered with NDJSON. No key.
``developer`` messages become ``system``; tool call arguments are sent as JSON objects, not
strings; ``max_tokens``, ``temperature`` and ``stop`` go into ``options`` (``num_predict``...);
any reasoning request sets ``think: true``.

The host setting is read as Ollama reads ``OLLAMA_HOST`` (:func:`host_url`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from protocol.messages import Completion
from protocol.normalizers.ollama import OllamaChatNormalizer
from protocol.providers.base import (
    ProviderSettings,
    ProviderSpec,
    UpstreamRequest,
    effort_of,
    text_of,
    tool_call_parts,
)

__all__ = ["SPEC", "build_request", "host_url", "OllamaChatNormalizer"]

DEFAULT_PORT = 11434


def host_url(host: str) -> str:
    """``OLLAMA_HOST`` as Ollama reads it: a URL is used as given; a bare ``host`` or
    ``host:port`` gets ``http://`` and, without a port, Ollama's default port 11434.

    Raises:
        ValueError: a port that is not a number (``gpu-box:port``).
    """
    if host.startswith(("http://", "https://")):
        return host
    url = "http://" + host
    return url if urlsplit(url).port is not None else url.rstrip("/") + f":{DEFAULT_PORT}"


def build_request(request: Completion, model: str, settings: ProviderSettings) -> UpstreamRequest:
    """The streaming ``/api/chat`` request for ``request`` sent to ``model``.

    Args:
        request: the client's ``completion`` message.
        model: the upstream model name (``llama3.2:1b``).
        settings: the host URL; the key is ignored.

    Raises:
        KeyError, TypeError, ValueError, AttributeError: client input that cannot be
            translated (tool call arguments that are not JSON).
    """
    messages = []
    for message in request.messages:
        entry: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                                 "content": text_of(message.content)}
        if message.tool_calls:
            entry["tool_calls"] = [
                {"function": {"name": name, "arguments": arguments}}
                for _, name, arguments in map(tool_call_parts, message.tool_calls)
            ]
        if message.role == "tool" and message.name:
            entry["tool_name"] = message.name
        messages.append(entry)
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    options: dict[str, Any] = {}
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.stop is not None:
        options["stop"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if options:
        body["options"] = options
    if request.tools:
        body["tools"] = request.tools
    if effort_of(request) or request.thinking is not None:
        body["think"] = True
    url = settings.base_url.rstrip("/") + "/api/chat"
    return SPEC.request(model, url, {"Content-Type": "application/json"}, body)


SPEC = ProviderSpec(
    name="ollama",
    title="Ollama",
    prefixes=("ollama/",),
    bare_prefixes=(),
    framing="ndjson",
    default_base_url=f"http://127.0.0.1:{DEFAULT_PORT}",
    build=build_request,
    make_normalizer=OllamaChatNormalizer,
    needs_key=False,
    config_section="ollama",
    api_key_field=None,
    api_key_env=(),
    api_key_help="",
    base_url_key="host",
    base_url_field="ollama_host",
    base_url_env="OLLAMA_HOST",
    base_url_help="Ollama; `host` or `host:port` get `http://` and port 11434, as with Ollama itself",
    normalize_base_url=host_url,
    example_models=("llama3.2",),
    demo_model="llama3.2",
    docs="§4",
)
