"""A channel numbers its own events: ``seq``, epoch, bounded history, replay and the resume rule.

A :class:`Channel` is one instance of ``completion:<id>``, ``workflow:<id>``,
``agent:<workflowId>.<agentId>`` or ``system`` (docs/ARCHITECTURE.md decision 5, docs/PROTOCOL.md
"Resuming"). Publishers hold the channel and call :meth:`Channel.publish` with a message whose
``seq`` they leave at 0; the channel gives it the next ``seq`` (1, 2, 3 ... with no gap),
encodes it once into an :class:`EncodedEvent` and hands that to its broker, which records it
in the history and fans it out. Nobody else counts.

The resume rule lives here too: :meth:`Channel.covers` says whether the history holds every
event after a client's cursor (``seq`` and ``epoch``), so a replay would be complete; when it
does not, the subscriber gets the channel's snapshot (if it has a snapshot source) and then the
rest of the history.

Nothing in this module awaits; the clock is passed in by the broker.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from protocol.messages import encode
from protocol.wsframe import text_frame

if TYPE_CHECKING:
    from hub.broker import Broker

__all__ = ["EncodedEvent", "HistoryBounds", "Channel", "stream_type_of"]


class EncodedEvent:
    """One hub message, encoded once for every subscriber.

    Attributes:
        payload: the message as UTF-8 JSON bytes (protocol.messages.encode).
        message: the message Struct itself (for subscribers that re-encode, e.g. the
            OpenAI-compatible SSE endpoint).
        frame: the WebSocket text frame carrying ``payload`` (RFC 6455 §5.2), built on
            first use and then shared by every WebSocket subscriber.
        published_at: the broker's clock when it was recorded, in s (history age).
    """

    __slots__ = ("payload", "message", "_frame", "published_at")

    def __init__(self, payload: bytes, message: Any) -> None:
        self.payload = payload
        self.message = message
        self._frame: bytes | None = None
        self.published_at = 0.0

    @property
    def seq(self) -> int:
        """The message's ``seq`` (0 for a message without one)."""
        return getattr(self.message, "seq", None) or 0

    @classmethod
    def of(cls, message: Any) -> EncodedEvent:
        """Encode ``message`` (a protocol.messages Struct)."""
        return cls(encode(message), message)

    @property
    def frame(self) -> bytes:
        """The WebSocket text frame of :attr:`payload` (built once)."""
        frame = self._frame
        if frame is None:
            frame = self._frame = text_frame(self.payload)
        return frame


class HistoryBounds(msgspec.Struct, frozen=True):
    """How much of a channel's past is kept for late and returning subscribers.

    Attributes:
        max_events: the most events kept (at least 1: the latest is always kept).
        max_bytes: the most payload bytes kept, None for no byte bound.
        max_age_s: events older than this many seconds leave, None for no age bound.
    """

    max_events: int
    max_bytes: int | None = None
    max_age_s: float | None = None


def stream_type_of(channel: str) -> str:
    """The type-level stream a channel belongs to (``completion:c1`` → ``completion``,
    ``agent:a1`` → ``agent_status``, ``system`` → ``system``)."""
    kind = channel.partition(":")[0]
    return "agent_status" if kind == "agent" else kind


