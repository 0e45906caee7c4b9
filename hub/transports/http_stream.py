"""What every HTTP front door of the hub shares: one request is one completion run.

The OpenAI-compatible API (``hub/transports/openai_sse.py``) and the Anthropic Messages API
(``hub/transports/anthropic_messages.py``) differ only in their wire format. Both hand
:func:`serve` a decoded :class:`~protocol.messages.Completion` and a :class:`Dialect` that
writes that format; :func:`serve` runs it as a :class:`~hub.session.Session` like a WebSocket
client's, so each request is an ordinary completion (same routing, limits, history, channel
``completion:<id>`` that a WebSocket client can subscribe to) and obeys the same outbound
limits: past the soft limit content chunks are merged, past the hard limit the response is cut
(docs/PROTOCOL.md "Limits").

The HTTP status line goes out only when the completion's first message is ready: an ``error``
first is answered with the dialect's error body and its HTTP status; an error after the
stream started is encoded in-band by the dialect. When nothing comes within
``sse_keepalive_interval_s`` the headers go out and the dialect's keepalive is written.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from aiohttp import web

from hub.outbox import Outbox, WriteScheduler
from hub.session import ANONYMOUS, Principal, Session
from hub.transports.websocket import bearer_token
from protocol.errors import ErrorCode, HubError
from protocol.messages import Completed, Completion, ErrorMessage

if TYPE_CHECKING:
    from hub.app import Hub

__all__ = ["SseOutbox", "Dialect", "Refuse", "SHOULD_RETRY_HEADER", "api_credential", "authenticate", "hub_retried",
           "serve", "SSE_HEADERS"]

#: Response headers of every streamed answer (no caching, no proxy buffering).
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class SseOutbox(Outbox):
    """One HTTP response's outbox: the request handler writes what it holds.

    The broker's deliveries only queue (as for every client); :meth:`write_pending` wakes the
    handler, which takes the events, encodes them in its wire format and awaits the write.
    While that write waits for a slow reader, deliveries keep queueing here, where the
    slow-consumer policy applies; past the hard limit the connection is dropped.
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


class Refuse(Protocol):
    """Builds an error response in a front door's format: ``refuse(code, message,
    provider_status, retry_after_ms)`` with the HTTP status the code has
    (:func:`protocol.errors.http_status_of`)."""

    def __call__(self, code: str, message: str, status: int | None,
                 retry_after_ms: int | None = None) -> web.Response: ...


class Dialect(Protocol):
    """One front door's wire format for one request (created per request).

    Attributes:
        stream: True answers ``text/event-stream`` (:meth:`begin`, :meth:`encode`,
            :meth:`keepalive`); False one body at the end (:meth:`answer`).
    """

    stream: bool

    def refuse(self, code: str, message: str, status: int | None,
               retry_after_ms: int | None = None) -> web.Response:
        """An error response before anything was sent (see :class:`Refuse`)."""

    def answer(self, completion_id: str, messages: list[Any]) -> web.Response:
        """The non-streamed answer from every message of the completion, the last one its
        ``completed``."""

    def begin(self, completion_id: str) -> bytes:
        """Bytes to write right after the headers of a streamed answer (may be empty)."""

    def encode(self, message: Any) -> bytes:
        """The bytes of one hub message of the completion (possibly none)."""

    def keepalive(self) -> bytes:
        """Bytes sent when nothing happened for ``sse_keepalive_interval_s``."""


