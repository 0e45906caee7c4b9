"""Provider clients: build each provider's streaming request, read its body as it arrives,
and hand the bytes to the provider's normalizer (protocol/normalizers/).

Routing (:func:`resolve_model`): ``openai/…``, ``anthropic/…``, ``google/…`` (or
``gemini/…``) and ``ollama/…`` always; bare names by prefix: ``gpt-``, ``o1``, ``o3``, ``o4``,
``chatgpt-`` → OpenAI, ``claude-`` → Anthropic, ``gemini-`` → Google. Anything else is
``model_not_found``.

Requests (each provider's own auth and version headers; formats.md §1.1, §2.1, §3.1, §4.1):

- OpenAI and compatible: ``POST {OPENAI_BASE_URL}/chat/completions``, ``Authorization:
  Bearer``, ``stream: true`` and ``stream_options.include_usage: true``.
- Anthropic: ``POST {ANTHROPIC_BASE_URL}/v1/messages``, ``x-api-key``, ``anthropic-version:
  2023-06-01``; system messages move to ``system``; ``max_tokens`` is required (1024 if unset).
- Google: ``POST {GEMINI_BASE_URL}/v1beta/models/{model}:streamGenerateContent?alt=sse``,
  ``x-goog-api-key``; roles ``user``/``model``; ``systemInstruction``; ``generationConfig``.
- Ollama: ``POST {OLLAMA_HOST}/api/chat`` (NDJSON), ``options.num_predict``.

Bodies are read with ``iter_any()`` (never line iteration, which caps line length and splits
on LF only: formats.md §10.2). aiohttp exceptions become :class:`ProviderError` in one place
(:meth:`ProviderClient.stream`), as httpcore's ``map_exceptions`` does. Keys never appear in
errors: every message built from upstream text is passed through ``redact``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec

from hub.config import HubConfig
from hub.resilience import DeadLetterLog, retry_after_s
from protocol.errors import ProviderError, redact, retryable_status
from protocol.events import StreamEnd, StreamEvent, StreamFailed
from protocol.messages import ChatMessage, Completion
from protocol.normalizers.anthropic import AnthropicNormalizer
from protocol.normalizers.base import Normalizer, truncated
from protocol.normalizers.gemini import GeminiNormalizer
from protocol.normalizers.ollama import OllamaChatNormalizer
from protocol.normalizers.openai import OpenAIChatNormalizer

__all__ = ["PROVIDERS", "resolve_model", "UpstreamRequest", "build_request", "IdleDeadline", "ProviderClient"]

PROVIDERS = ("openai", "anthropic", "google", "ollama")

_PREFIXES = {"openai/": "openai", "anthropic/": "anthropic", "google/": "google", "gemini/": "google", "ollama/": "ollama"}
_BARE = (
    (("gpt-", "o1", "o3", "o4", "chatgpt-"), "openai"),
    (("claude-",), "anthropic"),
    (("gemini-",), "google"),
)

log = logging.getLogger("cbhub.providers")

_encode = msgspec.json.Encoder().encode
_ERROR_BODY_LIMIT = 64 * 1024  # bytes of an error body read for its message


def resolve_model(model: str) -> tuple[str, str]:
    """Map a client model name to ``(provider, upstream_model)``.

    Raises:
        ProviderError: code ``model_not_found`` when no provider serves the name.
    """
    for prefix, provider in _PREFIXES.items():
        if model.startswith(prefix):
            upstream = model[len(prefix) :]
            if upstream:
                return provider, upstream
    for prefixes, provider in _BARE:
        if model.startswith(prefixes):
            return provider, model
    raise ProviderError(
        f"no provider serves model {model!r}; use openai/, anthropic/, google/ or ollama/ "
        "followed by the provider's model name",
        "model_not_found",
        status=404,
    )


class UpstreamRequest(msgspec.Struct, kw_only=True):
    """One HTTP request to a provider: where, with which headers, which JSON body, and how
    its response body is parsed."""

    provider: str
    model: str
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    make_normalizer: Callable[[], Normalizer]

    @property
    def endpoint(self) -> str:
        """``scheme://host:port`` of :attr:`url`: the circuit breaker's key with the provider."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def stream_framing(self) -> str:
        """``sse`` or ``ndjson`` (Ollama): which content types a streamed answer may have."""
        return "ndjson" if self.provider == "ollama" else "sse"


