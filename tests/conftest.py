"""Fixtures for tests that run the hub on real sockets (127.0.0.1) against the mock provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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


@pytest.fixture
async def mock() -> AsyncIterator[MockProvider]:
    """The mock provider on a free port, replaying from tests/data, fast by default."""
    async with MockProvider(port=0, replay_dir=DATA, tokens=10, tps=0, ttft_ms=0) as provider:
        yield provider


def hub_config(mock: MockProvider, **overrides: Any) -> HubConfig:
    """A hub config whose four providers all point at ``mock``."""
    values: dict[str, Any] = {
        "port": 0,
        "shutdown_drain_timeout_s": 0.0,  # tests that want a drain set it
        "openai_base_url": mock.url + "/v1",
        "anthropic_base_url": mock.url,
        "gemini_base_url": mock.url,
        "ollama_host": mock.url,
    }
    values.update(overrides)
    return HubConfig(**values)


@pytest.fixture
async def hub(mock: MockProvider) -> AsyncIterator[Hub]:
    """The hub on a free port, every provider pointed at the mock."""
    async with run_hub(hub_config(mock)) as running:
        yield running


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
    :class:`WSClient` objects; all are closed at teardown."""
    opened: list[websockets.asyncio.client.ClientConnection] = []

    async def connect(hub: Hub, query: str = "", **options: Any) -> WSClient:
        url = hub.url.replace("http", "ws", 1) + "/ws/stream" + (f"?{query}" if query else "")
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