class EncoderDialect:
    """A :class:`Dialect` built on one encoder per answer (``/v1/messages``, ``/v1/responses``):
    a subclass gives :meth:`new_encoder` (an object with ``start() -> bytes``,
    ``encode(message) -> bytes`` and the final body of a non-streamed answer from
    :meth:`final`), :attr:`keepalive_bytes` and ``refuse``; streaming and answering are here.

    Attributes:
        stream: as :class:`Dialect`.
        keepalive_bytes: what :meth:`keepalive` writes (an SSE comment or the format's ping).
    """

    stream: bool
    keepalive_bytes: bytes
    _encoder: Any = None

    def new_encoder(self, completion_id: str) -> Any:
        """The encoder of the answer to completion ``completion_id``."""
        raise NotImplementedError

    def final(self, encoder: Any) -> Any:
        """The non-streamed body (a msgspec-encodable value) once ``encoder`` took every message."""
        raise NotImplementedError

    def answer(self, completion_id: str, messages: list[Any]) -> web.Response:
        """As :meth:`Dialect.answer`: every message through a fresh encoder, then its body."""
        encoder = self.new_encoder(completion_id)
        for message in messages:
            encoder.encode(message)
        return web.Response(body=msgspec.json.encode(self.final(encoder)), content_type="application/json")

    def begin(self, completion_id: str) -> bytes:
        """As :meth:`Dialect.begin`: the encoder's opening events."""
        self._encoder = self.new_encoder(completion_id)
        return bytes(self._encoder.start())

    def encode(self, message: Any) -> bytes:
        """As :meth:`Dialect.encode`."""
        assert self._encoder is not None, "begin() comes first"
        return bytes(self._encoder.encode(message))

    def keepalive(self) -> bytes:
        """As :meth:`Dialect.keepalive`."""
        return self.keepalive_bytes


