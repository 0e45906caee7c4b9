"""The Redis broker beyond stage 1 (issue 13; docs/PROTOCOL.md "Running several hubs"):
workflow and agent channels across nodes, node liveness (``node_lost``), snapshots built from
Redis, riding out a Redis outage. Hubs run in this event loop (the fixtures of
tests/test_cluster.py) or as real ``cbhub serve`` processes, against a real Redis on 127.0.0.1
under a key prefix of each test's own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import websockets

from hub import redis_broker
from hub.app import run_hub
from protocol.messages import (
    HUB_DECODER,
    Completed,
    ContentChunk,
    ErrorMessage,
    Snapshot,
    Subscribed,
    WorkflowCompleted,
)
from tests.conftest import hub_config
from tests.test_cluster import OPENAI, REDIS_URL, nodes, prefix  # noqa: F401  (fixtures)
from tests.test_cluster import start as start_completion
from tests.test_config import ROOT, clean_environ
from tests.test_workflows import run_until_end, two_step
from tools.mock_provider import MockProvider, expected_reasoning, expected_text


async def meta_of(key_prefix: str, name: str) -> dict[str, str]:
    client = aioredis.from_url(REDIS_URL)
    try:
        meta = await client.hgetall(f"{key_prefix}meta:{name}")
    finally:
        await client.aclose()
    return {key.decode(): value.decode() for key, value in meta.items()}


async def channel_messages(client: Any, channel: str, count: int) -> list[Any]:
    """Subscribe to ``channel`` and read ``count`` messages after the ack."""
    await client.send({"type": "subscribe", "channels": [channel]})
    ack = await client.recv()
    assert isinstance(ack, Subscribed) and channel in ack.epochs, ack
    return [await client.recv() for _ in range(count)]


async def test_workflow_and_agent_channels_are_mirrored_on_other_nodes(nodes, ws_factory, prefix):  # noqa: F811
    a, b, _ = nodes
    owner = await ws_factory(a)
    await owner.send({"type": "create_workflow", "workflowId": "wf1", "definition": two_step(),
                      "input": {"topic": "tides [[mock tokens=5]]"}})
    ack = await owner.recv()
    assert isinstance(ack, Subscribed)
    on_a = await run_until_end(owner, "wf1")
    assert isinstance(on_a[-1], WorkflowCompleted)
    agent_on_a = a.broker.history("agent:wf1.asker")
    async with asyncio.timeout(5):  # the last batch written
        while (await meta_of(prefix, "workflow:wf1")).get("state") != "finished":
            await asyncio.sleep(0.01)
    remote = await ws_factory(b)
    assert await channel_messages(remote, "workflow:wf1", len(on_a)) == on_a
    remote_agent = await channel_messages(remote, "agent:wf1.asker", len(agent_on_a))
    assert [m.seq for m in remote_agent] == list(range(1, len(agent_on_a) + 1))
    assert [type(m) for m in remote_agent] == [type(e.message) for e in agent_on_a]
    workflow_meta = await meta_of(prefix, "workflow:wf1")
    agent_meta = await meta_of(prefix, "agent:wf1.asker")
    assert workflow_meta["kind"] == "workflow" and workflow_meta["node"] == a.broker.node_id
    assert workflow_meta["epoch"] == ack.epochs["workflow:wf1"]
    assert agent_meta["kind"] == "agent" and agent_meta["parent"] == "workflow:wf1"
    assert agent_meta["state"] == "finished"  # ended with its workflow
    assert (await meta_of(prefix, "completion:wf1.asker.1"))["kind"] == "completion"


async def test_cancel_workflow_sent_to_another_node_reaches_the_owner(nodes, ws_factory):  # noqa: F811
    a, _, c = nodes
    owner = await ws_factory(a)
    await owner.send({"type": "create_workflow", "workflowId": "wf2", "definition": two_step(),
                      "input": {"topic": "long [[mock tokens=100000 tps=200]]"}})
    assert isinstance(await owner.recv(), Subscribed)
    await owner.recv()  # token_created: the run is going
    remote = await ws_factory(c)
    await remote.send({"type": "subscribe", "channels": ["workflow:wf2"]})
    assert isinstance(await remote.recv(), Subscribed)
    await remote.send({"type": "cancel_workflow", "workflowId": "wf2", "rid": "w"})
    seen_a = await run_until_end(owner, "wf2")
    seen_c = await run_until_end(remote, "wf2")
    for seen in (seen_a, seen_c):
        assert isinstance(seen[-1], ErrorMessage) and seen[-1].error.code == "cancelled"
    assert seen_c[-1].seq == seen_a[-1].seq
    assert a.workflows.runs["wf2"].finished


# Real `cbhub serve` processes.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Node:
    """One ``cbhub serve`` process on its own port (log in ``log``)."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    async def health(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(self.url + "/healthz") as response:
            return dict(await response.json())

    async def wait_for(self, status: str) -> dict[str, Any]:
        """Poll ``/healthz`` until its status is ``status``; returns the answer."""
        async with asyncio.timeout(30):
            while True:
                with contextlib.suppress(aiohttp.ClientError, ValueError):
                    answer = await self.health()
                    if answer.get("status") == status:
                        return answer
                await asyncio.sleep(0.05)


