"""``POST /v1/responses``: the OpenAI Responses API as a front door of the hub.

The body is OpenAI's Responses request, mapped onto a hub ``completion`` by
:mod:`protocol.responses_compat` (what is carried, mapped or refused: docs/PROTOCOL.md
"POST /v1/responses"), and run by :func:`hub.transports.http_stream.serve` like a
``/v1/chat/completions`` request: same routing to any provider, limits, history, and a channel
``completion:<id>`` that a WebSocket client can subscribe to; the Response ``id`` is
``resp_<completion id>``. ``stream: true`` answers the Responses events (``response.created``
... ``response.completed``; an SSE comment as keepalive), ``stream: false`` one Response object.

Credentials as on every ``/v1`` route (``Authorization: Bearer``, the openai SDK's way, or
``x-api-key``). Errors before the stream are OpenAI's error body ``{"error": {"message",
"type", "param", "code"}}`` (``param`` names a refused field) with the HTTP status of the hub's
error code; an error after the stream started is an ``error`` event followed by
``response.failed``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hub.appkeys import HUB_KEY
from hub.transports.http_limits import read_body
from hub.transports.http_stream import EncoderDialect, authenticate, retry_after_header, serve
from protocol.errors import ProtocolError, http_status_of
from protocol.responses_compat import (
    KEEPALIVE,
    FieldRefused,
    ResponseEncoder,
    ResponsesRequest,
    decode_responses_request,
    error_body,
)

if TYPE_CHECKING:
    from hub.app import Hub

__all__ = ["responses_handler"]


def _openai_error(code: str, message: str, status: int | None, retry_after_ms: int | None = None,
                  param: str | None = None) -> web.Response:
    """OpenAI's error body with the HTTP status of ``code`` (protocol.errors.http_status_of);
    ``Retry-After`` in whole seconds, rounded up, when the hub knows the wait."""
    http_status = http_status_of(code, status)
    headers = retry_after_header(retry_after_ms)
    return web.Response(body=error_body(code, message, http_status, param), status=http_status,
                        content_type="application/json", headers=headers)


class _ResponsesDialect(EncoderDialect):
    """The Responses format for one request (a :class:`~hub.transports.http_stream.Dialect`)."""

    def __init__(self, request: ResponsesRequest) -> None:
        self.request = request
        self.stream = request.stream
        self.created_at = int(time.time())
        self.refuse = _openai_error
        self.keepalive_bytes = KEEPALIVE

    def new_encoder(self, completion_id: str) -> ResponseEncoder:
        return ResponseEncoder(f"resp_{completion_id}", self.created_at, self.request)

    def final(self, encoder: ResponseEncoder) -> Any:
        return encoder.response()


async def responses_handler(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses`` (OpenAI Responses API)."""
    hub: Hub = request.app[HUB_KEY]
    principal = await authenticate(hub, request, _openai_error)
    if isinstance(principal, web.Response):
        return principal
    body = await read_body(request)  # within http.body_timeout_s, else 408
    try:
        decoded = decode_responses_request(body)
        completion = decoded.to_completion()
    except FieldRefused as exc:
        return _openai_error(exc.code, exc.message, 400, param=exc.param)
    except ProtocolError as exc:
        return _openai_error(exc.code, exc.message, 400)
    return await serve(hub, request, completion, principal, _ResponsesDialect(decoded))
