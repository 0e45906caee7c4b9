"""The load generator of ``fanout``, ``limit`` and ``connections``: client processes that hold
many WebSocket connections and measure what they receive.

Each worker is a separate process (``multiprocessing``, spawn) with its own event loop
(uvloop when installed: the client should cost as little as possible, since on a small
machine it saturates before the server does). The parent drives every worker through the
same phases over a pipe, so all connections of all workers are in the same state before the
next phase starts::

    connect   open this worker's connections (aiohttp client, at most 200 handshakes in flight)
    own       owner connections (one per stream) start their stream: a hub ``completion``
              whose upstream waits at the mock provider's gate; the reference server needs none
    subscribe every other connection subscribes to its stream's channel
    measure   the parent opens the gate; each connection reads until its stream's terminal
              message; the worker returns its counts and latency samples

Latency: the mock provider (or the reference server) writes each token as ``@<ns> `` with
``time.monotonic_ns()`` at send time (CLOCK_MONOTONIC, shared by all processes of the
machine); a worker subtracts it from its own ``time.monotonic_ns()`` when the frame arrives.
A coalesced frame carries several stamps: each token's own latency is counted.
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import multiprocessing
import multiprocessing.connection
import re
import time
from typing import Any

import aiohttp
import orjson

__all__ = ["Plan", "WorkerResult", "Workers"]

_STAMP = re.compile(rb"@(\d+) ")
_HANDSHAKES_IN_FLIGHT = 200


@dataclasses.dataclass
class Plan:
    """What one worker does.

    Attributes:
        url: WebSocket URL (``ws://127.0.0.1:PORT/ws/stream`` or the reference server's).
        server: ``hub`` or ``limit`` (the owners' first message differs).
        connections: the global indexes of this worker's connections; connection ``c``
            watches stream ``c % streams`` and owns it when ``c < streams``.
        streams: number of streams in the run.
        prompt: the user message of each hub completion (carries the mock directive);
            ``{offset_ms}`` in it becomes the stream's start offset (see ``stagger_ms``).
        stagger_ms: stream ``i`` starts ``i / streams * stagger_ms`` ms after the gate opens
            (0: all at once).
        coalesce: the hub completion's ``coalesce`` option.
        model: the model name the hub routes to the mock provider.
    """

    url: str
    server: str
    connections: list[int]
    streams: int
    prompt: str = ""
    coalesce: bool = False
    model: str = "gpt-4o-mini"
    stagger_ms: float = 0.0


@dataclasses.dataclass
class WorkerResult:
    """What one worker measured (all connections together).

    Attributes:
        frames: WebSocket frames received during ``measure``.
        events: hub messages received during ``measure`` (several per frame with batching).
        tokens: stamps found in content (one per upstream token).
        terminals: ``completed`` messages received.
        errors: ``error`` messages and broken connections (each a short description).
        gaps: connections whose ``seq`` numbers were not 1, 2, 3, ... without a gap.
        latencies_ns: one sample per token: receive time minus send stamp, in ns.
        first_receive_ns, last_receive_ns: monotonic times of the first and last frame.
        connect_s: wall time of the ``connect`` phase, in seconds.
        cpu_s: this worker process's CPU time during ``measure``, in seconds.
    """

    frames: int = 0
    events: int = 0
    tokens: int = 0
    terminals: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    gaps: int = 0
    latencies_ns: bytes = b""
    first_receive_ns: int | None = None
    last_receive_ns: int | None = None
    connect_s: float = 0.0
    cpu_s: float = 0.0


class _Client:
    __slots__ = ("index", "stream", "ws", "next_seq")

    def __init__(self, index: int, stream: int) -> None:
        self.index = index
        self.stream = stream
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.next_seq = 1


async def _worker_main(plan: Plan, pipe: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    clients = [_Client(index, index % plan.streams) for index in plan.connections]
    result = WorkerResult()
    latencies = array.array("q")
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def recv_ack(client: _Client) -> None:
            assert client.ws is not None
            while True:
                msg = await client.ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"connection {client.index}: {msg.type.name} before the acknowledgement")
                kind = orjson.loads(msg.data.split("\n", 1)[0])["type"]
                if kind == "subscribed":
                    return
                if kind == "error":
                    raise RuntimeError(f"connection {client.index}: {msg.data[:200]}")

        async def connect(client: _Client, gate: asyncio.Semaphore) -> None:
            async with gate:
                client.ws = await session.ws_connect(plan.url, autoping=True, max_msg_size=0, compress=0)

        async def own(client: _Client) -> None:
            assert client.ws is not None
            channel = f"f{client.stream}"
            if plan.server == "hub":
                await client.ws.send_str(orjson.dumps({
                    "type": "completion", "id": channel, "model": plan.model, "coalesce": plan.coalesce,
                    "messages": [{"role": "user", "content": plan.prompt.replace(
                        "{offset_ms}", f"{client.stream / plan.streams * plan.stagger_ms:.3f}")}],
                }).decode())
            else:
                request = {"type": "subscribe", "channels": [f"completion:{channel}"]}
                await client.ws.send_str(orjson.dumps(request).decode())
            await recv_ack(client)

        async def subscribe(client: _Client) -> None:
            assert client.ws is not None
            message = {"type": "subscribe", "channels": [f"completion:f{client.stream}"]}
            await client.ws.send_str(orjson.dumps(message).decode())
            await recv_ack(client)

        async def measure(client: _Client) -> None:
            ws = client.ws
            assert ws is not None
            clock = time.monotonic_ns
            while True:
                msg = await ws.receive()
                now = clock()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    result.errors.append(f"connection {client.index}: {msg.type.name} before the terminal message")
                    return
                if result.first_receive_ns is None:
                    result.first_receive_ns = now
                result.last_receive_ns = now
                result.frames += 1
                data: str = msg.data
                for line in data.split("\n") if "\n" in data else (data,):
                    result.events += 1
                    event = orjson.loads(line)
                    seq = event.get("seq")
                    if seq is not None:
                        if seq != client.next_seq:
                            result.gaps += 1
                        client.next_seq = seq + 1
                    kind = event["type"]
                    if kind == "content_chunk":
                        stamps = _STAMP.findall(event["content"].encode())
                        result.tokens += len(stamps)
                        for stamp in stamps:
                            latencies.append(now - int(stamp))
                    elif kind == "completed":
                        result.terminals += 1
                        return
                    elif kind == "error":
                        result.errors.append(f"connection {client.index}: {line[:200]}")
                        return

        owners = [client for client in clients if client.index < plan.streams]
        watchers = [client for client in clients if client.index >= plan.streams]
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            try:
                if command == "connect":
                    started = time.perf_counter()
                    gate = asyncio.Semaphore(_HANDSHAKES_IN_FLIGHT)
                    await asyncio.gather(*(connect(client, gate) for client in clients))
                    result.connect_s = time.perf_counter() - started
                elif command == "own":
                    await asyncio.gather(*(own(client) for client in owners))
                elif command == "subscribe":
                    await asyncio.gather(*(subscribe(client) for client in watchers))
                elif command == "measure":
                    cpu_before = time.process_time()
                    await asyncio.gather(*(measure(client) for client in clients))
                    result.cpu_s = time.process_time() - cpu_before
                    result.latencies_ns = latencies.tobytes()
                elif command == "close":
                    await asyncio.gather(*(client.ws.close() for client in clients if client.ws is not None))
                    pipe.send(("ok", None))
                    return
                pipe.send(("ok", result if command == "measure" else command))
            except Exception as exc:  # reported to the parent, which stops the run
                pipe.send(("error", f"{type(exc).__name__}: {exc}"))
                return


def _worker_entry(plan: Plan, pipe: multiprocessing.connection.Connection, use_uvloop: bool) -> None:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            use_uvloop = False
    if use_uvloop:
        uvloop.run(_worker_main(plan, pipe))
    else:
        asyncio.run(_worker_main(plan, pipe))


class Workers:
    """A set of load-generator processes that go through the phases together.

    Args:
        plans: one :class:`Plan` per worker process.
        use_uvloop: run the workers on uvloop when it is installed.
    """

    def __init__(self, plans: list[Plan], use_uvloop: bool = True) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._processes: list[Any] = []
        for plan in plans:
            parent, child = context.Pipe()
            process = context.Process(target=_worker_entry, args=(plan, child, use_uvloop), daemon=True)
            process.start()
            self._pipes.append(parent)
            self._processes.append(process)

    async def phase(self, command: str) -> list[Any]:
        """Run one phase in every worker and wait until all finished it.

        Raises:
            RuntimeError: a worker reported an error or died.
        """
        loop = asyncio.get_running_loop()
        for pipe in self._pipes:
            pipe.send(command)
        replies = await asyncio.gather(*(loop.run_in_executor(None, _receive, pipe) for pipe in self._pipes))
        errors = [payload for status, payload in replies if status != "ok"]
        if errors:
            raise RuntimeError(f"load generator failed in phase {command!r}: {errors[0]}")
        return [payload for _, payload in replies]

    async def close(self) -> None:
        """Close every connection and end the processes."""
        try:
            await self.phase("close")
        except RuntimeError:
            pass
        finally:
            for process in self._processes:
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()


def _receive(pipe: multiprocessing.connection.Connection) -> tuple[str, Any]:
    try:
        return pipe.recv()
    except (EOFError, OSError):
        return ("error", "the worker process died")


def split(count: int, parts: int) -> list[list[int]]:
    """``range(count)`` dealt round-robin into ``parts`` lists (empty lists dropped)."""
    lists = [list(range(start, count, parts)) for start in range(parts)]
    return [items for items in lists if items]
