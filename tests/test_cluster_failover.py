"""The Redis broker beyond stage 1 (issue 13; docs/PROTOCOL.md "Running several hubs"):
workflow and agent channels across nodes, node liveness (``node_lost``), snapshots built from
Redis, riding out a Redis outage. Hubs run in this event loop (the fixtures of
tests/test_cluster.py) or as real ``cbhub serve`` processes, against a real Redis on 127.0.0.1
under a key prefix of each test's own."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from protocol.messages import ErrorMessage, Subscribed, WorkflowCompleted
from tests.test_cluster import REDIS_URL, nodes, prefix  # noqa: F401  (fixtures)
from tests.test_workflows import run_until_end, two_step


async def meta_of(key_prefix: str, name: str) -> dict[str, str]:
    client = aioredis.from_url(REDIS_URL)
    try:
        meta = await client.hgetall(f"{key_prefix}meta:{name}")
    finally:
        await client.aclose()
    return {key.decode(): value.decode() for key, value in meta.items()}


async def channel_messages(client: Any, channel: str, count: int) -> list[Any]:
    """Subscribe to ``channel`` and read ``count`` messages after the ack."""
    await client.send({"type": "subscribe", "channels": [channel]})
    ack = await client.recv()
    assert isinstance(ack, Subscribed) and channel in ack.epochs, ack
    return [await client.recv() for _ in range(count)]


async def test_workflow_and_agent_channels_are_mirrored_on_other_nodes(nodes, ws_factory, prefix):  # noqa: F811
    a, b, _ = nodes
    owner = await ws_factory(a)
    await owner.send({"type": "create_workflow", "workflowId": "wf1", "definition": two_step(),
                      "input": {"topic": "tides [[mock tokens=5]]"}})
    ack = await owner.recv()
    assert isinstance(ack, Subscribed)
    on_a = await run_until_end(owner, "wf1")
    assert isinstance(on_a[-1], WorkflowCompleted)
    agent_on_a = a.broker.history("agent:wf1.asker")
    async with asyncio.timeout(5):  # the last batch written
        while (await meta_of(prefix, "workflow:wf1")).get("state") != "finished":
            await asyncio.sleep(0.01)
    remote = await ws_factory(b)
    assert await channel_messages(remote, "workflow:wf1", len(on_a)) == on_a
    remote_agent = await channel_messages(remote, "agent:wf1.asker", len(agent_on_a))
    assert [m.seq for m in remote_agent] == list(range(1, len(agent_on_a) + 1))
    assert [type(m) for m in remote_agent] == [type(e.message) for e in agent_on_a]
    workflow_meta = await meta_of(prefix, "workflow:wf1")
    agent_meta = await meta_of(prefix, "agent:wf1.asker")
    assert workflow_meta["kind"] == "workflow" and workflow_meta["node"] == a.broker.node_id
    assert workflow_meta["epoch"] == ack.epochs["workflow:wf1"]
    assert agent_meta["kind"] == "agent" and agent_meta["parent"] == "workflow:wf1"
    assert agent_meta["state"] == "finished"  # ended with its workflow
    assert (await meta_of(prefix, "completion:wf1.asker.1"))["kind"] == "completion"


async def test_cancel_workflow_sent_to_another_node_reaches_the_owner(nodes, ws_factory):  # noqa: F811
    a, _, c = nodes
    owner = await ws_factory(a)
    await owner.send({"type": "create_workflow", "workflowId": "wf2", "definition": two_step(),
                      "input": {"topic": "long [[mock tokens=100000 tps=200]]"}})
    assert isinstance(await owner.recv(), Subscribed)
    await owner.recv()  # token_created: the run is going
    remote = await ws_factory(c)
    await remote.send({"type": "subscribe", "channels": ["workflow:wf2"]})
    assert isinstance(await remote.recv(), Subscribed)
    await remote.send({"type": "cancel_workflow", "workflowId": "wf2", "rid": "w"})
    seen_a = await run_until_end(owner, "wf2")
    seen_c = await run_until_end(remote, "wf2")
    for seen in (seen_a, seen_c):
        assert isinstance(seen[-1], ErrorMessage) and seen[-1].error.code == "cancelled"
    assert seen_c[-1].seq == seen_a[-1].seq
    assert a.workflows.runs["wf2"].finished
