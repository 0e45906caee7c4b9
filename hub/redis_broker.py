"""The Redis broker: several hub processes (nodes) serve the same completion channels.

It implements :class:`hub.broker.Broker` as a :class:`~hub.multiplexer.StreamMultiplexer`
(channels run here work exactly as in memory: local history, fan-out, control) plus Redis, in
the manner of Centrifugo's Redis engine (docs/ARCHITECTURE.md decision 9). Layout, every name
starting with ``broker.prefix`` (P)::

    P meta:<channel>   hash: epoch, node (owner node id), owner (subject), kind (completion,
                       workflow or agent), state, parent (an agent channel's workflow channel)
    P s:<channel>      Redis Stream, entry IDs <seq>-0, field d = the event's JSON payload
    P ch:<channel>     PUB/SUB channel: every event's payload, as published
    P ctl:<node>       PUB/SUB channel of one node: control commands (cancel) for its runs

**Replicated channels**: ``completion:``, ``workflow:`` and ``agent:`` channels (the
``system`` channel is each node's own). An agent channel has no terminal event: it is marked
finished with its workflow's terminal event; it inherits its workflow's owner subject.

**Publishing** (the owning node; one writer per channel). Every event of a replicated
channel run here is appended to a batch; the first one of an event-loop iteration schedules
:meth:`RedisBroker._send` with ``call_soon``, which sends the whole batch in one round trip: one
EVALSHA of a Lua script that, per event, does ``XADD P s:<ch> MAXLEN ~ <history_max_events>
<seq>-0 d <payload>`` and ``PUBLISH P ch:<ch> <payload>`` (both or neither: a stale writer's
XADD fails on its ID, which fences it for free), and on the terminal event marks the meta
``finished`` and expires both keys ``retention_s + 60`` s later. One batch is in flight while
the next accumulates; a batch holds at most :data:`BATCH_EVENTS` events or
:data:`BATCH_BYTES` bytes. :attr:`RedisBroker.round_trips` and :attr:`RedisBroker.events_sent`
count them.

**Live delivery to other nodes: PUB/SUB**, not XREAD on each stream: one connection per node
carries every channel it mirrors, Redis pushes each event once to each interested node and
nothing to the others, and XREAD would need a blocking connection (or a polling loop) per
channel group. PUB/SUB loses what it carries while a node is disconnected; the stream closes
such gaps (below).

**Subscribing to a channel run elsewhere** (:meth:`RedisBroker.attach`, awaited by the session
before its usual synchronous subscribe): read ``P meta:<ch>`` (absent: unknown channel), open
a local mirror channel with the owner's epoch (so cursors from any node are valid) marked
pending (live events are buffered), SUBSCRIBE ``P ch:<ch>`` and wait for Redis to confirm it,
XRANGE the stream, then with no await: the stream's events, the buffered events after them,
then live. Each live event must be the mirror's last seq + 1; a gap (lost PUB/SUB messages)
switches the mirror back to pending and fills it from the stream. The mirror holds what the
stream holds (bounded like a history), so resumes on this node are replays from it, and every
subscriber here gets the owning node's bytes, seq and coalescing. Stage 1: there is no
snapshot built from Redis; a cursor older than the stream gets what the stream holds
(``recovered`` false). A mirror is dropped when its last local subscriber leaves.

**Cluster-wide ids**: :meth:`RedisBroker.claim` creates ``P meta:<ch>`` only if it does not
exist (a Lua script), before the run is opened; a completion whose id the hub chose is
registered in its first batch instead (96 random bits do not collide).

**Cancel from any node**: :meth:`RedisBroker.control` on a mirror publishes ``{"op": "cancel",
"channel", "code", "message"}`` to ``P ctl:<owner node>``; that node calls the channel's
control handler, and the run's ``cancelled`` error reaches every node over ``P ch:<ch>``.

Not yet (later stages of issue 13): node liveness (``node_lost``), surviving a Redis outage,
cluster-wide limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from hub.broker import ControlHandler
from hub.channel import Channel, EncodedEvent, HistoryBounds
from hub.multiplexer import StreamMultiplexer
from protocol.errors import ErrorCode, HubError
from protocol.messages import HUB_DECODER, Completed, ErrorMessage, WorkflowCompleted

__all__ = ["RedisBroker", "BrokerUnavailable", "BATCH_EVENTS", "BATCH_BYTES"]

log = logging.getLogger("cbhub.broker")

#: The most events one round trip carries.
BATCH_EVENTS = 500
#: The most payload bytes one round trip carries (a batch takes at least one event).
BATCH_BYTES = 1 << 20

#: Per op, five arguments: kind, channel, a, b, c. Kinds: ``e`` event (a: seq, b: payload),
#: ``f`` terminal event (same), ``m`` register a channel unless registered (a: epoch, b: node,
#: c: owner subject; the meta's ``kind`` is the name's part before ``:``), ``p`` record the
#: channel's parent (a: the ``workflow:`` channel of an ``agent:`` channel), ``x`` mark a
#: channel finished without an event (an agent channel when its workflow ends).
#: ARGV[1..3]: prefix, stream MAXLEN, seconds to keep a finished channel.
_PUBLISH_LUA = """
local p = ARGV[1]
local maxlen = ARGV[2]
local ttl = tonumber(ARGV[3])
local written = 0
for i = 4, #ARGV, 5 do
  local kind, name, a, b, c = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local meta = p .. 'meta:' .. name
  if kind == 'm' then
    if redis.call('EXISTS', meta) == 0 then
      redis.call('HSET', meta, 'epoch', a, 'node', b, 'owner', c, 'kind', string.match(name, '^[^:]*'),
                 'state', 'running')
    end
  elseif kind == 'p' then
    redis.call('HSET', meta, 'parent', a)
  elseif kind == 'x' then
    redis.call('HSET', meta, 'state', 'finished')
    redis.call('EXPIRE', meta, ttl)
    redis.call('EXPIRE', p .. 's:' .. name, ttl)
  else
    local stream = p .. 's:' .. name
    local added = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, a .. '-0', 'd', b)
    if type(added) ~= 'table' or not added.err then
      redis.call('PUBLISH', p .. 'ch:' .. name, b)
      written = written + 1
      if kind == 'f' then
        redis.call('HSET', meta, 'state', 'finished')
        redis.call('EXPIRE', meta, ttl)
        redis.call('EXPIRE', stream, ttl)
      end
    end
  end
