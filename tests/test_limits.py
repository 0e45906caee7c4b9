"""Limits and the slow-consumer policy (docs/PROTOCOL.md "Limits"): what happens at each
limit, over real sockets with the mock provider; plus the pure merge and frame helpers."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
import websockets

from hub.app import run_hub
from hub.channel import HistoryBounds
from hub.multiplexer import EncodedEvent, StreamMultiplexer, merge_content
from protocol.messages import Completed, ContentChunk, ErrorMessage, Pong, ThinkingStatus
from protocol.wsframe import close_frame
from tests.conftest import hub_config
from tests.test_fast_path import parse_frames
from tools.mock_provider import expected_choice_text, expected_text

OPENAI = "openai/gpt-4o-mini"

#: The limits on the in-memory and the Redis broker (tests/conftest.py).
pytestmark = pytest.mark.brokers("memory", "redis")


def chunk(cid: str, seq: int, text: str) -> EncodedEvent:
    return EncodedEvent.of(ContentChunk(cid, seq, text))


def test_merge_content_joins_adjacent_chunks_of_one_completion():
    events = [chunk("a", 1, "He"), chunk("a", 2, "ll"), chunk("b", 1, "X"), chunk("a", 3, "o"),
              EncodedEvent.of(ThinkingStatus("a", 4, "done")), chunk("a", 5, " w"), chunk("a", 6, "orld")]
    merged = [event.message for event in merge_content(events)]
    assert merged == [ContentChunk("a", 2, "Hell", 1), ContentChunk("b", 1, "X"), ContentChunk("a", 3, "o"),
                      ThinkingStatus("a", 4, "done"), ContentChunk("a", 6, " world", 5)]
    again = [event.message for event in merge_content([EncodedEvent.of(m) for m in merged[:1]] + [chunk("a", 3, "!")])]
    assert again == [ContentChunk("a", 3, "Hell!", 1)]  # a merged chunk keeps its firstSeq


def test_merge_content_never_joins_chunks_of_different_choices():
    events = [EncodedEvent.of(ContentChunk("a", 1, "A", choice=0)), EncodedEvent.of(ContentChunk("a", 2, "x", choice=1)),
              EncodedEvent.of(ContentChunk("a", 3, "y", choice=1)), EncodedEvent.of(ContentChunk("a", 4, "B", choice=0)),
              EncodedEvent.of(ContentChunk("a", 5, "C", choice=0))]
    merged = [event.message for event in merge_content(events)]
    assert merged == [ContentChunk("a", 1, "A"), ContentChunk("a", 3, "xy", 2, choice=1),
                      ContentChunk("a", 5, "BC", 4)]


def test_close_frame_is_a_valid_rfc6455_close():
    [frame] = parse_frames(close_frame(4008, "slow consumer: reconnect and resume"))
    assert frame.opcode.name == "CLOSE" and frame.data[:2] == (4008).to_bytes(2, "big")
    assert frame.data[2:] == b"slow consumer: reconnect and resume"
    assert len(close_frame(4008, "x" * 500)) == 2 + 125  # control frames carry at most 125 bytes


def test_history_is_bounded_by_bytes_and_accounted():
    multiplexer = StreamMultiplexer()
    channel = multiplexer.open_channel("completion:h", HistoryBounds(100, max_bytes=500))
    events = [chunk("h", n, "x" * 40) for n in range(1, 11)]
    for event in events:
        multiplexer.publish(channel, event)
    kept = list(channel.history)
    assert kept == events[-len(kept):] and 1 < len(kept) < 10
    assert channel.history_bytes == multiplexer.history_bytes == sum(len(e.payload) for e in kept) <= 500
    assert channel.history_bytes + len(events[-len(kept) - 1].payload) > 500  # no more than needed was dropped
    big = chunk("h", 11, "y" * 500)
    multiplexer.publish(channel, big)
    assert list(channel.history) == [big]  # the latest event is kept even when it alone is over
    multiplexer.close_channel("completion:h")
    assert multiplexer.history_bytes == 0


async def test_connections_past_max_connections_are_closed_with_1013(mock, ws_factory):
    async with run_hub(hub_config(mock, max_connections=2)) as hub:
        first, second = await ws_factory(hub), await ws_factory(hub)
        third = await ws_factory(hub)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await third.recv()
        assert closed.value.rcvd.code == 1013
        await first.send({"type": "ping"})
        assert isinstance(await first.recv(), Pong)
        del second


async def test_completions_per_connection_and_in_total(mock, ws_factory):
    config = hub_config(mock, max_completions_per_connection=1, max_completions=2)
    async with run_hub(config) as hub, aiohttp.ClientSession() as session:
        a, b = await ws_factory(hub), await ws_factory(hub)
        slow = "[[mock tokens=5 tps=20]]"
        await a.send({"type": "completion", "id": "a1", "model": OPENAI, "messages": [{"role": "user", "content": slow}]})
        await a.send({"type": "completion", "id": "a2", "model": OPENAI, "messages": [{"role": "user", "content": slow}]})
        await b.send({"type": "completion", "id": "b1", "model": OPENAI, "messages": [{"role": "user", "content": slow}]})
        refused = None
        a1: list[Any] = []
        while True:
            message = await a.recv()
            if isinstance(message, ErrorMessage) and message.completion_id is None:
                refused = message
            elif getattr(message, "completion_id", None) == "a1":
                a1.append(message)
                if isinstance(message, Completed):
                    break
        assert refused is not None and refused.error.code == "too_many_completions" and refused.error.retryable
        # Two running (a1, b1) was the total limit: the HTTP API is refused with 429 meanwhile.
        b1 = await b.until_terminal("b1")
        assert isinstance(b1[-1], Completed)
        # Both ended: room again, on both paths.
        async with session.post(hub.url + "/v1/chat/completions", json={
                "model": OPENAI, "messages": [{"role": "user", "content": "[[mock tokens=2]]"}]}) as response:
            assert response.status == 200
        await a.send({"type": "completion", "id": "a3", "model": OPENAI, "messages": [{"role": "user", "content": "hi"}]})
        assert isinstance((await a.until_terminal("a3"))[-1], Completed)


async def test_http_api_gets_429_at_the_total_limit(mock, ws_factory):
    async with run_hub(hub_config(mock, max_completions=1)) as hub, aiohttp.ClientSession() as session:
        client = await ws_factory(hub)
        await client.send({"type": "completion", "id": "t1", "model": OPENAI,
                           "messages": [{"role": "user", "content": "[[mock tokens=4 tps=20]]"}]})
        await client.recv()  # subscribed: t1 is running
        async with session.post(hub.url + "/v1/chat/completions", json={
                "model": OPENAI, "messages": [{"role": "user", "content": "hi"}]}) as response:
            assert response.status == 429
            assert (await response.json())["error"]["code"] == "too_many_completions"
        assert isinstance((await client.until_terminal("t1"))[-1], Completed)


async def test_memory_budget_refuses_new_completions(mock, ws_factory):
    async with run_hub(hub_config(mock, memory_budget_bytes=300)) as hub:
        hub.memory.stop()  # admission alone: no relief (tests/test_memory_budget.py has it)
        client = await ws_factory(hub)
        await client.send({"type": "completion", "id": "m1", "model": OPENAI, "coalesce": False,
                           "messages": [{"role": "user", "content": "[[mock tokens=10]]"}]})
        assert isinstance((await client.until_terminal("m1"))[-1], Completed)  # its history is retained
        assert hub.multiplexer.history_bytes > 300
        await client.send({"type": "completion", "id": "m2", "model": OPENAI,
                           "messages": [{"role": "user", "content": "hi"}]})
        refused = await client.recv()
        assert isinstance(refused, ErrorMessage) and refused.error.code == "hub_overloaded" and refused.error.retryable


async def _slow_pair(hub: Any, ws_factory: Any) -> tuple[Any, Any, Any]:
    """A slow reader (stops reading at once; small kernel buffer on the hub's side) and a fast one."""
    slow = await ws_factory(hub, max_queue=1)
    [slow_side] = hub.connections
    slow_side._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    fast = await ws_factory(hub)
    return slow, slow_side, fast


async def test_slow_consumer_gets_merged_content_and_the_others_full_speed(mock, ws_factory):
    tokens = 6000
    config = hub_config(mock, outbound_soft_limit_bytes=20_000, outbound_hard_limit_bytes=10_000_000)
    async with run_hub(config) as hub:
        slow, slow_side, fast = await _slow_pair(hub, ws_factory)
        await fast.send({"type": "completion", "id": "s1", "model": OPENAI, "coalesce": False,
                         "messages": [{"role": "user", "content": f"[[mock tokens={tokens}]]"}]})
        await slow.send({"type": "subscribe", "channels": ["completion:s1"]})
        fast_messages = await fast.until_terminal("s1")
        slow_messages = await slow.until_terminal("s1")
    assert all(m.first_seq is None for m in fast_messages if isinstance(m, ContentChunk))
    assert [m.seq for m in fast_messages] == list(range(1, tokens + 2))
    merged = [m for m in slow_messages if isinstance(m, ContentChunk) and m.first_seq is not None]
    assert merged, "the slow consumer's pending content was never merged"
    # Gap-free: each message covers firstSeq..seq (or just seq), end to end.
    covered = []
    for m in slow_messages:
        covered.extend(range(getattr(m, "first_seq", None) or m.seq, m.seq + 1))
    assert covered == list(range(1, tokens + 2))
    text = "".join(m.content for m in slow_messages if isinstance(m, ContentChunk))
    assert text == expected_text(tokens) and slow_messages[-1] == fast_messages[-1]


async def test_slow_consumer_of_an_n_2_stream_gets_each_choice_exact(mock, ws_factory):
    """The merge keeps choices apart (docs/PROTOCOL.md "Choices"): the mock interleaves choice 1's
    words with choice 0's, so a merge across choices would put choice 1's text into choice 0."""
    tokens = 3000
    config = hub_config(mock, outbound_soft_limit_bytes=20_000, outbound_hard_limit_bytes=10_000_000)
    async with run_hub(config) as hub:
        slow, slow_side, fast = await _slow_pair(hub, ws_factory)
        await fast.send({"type": "completion", "id": "n2", "model": OPENAI, "coalesce": False, "n": 2,
                         "messages": [{"role": "user", "content": f"[[mock tokens={tokens}]]"}]})
        await slow.send({"type": "subscribe", "channels": ["completion:n2"]})
        fast_messages = await fast.until_terminal("n2")
        slow_messages = await slow.until_terminal("n2")
    covered = []
    for m in slow_messages:
        covered.extend(range(getattr(m, "first_seq", None) or m.seq, m.seq + 1))
    assert covered == [m.seq for m in fast_messages]  # gap-free, end to end
    for k in (0, 1):
        text = "".join(m.content for m in slow_messages if isinstance(m, ContentChunk) and m.choice == k)
        assert text == expected_choice_text(k, tokens)
    assert slow_messages[-1] == fast_messages[-1]


async def test_slow_consumer_past_the_hard_limit_is_closed_with_4008(mock, ws_factory):
    tokens = 6000
    config = hub_config(mock, outbound_soft_limit_bytes=5_000, outbound_hard_limit_bytes=20_000)
    async with run_hub(config) as hub:
        slow, slow_side, fast = await _slow_pair(hub, ws_factory)
        await fast.send({"type": "completion", "id": "h1", "model": OPENAI, "coalesce": False,
                         "messages": [{"role": "user", "content": f"[[mock tokens={tokens}]]"}]})
        await slow.send({"type": "subscribe", "channels": ["completion:h1"]})
        fast_messages = await fast.until_terminal("h1")
        assert isinstance(fast_messages[-1], Completed) and len(fast_messages) == tokens + 1
        received = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                received.append(await asyncio.wait_for(slow.recv(), 10))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
        seqs = [m.seq for m in received if getattr(m, "seq", None) is not None]
        assert seqs == sorted(seqs) and len(seqs) < tokens  # what it got is in order; the rest it resumes


_HUGE = "x" * 900_000


@pytest.mark.parametrize("message", [
    {"type": "completion", "id": "c1", "model": _HUGE, "messages": [{"role": "user", "content": "hi"}]},
    {"type": "completion", "id": "c2", "model": "openai/" + _HUGE, "messages": [{"role": "user", "content": "hi"}]},
    {"type": "completion", "id": _HUGE, "model": OPENAI, "messages": [{"role": "user", "content": "hi"}]},
    {"type": _HUGE},
    {"type": "completion", _HUGE: 1},
    {"type": "cancel", "completionId": _HUGE},
    {"type": "unsubscribe", "channels": [_HUGE]},
    {"type": "ping", "rid": _HUGE},
    {"type": "create_workflow", "workflowId": "w", "definitionName": _HUGE},
    {"type": "subscribe", "channels": [f"completion:{i}-{_HUGE[:8000]}" for i in range(100)]},
], ids=["model", "provider-model", "id", "type", "field", "cancel", "unsubscribe", "rid", "workflow", "subscribe"])
async def test_replies_to_one_huge_message_stay_under_64_kb(mock, ws_factory, message):
    """Issue 12: whatever a client sends, the replies it causes are at most 64 KB (errors cut
    to 1000 characters, names echoed cut to 80, model names at most 256)."""
    async with run_hub(hub_config(mock)) as hub:
        client = await ws_factory(hub, max_size=None)
        await client.send(message)
        received = 0
        terminal = False
        while not terminal:
            try:
                reply = await asyncio.wait_for(client.connection.recv(), 0.5)
            except TimeoutError:
                break
            received += len(reply)
            terminal = '"type":"error"' in reply or '"type":"completed"' in reply
        assert 0 < received <= 64 * 1024
        await client.send({"type": "ping", "rid": "after"})  # the connection is still served
        while True:
            answer = await client.recv()
            if isinstance(answer, Pong):
                break
