"""The OpenAI Responses API upstream (``openai_responses`` provider kind): the description, the
request builder, and the normalizer
(:class:`~protocol.normalizers.openai_responses.OpenAIResponsesNormalizer`).

Models route here with the ``openai_responses/`` prefix (``openai_responses/o4-mini``): the
same OpenAI models as ``openai/``, asked through ``POST {base_url}/responses``, where OpenAI's
reasoning models stream their reasoning *summaries* (Chat Completions shows none).

Request (docs/PROVIDERS.md §1.6; docs/PROTOCOL.md "openai_responses upstream"): ``Authorization:
Bearer <key>`` when a key is set, ``stream: true``, ``store: false`` (the hub keeps the
conversation; nothing is left stored at OpenAI). The hub's OpenAI-shaped messages become
Responses input items:

- ``system`` / ``developer`` / ``user`` / ``assistant`` text → ``{"type": "message", "role",
  "content"}`` (text parts ``input_text``, assistant text ``output_text``; user
  ``image_url`` parts → ``input_image`` with the URL, data URLs included, and ``detail``);
- an assistant's ``tool_calls`` → one ``function_call`` item each (``call_id``, ``name``,
  ``arguments`` as a JSON string);
- a ``tool`` message → ``function_call_output`` (``call_id``, ``output`` text).

Options: ``max_tokens`` → ``max_output_tokens``; ``temperature`` as is; tools (OpenAI's
``{"type": "function", "function": {...}}``) → Responses function tools ``{"type":
"function", "name", "description", "parameters", "strict"}``; ``tool_choice`` ``auto`` /
``none`` / ``required`` as is, a named function as ``{"type": "function", "name"}``; the
reasoning effort → ``reasoning.effort`` with ``reasoning.summary`` (the client's, else
``auto``, so that summaries stream). ``stop`` has no counterpart in the Responses API and is
refused (ValueError, reported as ``invalid_message`` naming it). The options issue 14 item 2
adds to the completion are read by name (:func:`_options`): ``response_format`` becomes
``text.format``; ``top_p``, ``user``, ``parallel_tool_calls`` go as they are; ``seed``, the
penalties, log probabilities and ``n`` above 1 have no counterpart and are refused.
"""

from __future__ import annotations

import json
from typing import Any

from protocol.messages import ChatMessage, Completion
from protocol.normalizers.openai_responses import OpenAIResponsesNormalizer
from protocol.providers.base import ProviderSettings, ProviderSpec, UpstreamRequest, effort_of, text_of

__all__ = ["SPEC", "build_request", "input_items", "responses_tools", "responses_tool_choice"]


