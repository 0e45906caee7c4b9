"""The Redis broker's own PUB/SUB reader (hub/redis_pubsub.py) and its publish window
(hub/redis_broker.py ``PUBLISH_DELAY_S``): AUTH against a redis-server of this test's own with
``--requirepass``, reconnection after ``CLIENT KILL TYPE pubsub`` with the mirrors' gaps filled
from the stream, every frame of one read handed over at once, bytes that are not RESP and
oversized frames closing the connection, and events of several event-loop iterations going to
Redis in one EVALSHA. Real sockets on 127.0.0.1; Redis tests skip like tests/test_cluster.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from hub.app import run_hub
from hub.channel import HistoryBounds
from hub.redis_broker import BrokerUnavailable, RedisBroker
from hub.redis_pubsub import PubSubReader, ScriptWriter, encode_command
from protocol.messages import ContentChunk, Subscribed
from tests.conftest import hub_config
from tests.test_cluster import REDIS_URL, all_sent, prefix, start, subscribe  # noqa: F401  (fixtures)
from tools.mock_provider import MockProvider, expected_text

PASSWORD = "pubsub-s3cret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def locked_redis(tmp_path: Path) -> AsyncIterator[str]:
    """A redis-server of this test's own with ``--requirepass``; yields its URL with the password."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CBHUB_REQUIRE_REDIS") == "1":
            raise RuntimeError("CBHUB_REQUIRE_REDIS=1 but there is no redis-server")
        pytest.skip("no redis-server binary")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--requirepass", PASSWORD, cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    try:
        async with asyncio.timeout(10):
            while True:
                client = aioredis.from_url(url)
                try:
                    await client.ping()
                    break
                except (OSError, aioredis.RedisError):
                    await asyncio.sleep(0.02)
                finally:
                    await client.aclose()
        yield url
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_nodes_of_a_password_protected_redis_mirror_and_survive_client_kill_pubsub(
        mock: MockProvider, locked_redis: str, ws_factory: Any) -> None:
    async with contextlib.AsyncExitStack() as stack:
        a, b = [await stack.enter_async_context(run_hub(hub_config(mock, broker_url=locked_redis,
                                                                   broker_prefix="t:"))) for _ in range(2)]
        owner, remote = await ws_factory(a), await ws_factory(b)
        await start(owner, "pw1", "[[mock tokens=80 tps=200]]")
        assert isinstance(await subscribe(remote, "completion:pw1"), Subscribed)
        first = [await remote.recv() for _ in range(5)]  # live through B's PUB/SUB reader
        admin = aioredis.from_url(locked_redis)
        try:
            killed = await admin.client_kill_filter(_type="pubsub")
            assert killed == 2  # one PUB/SUB connection per node
            rest = await remote.until_terminal("pw1")
            mine = await owner.until_terminal("pw1")
            got = first + rest
            assert got == mine
            assert [m.seq for m in got] == list(range(1, len(got) + 1))
            assert "".join(m.content for m in got if isinstance(m, ContentChunk)) == expected_text(80)
            # Both readers connected again, authenticated, and hold their subscriptions.
            async with asyncio.timeout(5):
                while len(await admin.client_list(_type="pubsub")) < 2:
                    await asyncio.sleep(0.02)
            broker = b.broker
            assert isinstance(broker, RedisBroker) and broker._pubsub is not None
            assert broker._ctl_topic in broker._pubsub.channels
        finally:
            await admin.aclose()
        # A mirror made after the reconnection works too.
        late = await ws_factory(b)
        assert isinstance(await subscribe(late, "completion:pw1"), Subscribed)
        assert await late.until_terminal("pw1") == mine


async def test_a_wrong_password_is_broker_unavailable_without_the_password(locked_redis: str) -> None:
    url = locked_redis.replace(PASSWORD, "not-the-one")
    broker = RedisBroker(url, "t:", HistoryBounds(100), 1.0)
    with pytest.raises(BrokerUnavailable) as caught:
        await broker.connect()
    assert "not-the-one" not in str(caught.value)