end
return written
"""

#: KEYS[1]: the meta hash; ARGV: epoch, node, owner. 1 when created, 0 when it existed.
_CLAIM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'node', ARGV[2], 'owner', ARGV[3], 'kind', ARGV[4],
           'state', 'claimed')
return 1
"""

#: The channels replicated through Redis: completions, workflow runs and their agents (the
#: ``system`` channel is each node's own).
_REPLICATED_PREFIXES = ("completion:", "workflow:", "agent:")


def _replicated(name: str) -> bool:
    return name.startswith(_REPLICATED_PREFIXES)


class BrokerUnavailable(ConnectionError):
    """Redis did not answer at start (``cbhub serve`` exits 2 with this message, which names
    ``broker.url``)."""


class _Mirror:
    """What a node knows of a channel another node runs: the owner, whether the mirror is
    being filled from the stream (live events wait in ``buffer`` meanwhile), and its end."""

    __slots__ = ("channel", "node", "owner", "pending", "buffer", "finished", "topic")

    def __init__(self, channel: Channel, node: str, owner: str, topic: bytes) -> None:
        self.channel = channel
        self.node = node
        self.owner = owner
        self.topic = topic
        self.pending = True
        self.buffer: list[EncodedEvent] = []
        self.finished = False


def _seq_of(event: EncodedEvent) -> int:
    return event.seq


