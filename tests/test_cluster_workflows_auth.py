"""Workflows across nodes, with and without authentication (issue 13; docs/PROTOCOL.md
"Running several hubs"): a workflow id is reserved cluster-wide (the session claims
``workflow:<id>`` in Redis, with its owner, before the run is created; an id the hub chooses
too), and under auth the owner of a workflow run on node A watches its workflow and agent
channels from node B, while another subject is answered there exactly as on A (``unknown_channel``)
and its refused attach leaves no mirror behind. Real hubs on 127.0.0.1 sharing a real Redis
(database 15, a key prefix of the test's own); skipped without Redis as tests/test_cluster.py."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from hub.app import Hub, run_hub
from hub.redis_broker import RedisBroker
from protocol.messages import AgentStarted, Authenticated, ErrorMessage, Subscribed, WorkflowCompleted
from tests.conftest import WSClient
from tests.test_auth_hub import READER_KEY, answer, auth_config, make_token, shape
from tests.test_cluster import REDIS_URL, nodes, prefix  # noqa: F401  (fixtures)
from tests.test_cluster_failover import meta_of
from tests.test_workflows import run_until_end, two_step
from tools.mock_provider import MockProvider

#: Long enough to subscribe from another node while it runs (each agent streams ~3 s).
SLOW_TOPIC = "tides [[mock tokens=300 tps=100]]"


@pytest.fixture
async def auth_nodes(mock: MockProvider, prefix: str) -> AsyncIterator[list[Hub]]:  # noqa: F811
    """Two hubs (A, B) with JWT and API-key authentication sharing the Redis broker."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(run_hub(auth_config(mock, broker_url=REDIS_URL, broker_prefix=prefix)))
               for _ in range(2)]


async def signed_in(ws_factory: Any, hub: Hub, token: str) -> WSClient:
    """A client of ``hub`` authenticated with ``token`` (a JWT or an API key)."""
    client: WSClient = await ws_factory(hub)
    await client.send({"type": "auth", "token": token})
    assert isinstance(await client.recv(), Authenticated)
    return client


async def create(client: WSClient, workflow_id: str | None, topic: str) -> Subscribed:
    message: dict[str, Any] = {"type": "create_workflow", "definition": two_step(), "input": {"topic": topic}}
    if workflow_id is not None:
        message["workflowId"] = workflow_id
    await client.send(message)
    ack = await client.recv()
    assert isinstance(ack, Subscribed) and ack.workflow_id, ack
    return ack


async def registered(key_prefix: str, name: str) -> dict[str, str]:
    """``name``'s meta in Redis once it exists (a channel opened by a run is registered in
    the owner's next batch)."""
    async with asyncio.timeout(5):
        while not (meta := await meta_of(key_prefix, name)).get("epoch"):
            await asyncio.sleep(0.01)
    return meta


async def no_listener(key_prefix: str, name: str) -> None:
    """Wait until no node listens on ``name``'s PUB/SUB channel any more."""
    client = aioredis.from_url(REDIS_URL)
    try:
        async with asyncio.timeout(5):
            while (await client.pubsub_numsub(f"{key_prefix}ch:{name}"))[0][1]:
                await asyncio.sleep(0.01)
    finally:
        await client.aclose()


def broker_of(hub: Hub) -> RedisBroker:
    assert isinstance(hub.broker, RedisBroker)
    return hub.broker