def _text_of(content: Any) -> str:
    """Plain text of an OpenAI message ``content`` (string or list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _tool_call_parts(call: dict[str, Any]) -> tuple[str, str, Any]:
    """``(id, name, arguments)`` of an OpenAI-format tool call, arguments as a JSON value
    (OpenAI sends them as a JSON string; a client may also give the object itself).

    Raises:
        ValueError: arguments that are a string but not JSON (``build_request`` reports it
            as ``invalid_message``).
    """
    function = call.get("function", {})
    arguments = function.get("arguments") or "{}"
    return call.get("id", ""), function.get("name", ""), json.loads(arguments) if isinstance(arguments, str) else arguments


def _effort(request: Completion) -> str | None:
    reasoning = request.reasoning
    if isinstance(reasoning, str):
        return reasoning
    if isinstance(reasoning, dict):
        effort = reasoning.get("effort")
        return str(effort) if effort else None
    return None


_THINKING_BUDGET = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}


def _openai_request(request: Completion, model: str, config: HubConfig) -> UpstreamRequest:
    body: dict[str, Any] = {
        "model": model,
        "messages": [msgspec.to_builtins(m) for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    for key in ("temperature", "tools", "tool_choice", "stop"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    if request.max_tokens is not None:
        # OpenAI's reasoning models reject max_tokens; compatible servers know only max_tokens.
        key = "max_completion_tokens" if model.startswith(("o1", "o3", "o4", "gpt-5")) else "max_tokens"
        body[key] = request.max_tokens
    effort = _effort(request)
    if effort:
        body["reasoning_effort"] = effort
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if config.openai_api_key:
        headers["Authorization"] = f"Bearer {config.openai_api_key}"
    return UpstreamRequest(
        provider="openai",
        model=model,
        url=config.openai_base_url.rstrip("/") + "/chat/completions",
        headers=headers,
        body=body,
        make_normalizer=OpenAIChatNormalizer,
    )


def _anthropic_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    converted = []
    for tool in tools:
        function = tool.get("function") if tool.get("type") == "function" else None
        if function is None:
            converted.append(tool)  # already Anthropic-shaped (or a server tool)
            continue
        entry = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
        if function.get("description"):
            entry["description"] = function["description"]
        converted.append(entry)
    return converted


def _anthropic_tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice in ("auto", None):
        return {"type": "auto"} if choice else None
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": choice["function"]["name"]}
    return choice if isinstance(choice, dict) else None


def _anthropic_messages(messages: list[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role in ("system", "developer"):
            system.append(_text_of(message.content))
        elif message.role == "tool":
            # All results of one assistant turn go back in one user message (Messages API,
            # "tool_result" blocks); consecutive tool messages are merged.
            result = {"type": "tool_result", "tool_use_id": message.tool_call_id or "", "content": _text_of(message.content)}
            previous = out[-1] if out else None
            if previous and previous["role"] == "user" and isinstance(previous["content"], list) \
                    and previous["content"] and previous["content"][-1].get("type") == "tool_result":
                previous["content"].append(result)
            else:
                out.append({"role": "user", "content": [result]})
        elif message.role == "assistant" and message.tool_calls:
            blocks: list[dict[str, Any]] = []
            if _text_of(message.content):
                blocks.append({"type": "text", "text": _text_of(message.content)})
            for call in message.tool_calls:
                call_id, name, arguments = _tool_call_parts(call)
                blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
            out.append({"role": "assistant", "content": blocks})
        else:
            content = message.content if isinstance(message.content, str) else _text_of(message.content)
            out.append({"role": message.role, "content": content})
    return "\n\n".join(s for s in system if s), out


def _anthropic_request(request: Completion, model: str, config: HubConfig) -> UpstreamRequest:
    system, messages = _anthropic_messages(request.messages)
    thinking = request.thinking
    if thinking is None and _effort(request):
        thinking = {"type": "enabled", "budget_tokens": _THINKING_BUDGET.get(_effort(request) or "", 4096)}
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
        body["tools"] = _anthropic_tools(request.tools)
        choice = _anthropic_tool_choice(request.tool_choice)
        if choice:
            body["tool_choice"] = choice
    if thinking is not None:
        body["thinking"] = thinking
    headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01", "Accept": "text/event-stream"}
    if config.anthropic_api_key:
        headers["x-api-key"] = config.anthropic_api_key
    return UpstreamRequest(
        provider="anthropic",
        model=model,
        url=config.anthropic_base_url.rstrip("/") + "/v1/messages",
        headers=headers,
        body=body,
        make_normalizer=AnthropicNormalizer,
    )


def _gemini_contents(messages: list[ChatMessage]) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts and ``contents`` for Gemini (roles ``user``/``model``).

    Assistant tool calls become ``functionCall`` parts (with the ``thoughtSignature`` the
    hub sent in ``tool_call.signature``, when the client passes it back as ``signature``);
    tool results become ``functionResponse`` parts named after their call, consecutive ones
    in one ``user`` turn (Gemini API, "Function calling": the responses follow the calls).
    """
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    for message in messages:
        if message.role in ("system", "developer"):
            system.append(_text_of(message.content))
        elif message.role == "tool":
            name = names_by_id.get(message.tool_call_id or "") or message.name or ""
            part = {"functionResponse": {"name": name, "response": {"content": _text_of(message.content)}}}
            previous = contents[-1] if contents else None
            if previous and previous["role"] == "user" and "functionResponse" in previous["parts"][-1]:
                previous["parts"].append(part)
            else:
                contents.append({"role": "user", "parts": [part]})
        elif message.role == "assistant":
            parts: list[dict[str, Any]] = []
            if _text_of(message.content):
                parts.append({"text": _text_of(message.content)})
            for call in message.tool_calls or ():
                call_id, name, arguments = _tool_call_parts(call)
                names_by_id[call_id] = name
                part: dict[str, Any] = {"functionCall": {"name": name, "args": arguments}}
                if call.get("signature"):
                    part["thoughtSignature"] = call["signature"]
                parts.append(part)
            contents.append({"role": "model", "parts": parts or [{"text": ""}]})
        else:
            contents.append({"role": "user", "parts": [{"text": _text_of(message.content)}]})
    return system, contents


