"""Anthropic Messages: the description, the request builder, and the normalizer
(:class:`~protocol.normalizers.anthropic.AnthropicNormalizer`).

Request (docs/PROVIDERS.md §2.1): ``POST {base_url}/v1/messages`` with ``x-api-key`` when a
key is set and ``anthropic-version: 2023-06-01``. The client's OpenAI-shaped request is
translated:

- ``system`` and ``developer`` messages are joined (blank line between) into ``system``;
- assistant tool calls become ``tool_use`` blocks (arguments parsed to an object); tool results
  become ``tool_result`` blocks, all results of one turn in one user message;
- OpenAI function tools become ``{name, description, input_schema}``; other tools (server
  tools) pass unchanged; ``tool_choice`` maps auto/required/none/function to
  auto/any/none/tool;
- ``max_tokens`` is required by the API: 1024 when the client gives none, or the thinking
  budget plus 1024 so the budget stays below it;
- a reasoning effort without explicit ``thinking`` becomes ``thinking: {type: enabled,
  budget_tokens}`` (:data:`~protocol.providers.base.THINKING_BUDGET`).
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


def _messages(messages: list[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """``(system text, messages)`` in the Messages API's shape."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role in ("system", "developer"):
            system.append(text_of(message.content))
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
        else:
            content = message.content if isinstance(message.content, str) else text_of(message.content)
            out.append({"role": message.role, "content": content})
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
    """
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
    if request.tools:
        body["tools"] = _tools(request.tools)
        choice = _tool_choice(request.tool_choice)
        if choice:
            body["tool_choice"] = choice
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
