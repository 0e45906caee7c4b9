"""The broker seam: everything above it (sessions, transports, completions, workflows) talks
to channels through this interface and never knows which implementation runs.

docs/ARCHITECTURE.md decision 9: the in-memory :class:`hub.multiplexer.StreamMultiplexer` is the
first implementation and the fast path for one process; a Redis broker for several hub
processes is a new module implementing the same methods (in the manner of Centrifugo's
``Broker`` interface: publish, history with epoch and offset, per-node subscriptions).

The contract every implementation keeps:

- **Numbering.** :meth:`Channel.publish <hub.channel.Channel.publish>` assigns ``seq``; the
  broker records and fans out, in publish order, the same :class:`~hub.channel.EncodedEvent`
  to every subscriber (encode once; the same bytes to every WebSocket subscriber).
- **No await per subscriber.** :meth:`publish` calls each subscriber's ``deliver`` and
  returns; subscribers queue (see :mod:`hub.outbox`).
- **Resume.** :meth:`subscribe` with a cursor replays every event after it when the history
  covers it, else sends the channel's snapshot then the history after it (docs/PROTOCOL.md
  "Resuming"), and live events follow with no gap and no duplicate.
- **Control.** :meth:`control` carries a command (``cancel``) to whoever runs the channel:
  in one process a direct call; across nodes, a message to the owning node.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from hub.channel import Channel, EncodedEvent, HistoryBounds
from protocol.messages import Cursor

__all__ = ["Subscriber", "ControlHandler", "Broker"]


class Subscriber(Protocol):
    """Anything that can receive events: a client's outbox, a workflow's agent listener."""

    def deliver(self, event: EncodedEvent) -> None:
        """Queue one encoded event. Must not block or await: it is called inside the
        fan-out loop, once per subscriber per event."""


#: Called with a control command's name and its argument (e.g. ``("cancel", error)``).
ControlHandler = Callable[[str, Any], None]


class Broker(ABC):
    """Channels, subscriptions, history and fan-out (see the module docstring).

    Attributes:
        flush: hands what subscribers queued to their transports now; publishers call it
            after a batch of events (one provider read).
    """

    flush: Callable[[], None]

    # Channels.

    @abstractmethod
    def open_channel(self, name: str, bounds: HistoryBounds, *, on_idle: Callable[[], None] | None = None,
                     on_subscribe: Callable[[], None] | None = None, snapshot: Callable[[], Any] | None = None,
                     control: ControlHandler | None = None) -> Channel:
        """Create a channel (see :class:`~hub.channel.Channel` for the callbacks).

        Raises:
            ValueError: a channel of that name is open.
        """

    @abstractmethod
    def channel(self, name: str) -> Channel | None:
        """The open channel called ``name``, or None."""

    @abstractmethod
    def close_channel(self, name: str) -> None:
        """Forget a channel, its history and its subscriptions."""

    @property
    @abstractmethod
    def history_bytes(self) -> int:
        """Payload bytes held by every channel history together (for the memory budget)."""

    @property
    @abstractmethod
    def history_events(self) -> int:
        """Events held by every channel history together (for the memory budget: each costs
        a fixed overhead beside its payload, hub/memory.py)."""

    @abstractmethod
    def trim_history(self, name: str) -> int:
        """Drop every held event of channel ``name`` but the latest (the memory governor's
        first relief, for finished streams: a returning subscriber then gets the snapshot and
        the terminal event). Returns the payload bytes dropped (0 for no such channel)."""

    # Publishing.

    @abstractmethod
    def publish(self, channel: Channel, event: EncodedEvent) -> None:
        """Record an event the channel numbered and encoded, and fan it out. Called by
        :meth:`Channel.publish`; never awaits a subscriber."""

    # Subscriptions.

    @abstractmethod
    def subscribe(self, subscriber: Subscriber, name: str, since: Cursor | None = None,
                  recovered: bool | None = None) -> bool:
        """Subscribe to channel ``name`` and bring the subscriber up to date: every event
        after ``since`` (from seq 1 without it) when :meth:`recoverable`; otherwise the
        channel's snapshot, then the history after it (a channel without a snapshot source
        replays what its history holds). Live events follow, with no gap or duplicate.

        ``recovered``: the caller's own :meth:`recoverable` answer for this cursor, given in
        an acknowledgement just before (no await between): the replay then does what the
        ack said, even if an event aged out of the history in between.

        Returns:
            ``recovered``: True for a complete replay.

        Raises:
            KeyError: no open channel has that name.
        """

    @abstractmethod
    def recoverable(self, name: str, since: Cursor | None = None) -> bool:
        """Whether subscribing after ``since`` would be a complete replay.

        Raises:
            KeyError: no open channel has that name.
        """

    @abstractmethod
    def history(self, name: str, since: Cursor | None = None) -> list[EncodedEvent]:
        """The held events of ``name`` after ``since`` (all of them without it); empty when
        ``since`` names another epoch.

        Raises:
            KeyError: no open channel has that name.
        """

    @abstractmethod
    def unsubscribe(self, subscriber: Subscriber, name: str) -> bool:
        """Remove ``subscriber`` from a channel; returns whether it was subscribed."""

    @abstractmethod
    def is_subscribed(self, subscriber: Subscriber, name: str) -> bool:
        """Whether ``subscriber`` watches channel ``name``."""

    @abstractmethod
    def subscription_count(self, subscriber: Subscriber) -> int:
        """How many channels ``subscriber`` watches (type-level subscriptions not counted)."""

    @abstractmethod
    def subscribe_type(self, subscriber: Subscriber, stream_type: str) -> None:
        """Deliver every future event of channels of ``stream_type`` to ``subscriber``."""

    @abstractmethod
    def unsubscribe_type(self, subscriber: Subscriber, stream_type: str) -> None:
        """Undo :meth:`subscribe_type`."""

    @abstractmethod
    def remove(self, subscriber: Subscriber) -> None:
        """Drop every subscription of ``subscriber`` (its client went away)."""

    # Several nodes (hub/redis_broker.py). The in-memory broker keeps these defaults: the
    # session never calls them unless ``distributed`` is True, so its path has no await.

    #: True for a broker shared by several hub processes: channels may be owned by another
    #: node, and the session awaits :meth:`attach` and :meth:`claim` before acting.
    distributed: bool = False

    async def attach(self, names: list[str], since: dict[str, Cursor] | None = None) -> None:
        """Make the channels among ``names`` that another node runs available here (a local
        mirror kept live), so that :meth:`channel` finds them; names that are open here or
        unknown everywhere are left alone. A cursor in ``since`` ahead of what this node has
        of its channel (read on the owning node or a faster one) is waited for, up to a
        bound, so that the replay after it neither misses nor repeats an event. Raises
        nothing: a channel that cannot be reached stays unknown. The in-memory broker has
        nothing to do."""
        return None

    def lagging(self, name: str, since: Cursor) -> bool:
        """Whether this node's copy of channel ``name``, run on another node, has not yet
        reached cursor ``since`` of its epoch (the session then awaits :meth:`attach` with
        it before subscribing). Always False in memory."""
        return False

    def release(self, names: list[str]) -> None:
        """Drop the mirrors among ``names`` that :meth:`attach` made and nobody subscribed to
        (the subscribe that asked for them was refused)."""
        return None

    async def claim(self, name: str, owner: str) -> bool:
        """Reserve channel ``name`` cluster-wide for a run of ``owner`` (a subject) that this
        node is about to open. Returns False when the name is taken (``duplicate_id``). The
        in-memory broker's only check is the local one, at creation."""
        return True

    def unclaim(self, name: str) -> None:
        """Give up a :meth:`claim` whose run was not created (a refused request)."""
        return None

    def remote_owner(self, name: str) -> str | None:
        """The subject owning channel ``name`` when another node runs it and it is mirrored
        here, else None (for authorization)."""
        return None

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` reports of the broker: at least ``kind`` (``memory`` or
        ``redis``) and ``connected`` (False while a shared broker cannot be reached: the hub
        is ``degraded``)."""
        return {"kind": "memory", "connected": True}

    # Control.

    @abstractmethod
    def control(self, name: str, command: str, argument: Any = None) -> bool:
        """Send ``command`` (``"cancel"``, with a :class:`~protocol.errors.HubError` or None
        as ``argument``) to whoever runs channel ``name``.

        Returns:
            False when no open channel of that name takes commands.
        """
