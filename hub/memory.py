"""The memory budget as a running bound: count what the hub holds, and give it back in order.

``limits.memory_budget_bytes`` bounds the stream data the hub holds at any time, not only when
a completion is admitted (docs/PROTOCOL.md "Limits", "Memory budget"). The
:class:`MemoryGovernor` estimates, in bytes:

- **history**: every event held by a channel history. An event is counted as four times its
  payload (the JSON bytes, the WebSocket frame built from them, the message's own text, and
  the allocator's rounding) plus a fixed :data:`EVENT_OVERHEAD_BYTES` for the objects around
  them. Measured with ``tracemalloc``: content chunks of 1 to 10,000 characters cost 3.5 to 4.9
  times their payload; the test ``test_history_estimate_bounds_what_tracemalloc_sees`` keeps
  the estimate between the truth and twice it.
- **snapshot state**: what each completion keeps to build its snapshot (its text, reasoning,
  tool calls), about the encoded size of the messages it came from
  (:attr:`hub.completions.CompletionRun.state_bytes`).
- **outbound**: every client's queued and unsent bytes, WebSocket and SSE alike: a queued
  event costs what a history event does (it keeps its message and frame alive after the
  history let it go, and a merged one exists only there), the transport's unsent bytes count
  as they are (:attr:`hub.outbox.Outbox.pending_bytes`, ``backlog_bytes``).
- **upstream framing**: provider body bytes held until an event completes
  (:attr:`hub.providers.ProviderClient.buffered_bytes`).

It checks every second while use is below half the budget, every 50 ms above that, and as soon
as completions have published a thirty-second of the budget
(:meth:`hub.completions.CompletionManager.watch_growth`: an addition and a comparison per
published content event). Past the budget it relieves, in this order, until use is back under
:data:`LOW_WATER` of the budget:

1. **trim** finished streams' histories to their last event, oldest finished first (a returning
   subscriber then gets the snapshot and the terminal event, ``recovered: false``);
2. **retire** finished streams early, oldest first (their channels close: a returning
   subscriber gets ``unknown_channel``, as after ``retention_s``);
3. **end** the largest running consumers: a completion (history + snapshot state) ends with
   ``error`` ``hub_overloaded`` (retryable), a client connection whose outbound queue is the
   largest is closed with 1013 and reason ``hub_overloaded``.

New completions and workflows are refused with ``hub_overloaded`` while use is over the budget
(:meth:`MemoryGovernor.over_budget`), and admitted again as soon as it is not.

After a relief, once what it ended has gone, the governor asks glibc to hand the freed heap
pages back to the system (``malloc_trim(0)``; nothing on other C libraries): otherwise the
process keeps the peak's pages and its RSS stays at the peak (measured in the 120 s soak:
peak 183 → 167 MiB, after the attack 171 → 143 MiB, with a 64 MiB budget).

What is not counted: the interpreter and the hub's code, each open connection's fixed state,
aiohttp's read buffer of each upstream response (at most 64 KiB, full only while the event
loop falls behind), and the allocator's free lists. docs/PROTOCOL.md states the resulting
constant above the budget (measured by ``tests/test_memory_budget.py``).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from typing import TYPE_CHECKING

import msgspec

from hub.outbox import Outbox
from protocol.errors import CloseCode, ErrorCode, HubError

if TYPE_CHECKING:
    from hub.app import Hub
    from hub.completions import CompletionRun

__all__ = ["EVENT_OVERHEAD_BYTES", "HISTORY_PAYLOAD_FACTOR", "LOW_WATER", "MemoryGovernor", "MemoryUse"]

log = logging.getLogger("cbhub.memory")

#: Bytes an event held in a history costs beside its payload (objects, deque slot).
EVENT_OVERHEAD_BYTES = 300
#: What a held event costs per payload byte: the payload, its frame, the message's text.
HISTORY_PAYLOAD_FACTOR = 4
#: Relief stops once use is at most this share of the budget (hysteresis: relief does not
#: start again with the next event).
LOW_WATER = 0.8
#: Seconds between checks while use is below half the budget, and above it.
IDLE_INTERVAL_S = 1.0
BUSY_INTERVAL_S = 0.05


class MemoryUse(msgspec.Struct, frozen=True):
    """The governor's estimate of what the hub holds, in bytes.

    Attributes:
        history: channel histories (payload, frames, messages, overhead).
        state: completions' snapshot state.
        outbound: clients' queued and unsent bytes.
        upstream: provider bytes held by the framing.
        budget: ``limits.memory_budget_bytes``.
    """

    history: int
    state: int
    outbound: int
    upstream: int
    budget: int

    @property
    def total(self) -> int:
        """Everything counted, in bytes."""
        return self.history + self.state + self.outbound + self.upstream


class MemoryGovernor:
    """Keeps the hub's stream data within ``limits.memory_budget_bytes`` (module docstring).

    Args:
        hub: the running hub (its broker, completion and workflow managers, connections and
            provider client are read at each check).
        budget: the budget in bytes.

    Attributes:
        trimmed, retired, ended: how many finished streams were trimmed and retired, and how
            many running consumers were ended, since start (for /healthz and the soak bench).
    """

    def __init__(self, hub: Hub, budget: int) -> None:
        self.hub = hub
        self.budget = budget
        self.trimmed = 0
        self.retired = 0
        self.ended = 0
        self._handle: asyncio.TimerHandle | None = None
        self._running = False
        # Completions told to end whose task has not ended yet (cancellation takes a loop
        # iteration): counted as freed, never ended twice.
        self._ending: set[CompletionRun] = set()
        self._trim_pending = False

    def start(self) -> None:
        """Begin the periodic checks and watch the histories' growth (on the running loop)."""
        self._running = True
        self.hub.completions.watch_growth(max(1, self.budget // 32), self.check)
        self._schedule(IDLE_INTERVAL_S)

    def stop(self) -> None:
        """No more checks (hub shutdown)."""
        self._running = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, delay_s: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = asyncio.get_running_loop().call_later(delay_s, self._tick)

    def _tick(self) -> None:
        self._handle = None
        if self._running:
            self.check()

    # Counting.

    def use(self) -> MemoryUse:
        """What the hub holds now (an estimate, see the module docstring). O(connections)."""
        hub = self.hub
        broker = hub.broker
        history = HISTORY_PAYLOAD_FACTOR * broker.history_bytes + EVENT_OVERHEAD_BYTES * broker.history_events
        outbound = 0
        for outbox in hub.connections:
            outbound += _outbox_cost(outbox)
        client = hub.provider_client
        return MemoryUse(history, hub.completions.state_bytes, outbound,
                         client.buffered_bytes if client is not None else 0, self.budget)

    def over_budget(self) -> MemoryUse | None:
        """The use when it is over the budget (new work is refused then), else None."""
        use = self.use()
        return use if use.total > self.budget else None

    # Relief.

    def check(self) -> None:
        """Count, relieve if over the budget, and schedule the next check."""
        if not self._running:
            return
        use = self.use()
        if use.total > self.budget:
            self.relieve(use)
            use = self.use()
            self._trim_pending = True
        elif self._trim_pending:
            # What the relief ended has gone by now (a cancelled completion ends one loop
            # iteration later): give its pages back.
            self._trim_pending = False
            _give_back_to_the_system()
        self._schedule(BUSY_INTERVAL_S if use.total > self.budget // 2 else IDLE_INTERVAL_S)

    def relieve(self, use: MemoryUse) -> None:
        """Give memory back in the order of the module docstring until the estimate is at
        most :data:`LOW_WATER` of the budget."""
        target = int(self.budget * LOW_WATER)
        hub = self.hub
        broker = hub.broker
        completions = hub.completions
        workflows = hub.workflows
        total = use.total
        self._ending = {run for run in self._ending if not run.finished}
        for run in self._ending:
            total -= self._channel_cost(run.channel.name) + run.state_bytes  # on its way out
        log.warning("memory budget passed: %d of %d bytes held (history %d, state %d, outbound %d, upstream %d)",
                    total, self.budget, use.history, use.state, use.outbound, use.upstream)
        finished: list[tuple[str, list[str]]] = [
            *(("c:" + run.id, [run.channel.name]) for run in completions.finished_oldest_first()),
            *(("w:" + run.id, run.channel_names()) for run in workflows.finished_oldest_first()),
        ]
        # 1. Trim finished streams' histories to their last event.
        for _, names in finished:
            if total <= target:
                return
            for name in names:
                channel = broker.channel(name)
                if channel is None or len(channel.history) < 2:
                    continue
                events = len(channel.history)
                dropped = broker.trim_history(name)
                total -= HISTORY_PAYLOAD_FACTOR * dropped + EVENT_OVERHEAD_BYTES * (events - len(channel.history))
                self.trimmed += 1
        # 2. Retire finished streams, oldest first.
        for key, _ in finished:
            if total <= target:
                return
            kind, ident = key[:2], key[2:]
            if kind == "c:":
                retained = completions.get(ident)
                if retained is None:
                    continue
                total -= self._channel_cost(retained.channel.name) + retained.state_bytes
                completions.retire(ident)
            else:
                workflow = workflows.get(ident)
                if workflow is None:
                    continue
                total -= sum(self._channel_cost(name) for name in workflow.channel_names())
                workflows.retire(ident)
            self.retired += 1
        if total <= target:
            return
        # 3. End the largest running consumers.
        consumers: list[tuple[int, CompletionRun | Outbox]] = []
        for run in completions.runs.values():
            if not run.finished and run not in self._ending:
                consumers.append((self._channel_cost(run.channel.name) + run.state_bytes, run))
        for outbox in hub.connections:
            held = _outbox_cost(outbox)
            if held and not outbox.closed:
                consumers.append((held, outbox))
        consumers.sort(key=lambda pair: pair[0], reverse=True)
        for held, consumer in consumers:
            if total <= target:
                return
            if isinstance(consumer, Outbox):
                log.warning("closing the connection with the largest outbound queue (%d bytes): hub_overloaded", held)
                consumer.close_now(CloseCode.TRY_AGAIN_LATER, "hub_overloaded: over the memory budget; retry later")
            else:
                log.warning("ending completion %s, the largest running consumer (%d bytes): hub_overloaded",
                            consumer.id, held)
                self._ending.add(consumer)
                consumer.cancel(HubError(
                    "the hub is over its memory budget (limits.memory_budget_bytes) and this completion held the most;"
                    " retry later", ErrorCode.HUB_OVERLOADED, retryable=True))
            total -= held
            self.ended += 1

    def _channel_cost(self, name: str) -> int:
        """The estimated bytes of one channel's history."""
        channel = self.hub.broker.channel(name)
        if channel is None:
            return 0
        return HISTORY_PAYLOAD_FACTOR * channel.history_bytes + EVENT_OVERHEAD_BYTES * len(channel.history)




def _outbox_cost(outbox: Outbox) -> int:
    """The estimated bytes one client's outbound queue holds: its pending events cost what a
    history event does (they keep their message and frame alive even once the history has
    let them go; merged ones exist only here), its transport's unsent bytes count as they are."""
    return HISTORY_PAYLOAD_FACTOR * outbox.pending_bytes + outbox.backlog_bytes


def _load_malloc_trim() -> ctypes._NamedFuncPointer | None:
    """glibc's ``malloc_trim`` (None elsewhere: musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _give_back_to_the_system() -> None:
    """After a relief, hand the heap pages it freed back to the operating system
    (glibc ``malloc_trim(0)``: without it, freed multi-megabyte texts stay in the process's
    heap and its RSS keeps the peak). A few milliseconds, only after a relief."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
