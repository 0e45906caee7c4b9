"""Anthropic Messages: the description, the request builder, and the normalizer
(:class:`~protocol.normalizers.anthropic.AnthropicNormalizer`).

Request (docs/PROVIDERS.md §2.1): ``POST {base_url}/v1/messages`` with ``x-api-key`` when a
key is set and ``anthropic-version: 2023-06-01``. The client's OpenAI-shaped request is
translated:

- ``system`` and ``developer`` messages are joined (blank line between) into ``system``;
- assistant tool calls become ``tool_use`` blocks (arguments parsed to an object); tool results
  become ``tool_result`` blocks, all results of one turn in one user message;
- OpenAI function tools become ``{name, description, input_schema}`` (and ``strict: true``
  when the function asks for it); other tools (server
  tools) pass unchanged; ``tool_choice`` maps auto/required/none/function to
  auto/any/none/tool;
- ``max_tokens`` is required by the API: 1024 when the client gives none, or the thinking
  budget plus 1024 so the budget stays below it;
- a reasoning effort without explicit ``thinking`` becomes ``thinking: {type: enabled,
  budget_tokens}`` (:data:`~protocol.providers.base.THINKING_BUDGET`);
- ``image_url`` parts of user messages become ``image`` blocks, ``source: {type: base64,
  media_type, data}`` for a data URL, ``{type: url, url}`` for an http(s) URL (Anthropic docs,
  "Vision");
- ``response_format`` ``json_schema`` becomes ``output_config: {format: {type: json_schema,
  schema}}`` (Anthropic docs, "Structured outputs", JSON outputs); ``json_object`` is refused:
  Anthropic constrains output only to a given schema;
- ``top_p`` is carried, ``user`` becomes ``metadata.user_id``, ``parallel_tool_calls: false``
  becomes ``tool_choice.disable_parallel_tool_use: true`` (Anthropic API reference, "Messages");
  ``seed``, the penalties, ``logprobs`` and ``n`` above 1 are refused
  (protocol/request_fields.py; docs/PROVIDERS.md §2.1).
"""

from __future__ import annotations

from typing import Any

from protocol.messages import ChatMessage, Completion
from protocol.normalizers.anthropic import AnthropicNormalizer
from protocol.providers.base import (
    THINKING_BUDGET,
    ProviderSettings,
    ProviderSpec,
    UpstreamRequest,
    effort_of,
    text_of,
    tool_call_parts,
)
from protocol.request_fields import Image, content_parts, joined_text, json_format, refuse, refuse_unsupported

__all__ = ["SPEC", "build_request", "AnthropicNormalizer"]

API_VERSION = "2023-06-01"


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    converted = []
    for tool in tools:
        function = tool.get("function") if tool.get("type") == "function" else None
        if function is None:
            converted.append(tool)  # already Anthropic-shaped (or a server tool)
            continue
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        entry = {"name": function["name"], "input_schema": schema}
        if function.get("description"):
            entry["description"] = function["description"]
        if function.get("strict") is True:  # Anthropic docs, "Structured outputs", strict tool use
            entry["strict"] = True
        converted.append(entry)
    return converted


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice in ("auto", None):
        return {"type": "auto"} if choice else None
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": choice["function"]["name"]}
    return choice if isinstance(choice, dict) else None


def _block(part: str | Image) -> dict[str, Any]:
    """A ``text`` block, or an ``image`` block with a ``base64`` or ``url`` source."""
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if part.data is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": part.media_type, "data": part.data}}
    return {"type": "image", "source": {"type": "url", "url": part.url}}


