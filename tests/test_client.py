"""The Python SDK (hub/client.py) and ``cbhub chat``, against the real hub and the mock
provider over real sockets: streaming, results, errors, subscribe, cancel, and reconnects with
resume (replay and snapshot) at chosen and at random points of a paced completion."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

import hub.client.connection as client_module
from hub.app import Hub, run_hub
from hub.client import (
    CompletionResult,
    HubClient,
    HubConnectionError,
    HubRequestError,
    HubStream,
    HubStreamError,
    Reconnect,
)
from protocol.messages import (
    CircuitState,
    Completed,
    ContentChunk,
    Snapshot,
    Subscribed,
    ThinkingStatus,
    ToolCallMessage,
    encode,
)
from tests.conftest import RECV_TIMEOUT_S, hub_config
from tests.support import ROOT
from tools.mock_provider import MockProvider, expected_choice_text, expected_reasoning, expected_text

#: The SDK against the in-memory and the Redis broker (tests/conftest.py).
pytestmark = pytest.mark.brokers("memory", "redis")

MODEL = "openai/gpt-4o-mini"


def ws_url(hub: Hub) -> str:
    return hub.url.replace("http", "ws", 1) + "/ws/stream"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
async def client(hub: Hub) -> AsyncIterator[HubClient]:
    async with HubClient(ws_url(hub), base_delay_s=0.02, max_delay_s=0.1) as connected:
        yield connected


async def drain(stream: HubStream) -> list[Any]:
    """Every event of ``stream`` to its end (bounded by the suite's safety timeout)."""
    events = []
    async with asyncio.timeout(RECV_TIMEOUT_S):
        async for event in stream:
            events.append(event)
    return events


def text_of(events: list[Any]) -> str:
    return "".join(event.content for event in events if isinstance(event, ContentChunk))


def drop(client: HubClient) -> None:
    """Drop the client's TCP connection without a close frame (the client sees 1006)."""
    client.websocket.transport.abort()


@pytest.fixture
def fixed_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reconnect waits 0.15 s: long enough for a paced completion to move on (or end)
    while the client is away."""
    monkeypatch.setattr(client_module, "backoff_delay_s", lambda *args, **kwargs: 0.15)


# Streaming, results, errors.


async def test_streams_typed_events_with_the_exact_text_and_the_result(client: HubClient) -> None:
    stream = client.completion(model=MODEL, messages=user("Hi [[mock tokens=40 seed=3]]"), max_tokens=100)
    events = await drain(stream)
    assert text_of(events) == expected_text(40, seed=3)
    assert not any(isinstance(event, Subscribed) for event in events)  # the ack is not yielded
    assert isinstance(events[-1], Completed)
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    result = stream.result
    assert isinstance(result, CompletionResult)
    assert result.done and result.text == expected_text(40, seed=3)
    assert result.finish_reason == "stop" and result.provider == "openai" and result.model == "gpt-4o-mini"
    assert result.usage is not None and result.usage.completion_tokens == 40
    assert result.ttft_ms is not None and result.client_ttft_ms is not None and result.client_ttft_ms >= 0
    assert result.completion_id == stream.id and stream.id.startswith("py-")
    assert result.error is None


async def test_result_holds_reasoning_and_tool_calls(client: HubClient) -> None:
    stream = client.completion(model="anthropic/claude-sonnet-4-5", id="tools-1",
                               messages=user("Weather? [[mock tokens=5 reasoning=4 tool=get_weather seed=4]]"),
                               tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}])
    result = await stream.collect()
    assert stream.id == "tools-1"
    assert result.text == expected_text(5, seed=4)
    assert result.reasoning == expected_reasoning(4, seed=4)
    assert [(call.tool, call.arguments) for call in result.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert isinstance(result.tool_calls[0], ToolCallMessage)
    assert result.finish_reason == "tool_calls"


async def test_terminal_error_raises_hub_stream_error_after_the_text(client: HubClient) -> None:
    stream = client.completion(model=MODEL, messages=user("Hi [[mock tokens=10 error_after=3 seed=1]]"))
    events = []
    with pytest.raises(HubStreamError) as caught:
        async for event in stream:
            events.append(event)
    error = caught.value
    assert error.code == "provider_error" and error.error.code == "provider_error"
    assert isinstance(error.retryable, bool)
    assert error.completion_id == stream.id and error.result is stream.result
    assert text_of(events) == expected_text(3, seed=1) == stream.result.text
    assert stream.result.error is not None and stream.result.done
    assert [event async for event in stream] == []  # the iterator has ended


async def test_rejected_completion_raises_at_start(client: HubClient) -> None:
    await client.completion(model=MODEL, id="dup-1", messages=user("[[mock tokens=2]]")).collect()
    with pytest.raises(HubStreamError) as caught:
        await client.completion(model=MODEL, id="dup-1", messages=user("[[mock tokens=2]]")).collect()
    assert caught.value.code == "duplicate_id"
    await client.ping()  # the connection is still in step with its answers


async def test_bad_arguments_are_refused_before_sending(client: HubClient) -> None:
    with pytest.raises(TypeError, match="top_k"):
        client.completion(model=MODEL, messages=user("hi"), top_k=0.5)
    with pytest.raises(ValueError):
        client.completion(model=MODEL, messages=user("hi"), id="has space")
    with pytest.raises(ValueError):
        client.subscribe("bogus")


async def test_connect_failure_is_a_hub_connection_error() -> None:
    with pytest.raises(HubConnectionError):
        async with HubClient("ws://127.0.0.1:1/ws/stream", open_timeout_s=2):
            pass


# Subscribe, cancel.


async def test_a_second_client_subscribing_gets_the_identical_events(hub: Hub, client: HubClient) -> None:
    stream = client.completion(model=MODEL, messages=user("Hi [[mock tokens=30 tps=300 seed=5]]"))
    await stream.start()
    async with HubClient(ws_url(hub)) as other:
        watched = other.subscribe(stream.channel)
        mine, theirs = await asyncio.gather(drain(stream), drain(watched))
    assert [encode(event) for event in theirs] == [encode(event) for event in mine]
    assert text_of(theirs) == expected_text(30, seed=5)
    assert watched.result.text == stream.result.text and watched.result.client_ttft_ms is None


async def test_subscribe_to_an_unknown_channel_raises(client: HubClient) -> None:
    with pytest.raises(HubStreamError) as caught:
        await drain(client.subscribe("completion:nope"))
    assert caught.value.code == "unknown_channel"


async def test_system_channel_resumes_across_a_drop_without_repeats(mock: MockProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    """circuit_state on the system channel: one event before the drop, two published while
    the client is away (a second client's probe closes the breaker), each yielded once."""
    monkeypatch.setattr(client_module, "backoff_delay_s", lambda *args, **kwargs: 0.4)
    config = hub_config(mock, retry_max_attempts=1, breaker_min_requests=2, breaker_failure_rate=0.5,
                        breaker_cooldown_s=0.03, breaker_window_s=60, dead_letter_path="")
    async with run_hub(config) as hub, HubClient(ws_url(hub)) as client, HubClient(ws_url(hub)) as other:
        system = client.subscribe("system")
        await system.start()
        assert system.result is None and system.id is None
        for n in range(2):
            with pytest.raises(HubStreamError):
                await other.completion(model=MODEL, messages=user(f"[[mock script=503 script_id=s{n}]]")).collect()
        opened = await asyncio.wait_for(anext(system), RECV_TIMEOUT_S)
        assert isinstance(opened, CircuitState) and opened.state == "open" and opened.seq == 1
        drop(client)  # away for 0.4 s
        await asyncio.sleep(0.05)  # the cool-down
        probe = await other.completion(model=MODEL, messages=user("[[mock tokens=1]]")).collect()
        assert probe.finish_reason == "stop" and client.reconnects == 0  # both events while away
        later = [await asyncio.wait_for(anext(system), RECV_TIMEOUT_S) for _ in range(2)]
        assert [(event.seq, event.state) for event in later] == [(2, "half_open"), (3, "closed")]
        assert client.reconnects == 1
        await system.aclose()
        assert [event async for event in system] == []
        assert await client.ping() >= 0


async def test_cancel_ends_the_stream_with_cancelled(client: HubClient) -> None:
    stream = client.completion(model=MODEL, messages=user("Hi [[mock tokens=500 tps=100 seed=2]]"))
    with pytest.raises(HubStreamError) as caught:
        async for event in stream:
            if isinstance(event, ContentChunk):
                await client.cancel(stream.id)
    assert caught.value.code == "cancelled"
    await client.cancel(stream.id)  # already ended: nothing happens
    with pytest.raises(HubRequestError) as unknown:
        await client.cancel("no-such-completion")
    assert unknown.value.code == "unknown_completion"


async def test_requests_carry_a_rid_and_a_cancel_is_answered_by_its_ack(client: HubClient) -> None:
    """Every request that awaits an answer carries its own ``rid``; a cancel waits for the
    ``ack`` (or ``error``) that echoes it, with no ``ping`` after it."""
    sent: list[dict[str, Any]] = []
    ws = client.websocket
    send = ws.send

    async def recording(frame: str) -> None:
        sent.append(json.loads(frame))
        await send(frame)

    ws.send = recording
    stream = client.completion(model=MODEL, messages=user("Hi [[mock tokens=500 tps=100 seed=2]]"))
    await stream.start()
    await client.cancel(stream.id)
    with pytest.raises(HubStreamError):
        await drain(stream)
    with pytest.raises(HubRequestError) as unknown:
        await client.cancel("no-such-completion")
    assert unknown.value.code == "unknown_completion"
    assert await client.ping() >= 0
    assert [message["type"] for message in sent] == ["completion", "cancel", "cancel", "ping"]
    rids = [message["rid"] for message in sent]
    assert len(set(rids)) == len(rids) and all(1 <= len(rid) <= 64 for rid in rids)


# Reconnect and resume.


async def test_reconnect_at_random_points_keeps_the_text_exact(hub: Hub) -> None:
    reconnects: list[Reconnect] = []
    tokens = 300
    async with HubClient(ws_url(hub), base_delay_s=0.02, max_delay_s=0.05, on_reconnect=reconnects.append) as client:
        stream = client.completion(model=MODEL, messages=user(f"Long [[mock tokens={tokens} tps=600 seed=8]]"))
        await stream.start()

        async def saboteur() -> None:
            rng = random.Random(20240601)
            for _ in range(4):
                await asyncio.sleep(rng.uniform(0.04, 0.09))
                if client.websocket is not None and not stream.result.done:
                    drop(client)
                while client.websocket is None or not client.connected:
                    await asyncio.sleep(0.005)

        sabotage = asyncio.create_task(saboteur())
        events = await drain(stream)
        await sabotage
    assert text_of(events) == expected_text(tokens, seed=8) == stream.result.text
    assert isinstance(events[-1], Completed) and stream.result.usage.completion_tokens == tokens
    real = [event for event in events if not isinstance(event, Snapshot)]
    assert all(a.seq < b.seq for a, b in itertools.pairwise(real))  # never a duplicate, never backwards
    assert len(reconnects) >= 3
    assert all(info.close_code == 1006 and info.channels == (stream.channel,) for info in reconnects)


async def test_slow_consumer_close_4008_is_resumed(hub: Hub) -> None:
    """The hub closes the connection as a slow consumer (dropping what it held for it) at
    random points: the client reconnects and resumes; the text is exact."""
    reconnects: list[Reconnect] = []
    tokens = 200
    async with HubClient(ws_url(hub), base_delay_s=0.02, max_delay_s=0.05, on_reconnect=reconnects.append) as client:
        stream = client.completion(model=MODEL, messages=user(f"Long [[mock tokens={tokens} tps=800 seed=11]]"),
                                   coalesce=False)
        rng = random.Random(4008)
        events = []
        async with asyncio.timeout(RECV_TIMEOUT_S):
            async for event in stream:
                events.append(event)
                if len(reconnects) < 3 and client.connected and rng.random() < 0.03:
                    [connection] = hub.connections
                    connection.close_now(4008, "slow consumer: reconnect and resume")
    assert text_of(events) == expected_text(tokens, seed=11)
    assert [event.seq for event in events] == list(range(1, tokens + 2))  # uncoalesced: one event per token
    assert [info.close_code for info in reconnects] == [4008] * len(reconnects) and len(reconnects) >= 2
    assert reconnects[0].close_reason == "slow consumer: reconnect and resume"


async def test_hub_restart_1012_ends_running_streams_and_the_client_reconnects(mock: MockProvider) -> None:
    reconnects: list[Reconnect] = []
    async with run_hub(hub_config(mock)) as first:
        port = int(first.url.rsplit(":", 1)[1])
        client = await HubClient(ws_url(first), base_delay_s=0.02, max_delay_s=0.1,
                                 on_reconnect=reconnects.append).connect()
        stream = client.completion(model=MODEL, messages=user("Long [[mock tokens=500 tps=100]]"))
        assert isinstance(await anext(stream), ContentChunk)
    # The hub ended the completion with shutting_down, then closed with 1012.
    with pytest.raises(HubStreamError) as caught:
        await drain(stream)
    assert caught.value.code == "shutting_down" and caught.value.retryable
    try:
        async with run_hub(hub_config(mock, port=port)) as second:
            assert ws_url(second) == client.url
            result = await client.completion(model=MODEL, messages=user("Again [[mock tokens=5 seed=2]]")).collect()
            assert result.text == expected_text(5, seed=2)
    finally:
        await client.close()
    assert reconnects and reconnects[0].close_code == 1012
    assert stream.channel not in reconnects[0].channels  # an ended stream is not resumed


async def test_completion_request_lost_with_the_connection_is_sent_again(client: HubClient) -> None:
    """The connection is dead before the request leaves: the next connection starts it."""
    drop(client)
    stream = client.completion(model=MODEL, messages=user("Hi [[mock tokens=12 seed=6]]"))
    assert text_of(await drain(stream)) == expected_text(12, seed=6)
    assert client.reconnects == 1


async def test_acknowledgement_lost_with_the_connection_joins_the_started_completion(hub: Hub, client: HubClient) -> None:
    """The hub started the completion but its ``subscribed`` never reached the client: sent
    again, the request gets ``duplicate_id``, and the client subscribes instead."""
    dispatch = client._dispatch
    lost: list[Any] = []

    def lose_first_ack(conn: Any, frame: Any) -> None:
        if not lost and '"completionId"' in frame and '"subscribed"' in frame:
            lost.append(frame)
            drop(client)
            return
        dispatch(conn, frame)

    client._dispatch = lose_first_ack  # type: ignore[method-assign]
    stream = client.completion(model=MODEL, messages=user("Hi [[mock tokens=20 tps=400 seed=7]]"))
    assert text_of(await drain(stream)) == expected_text(20, seed=7)
    assert lost and client.reconnects == 1
    assert len(hub.completions.runs) == 1  # started once


async def test_without_reconnect_a_drop_fails_the_stream(hub: Hub) -> None:
    async with HubClient(ws_url(hub), reconnect=False) as client:
        stream = client.completion(model=MODEL, messages=user("Hi [[mock tokens=200 tps=200]]"))
        with pytest.raises(HubConnectionError) as caught:
            async for _ in stream:
                drop(client)
        assert caught.value.close_code == 1006
        with pytest.raises(HubConnectionError):
            await client.ping()


async def test_resume_after_the_completion_ended_gets_the_end(hub: Hub, fixed_backoff: None) -> None:
    async with HubClient(ws_url(hub)) as client:
        stream = client.completion(model=MODEL, messages=user("Hi [[mock tokens=10 tps=200 seed=9]]"), coalesce=False)
        events = []
        async for event in stream:
            events.append(event)
            if len(events) == 1:
                drop(client)  # reconnects after 0.15 s; the completion ends after 0.05 s
        assert client.reconnects == 1
    assert text_of(events) == expected_text(10, seed=9)
    assert isinstance(events[-1], Completed) and stream.result.finish_reason == "stop"


# The snapshot path: a history too short to cover the gap.


@pytest.fixture
async def short_history_hub(mock: MockProvider) -> AsyncIterator[Hub]:
    async with run_hub(hub_config(mock, history_max_events=2)) as running:
        yield running


@pytest.mark.parametrize("tokens", [12, 120], ids=["ended-while-away", "still-running"])
async def test_resume_from_a_snapshot_yields_the_exact_text_once(short_history_hub: Hub, fixed_backoff: None, tokens: int) -> None:
    async with HubClient(ws_url(short_history_hub)) as client:
        stream = client.completion(model=MODEL, messages=user(f"Hi [[mock tokens={tokens} tps=200 seed=10]]"),
                                   coalesce=False)
        events = []
        async for event in stream:
            events.append(event)
            if len(events) == 2:
                drop(client)  # 0.15 s away: ~30 events pass, the history keeps 2
    snapshots = [event for event in events if isinstance(event, Snapshot)]
    assert len(snapshots) == 1
    assert text_of(events) == expected_text(tokens, seed=10) == stream.result.text
    at = events.index(snapshots[0])
    last_seen, synthetic = events[at - 1].seq, events[at + 1]  # (the reader may be a little ahead of the drop)
    assert isinstance(synthetic, ContentChunk) and synthetic.seq == snapshots[0].seq > last_seen + 1
    assert synthetic.first_seq == last_seen + 1  # it stands for everything missed
    assert isinstance(events[-1], Completed)


async def test_snapshot_carries_missed_reasoning_and_tool_calls(short_history_hub: Hub, fixed_backoff: None) -> None:
    async with HubClient(ws_url(short_history_hub)) as client:
        stream = client.completion(model="anthropic/claude-sonnet-4-5", coalesce=False,
                                   messages=user("Weather? [[mock tokens=6 reasoning=30 tool=get_weather tps=200 seed=4]]"))
        events = []
        async for event in stream:
            events.append(event)
            if len(events) == 1:
                drop(client)
    assert any(isinstance(event, Snapshot) for event in events)
    reasoning = "".join(e.content for e in events if isinstance(e, ThinkingStatus))
    assert reasoning == expected_reasoning(30, seed=4) == stream.result.reasoning
    assert text_of(events) == expected_text(6, seed=4)
    assert [e.tool for e in events if isinstance(e, ToolCallMessage)] == ["get_weather"]


# Choices (n > 1, docs/PROTOCOL.md "Choices"): the mock interleaves choice 1's words with choice 0's.


def choice_text(events: list[Any], choice: int) -> str:
    return "".join(event.content for event in events if isinstance(event, ContentChunk) and event.choice == choice)


async def test_n_2_result_text_is_choice_0_and_the_other_choice_is_kept_apart(client: HubClient) -> None:
    stream = client.completion(model=MODEL, n=2, messages=user("Hi [[mock tokens=15 seed=3]]"))
    events = await drain(stream)
    result = stream.result
    assert result.text == choice_text(events, 0) == expected_text(15, seed=3)
    assert set(result.choices) == {1}
    assert result.choices[1].text == choice_text(events, 1) == expected_choice_text(1, 15, seed=3)
    assert result.choice(1) is result.choices[1] and result.choice(0).text == result.text
    assert result.finish_reason == "stop" and result.finish_reasons == ["stop", "stop"]


@pytest.mark.parametrize("tokens", [12, 120], ids=["ended-while-away", "still-running"])
async def test_n_2_resume_from_a_snapshot_catches_up_each_choice(short_history_hub: Hub, fixed_backoff: None,
                                                                 tokens: int) -> None:
    """Before the SDK knew choices, this failed with resume_failed: choice 1's text was added to
    choice 0's, which the snapshot's choice-0 ``content`` then did not continue."""
    async with HubClient(ws_url(short_history_hub)) as client:
        stream = client.completion(model=MODEL, n=2, coalesce=False,
                                   messages=user(f"Hi [[mock tokens={tokens} tps=200 seed=10]]"))
        events = []
        async for event in stream:
            events.append(event)
            if len(events) == 4:
                drop(client)  # 0.15 s away: ~60 events pass, the history keeps 2
    snapshots = [event for event in events if isinstance(event, Snapshot)]
    assert len(snapshots) == 1
    assert choice_text(events, 0) == expected_text(tokens, seed=10) == stream.result.text
    assert choice_text(events, 1) == expected_choice_text(1, tokens, seed=10) == stream.result.choices[1].text
    at = events.index(snapshots[0])
    synthetic = [event for event in events[at + 1:] if event.seq == snapshots[0].seq]
    assert sorted(event.choice for event in synthetic if isinstance(event, ContentChunk)) == [0, 1]
    assert isinstance(events[-1], Completed) and stream.result.finish_reasons == ["stop", "stop"]


# cbhub chat.


async def run_chat(hub: Hub, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub.cli", "chat", "--url", ws_url(hub), *args, cwd=ROOT, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 30)
    return process.returncode, out.decode(), err.decode()


async def test_cbhub_chat_prints_the_answer_then_ttft_and_tokens_per_second(hub: Hub) -> None:
    status, out, err = await run_chat(hub, "--model", "ollama/llama3.2", "Hi [[mock tokens=25 tps=500 reasoning=3 seed=4]]")
    assert status == 0, err
    assert out == expected_text(25, seed=4) + "\n"
    assert expected_reasoning(3, seed=4).strip() in err  # reasoning goes to stderr
    stats = err.strip().splitlines()[-1]
    # 25 answer + 3 reasoning tokens, as the mock's usage counts them
    assert re.match(r"TTFT \d+\.\d ms \(hub upstream \d+\.\d ms\) · \d+\.\d tokens/s \(28 completion tokens from usage / "
                    r"\d+\.\d{3} s from first token to completed\) · ollama/llama3.2, finish stop$", stats), stats


async def test_cbhub_chat_reads_the_prompt_from_stdin_and_exits_1_on_a_hub_error(hub: Hub) -> None:
    status, out, err = await run_chat(hub, stdin=b"Hi [[mock status=401]]")
    assert status == 1
    assert "auth_failed" in err and "401" in err
    assert out == ""
