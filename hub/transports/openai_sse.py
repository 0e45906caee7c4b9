"""The OpenAI-compatible HTTP API on the hub's port, so OpenAI SDK code works unchanged.

- ``POST /v1/chat/completions``: OpenAI's request body; ``stream: true`` answers with SSE
  chunks in OpenAI's format ending ``data: [DONE]`` (plus the ``choices: []`` usage chunk when
  ``stream_options.include_usage`` is true), ``stream: false`` with one ``chat.completion``.
- ``GET /v1/chat/completions/stream?model=…&messages=<JSON>``: the same stream for a browser
  ``EventSource`` (which can only GET); ``include_usage=true`` adds the usage chunk.
- ``GET /v1/models``: the models this hub can route to (see :func:`models_handler`), those
  the subject's ``models`` claim allows when it has one.

Each request is a :class:`~hub.session.Session` like a WebSocket client's: the session admits
and starts the completion and subscribes the request's :class:`SseOutbox`, so SSE obeys the
same limits as WebSocket (``max_connections``, the memory budget, the slow-consumer policy:
past the soft limit content chunks are merged, past the hard limit the response is cut).
Authentication (docs/PROTOCOL.md "Authentication"): when ``auth.mode`` is not ``none`` every
``/v1`` request needs ``Authorization: Bearer <JWT or API key>`` (the openai SDK sends its
``api_key`` so); ``GET /v1/chat/completions/stream`` also takes ``?token=``, because an
``EventSource`` cannot set headers. A missing credential is HTTP 401 ``unauthorized``, a
refused one 401 ``invalid_token`` or ``token_expired``, in OpenAI's error body with
``WWW-Authenticate: Bearer``.

Errors before the first token get an HTTP status and OpenAI's error body; an error after the
stream started is sent as a chunk with an ``error`` object, which the openai SDK raises as
``APIError`` (docs/PROVIDERS.md, OpenAI streaming errors).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from hub.appkeys import HUB_KEY
from hub.outbox import Outbox, WriteScheduler
from hub.session import ANONYMOUS, Principal, Session
from hub.transports.http_limits import read_body
from hub.transports.websocket import bearer_token
from protocol.errors import ErrorCode, HubError, ProtocolError, http_status_of
from protocol.messages import ChatMessage, Completed, ErrorMessage
from protocol.openai_compat import (
    ChatCompletionRequest,
    ChunkEncoder,
    StreamOptions,
    completion_object,
    decode_chat_request,
    error_body,
)
from protocol.providers import model_catalogue

if TYPE_CHECKING:
    from hub.app import Hub

__all__ = ["SseOutbox", "chat_completions_handler", "chat_stream_get_handler", "models_handler"]

_MESSAGES_DECODER = msgspec.json.Decoder(list[ChatMessage])

_KEEPALIVE = b": keepalive\n\n"


class SseOutbox(Outbox):
    """One HTTP response's outbox: the request handler writes what it holds.

    The broker's deliveries only queue (as for every client); :meth:`write_pending` wakes the
    handler, which takes the events, encodes them in OpenAI's chunk format and awaits the
    write. While that write waits for a slow reader, deliveries keep queueing here, where
    the slow-consumer policy applies; past the hard limit the connection is dropped.
    """

    transport_name = "sse"

    def __init__(self, scheduler: WriteScheduler, request: web.Request, soft_limit: int, hard_limit: int) -> None:
        super().__init__(scheduler, soft_limit, hard_limit)
        self._transport = request.transport
        self._ready = asyncio.Event()

    def write_pending(self, force: bool) -> None:
        """Wake the handler (it writes; see :meth:`next_messages`)."""
        self._ready.set()

    async def next_messages(self, timeout_s: float) -> list[Any] | None:
        """The messages queued for this response, waiting for some for up to ``timeout_s``
        seconds (0: as long as it takes).

        Returns:
            The messages, oldest first; None when none came within ``timeout_s``.

        Raises:
            ConnectionResetError: the response was dropped (past the hard outbound limit).
        """
        if not self.pending and not self.closed:
            self._ready.clear()
            if timeout_s > 0:
                try:
                    async with asyncio.timeout(timeout_s):
                        await self._ready.wait()
                except TimeoutError:
                    return None
            else:
                await self._ready.wait()
        if self.closed:
            raise ConnectionResetError("the response was closed (slow consumer)")
        return [event.message for event in self.take()]

    def writing(self, size: int) -> None:
        """Before the handler's write of ``size`` bytes: they count as outbound while the
        write waits for a slow reader."""
        self.backlog_bytes += size

    def wrote_now(self) -> None:
        """After the handler's write: account the transport's unsent bytes."""
        transport = self._transport
        self.wrote(transport.get_write_buffer_size() if transport is not None else 0)

    def close_now(self, code: int, reason: str) -> None:
        """Drop the response's connection (an HTTP client cannot resume)."""
        self.abort()

    def abort(self) -> None:
        """Stop queueing and drop the TCP connection; the handler ends."""
        self.stop()
        self._ready.set()
        if self._transport is not None:
            self._transport.abort()


