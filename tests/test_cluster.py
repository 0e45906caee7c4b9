"""Several hubs sharing the Redis broker (issue 13, stage 1; docs/PROTOCOL.md "Running several
hubs"): three hubs in one event loop, each on its own port, against a real Redis on 127.0.0.1
(database 15, or ``CBHUB_TEST_REDIS_URL``), every key under a prefix of this test's own that is
deleted afterwards (SCAN + UNLINK, never FLUSHDB). Skipped when no Redis answers, unless
``CBHUB_REQUIRE_REDIS=1`` (.ci/run sets it)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from hub.app import Hub, run_hub
from hub.config import HubConfig
from hub.multiplexer import StreamMultiplexer
from hub.redis_broker import RedisBroker
from protocol.messages import Completed, ContentChunk, ErrorMessage, Pong, Subscribed
from tests.conftest import REDIS_URL, hub_config, redis_answers, redis_prefix_for_test
from tools.mock_provider import MockProvider, expected_text

OPENAI = "openai/gpt-4o-mini"


if not redis_answers():  # raises under CBHUB_REQUIRE_REDIS=1
    pytest.skip(f"no Redis answers at {REDIS_URL}", allow_module_level=True)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are unlinked at the end."""
    with redis_prefix_for_test() as value:
        yield value


@pytest.fixture
async def nodes(mock: MockProvider, prefix: str) -> AsyncIterator[list[Hub]]:
    """Three hubs (A, B, C) sharing the Redis broker, in this event loop."""
    async with contextlib.AsyncExitStack() as stack:
        hubs = [await stack.enter_async_context(run_hub(hub_config(mock, broker_url=REDIS_URL, broker_prefix=prefix)))
                for _ in range(3)]
        yield hubs


async def start(client: Any, cid: str, directive: str) -> Subscribed:
    await client.send({"type": "completion", "id": cid, "model": OPENAI, "coalesce": False,
                       "messages": [{"role": "user", "content": directive}]})
    ack = await client.recv()
    assert isinstance(ack, Subscribed), ack
    return ack


async def subscribe(client: Any, channel: str, since: dict[str, Any] | None = None) -> Any:
    message: dict[str, Any] = {"type": "subscribe", "channels": [channel]}
    if since is not None:
        message["since"] = {channel: since}
    await client.send(message)
    return await client.recv()


async def all_sent(hub: Hub, events: int) -> RedisBroker:
    """Wait until ``hub``'s broker has written ``events`` events to Redis (its round trips
    answered); returns the broker."""
    broker = hub.broker
    assert isinstance(broker, RedisBroker)
    async with asyncio.timeout(5):
        while broker.events_sent < events:
            await asyncio.sleep(0.005)
    return broker


def text(messages: list[Any]) -> str:
    return "".join(m.content for m in messages if isinstance(m, ContentChunk))


async def test_subscribers_on_every_node_get_the_same_messages(nodes, ws_factory):
    a, b, c = nodes
    on_a, on_b, on_c = [await ws_factory(hub) for hub in nodes]
    directive = "[[mock tokens=100 tps=400]]"
    ack = await start(on_a, "x1", directive)
    epoch = ack.epochs["completion:x1"]
    for client in (on_b, on_c):
        joined = await subscribe(client, "completion:x1")
        assert isinstance(joined, Subscribed) and joined.epochs == {"completion:x1": epoch}
    results = await asyncio.gather(*(client.until_terminal("x1") for client in (on_a, on_b, on_c)))
    assert results[0] == results[1] == results[2]
    assert [m.seq for m in results[0]] == list(range(1, len(results[0]) + 1))
    assert isinstance(results[0][-1], Completed)
    assert text(results[0]) == expected_text(100)
    broker = await all_sent(a, len(results[0]))
    # One Redis round trip carries every event published in one event-loop iteration.
    assert broker.events_sent == len(results[0]) and broker.round_trips <= broker.events_sent
    print(f"\n{broker.events_sent} events in {broker.round_trips} round trips "
          f"({broker.round_trips / broker.events_sent:.2f} per event)")