class Channel:
    """One channel instance: its numbering, subscribers and bounded history.

    Created by :meth:`hub.broker.Broker.open_channel`, never directly.

    Args:
        name: the channel name.
        broker: the broker that records and fans out what is published here.
        bounds: the history's bounds.
        on_idle: called when the last subscriber leaves (a completion's grace period).
        on_subscribe: called when a subscriber arrives (calls a grace period off).
        snapshot: builds the message that stands for the state so far when a replay cannot
            be complete (``snapshot`` / ``workflow_snapshot``; its ``seq`` is the last event
            it reflects); None for channels that have none (``system``, ``agent:``).

    Attributes:
        epoch: random string fixed for the life of this channel instance: a client's cursor
            from another instance of the same name is not valid here.
        last_seq: the ``seq`` of the latest event published (0 before any).
        history: the kept events, oldest first.
        history_bytes: payload bytes the history holds now.
        subscribers: the subscribers of this channel (broker-maintained).
        last_publish: the broker-wide publish count at this channel's latest event (tells
            whether a type-level subscriber already received some of it live).
    """

    __slots__ = ("name", "broker", "stream_type", "bounds", "on_idle", "on_subscribe", "snapshot", "epoch",
                 "last_seq", "history", "history_bytes", "subscribers", "last_publish")

    def __init__(self, name: str, broker: Broker, bounds: HistoryBounds, on_idle: Callable[[], None] | None = None,
                 on_subscribe: Callable[[], None] | None = None, snapshot: Callable[[], Any] | None = None) -> None:
        self.name = name
        self.broker = broker
        self.stream_type = stream_type_of(name)
        self.bounds = HistoryBounds(max(1, bounds.max_events), bounds.max_bytes, bounds.max_age_s)
        self.on_idle = on_idle
        self.on_subscribe = on_subscribe
        self.snapshot = snapshot
        self.epoch = secrets.token_urlsafe(6)
        self.last_seq = 0
        self.history: deque[EncodedEvent] = deque()
        self.history_bytes = 0
        self.subscribers: set[Any] = set()
        self.last_publish: int | None = None

    # Publishing.

    def publish(self, message: Any) -> EncodedEvent:
        """Number ``message`` (a protocol.messages Struct with a ``seq`` field, left at 0 by
        the publisher), encode it once and hand it to the broker for history and fan-out.

        Returns:
            The encoded event (its ``message.seq`` is the assigned number).
        """
        seq = self.last_seq + 1
        message.seq = seq
        self.last_seq = seq
        event = EncodedEvent(encode(message), message)
        self.broker.publish(self, event)
        return event

    def record(self, event: EncodedEvent, now: float | None) -> int:
        """Append ``event`` to the history and trim it to its bounds (``now``: the broker's
        clock in s, needed only with an age bound).

        Returns:
            The change in payload bytes held (for the broker's total).
        """
        history = self.history
        history.append(event)
        size = len(event.payload)
        delta = size
        self.history_bytes += size
        bounds = self.bounds
        max_bytes = bounds.max_bytes
        while len(history) > bounds.max_events or (
                max_bytes is not None and self.history_bytes > max_bytes and len(history) > 1):
            dropped = len(history.popleft().payload)
            self.history_bytes -= dropped
            delta -= dropped
        if now is not None:
            event.published_at = now
            delta -= self.trim_old(now)
        return delta

    def trim_old(self, now: float) -> int:
        """Drop history events older than the age bound (the latest is kept).

        Returns:
            The payload bytes dropped.
        """
        max_age = self.bounds.max_age_s
        if max_age is None:
            return 0
        horizon = now - max_age
        history = self.history
        dropped = 0
        while len(history) > 1 and history[0].published_at < horizon:
            dropped += len(history.popleft().payload)
        self.history_bytes -= dropped
        return dropped

    def keep_latest(self) -> int:
        """Drop every held event but the latest. Returns the payload bytes dropped."""
        history = self.history
        dropped = 0
        while len(history) > 1:
            dropped += len(history.popleft().payload)
        self.history_bytes -= dropped
        return dropped

    def clear(self) -> int:
        """Forget the whole history (the channel closes). Returns the bytes it held."""
        held = self.history_bytes
        self.history.clear()
        self.history_bytes = 0
        return held

    # The resume rule (docs/PROTOCOL.md "Resuming").

    def covers(self, after_seq: int, epoch: str | None) -> bool:
        """Whether the history holds every event after ``after_seq`` and ``epoch`` (when
        given) is this instance's: a replay from there would be complete."""
        if epoch is not None and epoch != self.epoch:
            return False
        if after_seq >= self.last_seq:
            return True  # nothing to replay
        history = self.history
        return bool(history) and history[0].seq <= after_seq + 1

    def replay(self, after_seq: int) -> Iterator[EncodedEvent]:
        """The held events after ``after_seq``, oldest first."""
        for event in self.history:
            if event.seq > after_seq:
                yield event