async def test_a_workflow_id_taken_on_a_is_refused_on_b(nodes, ws_factory, prefix):  # noqa: F811
    a, b, _ = nodes
    owner = await ws_factory(a)
    ack = await create(owner, "dupw", "tides [[mock tokens=5]]")
    other = await ws_factory(b)
    await other.send({"type": "create_workflow", "workflowId": "dupw", "definition": two_step(), "rid": "d",
                      "input": {"topic": "x"}})
    refused = await other.recv()
    assert isinstance(refused, ErrorMessage) and refused.rid == "d"
    assert (refused.error.code, refused.error.message) == ("duplicate_id", "workflow id 'dupw' is already in use")
    assert "dupw" not in b.workflows.runs
    # Also where B mirrors A's run.
    assert isinstance(await answer(other, {"type": "subscribe_workflow", "workflowId": "dupw"}), Subscribed)
    again = await answer(other, {"type": "create_workflow", "workflowId": "dupw", "definition": two_step(),
                                 "input": {"topic": "x"}})
    assert shape(again)[0] == "duplicate_id"
    on_a = await run_until_end(owner, "dupw")
    assert isinstance(on_a[-1], WorkflowCompleted)
    meta = await meta_of(prefix, "workflow:dupw")
    assert meta["node"] == broker_of(a).node_id and meta["epoch"] == ack.epochs["workflow:dupw"]
    # The session goes on: another id is accepted on B (B's mirror of dupw may still deliver
    # its last events before the acknowledgement: they trail A's by a round trip or two).
    await other.send({"type": "create_workflow", "workflowId": "dupw2", "definition": two_step(),
                      "input": {"topic": "tides [[mock tokens=5]]"}})
    while not isinstance(reply := await other.recv(), Subscribed):
        assert getattr(reply, "workflow_id", None) == "dupw" and not isinstance(reply, ErrorMessage), reply
    assert reply.workflow_id == "dupw2"


async def test_a_workflow_without_an_id_gets_one_claimed_with_its_owner(auth_nodes, ws_factory, prefix):  # noqa: F811
    a, b = auth_nodes
    alice = await signed_in(ws_factory, a, make_token("alice"))
    ack = await create(alice, None, "tides [[mock tokens=5]]")
    ident = ack.workflow_id
    assert ident is not None and re.fullmatch(r"wf-[0-9a-f]{24}", ident)  # 96 random bits
    meta = await meta_of(prefix, f"workflow:{ident}")
    assert (meta["owner"], meta["node"], meta["kind"]) == ("alice", broker_of(a).node_id, "workflow")
    assert meta["epoch"] == ack.epochs[f"workflow:{ident}"]
    assert isinstance((await run_until_end(alice, ident))[-1], WorkflowCompleted)
    agent = await registered(prefix, f"agent:{ident}.asker")
    assert (agent["owner"], agent["parent"]) == ("alice", f"workflow:{ident}")  # inherited from the claim
    bob = await signed_in(ws_factory, b, make_token("bob"))
    taken = await answer(bob, {"type": "create_workflow", "workflowId": ident, "definition": two_step(),
                               "input": {"topic": "x"}})
    assert shape(taken)[:2] == ("duplicate_id", f"workflow id {ident!r} is already in use")


async def test_the_owner_watches_its_workflow_and_agents_from_another_node(auth_nodes, ws_factory, prefix):  # noqa: F811
    a, b = auth_nodes
    alice_a = await signed_in(ws_factory, a, make_token("alice"))
    alice_b = await signed_in(ws_factory, b, make_token("alice"))
    agent_b = await signed_in(ws_factory, b, make_token("alice"))
    ack = await create(alice_a, "own1", "tides [[mock tokens=60 tps=300]]")
    watched = await answer(alice_b, {"type": "subscribe_workflow", "workflowId": "own1"})
    assert isinstance(watched, Subscribed) and watched.epochs == {"workflow:own1": ack.epochs["workflow:own1"]}
    head: list[Any] = []
    while not (head and isinstance(head[-1], AgentStarted) and head[-1].agent_id == "answerer"):
        head.append(await alice_b.recv())
    await registered(prefix, "agent:own1.answerer")
    joined = await answer(agent_b, {"type": "subscribe", "channels": ["agent:own1.answerer"]})
    assert isinstance(joined, Subscribed) and joined.epochs == {"agent:own1.answerer": a.broker.channel(
        "agent:own1.answerer").epoch}
    on_a, rest = await asyncio.gather(run_until_end(alice_a, "own1"), run_until_end(alice_b, "own1"))
    assert isinstance(on_a[-1], WorkflowCompleted)
    assert head + rest == on_a
    # The agent channel from B: exactly what a subscriber on A gets (replay and live).
    count = len(a.broker.history("agent:own1.answerer"))
    agent_a = await signed_in(ws_factory, a, make_token("alice"))
    assert isinstance(await answer(agent_a, {"type": "subscribe", "channels": ["agent:own1.answerer"]}), Subscribed)
    from_a = [await agent_a.recv() for _ in range(count)]
    from_b = [await agent_b.recv() for _ in range(count)]
    assert from_b == from_a and [m.seq for m in from_b] == list(range(1, count + 1))
    # A channel pattern on the workflow grants its agents on another node too.
    await create(alice_a, "shared-w1", "tides [[mock tokens=5]]")
    await run_until_end(alice_a, "shared-w1")
    await registered(prefix, "agent:shared-w1.asker")
    reader = await signed_in(ws_factory, b, READER_KEY)
    for name in ("workflow:shared-w1", "agent:shared-w1.asker"):
        assert isinstance(await answer(reader, {"type": "subscribe", "channels": [name]}), Subscribed), name