async def test_a_client_resumes_on_another_node_with_its_cursor(nodes, ws_factory):
    a, b, c = nodes
    first = await ws_factory(a)
    ack = await start(first, "r1", "[[mock tokens=60 tps=300]]")
    epoch = ack.epochs["completion:r1"]
    read = [await first.recv() for _ in range(7)]
    assert [m.seq for m in read] == list(range(1, 8))
    watcher = await ws_factory(a)
    await subscribe(watcher, "completion:r1")  # keeps it running after `first` leaves
    await first.connection.close()
    other = await ws_factory(c)
    resumed = await subscribe(other, "completion:r1", {"seq": 7, "epoch": epoch})
    assert isinstance(resumed, Subscribed)
    assert resumed.recovered == {"completion:r1": True} and resumed.epochs == {"completion:r1": epoch}
    rest = await other.until_terminal("r1")
    everything = await watcher.until_terminal("r1")
    assert [m.seq for m in rest] == list(range(8, len(everything) + 1))
    assert read + rest == everything


async def test_a_late_joiner_on_another_node_gets_the_whole_history(nodes, ws_factory):
    a, b, _ = nodes
    owner = await ws_factory(a)
    await start(owner, "late1", "[[mock tokens=20]]")
    messages = await owner.until_terminal("late1")
    await all_sent(a, len(messages))  # else the ack's seq may be an earlier one (the replay is whole anyway)
    late = await ws_factory(b)
    await late.send({"type": "subscribe", "channels": ["completion:late1"]})
    await late.send({"type": "ping", "rid": "after"})  # waits for the subscribe's Redis step, in order
    ack = await late.recv()
    assert isinstance(ack, Subscribed) and ack.seqs == {"completion:late1": len(messages)}
    assert ack.recovered == {"completion:late1": True}
    assert [await late.recv() for _ in messages] == messages
    pong = await late.recv()
    assert isinstance(pong, Pong) and pong.rid == "after"


async def test_cancel_sent_to_another_node_stops_the_owners_upstream_request(nodes, ws_factory, mock):
    a, _, c = nodes
    owner = await ws_factory(a)
    await start(owner, "k1", "[[mock tokens=100000 tps=200]]")
    await owner.recv()
    remote = await ws_factory(c)
    assert isinstance(await subscribe(remote, "completion:k1"), Subscribed)
    await remote.send({"type": "cancel", "completionId": "k1", "rid": "c1"})
    seen_a = await owner.until_terminal("k1")
    seen_c = await remote.until_terminal("k1")
    for seen in (seen_a, seen_c):
        assert isinstance(seen[-1], ErrorMessage) and seen[-1].error.code == "cancelled"
    assert seen_c[-1].seq == seen_a[-1].seq
    for _ in range(200):
        if mock.stats["disconnected"] == 1:
            break
        await asyncio.sleep(0.01)
    assert mock.stats["disconnected"] == 1 and mock.stats["active"] == 0


async def test_an_unknown_channel_is_unknown_on_every_node(nodes, ws_factory):
    client = await ws_factory(nodes[1])
    answer = await subscribe(client, "completion:nowhere")
    assert isinstance(answer, ErrorMessage) and answer.error.code == "unknown_channel"
    await client.send({"type": "ping", "rid": "p"})  # the connection goes on
    assert (await client.recv()).rid == "p"