def build_request(request: Completion, model: str, settings: ProviderSettings) -> UpstreamRequest:
    """The streaming Responses request for ``request`` sent to ``model``.

    Args:
        request: the client's ``completion`` message (OpenAI-shaped messages and tools).
        model: the upstream model name, prefix removed (``o4-mini``).
        settings: base URL (``…/v1``) and optional key.

    Returns:
        The request; its body is plain JSON.

    Raises:
        ValueError: ``stop`` was given (the Responses API has no stop sequences), a tool that
            is not a function tool, or a message that cannot be an input item.
    """
    if request.stop:
        raise ValueError("`stop` cannot be carried: the Responses API has no stop sequences")
    body: dict[str, Any] = {"model": model, "input": input_items(request.messages), "stream": True, "store": False}
    if request.max_tokens is not None:
        body["max_output_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tools:
        body["tools"] = responses_tools(request.tools)
    if request.tool_choice is not None:
        body["tool_choice"] = responses_tool_choice(request.tool_choice)
    _options(request, body)
    effort = effort_of(request)
    if effort:
        summary = request.reasoning.get("summary") if isinstance(request.reasoning, dict) else None
        body["reasoning"] = {"effort": effort, "summary": summary or "auto"}
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    return SPEC.request(model, settings.base_url.rstrip("/") + "/responses", headers, body)


#: Completion options (issue 14 item 2 adds them to the completion) and their fate here:
#: carried under the same name, or refused because the Responses API has no counterpart.
_CARRIED = ("top_p", "user", "parallel_tool_calls")
_REFUSED = {
    "seed": "the Responses API has no seed",
    "presence_penalty": "the Responses API has no presence_penalty",
    "frequency_penalty": "the Responses API has no frequency_penalty",
    "logprobs": "the hub does not ask the Responses API for log probabilities",
    "top_logprobs": "the hub does not ask the Responses API for log probabilities",
}


def _options(request: Completion, body: dict[str, Any]) -> None:
    """The completion's sampling and output options in Responses terms (read by name, so a
    completion without them passes): ``top_p``, ``user``, ``parallel_tool_calls`` as they are;
    ``response_format`` as ``text.format`` (``json_object``, or ``json_schema`` flattened:
    ``name``, ``schema``, ``strict``, ``description``); ``n`` above 1, ``seed``, the penalties
    and log probabilities refused.

    Raises:
        ValueError: a refused option that is set (``logprobs: false`` and ``n: 1`` ask for
            nothing and pass), naming it.
    """
    for name in _CARRIED:
        value = getattr(request, name, None)
        if value is not None:
            body[name] = value
    for name, why in _REFUSED.items():
        value = getattr(request, name, None)
        if value is not None and value is not False:
            raise ValueError(f"`{name}` cannot be carried: {why}")
    choices = getattr(request, "n", None)
    if choices is not None and choices > 1:
        raise ValueError("`n` cannot be carried: the Responses API answers one output per request")
    fmt = getattr(request, "response_format", None)
    if fmt is None or fmt.get("type") == "text":
        return
    if fmt.get("type") == "json_object":
        body["text"] = {"format": {"type": "json_object"}}
        return
    if fmt.get("type") != "json_schema":
        raise ValueError(f"`response_format` type {fmt.get('type')!r} cannot be carried")
    schema = fmt["json_schema"]
    text_format: dict[str, Any] = {"type": "json_schema", "name": schema["name"], "schema": schema.get("schema", {})}
    for key in ("strict", "description"):
        if schema.get(key) is not None:
            text_format[key] = schema[key]
    body["text"] = {"format": text_format}


def _parts(content: Any, role: str) -> str | list[dict[str, Any]]:
    """A message's content as Responses content: a string stays a string; parts become
    ``input_text`` / ``output_text`` / ``input_image`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    text_type = "output_text" if role == "assistant" else "input_text"
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": text_type, "text": part["text"]})
        elif kind == "image_url" and role != "assistant":
            image = part["image_url"]
            url = image["url"] if isinstance(image, dict) else image
            detail = image.get("detail", "auto") if isinstance(image, dict) else "auto"
            parts.append({"type": "input_image", "image_url": url, "detail": detail})
        else:
            raise ValueError(f"a {kind!r} part of a {role} message cannot be carried to the Responses API")
    return parts


def input_items(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The hub's OpenAI-shaped messages as Responses ``input`` items (module docstring).

    Raises:
        ValueError: a part the Responses API has no input for (an image in an assistant
            message, an audio part), or tool call arguments that are not a string or object.
        KeyError: a tool call without ``function``, a tool message without ``tool_call_id``.
    """
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message.role
        if role == "tool":
            if message.tool_call_id is None:
                raise KeyError("tool_call_id")
            items.append({"type": "function_call_output", "call_id": message.tool_call_id,
                          "output": text_of(message.content)})
            continue
        if role != "assistant" or (message.content not in (None, "", [])):
            if role == "assistant" and isinstance(message.content, str):
                content: Any = [{"type": "output_text", "text": message.content}]
            else:
                content = _parts(message.content, role)
            items.append({"type": "message", "role": role, "content": content})
        for call in message.tool_calls or ():
            function = call["function"]
            arguments = function.get("arguments", "{}")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            items.append({"type": "function_call", "call_id": call.get("id") or "", "name": function["name"],
                          "arguments": arguments})
    return items


def responses_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI Chat tools as Responses function tools (flattened: no ``function`` wrapper).

    Raises:
        ValueError: a tool whose ``type`` is not ``function``.
        KeyError: a function without ``name``.
    """
    out = []
    for tool in tools:
        if tool.get("type", "function") != "function":
            raise ValueError(f"tool type {tool.get('type')!r} cannot be carried (function tools only)")
        function = tool["function"]
        converted: dict[str, Any] = {"type": "function", "name": function["name"]}
        for key in ("description", "parameters", "strict"):
            if function.get(key) is not None:
                converted[key] = function[key]
        out.append(converted)
    return out


def responses_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    """An OpenAI Chat ``tool_choice`` in Responses terms (``{"type": "function", "name"}`` for
    a named function; the strings as they are)."""
    if isinstance(choice, str):
        return choice
    function = choice.get("function")
    if choice.get("type") == "function" and isinstance(function, dict):
        return {"type": "function", "name": function["name"]}
    return choice


SPEC = ProviderSpec(
    name="openai_responses",
    title="OpenAI Responses API",
    prefixes=("openai_responses/",),
    bare_prefixes=(),
    framing="sse",
    default_base_url="https://api.openai.com/v1",
    build=build_request,
    make_normalizer=OpenAIResponsesNormalizer,
    needs_key=True,
    config_section="openai_responses",
    api_key_field="openai_responses_api_key",
    api_key_env=("OPENAI_RESPONSES_API_KEY",),
    api_key_help="sent as `Authorization: Bearer` (an OpenAI key: the same value as OPENAI_API_KEY for OpenAI)",
    base_url_key="base_url",
    base_url_field="openai_responses_base_url",
    base_url_env="OPENAI_RESPONSES_BASE_URL",
    base_url_help="a server of OpenAI's Responses API (POST {base_url}/responses)",
    example_models=("o4-mini", "gpt-4o-mini"),
    server_path="/v1",
    docs="§1.6",
    request_id_headers=("x-request-id",),
)
