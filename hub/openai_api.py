"""The OpenAI-compatible HTTP API on the hub's port, so OpenAI SDK code works unchanged.

- ``POST /v1/chat/completions``: OpenAI's request body; ``stream: true`` answers with SSE
  chunks in OpenAI's format ending ``data: [DONE]`` (plus the ``choices: []`` usage chunk when
  ``stream_options.include_usage`` is true), ``stream: false`` with one ``chat.completion``.
- ``GET /v1/chat/completions/stream?model=…&messages=<JSON>``: the same stream for a browser
  ``EventSource`` (which can only GET); ``include_usage=true`` adds the usage chunk.
- ``GET /v1/models``: the models this hub can route to (see :func:`models_handler`).

Each request runs as a normal completion (same providers, coalescing, ids) and its response
is a subscriber of the completion's channel. Errors before the first token get an HTTP
status and OpenAI's error body; an error after the stream started is sent as a chunk with an
``error`` object, which the openai SDK raises as ``APIError`` (formats.md §1.1).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from hub.appkeys import HUB_KEY
from hub.multiplexer import EncodedEvent

from protocol.errors import HubError, ProtocolError
from protocol.messages import ChatMessage, Completed, ErrorMessage
from protocol.openai_compat import (
    ChatCompletionRequest,
    ChunkEncoder,
    StreamOptions,
    completion_object,
    decode_chat_request,
    error_body,
)

if TYPE_CHECKING:
    from hub.app import Hub

__all__ = ["chat_completions_handler", "chat_stream_get_handler", "models_handler"]

_MESSAGES_DECODER = msgspec.json.Decoder(list[ChatMessage])

_STATUS_BY_CODE = {
    "invalid_json": 400,
    "invalid_message": 400,
    "unknown_type": 400,
    "duplicate_id": 409,
    "model_not_found": 404,
    "provider_not_configured": 503,
    "provider_unavailable": 503,
    "too_many_completions": 429,
    "hub_overloaded": 503,
    "auth_failed": 502,
    "rate_limited": 429,
    "upstream_timeout": 504,
    "upstream_unreachable": 502,
    "cancelled": 499,
    "shutting_down": 503,
    "internal_error": 500,
}


class _ResponseSubscriber:
    """Collects one completion's messages for an HTTP response."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def deliver(self, event: EncodedEvent) -> None:
        self.queue.put_nowait(event.message)


def _json_error(code: str, message: str, status: int | None) -> web.Response:
    http_status = _STATUS_BY_CODE.get(code) or (status if status and 400 <= status < 600 else 502)
    return web.Response(body=error_body(code, message, http_status), status=http_status, content_type="application/json")


_KEEPALIVE = b": keepalive\n\n"


async def _next(queue: asyncio.Queue[Any], timeout_s: float) -> Any:
    """The next message, or None when none came within ``timeout_s`` seconds (0: wait as
    long as it takes)."""
    if not queue.empty() or timeout_s <= 0:
        return await queue.get()
    try:
        async with asyncio.timeout(timeout_s):
            return await queue.get()
    except TimeoutError:
        return None


def _is_terminal(message: Any) -> bool:
    return isinstance(message, (Completed, ErrorMessage)) and message.completion_id is not None


