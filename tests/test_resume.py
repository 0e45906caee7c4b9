"""Resuming channels (docs/PROTOCOL.md "Resuming"): epochs, cursors, complete replays, the
snapshot path, many listeners. Real sockets and the websockets client against the mock provider;
texts are compared with what the mock sent (tools.mock_provider.expected_text)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from protocol.messages import (
    Completed,
    ContentChunk,
    Snapshot,
    Subscribed,
    ThinkingStatus,
    ToolCallMessage,
)
from tests.conftest import hub_config, run_test_hub
from tools.mock_provider import expected_reasoning, expected_text

OPENAI = "openai/gpt-4o-mini"

#: Resuming on every broker (tests/conftest.py: redis2 resumes on another node than the run's).
pytestmark = pytest.mark.brokers("memory", "redis", "redis2")


async def start(client: Any, cid: str, directive: str, model: str = OPENAI) -> Subscribed:
    await client.send({"type": "completion", "id": cid, "model": model, "coalesce": False,
                       "messages": [{"role": "user", "content": directive}]})
    ack = await client.recv()
    assert isinstance(ack, Subscribed)
    return ack


async def subscribe(client: Any, channel: str, since: dict | None = None) -> Subscribed:
    message: dict[str, Any] = {"type": "subscribe", "channels": [channel]}
    if since is not None:
        message["since"] = {channel: since}
    await client.send(message)
    ack = await client.recv()
    assert isinstance(ack, Subscribed)
    return ack


def text(messages: list[Any]) -> str:
    return "".join(m.content for m in messages if isinstance(m, (ContentChunk, Snapshot)))


async def test_the_starter_gets_the_epoch_and_a_late_subscriber_the_latest_seq(hub, ws_connect):
    client = await ws_connect()
    ack = await start(client, "e1", "[[mock tokens=5]]")
    assert ack.completion_id == "e1" and ack.seqs == {"completion:e1": 0} and ack.recovered == {"completion:e1": True}
    epoch = ack.epochs["completion:e1"]
    assert len(epoch) >= 6
    messages = await client.until_terminal("e1")
    late = await ws_connect()
    late_ack = await subscribe(late, "completion:e1")
    assert late_ack.epochs == {"completion:e1": epoch} and late_ack.seqs == {"completion:e1": 6}
    assert late_ack.recovered == {"completion:e1": True}
    assert await late.until_terminal("e1") == messages


async def test_resume_after_a_cursor_has_no_gap_and_no_duplicate_at_random_points(mock, ws_factory):
    tokens = 300
    rng = random.Random(5)
    async with run_test_hub(hub_config(mock)) as hub:
        first = await ws_factory(hub)
        ack = await start(first, "r1", f"[[mock tokens={tokens} tps=600]]")
        epoch = ack.epochs["completion:r1"]
        seen: list[Any] = []
        for trial in range(12):  # drop, reconnect, resume: again and again along the stream
            stop_after = rng.randint(1, 25)
            client = first if trial == 0 else await ws_factory(hub)
            if trial:
                cursor = {"seq": seen[-1].seq, "epoch": epoch} if seen else None
                resumed = await subscribe(client, "completion:r1", cursor)
                assert resumed.recovered == {"completion:r1": True} and resumed.epochs["completion:r1"] == epoch
            taken = 0
            while taken < stop_after:
                message = await client.recv()
                seen.append(message)
                taken += 1
                if isinstance(message, Completed):
                    break
            await client.connection.close()
            if isinstance(seen[-1], Completed):
                break
        if not isinstance(seen[-1], Completed):
            last = await ws_factory(hub)
            await subscribe(last, "completion:r1", {"seq": seen[-1].seq, "epoch": epoch})
            seen.extend(await last.until_terminal("r1"))
    assert [m.seq for m in seen] == list(range(1, tokens + 2))
    assert text(seen) == expected_text(tokens)


async def test_wrong_epoch_gets_a_snapshot_then_the_rest(hub, ws_connect):
    client = await ws_connect()
    await start(client, "w1", "[[mock tokens=40 tps=400]]")
    head = [await client.recv() for _ in range(10)]
    other = await ws_connect()
    ack = await subscribe(other, "completion:w1", {"seq": 10, "epoch": "not-this-one"})
    assert ack.recovered == {"completion:w1": False}
    snapshot = await other.recv()
    assert isinstance(snapshot, Snapshot) and snapshot.epoch == ack.epochs["completion:w1"]
    rest = await other.until_terminal("w1")
    assert [m.seq for m in rest] == list(range(snapshot.seq + 1, 42))
    assert snapshot.content + text(rest) == expected_text(40)
    assert text(head) == expected_text(40)[: len(text(head))]
    assert text(head + await client.until_terminal("w1")) == expected_text(40)


async def test_exhausted_history_gives_a_snapshot_never_a_partial_replay(mock, ws_factory):
    async with run_test_hub(hub_config(mock, history_max_events=5)) as hub:
        client = await ws_factory(hub)
        await start(client, "x1", "[[mock tokens=30 tps=300 reasoning=4 tool=get_weather]]", model=OPENAI)
        everything = await client.until_terminal("x1")
        late = await ws_factory(hub)
        ack = await subscribe(late, "completion:x1")
        assert ack.recovered == {"completion:x1": False}
        snapshot = await late.recv()
        assert isinstance(snapshot, Snapshot)
        rest = await late.until_terminal("x1")
    assert snapshot.seq == everything[-2].seq and rest == everything[-1:]  # then only the terminal message
    assert snapshot.content == expected_text(30) and snapshot.reasoning == expected_reasoning(4)
    [call] = snapshot.tool_calls
    assert isinstance(call, ToolCallMessage) and call.tool == "get_weather" and call.arguments == {"city": "Paris"}
    assert [m for m in everything if isinstance(m, ToolCallMessage)] == [call]
    assert any(isinstance(m, ThinkingStatus) for m in everything)


async def test_reconnect_after_completed_gets_the_end(hub, ws_connect):
    client = await ws_connect()
    ack = await start(client, "c1", "[[mock tokens=8]]")
    messages = await client.until_terminal("c1")
    epoch = ack.epochs["completion:c1"]
    again = await ws_connect()
    resumed = await subscribe(again, "completion:c1", {"seq": 3, "epoch": epoch})
    assert resumed.recovered == {"completion:c1": True} and resumed.seqs == {"completion:c1": 9}
    assert await again.until_terminal("c1") == messages[3:]
    # A cursor at the end: nothing to replay, and nothing comes.
    done = await ws_connect()
    at_end = await subscribe(done, "completion:c1", {"seq": 9, "epoch": epoch})
    assert at_end.recovered == {"completion:c1": True}
    await done.send({"type": "ping"})
    assert (await done.recv()).__class__.__name__ == "Pong"


async def test_history_age_limit_turns_an_old_replay_into_a_snapshot(mock, ws_factory):
    async with run_test_hub(hub_config(mock, history_max_age_s=0.2)) as hub:
        client = await ws_factory(hub)
        await start(client, "a1", "[[mock tokens=6]]")
        messages = await client.until_terminal("a1")
        await asyncio.sleep(0.3)
        late = await ws_factory(hub)
        ack = await subscribe(late, "completion:a1")
        assert ack.recovered == {"completion:a1": False}
        snapshot = await late.recv()
        assert isinstance(snapshot, Snapshot) and snapshot.content == expected_text(6)
        assert await late.until_terminal("a1") == messages[-1:]


async def test_a_hundred_listeners_get_identical_sequences_from_one_upstream_call(mock, ws_factory):
    async with run_test_hub(hub_config(mock)) as hub:
        starter = await ws_factory(hub)
        await start(starter, "many", "[[mock tokens=50 tps=100]]")
        listeners = [await ws_factory(hub) for _ in range(100)]
        for listener in listeners:
            await listener.send({"type": "subscribe", "channels": ["completion:many"]})
        reference = await starter.until_terminal("many")
        results = await asyncio.gather(*(listener.until_terminal("many") for listener in listeners))
    assert all(result == reference for result in results)
    assert [m.seq for m in reference] == list(range(1, 52)) and text(reference) == expected_text(50)
    assert mock.stats["requests"] == 1