def _messages(messages: list[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """``(system text, messages)`` in the Messages API's shape."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        parts = content_parts(message.content, "anthropic", message.role)
        if message.role in ("system", "developer"):
            system.append(joined_text(parts))
        elif message.role == "tool":
            # All results of one assistant turn go back in one user message (tool_result
            # blocks); consecutive tool messages are merged.
            result = {"type": "tool_result", "tool_use_id": message.tool_call_id or "",
                      "content": text_of(message.content)}
            previous = out[-1] if out else None
            if previous and previous["role"] == "user" and isinstance(previous["content"], list) \
                    and previous["content"] and previous["content"][-1].get("type") == "tool_result":
                previous["content"].append(result)
            else:
                out.append({"role": "user", "content": [result]})
        elif message.role == "assistant" and message.tool_calls:
            blocks: list[dict[str, Any]] = []
            if text_of(message.content):
                blocks.append({"type": "text", "text": text_of(message.content)})
            for call in message.tool_calls:
                call_id, name, arguments = tool_call_parts(call)
                blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
            out.append({"role": "assistant", "content": blocks})
        elif any(isinstance(part, Image) for part in parts):
            out.append({"role": message.role, "content": [_block(part) for part in parts]})
        else:
            out.append({"role": message.role, "content": joined_text(parts)})
    return "\n\n".join(s for s in system if s), out


def build_request(request: Completion, model: str, settings: ProviderSettings) -> UpstreamRequest:
    """The streaming Messages request for ``request`` sent to ``model``.

    Args:
        request: the client's ``completion`` message.
        model: the upstream model name (``claude-sonnet-4-5``).
        settings: base URL (without ``/v1``) and optional key.

    Raises:
        KeyError, TypeError, ValueError, AttributeError: client input that cannot be
            translated (a tool without a name, tool call arguments that are not JSON).
        ProviderError: ``invalid_message`` naming a field Anthropic cannot take (the list in
            the module docstring; ``response_format`` ``json_object``; a content part other
            than text and image_url).
    """
    refuse_unsupported(request, "anthropic")
    system, messages = _messages(request.messages)
    thinking = request.thinking
    effort = effort_of(request)
    if thinking is None and effort:
        thinking = {"type": "enabled", "budget_tokens": THINKING_BUDGET.get(effort, 4096)}
    # thinking.budget_tokens must be below max_tokens: the default leaves the answer 1024 tokens.
    budget = thinking.get("budget_tokens") if thinking else None
    default_max_tokens = budget + 1024 if isinstance(budget, int) else 1024
    body: dict[str, Any] = {
        "model": model, "messages": messages, "max_tokens": request.max_tokens or default_max_tokens, "stream": True
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop is not None:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    if request.tools:
        body["tools"] = _tools(request.tools)
        choice = _tool_choice(request.tool_choice)
        if request.parallel_tool_calls is False:
            choice = dict(choice or {"type": "auto"})
            if choice.get("type") == "none":
                raise refuse("parallel_tool_calls", "anthropic", "`false` with `tool_choice: none` means nothing")
            choice["disable_parallel_tool_use"] = True
        if choice:
            body["tool_choice"] = choice
    wanted = json_format(request, "anthropic")
    if wanted is not None:
        schema = wanted[1]
        if schema is None:
            raise refuse("response_format", "anthropic",
                         "Anthropic's structured outputs need a schema: send `json_schema` with `schema`")
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if thinking is not None:
        body["thinking"] = thinking
    headers = {"Content-Type": "application/json", "anthropic-version": API_VERSION, "Accept": "text/event-stream"}
    if settings.api_key:
        headers["x-api-key"] = settings.api_key
    return SPEC.request(model, settings.base_url.rstrip("/") + "/v1/messages", headers, body)


SPEC = ProviderSpec(
    name="anthropic",
    title="Anthropic",
    prefixes=("anthropic/",),
    bare_prefixes=("claude-",),
    framing="sse",
    default_base_url="https://api.anthropic.com",
    build=build_request,
    make_normalizer=AnthropicNormalizer,
    needs_key=True,
    config_section="anthropic",
    api_key_field="anthropic_api_key",
    api_key_env=("ANTHROPIC_API_KEY",),
    api_key_help="sent as `x-api-key`",
    base_url_key="base_url",
    base_url_field="anthropic_base_url",
    base_url_env="ANTHROPIC_BASE_URL",
    base_url_help="Anthropic or an Anthropic-compatible server",
    example_models=("claude-3-5-haiku-latest", "claude-sonnet-4-5"),
    demo_model="claude-3-5-haiku-latest",
    docs="§2",
    request_id_headers=("request-id",),
)