class FakeRedis:
    """A server on 127.0.0.1 that answers PUB/SUB like Redis as far as a test scripts it:
    records the commands of each connection, and lets the test write raw bytes."""

    def __init__(self) -> None:
        self.connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.arrived = asyncio.Condition()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FakeRedis:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for _, writer in self.connections:
            writer.close()
        assert self.server is not None
        self.server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self.arrived:
            self.connections.append((reader, writer))
            self.arrived.notify_all()

    async def connection(self, index: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(5), self.arrived:
            await self.arrived.wait_for(lambda: len(self.connections) > index)
        return self.connections[index]


async def read_command(reader: asyncio.StreamReader) -> list[bytes]:
    """One RESP array of bulk strings from the client."""
    header = await reader.readline()
    assert header.startswith(b"*"), header
    parts = []
    for _ in range(int(header[1:])):
        size = int((await reader.readline())[1:])
        parts.append((await reader.readexactly(size + 2))[:-2])
    return parts


async def test_every_frame_of_one_read_is_handed_over_at_once_and_bad_bytes_reconnect() -> None:
    calls: list[list[Any]] = []
    losses: list[BaseException] = []
    async with FakeRedis() as fake:
        reader = PubSubReader(f"redis://127.0.0.1:{fake.port}/0", calls.append, losses.append, pause=0.01,
                              max_frame_bytes=4096)
        await reader.start()
        try:
            reader.subscribe(b"ch:a")
            reader.psubscribe(b"ch:*")
            server_in, server_out = await fake.connection(0)
            assert await read_command(server_in) == [b"SUBSCRIBE", b"ch:a"]
            assert await read_command(server_in) == [b"PSUBSCRIBE", b"ch:*"]
            # A confirmation and 300 messages in one write (one segment on loopback).
            burst = [b"*3\r\n$9\r\nsubscribe\r\n$4\r\nch:a\r\n:1\r\n"]
            burst += [encode_command(b"message", b"ch:a", b"event %d" % index) for index in range(300)]
            server_out.write(b"".join(burst))
            await server_out.drain()
            async with asyncio.timeout(5):
                while sum(len(frames) for frames in calls) < 301:
                    await asyncio.sleep(0.005)
            frames = [frame for batch in calls for frame in batch]
            assert frames[0] == [b"subscribe", b"ch:a", 1]
            assert frames[1:] == [[b"message", b"ch:a", b"event %d" % index] for index in range(300)]
            assert len(calls) < 30  # many frames per call, not one call per message
            assert all(calls)

            # Bytes that are not RESP: the connection is dropped, then made again with every
            # channel and pattern subscribed again.
            # A channel asked for meanwhile is subscribed on the new connection too.
            server_out.write(b"!garbage\r\n")
            await server_out.drain()
            async with asyncio.timeout(5):
                while reader.connected:
                    await asyncio.sleep(0.001)
            reader.subscribe(b"ch:b")
            server_in, server_out = await fake.connection(1)
            again = [await read_command(server_in), await read_command(server_in)]
            assert again[0][0] == b"SUBSCRIBE" and sorted(again[0][1:]) == [b"ch:a", b"ch:b"]
            assert again[1] == [b"PSUBSCRIBE", b"ch:*"]
            assert len(losses) == 1 and isinstance(losses[0], ConnectionError)
            reader.unsubscribe(b"ch:b")
            assert await read_command(server_in) == [b"UNSUBSCRIBE", b"ch:b"]

            # A frame larger than max_frame_bytes: dropped as well, before it is whole.
            server_out.write(b"$100000\r\n" + b"x" * 5000)
            server_in, server_out = await fake.connection(2)
            assert await read_command(server_in) == [b"SUBSCRIBE", b"ch:a"]
            assert len(losses) == 2 and "larger than 4096" in str(losses[1])

            # After an unsubscribe, a reconnection subscribes to what is left only.
            reader.unsubscribe(b"ch:a")
            assert await read_command(server_in) == [b"PSUBSCRIBE", b"ch:*"]
            assert await read_command(server_in) == [b"UNSUBSCRIBE", b"ch:a"]
            server_out.close()
            server_in, server_out = await fake.connection(3)
            assert await read_command(server_in) == [b"PSUBSCRIBE", b"ch:*"]
            assert len(losses) == 3
        finally:
            await reader.close()


async def test_events_of_several_iterations_within_the_window_go_in_one_evalsha(prefix: str) -> None:  # noqa: F811
    broker = RedisBroker(REDIS_URL, prefix, HistoryBounds(100), 1.0)
    await broker.connect()
    try:
        broker.publish_delay_s = 0.3
        channel = broker.open_channel("completion:w1", HistoryBounds(100))
        for index in range(5):
            channel.publish(ContentChunk("w1", 0, f"t{index} "))
            await asyncio.sleep(0)  # another event-loop iteration
            await asyncio.sleep(0.001)
        assert broker.round_trips == 0  # held by the window
        async with asyncio.timeout(5):
            while broker.events_sent < 5:
                await asyncio.sleep(0.01)
        assert broker.round_trips == 1 and broker.events_sent == 5

        # A channel another node watches is not held: its event goes at once, window or not.
        broker.publish_delay_s = 3600.0
        watched = broker.open_channel("completion:w2", HistoryBounds(100))
        broker._watched("completion:w2", "another-node", True)
        watched.publish(ContentChunk("w2", 0, "now"))
        async with asyncio.timeout(5):
            while broker.events_sent < 6:
                await asyncio.sleep(0.01)
        assert broker.round_trips == 2

        # Shutdown sends what the window still holds.
        channel.publish(ContentChunk("w1", 0, "last"))
    finally:
        await broker.close()
    client = aioredis.from_url(REDIS_URL)
    try:
        assert await client.xlen(f"{prefix}s:completion:w1") == 6
    finally:
        await client.aclose()


async def test_the_script_writer_authenticates_selects_reloads_and_reconnects(locked_redis: str) -> None:
    from redis.exceptions import AuthenticationError, ResponseError

    url = locked_redis.replace("/0", "/3")
    writer = ScriptWriter(url, "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('DBSIZE')", timeout=5)
    admin = aioredis.from_url(url)
    try:
        assert await writer(keys=["k1"], args=[b"v1"]) == 1
        assert await admin.get("k1") == b"v1"  # in the URL's database
        await admin.script_flush()  # as a restarted Redis: NOSCRIPT, then EVAL
        assert await writer(keys=["k2"], args=[2]) == 2
        assert await admin.get("k2") == b"2"
        with pytest.raises(ResponseError):
            await writer(keys=[], args=[])  # the script's error, as redis-py raises it
        assert await writer(keys=["k3"], args=["x"]) == 3  # the connection still serves
        protocol = writer._protocol
        assert protocol is not None
        assert await admin.client_kill_filter(_type="normal", skipme=True) >= 1
        async with asyncio.timeout(5):
            while not protocol.closed:
                await asyncio.sleep(0.005)
        assert await writer(keys=["k4"], args=["y"]) == 4  # a new connection, authenticated again
        wrong = ScriptWriter(locked_redis.replace(PASSWORD, "nope"), "return 1", timeout=5)
        with pytest.raises(AuthenticationError):
            await wrong.ping()
        await wrong.aclose()
    finally:
        await writer.aclose()
        await admin.aclose()