def _gemini_tool_config(choice: Any) -> dict[str, Any] | None:
    """``toolConfig.functionCallingConfig`` for an OpenAI ``tool_choice`` (AUTO, ANY, NONE)."""
    modes = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
    if isinstance(choice, str) and choice in modes:
        return {"functionCallingConfig": {"mode": modes[choice]}}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}}
    return None


def _gemini_request(request: Completion, model: str, config: HubConfig) -> UpstreamRequest:
    system, contents = _gemini_contents(request.messages)
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
    effort = _effort(request)
    if effort or request.thinking is not None:
        thinking: dict[str, Any] = {"includeThoughts": True}
        budget = (request.thinking or {}).get("budget_tokens") or _THINKING_BUDGET.get(effort or "")
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
        tool_config = _gemini_tool_config(request.tool_choice)
        if tool_config:
            body["toolConfig"] = tool_config
    headers = {"Content-Type": "application/json"}
    if config.gemini_api_key:
        headers["x-goog-api-key"] = config.gemini_api_key
    url = f"{config.gemini_base_url.rstrip('/')}/v1beta/models/{quote(model, safe='')}:streamGenerateContent?alt=sse"
    return UpstreamRequest(
        provider="google",
        model=model,
        url=url,
        headers=headers,
        body=body,
        make_normalizer=GeminiNormalizer,
    )


def _ollama_request(request: Completion, model: str, config: HubConfig) -> UpstreamRequest:
    messages = []
    for message in request.messages:
        entry: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                                 "content": _text_of(message.content)}
        if message.tool_calls:
            # Ollama takes arguments as a JSON object, not a string (formats.md §4.1).
            entry["tool_calls"] = [
                {"function": {"name": name, "arguments": arguments}}
                for _, name, arguments in map(_tool_call_parts, message.tool_calls)
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
    if _effort(request) or request.thinking is not None:
        body["think"] = True
    return UpstreamRequest(
        provider="ollama",
        model=model,
        url=config.ollama_host.rstrip("/") + "/api/chat",
        headers={"Content-Type": "application/json"},
        body=body,
        make_normalizer=OllamaChatNormalizer,
    )


_BUILDERS = {"openai": _openai_request, "anthropic": _anthropic_request, "google": _gemini_request, "ollama": _ollama_request}
_KEY_VARS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "google": "GEMINI_API_KEY"}


