"""One client's outgoing events and the slow-consumer policy, shared by every transport.

An :class:`Outbox` is what the broker delivers to (it is the :class:`~hub.broker.Subscriber`
of a client). :meth:`Outbox.deliver` only appends the shared
:class:`~hub.channel.EncodedEvent` to a pending list and marks the outbox in the hub's
:class:`WriteScheduler`; once per event-loop iteration (or as soon as a provider read's events
are published) the scheduler calls :meth:`Outbox.flush`, and the transport writes every
pending event at once. No coroutine and no await per subscriber per event.

The slow-consumer policy (docs/PROTOCOL.md "Limits") is the same for every transport: the
outbound bytes are the pending payload plus what the transport has not sent yet; past
``outbound_soft_limit_bytes`` adjacent content chunks are merged (``firstSeq`` keeps ``seq``
gap-free); past ``outbound_hard_limit_bytes`` the client is closed (WebSocket: close 4008,
"reconnect and resume"). Other subscribers of the same events are not affected.

A transport subclasses :class:`Outbox` and implements the write itself
(:meth:`Outbox.write_pending`) and the closes.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod

from hub.channel import EncodedEvent
from protocol.errors import CloseCode
from protocol.messages import ContentChunk

__all__ = ["Outbox", "WriteScheduler", "merge_content"]

log = logging.getLogger("cbhub.outbox")


def merge_content(events: list[EncodedEvent]) -> list[EncodedEvent]:
    """The slow-consumer merge: each run of adjacent ``content_chunk`` messages of one
    completion and one ``choice`` in ``events`` becomes one ``content_chunk`` of that choice
    with the joined text, the last ``seq`` and ``firstSeq`` set to the first one's
    (docs/PROTOCOL.md "Limits" and "Choices"). Being adjacent, the run's seqs are consecutive,
    so the receiver still sees no gap. A chunk of another completion or another choice ends the
    run (so interleaved choices are never joined). Other events keep their place. Encodes the
    merged messages anew (once per merge: this is the slow path)."""
    out: list[EncodedEvent] = []
    run: list[EncodedEvent] = []

    def close_run() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            first, last = run[0].message, run[-1].message
            text = "".join(event.message.content for event in run)
            out.append(EncodedEvent.of(ContentChunk(last.completion_id, last.seq, text, first.first_seq or first.seq,
                                                    last.choice)))
        run.clear()

    for event in events:
        message = event.message
        if type(message) is ContentChunk:
            if run and (run[-1].message.completion_id != message.completion_id
                        or run[-1].message.choice != message.choice):
                close_run()
            run.append(event)
        else:
            close_run()
            out.append(event)
    close_run()
    return out


class WriteScheduler:
    """Flushes every outbox that has pending events, once per event-loop iteration.

    :meth:`mark` is called by an outbox when its first pending event arrives; one
    ``loop.call_soon`` callback per iteration (not one per outbox or per event) then calls
    :meth:`Outbox.flush` on each marked outbox.
    """

    def __init__(self) -> None:
        self._marked: list[Outbox] = []
        self._handle: asyncio.Handle | None = None

    def mark(self, outbox: Outbox) -> None:
        """Flush ``outbox`` at the end of this iteration."""
        self._marked.append(outbox)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_soon(self.run)

    def run(self) -> None:
        """Flush every marked outbox now (also called by a publisher that has finished a
        batch of events, which saves the loop iteration the ``call_soon`` would take)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        marked, self._marked = self._marked, []
        for outbox in marked:
            try:
                outbox.flush()
            except Exception:  # a bug of ours must not hold up the other clients
                log.exception("flushing an outbox failed; closing it")
                outbox.abort()


class Outbox(ABC):
    """One client's pending events and the slow-consumer policy (see the module docstring).

    Args:
        scheduler: the hub's write scheduler.
        soft_limit: outbound bytes past which pending content chunks are merged.
        hard_limit: outbound bytes past which the client is closed.

    Attributes:
        transport_name: ``ws``, ``sse`` (for limits, logs and metrics).
        pending: the events not handed to the transport yet, oldest first.
        pending_bytes: their payload bytes.
        backlog_bytes: the transport's unsent bytes at the last write.
        closed: no more events are taken.
    """

    transport_name = ""

    def __init__(self, scheduler: WriteScheduler, soft_limit: int, hard_limit: int) -> None:
        self.scheduler = scheduler
        self.pending: list[EncodedEvent] = []
        self.pending_bytes = 0
        self.backlog_bytes = 0
        self.closed = False
        self._marked = False
        self._soft_limit = soft_limit
        self._hard_limit = hard_limit
        self._merge_at = soft_limit

    # The subscriber side (called inside the fan-out loop: never blocks).

    def deliver(self, event: EncodedEvent) -> None:
        """Queue one encoded event; apply the slow-consumer policy past the soft limit."""
        if self.closed:
            return
        self.pending.append(event)
        self.pending_bytes += len(event.payload)
        if not self._marked:
            self._marked = True
            self.scheduler.mark(self)
        if self.pending_bytes + self.backlog_bytes > self._merge_at:
            self._relieve()

    def _relieve(self) -> None:
        """The slow path: merge pending content, or close the client past the hard limit."""
        merged = merge_content(self.pending)
        self.pending[:] = merged
        self.pending_bytes = sum(len(event.payload) for event in merged)
        outbound = self.pending_bytes + self.backlog_bytes
        if outbound > self._hard_limit:
            log.info("closing a slow %s consumer: %d bytes outbound", self.transport_name, outbound)
            self.close_now(CloseCode.SLOW_CONSUMER, "slow consumer: reconnect and resume")
            return
        # Merge again only after another soft limit's worth has piled up.
        self._merge_at = outbound + self._soft_limit

    # The transport side.

    def flush(self, force: bool = False) -> None:
        """Hand the pending events to the transport (called by the :class:`WriteScheduler`).

        Args:
            force: write even to a full transport buffer (shutdown: the last events must go
                out before the close).
        """
        self._marked = False
        if self.pending:
            self.write_pending(force)

    def take(self) -> list[EncodedEvent]:
        """Remove and return every pending event (for the transport's write)."""
        pending = self.pending
        self.pending = []
        self.pending_bytes = 0
        return pending

    def wrote(self, backlog_bytes: int, force: bool = False) -> None:
        """After a write: ``backlog_bytes`` is what the transport has not sent yet; past the
        hard limit the client is closed (unless ``force``)."""
        self.backlog_bytes = backlog_bytes
        if backlog_bytes > self._hard_limit and not force:
            log.info("closing a slow %s consumer: %d bytes unsent", self.transport_name, backlog_bytes)
            self.close_now(CloseCode.SLOW_CONSUMER, "slow consumer: reconnect and resume")
            return
        self._merge_at = backlog_bytes + self._soft_limit

    def stop(self) -> None:
        """Take no more events and drop the pending ones."""
        self.closed = True
        self.pending.clear()
        self.pending_bytes = 0

    @abstractmethod
    def write_pending(self, force: bool) -> None:
        """Write (or schedule the write of) :meth:`take`'s events; call :meth:`wrote` after."""

    @abstractmethod
    def close_now(self, code: int, reason: str) -> None:
        """Close the client without waiting (``code``: a WebSocket close code)."""

    @abstractmethod
    def abort(self) -> None:
        """Stop writing and drop the client's connection."""

    async def shut_down(self) -> None:
        """The hub is shutting down: write what is pending (a transport may close too: the
        WebSocket one closes with 1012; an SSE response ends with its stream)."""
        self.flush(force=True)