async def test_another_subject_is_refused_on_another_node_and_leaves_no_mirror(auth_nodes, ws_factory, prefix):  # noqa: F811
    a, b = auth_nodes
    alice = await signed_in(ws_factory, a, make_token("alice"))
    await create(alice, "priv1", SLOW_TOPIC)
    await registered(prefix, "agent:priv1.asker")
    bob_a = await signed_in(ws_factory, a, make_token("bob"))
    bob_b = await signed_in(ws_factory, b, make_token("bob"))
    reader_b = await signed_in(ws_factory, b, READER_KEY)  # channels: workflow:shared-*, not priv1
    for name in ("workflow:priv1", "agent:priv1.asker"):
        local = shape(await answer(bob_a, {"type": "subscribe", "channels": [name]}))
        assert local == ("unknown_channel", f"no channel {name!r} is open", False, None)
        for client in (bob_b, reader_b):
            assert shape(await answer(client, {"type": "subscribe", "channels": [name]})) == local, name
            assert b.broker.channel(name) is None and b.broker.remote_owner(name) is None
            await no_listener(prefix, name)
    assert shape(await answer(bob_b, {"type": "subscribe_workflow", "workflowId": "priv1"}))[0] == "unknown_channel"
    assert shape(await answer(bob_b, {"type": "cancel_workflow", "workflowId": "priv1"}))[0] == "unknown_workflow"
    assert b.broker.channel("workflow:priv1") is None
    await no_listener(prefix, "workflow:priv1")
    # The owner, on the same node B, is let in, and cancels its run there.
    alice_b = await signed_in(ws_factory, b, make_token("alice"))
    assert isinstance(await answer(alice_b, {"type": "subscribe", "channels": ["agent:priv1.asker"]}), Subscribed)
    assert b.broker.remote_owner("agent:priv1.asker") == "alice"
    assert isinstance(await answer(alice_b, {"type": "subscribe_workflow", "workflowId": "priv1"}), Subscribed)
    await alice_b.send({"type": "cancel_workflow", "workflowId": "priv1"})
    ended = await run_until_end(alice, "priv1")
    assert isinstance(ended[-1], ErrorMessage) and ended[-1].error.code == "cancelled"


async def test_a_workflow_refused_after_its_claim_gives_its_id_back(nodes, ws_factory, prefix):  # noqa: F811
    a, b, _ = nodes
    client_b = await ws_factory(b)
    refused = await answer(client_b, {"type": "create_workflow", "workflowId": "back1", "input": {},
                                      "definition": {"places": ["start"], "agents": []}})
    assert shape(refused)[0] == "invalid_workflow"  # found by WorkflowManager.create, after the claim
    assert "back1" not in b.workflows.runs
    async with asyncio.timeout(5):  # the claim is deleted from Redis
        while await meta_of(prefix, "workflow:back1"):
            await asyncio.sleep(0.01)
    client_a = await ws_factory(a)
    ack = await create(client_a, "back1", "tides [[mock tokens=5]]")
    assert isinstance((await run_until_end(client_a, "back1"))[-1], WorkflowCompleted)
    assert (await meta_of(prefix, "workflow:back1"))["epoch"] == ack.epochs["workflow:back1"]
