"""Graceful shutdown (drain, then shutting_down, then close 1012; nothing leaked), SIGTERM to a
real ``cbhub serve``, and the SSE comment keepalive. Real sockets, the websockets client,
aiohttp, and the openai package."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp
import openai
import pytest
import websockets

from hub.app import run_hub
from protocol.messages import Completed, ContentChunk, ErrorMessage, Pong, Subscribed
from tests.conftest import RECV_TIMEOUT_S, WSClient, hub_config
from tools.bench.procs import hub_env
from tools.mock_provider import expected_text

OPENAI = "openai/gpt-4o-mini"

#: Shutdown, grace period and keep-alives on the in-memory and the Redis broker (tests/conftest.py).
pytestmark = pytest.mark.brokers("memory", "redis")


async def read_until_closed(client: WSClient) -> tuple[list, int | None]:
    messages = []
    try:
        while True:
            messages.append(await client.recv())
    except websockets.ConnectionClosed as closed:
        return messages, closed.rcvd.code if closed.rcvd else None


async def test_shutdown_drains_running_completions_then_ends_the_rest(mock, ws_factory):
    context = run_hub(hub_config(mock, shutdown_drain_timeout_s=1.0))
    hub = await context.__aenter__()
    draining = asyncio.Event()
    drain = hub.drain

    async def drain_observed() -> None:
        draining.set()  # this task first runs drain() up to its first await: `closing` is set then
        await drain()

    hub.drain = drain_observed
    early: list = []  # what arrived before the shutdown began
    try:
        client = await ws_factory(hub)
        for cid, directive in (("short", "[[mock tokens=10 tps=40]]"), ("long", "[[mock tokens=1000 tps=20]]")):
            await client.send({"type": "completion", "id": cid, "model": OPENAI, "coalesce": False,
                               "messages": [{"role": "user", "content": directive}]})
        while sum(isinstance(m, Subscribed) for m in early) < 2:  # both admitted and running
            early.append(await asyncio.wait_for(client.recv(), RECV_TIMEOUT_S))
    finally:
        shutdown = asyncio.create_task(context.__aexit__(None, None, None))
        await asyncio.wait_for(draining.wait(), RECV_TIMEOUT_S)
        assert hub.completions.closing  # the drain has begun
        # During the drain the hub takes no new completion (and no new connection).
        await client.send({"type": "completion", "id": "late", "model": OPENAI,
                           "messages": [{"role": "user", "content": "hi"}]})
        with pytest.raises(OSError):
            await websockets.connect(hub.url.replace("http", "ws", 1) + "/ws/stream", open_timeout=2)
        await shutdown
    messages, code = await read_until_closed(client)
    assert code == 1012
    messages = [m for m in early + messages if not isinstance(m, Subscribed)]
    short = [m for m in messages if getattr(m, "completion_id", None) == "short"]
    assert isinstance(short[-1], Completed) and "".join(m.content for m in short[:-1]) == expected_text(10)
    long = [m for m in messages if getattr(m, "completion_id", None) == "long"]
    assert isinstance(long[-1], ErrorMessage) and long[-1].error.code == "shutting_down" and long[-1].error.retryable
    assert [m.seq for m in long] == list(range(1, len(long) + 1))
    refused = [m for m in messages if isinstance(m, ErrorMessage) and m.completion_id is None]
    assert [m.error.code for m in refused] == ["shutting_down"]
    assert mock.stats["disconnected"] == 1  # the long one was cancelled upstream


async def test_shutdown_leaks_no_task_and_no_connection(mock, ws_factory):
    before = set(asyncio.all_tasks())
    async with run_hub(hub_config(mock)) as hub, aiohttp.ClientSession() as session:
        clients = [await ws_factory(hub) for _ in range(3)]
        for n, client in enumerate(clients):
            await client.send({"type": "completion", "id": f"k{n}", "model": OPENAI,
                               "messages": [{"role": "user", "content": "[[mock tokens=500 tps=50]]"}]})
        for client in clients:  # each completion admitted and running before the shutdown
            assert isinstance(await asyncio.wait_for(client.recv(), RECV_TIMEOUT_S), Subscribed)
        sse = await session.post(hub.url + "/v1/chat/completions", json={
            "model": OPENAI, "stream": True, "messages": [{"role": "user", "content": "[[mock tokens=500 tps=50]]"}]})
        await sse.content.readany()
    for client in clients:
        await read_until_closed(client)
    sse.close()
    assert hub.connections == set()
    assert all(run.finished for run in hub.completions.runs.values())
    assert hub.session is not None and hub.session.closed
    await asyncio.sleep(0.05)
    leftover = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    hub_tasks = [t for t in leftover if t.get_name().startswith(("completion:", "ws-drain"))
                 or "hub/" in repr(t.get_coro())]
    assert hub_tasks == []
    assert mock.stats["active"] == 0


def test_sigterm_to_cbhub_serve_is_a_graceful_shutdown(mock_process_url):
    async def scenario() -> tuple[list, int | None, int]:
        env = {**os.environ, **hub_env(mock_process_url), "CBHUB_PORT": "0", "CBHUB_SHUTDOWN_DRAIN_TIMEOUT_S": "0.3"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.cli", "serve", "--log-level", "WARNING", env=env, stdout=asyncio.subprocess.PIPE)
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        url = line.split("listening on ")[1].split()[0]
        connection = await websockets.connect(url.replace("http", "ws", 1) + "/ws/stream", compression=None)
        client = WSClient(connection)
        await client.send({"type": "completion", "id": "t1", "model": OPENAI, "coalesce": False,
                           "messages": [{"role": "user", "content": "[[mock tokens=1000 tps=20]]"}]})
        first = [await client.recv(), await client.recv()]  # subscribed, then the first token
        process.send_signal(signal.SIGTERM)
        messages, code = await read_until_closed(client)
        status = await asyncio.wait_for(process.wait(), 30)
        return first + messages, code, status

    messages, code, status = asyncio.run(scenario())
    assert status == 0 and code == 1012
    assert isinstance(messages[1], ContentChunk)
    assert isinstance(messages[-1], ErrorMessage) and messages[-1].error.code == "shutting_down"


@pytest.fixture
def mock_process_url():
    """The mock provider in its own process (the hub under test is a separate process too)."""
    import subprocess

    process = subprocess.Popen([sys.executable, "-m", "tools.mock_provider", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    yield line.split("listening on ")[1].strip()
    process.terminate()
    process.wait(10)
    process.stdout.close()


async def test_sse_sends_keepalive_comments_while_waiting_and_in_gaps(mock):
    async with run_hub(hub_config(mock, sse_keepalive_interval_s=0.1)) as hub, aiohttp.ClientSession() as session:
        async with session.post(hub.url + "/v1/chat/completions", json={
                "model": OPENAI, "stream": True, "coalesce": False,
                "messages": [{"role": "user", "content": "[[mock tokens=3 tps=3 ttft_ms=350]]"}]}) as response:
            assert response.status == 200
            body = (await asyncio.wait_for(response.read(), RECV_TIMEOUT_S)).decode()
    before_first = body.split("data: ")[0]
    assert before_first.count(": keepalive\n\n") >= 2  # while waiting for the first token
    between = body.split("data: ", 2)[2]
    assert ": keepalive\n\n" in between  # in the 333 ms gaps between tokens
    assert body.rstrip().endswith("data: [DONE]")


async def test_sse_keepalive_then_error_is_an_sse_error_event(mock):
    config = hub_config(mock, sse_keepalive_interval_s=0.1, retry_max_attempts=1, first_byte_timeout_s=0.25,
                        connect_timeout_s=0.1)
    async with run_hub(config) as hub, aiohttp.ClientSession() as session:
        async with session.post(hub.url + "/v1/chat/completions", json={
                "model": OPENAI, "stream": True,
                "messages": [{"role": "user", "content": "[[mock script=stall script_id=ka]]"}]}) as response:
            assert response.status == 200  # the headers went out with the first keepalive
            body = (await response.read()).decode()
    assert body.startswith(": keepalive\n\n") and '"error"' in body and body.rstrip().endswith("data: [DONE]")


async def test_openai_sdk_reads_through_keepalive_comments(mock):
    async with run_hub(hub_config(mock, sse_keepalive_interval_s=0.05)) as hub:
        client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused")
        stream = await client.chat.completions.create(
            model=OPENAI, stream=True,
            messages=[{"role": "user", "content": "[[mock tokens=4 tps=8 ttft_ms=200]]"}])
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        await client.close()
    assert text == expected_text(4)


async def test_grace_period_keeps_a_left_completion_then_cancels_it_upstream(mock, ws_factory):
    async with run_hub(hub_config(mock, grace_period_s=0.3)) as hub:
        leaver = await ws_factory(hub)
        for cid, directive in (("orphan", "[[mock tokens=1000 tps=50]]"), ("adopted", "[[mock tokens=30 tps=50]]")):
            await leaver.send({"type": "completion", "id": cid, "model": OPENAI, "coalesce": False,
                               "messages": [{"role": "user", "content": directive}]})
        await leaver.recv()
        await leaver.connection.close()
        # A subscriber within the grace period keeps "adopted" alive to its end.
        adopter = await ws_factory(hub)
        await adopter.send({"type": "subscribe", "channels": ["completion:adopted"]})
        adopted = await adopter.until_terminal("adopted")
        assert isinstance(adopted[-1], Completed)
        assert "".join(m.content for m in adopted if isinstance(m, ContentChunk)) == expected_text(30)
        # Nobody came back for "orphan": cancelled upstream after the grace period.
        for _ in range(300):
            if mock.stats["disconnected"] == 1:
                break
            await asyncio.sleep(0.01)
        assert mock.stats["disconnected"] == 1 and hub.completions.get("orphan").state == "cancelled"
        late = await ws_factory(hub)  # retention: the end is still there to read
        await late.send({"type": "subscribe", "channels": ["completion:orphan"]})
        orphan = await late.until_terminal("orphan")
        assert isinstance(orphan[-1], ErrorMessage) and orphan[-1].error.code == "cancelled"


async def test_a_peer_that_never_answers_pings_is_dropped(mock, ws_factory):
    config = hub_config(mock, ws_ping_interval_s=0.1, ws_pong_timeout_s=0.1)
    async with run_hub(config) as hub, aiohttp.ClientSession() as session:
        # autoping=False: the client hands the Pings to us and never answers them.
        silent = await session.ws_connect(hub.url + "/ws/stream", autoping=False)
        answering = await ws_factory(hub)  # the websockets client answers Pings in the background
        message = await asyncio.wait_for(silent.receive(), RECV_TIMEOUT_S)
        assert message.type == aiohttp.WSMsgType.PING
        for _ in range(200):
            if len(hub.connections) == 1:
                break
            await asyncio.sleep(0.02)
        assert len(hub.connections) == 1  # the silent one is gone, the answering one stays
        await asyncio.sleep(0.3)  # several ping intervals more
        await answering.send({"type": "ping"})
        assert isinstance(await answering.recv(), Pong)
        await silent.close()
