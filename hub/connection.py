"""The WebSocket endpoint ``/ws/stream``: one :class:`WebSocketConnection` per client.

The write path (the hub's hot path, docs/BENCHMARKS.md): the multiplexer hands each
connection the :class:`~hub.multiplexer.EncodedEvent` whose WebSocket frame was built once for
all subscribers; :meth:`WebSocketConnection.deliver` only appends it to the connection's
pending list and marks the connection in the hub's :class:`WriteScheduler`. Once per
event-loop iteration the scheduler writes each marked connection's pending frames to its
transport in one ``transport.write``: no coroutine and no await per subscriber per event, and
events published in the same iteration share one system call per connection. When a
transport's buffer is above its high-water mark (the peer reads slowly), frames wait in the
pending list and one task per such connection waits for the transport to drain; other
connections are not held up.

A client may opt in with ``?batch=1`` to several messages per frame, separated by ``\n``
(docs/PROTOCOL.md "Batched frames"); a plain client gets one message per frame.

Client messages are handled one at a time, in order, without awaiting a provider: a
``completion`` starts a task and returns.

A bad client message is answered with an ``error`` (no ``completionId``) and the connection
stays open with all its streams; see docs/PROTOCOL.md for the codes.

The server side of the WebSocket is aiohttp's (DESIGN.md decision 1); everything it needs
is in :class:`WebSocketConnection`, so another implementation can be measured behind the
same ``deliver`` interface.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from hub.appkeys import HUB_KEY
from hub.multiplexer import EncodedEvent, merge_content

from protocol.errors import HubError, ProtocolError
from protocol.messages import (
    CHANNEL_PATTERN,
    STREAM_TYPES,
    Cancel,
    CancelWorkflow,
    Completion,
    CreateWorkflow,
    ErrorInfo,
    ErrorMessage,
    Ping,
    Pong,
    Subscribe,
    Subscribed,
    SubscribeWorkflow,
    Unsubscribe,
    Unsubscribed,
    decode_client_message,
)
from protocol.wsframe import batch_frames, close_frame

if TYPE_CHECKING:
    from hub.app import Hub
    from hub.completions import CompletionRun

__all__ = ["WebSocketConnection", "WriteScheduler", "websocket_handler"]

log = logging.getLogger("cbhub.ws")

_PONG = EncodedEvent.of(Pong())
_TRUE = ("1", "true", "yes")


class WriteScheduler:
    """Writes every connection that has pending frames, once per event-loop iteration.

    :meth:`mark` is called by a connection when its first pending frame arrives; one
    ``loop.call_soon`` callback per iteration (not one per connection or per event) then
    calls :meth:`WebSocketConnection.flush` on each marked connection.
    """

    def __init__(self) -> None:
        self._marked: list[WebSocketConnection] = []
        self._handle: asyncio.Handle | None = None

    def mark(self, connection: WebSocketConnection) -> None:
        """Flush ``connection`` at the end of this iteration."""
        self._marked.append(connection)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_soon(self.run)

    def run(self) -> None:
        """Flush every marked connection now (also called by a publisher that has finished a
        batch of events, which saves the loop iteration the ``call_soon`` would take)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        marked, self._marked = self._marked, []
        for connection in marked:
            try:
                connection.flush()
            except Exception:  # a bug of ours must not hold up the other connections
                log.exception("flushing a connection failed; closing it")
                connection.abort()


