"""Fixtures for tests that run the hub on real sockets (127.0.0.1) against the mock provider.

**Brokers.** A test module marked ``pytestmark = pytest.mark.brokers("memory", "redis", "redis2")``
runs each of its tests once per broker named (ids ``[memory]``, ``[redis]``, ``[redis2]``); the
others run on the in-memory broker only. ``@pytest.mark.broker_gap("redis2", reason="...")`` on
a test records a known gap of that broker: it must fail there (strict xfail, so closing the
gap makes it fail until the mark is removed). Under ``redis`` every config :func:`hub_config` builds
(every hub the test starts) uses the Redis broker at :data:`REDIS_URL` with a key prefix of
this test's own, unlinked afterwards (SCAN + UNLINK, never FLUSHDB). ``redis2`` is a cluster of
two: the :func:`hub` fixture also starts a second hub on the same Redis and prefix, and
:func:`ws_factory` connects every second client of a hub to that peer, so a completion started
on one connection is watched, resumed and cancelled from another node. The Redis variants are
skipped when no Redis answers, unless ``CBHUB_REQUIRE_REDIS=1``. ``CBHUB_TEST_BROKER=redis``
(or ``redis2``) runs every test whose module is not marked on that broker instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
import websockets

from hub.app import Hub, run_hub
from hub.config import HubConfig
from protocol.messages import HUB_DECODER, Completed, ErrorMessage, Subscribed
from tests.support import DATA
from tools.mock_provider import MockProvider

#: Upper bound for waiting on one frame; a generous safety net, never a measured timing.
RECV_TIMEOUT_S = 10.0

#: The Redis of the tests that need one: database 15 unless ``CBHUB_TEST_REDIS_URL`` says otherwise.
REDIS_URL = os.environ.get("CBHUB_TEST_REDIS_URL") or "redis://127.0.0.1:6379/15"

#: The brokers a test can run on (see the module docstring).
BROKERS = ("memory", "redis", "redis2")


@functools.cache
def redis_answers() -> bool:
    """Whether a Redis answers PING at :data:`REDIS_URL` (asked once per test run).

    Raises:
        RuntimeError: none answers and ``CBHUB_REQUIRE_REDIS=1`` (CI must not skip).
    """
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        try:
            answers = bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        answers = False
    if not answers and os.environ.get("CBHUB_REQUIRE_REDIS") == "1":
        raise RuntimeError(f"CBHUB_REQUIRE_REDIS=1 but no Redis answers at {REDIS_URL}")
    return answers


def require_redis() -> None:
    """Skip the calling test when no Redis answers (see :func:`redis_answers`)."""
    if not redis_answers():
        pytest.skip(f"no Redis answers at {REDIS_URL}")


@contextlib.contextmanager
def redis_prefix_for_test() -> Iterator[str]:
    """A fresh key prefix (``cbhub-test-<12 hex>:``) whose keys are unlinked on exit."""
    import redis

    value = f"cbhub-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield value
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            for key in client.scan_iter(match=value + "*", count=500):
                client.unlink(key)
        finally:
            client.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "brokers(*names): run each test of the module on each broker named "
                                       f"(of {', '.join(BROKERS)}; tests/conftest.py)")
    config.addinivalue_line("markers", "broker_gap(name, reason=...): a known gap of broker `name`: the test is "
                                       "expected to fail there (strict xfail: it fails once the gap is closed)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("brokers")
    if marker is None or "broker" not in metafunc.fixturenames:
        return
    unknown = set(marker.args) - set(BROKERS)
    if unknown:
        raise ValueError(f"unknown brokers {sorted(unknown)} in {metafunc.definition.nodeid}")
    gaps = {mark.args[0]: mark.kwargs["reason"] for mark in metafunc.definition.iter_markers("broker_gap")}
    metafunc.parametrize("broker", [
        pytest.param(kind, marks=pytest.mark.xfail(strict=True, reason=gaps[kind])) if kind in gaps else kind
        for kind in marker.args
    ], indirect=True, scope="function")


class _BrokerChoice:
    """The broker the hubs of the running test use (set by the :func:`broker` fixture):
    ``kind``, the Redis ``prefix`` under ``redis``/``redis2``, and under ``redis2`` each
    hub's peer (by ``id`` of the hub)."""

    kind = "memory"
    prefix = ""
    peers: dict[int, Hub] = {}


@pytest.fixture(autouse=True)
def broker(request: pytest.FixtureRequest) -> Iterator[str]:
    """The broker of this test's hubs: ``memory``, ``redis`` or ``redis2`` (module
    docstring); the parameter of a module marked ``brokers``, else ``CBHUB_TEST_BROKER``
    (default ``memory``). Yields the kind."""
    marked = request.node.get_closest_marker("brokers") is not None
    kind = getattr(request, "param", None) or ("memory" if marked else os.environ.get("CBHUB_TEST_BROKER", "memory"))
    if kind not in BROKERS:
        raise ValueError(f"CBHUB_TEST_BROKER={kind!r}: not one of {BROKERS}")
    if kind == "memory":
        yield kind
        return
    require_redis()
    with redis_prefix_for_test() as prefix:
        _BrokerChoice.kind, _BrokerChoice.prefix, _BrokerChoice.peers = kind, prefix, {}
        try:
            yield kind
        finally:
            _BrokerChoice.kind, _BrokerChoice.prefix, _BrokerChoice.peers = "memory", "", {}


