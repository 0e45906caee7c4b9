"""Channels and the StreamMultiplexer: who receives which event.

A :class:`Channel` (``completion:<id>``, later ``workflow:<id>``, ``agent:<id>``, ``system``)
numbers nothing itself: its publisher gives each event its ``seq``. The channel keeps the
encoded events in a bounded history so a subscriber that arrives while the completion runs
gets everything from ``seq`` 1 (while the history still holds it), then live events, with no
gap and no duplicate: subscribing and publishing both run on the event loop without
awaiting, so nothing can slip between the replay and the first live event.

Fan-out (DESIGN.md decision 4): :meth:`StreamMultiplexer.publish` is given the event already
encoded (an :class:`EncodedEvent`: the JSON bytes, the message, and the WebSocket frame built
from them at most once) and hands the *same object* to every subscriber's
:meth:`Subscriber.deliver`, which only appends it to that connection's pending list. No
subscriber is awaited inside the loop.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from protocol.messages import ContentChunk, encode
from protocol.wsframe import text_frame

__all__ = ["EncodedEvent", "Subscriber", "Channel", "StreamMultiplexer", "stream_type_of", "merge_content", "covers"]


class EncodedEvent:
    """One hub message, encoded once for every subscriber.

    Attributes:
        payload: the message as UTF-8 JSON bytes (protocol.messages.encode).
        message: the message Struct itself (for subscribers that re-encode, e.g. the
            OpenAI-compatible SSE endpoint).
        frame: the WebSocket text frame carrying ``payload`` (RFC 6455 §5.2), built on
            first use and then shared by every WebSocket subscriber.
    """

    __slots__ = ("payload", "message", "_frame", "published_at")

    def __init__(self, payload: bytes, message: Any) -> None:
        self.payload = payload
        self.message = message
        self._frame: bytes | None = None
        self.published_at = 0.0  # loop time of publish (history age), set by publish()

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
        frame = self._frame
        if frame is None:
            frame = self._frame = text_frame(self.payload)
        return frame


class Subscriber(Protocol):
    """Anything that can receive events: a WebSocket connection, an SSE response."""

    def deliver(self, event: EncodedEvent) -> None:
        """Queue one encoded event. Must not block or await: it is called inside the
        fan-out loop, once per subscriber per event."""


def merge_content(events: list[EncodedEvent]) -> list[EncodedEvent]:
    """The slow-consumer merge: each run of adjacent ``content_chunk`` messages of one
    completion in ``events`` becomes one ``content_chunk`` with the joined text, the last
    ``seq`` and ``firstSeq`` set to the first one's (docs/PROTOCOL.md "Limits"). Being adjacent,
    the run's seqs are consecutive, so the receiver still sees no gap. Other events keep their
    place. Encodes the merged messages anew (once per merge: this is the slow path)."""
    out: list[EncodedEvent] = []
    run: list[EncodedEvent] = []

    def close_run() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            first, last = run[0].message, run[-1].message
            text = "".join(event.message.content for event in run)
            out.append(EncodedEvent.of(ContentChunk(last.completion_id, last.seq, text, first.first_seq or first.seq)))
        run.clear()

    for event in events:
        message = event.message
        if message.__class__ is ContentChunk:
            if run and run[-1].message.completion_id != message.completion_id:
                close_run()
            run.append(event)
        else:
            close_run()
            out.append(event)
    close_run()
    return out


def _nothing() -> None:
    pass


def stream_type_of(channel: str) -> str:
    """The type-level stream a channel belongs to (``completion:c1`` → ``completion``,
    ``agent:a1`` → ``agent_status``, ``system`` → ``system``)."""
    kind = channel.partition(":")[0]
    return "agent_status" if kind == "agent" else kind


class Channel:
    """One channel instance: its subscribers and a bounded history of encoded events.

    Args:
        name: the channel name.
        history_max_events: how many of the latest events are kept for late subscribers.
        on_idle: called when the last subscriber leaves.
        history_max_bytes: the most payload bytes the history keeps (the oldest events go
            first; the latest event is always kept); None for no byte bound.

        history_max_age_s: events older than this leave the history (checked when an event
            is published and when someone subscribes); None for no age bound.

    Attributes:
        history_bytes: payload bytes the history holds now.
        epoch: random string fixed for the life of this channel instance: a client's cursor
            from another instance of the same name is not valid here.
        last_seq: the ``seq`` of the latest event published (0 before any).
    """

    __slots__ = ("name", "stream_type", "subscribers", "history", "on_idle", "last_publish", "history_bytes",
                 "history_max_events", "history_max_bytes", "history_max_age_s", "epoch", "last_seq")

    def __init__(self, name: str, history_max_events: int, on_idle: Callable[[], None] | None = None,
                 history_max_bytes: int | None = None, history_max_age_s: float | None = None) -> None:
        self.name = name
        self.epoch = secrets.token_urlsafe(6)
        self.last_seq = 0
        self.history_max_age_s = history_max_age_s
        self.stream_type = stream_type_of(name)
        self.subscribers: set[Subscriber] = set()
        self.history: deque[EncodedEvent] = deque()
        self.history_bytes = 0
        self.history_max_events = max(1, history_max_events)
        self.history_max_bytes = history_max_bytes
        self.on_idle = on_idle
        # The multiplexer-wide publish count at this channel's latest event: it tells whether
        # a type-level subscriber has already received some of it live (see subscribe()).
        self.last_publish: int | None = None


def covers(channel: Channel, after_seq: int, epoch: str | None) -> bool:
    """Whether ``channel``'s history holds every event after ``after_seq`` and ``epoch``
    (when given) is this channel instance's: a replay from there would be complete."""
    if epoch is not None and epoch != channel.epoch:
        return False
    if after_seq >= channel.last_seq:
        return True  # nothing to replay
    history = channel.history
    return bool(history) and history[0].seq <= after_seq + 1