class WebSocketConnection:
    """One client WebSocket: its pending frames, its transport, its message handling.

    Args:
        hub: the running hub.
        ws: the prepared aiohttp WebSocketResponse.
        request: the upgrade request (its transport and protocol carry the frames).
        batch: several messages per frame, newline-separated (``?batch=1``).
    """

    def __init__(self, hub: Hub, ws: web.WebSocketResponse, request: web.Request, batch: bool = False) -> None:
        self.hub = hub
        self.ws = ws
        self.batch = batch
        self.pending: list[EncodedEvent] = []
        self.pending_bytes = 0
        self.backlog_bytes = 0  # the transport's unsent bytes at the last write
        self.closed = False
        self.started: list[CompletionRun] = []  # completions this connection started
        self._transport = request.transport
        self._protocol = request.protocol
        self._marked = False
        self._drainer: asyncio.Task[None] | None = None
        config = hub.config
        self._soft_limit = config.outbound_soft_limit_bytes
        self._hard_limit = config.outbound_hard_limit_bytes
        self._merge_at = self._soft_limit

    # Outbound.

    def deliver(self, event: EncodedEvent) -> None:
        """Queue one encoded event (never blocks; called inside the fan-out loop).

        Slow consumer policy (docs/PROTOCOL.md "Limits"): past ``outbound_soft_limit_bytes``
        of pending payload the pending content chunks are merged; past
        ``outbound_hard_limit_bytes`` the connection is closed with 4008 (reconnect and
        resume). Other subscribers of the same events are not affected."""
        if self.closed:
            return
        self.pending.append(event)
        self.pending_bytes += len(event.payload)
        if not self._marked:
            self._marked = True
            self.hub.write_scheduler.mark(self)
        if self.pending_bytes + self.backlog_bytes > self._merge_at:
            self._relieve()

    def _relieve(self) -> None:
        """The slow path: merge pending content, or close the connection past the hard limit."""
        merged = merge_content(self.pending)
        self.pending[:] = merged
        self.pending_bytes = sum(len(event.payload) for event in merged)
        outbound = self.pending_bytes + self.backlog_bytes
        if outbound > self._hard_limit:
            log.info("closing a slow consumer: %d bytes outbound", outbound)
            self.close_now(4008, "slow consumer: reconnect and resume")
            return
        # Merge again only after another soft limit's worth has piled up.
        self._merge_at = outbound + self._soft_limit

    def flush(self, force: bool = False) -> None:
        """Write every pending frame in one ``transport.write`` (called by the
        :class:`WriteScheduler`). While the transport's buffer is above its high-water mark
        the frames stay pending and a drain task flushes them when it has room.

        Args:
            force: write even to a full transport buffer (shutdown: the last frames must go
                out before the close frame).
        """
        self._marked = False
        pending = self.pending
        if not pending or (self._drainer is not None and not force):
            return
        transport = self._transport
        if self.closed or self.ws.closed or transport is None or transport.is_closing():
            self._stop_writing()
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
            log.info("closing a slow consumer: %d bytes unsent", backlog)
            self.close_now(4008, "slow consumer: reconnect and resume")
            return
        self._merge_at = backlog + self._soft_limit

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
            self._stop_writing()
            return
        finally:
            self._drainer = None
        self.flush()

    def close_now(self, code: int, reason: str) -> None:
        """Close without waiting: drop pending frames, queue a close frame behind what the
        transport already holds, and drop the TCP connection if the peer has not taken it
        within 5 s (a slow consumer may never read it)."""
        self._stop_writing()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(close_frame(code, reason))
        transport.close()  # after the buffered data is written
        asyncio.get_running_loop().call_later(5.0, transport.abort)

    def abort(self) -> None:
        """Stop writing and drop the TCP connection (the reader then ends and cleans up)."""
        self._stop_writing()
        if self._transport is not None:
            self._transport.abort()

    def _stop_writing(self) -> None:
        self.closed = True
        self.pending.clear()
        self.pending_bytes = 0

    # Inbound.

    async def serve(self) -> None:
        """Read client frames until the socket closes, then drop every subscription."""
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    self.handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.send_error(ProtocolError("binary frames are not accepted; send JSON text frames", "invalid_message"))
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._stop_writing()
            self.hub.multiplexer.remove(self)
            if self._drainer is not None:
                self._drainer.cancel()
                await asyncio.gather(self._drainer, return_exceptions=True)

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
            elif isinstance(message, CreateWorkflow):
                self._create_workflow(message)
            elif isinstance(message, SubscribeWorkflow):
                name = f"workflow:{message.workflow_id}"
                since = {name: message.since} if message.since is not None else {}
                self._subscribe(Subscribe(channels=[name], since=since))
            elif isinstance(message, CancelWorkflow):
                self._cancel_workflow(message)
        except HubError as exc:
            self.send_error(exc)
        except Exception as exc:  # a bug of ours must not drop the connection's other streams
            log.exception("handling a client message failed")
            self.send_error(HubError(f"internal error: {type(exc).__name__}", "internal_error"))

    def send_error(self, error: HubError, completion_id: str | None = None) -> None:
        """Answer a client message with an ``error`` (no ``seq``: not part of a stream)."""
        info = ErrorInfo(error.code, error.message, error.retryable, error.status)
        self.deliver(EncodedEvent.of(ErrorMessage(info, completion_id)))

    def _start_completion(self, message: Completion) -> None:
        manager = self.hub.completions
        config = self.hub.config
        self.started = [run for run in self.started if not run.finished]
        if len(self.started) >= config.max_completions_per_connection:
            raise HubError(f"this connection already runs {len(self.started)} completions "
                           f"(max_completions_per_connection); wait for one to end", "too_many_completions",
                           retryable=True)
        self.hub.admit_completion()
        run = manager.create(message)
        self.started.append(run)
        manager.subscribe(self, run)
        name = run.channel.name
        self.deliver(EncodedEvent.of(Subscribed(channels=[name], completion_id=run.id, epochs={name: run.channel.epoch},
                                                seqs={name: 0}, recovered={name: True})))
        run.start()

    def _create_workflow(self, message: CreateWorkflow) -> None:
        self.hub.admit_completion()
        run = self.hub.workflows.create(message.workflow_id, message.definition, message.definition_name,
                                        message.input)
        name = run.channel.name
        self.hub.workflows.subscribe(self, run)
        self.deliver(EncodedEvent.of(Subscribed(channels=[name], workflow_id=run.id, epochs={name: run.channel.epoch},
                                                seqs={name: 0}, recovered={name: True})))
        run.start()

    def _cancel_workflow(self, message: CancelWorkflow) -> None:
        run = self.hub.workflows.get(message.workflow_id)
        if run is None:
            raise ProtocolError(f"no workflow {message.workflow_id!r}", "unknown_workflow")
        if not self.hub.multiplexer.is_subscribed(self, run.channel.name):
            raise ProtocolError(f"subscribe to workflow {message.workflow_id!r} before cancelling it", "not_subscribed")
        run.cancel()

    def _subscribe(self, message: Subscribe) -> None:
        completions = self.hub.completions
        workflows = self.hub.workflows
        accepted: list[str] = []
        runs = []
        for name in message.channels:
            if not CHANNEL_PATTERN.fullmatch(name):
                self.send_error(ProtocolError(f"{name!r} is not a channel name", "unknown_channel"))
                continue
            kind, _, ident = name.partition(":")
            if kind == "completion":
                run = completions.get(ident)
            elif kind == "workflow":
                run = workflows.get(ident)
            else:  # system, agent:<workflowId>.<agentId>: plain channels
                run = None
            if run is None and name not in self.hub.multiplexer.channels:
                self.send_error(ProtocolError(f"no channel {name!r} is open", "unknown_channel"))
                continue
            accepted.append(name)
            if run is not None:
                runs.append(run)
        streams = self._check_streams(message.streams)
        if not accepted and not streams:
            return
        multiplexer = self.hub.multiplexer
        since = message.since
        epochs: dict[str, str] = {}
        seqs: dict[str, int] = {}
        recovered: dict[str, bool] = {}
        for name in accepted:
            channel = multiplexer.channels[name]
            epochs[name] = channel.epoch
            seqs[name] = channel.last_seq
            recovered[name] = multiplexer.recoverable(name, since.get(name))
        self.deliver(EncodedEvent.of(Subscribed(channels=accepted, streams=streams, epochs=epochs, seqs=seqs,
                                                recovered=recovered)))
        for stream in streams:
            multiplexer.subscribe_type(self, stream)
        # After the acknowledgement: the replay (or snapshot) follows it, then live events.
        with_state = {run.channel.name for run in runs}
        for name in accepted:
            if name not in with_state:
                # No snapshot for plain channels (system, agent:…): an incomplete replay is
                # flagged recovered=false.
                multiplexer.resume(self, name, since.get(name))
        for run in runs:
            manager = completions if run.channel.name.startswith("completion:") else workflows
            manager.subscribe(self, run, since.get(run.channel.name))

    def _unsubscribe(self, message: Unsubscribe) -> None:
        multiplexer = self.hub.multiplexer
        removed = [name for name in message.channels if multiplexer.unsubscribe(self, name)]
        streams = self._check_streams(message.streams)
        for stream in streams:
            multiplexer.unsubscribe_type(self, stream)
        self.deliver(EncodedEvent.of(Unsubscribed(channels=removed, streams=streams)))

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
    """aiohttp handler of ``GET /ws/stream`` (query ``batch=1``: several messages per frame)."""
    hub: Hub = request.app[HUB_KEY]
    # compress=False: permessage-deflate would compress each frame once per subscriber,
    # which defeats encoding each event once.
    config = hub.config
    # +1: aiohttp refuses a message of max_msg_size bytes; the protocol allows "at most".
    ws = web.WebSocketResponse(compress=False, max_msg_size=config.max_message_bytes + 1,
                               heartbeat=config.ws_ping_interval_s or None)
    if config.ws_ping_interval_s and hasattr(ws, "_pong_heartbeat"):
        ws._pong_heartbeat = config.ws_pong_timeout_s  # aiohttp waits heartbeat/2 by default
    await ws.prepare(request)
    if len(hub.connections) >= config.max_connections:
        # 1013 Try Again Later (RFC 6455 §7.4.2, IANA registry): the hub is full.
        await ws.close(code=1013, message=b"too many connections; try again later")
        return ws
    batch = request.query.get("batch", "").lower() in _TRUE
    connection = WebSocketConnection(hub, ws, request, batch=batch)
    hub.connections.add(connection)
    try:
        await connection.serve()
    finally:
        hub.connections.discard(connection)
    return ws