def _json_error(code: str, message: str, status: int | None, retry_after_ms: int | None = None) -> web.Response:
    """OpenAI's error body with the HTTP status of ``code`` (protocol.errors.http_status_of);
    with ``retry_after_ms`` (a rate limit of the hub) a ``Retry-After`` header in whole
    seconds, rounded up (RFC 9110 §10.2.3)."""
    http_status = http_status_of(code, status)
    headers = {"Retry-After": str(-(-retry_after_ms // 1000))} if retry_after_ms is not None else None
    return web.Response(body=error_body(code, message, http_status), status=http_status,
                        content_type="application/json", headers=headers)


async def _authenticate(hub: Hub, request: web.Request, query: bool = False) -> Principal | web.Response:
    """The request's principal, or the 401 response that refuses it."""
    if not hub.authenticator.enabled:
        return ANONYMOUS
    token = bearer_token(request, query)
    try:
        if token is None:
            raise HubError("this hub needs a credential: Authorization: Bearer <token or API key>",
                           ErrorCode.UNAUTHORIZED)
        return await hub.authenticate(token)
    except HubError as exc:
        response = _json_error(exc.code, exc.message, None)
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"' if token is not None else "Bearer"
        return response


def _is_terminal(message: Any, completion_id: str) -> bool:
    return isinstance(message, (Completed, ErrorMessage)) and message.completion_id == completion_id


async def _serve(
    hub: Hub, request: web.Request, chat: ChatCompletionRequest, principal: Principal, *, tag_events: bool = False
) -> web.StreamResponse:
    if hub.at_connection_limit():
        return _json_error(ErrorCode.HUB_OVERLOADED, "too many connections (max_connections); retry later", 503)
    config = hub.config
    # A `stream: false` answer has no slow reader: the handler takes every event as it comes
    # and writes once at the end, so only a streamed response can pass the hard limit.
    hard_limit = config.outbound_hard_limit_bytes if chat.stream else sys.maxsize
    outbox = SseOutbox(hub.write_scheduler, request, config.outbound_soft_limit_bytes, hard_limit)
    # Authorized once, for this request: a token that expires while the answer streams does
    # not cut it.
    session = Session(hub, outbox, principal, watch_expiry=False)
    hub.connections.add(outbox)
    run = None
    try:
        try:
            completion = chat.to_completion()
            # With a Redis broker the rate limits are counted across the cluster (one Redis
            # round trip, hub/cluster_limits.py); in memory nothing is awaited.
            ticket = await session.admit_in_cluster(completion) if hub.cluster_limits is not None else None
            run = session.start_completion(completion, ticket)
        except HubError as exc:
            return _json_error(exc.code, exc.message, exc.status, exc.retry_after_ms)
        return await _respond(hub, request, chat, outbox, run.id, tag_events)
    except ConnectionResetError:
        # Dropped before the headers went out (past the hard limit): nothing reaches the client.
        return web.Response(status=ErrorCode.HUB_OVERLOADED.http_status or 503)
    finally:
        # Also reached when aiohttp cancels this handler because the client disconnected
        # (handler_cancellation, hub/app.py), e.g. while a `stream: false` answer is pending.
        session.close()
        hub.connections.discard(outbox)
        if run is not None and not run.finished:
            # An HTTP client cannot resume: when it goes away, stop the upstream request.
            gone = HubError("the HTTP client disconnected", ErrorCode.CANCELLED)
            hub.broker.control(run.channel.name, "cancel", gone)


async def _respond(hub: Hub, request: web.Request, chat: ChatCompletionRequest, outbox: SseOutbox,
                   completion_id: str, tag_events: bool) -> web.StreamResponse:
    keepalive_s = hub.config.sse_keepalive_interval_s if chat.stream else 0.0
    created = int(time.time())
    response_id = f"chatcmpl-{completion_id}"
    # The stream's own messages (the session's `subscribed` ack is not part of the answer).
    first = await _stream_messages(outbox, keepalive_s, completion_id)
    # None: no answer within keepalive_s; the headers go out now, and an error that comes
    # later is sent as an SSE event.
    if first and isinstance(first[0], ErrorMessage):
        error = first[0].error
        return _json_error(error.code, error.message, error.status)
    if not chat.stream:
        collected = list(first or ())
        while not collected or not _is_terminal(collected[-1], completion_id):
            collected += await _stream_messages(outbox, 0.0, completion_id) or []
        last = collected[-1]
        if isinstance(last, ErrorMessage):
            return _json_error(last.error.code, last.error.message, last.error.status)
        body = completion_object(response_id, chat.model, created, collected)
        return web.json_response(body, dumps=lambda o: msgspec.json.encode(o).decode())
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
        await response.write(f"id: {completion_id}\n".encode())
    pending: list[Any] | None = first
    try:
        while True:
            if pending is None:
                # Nothing for keepalive_s (a model thinking before its first token, a long
                # gap): an SSE comment keeps proxies from cutting the idle connection.
                await response.write(_KEEPALIVE)
            elif pending:
                # Everything queued goes out in one write.
                data = b"".join([encoder.encode(message) for message in pending])
                if data:
                    outbox.writing(len(data))
                    await response.write(data)
                    outbox.wrote_now()
                if _is_terminal(pending[-1], completion_id):
                    break
            pending = await _stream_messages(outbox, keepalive_s, completion_id)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away (or was too slow); the caller cancels the upstream request
    return response


async def _stream_messages(outbox: SseOutbox, timeout_s: float, completion_id: str) -> list[Any] | None:
    """The next messages of ``completion_id``'s stream (its ack and anything else left out;
    nothing follows its terminal message); None when nothing came within ``timeout_s``.

    Raises:
        ConnectionResetError: the response was dropped (see :meth:`SseOutbox.next_messages`).
    """
    while True:
        messages = await outbox.next_messages(timeout_s)
        if messages is None:
            return None
        stream = [message for message in messages if getattr(message, "completion_id", None) == completion_id
                  and getattr(message, "seq", None) is not None]
        if stream:
            return stream


async def chat_completions_handler(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions`` (OpenAI Chat Completions API)."""
    hub: Hub = request.app[HUB_KEY]
    principal = await _authenticate(hub, request)
    if isinstance(principal, web.Response):
        return principal
    body = await read_body(request)  # within http.body_timeout_s, else 408
    try:
        chat = decode_chat_request(body)
    except ProtocolError as exc:
        return _json_error(exc.code, exc.message, 400)
    return await _serve(hub, request, chat, principal)


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
    principal = await _authenticate(hub, request, query=True)
    if isinstance(principal, web.Response):
        return principal
    query = request.query
    model = query.get("model")
    raw_messages = query.get("messages")
    if not model or not raw_messages:
        return _json_error(ErrorCode.INVALID_MESSAGE, "query parameters `model` and `messages` are required", 400)
    try:
        messages = _MESSAGES_DECODER.decode(raw_messages)
    except msgspec.DecodeError as exc:
        return _json_error(ErrorCode.INVALID_MESSAGE, f"`messages` must be a JSON array of chat messages: {exc}", 400)
    except RecursionError:  # msgspec gives up on JSON nested about 1000 levels deep
        return _json_error(ErrorCode.INVALID_MESSAGE, "`messages` is nested too deeply", 400)
    if not messages:
        return _json_error(ErrorCode.INVALID_MESSAGE, "`messages` must hold at least one message", 400)
    max_tokens = query.get("max_tokens")
    chat = ChatCompletionRequest(
        model=model,
        messages=messages,
        stream=True,
        stream_options=StreamOptions(include_usage=query.get("include_usage", "").lower() in ("1", "true", "yes")),
        max_tokens=int(max_tokens) if max_tokens and max_tokens.isdigit() else None,
    )
    return await _serve(hub, request, chat, principal, tag_events=True)


async def models_handler(request: web.Request) -> web.Response:
    """``GET /v1/models``: example model ids for every provider the hub can reach, from the
    provider registry (protocol.providers.model_catalogue).

    A provider is listed when it has a key or a custom base URL (Ollama always). The ids are
    examples: any of the provider's model names works with its ``provider/`` prefix.
    """
    hub: Hub = request.app[HUB_KEY]
    principal = await _authenticate(hub, request)
    if isinstance(principal, web.Response):
        return principal
    data = model_catalogue(hub.config.provider_configured)
    if principal.models:  # only what this subject may use
        data = [entry for entry in data if _may_use(hub, principal, str(entry.get("id", "")))]
    return web.json_response({"object": "list", "data": data})


def _may_use(hub: Hub, principal: Principal, model: str) -> bool:
    try:
        hub.authorize(principal, "use_model", model)
    except HubError:
        return False
    return True
