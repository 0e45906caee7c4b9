"""The OpenAI-compatible HTTP API, driven by the official ``openai`` package and by aiohttp."""

from __future__ import annotations

import aiohttp
import msgspec
import openai
import pytest

from protocol.framing import SSEDecoder
from tools.mock_provider import expected_reasoning, expected_text

#: The OpenAI-compatible API on the in-memory and the Redis broker (tests/conftest.py).
pytestmark = pytest.mark.brokers("memory", "redis")

MODELS = ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest", "google/gemini-2.0-flash", "ollama/llama3.2"]


def sdk(hub) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="not-needed", max_retries=0)


@pytest.mark.parametrize("model", MODELS)
async def test_openai_sdk_streams_through_the_hub_from_every_provider(hub, model: str) -> None:
    client = sdk(hub)
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count [[mock tokens=25 tps=500 seed=2]]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, ids = "", None, None, set()
    async for chunk in stream:
        ids.add(chunk.id)
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == model
        if chunk.choices:
            choice = chunk.choices[0]
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
    await client.close()
    assert text == expected_text(25, seed=2)
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 25
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert len(ids) == 1


async def test_openai_sdk_tool_call_and_reasoning(hub) -> None:
    client = sdk(hub)
    stream = await client.chat.completions.create(
        model="anthropic/claude-3-5-haiku-latest",
        messages=[{"role": "user", "content": "weather? [[mock tokens=3 reasoning=4 tool=get_weather seed=1]]"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        stream=True,
    )
    calls, finish, reasoning = [], None, ""
    async for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning += getattr(delta, "reasoning_content", None) or ""
            calls.extend(delta.tool_calls or [])
            finish = chunk.choices[0].finish_reason or finish
    await client.close()
    assert finish == "tool_calls"
    assert reasoning == expected_reasoning(4, seed=1)
    assert [(c.function.name, msgspec.json.decode(c.function.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]


async def test_openai_sdk_non_streamed(hub) -> None:
    client = sdk(hub)
    result = await client.chat.completions.create(
        model="ollama/llama3.2", messages=[{"role": "user", "content": "[[mock tokens=7 seed=5]]"}], stream=False
    )
    await client.close()
    assert result.object == "chat.completion"
    assert result.choices[0].message.content == expected_text(7, seed=5)
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.completion_tokens == 7


async def test_openai_sdk_gets_typed_errors(hub) -> None:
    client = sdk(hub)
    with pytest.raises(openai.NotFoundError) as not_found:
        await client.chat.completions.create(model="nobody/none", messages=[{"role": "user", "content": "x"}], stream=True)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "[[mock status=429]]"}], stream=True
        )
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="openai/gpt-4o-mini", messages=[], stream=True)
    # An error after content started arrives in-band; the SDK raises APIError mid-stream.
    stream = await client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "[[mock tokens=10 error_after=2]]"}], stream=True
    )
    text = ""
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    await client.close()
    assert text == expected_text(2)


async def _read_sse(response: aiohttp.ClientResponse) -> list[str]:
    decoder = SSEDecoder()
    events = []
    async for piece in response.content.iter_any():
        events.extend(e.data for e in decoder.feed(piece))
    events.extend(e.data for e in decoder.close())
    assert not decoder.unterminated
    return events


async def test_sse_wire_format_ends_with_done_and_usage_chunk(hub) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(hub.url + "/v1/chat/completions", json={
            "model": "google/gemini-2.0-flash", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "[[mock tokens=5]]"}],
        }) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events = await _read_sse(response)
    assert events[-1] == "[DONE]"
    chunks = [msgspec.json.decode(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == expected_text(5)


async def test_eventsource_get_endpoint(hub) -> None:
    messages = msgspec.json.encode([{"role": "user", "content": "[[mock tokens=6 seed=9]]"}]).decode()
    async with aiohttp.ClientSession() as session:
        async with session.get(hub.url + "/v1/chat/completions/stream",
                               params={"model": "openai/gpt-4o-mini", "messages": messages}) as response:
            assert response.status == 200
            events = await _read_sse(response)
        async with session.get(hub.url + "/v1/chat/completions/stream", params={"model": "openai/gpt-4o-mini"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "invalid_message"
    assert events[-1] == "[DONE]"
    text = "".join(msgspec.json.decode(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == expected_text(6, seed=9)


async def test_eventsource_reconnect_after_the_end_starts_nothing(hub, mock) -> None:
    """The stream carries an SSE id; a browser reconnecting with Last-Event-ID gets 204."""
    messages = msgspec.json.encode([{"role": "user", "content": "[[mock tokens=2]]"}]).decode()
    params = {"model": "openai/gpt-4o-mini", "messages": messages}
    async with aiohttp.ClientSession() as session:
        async with session.get(hub.url + "/v1/chat/completions/stream", params=params) as response:
            decoder = SSEDecoder()
            async for piece in response.content.iter_any():
                decoder.feed(piece)
            decoder.close()
        assert decoder.last_event_id
        async with session.get(hub.url + "/v1/chat/completions/stream", params=params,
                               headers={"Last-Event-ID": decoder.last_event_id}) as response:
            assert response.status == 204
    assert mock.stats["requests"] == 1


async def test_models_and_health(hub) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(hub.url + "/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
        async with session.get(hub.url + "/v1/models") as response:
            body = await response.json()
    assert body["object"] == "list"
    owners = {m["owned_by"] for m in body["data"]}
    assert owners == {"openai", "anthropic", "google", "ollama"}  # all four point at the mock
    assert all(m["id"].startswith(m["owned_by"] + "/") for m in body["data"])


async def test_http_client_going_away_cancels_the_upstream(hub, mock) -> None:
    async with aiohttp.ClientSession() as session:
        response = await session.post(hub.url + "/v1/chat/completions", json={
            "model": "openai/gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "[[mock tokens=3000 tps=100]]"}],
        })
        await response.content.readany()
        response.close()
    import asyncio

    deadline = asyncio.get_running_loop().time() + 10
    while mock.stats["disconnected"] < 1:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert mock.stats["completed"] == 0