async def _serve(
    hub: Hub, request: web.Request, chat: ChatCompletionRequest, *, tag_events: bool = False
) -> web.StreamResponse:
    try:
        hub.admit_completion()
        run = hub.completions.create(chat.to_completion())
    except HubError as exc:
        return _json_error(exc.code, exc.message, exc.status)
    subscriber = _ResponseSubscriber()
    hub.completions.subscribe(subscriber, run)
    run.start()
    created = int(time.time())
    response_id = f"chatcmpl-{run.id}"
    keepalive_s = hub.config.sse_keepalive_interval_s if chat.stream else 0.0
    queue = subscriber.queue
    try:
        first = await _next(queue, keepalive_s)
        # None: no answer within keepalive_s; the headers go out now, and an error that
        # comes later is sent as an SSE event.
        if isinstance(first, ErrorMessage):
            return _json_error(first.error.code, first.error.message, first.error.status)
        if not chat.stream:
            assert first is not None
            messages = [first]
            while not _is_terminal(messages[-1]):
                messages.append(await queue.get())
            last = messages[-1]
            if isinstance(last, ErrorMessage):
                return _json_error(last.error.code, last.error.message, last.error.status)
            return web.json_response(
                completion_object(response_id, chat.model, created, messages), dumps=lambda o: msgspec.json.encode(o).decode()
            )
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        encoder = ChunkEncoder(response_id, chat.model, created, include_usage=include_usage)
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        })
        await response.prepare(request)
        if tag_events:
            # An SSE `id` makes a reconnecting EventSource send Last-Event-ID, which
            # chat_stream_get_handler answers with 204 so the browser stops (WHATWG §9.2).
            await response.write(f"id: {run.id}\n".encode())
        message = first
        try:
            while True:
                if message is None:
                    # Nothing for keepalive_s (a model thinking before its first token, a long
                    # gap): an SSE comment keeps proxies from cutting the idle connection.
                    await response.write(_KEEPALIVE)
                else:
                    # Everything already queued goes out in one write.
                    parts = [encoder.encode(message)]
                    while not _is_terminal(message) and not queue.empty():
                        message = queue.get_nowait()
                        parts.append(encoder.encode(message))
                    data = b"".join(parts)
                    if data:
                        await response.write(data)
                    if _is_terminal(message):
                        break
                message = await _next(queue, keepalive_s)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away; `finally` cancels the upstream request
        return response
    finally:
        # Also reached when aiohttp cancels this handler because the client disconnected
        # (handler_cancellation, hub/app.py), e.g. while a `stream: false` answer is pending.
        hub.multiplexer.unsubscribe(subscriber, run.channel.name)
        if not run.finished:
            # An HTTP client cannot resume: when it goes away, stop the upstream request.
            run.cancel(HubError("the HTTP client disconnected", "cancelled"))


async def chat_completions_handler(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions`` (OpenAI Chat Completions API)."""
    hub: Hub = request.app[HUB_KEY]
    body = await request.read()
    try:
        chat = decode_chat_request(body)
    except ProtocolError as exc:
        return _json_error(exc.code, exc.message, 400)
    return await _serve(hub, request, chat)


async def chat_stream_get_handler(request: web.Request) -> web.StreamResponse:
    """``GET /v1/chat/completions/stream?model=…&messages=<JSON array>`` for EventSource.

    An EventSource reconnects by itself when the response ends; each reconnection would start
    a new completion. The stream therefore carries an SSE ``id``, and a request that comes back
    with ``Last-Event-ID`` is answered 204 No Content, which makes the browser stop (WHATWG
    HTML §9.2.3: a 204 response fails the connection without reconnecting).
    """
    hub: Hub = request.app[HUB_KEY]
    if "Last-Event-ID" in request.headers:
        return web.Response(status=204)
    query = request.query
    model = query.get("model")
    raw_messages = query.get("messages")
    if not model or not raw_messages:
        return _json_error("invalid_message", "query parameters `model` and `messages` are required", 400)
    try:
        messages = _MESSAGES_DECODER.decode(raw_messages)
    except msgspec.DecodeError as exc:
        return _json_error("invalid_message", f"`messages` must be a JSON array of chat messages: {exc}", 400)
    except RecursionError:  # msgspec gives up on JSON nested about 1000 levels deep
        return _json_error("invalid_message", "`messages` is nested too deeply", 400)
    if not messages:
        return _json_error("invalid_message", "`messages` must hold at least one message", 400)
    max_tokens = query.get("max_tokens")
    chat = ChatCompletionRequest(
        model=model,
        messages=messages,
        stream=True,
        stream_options=StreamOptions(include_usage=query.get("include_usage", "").lower() in ("1", "true", "yes")),
        max_tokens=int(max_tokens) if max_tokens and max_tokens.isdigit() else None,
    )
    return await _serve(hub, request, chat, tag_events=True)


_CATALOGUE = {
    "openai": ("gpt-4o-mini", "gpt-4o", "o4-mini"),
    "anthropic": ("claude-3-5-haiku-latest", "claude-sonnet-4-5"),
    "google": ("gemini-2.5-flash", "gemini-2.5-pro"),
    "ollama": ("llama3.2",),
}


async def models_handler(request: web.Request) -> web.Response:
    """``GET /v1/models``: example model ids for every provider the hub can reach.

    A provider is listed when it has a key or a custom base URL (Ollama always). The ids are
    examples: any of the provider's model names works with its ``provider/`` prefix.
    """
    hub: Hub = request.app[HUB_KEY]
    data = [
        {"id": f"{provider}/{name}", "object": "model", "created": 0, "owned_by": provider}
        for provider, names in _CATALOGUE.items()
        if hub.config.provider_configured(provider)
        for name in names
    ]
    return web.json_response({"object": "list", "data": data})
