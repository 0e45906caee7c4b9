"""Ollama's native chat API: the description, the request builder, and the normalizer
(:class:`~protocol.normalizers.ollama.OllamaChatNormalizer`).

Request (docs/PROVIDERS.md §4.1): ``POST {host}/api/chat``, answered with NDJSON. No key.
``developer`` messages become ``system``; tool call arguments are sent as JSON objects, not
strings; ``max_tokens``, ``temperature`` and ``stop`` go into ``options`` (``num_predict``...);
any reasoning request sets ``think: true``, or the effort level (``low``, ``medium``,
``high``) for ``gpt-oss`` models, which take one. ``top_p``, ``seed``, ``presence_penalty`` and
``frequency_penalty`` go into ``options`` under the same names (Ollama docs/api.md, "Valid
Parameters and Values" of the Modelfile options). ``response_format`` becomes ``format``:
``"json"`` for ``json_object``, the JSON schema itself for ``json_schema`` (docs/api.md,
"Structured outputs"). ``image_url`` parts of user messages become the message's ``images``
(base64, docs/api.md "Chat request (with images)"): data URLs only; an http(s) URL is refused
because the hub does not fetch URLs for clients (a fetch would let any client make the hub
reach any address, including the hub's own network, and would add unbounded work).
``tool_choice`` ``none`` leaves the tools out (Ollama has no ``tool_choice``; ``auto`` is its
behaviour). ``user``, ``parallel_tool_calls: false``, a tool's ``strict: true``, ``tool_choice``
``required`` or a named function, ``logprobs`` and ``n`` above 1 are refused
(protocol/request_fields.py; docs/PROVIDERS.md §4.1).

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
    tool_call_parts,
)
from protocol.request_fields import (
    Image,
    content_parts,
    joined_text,
    json_format,
    refusal,
    refuse,
    refuse_unsupported,
    strict_tools,
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
        ProviderError: ``invalid_message`` naming a field Ollama cannot take (the module
            docstring's list; an image given by http(s) URL).
    """
    refuse_unsupported(request, "ollama")
    messages = []
    for message in request.messages:
        parts = content_parts(message.content, "ollama", message.role)
        entry: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                                 "content": joined_text(parts)}
        images = [part for part in parts if isinstance(part, Image)]
        if images:
            if any(image.data is None for image in images):
                raise refuse("image_url", "ollama", "Ollama takes images as base64 data; send a data URL (the hub "
                             "does not fetch URLs for clients: a fetch would reach any address the hub can)")
            entry["images"] = [image.data for image in images]
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
    for field in ("top_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(request, field)
        if value is not None:
            options[field] = value
    if options:
        body["options"] = options
    wanted = json_format(request, "ollama")
    if wanted is not None:
        body["format"] = wanted[1] if wanted[1] is not None else "json"
    choice = request.tool_choice
    if choice not in (None, "auto", "none"):
        raise refuse("tool_choice", "ollama", f"{choice!r}: Ollama cannot be made to call a tool "
                     "(`auto` and `none` are carried)")
    if request.tools and choice != "none":  # `none`: no tool may be called, so none is offered
        if strict_tools(request):
            raise refusal("tools[].function.strict", "ollama")
        body["tools"] = request.tools
    effort = effort_of(request)
    if effort or request.thinking is not None:
        # docs/api.md "Chat request (with thinking)": gpt-oss takes a level, the others a boolean.
        levelled = model.startswith("gpt-oss") and effort in ("low", "medium", "high")
        body["think"] = effort if levelled else True
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