class StreamMultiplexer:
    """Maps channels and stream types to subscribers and fans events out to them."""

    #: Payload bytes held by all channel histories together (for the hub's memory budget).
    history_bytes = 0

    def trim_old(self, channel: Channel, now: float | None = None) -> None:
        """Drop history events older than the channel's age bound (the latest is kept)."""
        max_age = channel.history_max_age_s
        if max_age is None:
            return
        horizon = (self._clock() if now is None else now) - max_age
        history = channel.history
        while len(history) > 1 and history[0].published_at < horizon:
            dropped = len(history.popleft().payload)
            channel.history_bytes -= dropped
            self.history_bytes -= dropped

    def recoverable(self, name: str, since: Any = None) -> bool:
        """Whether subscribing to channel ``name`` after the cursor ``since`` (an object with
        ``seq`` and ``epoch``, or None for "from seq 1") would be a complete replay: the
        history, once trimmed by age, reaches back far enough and the epoch matches."""
        channel = self.channels[name]
        self.trim_old(channel)
        return covers(channel, since.seq if since else 0, since.epoch if since else None)

    def resume(self, subscriber: Subscriber, name: str, since: Any = None,
               snapshot: Callable[[], Any] | None = None) -> bool:
        """Subscribe and bring the subscriber up to date (docs/PROTOCOL.md "Resuming"): every
        event after ``since`` when :meth:`recoverable`; otherwise the message ``snapshot()``
        returns (it has a ``seq``: the last event it reflects), then the history after it; a
        channel without a snapshot replays what its history holds. Live events follow either
        way, with no gap and no duplicate.

        Returns:
            ``recovered``: True for a complete replay.
        """
        recovered = self.recoverable(name, since)
        if recovered:
            self.subscribe(subscriber, name, after_seq=since.seq if since else 0)
        elif snapshot is not None:
            state = snapshot()
            self.subscribe(subscriber, name, after_seq=state.seq, before=[EncodedEvent(encode(state), state)])
        else:
            self.subscribe(subscriber, name)
        return recovered

    def __init__(self, flush: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: Hands what subscribers queued to their transports now (the hub's
        #: WriteScheduler.run); publishers call :meth:`flush` after a batch of events.
        self.flush: Callable[[], None] = flush or _nothing
        self.channels: dict[str, Channel] = {}
        self.type_subscribers: dict[str, set[Subscriber]] = {}
        self._subscriptions: dict[Subscriber, set[str]] = {}
        self._type_since: dict[tuple[Subscriber, str], int] = {}  # publish count at subscribe_type
        self._published = 0

    # Channels.

    def open_channel(self, name: str, history_max_events: int, on_idle: Callable[[], None] | None = None,
                     history_max_bytes: int | None = None, history_max_age_s: float | None = None) -> Channel:
        """Create a channel. Raises ValueError if one of that name is open."""
        if name in self.channels:
            raise ValueError(f"channel {name} is already open")
        channel = Channel(name, history_max_events, on_idle, history_max_bytes, history_max_age_s)
        self.channels[name] = channel
        return channel

    def close_channel(self, name: str) -> None:
        """Forget a channel and its subscriptions (its history goes with it)."""
        channel = self.channels.pop(name, None)
        if channel is None:
            return
        self.history_bytes -= channel.history_bytes
        channel.history.clear()
        channel.history_bytes = 0
        for subscriber in channel.subscribers:
            names = self._subscriptions.get(subscriber)
            if names is not None:
                names.discard(name)
        channel.subscribers.clear()

    # Subscriptions.

    def subscribe(self, subscriber: Subscriber, name: str, after_seq: int = 0,
                  before: list[EncodedEvent] | None = None) -> Channel:
        """Add ``subscriber`` to an open channel and replay its history after ``after_seq``
        (preceded by ``before``, e.g. a snapshot), unless a type-level subscription has
        already delivered events of that channel to it live (then replaying would repeat
        frames; events published before that type-level subscription began are not filled
        in). Subscribing and replaying happen without an await, so no event can slip in
        between: the replay and the live events meet with no gap and no duplicate.

        Raises:
            KeyError: no open channel has that name.
        """
        channel = self.channels[name]
        if subscriber in channel.subscribers:
            return channel
        channel.subscribers.add(subscriber)
        self._subscriptions.setdefault(subscriber, set()).add(name)
        since = self._type_since.get((subscriber, channel.stream_type))
        if since is not None and channel.last_publish is not None and channel.last_publish > since:
            # A type-level subscription already delivered this channel live (all of it, or
            # from some seq on): replaying would repeat frames or break the order.
            return channel
        for event in before or ():
            subscriber.deliver(event)
        for event in channel.history:
            if event.seq > after_seq:
                subscriber.deliver(event)
        return channel

    def is_subscribed(self, subscriber: Subscriber, name: str) -> bool:
        """Whether ``subscriber`` watches channel ``name``."""
        return name in self._subscriptions.get(subscriber, ())

    def unsubscribe(self, subscriber: Subscriber, name: str) -> bool:
        """Remove ``subscriber`` from a channel; returns whether it was subscribed."""
        channel = self.channels.get(name)
        names = self._subscriptions.get(subscriber)
        if names is not None:
            names.discard(name)
            if not names:
                del self._subscriptions[subscriber]
        if channel is None or subscriber not in channel.subscribers:
            return False
        channel.subscribers.discard(subscriber)
        if not channel.subscribers and channel.on_idle is not None:
            channel.on_idle()
        return True

    def subscribe_type(self, subscriber: Subscriber, stream_type: str) -> None:
        """Deliver every future event of channels of ``stream_type`` to ``subscriber``."""
        subscribers = self.type_subscribers.setdefault(stream_type, set())
        if subscriber not in subscribers:
            subscribers.add(subscriber)
            self._type_since[(subscriber, stream_type)] = self._published

    def unsubscribe_type(self, subscriber: Subscriber, stream_type: str) -> None:
        """Undo :meth:`subscribe_type`."""
        self.type_subscribers.get(stream_type, set()).discard(subscriber)
        self._type_since.pop((subscriber, stream_type), None)

    def remove(self, subscriber: Subscriber) -> None:
        """Drop every subscription of ``subscriber`` (its connection closed)."""
        for name in list(self._subscriptions.pop(subscriber, ())):
            channel = self.channels.get(name)
            if channel is not None and subscriber in channel.subscribers:
                channel.subscribers.discard(subscriber)
                if not channel.subscribers and channel.on_idle is not None:
                    channel.on_idle()
        for stream_type, subscribers in self.type_subscribers.items():
            subscribers.discard(subscriber)
            self._type_since.pop((subscriber, stream_type), None)

    # Fan-out.

    def publish(self, channel: Channel, event: EncodedEvent) -> None:
        """Record one encoded event in the channel's history and hand the same object to
        every channel subscriber and every subscriber of its stream type (once each)."""
        history = channel.history
        history.append(event)
        seq = event.seq
        if seq:
            channel.last_seq = seq
        size = len(event.payload)
        channel.history_bytes += size
        self.history_bytes += size
        max_bytes = channel.history_max_bytes
        while len(history) > channel.history_max_events or (
                max_bytes is not None and channel.history_bytes > max_bytes and len(history) > 1):
            dropped = len(history.popleft().payload)
            channel.history_bytes -= dropped
            self.history_bytes -= dropped
        if channel.history_max_age_s is not None:
            event.published_at = now = self._clock()
            self.trim_old(channel, now)
        self._published += 1
        channel.last_publish = self._published
        subscribers = channel.subscribers
        for subscriber in subscribers:
            subscriber.deliver(event)
        watchers = self.type_subscribers.get(channel.stream_type)
        if watchers:
            for subscriber in watchers:
                if subscriber not in subscribers:
                    subscriber.deliver(event)
