"""The in-memory broker: the :class:`StreamMultiplexer` maps channels and stream types to
subscribers and fans events out to them in one process.

It implements :class:`hub.broker.Broker`. A subscriber that arrives while a completion runs
gets everything from ``seq`` 1 (while the history still holds it), then live events, with no
gap and no duplicate: subscribing and publishing both run on the event loop without awaiting,
so nothing can slip between the replay and the first live event.

Fan-out (docs/ARCHITECTURE.md decision 4): :meth:`StreamMultiplexer.publish` is given the event
already encoded by its channel (an :class:`~hub.channel.EncodedEvent`: the JSON bytes, the
message, and the WebSocket frame built from them at most once) and hands the *same object* to
every subscriber's ``deliver``, which only appends it to that client's outbox. No subscriber
is awaited inside the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hub.broker import Broker, ControlHandler, Subscriber
from hub.channel import Channel, EncodedEvent, HistoryBounds, stream_type_of
from hub.outbox import merge_content
from protocol.messages import Cursor, encode

__all__ = ["StreamMultiplexer", "InMemoryBroker", "EncodedEvent", "Channel", "Subscriber", "merge_content",
           "stream_type_of"]


def _nothing() -> None:
    pass


class StreamMultiplexer(Broker):
    """The in-memory :class:`~hub.broker.Broker`.

    Args:
        flush: hands what subscribers queued to their transports now (the hub's
            WriteScheduler.run).
        clock: seconds, monotonic; used only for history age bounds.

    Attributes:
        channels: the open channels by name.
        type_subscribers: the subscribers of each stream type.
    """

    def __init__(self, flush: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.flush: Callable[[], None] = flush or _nothing
        self.channels: dict[str, Channel] = {}
        self.type_subscribers: dict[str, set[Subscriber]] = {}
        self._subscriptions: dict[Subscriber, set[str]] = {}
        self._type_since: dict[tuple[Subscriber, str], int] = {}  # publish count at subscribe_type
        self._controls: dict[str, ControlHandler] = {}
        self._published = 0
        self._history_bytes = 0

    @property
    def history_bytes(self) -> int:
        """Payload bytes held by all channel histories together (for the memory budget)."""
        return self._history_bytes

    @property
    def history_events(self) -> int:
        """Events held by all channel histories together (for the memory budget). Counted
        when asked, O(channels): the memory governor asks at most 20 times a second, and the
        publish path stays free of it."""
        return sum(len(channel.history) for channel in self.channels.values())

    def trim_history(self, name: str) -> int:
        """Keep only the latest event of channel ``name`` (see
        :meth:`hub.broker.Broker.trim_history`). Returns the payload bytes dropped."""
        channel = self.channels.get(name)
        if channel is None:
            return 0
        dropped = channel.keep_latest()
        self._history_bytes -= dropped
        return dropped

    # Channels.

    def open_channel(self, name: str, bounds: HistoryBounds, *, on_idle: Callable[[], None] | None = None,
                     on_subscribe: Callable[[], None] | None = None, snapshot: Callable[[], Any] | None = None,
                     control: ControlHandler | None = None) -> Channel:
        """Create a channel. Raises ValueError if one of that name is open."""
        if name in self.channels:
            raise ValueError(f"channel {name} is already open")
        channel = Channel(name, self, bounds, on_idle, on_subscribe, snapshot)
        self.channels[name] = channel
        if control is not None:
            self._controls[name] = control
        return channel

    def channel(self, name: str) -> Channel | None:
        """The open channel called ``name``, or None."""
        return self.channels.get(name)

    def close_channel(self, name: str) -> None:
        """Forget a channel and its subscriptions (its history goes with it)."""
        channel = self.channels.pop(name, None)
        self._controls.pop(name, None)
        if channel is None:
            return
        self._history_bytes -= channel.clear()
        for subscriber in channel.subscribers:
            names = self._subscriptions.get(subscriber)
            if names is not None:
                names.discard(name)
        channel.subscribers.clear()

    # Subscriptions.

    def recoverable(self, name: str, since: Cursor | None = None) -> bool:
        """Whether subscribing to channel ``name`` after the cursor ``since`` (None: from
        seq 1) would be a complete replay: the history, once trimmed by age, reaches back far
        enough and the epoch matches."""
        channel = self.channels[name]
        if channel.bounds.max_age_s is not None:
            self._history_bytes -= channel.trim_old(self._clock())
        return channel.covers(since.seq if since else 0, since.epoch if since else None)

    def history(self, name: str, since: Cursor | None = None) -> list[EncodedEvent]:
        """The held events of ``name`` after ``since``; empty for a cursor of another epoch."""
        channel = self.channels[name]
        if since is not None and since.epoch != channel.epoch:
            return []
        return list(channel.replay(since.seq if since else 0))

    def subscribe(self, subscriber: Subscriber, name: str, since: Cursor | None = None,
                  recovered: bool | None = None) -> bool:
        """Subscribe and bring the subscriber up to date (docs/PROTOCOL.md "Resuming"): every
        event after ``since`` when :meth:`recoverable`; otherwise the channel's snapshot (its
        ``seq`` is the last event it reflects), then the history after it; a channel without
        a snapshot replays what its history holds. Live events follow either way.
        ``recovered``: the caller's :meth:`recoverable` answer already sent in an ack (see
        :meth:`hub.broker.Broker.subscribe`).

        Returns:
            ``recovered``: True for a complete replay.

        Raises:
            KeyError: no open channel has that name.
        """
        channel = self.channels[name]
        if channel.on_subscribe is not None:
            channel.on_subscribe()
        if recovered is None:
            recovered = self.recoverable(name, since)
        if recovered:
            self._attach(subscriber, channel, since.seq if since else 0)
        elif channel.snapshot is not None:
            state = channel.snapshot()
            self._attach(subscriber, channel, state.seq, before=EncodedEvent(encode(state), state))
        else:
            self._attach(subscriber, channel, 0)
        return recovered

    def _attach(self, subscriber: Subscriber, channel: Channel, after_seq: int,
                before: EncodedEvent | None = None) -> None:
        """Add ``subscriber`` to ``channel`` and replay its history after ``after_seq``
        (preceded by ``before``, e.g. a snapshot), unless a type-level subscription has
        already delivered events of that channel to it live (then replaying would repeat
        frames; events published before that type-level subscription began are not filled
        in). No await between subscribing and replaying: no event can slip in between."""
        if subscriber in channel.subscribers:
            return
        channel.subscribers.add(subscriber)
        self._subscriptions.setdefault(subscriber, set()).add(channel.name)
        since = self._type_since.get((subscriber, channel.stream_type))
        if since is not None and channel.last_publish is not None and channel.last_publish > since:
            return
        if before is not None:
            subscriber.deliver(before)
        for event in channel.replay(after_seq):
            subscriber.deliver(event)

    def is_subscribed(self, subscriber: Subscriber, name: str) -> bool:
        """Whether ``subscriber`` watches channel ``name``."""
        return name in self._subscriptions.get(subscriber, ())

    def subscription_count(self, subscriber: Subscriber) -> int:
        """How many channels ``subscriber`` watches."""
        return len(self._subscriptions.get(subscriber, ()))

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
        """Drop every subscription of ``subscriber`` (its client went away)."""
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
        self._history_bytes += channel.record(event, self._clock() if channel.bounds.max_age_s is not None else None)
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

    # Control.

    def control(self, name: str, command: str, argument: Any = None) -> bool:
        """Call the channel's control handler at once (one process: its runner is here)."""
        handler = self._controls.get(name)
        if handler is None:
            return False
        handler(command, argument)
        return True


#: The name the broker seam gives the in-memory implementation.
InMemoryBroker = StreamMultiplexer
