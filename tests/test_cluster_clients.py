"""Clients moving between hubs that share the Redis broker (issue 13, "How it is shown": the
Python SDK reconnecting to another node resumes without loss; workflows and agent channels
across nodes; docs/PROTOCOL.md "Running several hubs"). Three hubs in this event loop on their
own ports (the fixtures of tests/test_cluster.py: a real Redis on 127.0.0.1, database 15, a key
prefix of each test's own). The JavaScript SDK's run of the same scenario is
sdk_js/test/cluster.test.js (``npm test``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from hub.app import Hub, run_hub
from hub.client import HubClient, HubConnectionError, HubStreamError, InvalidArgumentError, Reconnect
from protocol.messages import (
    AgentCompleted,
    AgentProgress,
    AgentStarted,
    Completed,
    ContentChunk,
    Snapshot,
    Subscribed,
    WorkflowCompleted,
)
from tests.conftest import RECV_TIMEOUT_S, hub_config
from tests.test_cluster import REDIS_URL, nodes, prefix  # noqa: F401  (fixtures)
from tests.test_workflows import run_until_end, two_step
from tools.mock_provider import MockProvider, expected_text

MODEL = "openai/gpt-4o-mini"


def ws_url(hub: Hub) -> str:
    return hub.url.replace("http", "ws", 1) + "/ws/stream"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def drop(client: HubClient) -> None:
    """Drop the client's TCP connection without a close frame (the client sees 1006)."""
    client.websocket.transport.abort()


async def drain(stream: Any, on_event: Callable[[Any], None] | None = None) -> list[Any]:
    """Every event of ``stream`` to its end (bounded by the suite's safety timeout); ``on_event``
    sees each one as it comes."""
    events = []
    async with asyncio.timeout(RECV_TIMEOUT_S):
        async for event in stream:
            events.append(event)
            if on_event is not None:
                on_event(event)
    return events


def assert_gap_free(events: list[Any]) -> None:
    """Seqs 1, 2, 3... with nothing missing, nothing twice (no snapshot: a complete replay)."""
    assert not any(isinstance(event, Snapshot) for event in events)
    assert [event.seq for event in events] == list(range(1, len(events) + 1))


async def subscribe_to(client: Any, channel: str) -> Any:
    """Send a ``subscribe`` of ``channel``; its answer."""
    await client.send({"type": "subscribe", "channels": [channel]})
    return await client.recv()


def text_of(events: list[Any]) -> str:
    return "".join(event.content for event in events if isinstance(event, ContentChunk))


