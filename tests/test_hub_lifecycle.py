"""Lifecycle and failure edges of the hub: cancellation before a task runs, bodies cut by
the network, error bodies in pieces, duplicate delivery, subscriber bookkeeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hub.app import Hub, run_hub
from hub.config import HubConfig
from protocol.messages import ChatMessage, Completed, Completion, ContentChunk, ErrorMessage, Subscribed
from tests.conftest import hub_config
from tools.mock_provider import expected_text

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Collector:
    """A subscriber that keeps every message it is handed."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def deliver(self, event: Any) -> None:
        self.messages.append(event.message)


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start a one-route aiohttp server with a handler of the test's choosing; yields a
    function that returns its base URL."""
    runners: list[web.AppRunner] = []

    async def serve(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield serve
    for runner in runners:
        await runner.cleanup()


def completion(model: str, content: str = "hi") -> Completion:
    return Completion(model=model, messages=[ChatMessage(role="user", content=content)])


async def run_one(hub: Hub, request: Completion) -> list[Any]:
    collector = Collector()
    run = hub.completions.create(request)
    hub.completions.subscribe(collector, run)
    run.start()
    await run.wait()
    return collector.messages


async def test_cancel_before_the_task_first_runs_still_ends_the_completion(hub: Hub) -> None:
    collector = Collector()
    run = hub.completions.create(completion("openai/gpt-4o-mini", "[[mock tokens=5]]"))
    hub.completions.subscribe(collector, run)
    run.start()
    run.cancel()  # no await in between: the task has not taken its first step
    await run.wait()
    assert run.state == "cancelled"
    assert len(collector.messages) == 1
    (message,) = collector.messages
    assert isinstance(message, ErrorMessage) and message.error.code == "cancelled" and message.seq == 1
    assert run.id in hub.completions._retirements  # retained, then forgotten like any other


async def test_gemini_body_cut_by_the_network_is_truncated_even_after_stop(raw_upstream) -> None:
    async def cut_after_one_chunk(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'data: {"candidates": [{"content": {"parts": [{"text": "First "}], "role": "model"},'
                             b' "finishReason": "STOP"}]}\r\n\r\n')
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()  # no terminating chunk: the client sees a payload error
        return response

    url = await raw_upstream(cut_after_one_chunk)
    async with run_hub(HubConfig(port=0, gemini_base_url=url, gemini_api_key="AIzaTestKey0123456789012345")) as hub:
        messages = await run_one(hub, completion("google/gemini-2.0-flash"))
    assert [type(m) for m in messages] == [ContentChunk, ErrorMessage]
    assert messages[0].content == "First "
    assert messages[1].error.code == "stream_truncated" and messages[1].error.retryable


async def test_an_error_body_sent_in_pieces_is_read_whole(raw_upstream) -> None:
    async def slow_429(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=429, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"error": {"message": "Rate limit reache')
        await asyncio.sleep(0.05)
        await response.write(b'd for gpt-4o-mini; try again in 2s", "type": "requests"}}')
        await response.write_eof()
        return response

    url = await raw_upstream(slow_429)
    async with run_hub(HubConfig(port=0, openai_base_url=url)) as hub:
        (message,) = await run_one(hub, completion("openai/gpt-4o-mini"))
    assert isinstance(message, ErrorMessage)
    assert message.error.code == "rate_limited" and message.error.status == 429 and message.error.retryable
    assert message.error.message.endswith("Rate limit reached for gpt-4o-mini; try again in 2s")


async def test_type_subscriber_that_also_subscribes_to_the_channel_gets_each_frame_once(ws_connect) -> None:
    watcher = await ws_connect()
    await watcher.send({"type": "subscribe", "streams": ["completion"]})
    assert isinstance(await watcher.recv(), Subscribed)
    owner = await ws_connect()
    await owner.send({"type": "completion", "id": "dup", "model": "openai/gpt-4o-mini",
                      "messages": [{"role": "user", "content": "[[mock tokens=30 tps=300]]"}]})
    first = await watcher.recv()
    assert isinstance(first, ContentChunk)
    await watcher.send({"type": "subscribe", "channels": ["completion:dup"]})
    seqs = [first.seq]
    while True:
        message = await watcher.recv()
        if isinstance(message, Subscribed):
            continue
        seqs.append(message.seq)
        if isinstance(message, (Completed, ErrorMessage)):
            break
    assert seqs == list(range(1, len(seqs) + 1))


async def test_type_subscriber_gets_the_history_of_a_channel_it_never_saw(ws_connect) -> None:
    owner = await ws_connect()
    await owner.send({"type": "completion", "id": "before", "model": "openai/gpt-4o-mini",
                      "messages": [{"role": "user", "content": "[[mock tokens=5]]"}]})
    mine = await owner.until_terminal("before")
    watcher = await ws_connect()
    await watcher.send({"type": "subscribe", "streams": ["completion"], "channels": ["completion:before"]})
    ack = await watcher.recv()
    assert isinstance(ack, Subscribed) and ack.channels == ["completion:before"]
    assert await watcher.until_terminal("before") == mine


async def test_http_requests_leave_no_subscriber_behind(mock) -> None:
    async with run_hub(hub_config(mock, retention_s=0.0)) as hub, aiohttp.ClientSession() as session:
        for stream in (True, False, True):
            async with session.post(hub.url + "/v1/chat/completions", json={
                "model": "openai/gpt-4o-mini", "stream": stream,
                "messages": [{"role": "user", "content": "[[mock tokens=3]]"}]}) as response:
                assert response.status == 200
                await response.read()
        await asyncio.sleep(0.05)  # retention of 0 s: the finished runs are retired next tick
        assert hub.multiplexer._subscriptions == {}
        assert list(hub.multiplexer.channels) == ["system"]  # the system channel lives with the hub
        assert hub.completions.runs == {}


async def test_no_new_completion_once_shutdown_began(hub: Hub) -> None:
    await hub.completions.close()
    with pytest.raises(Exception) as refused:
        hub.completions.create(completion("openai/gpt-4o-mini"))
    assert getattr(refused.value, "code", None) == "shutting_down"


@pytest.mark.parametrize(("model", "key"), [("openai/o4-mini", "max_completion_tokens"), ("openai/gpt-4o-mini", "max_tokens")])
async def test_openai_reasoning_models_get_max_completion_tokens(ws_connect, mock, model: str, key: str) -> None:
    client = await ws_connect()
    await client.send({"type": "completion", "id": "mt", "model": model, "max_tokens": 50,
                       "messages": [{"role": "user", "content": "[[mock tokens=2]]"}]})
    await client.until_terminal("mt")
    body = mock.requests[-1]["body"]
    assert body[key] == 50
    assert ({"max_tokens", "max_completion_tokens"} - {key}).isdisjoint(body)


async def test_an_error_body_that_stalls_ends_in_upstream_timeout(raw_upstream) -> None:
    async def stalled_503(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=503, headers={"Content-Type": "application/json"})
        response.content_length = 100
        await response.prepare(request)
        await response.write(b'{"error":')  # 9 of the 100 bytes announced, then nothing
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.02)  # until the hub gives up and closes the connection
        return response

    url = await raw_upstream(stalled_503)
    config = HubConfig(port=0, openai_base_url=url, openai_api_key="sk-test", idle_timeout_s=0.3)
    async with run_hub(config) as hub:
        messages = await asyncio.wait_for(run_one(hub, completion("openai/gpt-4o-mini")), 10)
    [error] = messages
    assert isinstance(error, ErrorMessage) and error.error.code == "upstream_timeout"


async def test_idle_timeout_zero_means_no_idle_timeout(mock) -> None:
    async with run_hub(hub_config(mock, idle_timeout_s=0)) as hub:
        messages = await run_one(hub, completion("openai/gpt-4o-mini", "[[mock tokens=3 tps=20]]"))
    assert isinstance(messages[-1], Completed)
    assert "".join(m.content for m in messages if isinstance(m, ContentChunk)) == expected_text(3)
