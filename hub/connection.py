"""The WebSocket endpoint ``/ws/stream``: one :class:`WebSocketConnection` per client.

Each connection has an outbound queue of encoded frames and one writer task that drains it;
the multiplexer only appends to the queue (:meth:`WebSocketConnection.deliver`), so a slow
client never slows the fan-out. Client messages are handled one at a time, in order, without
awaiting a provider: a ``completion`` starts a task and returns.

A bad client message is answered with an ``error`` (no ``completionId``) and the connection
stays open with all its streams; see docs/PROTOCOL.md for the codes.

The server side of the WebSocket is aiohttp's (DESIGN.md decision 1); everything it needs
is in :class:`WebSocketConnection`, so another implementation can be measured behind the
same ``deliver`` interface.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from hub.appkeys import HUB_KEY

from protocol.errors import HubError, ProtocolError
from protocol.messages import (
    CHANNEL_PATTERN,
    STREAM_TYPES,
    Cancel,
    Completion,
    ErrorInfo,
    ErrorMessage,
    Ping,
    Pong,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    decode_client_message,
    encode,
)

if TYPE_CHECKING:
    from hub.app import Hub

__all__ = ["WebSocketConnection", "websocket_handler"]

log = logging.getLogger("cbhub.ws")

_PONG = encode(Pong())


class WebSocketConnection:
    """One client WebSocket: its outbound queue, its writer task, its message handling."""

    def __init__(self, hub: Hub, ws: web.WebSocketResponse) -> None:
        self.hub = hub
        self.ws = ws
        self.queue: deque[bytes] = deque()
        self.closed = False
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    # Outbound.

    def deliver(self, payload: bytes, message: Any = None) -> None:
        """Queue one encoded frame (never blocks; called inside the fan-out loop)."""
        if self.closed:
            return
        self.queue.append(payload)
        self._wake.set()

    async def _write_loop(self) -> None:
        ws = self.ws
        queue = self.queue
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while queue:
                    await ws.send_frame(queue.popleft(), WSMsgType.TEXT)
        except (ConnectionResetError, RuntimeError) as exc:
            log.debug("writer stopped: %s", exc)  # the peer is gone; the reader sees it too
        except Exception:
            log.exception("writer failed; closing the connection")
            self.closed = True
            queue.clear()
            await ws.close(code=1011, message=b"internal error")
        finally:
            self.closed = True
            queue.clear()

    # Inbound.

    async def serve(self) -> None:
        """Read client frames until the socket closes, then drop every subscription."""
        self._writer = asyncio.create_task(self._write_loop(), name="ws-writer")
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    self.handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.send_error(ProtocolError("binary frames are not accepted; send JSON text frames", "invalid_message"))
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.closed = True
            self.hub.multiplexer.remove(self)
            if self._writer is not None:
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)

    def handle(self, data: str | bytes) -> None:
        """Handle one client message; errors are answered, never raised."""
        try:
            message = decode_client_message(data)
            if isinstance(message, Completion):
                self._start_completion(message)
            elif isinstance(message, Subscribe):
                self._subscribe(message)
            elif isinstance(message, Unsubscribe):
                self._unsubscribe(message)
            elif isinstance(message, Cancel):
                self._cancel(message)
            elif isinstance(message, Ping):
                self.deliver(_PONG)
        except HubError as exc:
            self.send_error(exc)
        except Exception as exc:  # a bug of ours must not drop the connection's other streams
            log.exception("handling a client message failed")
            self.send_error(HubError(f"internal error: {type(exc).__name__}", "internal_error"))

    def send_error(self, error: HubError, completion_id: str | None = None) -> None:
        """Answer a client message with an ``error`` (no ``seq``: not part of a stream)."""
        info = ErrorInfo(error.code, error.message, error.retryable, error.status)
        self.deliver(encode(ErrorMessage(info, completion_id)))

    def _start_completion(self, message: Completion) -> None:
        manager = self.hub.completions
        run = manager.create(message)
        manager.subscribe(self, run)
        self.deliver(encode(Subscribed(channels=[run.channel.name], completion_id=run.id)))
        run.start()

    def _subscribe(self, message: Subscribe) -> None:
        completions = self.hub.completions
        accepted: list[str] = []
        runs = []
        for name in message.channels:
            if not CHANNEL_PATTERN.fullmatch(name):
                self.send_error(ProtocolError(f"{name!r} is not a channel name", "unknown_channel"))
                continue
            kind, _, ident = name.partition(":")
            run = completions.get(ident) if kind == "completion" else None
            if run is None:
                self.send_error(ProtocolError(f"no channel {name!r} is open", "unknown_channel"))
                continue
            accepted.append(name)
            runs.append(run)
        streams = self._check_streams(message.streams)
        if not accepted and not streams:
            return
        self.deliver(encode(Subscribed(channels=accepted, streams=streams)))
        for stream in streams:
            self.hub.multiplexer.subscribe_type(self, stream)
        for run in runs:  # after the acknowledgement: replayed history follows it
            completions.subscribe(self, run)

    def _unsubscribe(self, message: Unsubscribe) -> None:
        multiplexer = self.hub.multiplexer
        removed = [name for name in message.channels if multiplexer.unsubscribe(self, name)]
        streams = self._check_streams(message.streams)
        for stream in streams:
            multiplexer.unsubscribe_type(self, stream)
        self.deliver(encode(Unsubscribed(channels=removed, streams=streams)))

    def _check_streams(self, streams: list[str]) -> list[str]:
        valid = []
        for stream in streams:
            if stream in STREAM_TYPES:
                valid.append(stream)
            else:
                self.send_error(ProtocolError(
                    f"unknown stream type {stream!r}; expected one of {list(STREAM_TYPES)}", "unknown_channel"
                ))
        return valid

    def _cancel(self, message: Cancel) -> None:
        run = self.hub.completions.get(message.completion_id)
        if run is None:
            raise ProtocolError(f"no completion {message.completion_id!r}", "unknown_completion")
        if not self.hub.multiplexer.is_subscribed(self, run.channel.name):
            raise ProtocolError(
                f"subscribe to completion {message.completion_id!r} before cancelling it", "not_subscribed"
            )
        run.cancel()


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    """aiohttp handler of ``GET /ws/stream``."""
    hub: Hub = request.app[HUB_KEY]
    # compress=False: permessage-deflate would compress each frame once per subscriber,
    # which defeats encoding each event once.
    ws = web.WebSocketResponse(compress=False, max_msg_size=hub.config.max_message_bytes, heartbeat=30.0)
    await ws.prepare(request)
    connection = WebSocketConnection(hub, ws)
    hub.connections.add(connection)
    try:
        await connection.serve()
    finally:
        hub.connections.discard(connection)
    return ws