@pytest.fixture
async def serve(mock: MockProvider, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    """Factory ``await serve(redis_url, prefix)`` of ready ``cbhub serve`` processes, the mock
    behind every provider, ``broker.node_timeout_s`` 1; all are killed at teardown."""
    started: list[Node] = []

    async def start(redis_url: str, key_prefix: str) -> Node:
        port = free_port()
        log = tmp_path / f"hub-{port}.log"
        env = {**clean_environ(), **mock.hub_environment(), "CBHUB_BROKER_URL": redis_url,
               "CBHUB_BROKER_PREFIX": key_prefix, "CBHUB_BROKER_NODE_TIMEOUT_S": "1",
               "CBHUB_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "PYTHONPATH": str(ROOT)}
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hub.cli", "serve", "--port", str(port), cwd=ROOT, env=env,
                stdout=out, stderr=asyncio.subprocess.STDOUT)
        node = Node(process, port, log)
        started.append(node)
        try:
            await node.wait_for("ok")
        except TimeoutError:
            raise AssertionError(f"cbhub serve did not start:\n{log.read_text()}") from None
        return node

    yield start
    for node in started:
        if node.process.returncode is None:
            node.process.kill()
        await node.process.wait()


class WS:
    """A WebSocket client of one node (decoded hub messages)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    @classmethod
    async def to(cls, node: Node) -> WS:
        return cls(await websockets.connect(f"ws://127.0.0.1:{node.port}/ws/stream", compression=None))

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def recv(self) -> Any:
        return HUB_DECODER.decode(await asyncio.wait_for(self.connection.recv(), 15))

    async def until_end(self, completion_id: str) -> list[Any]:
        """Messages of ``completion_id`` up to its terminal message or a ``stream_gap`` notice."""
        messages = []
        while True:
            message = await self.recv()
            if isinstance(message, Subscribed) or getattr(message, "completion_id", None) != completion_id:
                continue
            messages.append(message)
            if isinstance(message, (Completed, ErrorMessage)) and (
                    message.seq is not None or message.error.code == "stream_gap"):
                return messages


def text(messages: list[Any]) -> str:
    return "".join(m.content for m in messages if isinstance(m, ContentChunk))


async def test_kill_9_of_the_owner_gives_node_lost_everywhere_once(prefix, serve):  # noqa: F811
    a, b, c = await asyncio.gather(*(serve(REDIS_URL, prefix) for _ in range(3)))
    owner = await WS.to(a)
    await owner.send({"type": "completion", "id": "k1", "model": OPENAI, "coalesce": False,
                      "messages": [{"role": "user", "content": "[[mock tokens=100000 tps=50]]"}]})
    await owner.send({"type": "completion", "id": "k2", "model": OPENAI, "coalesce": False,
                      "messages": [{"role": "user", "content": "[[mock tokens=100000 tps=50]]"}]})
    for _ in range(2):  # both claimed in Redis
        while not isinstance(await owner.recv(), Subscribed):
            pass
    watcher = await WS.to(b)
    await watcher.send({"type": "subscribe", "channels": ["completion:k1"]})
    seen: list[Any] = []
    while len(seen) < 5:  # B is live on k1
        message = await watcher.recv()
        if getattr(message, "completion_id", None) == "k1":
            seen.append(message)
    a.process.kill()
    killed = time.monotonic()
    seen += await watcher.until_end("k1")
    delay = time.monotonic() - killed
    lost = seen[-1]
    assert isinstance(lost, ErrorMessage) and lost.error.code == "node_lost" and lost.error.retryable
    assert [m.seq for m in seen] == list(range(1, len(seen) + 1))
    assert expected_text(100000).startswith(text(seen)) and text(seen)
    print(f"\nnode_lost reached B {delay:.2f} s after kill -9 (node_timeout_s 1)")
    # A later subscriber on C replays the history, then the same node_lost; k2, which nobody
    # mirrored, was ended too.
    late = await WS.to(c)
    await late.send({"type": "subscribe", "channels": ["completion:k1", "completion:k2"]})
    ack = await late.recv()
    assert isinstance(ack, Subscribed) and ack.recovered == {"completion:k1": True, "completion:k2": True}
    replays = {"k1": [], "k2": []}
    while not all(r and isinstance(r[-1], ErrorMessage) for r in replays.values()):
        message = await late.recv()
        replays[message.completion_id].append(message)
    assert replays["k1"] == seen
    k2 = replays["k2"]
    assert [m.seq for m in k2] == list(range(1, len(k2) + 1)) and k2[-1].error.code == "node_lost"
    assert expected_text(100000).startswith(text(k2))
    # Written once: one node_lost entry per stream, and the survivors counted two in all.
    client = aioredis.from_url(REDIS_URL)
    try:
        for name in ("k1", "k2"):
            entries = await client.xrange(f"{prefix}s:completion:{name}")
            assert sum(b"node_lost" in fields[b"d"] for _id, fields in entries) == 1
    finally:
        await client.aclose()
    counts = [(await node.health())["broker"]["nodes_lost"] for node in (b, c)]
    assert sum(counts) == 2, counts
    for client_ws in (owner, watcher, late):
        await client_ws.connection.close()


async def test_the_stream_is_bounded_like_the_history_and_a_snapshot_from_redis_covers_the_rest(
        mock, prefix, ws_factory):  # noqa: F811
    config = hub_config(mock, broker_url=REDIS_URL, broker_prefix=prefix, history_max_events=8)
    async with run_hub(config) as a, run_hub(config) as b:
        owner = await ws_factory(a)
        ack = await start_completion(owner, "t1", "[[mock tokens=60 reasoning=3]]")
        everything = await owner.until_terminal("t1")
        async with asyncio.timeout(5):
            while (await meta_of(prefix, "completion:t1")).get("state") != "finished":
                await asyncio.sleep(0.01)
        client = aioredis.from_url(REDIS_URL)
        try:
            length = await client.xlen(f"{prefix}s:completion:t1")
            ttl = await client.ttl(f"{prefix}s:completion:t1")
        finally:
            await client.aclose()
        meta = await meta_of(prefix, "completion:t1")
        # At most a quarter of the bound more than the history (the snapshot is written every 2).
        assert 8 <= length <= 8 + 2 + 1, length
        assert 0 < ttl <= int(config.retention_s + 60)
        written = HUB_DECODER.decode(meta["snap"])
        assert isinstance(written, Snapshot) and written.epoch == ack.epochs["completion:t1"]
        assert written.seq >= len(everything) - length  # the stream holds everything after it
        late = await ws_factory(b)
        await late.send({"type": "subscribe", "channels": ["completion:t1"],
                         "since": {"completion:t1": {"seq": 2, "epoch": ack.epochs["completion:t1"]}}})
        resumed = await late.recv()
        assert isinstance(resumed, Subscribed) and resumed.recovered == {"completion:t1": False}
        snapshot = await late.recv()
        assert isinstance(snapshot, Snapshot) and snapshot.epoch == ack.epochs["completion:t1"]
        rest = await late.until_terminal("t1")
    # As on the owner: the state after every non-terminal event, then the terminal one.
    assert snapshot.seq == everything[-2].seq and rest == everything[-1:]
    assert snapshot.content == expected_text(60) and snapshot.reasoning == expected_reasoning(3)


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A redis-server of this test's own on a free port (``--save "" --appendonly no``):
    yields ``restart()``, which kills it, and starts it again on the same port once called
    a second time; ``own_redis.url`` is its URL (set on the function)."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CBHUB_REQUIRE_REDIS") == "1":
            raise RuntimeError("CBHUB_REQUIRE_REDIS=1 but there is no redis-server to restart")
        pytest.skip("no redis-server binary")
    port = free_port()
    processes: list[asyncio.subprocess.Process] = []

    async def up() -> None:
        process = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        processes.append(process)
        async with asyncio.timeout(10):
            while True:
                client = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
                try:
                    await client.ping()
                    return
                except (OSError, aioredis.RedisError):
                    await asyncio.sleep(0.02)
                finally:
                    await client.aclose()

    async def toggle() -> None:
        process = processes[-1]
        if process.returncode is None:
            process.kill()
            await process.wait()
        else:
            await up()

    await up()
    toggle.url = f"redis://127.0.0.1:{port}/0"  # type: ignore[attr-defined]
    yield toggle
    for process in processes:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_redis_restarted_mid_stream(serve, own_redis):
    a, b = await asyncio.gather(*(serve(own_redis.url, "cbhub-outage:") for _ in range(2)))
    owner = await WS.to(a)
    await owner.send({"type": "completion", "id": "o1", "model": OPENAI, "coalesce": False,
                      "messages": [{"role": "user", "content": "[[mock tokens=150 tps=100]]"}]})
    assert isinstance(await owner.recv(), Subscribed)  # claimed in Redis: B can find it
    remote = await WS.to(b)
    await remote.send({"type": "subscribe", "channels": ["completion:o1"]})
    on_b: list[Any] = []
    while len(on_b) < 10:  # B is live
        message = await remote.recv()
        if not isinstance(message, Subscribed) and getattr(message, "completion_id", None) == "o1":
            on_b.append(message)
    await own_redis()  # Redis dies mid-stream
    degraded = await a.wait_for("degraded")
    assert degraded["broker"]["connected"] is False and degraded["broker"]["kind"] == "redis"
    await own_redis()  # ... and comes back, empty
    healthy = await a.wait_for("ok")
    assert healthy["broker"]["connected"] is True
    on_a = await owner.until_end("o1")
    on_b += await remote.until_end("o1")
    # The owner's own subscriber got everything, exactly.
    assert isinstance(on_a[-1], Completed) and [m.seq for m in on_a] == list(range(1, len(on_a) + 1))
    assert text(on_a) == expected_text(150)
    # The other node's got everything, or what it had then stream_gap.
    if isinstance(on_b[-1], Completed):
        assert on_b == on_a
        outcome = "everything"
    else:
        assert on_b[-1].error.code == "stream_gap" and on_b[-1].seq is None and on_b[-1].error.retryable
        assert on_b[:-1] == on_a[:len(on_b) - 1]
        outcome = f"stream_gap after {len(on_b) - 1} of {len(on_a)} messages"
    print(f"\nowner: {len(on_a)} messages exact; remote: {outcome}; owner unsent/dropped "
          f"{healthy['broker']['events_unsent']}/{healthy['broker']['events_dropped']}")
    for client in (owner, remote):
        await client.connection.close()


async def test_events_dropped_during_an_outage_reach_other_nodes_as_stream_gap(
        mock, own_redis, ws_factory, monkeypatch):
    monkeypatch.setattr(redis_broker, "UNSENT_MAX_EVENTS", 8)
    config = hub_config(mock, broker_url=own_redis.url, broker_prefix="cbhub-gap:", broker_node_timeout_s=1)
    async with run_hub(config) as a, run_hub(config) as b:
        owner = await ws_factory(a)
        ack = await start_completion(owner, "g1", "[[mock tokens=300 tps=200]]")
        remote = await ws_factory(b)
        await remote.send({"type": "subscribe", "channels": ["completion:g1"]})
        assert isinstance(await remote.recv(), Subscribed)
        first = await remote.recv()
        assert first.seq == 1
        await own_redis()  # down: the owner keeps at most 8 events for Redis, then drops the oldest
        async with asyncio.timeout(10):
            while a.broker.events_dropped == 0:
                await asyncio.sleep(0.02)
        await own_redis()
        on_b = [first]
        while True:
            message = await remote.recv()
            on_b.append(message)
            if isinstance(message, ErrorMessage):
                break
        on_a = await owner.until_terminal("g1")
        gap = on_b[-1]
        assert gap.error.code == "stream_gap" and gap.seq is None and gap.completion_id == "g1"
        assert on_b[:-1] == on_a[:len(on_b) - 1]  # exact up to the gap
        assert isinstance(on_a[-1], Completed) and text(on_a) == expected_text(300)  # the owner's: whole
        assert b.broker.gaps == 1 and b.broker.channel("completion:g1") is None  # the mirror is dropped
        # Subscribing again with the cursor gives what Redis holds: the owner's snapshot, then the rest.
        cursor = {"seq": on_b[-2].seq, "epoch": ack.epochs["completion:g1"]}
        await remote.send({"type": "subscribe", "channels": ["completion:g1"], "since": {"completion:g1": cursor}})
        again = await remote.recv()
        assert isinstance(again, Subscribed) and again.recovered == {"completion:g1": False}
        snapshot = await remote.recv()
        assert isinstance(snapshot, Snapshot) and snapshot.seq >= cursor["seq"]
        rest = await remote.until_terminal("g1")
        assert [m.seq for m in rest] == list(range(snapshot.seq + 1, on_a[-1].seq + 1))
        assert snapshot.content + text(rest) == expected_text(300) and rest[-1] == on_a[-1]


async def test_subscribers_on_another_node_hold_the_run_past_its_grace_period(mock, prefix, ws_factory):  # noqa: F811
    config = hub_config(mock, broker_url=REDIS_URL, broker_prefix=prefix, grace_period_s=0.1)
    async with run_hub(config) as a, run_hub(config) as b:
        owner = await ws_factory(a)
        await start_completion(owner, "h1", "[[mock tokens=60 tps=100]]")
        remote = await ws_factory(b)
        await remote.send({"type": "subscribe", "channels": ["completion:h1"]})
        assert isinstance(await remote.recv(), Subscribed)
        await remote.recv()
        run = a.completions.runs["h1"]
        async with asyncio.timeout(5):  # the owner heard of B's subscriber
            while not a.broker._watchers.get("completion:h1"):
                await asyncio.sleep(0.01)
        owner.connection.transport.abort()  # A has no subscriber left; B's keeps the run going
        seen = await remote.until_terminal("h1")
        assert isinstance(seen[-1], Completed) and run.finished
        # When B's subscriber leaves too, the owner's grace period runs and cancels the run.
        watcher = await ws_factory(b)
        starter = await ws_factory(a)
        await start_completion(starter, "h2", "[[mock tokens=100000 tps=100]]")
        await watcher.send({"type": "subscribe", "channels": ["completion:h2"]})
        assert isinstance(await watcher.recv(), Subscribed)
        async with asyncio.timeout(5):
            while not a.broker._watchers.get("completion:h2"):
                await asyncio.sleep(0.01)
        starter.connection.transport.abort()
        await asyncio.sleep(0.3)  # past the grace period: B's subscriber still holds the run
        assert not a.completions.runs["h2"].finished
        watcher.connection.transport.abort()
        second = a.completions.runs["h2"]
        async with asyncio.timeout(5):
            await second.wait()
        assert second.finished and second.channel.history[-1].message.error.code == "cancelled"


async def test_a_type_level_subscriber_sees_other_nodes_runs_once(nodes, ws_factory):  # noqa: F811
    a, b, _ = nodes
    dashboard = await ws_factory(b)
    await dashboard.send({"type": "subscribe", "streams": ["completion"]})
    assert isinstance(await dashboard.recv(), Subscribed)
    await dashboard.send({"type": "ping", "rid": "p"})  # B sent its PSUBSCRIBE before answering
    assert (await dashboard.recv()).rid == "p"
    owner = await ws_factory(a)
    await start_completion(owner, "d1", "[[mock tokens=40 tps=400]]")
    first = await dashboard.recv()
    assert first.seq == 1
    # Watching the channel too (a mirror on B) repeats nothing.
    await dashboard.send({"type": "subscribe", "channels": ["completion:d1"]})
    seen = [first, *await dashboard.until_terminal("d1")]
    assert seen == await owner.until_terminal("d1")


async def test_a_node_declared_lost_while_stalled_cannot_write_after_node_lost(prefix, serve):  # noqa: F811
    a, b = await asyncio.gather(*(serve(REDIS_URL, prefix) for _ in range(2)))
    owner = await WS.to(a)
    await owner.send({"type": "completion", "id": "z1", "model": OPENAI, "coalesce": False,
                      "messages": [{"role": "user", "content": "[[mock tokens=200 tps=100]]"}]})
    assert isinstance(await owner.recv(), Subscribed)
    watcher = await WS.to(b)
    await watcher.send({"type": "subscribe", "channels": ["completion:z1"]})
    seen: list[Any] = []
    while len(seen) < 5:
        message = await watcher.recv()
        if not isinstance(message, Subscribed):
            seen.append(message)
    os.kill(a.process.pid, signal.SIGSTOP)  # A stalls past broker.node_timeout_s
    try:
        seen += await watcher.until_end("z1")
    finally:
        os.kill(a.process.pid, signal.SIGCONT)
    assert seen[-1].error.code == "node_lost" and [m.seq for m in seen] == list(range(1, len(seen) + 1))
    # A goes on for its own subscriber: every event, exactly.
    on_a = await owner.until_end("z1")
    assert isinstance(on_a[-1], Completed) and text(on_a) == expected_text(200)
    assert on_a[:len(seen) - 1] == seen[:-1]
    # ... but none of its writes after node_lost was accepted: node_lost is the stream's last entry,
    # and B got nothing after it.
    client = aioredis.from_url(REDIS_URL)
    try:
        entries = await client.xrange(f"{prefix}s:completion:z1")
    finally:
        await client.aclose()
    assert [int(entry_id.split(b"-")[0]) for entry_id, _ in entries] == [m.seq for m in seen][-len(entries):]
    assert b"node_lost" in entries[-1][1][b"d"]
    await watcher.send({"type": "ping", "rid": "after"})
    assert (await watcher.recv()).rid == "after"
    for client_ws in (owner, watcher):
        await client_ws.connection.close()


async def test_close_ends_the_keepalive_when_redis_py_turns_its_cancellation_into_a_timeout(prefix):  # noqa: F811
    from hub.channel import HistoryBounds
    from hub.redis_broker import RedisBroker

    broker = RedisBroker(REDIS_URL, prefix, HistoryBounds(100), 1.0, node_timeout_s=0.4)
    await broker.connect()
    inside = asyncio.Event()

    async def stuck_beat(*args: Any, **kwargs: Any) -> int:
        inside.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # as redis-py's socket timeout does
            raise TimeoutError("Timeout reading from socket") from None
        return 1

    broker._beat_script = stuck_beat
    async with asyncio.timeout(5):
        await inside.wait()
        await broker.close()
    assert broker._keeper is not None and broker._keeper.cancelled()


async def test_a_batch_past_its_caps_reaches_redis_whole_and_bursts_of_claims_wait_for_connections(prefix):  # noqa: F811
    from hub.channel import HistoryBounds
    from hub.redis_broker import BATCH_EVENTS, RedisBroker

    broker = RedisBroker(REDIS_URL, prefix, HistoryBounds(5000), 1.0)
    await broker.connect()
    try:
        # 300 claims at once: more than redis-py's default pool (100) would lend.
        assert all(await asyncio.gather(*(broker.claim(f"completion:c{i}", "s") for i in range(300))))
        # A round trip in flight while 3 batches' worth of events wait behind it.
        release = asyncio.Event()
        script = broker._publish_script

        async def held(*args: Any, **kwargs: Any) -> Any:
            await release.wait()
            return await script(*args, **kwargs)

        broker._publish_script = held
        channel = broker.open_channel("completion:b1", HistoryBounds(5000))
        channel.publish(ContentChunk("b1", 0, "first "))
        await asyncio.sleep(0)  # the first batch is in flight, held
        total = 1 + 3 * BATCH_EVENTS
        for index in range(total - 1):
            channel.publish(ContentChunk("b1", 0, f"w{index} "))
        release.set()
        async with asyncio.timeout(10):
            while broker.events_sent < total:
                await asyncio.sleep(0.01)
        client = aioredis.from_url(REDIS_URL)
        try:
            ids = [entry_id for entry_id, _ in await client.xrange(f"{prefix}s:completion:b1")]
        finally:
            await client.aclose()
        assert ids == [f"{seq}-0".encode() for seq in range(1, total + 1)]
        assert broker.round_trips >= 4
    finally:
        await broker.close()