async def test_a_completion_id_is_unique_across_nodes(nodes, ws_factory):
    a, b, _ = nodes
    owner = await ws_factory(a)
    await start(owner, "dup1", "[[mock tokens=5]]")
    other = await ws_factory(b)
    await other.send({"type": "completion", "id": "dup1", "model": OPENAI, "rid": "d",
                      "messages": [{"role": "user", "content": "hi"}]})
    answer = await other.recv()
    assert isinstance(answer, ErrorMessage) and answer.error.code == "duplicate_id" and answer.rid == "d"
    # Also where the channel is mirrored (B watches A's dup1).
    assert isinstance(await subscribe(other, "completion:dup1"), Subscribed)
    await other.send({"type": "completion", "id": "dup1", "model": OPENAI, "rid": "d2",
                      "messages": [{"role": "user", "content": "hi"}]})
    while not isinstance(answer := await other.recv(), ErrorMessage) or answer.rid != "d2":
        pass
    assert answer.error.code == "duplicate_id"


async def test_the_broker_is_chosen_by_broker_url(mock, prefix):
    async with run_hub(hub_config(mock)) as hub:
        assert type(hub.broker) is StreamMultiplexer and not hub.broker.distributed
    config = HubConfig.load(environ={"CBHUB_BROKER_URL": REDIS_URL, "CBHUB_BROKER_PREFIX": prefix})
    assert config.broker_url == REDIS_URL and config.broker_prefix == prefix
    assert HubConfig.load(environ={}).broker_url is None
    assert isinstance(Hub(config).broker, RedisBroker)


async def test_events_of_one_event_loop_iteration_go_to_redis_in_one_round_trip(nodes, ws_factory):
    a, b, _ = nodes
    remote = await ws_factory(b)
    owner = await ws_factory(a)
    await start(owner, "burst1", "[[mock tokens=100]]")  # unpaced: many events per provider read
    messages = await owner.until_terminal("burst1")
    assert isinstance(await subscribe(remote, "completion:burst1"), Subscribed)
    assert await remote.until_terminal("burst1") == messages
    broker = await all_sent(a, len(messages))
    assert broker.events_sent == len(messages) == 101
    print(f"\nunpaced: {broker.events_sent} events in {broker.round_trips} round trips")
    assert broker.round_trips <= broker.events_sent // 2


def test_serve_exits_2_naming_broker_url_when_redis_does_not_answer() -> None:
    import subprocess
    import sys

    from tests.test_config import ROOT, clean_environ

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    done = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--port", "0"], cwd=ROOT,
                          env={**clean_environ(), "CBHUB_BROKER_URL": url}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(f"cbhub: broker.url {url!r}: Redis does not answer"), done.stderr


async def test_a_completion_without_an_id_is_registered_with_its_owner(nodes, ws_factory, prefix):
    import redis.asyncio as aioredis

    client = await ws_factory(nodes[0])
    await client.send({"type": "completion", "model": OPENAI, "messages": [{"role": "user", "content": "hi"}]})
    ack = await client.recv()
    assert isinstance(ack, Subscribed) and ack.completion_id
    await client.until_terminal(ack.completion_id)
    redis_client = aioredis.from_url(REDIS_URL)
    try:
        meta = await redis_client.hgetall(f"{prefix}meta:completion:{ack.completion_id}")
    finally:
        await redis_client.aclose()
    assert meta[b"owner"] == b"anonymous" and meta[b"epoch"].decode() == ack.epochs[f"completion:{ack.completion_id}"]
    assert meta[b"node"].decode() == nodes[0].broker.node_id


