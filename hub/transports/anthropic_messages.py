"""``POST /v1/messages``: the Anthropic Messages API as a front door of the hub.

The body is Anthropic's Messages request, mapped onto a hub ``completion`` by
:mod:`protocol.anthropic_compat` (what is carried, mapped or refused: docs/PROTOCOL.md
"/v1/messages"), and run by :func:`hub.transports.http_stream.serve` like a
``/v1/chat/completions`` request: same routing to any provider, limits, history, and a channel
``completion:<id>`` that a WebSocket client can subscribe to; the answer's ``id`` is
``msg_<completion id>``. ``stream: true`` answers Anthropic's SSE events (``message_start``
... ``message_stop``, ``ping`` as keepalive), ``stream: false`` one Message object.

Credentials as on every ``/v1`` route: ``x-api-key`` (the anthropic SDK's ``api_key``) or
``Authorization: Bearer`` (its ``auth_token``). ``anthropic-version`` and ``anthropic-beta``
headers are not read. Errors before the stream are Anthropic's error body
``{"type":"error","error":{"type","message","code"}}`` with the HTTP status of the hub's error
code; an error after the stream started is an ``event: error`` (docs/PROVIDERS.md §2.7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from hub.appkeys import HUB_KEY
from hub.transports.http_limits import read_body
from hub.transports.http_stream import EncoderDialect, authenticate, retry_after_header, serve
from protocol.anthropic_compat import PING, MessageEncoder, MessagesRequest, decode_messages_request, error_body
from protocol.errors import ProtocolError, http_status_of

if TYPE_CHECKING:
    from hub.app import Hub

__all__ = ["messages_handler"]


def _anthropic_error(code: str, message: str, status: int | None, retry_after_ms: int | None = None) -> web.Response:
    """Anthropic's error body with the HTTP status of ``code`` (protocol.errors.http_status_of);
    ``Retry-After`` in whole seconds, rounded up, when the hub knows the wait."""
    http_status = http_status_of(code, status)
    headers = retry_after_header(retry_after_ms)
    return web.Response(body=error_body(code, message, http_status), status=http_status,
                        content_type="application/json", headers=headers)


class _AnthropicDialect(EncoderDialect):
    """Anthropic's Messages format for one request (a :class:`~hub.transports.http_stream.Dialect`)."""

    def __init__(self, request: MessagesRequest) -> None:
        self.model = request.model
        self.stream = request.stream
        self.refuse = _anthropic_error
        self.keepalive_bytes = PING

    def new_encoder(self, completion_id: str) -> MessageEncoder:
        return MessageEncoder(f"msg_{completion_id}", self.model)

    def final(self, encoder: MessageEncoder) -> Any:
        return encoder.message()


async def messages_handler(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages`` (Anthropic Messages API)."""
    hub: Hub = request.app[HUB_KEY]
    principal = await authenticate(hub, request, _anthropic_error)
    if isinstance(principal, web.Response):
        return principal
    body = await read_body(request)  # within http.body_timeout_s, else 408
    try:
        decoded = decode_messages_request(body)
        completion = decoded.to_completion()
    except ProtocolError as exc:
        return _anthropic_error(exc.code, exc.message, 400)
    return await serve(hub, request, completion, principal, _AnthropicDialect(decoded))
