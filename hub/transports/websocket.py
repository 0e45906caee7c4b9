"""The WebSocket endpoint ``/ws/stream``: aiohttp's server side, one session per client.

The write path (the hub's hot path, docs/BENCHMARKS.md): the broker hands each client's
:class:`WebSocketOutbox` the :class:`~hub.channel.EncodedEvent` whose WebSocket frame was built
once for all subscribers; once per event-loop iteration the :class:`~hub.outbox.WriteScheduler`
writes each marked outbox's pending frames to its transport in one ``transport.write``. When a
transport's buffer is above its high-water mark (the peer reads slowly), frames wait in the
outbox and one task per such client waits for the transport to drain; other clients are not
held up.

A client may opt in with ``?batch=1`` to several messages per frame, separated by ``\\n``
(docs/PROTOCOL.md "Batched frames"); a plain client gets one message per frame.

Text frames go to :meth:`hub.session.Session.handle` one at a time, in order; a binary frame
is answered with ``invalid_message``. Everything else about the protocol is the session's.

Authentication (docs/PROTOCOL.md "Authentication"): when ``auth.mode`` is not ``none``, the
upgrade request's credential, ``Authorization: Bearer <token>`` or ``?token=<token>`` (a
browser cannot set headers), is checked after the upgrade: a refused one closes the socket
with 4001 and the reason ``invalid_token`` or ``token_expired``. Without one the session
starts unauthenticated and waits for an ``auth`` message (hub/session.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from hub.appkeys import HUB_KEY
from hub.outbox import Outbox, WriteScheduler
from hub.session import ANONYMOUS, Principal, Session
from protocol.errors import CloseCode, ErrorCode, HubError, ProtocolError
from protocol.wsframe import batch_frames, close_frame

if TYPE_CHECKING:
    from hub.app import Hub

__all__ = ["WebSocketOutbox", "WebSocketConnection", "websocket_handler", "bearer_token"]

log = logging.getLogger("cbhub.ws")

_TRUE = ("1", "true", "yes")


class WebSocketOutbox(Outbox):
    """A client WebSocket's outbox: frames are written straight to the TCP transport.

    Args:
        scheduler: the hub's write scheduler.
        ws: the prepared aiohttp WebSocketResponse.
        request: the upgrade request (its transport and protocol carry the frames).
        soft_limit, hard_limit: the slow-consumer limits in bytes.
        batch: several messages per frame, newline-separated (``?batch=1``).
    """

    transport_name = "ws"

    def __init__(self, scheduler: WriteScheduler, ws: web.WebSocketResponse, request: web.Request,
                 soft_limit: int, hard_limit: int, batch: bool = False) -> None:
        super().__init__(scheduler, soft_limit, hard_limit)
        self.ws = ws
        self.batch = batch
        self._transport = request.transport
        self._protocol: Any = request.protocol
        self._drainer: asyncio.Task[None] | None = None

    def flush(self, force: bool = False) -> None:
        """Write every pending frame in one ``transport.write``. While the transport's buffer
        is above its high-water mark the frames stay pending and a drain task writes them
        when it has room.

        This is :meth:`Outbox.flush` with :meth:`write_pending`, :meth:`~Outbox.take` and
        :meth:`~Outbox.wrote` written out in one method: it runs once per connection per
        provider read, so at 1000 subscribers of one stream each call saved is a cost per
        delivered event (docs/BENCHMARKS.md). Same policy, same order of steps."""
        self._marked = False
        pending = self.pending
        if not pending or (self._drainer is not None and not force):
            return
        transport = self._transport
        if self.closed or self.ws.closed or transport is None or transport.is_closing():
            self.stop()
            return
        if self._protocol.writing_paused and not force:
            self._drainer = asyncio.create_task(self._drain(), name="ws-drain")
            return
        if len(pending) == 1:
            data = pending[0].frame
        elif self.batch:
            data = batch_frames([event.payload for event in pending])
        else:
            data = b"".join([event.frame for event in pending])
        pending.clear()
        self.pending_bytes = 0
        try:
            transport.write(data)
        except Exception:
            log.debug("write failed; closing the connection", exc_info=True)
            self.abort()
            return
        # What the socket has not taken yet counts against the outbound limits too.
        backlog = self.backlog_bytes = transport.get_write_buffer_size()
        if backlog > self._hard_limit and not force:
            log.info("closing a slow ws consumer: %d bytes unsent", backlog)
            self.close_now(CloseCode.SLOW_CONSUMER, "slow consumer: reconnect and resume")
            return
        self._merge_at = backlog + self._soft_limit

    def write_pending(self, force: bool) -> None:
        """Write the pending frames (see :meth:`flush`, which does it all in one method)."""
        self.flush(force)

    async def _drain(self) -> None:
        protocol = self._protocol
        try:
            while protocol.writing_paused and not self.closed:
                try:
                    # The wait aiohttp's own writers use: it ends when the transport calls
                    # resume_writing() or the connection is lost. Shielded, because the
                    # future is shared with aiohttp's writer (cancelling this task must not
                    # cancel theirs).
                    await asyncio.shield(protocol._drain_helper())
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
                    # Someone else's wait on the shared future was cancelled, which cancels
                    # the future for every waiter; it stays cancelled until resume_writing(),
                    # so wait a little and look again.
                    await asyncio.sleep(0.01)
        except ConnectionError:
            self.stop()
            return
        finally:
            self._drainer = None
        self.flush()

    def close_now(self, code: int, reason: str) -> None:
        """Close without waiting: drop pending frames, queue a close frame behind what the
        transport already holds, and drop the TCP connection if the peer has not taken it
        within 5 s (a slow consumer may never read it)."""
        self.stop()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(close_frame(code, reason))
        transport.close()  # after the buffered data is written
        asyncio.get_running_loop().call_later(5.0, self._abort_if_open)

    def _abort_if_open(self) -> None:
        """Drop the TCP connection unless it is gone already (a transport whose connection
        was lost cannot abort: its loop is gone)."""
        if self._transport is not None and getattr(self._protocol, "transport", None) is not None:
            self._transport.abort()

    def abort(self) -> None:
        """Stop writing and drop the TCP connection (the reader then ends and cleans up)."""
        self.stop()
        if self._transport is not None:
            self._transport.abort()

    async def shut_down(self) -> None:
        """Write what is pending (even to a full buffer), then close with 1012 (service
        restart: reconnect); a client that does not take the close within 1 s is dropped."""
        self.flush(force=True)
        try:
            async with asyncio.timeout(1.0):
                await self.ws.close(code=CloseCode.SERVICE_RESTART, message=b"hub restarting; reconnect")
        except Exception:
            self.abort()

    async def stop_draining(self) -> None:
        """Cancel and await the drain task, if any (the connection is over)."""
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)


#: The name tests and benchmarks knew the WebSocket client by.
WebSocketConnection = WebSocketOutbox


async def serve(session: Session, outbox: WebSocketOutbox) -> None:
    """Read client frames until the socket closes, then drop every subscription."""
    try:
        async for msg in outbox.ws:
            if msg.type == WSMsgType.TEXT:
                session.handle(msg.data)
            elif msg.type == WSMsgType.BINARY:
                session.refuse_frame(ProtocolError("binary frames are not accepted; send JSON text frames",
                                                   ErrorCode.INVALID_MESSAGE))
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        session.close()
        await outbox.stop_draining()


def bearer_token(request: web.Request, query: bool = False) -> str | None:
    """The credential of a request: its ``Authorization: Bearer`` value, else (``query``) its
    ``token`` query parameter; None when it has neither. A header with another scheme counts
    as a credential that will be refused (empty string)."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    if query:
        return request.query.get("token")
    return None


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    """aiohttp handler of ``GET /ws/stream`` (query ``batch=1``: several messages per frame).

    Past ``max_connections`` open clients (WebSocket and SSE together) the socket is closed
    with 1013 Try Again Later (RFC 6455 §7.4.2, IANA registry)."""
    hub: Hub = request.app[HUB_KEY]
    config = hub.config
    # compress=False: permessage-deflate would compress each frame once per subscriber,
    # which defeats encoding each event once.
    # +1: aiohttp refuses a message of max_msg_size bytes; the protocol allows "at most".
    ws = web.WebSocketResponse(compress=False, max_msg_size=config.max_message_bytes + 1,
                               heartbeat=config.ws_ping_interval_s or None)
    if config.ws_ping_interval_s and hasattr(ws, "_pong_heartbeat"):
        ws._pong_heartbeat = config.ws_pong_timeout_s  # aiohttp waits heartbeat/2 by default
    await ws.prepare(request)
    if hub.at_connection_limit():
        await ws.close(code=CloseCode.TRY_AGAIN_LATER, message=b"too many connections; try again later")
        return ws
    principal: Principal | None = ANONYMOUS
    if hub.authenticator.enabled:
        token = bearer_token(request, query=True)
        principal = None
        if token is not None:
            try:
                principal = await hub.authenticate(token)
            except HubError as exc:
                await ws.close(code=CloseCode.UNAUTHORIZED, message=str(exc.code).encode())
                return ws
    batch = request.query.get("batch", "").lower() in _TRUE
    outbox = WebSocketOutbox(hub.write_scheduler, ws, request, config.outbound_soft_limit_bytes,
                             config.outbound_hard_limit_bytes, batch=batch)
    session = Session(hub, outbox, principal)
    hub.connections.add(outbox)
    try:
        await serve(session, outbox)
    finally:
        hub.connections.discard(outbox)
    return ws