@pytest.fixture
async def mock() -> AsyncIterator[MockProvider]:
    """The mock provider on a free port, replaying from tests/data, fast by default."""
    async with MockProvider(port=0, replay_dir=DATA, tokens=10, tps=0, ttft_ms=0) as provider:
        yield provider


def hub_config(mock: MockProvider, **overrides: Any) -> HubConfig:
    """A hub config whose four providers all point at ``mock``; on the test's broker (under
    ``redis``/``redis2`` the Redis broker with the test's prefix, unless ``overrides`` name
    ``broker_url``)."""
    values: dict[str, Any] = {
        "port": 0,
        "shutdown_drain_timeout_s": 0.0,  # tests that want a drain set it
        "openai_base_url": mock.url + "/v1",
        "anthropic_base_url": mock.url,
        "gemini_base_url": mock.url,
        "ollama_host": mock.url,
    }
    if _BrokerChoice.kind != "memory" and "broker_url" not in overrides:
        values.update(broker_url=REDIS_URL, broker_prefix=_BrokerChoice.prefix)
    values.update(overrides)
    return HubConfig(**values)


@contextlib.asynccontextmanager
async def run_test_hub(config: HubConfig) -> AsyncIterator[Hub]:
    """:func:`hub.app.run_hub` for tests: under ``redis2`` (and a Redis broker config) a
    peer hub runs beside it with the same config, and :func:`ws_factory` spreads the
    hub's clients over both."""
    async with contextlib.AsyncExitStack() as stack:
        running = await stack.enter_async_context(run_hub(config))
        if _BrokerChoice.kind == "redis2" and config.broker_url:
            peer = await stack.enter_async_context(run_hub(config))
            _BrokerChoice.peers[id(running)] = peer
        try:
            yield running
        finally:
            _BrokerChoice.peers.pop(id(running), None)


@pytest.fixture
async def hub(mock: MockProvider, broker: str) -> AsyncIterator[Hub]:
    """The hub on a free port, every provider pointed at the mock (on the test's broker;
    under ``redis2`` with a peer, see :func:`run_test_hub`)."""
    async with run_test_hub(hub_config(mock)) as running:
        yield running


def peer_of(hub: Hub) -> Hub | None:
    """The peer :func:`run_test_hub` started beside ``hub`` (``redis2``), else None."""
    return _BrokerChoice.peers.get(id(hub))


class WSClient:
    """A real ``websockets`` client of ``/ws/stream`` that decodes hub messages."""

    def __init__(self, connection: websockets.asyncio.client.ClientConnection) -> None:
        self.connection = connection
        self.frames: list[str] = []

    async def send(self, message: dict[str, Any]) -> None:
        """Send one JSON text frame."""
        await self.connection.send(msgspec.json.encode(message).decode())

    async def recv(self) -> Any:
        """The next hub message, decoded (raw text kept in :attr:`frames`)."""
        frame = await asyncio.wait_for(self.connection.recv(), RECV_TIMEOUT_S)
        self.frames.append(frame)
        return HUB_DECODER.decode(frame)

    async def until_terminal(self, completion_id: str) -> list[Any]:
        """Messages of one completion up to and including its ``completed`` or ``error``
        (messages of other completions and acknowledgements are skipped)."""
        messages = []
        while True:
            message = await self.recv()
            if isinstance(message, Subscribed) or getattr(message, "completion_id", None) != completion_id:
                continue
            messages.append(message)
            if isinstance(message, (Completed, ErrorMessage)) and message.seq is not None:
                return messages


@pytest.fixture
async def ws_factory() -> AsyncIterator[Any]:
    """Factory ``await ws_factory(hub, query="", **websockets_connect_options)`` of connected
    :class:`WSClient` objects; all are closed at teardown. Under ``redis2`` every second
    client of a hub with a peer (:func:`run_test_hub`) connects to the peer."""
    opened: list[websockets.asyncio.client.ClientConnection] = []
    counts: dict[int, int] = {}

    async def connect(hub: Hub, query: str = "", **options: Any) -> WSClient:
        peer = peer_of(hub)
        count = counts[id(hub)] = counts.get(id(hub), 0) + 1
        target = peer if peer is not None and count % 2 == 0 else hub
        url = target.url.replace("http", "ws", 1) + "/ws/stream" + (f"?{query}" if query else "")
        connection = await websockets.connect(url, compression=None, **options)
        opened.append(connection)
        return WSClient(connection)

    yield connect
    for connection in opened:
        await connection.close()


@pytest.fixture
async def ws_connect(hub: Hub, ws_factory: Any) -> Any:
    """Factory ``await ws_connect()`` of clients of the mock-backed :func:`hub`."""

    async def connect() -> WSClient:
        return await ws_factory(hub)

    return connect
