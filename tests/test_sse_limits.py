"""The OpenAI-compatible SSE endpoint obeys the same limits as WebSocket clients: one
``max_connections`` for both, the memory budget, and the outbox's slow-consumer policy
(merge past the soft limit, drop past the hard limit). Real sockets on 127.0.0.1, the mock
provider upstream."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import msgspec
import openai
import pytest
import websockets

from hub.app import Hub, run_hub
from tests.conftest import hub_config
from tools.mock_provider import expected_text

#: On the in-memory and the Redis broker (tests/conftest.py).
pytestmark = pytest.mark.brokers("memory", "redis")


def _body(prompt: str) -> bytes:
    return msgspec.json.encode({"model": "openai/gpt-4o-mini", "stream": True,
                                "messages": [{"role": "user", "content": prompt}]})


def _raw_sse_request(hub: Hub, prompt: str, rcvbuf: int = 4096) -> socket.socket:
    """Send a streaming POST on a plain socket with a small receive buffer; nothing reads
    from it until the test does (an asyncio stream would read eagerly)."""
    host, port = hub.url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    body = _body(prompt)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + f"{host}:{port}".encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    sock.setblocking(False)
    return sock


async def _read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    parts = []
    while True:
        part = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 30)
        if not part:
            return b"".join(parts)
        parts.append(part)


def _shrink_hub_side(hub: Hub) -> None:
    """A fixed small kernel send buffer on the hub's side of every SSE response (no autotuning)."""
    for outbox in hub.connections:
        if outbox.transport_name == "sse":
            transport: Any = outbox._transport  # type: ignore[attr-defined]
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


async def _wait_for(condition: Any, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def test_one_max_connections_for_websocket_and_sse(mock) -> None:
    async with run_hub(hub_config(mock, max_connections=1)) as hub:
        url = hub.url.replace("http", "ws", 1) + "/ws/stream"
        async with websockets.connect(url) as first:
            await first.send('{"type":"ping"}')
            await first.recv()
            async with aiohttp.ClientSession() as http:
                async with http.post(hub.url + "/v1/chat/completions", data=_body("hi"),
                                     headers={"Content-Type": "application/json"}) as response:
                    assert response.status == 503
                    error = (await response.json())["error"]
                    assert error["code"] == "hub_overloaded" and "max_connections" in error["message"]
        await _wait_for(lambda: not hub.connections, "the WebSocket to leave")
        # Now an SSE response holds the one place, and a WebSocket is turned away.
        client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="x", max_retries=0)
        stream = await client.chat.completions.create(
            model="openai/gpt-4o-mini", stream=True,
            messages=[{"role": "user", "content": "[[mock tokens=40 tps=100]]"}])
        async with websockets.connect(url) as second:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await second.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        await client.close()
        assert text == expected_text(40)


async def test_a_slow_sse_reader_gets_merged_chunks_and_the_same_text(mock) -> None:
    tokens = 3000
    config = hub_config(mock, outbound_soft_limit_bytes=2048, outbound_hard_limit_bytes=64 << 20)
    async with run_hub(config) as hub:
        sock = _raw_sse_request(hub, f"[[mock tokens={tokens}]]")
        await _wait_for(lambda: hub.connections, "the SSE response to start")
        _shrink_hub_side(hub)
        # Read nothing until the hub has the whole answer: it piles up in the outbox, merged.
        await _wait_for(lambda: hub.completions.runs and all(r.finished for r in hub.completions.runs.values()),
                        "the completion to finish")
        raw = await _read_all(sock)
        sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    text, chunks = "", 0
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            delta = msgspec.json.decode(line[6:])["choices"]
            if delta and delta[0]["delta"].get("content"):
                text += delta[0]["delta"]["content"]
                chunks += 1
    assert text == expected_text(tokens)
    assert chunks < tokens  # merged while the reader was away: fewer, larger chunks
    assert b"data: [DONE]\n\n" in body


async def test_an_sse_reader_past_the_hard_limit_is_dropped_and_its_completion_cancelled(mock) -> None:
    config = hub_config(mock, outbound_soft_limit_bytes=1024, outbound_hard_limit_bytes=16384)
    async with run_hub(config) as hub:
        sock = _raw_sse_request(hub, "[[mock tokens=20000]]")
        await _wait_for(lambda: hub.connections, "the SSE response to start")
        _shrink_hub_side(hub)
        # A fast WebSocket watcher of the same completion keeps everything.
        await _wait_for(lambda: hub.completions.runs, "the completion to start")
        [run] = hub.completions.runs.values()
        url = hub.url.replace("http", "ws", 1) + "/ws/stream"
        async with websockets.connect(url, max_size=None) as watcher:
            await watcher.send(msgspec.json.encode({"type": "subscribe", "channels": [run.channel.name]}).decode())
            await _wait_for(lambda: run.finished, "the completion to end")
            await _wait_for(lambda: len(hub.connections) == 1, "the slow SSE response to be dropped")
            last: dict[str, Any] = {}
            while last.get("seq") is None or last.get("type") not in ("completed", "error"):
                last = msgspec.json.decode(await asyncio.wait_for(watcher.recv(), 10))
        sock.close()
    assert run.state == "cancelled" and last["type"] == "error" and last["error"]["code"] == "cancelled"
    assert run.channel.last_seq < 20000  # stopped upstream long before the end


async def test_a_non_streamed_answer_is_never_cut_by_the_hard_limit(mock) -> None:
    # The handler takes every event as it comes and writes once: no slow reader to protect from.
    config = hub_config(mock, outbound_soft_limit_bytes=64, outbound_hard_limit_bytes=256)
    async with run_hub(config) as hub:
        client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="x", max_retries=0)
        answer = await client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "[[mock tokens=2000]]"}])
        await client.close()
    assert answer.choices[0].message.content == expected_text(2000)
    assert answer.choices[0].finish_reason == "stop"
