"""Google Gemini ``streamGenerateContent``: the description, the request builder, and the
normalizer (:class:`~protocol.normalizers.gemini.GeminiNormalizer`).

Request (docs/PROVIDERS.md §3.1): ``POST {base_url}/v1beta/models/{model}:streamGenerateContent
?alt=sse`` with the key in the ``x-goog-api-key`` header (never in the URL). The client's
OpenAI-shaped request is translated:

- roles become ``user`` and ``model``; ``system``/``developer`` texts become
  ``systemInstruction``;
- assistant tool calls become ``functionCall`` parts (with the ``thoughtSignature`` the hub
  sent in ``tool_call.signature``, when the client passes it back as ``signature``); tool
  results become ``functionResponse`` parts named after their call, consecutive ones in one
  ``user`` turn;
- ``max_tokens``, ``temperature``, ``stop`` and reasoning go into ``generationConfig``
  (``thinkingConfig.includeThoughts`` and a ``thinkingBudget``);
- tools become ``functionDeclarations``; ``tool_choice`` becomes
  ``toolConfig.functionCallingConfig`` (AUTO, ANY, NONE, or ANY with one allowed name).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from protocol.messages import ChatMessage, Completion
from protocol.normalizers.gemini import GeminiNormalizer
from protocol.providers.base import (
    THINKING_BUDGET,
    ProviderSettings,
    ProviderSpec,
    UpstreamRequest,
    effort_of,
    text_of,
    tool_call_parts,
)

__all__ = ["SPEC", "build_request", "GeminiNormalizer"]


def _contents(messages: list[ChatMessage]) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts and ``contents`` (roles ``user``/``model``)."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    for message in messages:
        if message.role in ("system", "developer"):
            system.append(text_of(message.content))
        elif message.role == "tool":
            name = names_by_id.get(message.tool_call_id or "") or message.name or ""
            response = {"functionResponse": {"name": name, "response": {"content": text_of(message.content)}}}
            previous = contents[-1] if contents else None
            if previous and previous["role"] == "user" and "functionResponse" in previous["parts"][-1]:
                previous["parts"].append(response)
            else:
                contents.append({"role": "user", "parts": [response]})
        elif message.role == "assistant":
            parts: list[dict[str, Any]] = []
            if text_of(message.content):
                parts.append({"text": text_of(message.content)})
            for call in message.tool_calls or ():
                call_id, name, arguments = tool_call_parts(call)
                names_by_id[call_id] = name
                part: dict[str, Any] = {"functionCall": {"name": name, "args": arguments}}
                if call.get("signature"):
                    part["thoughtSignature"] = call["signature"]
                parts.append(part)
            contents.append({"role": "model", "parts": parts or [{"text": ""}]})
        else:
            contents.append({"role": "user", "parts": [{"text": text_of(message.content)}]})
    return system, contents


def _tool_config(choice: Any) -> dict[str, Any] | None:
    """``toolConfig`` for an OpenAI ``tool_choice``, or None to leave Gemini's default."""
    modes = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
    if isinstance(choice, str) and choice in modes:
        return {"functionCallingConfig": {"mode": modes[choice]}}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}}
    return None


def build_request(request: Completion, model: str, settings: ProviderSettings) -> UpstreamRequest:
    """The streaming ``streamGenerateContent`` request (SSE framing) for ``request``.

    Args:
        request: the client's ``completion`` message.
        model: the upstream model name (``gemini-2.5-flash``), quoted into the URL path.
        settings: base URL (without ``/v1beta``) and optional key.

    Raises:
        KeyError, TypeError, ValueError, AttributeError: client input that cannot be
            translated (a tool without a name, tool call arguments that are not JSON).
    """
    system, contents = _contents(request.messages)
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    generation: dict[str, Any] = {}
    if request.max_tokens is not None:
        generation["maxOutputTokens"] = request.max_tokens
    if request.temperature is not None:
        generation["temperature"] = request.temperature
    if request.stop is not None:
        generation["stopSequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    effort = effort_of(request)
    if effort or request.thinking is not None:
        thinking: dict[str, Any] = {"includeThoughts": True}
        budget = (request.thinking or {}).get("budget_tokens") or THINKING_BUDGET.get(effort or "")
        if budget:
            thinking["thinkingBudget"] = budget
        generation["thinkingConfig"] = thinking
    if generation:
        body["generationConfig"] = generation
    if request.tools:
        declarations = []
        for tool in request.tools:
            function = tool.get("function", tool)
            declaration = {"name": function["name"]}
            if function.get("description"):
                declaration["description"] = function["description"]
            if function.get("parameters"):
                declaration["parameters"] = function["parameters"]
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
        tool_config = _tool_config(request.tool_choice)
        if tool_config:
            body["toolConfig"] = tool_config
    headers = {"Content-Type": "application/json"}
    if settings.api_key:
        headers["x-goog-api-key"] = settings.api_key
    url = f"{settings.base_url.rstrip('/')}/v1beta/models/{quote(model, safe='')}:streamGenerateContent?alt=sse"
    return SPEC.request(model, url, headers, body)


SPEC = ProviderSpec(
    name="google",
    title="Google Gemini",
    prefixes=("google/", "gemini/"),
    bare_prefixes=("gemini-",),
    framing="sse",
    default_base_url="https://generativelanguage.googleapis.com",
    build=build_request,
    make_normalizer=GeminiNormalizer,
    needs_key=True,
    config_section="google",
    api_key_field="gemini_api_key",
    api_key_env=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    api_key_help="sent as `x-goog-api-key`",
    base_url_key="base_url",
    base_url_field="gemini_base_url",
    base_url_env="GEMINI_BASE_URL",
    base_url_help="Gemini API",
    example_models=("gemini-2.5-flash", "gemini-2.5-pro"),
    demo_model="gemini-2.0-flash",
    docs="§3",
    request_id_headers=("x-goog-request-id",),
)
