"""The Redis broker: several hub processes (nodes) serve the same completion, workflow and agent
channels, and a node's death or a Redis outage loses nothing silently.

It implements :class:`hub.broker.Broker` as a :class:`~hub.multiplexer.StreamMultiplexer`
(channels run here work exactly as in memory: local history, fan-out, control) plus Redis, in
the manner of Centrifugo's Redis engine (docs/ARCHITECTURE.md decision 9). Layout, every name
starting with ``broker.prefix`` (P)::

    P meta:<channel>   hash: epoch, node (owner node id), owner (subject), kind (completion,
                       workflow or agent), state (claimed, running, finished), parent (an agent
                       channel's workflow channel), snap (the latest snapshot's JSON)
    P s:<channel>      Redis Stream, entry IDs <seq>-0, field d = the event's JSON payload
    P ch:<channel>     PUB/SUB channel: every event's payload, as published, and snapshots
    P ctl:<node>       PUB/SUB channel of one node: control commands (cancel, watch, unwatch)
    P node:<node>      a node's heartbeat (a key with a PX expiry)
    P nodes            set: the nodes that have beaten and not been reaped
    P owned:<node>     set: the channels a node runs that have not finished
    P probe:<node>     a key a node writes (PX node_timeout_s) to learn that Redis takes writes
                       again, when nothing of its own waits for that

**Replicated channels**: ``completion:``, ``workflow:`` and ``agent:`` channels (the
``system`` channel is each node's own). An agent channel has no terminal event: it is marked
finished with its workflow's terminal event; it inherits its workflow's owner subject.

**Publishing** (the owning node; one writer per channel). Every event of a replicated channel
run here is appended to a batch (after it was handed to the local subscribers: they never wait
for Redis), and :meth:`RedisBroker._send` sends the whole batch in one round trip: at the end of
the event-loop iteration when the batch holds an event of a channel that another node watches
(its subscribers wait for it: cross-node latency is not traded for round trips), else once the
batch's oldest op has waited :data:`PUBLISH_DELAY_S` (0 by default, see there; as Centrifugo's
Redis engine batches), or at once when it reaches :data:`BATCH_EVENTS` or :data:`BATCH_BYTES`.
(A node watches a channel from its mirror's first subscriber on; type-level subscribers on other
nodes do not count: their events may wait the window.) Terminal events and registrations wait no
longer than the window; shutdown sends everything. The round trip is one EVALSHA, on a
connection of publishing's own (:class:`hub.redis_pubsub.ScriptWriter`: hiredis, no redis-py
layers; about 20 µs of CPU per round trip instead of 50), of a Lua script that, per event, does
``XADD P s:<ch> <seq>-0 d <payload>`` and
``PUBLISH P ch:<ch> <payload>`` (both or neither), and on the terminal event marks the meta
``finished``, removes the channel from ``P owned:<node>`` and expires both keys
``retention_s + 60`` s later. An event is written only while the meta exists and is not
``finished``, and its explicit ID must exceed the stream's last: a writer that other nodes
declared lost, or a duplicate resend, is fenced (that XADD error skips the event); any other
error (``OOM`` past ``maxmemory``...) ends the script with that error, what it wrote before
staying (a resend of it is fenced). One batch is in flight while the next
accumulates; a batch holds at most :data:`BATCH_EVENTS` events or :data:`BATCH_BYTES` bytes.
:attr:`RedisBroker.round_trips` and :attr:`RedisBroker.events_sent` count them.

The scripts touch keys they do not declare (one per channel of a batch), so the broker needs
one Redis (with replicas if wanted), not a Redis Cluster.

**Live delivery to other nodes: PUB/SUB**, not XREAD on each stream: one connection per node
(:class:`hub.redis_pubsub.PubSubReader`, the hub's own reader: an asyncio protocol that parses
with hiredis and hands every frame of one read over at once, then the subscribers here are
flushed once) carries every channel it mirrors, Redis pushes each event once to each interested node and
nothing to the others, and XREAD would need a blocking connection (or a polling loop) per
channel group. PUB/SUB loses what it carries while a node is disconnected; the stream closes
such gaps (below).

**Subscribing to a channel run elsewhere** (:meth:`RedisBroker.attach`, awaited by the session
before its usual synchronous subscribe): read ``P meta:<ch>`` (absent: unknown channel), open
a local mirror channel with the owner's epoch (so cursors from any node are valid) marked
pending (live events are buffered), SUBSCRIBE ``P ch:<ch>`` and wait for Redis to confirm it,
then in one MULTI the meta's snapshot and the stream (XRANGE), then with no await: the
stream's events, the buffered events after them, then live. Each live event must be the
mirror's last seq + 1; a gap (lost PUB/SUB messages) switches the mirror back to pending and
fills it from the stream. Every subscriber here gets the owning node's bytes, seq and
coalescing. A mirror is dropped when its last local subscriber leaves.

**Snapshots from Redis.** Once a channel's history starts evicting on its owner, the owner
writes the run's snapshot (``snapshot`` / ``workflow_snapshot``, the same message a local
subscriber would get) into ``P meta:<ch>`` field ``snap`` and publishes it on ``P ch:<ch>``:
at the first eviction, then every quarter of ``history_max_events`` events or of
``completion_max_buffered_bytes`` bytes, from the event loop iteration after the events (so the
run's state matches the snapshot's ``seq``). With it the owner trims the stream: ``XTRIM MINID``
to the oldest event its own history holds (count, bytes and age bounds) but never past the
snapshot's ``seq`` + 1, so the snapshot plus the stream always cover the whole run (the stream
holds at most a quarter of the bounds more than the history). A mirror keeps the latest
snapshot it read or received and trims its history by the same bounds, never past that
snapshot; a cursor older than what it holds gets that snapshot then the events after it
(``recovered: false``), as on the owner. ``agent:`` channels have no snapshot (as in memory):
their history is trimmed by the bounds alone.

**Cluster-wide ids**: :meth:`RedisBroker.claim` creates ``P meta:<ch>`` only if it does not
exist (a Lua script), before the run is opened; a channel whose id the hub chose is
registered in its first batch instead (96 random bits do not collide).

**Cancel from any node**: :meth:`RedisBroker.control` on a mirror publishes ``{"op": "cancel",
"channel", "code", "message"}`` to ``P ctl:<owner node>``; that node calls the channel's
control handler, and the run's ``cancelled`` error reaches every node over ``P ch:<ch>``.

**The grace period counts every node**: a mirror's first subscriber publishes ``{"op":
"watch", "channel", "node"}`` to the owner (``unwatch`` when the mirror is dropped before the
run ends); the owner calls the run's ``on_subscribe`` (its grace period stops) and runs its
``on_idle`` only when neither its own subscribers nor any watching node is left. Watchers whose
heartbeat is gone are forgotten by the keepalive.

**Type-level subscriptions** (``streams``): while a node has a type-level subscriber of
``completion``, ``workflow`` or ``agent_status`` it PSUBSCRIBEs ``P ch:<kind>:*`` and hands every
event of a channel run on another node to them (snapshots excepted); one that also watches the
channel's mirror gets the event from the mirror only (mirrors never fan out to type-level
subscribers). Live only, as in memory, from when Redis has the PSUBSCRIBE (a round trip).

**Node liveness.** Every node sets ``P node:<id>`` with ``PX`` = 3/4 of
``broker.node_timeout_s`` every 1/4 of it, and every 1/8 of it checks the heartbeats of the
nodes in ``P nodes``. A node whose heartbeat is gone is lost: the first survivor to notice runs
one Lua script that, for each channel in the lost node's ``P owned:<node>`` still owned by it
and not ``finished`` (and only while its heartbeat is still absent), takes the next seq from
the stream's last entry ID, XADDs ``error`` ``node_lost`` (retryable) with that explicit ID,
marks the meta ``finished`` with the usual expiry, and PUBLISHes it. The script is atomic and
the entry ID is explicit, so two survivors never both write it and a late write of the lost
node is refused: every subscriber, mirrors and later subscribers alike, gets the owner's events
that reached Redis, then the same ``node_lost``, once. A channel nobody mirrors is finished the
same way. A node declared lost while it was only silent (a stalled event loop) keeps serving
its local subscribers; its later writes are fenced.

**Redis lost while running** (a write, a ping or the PUB/SUB connection fails): nothing crashes.
Channels run here keep streaming to local subscribers; their events wait in the batch (at most
:data:`UNSENT_MAX_EVENTS` events / :data:`UNSENT_MAX_BYTES` bytes: past that the oldest
non-terminal events are dropped, counted in :attr:`RedisBroker.events_dropped`, and the stream
will have a gap there). The keepalive task pings every 1/8 of ``node_timeout_s``; when Redis
answers again the node re-registers its unfinished channels (a restarted Redis may have lost
them) and sends what waited. The PUB/SUB connection re-subscribes on its own (every
``pause`` = min(0.5 s, 1/8 of ``node_timeout_s``) it connects again and subscribes to every
channel and pattern it holds); each
mirror, pending meanwhile, fills itself from the stream once its subscription is confirmed. When
the stream cannot cover a mirror's gap, its subscribers get ``error`` ``stream_gap`` (retryable,
without ``seq``) and the mirror is dropped: subscribing again gives what Redis holds (a
snapshot, ``recovered: false``). New completions are refused meanwhile (their id cannot be
claimed: ``hub_overloaded``, retryable) and :meth:`RedisBroker.health` reports ``connected``
false (``/healthz`` says ``degraded``).

**Redis refusing writes** while it answers (``OOM`` past ``maxmemory`` with ``noeviction``,
``READONLY``, ``MISCONF``: :attr:`RedisBroker.refused`): the same, except that a ping cannot
tell when it ends: the refused batch waits with the rest (same caps) and the keepalive sends it
again every 1/8 of ``node_timeout_s``; ``/healthz`` gives the reason. A living heartbeat is
renewed with PEXPIRE, which Redis allows when full: a full Redis declares nobody lost.

URLs and Redis messages in logs and errors have ``broker.url``'s password masked
(:func:`hub.config.mask_url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError, ResponseError

from hub.broker import ControlHandler
from hub.channel import Channel, EncodedEvent, HistoryBounds, stream_type_of
from hub.config import mask_url
from hub.multiplexer import StreamMultiplexer
from hub.redis_pubsub import PubSubReader, ScriptWriter
from protocol.errors import ErrorCode, HubError
from protocol.messages import (
    HUB_DECODER,
    ChoiceSnapshot,
    CitationMessage,
    Completed,
    ContentChunk,
    Cursor,
    ErrorInfo,
    ErrorMessage,
    RefusalChunk,
    Snapshot,
    ThinkingStatus,
    ToolCallMessage,
    WorkflowCompleted,
    WorkflowSnapshot,
    encode,
)

__all__ = ["RedisBroker", "BrokerUnavailable", "PUBLISH_DELAY_S", "PUBLISH_DELAY_WATCHED_S", "BATCH_EVENTS",
           "BATCH_BYTES", "UNSENT_MAX_EVENTS", "UNSENT_MAX_BYTES"]

log = logging.getLogger("cbhub.broker")

#: How long a publish batch may wait for more events (s) when no other node watches its
#: channels (its subscribers here are fed before). 0 (off): what a batch holds is not in Redis
#: yet, and a client that moves to another node within the window with a cursor past what Redis
#: holds gets those events twice there (the mirror is behind its cursor, then they arrive live):
#: tests/test_resume.py's redis2 variant at random points fails at 1 ms on a quiet machine.
#: Measured at 1000 paced streams x 10 tokens/s on 2 nodes, one subscriber each on its owning
#: node: 0.117 round trips per delivered event at 0 or 1 ms, 0.066 at 2 ms. A mirror now holds
#: back a subscriber whose cursor is ahead of it until it catches up (:data:`CURSOR_WAIT_S`), and
#: the random-point resume test passes at 2 ms; it stays 0 because at 2 ms a late subscriber on
#: another node is acknowledged with a seq behind the owner's for up to the window
#: (test_resume's late-subscriber test, redis2), which is not yet decided to be acceptable.
PUBLISH_DELAY_S = 0.0
#: How long a subscribe whose cursor is ahead of this node's copy of a channel run elsewhere
#: waits for that copy to catch up (s; :meth:`RedisBroker.attach`). The owner sends each batch
#: within a round trip, so a wait is a few ms; past this the cursor is taken as it is (as in
#: memory, a cursor ahead of the channel replays nothing).
CURSOR_WAIT_S = 2.0
#: The same for a batch holding an event of a channel another node watches (0: sent at the end
#: of the event-loop iteration; its subscribers wait for it).
PUBLISH_DELAY_WATCHED_S = 0.0
#: The most events one round trip carries.
BATCH_EVENTS = 500
#: The most payload bytes one round trip carries (a batch takes at least one event).
BATCH_BYTES = 1 << 20
#: Connections to Redis per node at most (beside them, callers wait up to node_timeout_s).
POOL_CONNECTIONS = 200
#: The most events kept for Redis while it is unreachable (then the oldest are dropped).
UNSENT_MAX_EVENTS = 100_000
#: The most payload bytes kept for Redis while it is unreachable.
UNSENT_MAX_BYTES = 64 << 20

#: Per op, five arguments: kind, channel, a, b, c. Kinds: ``e`` event (a: seq, b: payload),
#: ``f`` terminal event (same), ``m`` register a channel unless registered (a: epoch, b: owner
#: subject, c: parent channel or ''; the meta's ``kind`` is the name's part before ``:``), ``x``
#: mark a channel finished without an event (an agent channel when its workflow ends), ``s``
#: snapshot (a: its seq, b: its payload or '' for none, c: the stream's new MINID seq or ''; also
#: after the terminal event, which may share its batch, but never once another node wrote node_lost).
#: ARGV[1..4]: prefix, stream MAXLEN (a safety net), seconds to keep a finished channel, node.
_PUBLISH_LUA = """
local p = ARGV[1]
local maxlen = ARGV[2]
local ttl = tonumber(ARGV[3])
local node = ARGV[4]
local owned = p .. 'owned:' .. node
local clock = redis.call('TIME')
local ms = clock[1] .. string.format('%03d', math.floor(clock[2] / 1000))
local lives = {}  -- per channel: its meta exists, is not finished and names this node
local written = 0
for i = 5, #ARGV, 5 do
  local kind, name, a, b, c = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local meta = p .. 'meta:' .. name
  local stream = p .. 's:' .. name
  if kind == 'm' then
    if redis.call('EXISTS', meta) == 0 then
      redis.call('HSET', meta, 'epoch', a, 'node', node, 'owner', b, 'kind', string.match(name, '^[^:]*'),
                 'state', 'running')
      if c ~= '' then redis.call('HSET', meta, 'parent', c) end
      redis.call('SADD', owned, name)
    end
    lives[name] = nil
  else
    local live = lives[name]
    if live == nil then
      local got = redis.call('HMGET', meta, 'state', 'node')
      live = got[1] ~= false and got[1] ~= 'finished' and got[2] == node
      lives[name] = live
    end
    if kind == 'x' then
      if live then
        lives[name] = false
        redis.call('HSET', meta, 'state', 'finished')
        redis.call('EXPIRE', meta, ttl)
        redis.call('EXPIRE', stream, ttl)
        redis.call('SREM', owned, name)
      end
    elseif kind == 's' then
      local got = redis.call('HMGET', meta, 'state', 'node', 'lost')
      if got[1] and got[2] == node and not got[3] then
        if b ~= '' then
          redis.call('HSET', meta, 'snap', b)
          redis.call('PUBLISH', p .. 'ch:' .. name, b)
        end
        if c ~= '' then redis.call('XTRIM', stream, 'MINID', c .. '-0') end
      end
    elseif live then
      local added = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, a .. '-0', 'd', b, 't', ms)
      if type(added) == 'table' and added.err then
        -- Fenced (an ID not above the stream's top: a resend, or a writer declared lost) is
        -- skipped; any other error (OOM past maxmemory...) ends the script with it: what this
        -- batch wrote before stays, and a resend of it is fenced by its explicit IDs.
        if not string.find(added.err, 'equal or smaller', 1, true) then return redis.error_reply(added.err) end
      else
        redis.call('PUBLISH', p .. 'ch:' .. name, b)
        written = written + 1
        if kind == 'f' then
          lives[name] = false
          redis.call('HSET', meta, 'state', 'finished')
          redis.call('EXPIRE', meta, ttl)
          redis.call('EXPIRE', stream, ttl)
          redis.call('SREM', owned, name)
        end
      end
    end
  end
end
return written
"""

#: KEYS[1]: the meta hash, KEYS[2]: the node's owned set; ARGV: epoch, node, owner, kind,
#: channel. 1 when created, 0 when it existed.
_CLAIM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'node', ARGV[2], 'owner', ARGV[3], 'kind', ARGV[4],
           'state', 'claimed')
redis.call('SADD', KEYS[2], ARGV[5])
return 1
"""

#: KEYS[1]: this node's heartbeat key, KEYS[2]: the nodes set; ARGV: PX ms, node id.
#: Returns 1 when the heartbeat still existed (0: it had expired, or Redis lost it). A living
#: heartbeat is only given a new PEXPIRE, which Redis allows past ``maxmemory`` (SET and SADD it
#: refuses): a node beats on while Redis is full, so nobody declares it lost for that.
_BEAT_LUA = """
local existed = redis.call('EXISTS', KEYS[1])
if existed == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0 then redis.call('SADD', KEYS[2], ARGV[2]) end
return existed
"""

#: ARGV: prefix, the lost node, seconds to keep a finished channel, then per channel three:
#: name, the node_lost payload before its seq, after it. Returns the channels it ended, or -1
#: when the node's heartbeat is back.
_REAP_LUA = """
local p, node, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('EXISTS', p .. 'node:' .. node) == 1 then return -1 end
local owned = p .. 'owned:' .. node
local ended = 0
for i = 4, #ARGV, 3 do
  local name = ARGV[i]
  local meta = p .. 'meta:' .. name
  local state = redis.call('HGET', meta, 'state')
  if state and state ~= 'finished' and redis.call('HGET', meta, 'node') == node then
    local stream = p .. 's:' .. name
    local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
    local seq = 1
    if #last > 0 then seq = tonumber(string.match(last[1][1], '^(%d+)')) + 1 end
    local payload = ARGV[i + 1] .. seq .. ARGV[i + 2]
    local clock = redis.call('TIME')
    local ms = clock[1] .. string.format('%03d', math.floor(clock[2] / 1000))
    redis.call('XADD', stream, seq .. '-0', 'd', payload, 't', ms)
    redis.call('HSET', meta, 'state', 'finished', 'lost', '1')
    redis.call('EXPIRE', meta, ttl)
    redis.call('EXPIRE', stream, ttl)
    redis.call('PUBLISH', p .. 'ch:' .. name, payload)
    ended = ended + 1
  end
  redis.call('SREM', owned, name)
end
if redis.call('SCARD', owned) == 0 then redis.call('SREM', p .. 'nodes', node) end
return ended
"""

#: The channels replicated through Redis: completions, workflow runs and their agents (the
#: ``system`` channel is each node's own).
_REPLICATED_PREFIXES = ("completion:", "workflow:", "agent:")
#: A mirror's own history bound is applied by the broker (never past its snapshot).
_UNBOUNDED = HistoryBounds(1 << 62)
#: Stands for the seq in a node_lost payload template.
_SEQ_MARK = 7_340_007_340_007

_Op = tuple[str, str, str, bytes | str, str]


def _replicated(name: str) -> bool:
    return name.startswith(_REPLICATED_PREFIXES)


def _refuses_writes(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing writes for now while it answers: ``OOM`` (used memory
    past ``maxmemory`` with ``noeviction``), ``READONLY`` (a replica), ``MISCONF`` (a failed
    RDB save with ``stop-writes-on-bgsave-error``). Such a write is kept and tried again."""
    return isinstance(exc, (OutOfMemoryError, ReadOnlyError)) or (
        isinstance(exc, ResponseError) and str(exc).startswith("MISCONF"))


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that a Redis call turned into an error: redis-py's socket
    timeouts (``asyncio.timeout``) can raise TimeoutError, an OSError, for a task cancelled
    while it waited, and a loop that takes OSError as "Redis is unreachable" would go on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class BrokerUnavailable(ConnectionError):
    """Redis did not answer at start (``cbhub serve`` exits 2 with this message, which names
    ``broker.url``)."""


class _Mirror:
    """What a node knows of a channel another node runs: the owner, whether the mirror is
    being filled from the stream (live events wait in ``buffer`` meanwhile), and ``snapshot``:
    the state of the run up to a seq from which the history holds every event (a completion's
    folds the events its history drops; a workflow's is the owner's latest from Redis)."""

    __slots__ = ("channel", "node", "owner", "pending", "buffer", "finished", "topic", "live", "filling",
                 "snapshot", "later", "snapshots", "folds", "watching", "waiters")

    def __init__(self, channel: Channel, node: str, owner: str, topic: bytes) -> None:
        self.channel = channel
        self.node = node
        self.owner = owner
        self.topic = topic
        self.pending = True
        self.buffer: list[EncodedEvent] = []
        self.finished = False
        self.live = False  # filled once: a gap is history Redis no longer holds, not a loss
        self.filling = False
        kind, _, ident = channel.name.partition(":")
        self.snapshots = kind != "agent"  # an agent channel has no snapshot, as in memory
        self.folds = kind == "completion"  # a completion's state is its events folded
        # The state before the history's first event: a completion's from seq 0 on (a _Folded);
        # a workflow's: the owner's latest WorkflowSnapshot from Redis.
        self.snapshot: Any = _Folded(Snapshot(ident, channel.name, channel.epoch, 0)) if self.folds else None
        self.later: Any = None  # one received ahead of the events it reflects
        # Subscribes waiting for a cursor read elsewhere: (its seq, resolved when reached).
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.watching = False  # the owner was told that this node has subscribers

    @property
    def snap_seq(self) -> int:
        return self.snapshot.seq if self.snapshot is not None else 0

    def current_snapshot(self) -> Any:
        """The channel's snapshot source: a completion's state after every non-terminal event
        held; a workflow's latest snapshot from Redis (the history after it follows)."""
        if not self.folds:
            return self.snapshot
        return self.snapshot.snapshot(self.channel.history)


def _seq_of(event: EncodedEvent) -> int:
    return event.seq


def _is_terminal(event: EncodedEvent) -> bool:
    """Whether ``event`` ends its channel: ``completed``, ``workflow_completed``, or an
    ``error`` with a ``seq`` (a completion's or a workflow run's)."""
    message = event.message
    return isinstance(message, (Completed, WorkflowCompleted)) or (
        isinstance(message, ErrorMessage) and message.seq is not None)


class _Folded:
    """A completion's state built from its events as hub/completions.py builds a run's: the
    text, reasoning, tool calls, refusal and citations up to ``seq`` (the last non-terminal
    event folded in), of choice 0, and ``others``: the same of each choice above 0 (``n``
    above 1; docs/PROTOCOL.md "Choices"; a citation of such a choice is not kept, as on the
    owning node). Kept as lists, so folding one event costs no copy of the text."""

    __slots__ = ("completion_id", "channel", "epoch", "seq", "content", "reasoning", "tool_calls", "refusal",
                 "citations", "others")

    def __init__(self, base: Snapshot) -> None:
        self.completion_id = base.completion_id
        self.channel = base.channel
        self.epoch = base.epoch
        self.seq = base.seq
        self.content = [base.content]
        self.reasoning = [base.reasoning]
        self.tool_calls = list(base.tool_calls)
        self.refusal = [base.refusal]
        self.citations = list(base.citations)
        # choice -> (content, reasoning, tool calls, refusal) of a choice above 0
        self.others: dict[int, tuple[list[str], list[str], list[ToolCallMessage], list[str]]] = {
            other.choice: ([other.content], [other.reasoning], list(other.tool_calls), [other.refusal])
            for other in base.choices}

    def add(self, event: EncodedEvent) -> None:
        """Fold in one event after :attr:`seq` (a terminal one changes nothing)."""
        if event.seq <= self.seq or _is_terminal(event):
            return
        message = event.message
        choice = getattr(message, "choice", 0)
        if choice:
            content, reasoning, tool_calls, refusal = self.others.setdefault(choice, ([], [], [], []))
            match message:
                case ContentChunk():
                    content.append(message.content)
                case ThinkingStatus():
                    reasoning.append(message.content)
                case ToolCallMessage():
                    tool_calls.append(message)
                case RefusalChunk():
                    refusal.append(message.content)
            self.seq = event.seq
            return
        match message:
            case ContentChunk():
                self.content.append(message.content)
            case ThinkingStatus():
                self.reasoning.append(message.content)
            case ToolCallMessage():
                self.tool_calls.append(message)
            case RefusalChunk():
                self.refusal.append(message.content)
            case CitationMessage():
                self.citations.append(message.citation)
        self.seq = event.seq

    def snapshot(self, events: Any = ()) -> Snapshot:
        """The ``snapshot`` message of this state with ``events`` (after it, in seq order)
        folded in too; this state is left as it is."""
        if not events:
            choices = [ChoiceSnapshot(choice, "".join(content), "".join(reasoning), list(tool_calls),
                                      "".join(refusal))
                       for choice, (content, reasoning, tool_calls, refusal) in sorted(self.others.items())]
            return Snapshot(self.completion_id, self.channel, self.epoch, self.seq, "".join(self.content),
                            "".join(self.reasoning), list(self.tool_calls), "".join(self.refusal),
                            list(self.citations), choices)
        more = _Folded(self.snapshot())
        for event in events:
            if _is_terminal(event):
                break
            more.add(event)
        return more.snapshot()


def _ids_of(name: str, parent: str | None) -> tuple[str | None, str | None]:
    """``(completionId, workflowId)`` for messages about channel ``name``."""
    kind, _, ident = name.partition(":")
    if kind == "completion":
        return ident, None
    if kind == "workflow":
        return None, ident
    return None, parent.partition(":")[2] if parent else None


def node_lost_template(name: str, parent: str | None) -> tuple[bytes, bytes]:
    """The ``error`` ``node_lost`` payload of channel ``name`` cut around its seq (the Lua
    script that writes it puts the next seq in between).

    Args:
        name: the channel (``completion:<id>``, ``workflow:<id>``, ``agent:<wf>.<agent>``).
        parent: an agent channel's ``workflow:`` channel (its id goes in ``workflowId``).

    Returns:
        ``(head, tail)``: the JSON bytes before and after the seq.
    """
    completion_id, workflow_id = _ids_of(name, parent)
    info = ErrorInfo(ErrorCode.NODE_LOST, f"the hub node running {name} stopped answering; retry", True)
    payload = encode(ErrorMessage(info, completion_id, _SEQ_MARK, workflow_id=workflow_id))
    head, tail = payload.split(str(_SEQ_MARK).encode(), 1)
    return head, tail


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
        node_timeout_s: ``broker.node_timeout_s``: a node silent this long (at most) is lost.

    Attributes:
        node_id: this node's random id (its control channel is ``<prefix>ctl:<node_id>``).
        connected: False while Redis is unreachable (a write, ping or PUB/SUB read failed).
        refused: why Redis refuses this node's writes while it answers (``OOM`` past
            ``maxmemory``, ``READONLY``, ``MISCONF``), None when it takes them: the batch waits
            as while Redis is unreachable and is tried again every 1/8 of ``node_timeout_s``.
        publish_delay_s: the publish window (:data:`PUBLISH_DELAY_S`; 0 sends at the end of
            every event-loop iteration), s.
        publish_delay_watched_s: the same for batches with an event another node watches
            (:data:`PUBLISH_DELAY_WATCHED_S`), s.
        round_trips: publish round trips sent to Redis so far.
        events_sent: events those round trips carried.
        events_dropped: events never sent to Redis (dropped past the unsent caps).
        nodes_lost: channels this node ended with ``node_lost`` for lost nodes.
        gaps: mirrors ended with ``stream_gap``.
    """

    distributed = True

    def __init__(self, url: str, prefix: str, bounds: HistoryBounds, retention_s: float,
                 flush: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 node_timeout_s: float = 5.0) -> None:
        super().__init__(flush, clock)
        self.url = url
        self.prefix = prefix
        self.bounds = bounds
        self.retention_s = retention_s
        self.node_timeout_s = node_timeout_s
        self.node_id = secrets.token_hex(8)
        self.connected = False
        self.refused: str | None = None
        self.round_trips = 0
        self.events_sent = 0
        self.events_dropped = 0
        self.nodes_lost = 0
        self.gaps = 0
        self._redis: aioredis.Redis | None = None
        self._writer: ScriptWriter | None = None  # publishing's own connection
        self._pubsub: PubSubReader | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._pubsub_broken = False
        self._publish_script: Any = None
        self._claim_script: Any = None
        self._beat_script: Any = None
        self._reap_script: Any = None
        self._batch: list[_Op] = []
        self._batch_bytes = 0
        self._batch_events = 0
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None  # the publish window's end
        self._batch_started: float | None = None  # loop time of the oldest op waiting
        self._urgent = False  # the batch holds an event another node waits for
        self.publish_delay_s = PUBLISH_DELAY_S
        self.publish_delay_watched_s = PUBLISH_DELAY_WATCHED_S
        self._inflight: asyncio.Task[None] | None = None
        self._replicated: set[str] = set()
        self._ended: set[str] = set()  # replicated channels run here whose end was batched
        self._done: set[str] = set()  # ... and written to Redis
        self._claimed: dict[str, tuple[str, str]] = {}  # channel -> (epoch, owner), claimed, not opened yet
        self._owners: dict[str, str] = {}  # replicated channel run here -> owner subject
        self._parents: dict[str, str] = {}  # agent channel run here -> its workflow channel
        self._children: dict[str, list[str]] = {}  # workflow channel run here -> its agent channels
        self._since_snap: dict[str, list[int]] = {}  # channel run here -> [events, bytes] since its snapshot
        self._snap_due: set[str] = set()
        self._watchers: dict[str, set[str]] = {}  # channel run here -> nodes with subscribers of it
        self._idle_hooks: dict[str, Callable[[], None]] = {}  # channel run here -> its own on_idle
        self._mirrors: dict[str, _Mirror] = {}
        self._by_topic: dict[bytes, _Mirror] = {}
        self._attaching: dict[str, asyncio.Future[None]] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ctl_topic = f"{prefix}ctl:{self.node_id}".encode()

    # Connection.

    async def connect(self) -> None:
        """Connect, load the scripts, listen on this node's control channel, beat once and
        start the keepalive task (heartbeat, lost nodes, reconnection).

        Raises:
            BrokerUnavailable: Redis does not answer at ``url``.
        """
        timeout = max(1.0, self.node_timeout_s)
        # A blocking pool: a burst of claims and attaches (clients moving from a lost node) waits
        # for a connection instead of failing past the pool's size (redis-py's default pool
        # raises MaxConnectionsError at 100 in use). max_connections in the URL wins.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=POOL_CONNECTIONS, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout)
        client = aioredis.Redis.from_pool(pool)
        # Publishing has a connection of its own (one batch is in flight at a time), and no
        # redis-py layers: every publish round trip pays them.
        writer = ScriptWriter(self.url, _PUBLISH_LUA, timeout=timeout)
        pubsub: PubSubReader | None = None
        try:
            await client.ping()
            await writer.ping()
            self._writer = writer
            self._publish_script = writer
            self._claim_script = client.register_script(_CLAIM_LUA)
            self._beat_script = client.register_script(_BEAT_LUA)
            self._reap_script = client.register_script(_REAP_LUA)
            pubsub = PubSubReader(self.url, self._frames, self._pubsub_lost, timeout=timeout,
                                  pause=min(0.5, self.node_timeout_s / 8))
            await pubsub.start()
            pubsub.subscribe(self._ctl_topic)
            self._redis = client
            await self._beat()
        except (RedisError, OSError) as exc:
            self._redis = self._writer = None
            if pubsub is not None:
                await pubsub.close()
            await client.aclose()
            await writer.aclose()
            raise BrokerUnavailable(
                f"broker.url {mask_url(self.url)!r}: Redis does not answer ({self._masked(exc)})") from exc
        self._pubsub = pubsub
        self.connected = True
        loop = asyncio.get_running_loop()
        self._keeper = loop.create_task(self._keepalive(), name="redis-broker-keepalive")

    async def close(self) -> None:
        """Send what is batched (for up to ``node_timeout_s`` while Redis is unreachable),
        drop the heartbeat (and leave the node set when every run here has ended: else a
        survivor ends the rest with ``node_lost`` at once), then disconnect (shutdown)."""
        try:
            deadline = asyncio.get_running_loop().time() + self.node_timeout_s
            while self._redis is not None and (self._batch or self._inflight is not None):
                if self._inflight is not None:
                    await asyncio.gather(self._inflight, return_exceptions=True)
                elif not self.connected or self.refused is not None:
                    if asyncio.get_running_loop().time() > deadline:
                        log.warning("shutting down with %d events never sent to Redis", self._batch_events)
                        break
                    await asyncio.sleep(0.05 if not self.connected else self.node_timeout_s / 8)
                    if self.connected:
                        self._send(retry=True)
                else:
                    self._send()
            if self._redis is not None and self.connected:
                with contextlib.suppress(RedisError, OSError):
                    async with self._redis.pipeline(transaction=True) as pipe:
                        pipe.delete(f"{self.prefix}node:{self.node_id}")
                        if not self._replicated - self._done:  # nothing left for a survivor to end
                            pipe.srem(f"{self.prefix}nodes", self.node_id)
                            pipe.delete(f"{self.prefix}owned:{self.node_id}")
                        await pipe.execute()
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._keeper is not None:
                self._keeper.cancel()
                await asyncio.wait({self._keeper}, timeout=self.node_timeout_s)
            for task in list(self._tasks):
                task.cancel()
            if self._pubsub is not None:
                await self._pubsub.close()
            if self._redis is not None:
                await self._redis.aclose()
            if self._writer is not None:
                await self._writer.aclose()
            self._redis = self._writer = None

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise BrokerUnavailable(f"broker.url {mask_url(self.url)!r}: not connected")
        return self._redis

    def _masked(self, exc: BaseException) -> str:
        """``exc``'s text with ``broker.url`` and its password masked (:func:`hub.config.mask_url`),
        should a redis-py message ever quote them."""
        text = str(exc).replace(self.url, mask_url(self.url))
        user, colon, password = self.url.partition("://")[2].rpartition("@")[0].partition(":")
        secret = password if colon else user
        for form in (secret, unquote(secret)):
            if len(form) >= 4:
                text = text.replace(form, "***")
        return text

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._quietly(coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quietly(self, coroutine: Awaitable[Any]) -> None:
        try:
            await coroutine
        except (RedisError, OSError) as exc:
            _raise_if_cancelled()
            log.warning("a Redis command failed: %s", self._masked(exc))

    def health(self) -> dict[str, Any]:
        """For ``/healthz``: ``{"kind": "redis", "connected", "reason", "node_id",
        "round_trips", "events_sent", "events_unsent", "bytes_unsent" (payload bytes waiting
        for Redis; not counted by the memory budget), "events_dropped", "mirrors",
        "nodes_lost", "gaps"}``. ``connected`` is False while Redis is unreachable or refuses
        this node's writes (:attr:`refused`; ``/healthz`` then says ``degraded``), ``reason``
        says which (None while connected)."""
        reason = None
        if not self.connected:
            reason = "Redis is unreachable"
        elif self.refused is not None:
            reason = self.refused
        return {"kind": "redis", "connected": reason is None, "reason": reason, "node_id": self.node_id,
                "round_trips": self.round_trips, "events_sent": self.events_sent,
                "events_unsent": self._batch_events, "bytes_unsent": self._batch_bytes,
                "events_dropped": self.events_dropped,
                "mirrors": len(self._mirrors), "nodes_lost": self.nodes_lost, "gaps": self.gaps}

    # Liveness and reconnection.

    async def _keepalive(self) -> None:
        """Every 1/8 of ``node_timeout_s``: ping while disconnected, beat every 1/4 of it,
        try again what Redis refused (:attr:`refused`), end the channels of lost nodes, fill
        again the mirrors whose filling failed."""
        loop = asyncio.get_running_loop()
        tick = self.node_timeout_s / 8
        next_beat = loop.time() + self.node_timeout_s / 4
        while True:
            await asyncio.sleep(tick)
            try:
                if not self.connected:
                    await self._client().ping()
                    self._reconnected()
                if loop.time() >= next_beat:
                    next_beat = loop.time() + self.node_timeout_s / 4
                    await self._beat()  # first: it goes through when Redis is full
                if self.refused is not None and self._inflight is None:
                    if self._batch or self._snap_due:
                        self._send(retry=True)  # clears refused once Redis takes it
                    else:  # what was refused (a claim, a heartbeat, a node_lost) is not kept: probe
                        await self._client().set(f"{self.prefix}probe:{self.node_id}", b"1",
                                                 px=max(1, int(self.node_timeout_s * 1000)))
                        self._accepted()
                await self._reap_lost()
                if not self._pubsub_broken:
                    for mirror in self._mirrors.values():  # a refill that failed is tried again
                        if mirror.pending and mirror.live and not mirror.filling:
                            self._spawn(self._refill(mirror))
            except (RedisError, OSError) as exc:
                _raise_if_cancelled()
                if _refuses_writes(exc):  # Redis answers: a ping would not tell it from health
                    self._refuse(exc)
                else:
                    self._disconnected(exc)
            except Exception:  # a bug of ours must not stop the heartbeat
                log.exception("the Redis broker's keepalive failed")

    async def _beat(self) -> None:
        existed = await self._beat_script(
            keys=[f"{self.prefix}node:{self.node_id}", f"{self.prefix}nodes"],
            args=[max(1, int(self.node_timeout_s * 750)), self.node_id])
        if not existed and self._keeper is not None:
            log.warning("this node's heartbeat had expired (a stall, or Redis lost it): other nodes may have "
                        "ended its unfinished streams with node_lost")

    async def _reap_lost(self) -> None:
        """End the unfinished channels of every node whose heartbeat is gone."""
        client = self._client()
        members: Any = await client.smembers(f"{self.prefix}nodes")
        others = sorted(member.decode() for member in members if member.decode() != self.node_id)
        beating: list[int] = []
        if others:
            async with client.pipeline(transaction=False) as pipe:
                for node in others:
                    pipe.exists(f"{self.prefix}node:{node}")
                beating = await pipe.execute()
        if self._watchers:
            self._forget_watchers({node for node, alive in zip(others, beating, strict=True) if alive})
        for node, alive in zip(others, beating, strict=True):
            if not alive:
                await self._reap(node)

    async def _reap(self, node: str) -> None:
        client = self._client()
        owned: Any = await client.smembers(f"{self.prefix}owned:{node}")
        names = sorted(name.decode() for name in owned)
        agents = [name for name in names if name.startswith("agent:")]
        parents: dict[str, str] = {}
        if agents:
            async with client.pipeline(transaction=False) as pipe:
                for name in agents:
                    pipe.hget(f"{self.prefix}meta:{name}", "parent")
                for name, parent in zip(agents, await pipe.execute(), strict=True):
                    if parent:
                        parents[name] = parent.decode()
        args: list[str | bytes | int] = [self.prefix, node, int(self.retention_s + 60)]
        for name in names:
            head, tail = node_lost_template(name, parents.get(name))
            args += [name, head, tail]
        ended = await self._reap_script(args=args)
        if ended > 0:
            self.nodes_lost += ended
            log.warning("hub node %s is lost: %d of its streams ended with node_lost", node, ended)

    def _disconnected(self, exc: BaseException) -> None:
        if self.connected:
            log.warning("Redis at %s is unreachable (%s): streams run here go on locally; their events wait",
                        mask_url(self.url), self._masked(exc))
        self.connected = False

    def _refuse(self, exc: BaseException) -> None:
        """Redis answers but refuses writes (:func:`_refuses_writes`): hold every write until
        the keepalive's next try succeeds (:attr:`refused`)."""
        said = self._masked(exc)
        code = getattr(exc, "status_code", None)  # redis-py cuts the error code (OOM, READONLY) off the text
        if isinstance(code, str) and not said.startswith(code):
            said = f"{code} {said}"
        if self.refused is None:
            log.warning("Redis at %s refuses writes (%s): streams run here go on locally; their events wait and "
                        "are tried again every %g s", mask_url(self.url), said, self.node_timeout_s / 8)
        self.refused = f"Redis refuses writes ({said})"

    def _accepted(self) -> None:
        if self.refused is not None:
            log.warning("Redis at %s takes writes again", mask_url(self.url))
            self.refused = None

    def _reconnected(self) -> None:
        """Redis answers again: re-register the unfinished channels run here (a restarted
        Redis may have lost them), ahead of the events that waited, send, and follow them
        with each one's snapshot (what Redis lost of its history is then covered)."""
        log.warning("Redis at %s answers again: sending %d events that waited", mask_url(self.url),
                    self._batch_events)
        self.connected = True
        unfinished = sorted(name for name in self._replicated - self._done if name in self.channels)
        again: list[_Op] = [("m", name, self.channels[name].epoch, self._owners.get(name, ""),
                             self._parents.get(name, "")) for name in unfinished]
        self._batch[:0] = again
        self._snap_due.update(unfinished)  # a restarted Redis lost the snapshots: state and trims again
        self._schedule()

    # Channels run here.

    def open_channel(self, name: str, bounds: HistoryBounds, *, on_idle: Callable[[], None] | None = None,
                     on_subscribe: Callable[[], None] | None = None, snapshot: Callable[[], Any] | None = None,
                     control: ControlHandler | None = None) -> Channel:
        """Open a channel run here (see :meth:`hub.broker.Broker.open_channel`); a replicated
        one (completion, workflow, agent) is also written to Redis, with the epoch of its claim
        or, unclaimed, registered in its first batch.

        Raises:
            ValueError: a channel of that name is open (a mirror included).
        """
        if on_idle is not None and _replicated(name):  # idle only when no other node has subscribers either
            self._idle_hooks[name] = on_idle
            on_idle = self._idle_unless_watched(name)
        channel = super().open_channel(name, bounds, on_idle=on_idle, on_subscribe=on_subscribe, snapshot=snapshot,
                                       control=control)
        if _replicated(name):
            self._replicated.add(name)
            claimed = self._claimed.pop(name, None)
            parent = self._parent_of(name) if name.startswith("agent:") else None
            if parent is not None:
                self._children.setdefault(parent, []).append(name)
                self._parents[name] = parent
                self._owners[name] = self._owners.get(parent, "")
            if claimed is not None:
                channel.epoch, self._owners[name] = claimed
            else:
                self._append(("m", name, channel.epoch, self._owners.get(name, ""), parent or ""), 0, 0)
        return channel

    def _idle_unless_watched(self, name: str) -> Callable[[], None]:
        def idle() -> None:
            hook = self._idle_hooks.get(name)
            if hook is not None and not self._watchers.get(name):
                hook()
        return idle

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
        self._ended.discard(name)
        self._done.discard(name)
        self._owners.pop(name, None)
        self._parents.pop(name, None)
        self._children.pop(name, None)
        self._since_snap.pop(name, None)
        self._snap_due.discard(name)
        self._watchers.pop(name, None)
        self._idle_hooks.pop(name, None)
        mirror = self._mirrors.pop(name, None)
        if mirror is not None:
            self._by_topic.pop(mirror.topic, None)
            if mirror.watching and not mirror.finished:
                self._tell(mirror, "unwatch")
            if self._pubsub is not None:
                self._pubsub.unsubscribe(mirror.topic)
        super().close_channel(name)

    async def claim(self, name: str, owner: str) -> bool:
        """Create ``<prefix>meta:<name>`` unless it exists (atomically), with a fresh epoch
        that the channel gets when it is opened here.

        Returns:
            False when the name is taken on some node (``duplicate_id``).

        Raises:
            HubError: ``hub_overloaded`` (retryable) when Redis does not answer or refuses
                writes: the id cannot be reserved, so no new run starts on any node meanwhile.
        """
        if name in self.channels:
            return False
        epoch = secrets.token_urlsafe(6)
        try:
            created = await self._claim_script(
                keys=[f"{self.prefix}meta:{name}", f"{self.prefix}owned:{self.node_id}"],
                args=[epoch, self.node_id, owner, name.partition(":")[0], name])
        except (RedisError, OSError) as exc:
            if isinstance(exc, RedisError) and _refuses_writes(exc):  # degraded until a write goes through
                self._refuse(exc)
            log.warning("reserving %s in Redis failed: %s", name, type(exc).__name__)
            raise HubError(f"cannot reserve {name!r} now: the cluster's Redis does not take it ({type(exc).__name__})",
                           ErrorCode.HUB_OVERLOADED, retryable=True) from exc
        if not created:
            return False
        self._claimed[name] = (epoch, owner)
        return True

    def unclaim(self, name: str) -> None:
        """Delete a claim whose run was not created."""
        if self._claimed.pop(name, None) is not None and self._redis is not None:
            self._spawn(self._redis.delete(f"{self.prefix}meta:{name}"))
            self._spawn(self._redis.srem(f"{self.prefix}owned:{self.node_id}", name))

    def trim_history(self, name: str) -> int:
        """As :meth:`hub.multiplexer.StreamMultiplexer.trim_history` for channels run here; a
        mirror is never trimmed (its snapshot would no longer meet its history): one nobody
        here watches is dropped instead (Redis still holds it)."""
        mirror = self._mirrors.get(name)
        if mirror is None:
            return super().trim_history(name)
        if mirror.channel.subscribers or name in self._attaching:
            return 0
        held = mirror.channel.history_bytes
        self.close_channel(name)
        return held

    # Publishing.

    def publish(self, channel: Channel, event: EncodedEvent) -> None:
        """Record and fan out here (as in memory); an event of a channel run here and
        replicated is also batched for Redis."""
        super().publish(channel, event)
        name = channel.name
        if name in self._replicated:
            if self._watchers.get(name):  # another node's subscribers wait for it: no hold
                self._urgent = True
            size = len(event.payload)
            if _is_terminal(event):
                self._ended.add(name)
                self._append(("f", name, str(event.seq), event.payload, ""), 1, size)
                for child in self._children.get(name, ()):  # a workflow's end ends its agent channels
                    self._ended.add(child)
                    self._append(("x", child, "", "", ""), 0, 0)
                return
            self._append(("e", name, str(event.seq), event.payload, ""), 1, size)
            history = channel.history
            if history and history[0].seq > 1:  # evicting: Redis needs a snapshot and a trim
                counts = self._since_snap.get(name)
                if counts is None:
                    self._snap_due.add(name)
                    self._since_snap[name] = [0, 0]
                else:
                    counts[0] += 1
                    counts[1] += size
                    bounds = channel.bounds
                    if counts[0] * 4 >= bounds.max_events or (
                            bounds.max_bytes is not None and counts[1] * 4 >= bounds.max_bytes):
                        self._snap_due.add(name)

    def _append(self, op: _Op, events: int, size: int) -> None:
        if not self._batch:
            self._batch_started = asyncio.get_running_loop().time()
        self._batch.append(op)
        self._batch_bytes += size
        self._batch_events += events
        if (not self.connected or self.refused is not None) and (
                self._batch_events > UNSENT_MAX_EVENTS or self._batch_bytes > UNSENT_MAX_BYTES):
            self._shed()
        self._schedule()

    def _schedule(self) -> None:
        """Have :meth:`_send` run: at the end of this event-loop iteration when the batch holds
        an event another node waits for, is full, or has waited :attr:`publish_delay_s`; else
        when its oldest op has waited that long (one batch in flight at a time)."""
        if self._scheduled or self._inflight is not None or not self.connected or self.refused is not None:
            return
        loop = asyncio.get_running_loop()
        wait = 0.0
        if self._batch_events < BATCH_EVENTS and self._batch_bytes < BATCH_BYTES:
            started = self._batch_started
            delay = self.publish_delay_watched_s if self._urgent else self.publish_delay_s
            wait = delay - (loop.time() - started if started is not None else 0.0)
        if wait > 0:
            deadline = loop.time() + wait
            if self._timer is None or self._timer.when() > deadline:  # an earlier end wins
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(deadline, self._send)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._scheduled = True
        loop.call_soon(self._send)

    def _shed(self) -> None:
        """Past the unsent caps: drop the oldest quarter of the waiting non-terminal events
        (their stream will have a hole: mirrors that were live report it as ``stream_gap``;
        a snapshot of each such channel follows what is left, so later subscribers get it)."""
        target = max(1, self._batch_events // 4)
        kept: list[_Op] = []
        dropped = 0
        for op in self._batch:
            if dropped < target and op[0] == "e":
                dropped += 1
                self._batch_bytes -= len(op[3])
                self._snap_due.add(op[1])  # a snapshot sent with what is left stands for the hole
                continue
            kept.append(op)
        self._batch = kept
        self._batch_events -= dropped
        self.events_dropped += dropped
        log.warning("Redis is unreachable or refuses writes: dropped the %d oldest events waiting for it (%d "
                    "dropped so far)", dropped, self.events_dropped)

    def _snapshot_ops(self) -> list[_Op]:
        """The due snapshots and stream trims (see the module docstring), taken now: the
        runs' state matches their last published event."""
        ops: list[_Op] = []
        for name in sorted(self._snap_due):
            channel = self.channels.get(name)
            if channel is None or not channel.history:
                continue
            first = channel.history[0].seq
            if channel.snapshot is not None:
                state = channel.snapshot()
                ops.append(("s", name, str(state.seq), encode(state), str(min(first, state.seq + 1))))
            else:
                ops.append(("s", name, "0", "", str(first)))
            self._since_snap[name] = [0, 0]
        self._snap_due.clear()
        return ops

    def _send(self, retry: bool = False) -> None:
        """Send the batch (up to its caps) in one EVALSHA; the rest waits for the next. While
        Redis refuses writes only the keepalive's ``retry`` sends."""
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inflight is not None or self._redis is None or not self.connected or (
                self.refused is not None and not retry):
            return
        if self._snap_due:
            self._batch.extend(self._snapshot_ops())
        if not self._batch:
            return
        batch = self._batch
        cut = len(batch)
        if self._batch_events > BATCH_EVENTS or self._batch_bytes > BATCH_BYTES:
            size = events = cut = 0
            while cut < len(batch) and events < BATCH_EVENTS and size < BATCH_BYTES:
                op = batch[cut]
                cut += 1
                if op[0] in "ef":
                    events += 1
                    size += len(op[3])
        ops, self._batch = batch[:cut], batch[cut:]
        if not self._batch:
            self._batch_started = None
            self._urgent = False
        events = sum(1 for op in ops if op[0] in "ef")
        self._batch_events -= events
        self._batch_bytes -= sum(len(op[3]) for op in ops if op[0] in "ef")
        task = self._inflight = asyncio.get_running_loop().create_task(self._write(ops, events))
        task.add_done_callback(self._sent)

    async def _write(self, ops: list[_Op], events: int) -> None:
        maxlen = 2 * max(1, self.bounds.max_events) + 100  # a safety net: the snapshot trims exactly
        args: list[Any] = [self.prefix, maxlen, int(self.retention_s + 60), self.node_id]
        for op in ops:
            args.extend(op)
        try:
            await self._publish_script(args=args)
        except (RedisError, OSError) as exc:
            if isinstance(exc, ResponseError) and not _refuses_writes(exc):
                # The script failed (a bug of ours): sending it again would fail again.
                log.error("Redis refused a batch of %d events; other nodes miss them: %s", events, self._masked(exc))
                return
            # Kept, and sent again when Redis answers or takes writes (what the script wrote
            # before it stopped is fenced then by its IDs: nothing is delivered twice).
            if _refuses_writes(exc):
                self._refuse(exc)
            else:
                self._disconnected(exc)
            self._batch[:0] = ops
            self._batch_events += events
            self._batch_bytes += sum(len(op[3]) for op in ops if op[0] in "ef")
            if self._batch_events > UNSENT_MAX_EVENTS or self._batch_bytes > UNSENT_MAX_BYTES:
                self._shed()
            return
        self._accepted()
        self.round_trips += 1
        self.events_sent += events
        for op in ops:
            if op[0] in "fx":
                self._done.add(op[1])

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._inflight = None
        if self._batch or self._snap_due:
            self._schedule()

    # Channels run elsewhere.

    async def attach(self, names: list[str], since: dict[str, Cursor] | None = None) -> None:
        """Mirror here the replicated channels (completion, workflow, agent) among ``names``
        that another node runs (module docstring). Concurrent attaches of one channel share
        one mirror. Redis errors are logged and leave the channel unknown here. Then, for
        each cursor of ``since`` ahead of its mirror (:meth:`lagging`: a client that read
        further on another node, before this node got those events from Redis), wait until
        the mirror has it, the run ends, or :data:`CURSOR_WAIT_S` pass; a subscribe after
        it then replays from the cursor with no event missed or repeated."""
        for name in names:
            if name not in self.channels and _replicated(name):
                await self._attach_one(name)
        for name, cursor in (since or {}).items():
            if name in names and self.lagging(name, cursor):
                mirror = self._mirrors[name]
                reached = asyncio.get_running_loop().create_future()
                entry = (cursor.seq, reached)
                mirror.waiters.append(entry)
                try:
                    await asyncio.wait_for(asyncio.shield(reached), CURSOR_WAIT_S)
                except TimeoutError:
                    log.info("%s: cursor seq %d not reached here in %.1f s (seq %d); subscribing anyway",
                             name, cursor.seq, CURSOR_WAIT_S, mirror.channel.last_seq)
                finally:
                    if entry in mirror.waiters:
                        mirror.waiters.remove(entry)

    def lagging(self, name: str, since: Cursor) -> bool:
        """Whether the mirror of ``name`` is behind ``since`` in its epoch and still live
        (see :meth:`hub.broker.Broker.lagging`); False for channels run here."""
        mirror = self._mirrors.get(name)
        return (mirror is not None and not mirror.finished and since.epoch == mirror.channel.epoch
                and since.seq > mirror.channel.last_seq)

    async def _attach_one(self, name: str) -> None:
        """Mirror one channel run elsewhere (:meth:`attach`)."""
        waiting = self._attaching.get(name)
        if waiting is None:
            waiting = self._attaching[name] = asyncio.get_running_loop().create_future()
            try:
                await self._mirror(name)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("mirroring %s from Redis failed: %s", name, exc)
            finally:
                del self._attaching[name]
                waiting.set_result(None)
                mirror = self._mirrors.get(name)
                if mirror is not None and not mirror.live:  # failed or cancelled half-way
                    self.close_channel(name)
        else:
            await asyncio.shield(waiting)

    async def _mirror(self, name: str) -> None:
        client = self._client()
        meta: Any = await client.hgetall(f"{self.prefix}meta:{name}")
        epoch = meta.get(b"epoch")
        if not epoch or name in self.channels:
            return
        channel = super().open_channel(name, _UNBOUNDED, on_idle=lambda: self._idle(name),
                                       on_subscribe=lambda: self._watch(name))
        channel.epoch = epoch.decode()
        topic = f"{self.prefix}ch:{name}".encode()
        mirror = _Mirror(channel, meta.get(b"node", b"").decode(), meta.get(b"owner", b"").decode(), topic)
        if mirror.snapshot is not None:
            channel.snapshot = mirror.current_snapshot
        self._mirrors[name] = mirror
        self._by_topic[topic] = mirror
        confirmed = self._confirmations[topic] = asyncio.get_running_loop().create_future()
        try:
            if self._pubsub is None:
                raise BrokerUnavailable(f"broker.url {mask_url(self.url)!r}: not connected")
            self._pubsub.subscribe(topic)
            await asyncio.wait_for(asyncio.shield(confirmed), 10.0)
        finally:
            self._confirmations.pop(topic, None)
        await self._fill(mirror)

    async def _fill(self, mirror: _Mirror) -> None:
        """Read the snapshot and the stream after the mirror's last seq (one MULTI), then (no
        await) feed them and the buffered live events, and go live. A gap the stream cannot
        close ends the mirror with ``stream_gap`` (a first fill accepts what the stream
        holds: older history is gone, the snapshot stands for it)."""
        channel = mirror.channel
        name = channel.name
        start = f"{channel.last_seq + 1}-0" if channel.last_seq else "-"
        mirror.filling = True
        try:
            async with self._client().pipeline(transaction=True) as pipe:
                pipe.hget(f"{self.prefix}meta:{name}", "snap")
                pipe.xrange(f"{self.prefix}s:{name}", min=start, max="+")
                pipe.time()
                snap, entries, (seconds, micros) = await pipe.execute()
        finally:
            mirror.filling = False
        if self._mirrors.get(name) is not mirror:
            return  # dropped meanwhile
        if snap and mirror.snapshots:
            self._take_snapshot(mirror, HUB_DECODER.decode(snap))
        buffered, mirror.buffer = mirror.buffer, []
        mirror.pending = False
        # An event's age is the owner's write time against Redis's clock now (one clock).
        now_ms = seconds * 1000 + micros // 1000
        clock = self._clock()
        events = []
        for _id, fields in entries:
            event = EncodedEvent(fields[b"d"], HUB_DECODER.decode(fields[b"d"]))
            event.published_at = clock - max(0, now_ms - int(fields.get(b"t", now_ms))) / 1000
            events.append(event)
        for event in buffered:
            event.published_at = clock
        events.extend(sorted(buffered, key=_seq_of))
        fresh = not mirror.live
        mirror.live = True
        if fresh and events and mirror.snap_seq < events[0].seq - 1:  # older history is gone with no state for it
            mirror.snapshot = None
            channel.snapshot = None
        for event in events:
            seq = event.seq
            if seq <= channel.last_seq:
                continue
            if seq != channel.last_seq + 1 and channel.last_seq:
                if not fresh:
                    self._gap(mirror, channel.last_seq + 1, seq - 1)
                    return
                # A hole in the stream (events dropped while Redis was unreachable): the
                # history restarts after it, and a state older than the hole is no use.
                self._history_bytes -= channel.clear()
                if mirror.snap_seq < seq - 1:
                    mirror.snapshot = None
                    channel.snapshot = None
            self._publish_mirrored(mirror, event)
        later = mirror.later
        if later is not None and later.seq <= channel.last_seq:
            mirror.later = None
            self._take_snapshot(mirror, later)
        self.flush()

    def _feed(self, mirror: _Mirror, event: EncodedEvent) -> None:
        """Publish one live event of the owning node into its mirror, in seq order:
        duplicates are dropped; a gap makes the mirror pending and fills it from the stream."""
        if mirror.pending:
            mirror.buffer.append(event)
            return
        channel = mirror.channel
        seq = event.seq
        if seq <= channel.last_seq:
            return
        event.published_at = self._clock()
        if seq != channel.last_seq + 1:
            mirror.pending = True
            mirror.buffer.append(event)
            self._spawn(self._refill(mirror))
            return
        self._publish_mirrored(mirror, event)

    def _publish_mirrored(self, mirror: _Mirror, event: EncodedEvent) -> None:
        """Record one event of the owner (its ``published_at`` set by the caller) and hand it to
        the mirror's subscribers; type-level subscribers get events of channels run elsewhere
        from the type's PUB/SUB pattern instead (:meth:`_take_typed`), once each."""
        channel = mirror.channel
        channel.last_seq = event.seq
        self._history_bytes += channel.record(event, None)
        self._published += 1
        channel.last_publish = self._published
        for subscriber in channel.subscribers:
            subscriber.deliver(event)
        if _is_terminal(event):
            mirror.finished = True
        if mirror.waiters:
            for seq, reached in mirror.waiters:
                if (seq <= event.seq or mirror.finished) and not reached.done():
                    reached.set_result(None)
        later = mirror.later
        if later is not None and later.seq <= channel.last_seq:
            mirror.later = None
            self._take_snapshot(mirror, later)
        else:
            self._trim_mirror(mirror)

    def _take_snapshot(self, mirror: _Mirror, message: Any) -> None:
        """Keep ``message`` (a snapshot of the owner) as the mirror's snapshot once the mirror
        has every event it reflects (else hold it until then)."""
        if not isinstance(message, (Snapshot, WorkflowSnapshot)) or message.seq <= mirror.snap_seq:
            return
        if mirror.pending or message.seq > mirror.channel.last_seq:
            if mirror.later is None or mirror.later.seq < message.seq:
                mirror.later = message
            return
        if mirror.folds and mirror.snapshot is None and (
                not mirror.channel.history or mirror.channel.history[0].seq > message.seq + 1):
            return  # the history does not reach back to it
        mirror.snapshot = _Folded(message) if mirror.folds and isinstance(message, Snapshot) else message
        mirror.channel.snapshot = mirror.current_snapshot
        self._trim_mirror(mirror)

    def _trim_mirror(self, mirror: _Mirror) -> None:
        """Bound a mirror's history like the owner's (count, bytes, age): a completion's
        dropped events are folded into its snapshot; a workflow's history is never trimmed
        past its snapshot from Redis; ``agent:`` channels have none: the bounds alone."""
        channel = mirror.channel
        history = channel.history
        bounds = self.bounds
        max_events = max(1, bounds.max_events)
        horizon = self._clock() - bounds.max_age_s if bounds.max_age_s is not None else None
        while len(history) > 1 and (
                len(history) > max_events
                or (bounds.max_bytes is not None and channel.history_bytes > bounds.max_bytes)
                or (horizon is not None and history[0].published_at < horizon)):
            first = history[0]
            if mirror.snapshots and first.seq > mirror.snap_seq:
                if not (mirror.folds and mirror.snapshot is not None and first.seq == mirror.snap_seq + 1):
                    break  # no state stands for it yet
                mirror.snapshot.add(first)
            dropped = len(history.popleft().payload)
            channel.history_bytes -= dropped
            self._history_bytes -= dropped

    def recoverable(self, name: str, since: Cursor | None = None) -> bool:
        """As :meth:`hub.multiplexer.StreamMultiplexer.recoverable`; a mirror's history is
        first trimmed by its bounds (its age bound included)."""
        mirror = self._mirrors.get(name)
        if mirror is not None:
            self._trim_mirror(mirror)
        return super().recoverable(name, since)

    def _gap(self, mirror: _Mirror, first: int, last: int) -> None:
        """Events ``first`` to ``last`` never reached this node and Redis no longer holds
        them: tell the mirror's subscribers (``stream_gap``) and drop the mirror."""
        name = mirror.channel.name
        self.gaps += 1
        log.warning("events %d to %d of %s were lost while Redis was unreachable", first, last, name)
        completion_id, workflow_id = _ids_of(name, None)
        info = ErrorInfo(ErrorCode.STREAM_GAP, f"events {first} to {last} of {name} were lost while the hub's "
                         "Redis was unreachable; subscribe again with your cursor", True)
        notice = EncodedEvent.of(ErrorMessage(info, completion_id, workflow_id=workflow_id))
        for subscriber in list(mirror.channel.subscribers):
            subscriber.deliver(notice)
        self.close_channel(name)
        self.flush()

    async def _refill(self, mirror: _Mirror) -> None:
        if mirror.filling or self._mirrors.get(mirror.channel.name) is not mirror:
            return
        try:
            await self._fill(mirror)
        except (RedisError, OSError) as exc:  # filled again when the subscription is confirmed
            log.warning("closing a gap of %s from Redis failed: %s", mirror.channel.name, exc)

    def _watch(self, name: str) -> None:
        """A subscriber of a mirror arrived: the owner counts this node as a subscriber (its
        grace period does not start, or stops), once per mirror."""
        mirror = self._mirrors.get(name)
        if mirror is not None and not mirror.watching and not mirror.finished:
            mirror.watching = True
            self._tell(mirror, "watch")

    def _tell(self, mirror: _Mirror, op: str) -> None:
        if self._redis is not None:
            body = json.dumps({"op": op, "channel": mirror.channel.name, "node": self.node_id})
            self._spawn(self._redis.publish(f"{self.prefix}ctl:{mirror.node}", body))

    def _watched(self, name: str, node: str, watching: bool) -> None:
        """Node ``node`` has subscribers of channel ``name`` run here (or has none any more):
        while any node has, the run's grace period does not run."""
        channel = self.channels.get(name)
        if channel is None or name in self._mirrors:
            return
        nodes = self._watchers.setdefault(name, set())
        if watching:
            nodes.add(node)
            if channel.on_subscribe is not None:
                channel.on_subscribe()
            return
        nodes.discard(node)
        if not nodes and not channel.subscribers:
            hook = self._idle_hooks.get(name)
            if hook is not None:
                hook()

    def _forget_watchers(self, alive: set[str]) -> None:
        """Nodes that are gone no longer hold the runs they watched."""
        for name, nodes in list(self._watchers.items()):
            for node in nodes - alive:
                self._watched(name, node, False)

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

    def remote_owner(self, name: str) -> str | None:
        """The owner subject of a mirrored channel, else None."""
        mirror = self._mirrors.get(name)
        return mirror.owner if mirror is not None else None

    # Type-level subscriptions across nodes.

    def _pattern(self, stream_type: str) -> bytes | None:
        kind = {"completion": "completion", "workflow": "workflow", "agent_status": "agent"}.get(stream_type)
        return f"{self.prefix}ch:{kind}:*".encode() if kind is not None else None

    def subscribe_type(self, subscriber: Any, stream_type: str) -> None:
        """As in memory, and events of the channels of ``stream_type`` run on other nodes
        follow too: the node PSUBSCRIBEs ``<prefix>ch:<kind>:*`` while it has a type-level
        subscriber of that type (live only, from when Redis confirms it, a round trip)."""
        had = bool(self.type_subscribers.get(stream_type))
        super().subscribe_type(subscriber, stream_type)
        pattern = self._pattern(stream_type)
        if not had and pattern is not None and self._pubsub is not None:
            self._pubsub.psubscribe(pattern)

    def unsubscribe_type(self, subscriber: Any, stream_type: str) -> None:
        """Undo :meth:`subscribe_type` (the last one of a type stops the pattern)."""
        super().unsubscribe_type(subscriber, stream_type)
        self._unpattern((stream_type,))

    def remove(self, subscriber: Any) -> None:
        """As in memory; type patterns nobody here needs any more are dropped."""
        types = [stream_type for stream_type, subscribers in self.type_subscribers.items() if subscriber in subscribers]
        super().remove(subscriber)
        self._unpattern(types)

    def _unpattern(self, stream_types: Any) -> None:
        for stream_type in stream_types:
            pattern = self._pattern(stream_type)
            if pattern is not None and not self.type_subscribers.get(stream_type) and self._pubsub is not None:
                self._pubsub.punsubscribe(pattern)

    def _take_typed(self, topic: bytes, data: bytes) -> bool:
        """An event of some channel, for the type-level subscribers here: those of a channel
        run here got it from the local fan-out; of one run elsewhere, every type-level
        subscriber that does not also watch its mirror here gets it now."""
        name = topic[len(self.prefix.encode()) + 3:].decode()
        channel = self.channels.get(name)
        if channel is not None and name not in self._mirrors:
            return False
        watchers = self.type_subscribers.get(stream_type_of(name))
        if not watchers:
            return False
        message = HUB_DECODER.decode(data)
        if isinstance(message, (Snapshot, WorkflowSnapshot)):
            return False
        event = EncodedEvent(data, message)
        watching = channel.subscribers if channel is not None else ()
        for subscriber in watchers:
            if subscriber not in watching:
                subscriber.deliver(event)
        return True

    # PUB/SUB.

    def _pubsub_lost(self, exc: BaseException) -> None:
        """The PUB/SUB connection broke (:class:`~hub.redis_pubsub.PubSubReader` connects again
        and re-subscribes on its own): every mirror is pending until its subscription is
        confirmed again, then fills itself from the stream."""
        if not self._pubsub_broken:
            self._pubsub_broken = True
            self._disconnected(exc)
            for mirror in self._mirrors.values():
                mirror.pending = True

    def _frames(self, frames: list[Any]) -> None:
        """Take every PUB/SUB frame of one read (subscribe confirmations, events and
        snapshots of mirrored channels, pattern messages, control commands for this node),
        then flush the subscribers here once: one write per subscriber per read, as on the
        owning node. A frame that is not what Redis sends is logged and skipped."""
        self._pubsub_broken = False
        fed = False
        for frame in frames:
            try:
                fed = self._take(frame) or fed
            except Exception:  # a bug of ours, or bytes Redis would never send: not every mirror stops
                log.exception("handling a Redis PUB/SUB message failed")
        if fed:
            self.flush()

    def _take(self, frame: Any) -> bool:
        """One PUB/SUB frame (hiredis's list); True when something was delivered here."""
        if not isinstance(frame, list) or len(frame) < 3:
            return False
        kind, topic = frame[0], frame[1]
        if kind == b"message":
            data = frame[2]
            if not isinstance(data, bytes):
                return False
            if topic == self._ctl_topic:
                self._command(data)
                return False
            mirror = self._by_topic.get(topic)
            if mirror is None:
                return False
            decoded = HUB_DECODER.decode(data)
            if isinstance(decoded, (Snapshot, WorkflowSnapshot)):
                self._take_snapshot(mirror, decoded)
                return False
            self._feed(mirror, EncodedEvent(data, decoded))
            return True
        if kind == b"pmessage":
            if len(frame) < 4 or not isinstance(frame[2], bytes) or not isinstance(frame[3], bytes):
                return False
            return self._take_typed(frame[2], frame[3])
        if kind == b"subscribe":
            waiting = self._confirmations.get(topic)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
                return False
            mirror = self._by_topic.get(topic)
            if mirror is not None and mirror.pending and mirror.live:  # re-subscribed after a loss
                self._spawn(self._refill(mirror))
        return False

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
        if command in ("watch", "unwatch"):
            self._watched(name, str(body.get("node")), command == "watch")
            return
        argument = None
        if body.get("code"):
            try:
                code = ErrorCode(body["code"])
            except ValueError:
                code = ErrorCode.CANCELLED
            argument = HubError(str(body.get("message") or ""), code)
        super().control(name, command, argument)