async def test_a_cursor_ahead_of_the_other_nodes_copy_is_waited_for_not_replayed_twice(nodes, ws_factory):
    """A client that read further on the owning node than another node has yet received from
    Redis resumes there exactly: the subscribe waits for that node's copy to reach the cursor
    (without the wait, the events between arrive live after an empty replay: duplicates)."""
    a, b, _ = nodes
    owner_broker = a.broker
    assert isinstance(owner_broker, RedisBroker)
    owner_broker.publish_delay_s = owner_broker.publish_delay_watched_s = 0.25  # Redis hears of events late
    first = await ws_factory(a)
    ack = await start(first, "ahead1", "[[mock tokens=40 tps=100]]")
    epoch = ack.epochs["completion:ahead1"]
    watcher = await ws_factory(b)  # B mirrors the channel already, behind A by the window
    assert isinstance(await subscribe(watcher, "completion:ahead1"), Subscribed)
    read = [await first.recv() for _ in range(10)]
    assert [m.seq for m in read] == list(range(1, 11))
    assert b.broker.channel("completion:ahead1").last_seq < 10  # B is behind the cursor
    mover = await ws_factory(b)
    resumed = await subscribe(mover, "completion:ahead1", {"seq": 10, "epoch": epoch})
    assert isinstance(resumed, Subscribed) and resumed.recovered == {"completion:ahead1": True}
    rest = await mover.until_terminal("ahead1")
    everything = await first.until_terminal("ahead1")
    assert [m.seq for m in rest] == list(range(11, len(read) + len(everything) + 1))
    assert read + rest == read + everything
    assert await watcher.until_terminal("ahead1") == read + everything


async def test_a_snapshot_built_on_another_node_keeps_each_choice_apart(mock, prefix, ws_factory):
    """n = 2 (docs/PROTOCOL.md "Choices"): a late subscriber on another node whose history
    cannot replay the run gets a snapshot with choice 0's text in ``content`` and choice 1's
    in ``choices``, as on the owning node."""
    from protocol.messages import Snapshot
    from tools.mock_provider import expected_choice_text

    config = hub_config(mock, broker_url=REDIS_URL, broker_prefix=prefix, history_max_events=5)
    async with run_hub(config) as a, run_hub(config) as b:
        owner = await ws_factory(a)
        await owner.send({"type": "completion", "id": "ch1", "model": OPENAI, "coalesce": False, "n": 2,
                          "messages": [{"role": "user", "content": "[[mock tokens=20]]"}]})
        assert isinstance(await owner.recv(), Subscribed)
        watcher = await ws_factory(b)  # B mirrors the run as it streams: it folds what its history drops
        assert isinstance(await subscribe(watcher, "completion:ch1"), Subscribed)
        everything = await owner.until_terminal("ch1")
        await all_sent(a, len(everything))
        await watcher.until_terminal("ch1")
        late = await ws_factory(b)
        ack = await subscribe(late, "completion:ch1")
        assert isinstance(ack, Subscribed) and ack.recovered == {"completion:ch1": False}
        snapshot = await late.recv()
        rest = await late.until_terminal("ch1")
    assert isinstance(snapshot, Snapshot) and rest == everything[-1:]
    assert snapshot.content == expected_text(20)
    assert [(c.choice, c.content) for c in snapshot.choices] == [(1, expected_choice_text(1, 20))]


def test_the_fold_of_a_mirror_keeps_each_choice_apart() -> None:
    """The state a node builds from another node's events (its snapshot once its history
    drops them) puts choice 1's output in ``choices``, not in choice 0's fields."""
    from hub.channel import EncodedEvent
    from hub.redis_broker import _Folded
    from protocol.messages import ChoiceSnapshot, RefusalChunk, Snapshot, ThinkingStatus

    base = Snapshot("c1", "completion:c1", "e", 2, "He", choices=[ChoiceSnapshot(1, "Bo")])
    folded = _Folded(base)
    for seq, message in enumerate([ContentChunk("c1", 3, "llo"), ContentChunk("c1", 4, "njour", choice=1),
                                   ThinkingStatus("c1", 5, "thinking", "hmm", choice=2), RefusalChunk("c1", 6, "no", choice=1)],
                                  start=3):
        assert message.seq == seq
        folded.add(EncodedEvent.of(message))
    state = folded.snapshot()
    assert (state.seq, state.content, state.reasoning, state.refusal) == (6, "Hello", "", "")
    assert [(c.choice, c.content, c.reasoning, c.refusal) for c in state.choices] == [
        (1, "Bonjour", "", "no"), (2, "", "hmm", "")]