def retry_after_header(retry_after_ms: int | None) -> dict[str, str] | None:
    """``{"Retry-After": <whole seconds, rounded up>}`` for a wait the hub knows (ms), else
    None (RFC 9110 §10.2.3: delay-seconds)."""
    return {"Retry-After": str(-(-retry_after_ms // 1000))} if retry_after_ms is not None else None


def api_credential(request: web.Request, query: bool = False) -> str | None:
    """The credential of a ``/v1`` request: ``Authorization: Bearer <token>`` (the openai SDK,
    the anthropic SDK's ``auth_token``), else ``x-api-key: <key>`` (the anthropic SDK's
    ``api_key``, docs/PROTOCOL.md "Where the credential goes"), else with ``query`` the
    ``token`` query parameter; None when there is none. An ``Authorization`` header of
    another scheme counts as a credential that will be refused (empty string)."""
    if "Authorization" not in request.headers:
        key = request.headers.get("x-api-key")
        if key is not None:
            return key.strip()
    return bearer_token(request, query)


async def authenticate(hub: Hub, request: web.Request, refuse: Refuse, query: bool = False) -> Principal | web.Response:
    """The request's principal, or the 401 response (``refuse``'s body, with
    ``WWW-Authenticate: Bearer``) that turns it away. Anonymous when ``auth.mode`` is none."""
    if not hub.authenticator.enabled:
        return ANONYMOUS
    token = api_credential(request, query)
    try:
        if token is None:
            raise HubError("this hub needs a credential: Authorization: Bearer <token or API key> or x-api-key",
                           ErrorCode.UNAUTHORIZED)
        return await hub.authenticate(token)
    except HubError as exc:
        response = refuse(exc.code, exc.message, None)
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"' if token is not None else "Bearer"
        return response


def _is_terminal(message: Any, completion_id: str) -> bool:
    return isinstance(message, (Completed, ErrorMessage)) and message.completion_id == completion_id


async def serve(hub: Hub, request: web.Request, completion: Completion, principal: Principal,
                dialect: Dialect) -> web.StreamResponse:
    """Run ``completion`` for ``principal`` and answer it in ``dialect``'s format.

    Refusals before the run starts (``max_connections``, admission, rate limits) use
    :meth:`Dialect.refuse` with a ``Retry-After`` where the hub knows the wait. When the
    client goes away before the end, the upstream request is cancelled (an HTTP client cannot
    resume).
    """
    if hub.at_connection_limit():
        return dialect.refuse(ErrorCode.HUB_OVERLOADED, "too many connections (max_connections); retry later", 503)
    config = hub.config
    # A non-streamed answer has no slow reader: the handler takes every event as it comes
    # and writes once at the end, so only a streamed response can pass the hard limit.
    hard_limit = config.outbound_hard_limit_bytes if dialect.stream else sys.maxsize
    outbox = SseOutbox(hub.write_scheduler, request, config.outbound_soft_limit_bytes, hard_limit)
    # Authorized once, for this request: a token that expires while the answer streams does
    # not cut it.
    session = Session(hub, outbox, principal, watch_expiry=False)
    hub.connections.add(outbox)
    run = None
    try:
        try:
            # With a Redis broker the rate limits are counted across the cluster (one Redis
            # round trip, hub/cluster_limits.py); in memory nothing is awaited.
            ticket = await session.admit_in_cluster(completion) if hub.cluster_limits is not None else None
            run = session.start_completion(completion, ticket)
        except HubError as exc:
            return dialect.refuse(exc.code, exc.message, exc.status, exc.retry_after_ms)
        return await _respond(hub, request, dialect, outbox, run.id)
    except ConnectionResetError:
        # Dropped before the headers went out (past the hard limit): nothing reaches the client.
        return web.Response(status=ErrorCode.HUB_OVERLOADED.http_status or 503)
    finally:
        # Also reached when aiohttp cancels this handler because the client disconnected
        # (handler_cancellation, hub/app.py), e.g. while a non-streamed answer is pending.
        session.close()
        hub.connections.discard(outbox)
        if run is not None and not run.finished:
            gone = HubError("the HTTP client disconnected", ErrorCode.CANCELLED)
            hub.broker.control(run.channel.name, "cancel", gone)


#: The header the openai and anthropic SDKs obey before their own retry rules (their
#: ``_should_retry``: ``x-should-retry: false`` means no retry, whatever the status).
SHOULD_RETRY_HEADER = "x-should-retry"


def hub_retried(message: ErrorMessage) -> bool:
    """Whether the hub already did what a client's retry would do for this failed completion:
    it made more than one attempt (retries, other deployments, fallbacks), or a circuit
    breaker refused it (``provider_unavailable``: the provider is failing for everyone)."""
    return len(message.attempts) > 1 or message.error.code == ErrorCode.PROVIDER_UNAVAILABLE


def _refuse_failed(dialect: Dialect, message: ErrorMessage) -> web.Response:
    """The error answer of a completion that failed before its answer began: the dialect's
    body and status, with ``x-should-retry: false`` when :func:`hub_retried` (docs/PROTOCOL.md
    "Retries and fallbacks": a client SDK retrying on top of the hub's retries would multiply
    the upstream requests, N x M)."""
    error = message.error
    response = dialect.refuse(error.code, error.message, error.status)
    if hub_retried(message):
        response.headers[SHOULD_RETRY_HEADER] = "false"
    return response


async def _respond(hub: Hub, request: web.Request, dialect: Dialect, outbox: SseOutbox,
                   completion_id: str) -> web.StreamResponse:
    keepalive_s = hub.config.sse_keepalive_interval_s if dialect.stream else 0.0
    # The stream's own messages (the session's `subscribed` ack is not part of the answer).
    first = await _stream_messages(outbox, keepalive_s, completion_id)
    # None: no answer within keepalive_s; the headers go out now, and an error that comes
    # later is sent in-band.
    if first and isinstance(first[0], ErrorMessage):
        return _refuse_failed(dialect, first[0])
    if not dialect.stream:
        collected = list(first or ())
        while not collected or not _is_terminal(collected[-1], completion_id):
            collected += await _stream_messages(outbox, 0.0, completion_id) or []
        last = collected[-1]
        if isinstance(last, ErrorMessage):
            return _refuse_failed(dialect, last)
        return dialect.answer(completion_id, collected)
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    prelude = dialect.begin(completion_id)
    if prelude:
        await response.write(prelude)
    pending: list[Any] | None = first
    try:
        while True:
            if pending is None:
                # Nothing for keepalive_s (a model thinking before its first token, a long
                # gap): keep proxies from cutting the idle connection.
                await response.write(dialect.keepalive())
            elif pending:
                # Everything queued goes out in one write.
                data = b"".join([dialect.encode(message) for message in pending])
                if data:
                    outbox.writing(len(data))
                    await response.write(data)
                    outbox.wrote_now()
                if _is_terminal(pending[-1], completion_id):
                    break
            pending = await _stream_messages(outbox, keepalive_s, completion_id)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away (or was too slow); serve() cancels the upstream request
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