@contextlib.asynccontextmanager
async def cluster(mock: MockProvider, key_prefix: str, count: int, **overrides: Any) -> AsyncIterator[list[Hub]]:
    """``count`` hubs sharing the Redis broker under ``key_prefix``, with config ``overrides``."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(run_hub(hub_config(mock, broker_url=REDIS_URL, broker_prefix=key_prefix,
                                                                   **overrides)))
               for _ in range(count)]


# The Python SDK moving between nodes.


async def test_the_sdk_dropped_from_a_resumes_on_c_without_loss(nodes):  # noqa: F811
    a, _, c = nodes
    tokens = 300
    reconnects: list[Reconnect] = []
    async with HubClient(urls=[ws_url(a), ws_url(c)], base_delay_s=0.01, max_delay_s=0.02,
                         on_reconnect=reconnects.append) as client:
        assert client.url == ws_url(a)
        stream = client.completion(model=MODEL, messages=user(f"Long [[mock tokens={tokens} tps=600 seed=5]]"),
                                   coalesce=False)

        def drop_after_twenty(event: Any) -> None:
            if event.seq == 20:
                drop(client)

        events = await drain(stream, drop_after_twenty)
        assert client.url == ws_url(c)
    assert text_of(events) == expected_text(tokens, seed=5) == stream.result.text
    assert isinstance(events[-1], Completed) and stream.result.usage.completion_tokens == tokens
    assert_gap_free(events)
    [moved] = reconnects
    assert moved.url == ws_url(c) and moved.close_code == 1006 and moved.channels == (stream.channel,)
    # The run stayed on A; C served the rest from Redis (a mirror), and A ran it once.
    assert stream.id in a.completions.runs and stream.id not in c.completions.runs


async def test_the_sdk_moves_round_the_nodes_at_every_drop(nodes):  # noqa: F811
    tokens = 400
    urls = [ws_url(hub) for hub in nodes]
    reconnects: list[Reconnect] = []
    async with HubClient(urls=urls, base_delay_s=0.01, max_delay_s=0.02, on_reconnect=reconnects.append) as client:
        stream = client.completion(model=MODEL, messages=user(f"Long [[mock tokens={tokens} tps=800 seed=6]]"),
                                   coalesce=False)

        drops = 0

        def drop_every_fifty(event: Any) -> None:
            nonlocal drops
            if event.seq % 50 == 0 and drops < 4 and drops == client.reconnects:  # the last move is over
                drops += 1
                drop(client)

        events = await drain(stream, drop_every_fifty)
    assert text_of(events) == expected_text(tokens, seed=6)
    assert_gap_free(events)
    # A, then B, C, A, B: each reconnect goes to the URL after the one lost.
    assert [info.url for info in reconnects] == list(itertools.islice(itertools.cycle(urls[1:] + urls[:1]),
                                                                       len(reconnects)))
    assert len(reconnects) >= 2


async def test_the_sdk_skips_a_node_that_does_not_answer(mock, prefix):  # noqa: F811
    async with cluster(mock, prefix, 2) as (a, c):
        dead = "ws://127.0.0.1:9/ws/stream"  # the discard port: nothing listens
        reconnects: list[Reconnect] = []
        async with HubClient(urls=[dead, ws_url(a), dead, ws_url(c)], base_delay_s=0.01, max_delay_s=0.02,
                             on_reconnect=reconnects.append) as client:
            assert client.url == ws_url(a)  # the first URL that answered
            stream = client.completion(model=MODEL, messages=user("[[mock tokens=200 tps=600 seed=7]]"),
                                       coalesce=False)

            def drop_once(event: Any) -> None:
                if event.seq == 10:
                    drop(client)

            events = await drain(stream, drop_once)
        assert text_of(events) == expected_text(200, seed=7)
        assert_gap_free(events)
        [moved] = reconnects
        assert moved.url == ws_url(c) and moved.attempts == 2  # the dead URL between them, then C


async def test_a_run_whose_clients_all_moved_to_another_node_is_not_ended_by_the_grace_period(mock, prefix):  # noqa: F811
    # The owning node has no subscriber left, the other node has one: the run goes on.
    async with cluster(mock, prefix, 2, grace_period_s=0.05) as (a, c):
        async with HubClient(urls=[ws_url(a), ws_url(c)], base_delay_s=0.01, max_delay_s=0.02) as client:
            stream = client.completion(model=MODEL, messages=user("[[mock tokens=300 tps=300 seed=8]]"))

            def drop_once(event: Any) -> None:
                if event.seq == 5:
                    drop(client)

            events = await drain(stream, drop_once)
    assert text_of(events) == expected_text(300, seed=8)
    assert isinstance(events[-1], Completed)


async def test_urls_are_checked_and_can_be_replaced(mock, prefix):  # noqa: F811
    with pytest.raises(InvalidArgumentError, match="url or urls"):
        HubClient("ws://127.0.0.1:1/ws/stream", urls=["ws://127.0.0.1:2/ws/stream"])
    for bad in ([], "ws://127.0.0.1:1/ws/stream", [None]):
        with pytest.raises(InvalidArgumentError, match="non-empty list"):
            HubClient(urls=bad)  # type: ignore[arg-type]
    with pytest.raises(HubConnectionError, match=r"cannot connect to ws://127.0.0.1:9/ws/stream: .*; cannot connect to ws://127.0.0.1:9/ws/other: "):
        await HubClient(urls=["ws://127.0.0.1:9/ws/stream", "ws://127.0.0.1:9/ws/other"]).connect()
    async with cluster(mock, prefix, 2) as (a, c):
        reconnects: list[Reconnect] = []
        async with HubClient(urls=[ws_url(a)], base_delay_s=0.01, max_delay_s=0.02,
                             on_reconnect=reconnects.append) as client:
            stream = client.completion(model=MODEL, messages=user("[[mock tokens=100 tps=600 seed=4]]"),
                                       coalesce=False)

            def move_at_ten(event: Any) -> None:
                if event.seq == 10:
                    client.urls = [ws_url(c)]  # e.g. A is being taken out of service
                    drop(client)

            events = await drain(stream, move_at_ten)
        assert text_of(events) == expected_text(100, seed=4)
        assert_gap_free(events)
        assert [info.url for info in reconnects] == [ws_url(c)] and client.urls == (ws_url(c),)


async def test_a_completion_sent_just_before_the_client_left_still_runs(nodes, ws_factory):  # noqa: F811
    # On one node the hub starts it as it reads it; here its id is first claimed in Redis, and
    # the client is gone before that answer: it starts all the same (then its grace period).
    a, b, _ = nodes
    leaver = await ws_factory(a)
    await leaver.send({"type": "completion", "id": "gone1", "model": MODEL, "coalesce": False,
                       "messages": user("[[mock tokens=20 tps=200]]")})
    await leaver.connection.close()
    watcher = await ws_factory(b)
    async with asyncio.timeout(RECV_TIMEOUT_S):
        while not isinstance(await subscribe_to(watcher, "completion:gone1"), Subscribed):
            await asyncio.sleep(0.01)  # not claimed yet: unknown_channel
    messages = await watcher.until_terminal("gone1")
    assert isinstance(messages[-1], Completed) and text_of(messages) == expected_text(20)
    assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
    assert "gone1" in a.completions.runs


# Workflows and agent channels across nodes.


async def test_a_workflow_on_a_watched_live_from_b_gives_the_same_messages(nodes, ws_factory):  # noqa: F811
    a, b, _ = nodes
    owner = await ws_factory(a)
    workflow_watcher = await ws_factory(b)
    agent_watcher = await ws_factory(b)
    await owner.send({"type": "create_workflow", "workflowId": "live1", "definition": two_step(),
                      "input": {"topic": "tides [[mock tokens=60 tps=300]]"}})
    ack = await owner.recv()
    assert isinstance(ack, Subscribed)
    epoch = ack.epochs["workflow:live1"]
    await workflow_watcher.send({"type": "subscribe_workflow", "workflowId": "live1"})
    watched_ack = await workflow_watcher.recv()
    assert isinstance(watched_ack, Subscribed) and watched_ack.epochs == {"workflow:live1": epoch}
    # Once B has seen the second agent start (so Redis has its channel: it is registered in the
    # same round trip or before), B watches that agent's channel too.
    head = []
    while not (head and isinstance(head[-1], AgentStarted) and head[-1].agent_id == "answerer"):
        head.append(await workflow_watcher.recv())
    await agent_watcher.send({"type": "subscribe", "channels": ["agent:live1.answerer"]})
    assert isinstance(await agent_watcher.recv(), Subscribed)
    on_a, rest = await asyncio.gather(run_until_end(owner, "live1"), run_until_end(workflow_watcher, "live1"))
    on_b = head + rest
    assert isinstance(on_a[-1], WorkflowCompleted)
    assert on_b == on_a
    assert [m.seq for m in on_a] == list(range(1, len(on_a) + 1))
    answerer = [m for m in on_a if isinstance(m, (AgentStarted, AgentProgress, AgentCompleted))
                and m.agent_id == "answerer"]
    agent_messages = [await agent_watcher.recv() for _ in answerer]
    assert [m.seq for m in agent_messages] == list(range(1, len(answerer) + 1))
    assert [(type(m), getattr(m, "content", None)) for m in agent_messages] == \
        [(type(m), getattr(m, "content", None)) for m in answerer]
    assert isinstance(agent_messages[-1], AgentCompleted) and agent_messages[-1].result == answerer[-1].result


async def test_the_sdk_cancels_on_b_a_workflow_running_on_a(nodes, mock):  # noqa: F811
    a, b, _ = nodes
    async with HubClient(ws_url(a)) as starter, HubClient(ws_url(b)) as watcher:
        run = starter.workflow(definition=two_step(), input={"topic": "long [[mock tokens=100000 tps=200]]"},
                               workflow_id="stop1")
        await run.start()
        remote = watcher.subscribe_workflow("stop1")
        seen: list[Any] = []

        async def watch() -> None:
            with pytest.raises(HubStreamError) as ended:
                await drain(remote, seen.append)
            assert ended.value.code == "cancelled"

        watching = asyncio.create_task(watch())
        async with asyncio.timeout(RECV_TIMEOUT_S):
            while not any(isinstance(event, AgentProgress) for event in seen):
                await asyncio.sleep(0.005)
        await watcher.cancel_workflow("stop1")
        with pytest.raises(HubStreamError) as on_a:
            await drain(run)
        assert on_a.value.code == "cancelled"
        await watching
    assert a.workflows.runs["stop1"].finished and "stop1" not in b.workflows.runs
    async with asyncio.timeout(RECV_TIMEOUT_S):
        while mock.stats["active"]:
            await asyncio.sleep(0.005)
    assert mock.stats["disconnected"] == 1  # A's upstream request was stopped


async def test_the_sdk_resumes_a_workflow_on_another_node_without_loss(nodes):  # noqa: F811
    a, _, c = nodes
    reconnects: list[Reconnect] = []
    async with HubClient(urls=[ws_url(a), ws_url(c)], base_delay_s=0.01, max_delay_s=0.02,
                         on_reconnect=reconnects.append) as client:
        run = client.workflow(definition=two_step(), input={"topic": "tides [[mock tokens=80 tps=400 seed=9]]"},
                              workflow_id="move1")
        dropped = False

        def drop_in_the_first_agent(event: Any) -> None:
            nonlocal dropped
            if not dropped and isinstance(event, AgentProgress) and event.agent_id == "asker" and event.seq > 5:
                dropped = True
                drop(client)

        events = await drain(run, drop_in_the_first_agent)
    assert dropped and [info.url for info in reconnects] == [ws_url(c)]
    assert isinstance(events[-1], WorkflowCompleted)
    assert_gap_free(events)
    asker = "".join(e.content for e in events if isinstance(e, AgentProgress) and e.agent_id == "asker")
    assert asker == expected_text(80, seed=9)
    assert "move1" in a.workflows.runs and "move1" not in c.workflows.runs