def build_request(request: Completion, config: HubConfig) -> UpstreamRequest:
    """The upstream request for a client ``completion``.

    Raises:
        ProviderError: ``model_not_found`` (no provider for the name),
            ``provider_not_configured`` (the provider's public API needs a key and none is set;
            a custom base URL, such as a local server, may be used without one), or
            ``invalid_message`` (messages or tools that cannot be translated for the provider,
            e.g. tool call arguments that are not JSON, a tool without a name).
    """
    provider, model = resolve_model(request.model)
    if not config.provider_configured(provider):
        raise ProviderError(
            f"{provider} is not configured: set {_KEY_VARS[provider]} (or a base URL for a compatible server)",
            "provider_not_configured",
        )
    try:
        return _BUILDERS[provider](request, model, config)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # the free-form dicts of the client
        raise ProviderError(
            f"the messages or tools cannot be translated for {provider}: {type(exc).__name__}: {exc}",
            "invalid_message",
        ) from None


def _error_message(body: bytes) -> str:
    """The message of an HTTP error body (formats.md §6)."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.decode("utf-8", "replace").strip()[:500] or "(empty body)"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):  # Ollama: {"error": "..."}
        return error
    if isinstance(error, dict):  # OpenAI, Anthropic, Google envelopes
        return str(error.get("message") or error)
    return body.decode("utf-8", "replace")[:500]


def _status_code(status: int) -> str:
    if status in (401, 403):
        return "auth_failed"
    if status == 404:
        return "model_not_found"
    if status == 429:
        return "rate_limited"
    return "provider_error"


class IdleDeadline:
    """The idle timeout of one upstream body: closes the response when no bytes arrived for
    ``idle_s`` seconds.

    aiohttp's own ``sock_read`` timeout cancels and re-creates a timer for every chunk it
    receives, which was the largest single cost of the hub at 1000 paced streams
    (docs/BENCHMARKS.md). Here each chunk the consumer takes only records the loop time
    (:meth:`touch`); the one timer, when it fires, re-arms itself for ``last chunk + idle_s``
    until a gap really is that long. Bytes that reached the response's buffer but were not
    taken yet (they arrived in the same loop iteration as the timer) count as activity, so
    data that did arrive is never reported as a timeout.

    Args:
        idle_s: the longest allowed gap between reads, in seconds; 0 or less disables the
            deadline (as aiohttp's ``sock_read=0`` did).
        response: the response to close when the gap is exceeded (its reader then ends).
        first_byte_s: the longest wait for the body's first bytes, in seconds (the time to
            first byte of a provider that thinks before it writes); default ``idle_s``.
    """

    __slots__ = ("idle_s", "expired", "_loop", "_last", "_seen", "_response", "_handle", "_waiting_first",
                 "_first_due")

    def __init__(self, idle_s: float, response: aiohttp.ClientResponse, first_byte_s: float | None = None) -> None:
        self.idle_s = idle_s
        self.expired = False
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._response = response
        self._seen = response.content.total_bytes
        self._waiting_first = True
        first_s = idle_s if first_byte_s is None else first_byte_s
        self._first_due = self._last + first_s if first_s > 0 else None
        self._handle: asyncio.TimerHandle | None = None
        if self._first_due is not None:
            self._handle = self._loop.call_at(self._first_due, self._check)

    def touch(self) -> None:
        """The consumer took bytes now."""
        self._last = self._loop.time()
        self._seen = self._response.content.total_bytes
        if self._waiting_first:
            self._first_bytes()

    def _first_bytes(self) -> None:
        # From the first bytes on, the idle deadline applies: the timer armed for the
        # first-byte deadline is moved, once.
        self._waiting_first = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.idle_s > 0:
            self._handle = self._loop.call_at(self._last + self.idle_s, self._check)

    def _check(self) -> None:
        self._handle = None
        now = self._loop.time()
        received = self._response.content.total_bytes
        if received != self._seen:  # bytes arrived that the consumer has not taken yet
            self._seen = received
            self._last = now
            if self._waiting_first:
                self._first_bytes()
                return
        if self._waiting_first:
            due = self._first_due
        elif self.idle_s > 0:
            due = self._last + self.idle_s
        else:
            return
        assert due is not None
        if now >= due:
            self.expired = True
            self._response.close()
        else:
            self._handle = self._loop.call_at(due, self._check)

    def cancel(self) -> None:
        """Stop watching (the body ended)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class ProviderClient:
    """Streams completions from providers over one shared aiohttp ClientSession.

    Args:
        session: the hub's ClientSession (connection pooling across all completions).
        config: provider URLs, keys and timeouts.
    """

    def __init__(self, session: aiohttp.ClientSession, config: HubConfig,
                 dead_letters: DeadLetterLog | None = None) -> None:
        self.session = session
        self.config = config
        self.dead_letters = dead_letters
        # The idle timeout is not aiohttp's sock_read: see IdleDeadline.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=config.connect_timeout_s)

    async def stream(self, upstream: UpstreamRequest, request_id: str = "") -> AsyncIterator[list[StreamEvent]]:
        """POST the request and yield unified events as the body arrives: one list per read
        of the body (never empty), so a read that carried several provider chunks costs one
        step of the consumer, not one per event.

        The last event is ``StreamEnd`` or ``StreamFailed`` (from the normalizer). If the
        consumer stops early (cancel), the upstream connection is closed, not reused, so the
        provider sees the request end at once.

        Timeouts (HubConfig): ``connect_timeout_s`` to connect; ``first_byte_timeout_s`` from
        the request to the response headers and again to the body's first bytes;
        ``idle_timeout_s`` between reads after that. ``total_timeout_s`` is the caller's.

        Args:
            request_id: the hub's id of this request (the completion id), written to the
                dead-letter log.

        Raises:
            ProviderError: HTTP status other than 200 (``auth_failed``, ``model_not_found``,
                ``rate_limited``, ``provider_error``, with ``status`` and the provider's
                ``retry_after_s``), network failure (``upstream_unreachable``), a timeout
                (``upstream_timeout``), or a 200 answer that is not a stream
                (``invalid_upstream_response``; also written to the dead-letter log).
        """
        config = self.config
        secrets = config.secrets()
        response: aiohttp.ClientResponse | None = None
        idle: IdleDeadline | None = None
        finished = False
        idle_s = config.idle_timeout_s
        first_s = config.first_byte_timeout_s if config.first_byte_timeout_s > 0 else idle_s
        try:
            # Until the status line and headers: connect + first byte (no limit when both are 0).
            wait_s = config.connect_timeout_s + first_s if first_s > 0 else None
            async with asyncio.timeout(wait_s):
                response = await self.session.post(
                    upstream.url, data=_encode(upstream.body), headers=upstream.headers, timeout=self._timeout
                )
            # The body, error bodies included: first bytes within first_s, then idle_s gaps.
            idle = IdleDeadline(idle_s, response, first_byte_s=first_s)
            if response.status != 200:
                body = b""
                try:
                    while len(body) < _ERROR_BODY_LIMIT:
                        piece = await response.content.read(_ERROR_BODY_LIMIT - len(body))
                        if not piece:
                            break
                        body += piece
                        idle.touch()
                except aiohttp.ClientError:
                    if not idle.expired:
                        raise
                if idle.expired:
                    raise asyncio.TimeoutError
                message = _error_message(body)
                raise ProviderError(
                    redact(f"{upstream.provider} answered HTTP {response.status}: {message}", secrets),
                    _status_code(response.status),
                    retryable=retryable_status(response.status),
                    status=response.status,
                    retry_after_s=retry_after_s(response.headers, config.retry_after_max_s),
                )
            content_type = response.headers.get("Content-Type", "")
            if not _stream_content_type(content_type, upstream.stream_framing):
                excerpt = await _read_excerpt(response, self._excerpt_bytes)
                error = ProviderError(
                    f"{upstream.provider} answered HTTP 200 with {content_type or 'no content type'}, not a stream",
                    "invalid_upstream_response", status=200,
                )
                self._dead_letter(upstream, request_id, response, error, excerpt)
                raise error
            normalizer = upstream.make_normalizer()
            cut = False
            touch = idle.touch
            head = bytearray()  # the body's first bytes, for the dead-letter log
            last = b""
            try:
                async for chunk in response.content.iter_any():
                    touch()
                    if len(head) < self._excerpt_bytes:
                        head += chunk[: self._excerpt_bytes - len(head)]
                    last = chunk
                    events = normalizer.feed(chunk)
                    if events:
                        if events[-1].__class__ is StreamFailed:
                            self._dead_letter_failed(upstream, request_id, response, events[-1], head, last)
                        yield events
                    if normalizer.done:
                        break
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionError) as exc:
                if idle.expired:
                    raise asyncio.TimeoutError from None
                # The connection ended mid-body: what arrived is parsed, and the normalizer
                # reports the missing terminal marker as a truncated stream.
                log.info("%s body cut short: %s", upstream.provider, exc)
                cut = True
            if idle.expired:
                raise asyncio.TimeoutError
            events = normalizer.close()
            if cut and events and isinstance(events[-1], StreamEnd):
                # Gemini SSE has no terminal marker but EOF, and says STOP on every chunk:
                # a connection we saw break is a truncation whatever the last chunk said.
                events[-1] = truncated(upstream.provider, events[-1].usage)
            if events:
                if events[-1].__class__ is StreamFailed:
                    self._dead_letter_failed(upstream, request_id, response, events[-1], head, last)
                yield events
            finished = True
        except asyncio.TimeoutError:
            raise ProviderError(
                f"{upstream.provider} did not answer within the timeout", "upstream_timeout", retryable=True
            ) from None
        except aiohttp.ClientError as exc:
            raise ProviderError(
                redact(f"could not reach {upstream.provider}: {exc}", secrets), "upstream_unreachable", retryable=True
            ) from None
        finally:
            if idle is not None:
                idle.cancel()
            if response is not None:
                if finished:
                    response.release()
                else:
                    response.close()  # drop the connection: the provider sees the request end

    _excerpt_bytes = 2048

    def _dead_letter_failed(self, upstream: UpstreamRequest, request_id: str, response: aiohttp.ClientResponse,
                            failed: StreamFailed, head: bytes, last: bytes) -> None:
        if failed.code != "invalid_upstream_response":
            return
        excerpt = bytes(head) if last and bytes(head).endswith(last) else bytes(head) + b" ... " + last[-512:]
        error = ProviderError(failed.message, failed.code, status=failed.status)
        self._dead_letter(upstream, request_id, response, error, excerpt)

    def _dead_letter(self, upstream: UpstreamRequest, request_id: str, response: aiohttp.ClientResponse,
                     error: ProviderError, excerpt: bytes) -> None:
        """Record an invalid upstream response (keys redacted) in the dead-letter log."""
        if self.dead_letters is None:
            return
        secrets = self.config.secrets()
        provider_request_id = next(
            (response.headers[name] for name in ("x-request-id", "request-id", "x-goog-request-id")
             if name in response.headers), None)
        self.dead_letters.write({
            "requestId": request_id,
            "providerRequestId": provider_request_id,
            "provider": upstream.provider,
            "model": upstream.model,
            "url": redact(upstream.url, secrets),
            "status": response.status,
            "contentType": response.headers.get("Content-Type"),
            "code": error.code,
            "message": redact(error.message, secrets),
            "excerpt": redact(excerpt.decode("utf-8", "replace"), secrets),
        })


_SSE_TYPES = ("text/event-stream",)
_NDJSON_TYPES = ("application/x-ndjson", "application/json", "application/jsonl", "text/plain")


def _stream_content_type(content_type: str, framing: str) -> bool:
    """Whether a 200 answer's content type can carry the stream: SSE providers must answer
    ``text/event-stream``; Ollama ``application/x-ndjson`` (or JSON, as some versions do). A
    missing content type is accepted: the framing decides."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if not mime:
        return True
    return mime in (_SSE_TYPES if framing == "sse" else _NDJSON_TYPES)


async def _read_excerpt(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body (best effort: an error ends the excerpt)."""
    try:
        return await response.content.read(limit)
    except aiohttp.ClientError:
        return b""
