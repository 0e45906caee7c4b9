"""The OpenAI-compatible HTTP API on the hub's port, so OpenAI SDK code works unchanged.

- ``POST /v1/chat/completions``: OpenAI's request body; ``stream: true`` answers with SSE
  chunks in OpenAI's format ending ``data: [DONE]`` (plus the ``choices: []`` usage chunk when
  ``stream_options.include_usage`` is true), ``stream: false`` with one ``chat.completion``.
- ``GET /v1/chat/completions/stream?model=…&messages=<JSON>``: the same stream for a browser
  ``EventSource`` (which can only GET); ``include_usage=true`` adds the usage chunk.
- ``GET /v1/models``: the models this hub can route to (see :func:`models_handler`): the
  named models of ``models:`` first, then the providers' examples; those the subject's
  ``models`` claim allows when it has one. ``GET /v1/models/{id}``: one of them.

Each request is a :class:`~hub.session.Session` like a WebSocket client's: the session admits
and starts the completion and subscribes the request's :class:`SseOutbox`, so SSE obeys the
same limits as WebSocket (``max_connections``, the memory budget, the slow-consumer policy:
past the soft limit content chunks are merged, past the hard limit the response is cut).
Authentication (docs/PROTOCOL.md "Authentication"): when ``auth.mode`` is not ``none`` every
``/v1`` request needs ``Authorization: Bearer <JWT or API key>`` (the openai SDK sends its
``api_key`` so) or ``x-api-key: <JWT or API key>`` (the anthropic SDK's way,
hub/transports/http_stream.py); ``GET /v1/chat/completions/stream`` also takes ``?token=``, because an
``EventSource`` cannot set headers. A missing credential is HTTP 401 ``unauthorized``, a
refused one 401 ``invalid_token`` or ``token_expired``, in OpenAI's error body with
``WWW-Authenticate: Bearer``.

Errors before the first token get an HTTP status and OpenAI's error body; an error after the
stream started is sent as a chunk with an ``error`` object, which the openai SDK raises as
``APIError`` (docs/PROVIDERS.md, OpenAI streaming errors).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from hub.appkeys import HUB_KEY
from hub.session import Principal
from hub.transports.http_limits import read_body
from hub.transports.http_stream import SseOutbox, authenticate, retry_after_header, serve
from protocol.errors import ErrorCode, HubError, ProtocolError, http_status_of
from protocol.messages import ChatMessage
from protocol.openai_compat import (
    ChatCompletionRequest,
    ChunkEncoder,
    StreamOptions,
    completion_object,
    decode_chat_request,
    error_body,
)
from protocol.providers import PROVIDERS, model_catalogue

if TYPE_CHECKING:
    from hub.app import Hub

__all__ = ["SseOutbox", "chat_completions_handler", "chat_stream_get_handler", "model_handler", "models_handler"]

_MESSAGES_DECODER = msgspec.json.Decoder(list[ChatMessage])

_KEEPALIVE = b": keepalive\n\n"


def _json_error(code: str, message: str, status: int | None, retry_after_ms: int | None = None) -> web.Response:
    """OpenAI's error body with the HTTP status of ``code`` (protocol.errors.http_status_of);
    with ``retry_after_ms`` (a rate limit of the hub) a ``Retry-After`` header in whole
    seconds, rounded up (RFC 9110 §10.2.3)."""
    http_status = http_status_of(code, status)
    headers = retry_after_header(retry_after_ms)
    return web.Response(body=error_body(code, message, http_status), status=http_status,
                        content_type="application/json", headers=headers)


async def _authenticate(hub: Hub, request: web.Request, query: bool = False) -> Principal | web.Response:
    """The request's principal, or the 401 response that refuses it."""
    return await authenticate(hub, request, _json_error, query)


class _OpenAIDialect:
    """OpenAI's Chat Completions format for one request (a :class:`~hub.transports.http_stream.Dialect`)."""

    def __init__(self, chat: ChatCompletionRequest, tag_events: bool) -> None:
        self.chat = chat
        self.stream = chat.stream
        self.tag_events = tag_events
        self.created = int(time.time())
        self.refuse = _json_error
        self._encoder: ChunkEncoder | None = None

    def answer(self, completion_id: str, messages: list[Any]) -> web.Response:
        body = completion_object(f"chatcmpl-{completion_id}", self.chat.model, self.created, messages)
        return web.json_response(body, dumps=lambda o: msgspec.json.encode(o).decode())

    def begin(self, completion_id: str) -> bytes:
        chat = self.chat
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        self._encoder = ChunkEncoder(f"chatcmpl-{completion_id}", chat.model, self.created, include_usage=include_usage)
        # An SSE `id` makes a reconnecting EventSource send Last-Event-ID, which
        # chat_stream_get_handler answers with 204 so the browser stops (WHATWG §9.2).
        return f"id: {completion_id}\n".encode() if self.tag_events else b""

    def encode(self, message: Any) -> bytes:
        assert self._encoder is not None, "begin() comes first"
        return self._encoder.encode(message)

    def keepalive(self) -> bytes:
        return _KEEPALIVE


async def _serve(
    hub: Hub, request: web.Request, chat: ChatCompletionRequest, principal: Principal, *, tag_events: bool = False
) -> web.StreamResponse:
    return await serve(hub, request, chat.to_completion(), principal, _OpenAIDialect(chat, tag_events))


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
    data = _catalogue(hub)
    if principal.models:  # only what this subject may use
        data = [entry for entry in data if _may_use(hub, principal, str(entry.get("id", "")))]
    return web.json_response({"object": "list", "data": data})


def _catalogue(hub: Hub) -> list[dict[str, Any]]:
    """The named models of ``models:`` (hub/routing.py), then the providers' example models."""
    return [*hub.completions.router.catalogue(), *model_catalogue(hub.config.provider_configured)]


async def model_handler(request: web.Request) -> web.Response:
    """``GET /v1/models/{id}``: one entry of :func:`models_handler`'s list (OpenAI's model
    object), or 404 ``model_not_found`` in OpenAI's error body. A ``provider/model`` name the
    hub can route is found even when it is not one of the listed examples."""
    hub: Hub = request.app[HUB_KEY]
    principal = await _authenticate(hub, request)
    if isinstance(principal, web.Response):
        return principal
    model = request.match_info["model"]
    entry = next((item for item in _catalogue(hub) if item["id"] == model), None)
    if entry is None:
        provider = PROVIDERS.provider_of(model)
        if provider and hub.config.provider_configured(provider):
            entry = {"id": model, "object": "model", "created": 0, "owned_by": provider}
    if entry is None or (principal.models and not _may_use(hub, principal, model)):
        return _json_error(ErrorCode.MODEL_NOT_FOUND, f"no model {model!r} on this hub (GET /v1/models lists them)",
                           404)
    return web.json_response(entry)


def _may_use(hub: Hub, principal: Principal, model: str) -> bool:
    try:
        hub.authorize(principal, "use_model", model)
    except HubError:
        return False
    return True