def _is_terminal(event: EncodedEvent) -> bool:
    """Whether ``event`` ends its channel: ``completed``, ``workflow_completed``, or an
    ``error`` with a ``seq`` (a completion's or a workflow run's)."""
    message = event.message
    return isinstance(message, (Completed, WorkflowCompleted)) or (
        isinstance(message, ErrorMessage) and message.seq is not None)


class RedisBroker(StreamMultiplexer):
    """The Redis :class:`~hub.broker.Broker` (see the module docstring).

    Args:
        url: the Redis URL (``broker.url``).
        prefix: the start of every key and PUB/SUB channel (``broker.prefix``).
        bounds: the history bounds of mirrored channels (the configured stream history).
        retention_s: how long a finished completion stays subscribable, in s; its Redis keys
            expire 60 s after that.
        flush: as for :class:`~hub.multiplexer.StreamMultiplexer`.
        clock: as for :class:`~hub.multiplexer.StreamMultiplexer` (s, monotonic).

    Attributes:
        node_id: this node's random id (its control channel is ``<prefix>ctl:<node_id>``).
        round_trips: publish round trips sent to Redis so far.
        events_sent: events those round trips carried.
    """

    distributed = True

    def __init__(self, url: str, prefix: str, bounds: HistoryBounds, retention_s: float,
                 flush: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(flush, clock)
        self.url = url
        self.prefix = prefix
        self.bounds = bounds
        self.retention_s = retention_s
        self.node_id = secrets.token_hex(8)
        self.round_trips = 0
        self.events_sent = 0
        self._redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._publish_script: Any = None
        self._claim_script: Any = None
        self._batch: list[str] = []  # flat ARGV, five per op
        self._batch_bytes = 0
        self._scheduled = False
        self._inflight: asyncio.Task[None] | None = None
        self._replicated: set[str] = set()
        self._claimed: dict[str, tuple[str, str]] = {}  # channel -> (epoch, owner), claimed, not opened yet
        self._owners: dict[str, str] = {}  # replicated channel run here -> owner subject
        self._children: dict[str, list[str]] = {}  # workflow channel run here -> its agent channels
        self._mirrors: dict[str, _Mirror] = {}
        self._by_topic: dict[bytes, _Mirror] = {}
        self._attaching: dict[str, asyncio.Future[None]] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ctl_topic = f"{prefix}ctl:{self.node_id}".encode()

    # Connection.

    async def connect(self) -> None:
        """Connect, load the scripts and listen on this node's control channel.

        Raises:
            BrokerUnavailable: Redis does not answer at ``url``.
        """
        client = aioredis.from_url(self.url)
        try:
            await client.ping()
            self._publish_script = client.register_script(_PUBLISH_LUA)
            self._claim_script = client.register_script(_CLAIM_LUA)
            pubsub = client.pubsub()
            await pubsub.subscribe(self._ctl_topic)
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise BrokerUnavailable(f"broker.url {self.url!r}: Redis does not answer ({exc})") from exc
        self._redis = client
        self._pubsub = pubsub
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="redis-broker-reader")

    async def close(self) -> None:
        """Send what is batched, then disconnect (shutdown)."""
        try:
            while self._redis is not None and (self._batch or self._inflight is not None):
                if self._inflight is not None:
                    await asyncio.gather(self._inflight, return_exceptions=True)
                elif self._batch:
                    self._send()
        finally:
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
            for task in list(self._tasks):
                task.cancel()
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.aclose()
            if self._redis is not None:
                await self._redis.aclose()
            self._redis = None

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise BrokerUnavailable(f"broker.url {self.url!r}: not connected")
        return self._redis

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Channels run here.

    def open_channel(self, name: str, bounds: HistoryBounds, *, on_idle: Callable[[], None] | None = None,
                     on_subscribe: Callable[[], None] | None = None, snapshot: Callable[[], Any] | None = None,
                     control: ControlHandler | None = None) -> Channel:
        """Open a channel run here (see :meth:`hub.broker.Broker.open_channel`); a
        ``completion:`` channel is also written to Redis, with the epoch of its claim or,
        unclaimed, registered in its first batch.

        Raises:
            ValueError: a channel of that name is open (a mirror included).
        """
        channel = super().open_channel(name, bounds, on_idle=on_idle, on_subscribe=on_subscribe, snapshot=snapshot,
                                       control=control)
        if _replicated(name):
            self._replicated.add(name)
            claimed = self._claimed.pop(name, None)
            parent = self._parent_of(name) if name.startswith("agent:") else None
            if parent is not None:
                self._children.setdefault(parent, []).append(name)
                self._owners[name] = self._owners.get(parent, "")
            if claimed is not None:
                channel.epoch, self._owners[name] = claimed
            else:
                self._append("m", name, channel.epoch, self.node_id, self._owners.get(name, ""), 0)
            if parent is not None:
                self._append("p", name, parent, "", "", 0)
        return channel

    def _parent_of(self, name: str) -> str | None:
        """The ``workflow:`` channel run here that an ``agent:<workflowId>.<agentId>`` channel
        belongs to (either id may hold dots: the longest workflow id open here wins)."""
        ident = name[len("agent:"):]
        for index in range(len(ident) - 1, 0, -1):
            if ident[index] == "." and f"workflow:{ident[:index]}" in self._replicated:
                return f"workflow:{ident[:index]}"
        return None

    def close_channel(self, name: str) -> None:
        """Forget a channel (its Redis keys expire on their own; a mirror stops listening)."""
        self._replicated.discard(name)
        self._owners.pop(name, None)
        self._children.pop(name, None)
        mirror = self._mirrors.pop(name, None)
        if mirror is not None:
            self._by_topic.pop(mirror.topic, None)
            if self._pubsub is not None:
                self._spawn(self._unlisten(mirror.topic))
        super().close_channel(name)

    async def claim(self, name: str, owner: str) -> bool:
        """Create ``<prefix>meta:<name>`` unless it exists (atomically), with a fresh epoch
        that the channel gets when it is opened here.

        Returns:
            False when the name is taken on some node (``duplicate_id``).

        Raises:
            RedisError: Redis failed to answer.
        """
        if name in self.channels:
            return False
        epoch = secrets.token_urlsafe(6)
        created = await self._claim_script(keys=[f"{self.prefix}meta:{name}"],
                                           args=[epoch, self.node_id, owner, name.partition(":")[0]])
        if not created:
            return False
        self._claimed[name] = (epoch, owner)
        return True

    def unclaim(self, name: str) -> None:
        """Delete a claim whose run was not created."""
        if self._claimed.pop(name, None) is not None and self._redis is not None:
            self._spawn(self._redis.delete(f"{self.prefix}meta:{name}"))

    # Publishing.

    def publish(self, channel: Channel, event: EncodedEvent) -> None:
        """Record and fan out here (as in memory); an event of a channel run here and
        replicated is also batched for Redis."""
        super().publish(channel, event)
        name = channel.name
        if name in self._replicated:
            terminal = _is_terminal(event)
            self._append("f" if terminal else "e", name, str(event.seq), event.payload, b"", len(event.payload))
            if terminal:  # a workflow's end ends its agent channels (they have no terminal event)
                for child in self._children.get(name, ()):
                    self._append("x", child, "", "", "", 0)

    def _append(self, kind: str, name: str, a: str, b: str | bytes, c: str | bytes, size: int) -> None:
        self._batch.extend((kind, name, a, b, c))  # type: ignore[arg-type]
        self._batch_bytes += size
        if not self._scheduled and self._inflight is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        """Send the batch (up to its caps) in one EVALSHA; the rest waits for the next."""
        self._scheduled = False
        if self._inflight is not None or not self._batch or self._redis is None:
            return
        batch = self._batch
        cut = len(batch)
        limit = BATCH_EVENTS * 5
        if cut > limit or self._batch_bytes > BATCH_BYTES:
            size = 0
            cut = 0
            while cut < len(batch) and cut < limit:
                size += len(batch[cut + 3])
                cut += 5
                if size >= BATCH_BYTES:
                    break
        ops, self._batch = batch[:cut], batch[cut:]
        self._batch_bytes = sum(len(batch[i + 3]) for i in range(cut + 3, len(batch), 5)) if self._batch else 0
        task = self._inflight = asyncio.get_running_loop().create_task(self._write(ops))
        task.add_done_callback(self._sent)

    async def _write(self, ops: list[str]) -> None:
        events = sum(1 for i in range(0, len(ops), 5) if ops[i] != "m")
        maxlen = max(1, self.bounds.max_events)
        try:
            await self._publish_script(args=[self.prefix, maxlen, int(self.retention_s + 60), *ops])
        except (RedisError, OSError):
            log.exception("publishing %d events to Redis failed; other nodes miss them", events)
            return
        self.round_trips += 1
        self.events_sent += events

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._inflight = None
        if self._batch and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    # Channels run elsewhere.

    async def attach(self, names: list[str]) -> None:
        """Mirror here the replicated channels (completion, workflow, agent) among ``names`` that another node runs
        (module docstring). Concurrent attaches of one channel share one mirror. Redis errors
        are logged and leave the channel unknown here."""
        for name in names:
            if name in self.channels or not _replicated(name):
                continue
            waiting = self._attaching.get(name)
            if waiting is None:
                waiting = self._attaching[name] = asyncio.get_running_loop().create_future()
                try:
                    await self._mirror(name)
                except (RedisError, OSError, TimeoutError):
                    log.exception("mirroring %s from Redis failed", name)
                finally:
                    del self._attaching[name]
                    waiting.set_result(None)
                    mirror = self._mirrors.get(name)
                    if mirror is not None and mirror.pending:  # failed or cancelled half-way
                        self.close_channel(name)
            else:
                await asyncio.shield(waiting)

    async def _mirror(self, name: str) -> None:
        client = self._client()
        meta: dict[bytes, bytes] = await client.hgetall(f"{self.prefix}meta:{name}")  # type: ignore[assignment]
        epoch = meta.get(b"epoch")
        if not epoch or name in self.channels:
            return
        channel = super().open_channel(name, self.bounds, on_idle=lambda: self._idle(name))
        channel.epoch = epoch.decode()
        topic = f"{self.prefix}ch:{name}".encode()
        mirror = _Mirror(channel, meta.get(b"node", b"").decode(), meta.get(b"owner", b"").decode(), topic)
        self._mirrors[name] = mirror
        self._by_topic[topic] = mirror
        confirmed = self._confirmations[topic] = asyncio.get_running_loop().create_future()
        try:
            await self._pubsub.subscribe(topic)
            await asyncio.wait_for(asyncio.shield(confirmed), 10.0)
        finally:
            self._confirmations.pop(topic, None)
        await self._fill(mirror)

    async def _fill(self, mirror: _Mirror) -> None:
        """Read the stream after the mirror's last seq, then (no await) feed it and the
        buffered live events, and go live."""
        channel = mirror.channel
        start = f"{channel.last_seq + 1}-0" if channel.last_seq else "-"
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._client().xrange(  # type: ignore[assignment]
            f"{self.prefix}s:{channel.name}", min=start, max="+")
        if self._mirrors.get(channel.name) is not mirror:
            return  # dropped meanwhile
        buffered, mirror.buffer = mirror.buffer, []
        mirror.pending = False
        for _id, fields in entries:
            payload = fields[b"d"]
            self._feed(mirror, EncodedEvent(payload, HUB_DECODER.decode(payload)), filling=True)
        for event in sorted(buffered, key=_seq_of):
            self._feed(mirror, event, filling=True)
        self.flush()

    def _feed(self, mirror: _Mirror, event: EncodedEvent, filling: bool = False) -> None:
        """Publish one event of the owning node into its mirror, in seq order: duplicates
        are dropped; a gap while live makes the mirror pending and fills it from the stream
        (while filling, a gap is history the stream no longer holds and is accepted)."""
        if mirror.pending:
            mirror.buffer.append(event)
            return
        channel = mirror.channel
        seq = event.seq
        if seq <= channel.last_seq:
            return
        if seq != channel.last_seq + 1 and not filling:
            mirror.pending = True
            mirror.buffer.append(event)
            self._spawn(self._refill(mirror))
            return
        channel.last_seq = seq
        StreamMultiplexer.publish(self, channel, event)
        if _is_terminal(event):
            mirror.finished = True

    async def _refill(self, mirror: _Mirror) -> None:
        try:
            await self._fill(mirror)
        except (RedisError, OSError):
            log.exception("closing a gap of %s from Redis failed", mirror.channel.name)

    def _idle(self, name: str) -> None:
        """The last local subscriber of a mirror left: drop it soon unless one returns."""
        asyncio.get_running_loop().call_soon(self._drop_if_unused, name)

    def _drop_if_unused(self, name: str) -> None:
        mirror = self._mirrors.get(name)
        if mirror is not None and not mirror.channel.subscribers and name not in self._attaching:
            self.close_channel(name)

    def release(self, names: list[str]) -> None:
        """Drop the mirrors among ``names`` that have no subscriber."""
        for name in names:
            self._drop_if_unused(name)

    async def _unlisten(self, topic: bytes) -> None:
        with contextlib.suppress(RedisError, OSError):
            if topic not in self._by_topic:
                await self._pubsub.unsubscribe(topic)

    def remote_owner(self, name: str) -> str | None:
        """The owner subject of a mirrored channel, else None."""
        mirror = self._mirrors.get(name)
        return mirror.owner if mirror is not None else None

    # PUB/SUB.

    async def _read(self) -> None:
        """Take every PUB/SUB message: subscribe confirmations, events of mirrored channels,
        control commands for this node."""
        pubsub = self._pubsub
        while True:
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=None)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                log.exception("reading Redis PUB/SUB failed")
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            try:
                self._take(message)
            except Exception:  # a bug of ours must not stop every mirror
                log.exception("handling a Redis PUB/SUB message failed")

    def _take(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        topic = message["channel"]
        if kind == "subscribe":
            waiting = self._confirmations.get(topic)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
            return
        if kind != "message":
            return
        data = message["data"]
        if topic == self._ctl_topic:
            self._command(data)
            return
        mirror = self._by_topic.get(topic)
        if mirror is not None:
            self._feed(mirror, EncodedEvent(data, HUB_DECODER.decode(data)))
            self.flush()

    # Control.

    def control(self, name: str, command: str, argument: Any = None) -> bool:
        """Run ``command`` here for a channel run here; for a mirror, send it to the owning
        node's control channel (it arrives there as ``(command, HubError or None)``).

        Returns:
            False when no channel of that name takes commands here.
        """
        if super().control(name, command, argument):
            return True
        mirror = self._mirrors.get(name)
        if mirror is None or self._redis is None:
            return False
        body: dict[str, Any] = {"op": command, "channel": name}
        if isinstance(argument, HubError):
            body["code"] = str(argument.code)
            body["message"] = argument.message
        self._spawn(self._redis.publish(f"{self.prefix}ctl:{mirror.node}", json.dumps(body)))
        return True

    def _command(self, data: bytes) -> None:
        try:
            body = json.loads(data)
            command, name = body["op"], body["channel"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed control message")
            return
        argument = None
        if body.get("code"):
            try:
                code = ErrorCode(body["code"])
            except ValueError:
                code = ErrorCode.CANCELLED
            argument = HubError(str(body.get("message") or ""), code)
        super().control(name, command, argument)
