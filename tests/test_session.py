"""The client protocol against :class:`hub.session.Session` alone: no socket, no aiohttp
server, no HTTP to a provider (in the manner of the websockets library's protocol tests).

Each test builds the hub's real services (broker, completions, workflows, the admission
limits) around a :class:`ScriptedProvider` that yields normalized provider events when the
test says so, and reads what the session wrote to a :class:`RecordingOutbox`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from hub.app import Hub
from hub.channel import HistoryBounds
from hub.completions import CompletionManager
from hub.config import HubConfig
from hub.outbox import Outbox
from hub.session import Session
from hub.workflows import WorkflowManager
from protocol.errors import ProtocolError
from protocol.events import StreamEnd, StreamEvent, TextDelta, Usage
from protocol.messages import (
    HUB_DECODER,
    Ack,
    Completed,
    ContentChunk,
    ErrorInfo,
    ErrorMessage,
    Pong,
    Snapshot,
    Subscribed,
    Unsubscribed,
)


class ScriptedProvider:
    """Stands in for :class:`hub.providers.ProviderClient`: each upstream request yields the
    batches the test puts in :attr:`batches` (one ``await`` per batch, so the test decides
    when each arrives); None ends the stream with ``StreamEnd``."""

    def __init__(self) -> None:
        self.batches: asyncio.Queue[list[StreamEvent] | None] = asyncio.Queue()
        self.requests: list[Any] = []
        self.closed = 0

    async def stream(self, upstream: Any, request_id: str = "") -> AsyncIterator[list[StreamEvent]]:
        self.requests.append(upstream)
        try:
            while True:
                batch = await self.batches.get()
                if batch is None:
                    yield [StreamEnd("stop", Usage(3, 2, 5))]
                    return
                yield batch
        finally:
            self.closed += 1

    def send(self, *texts: str) -> None:
        """Queue one batch of text deltas."""
        self.batches.put_nowait([TextDelta(text) for text in texts])

    def end(self) -> None:
        """Queue the end of the stream."""
        self.batches.put_nowait(None)


class RecordingOutbox(Outbox):
    """An outbox whose transport is a list: every flushed payload is decoded into
    :attr:`messages` (and kept raw in :attr:`payloads`)."""

    transport_name = "test"

    def __init__(self, hub: Hub, soft_limit: int = 1 << 20, hard_limit: int = 8 << 20) -> None:
        super().__init__(hub.write_scheduler, soft_limit, hard_limit)
        self.payloads: list[bytes] = []
        self.messages: list[Any] = []
        self.close_code: int | None = None
        self.backlog = 0  # what the pretend socket has not taken
        self.paused = False  # the pretend socket is full: events stay pending

    def write_pending(self, force: bool) -> None:
        if self.paused and not force:
            return
        for event in self.take():
            self.payloads.append(event.payload)
            self.messages.append(HUB_DECODER.decode(event.payload))
        self.wrote(self.backlog, force)

    def close_now(self, code: int, reason: str) -> None:
        self.stop()
        self.close_code = code

    def abort(self) -> None:
        self.stop()

    def drain(self) -> list[Any]:
        """Flush and return what arrived since the last call."""
        self.flush()
        out, self.messages = self.messages, []
        return out


@pytest.fixture
async def services() -> AsyncIterator[tuple[Hub, ScriptedProvider]]:
    config = HubConfig(openai_api_key="sk-test-session", grace_period_s=30.0, retention_s=30.0,
                       max_completions_per_connection=2)
    hub = Hub(config)
    provider = ScriptedProvider()
    hub.completions = CompletionManager(config, hub.broker, provider)  # type: ignore[arg-type]
    hub.workflows = WorkflowManager(config, hub.broker, hub.completions)
    hub.ready = True
    yield hub, provider
    await hub.workflows.close()
    await hub.completions.close()


def client(hub: Hub, **limits: int) -> tuple[Session, RecordingOutbox]:
    outbox = RecordingOutbox(hub, **limits)
    return Session(hub, outbox), outbox


def send(session: Session, message: dict[str, Any]) -> None:
    session.handle(msgspec.json.encode(message))


def completion(ident: str, **extra: Any) -> dict[str, Any]:
    return {"type": "completion", "id": ident, "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}], "coalesce": False, **extra}


async def settle() -> None:
    """Let the runs' tasks take what the scripted provider has queued."""
    for _ in range(5):
        await asyncio.sleep(0)


# Replies and request ids.


async def test_ping_is_answered_with_pong_and_its_rid(services):
    hub, _ = services
    session, outbox = client(hub)
    send(session, {"type": "ping"})
    send(session, {"type": "ping", "rid": "p-1"})
    assert outbox.drain() == [Pong(), Pong(rid="p-1")]
    assert outbox.payloads == [b'{"type":"pong"}', b'{"type":"pong","rid":"p-1"}']


@pytest.mark.parametrize(("frame", "code"), [
    (b'{"type":"nope","rid":"r-9"}', "unknown_type"),
    (b'{"type":"ping","rid":"r-9","extra":1}', "invalid_message"),
    (b'{"type":"subscribe","channels":["bad name"],"rid":"r-9"}', "unknown_channel"),
    (b'{"type":"cancel","completionId":"ghost","rid":"r-9"}', "unknown_completion"),
    (b'{"type":"cancel_workflow","workflowId":"ghost","rid":"r-9"}', "unknown_workflow"),
])
async def test_a_refused_message_gets_an_error_with_its_rid(services, frame, code):
    hub, _ = services
    session, outbox = client(hub)
    session.handle(frame)
    [error] = outbox.drain()
    assert isinstance(error, ErrorMessage) and error.error.code == code
    assert error.rid == "r-9" and error.completion_id is None and error.seq is None


async def test_a_rid_of_the_wrong_shape_is_invalid_and_not_echoed(services):
    hub, _ = services
    session, outbox = client(hub)
    send(session, {"type": "ping", "rid": "x" * 65})
    send(session, {"type": "ping", "rid": 7})
    session.handle(b'{"type":"ping","rid":"r-9"')  # not JSON: no rid can be read
    errors = outbox.drain()
    assert [e.error.code for e in errors] == ["invalid_message", "invalid_message", "invalid_json"]
    assert [e.rid for e in errors] == [None, None, None]


async def test_a_bad_message_s_rid_is_not_echoed_on_a_later_error(services):
    hub, _ = services
    session, outbox = client(hub)
    session.handle(b'{"type":"nope","rid":"r-bad"}')
    # What a transport refuses itself (a binary frame) answers no message with a rid.
    session.send_error(ProtocolError("binary frames are not accepted", "invalid_message"))
    send(session, {"type": "subscribe", "channels": ["completion:ghost"]})
    first, second, third = outbox.drain()
    assert (first.error.code, first.rid) == ("unknown_type", "r-bad")
    assert (second.error.code, second.rid) == ("invalid_message", None)
    assert (third.error.code, third.rid) == ("unknown_channel", None)


async def test_the_ack_of_a_cancel_comes_before_a_terminal_error_published_at_once(services):
    hub, _ = services
    # A runner whose cancel publishes its terminal error synchronously (as a broker that
    # runs the channel elsewhere, or a run without a task, may do).
    channel = hub.broker.open_channel(
        "workflow:sync", HistoryBounds(10),
        control=lambda command, argument: channel.publish(
            ErrorMessage(ErrorInfo("cancelled", "stopped", False), None, 0, workflow_id="sync")))
    session, outbox = client(hub)
    send(session, {"type": "subscribe_workflow", "workflowId": "sync"})
    outbox.drain()
    send(session, {"type": "cancel_workflow", "workflowId": "sync", "rid": "now"})
    ack, end = outbox.drain()
    assert ack == Ack("now") and end.error.code == "cancelled" and end.seq == 1


# Completions.


async def test_completion_is_acked_then_streamed_with_gap_free_seq(services):
    hub, provider = services
    session, outbox = client(hub)
    send(session, completion("c1", rid="start-1"))
    [ack] = outbox.drain()
    assert isinstance(ack, Subscribed) and ack.completion_id == "c1" and ack.rid == "start-1"
    assert ack.channels == ["completion:c1"] and ack.seqs == {"completion:c1": 0}
    assert ack.recovered == {"completion:c1": True}
    assert ack.epochs["completion:c1"] == hub.broker.channel("completion:c1").epoch
    provider.send("Hel", "lo")
    provider.send(" world")
    provider.end()
    await settle()
    messages = outbox.drain()
    assert [type(m) for m in messages] == [ContentChunk] * 3 + [Completed]
    assert [m.seq for m in messages] == [1, 2, 3, 4]
    assert "".join(m.content for m in messages[:3]) == "Hello world"
    assert messages[-1].usage.total_tokens == 5
    assert all(b'"rid"' not in payload for payload in outbox.payloads[1:])  # stream events carry none


async def test_a_late_subscriber_gets_the_replay_then_live_events(services):
    hub, provider = services
    starter, first = client(hub)
    send(starter, completion("c2"))
    provider.send("a", "b")
    await settle()
    late, second = client(hub)
    send(late, {"type": "subscribe", "channels": ["completion:c2"], "rid": "s-1"})
    ack, *replay = second.drain()
    assert isinstance(ack, Subscribed) and ack.rid == "s-1" and ack.seqs == {"completion:c2": 2}
    assert [m.content for m in replay] == ["a", "b"]
    provider.send("c")
    provider.end()
    await settle()
    assert [m.seq for m in second.drain()] == [3, 4]
    assert [m.seq for m in first.drain() if not isinstance(m, Subscribed)] == [1, 2, 3, 4]


async def test_resume_after_a_cursor_replays_the_rest_and_a_foreign_epoch_gets_a_snapshot(services):
    hub, provider = services
    starter, _ = client(hub)
    send(starter, completion("c3"))
    provider.send("one ", "two ", "three")
    await settle()
    epoch = hub.broker.channel("completion:c3").epoch
    returning, outbox = client(hub)
    send(returning, {"type": "subscribe", "channels": ["completion:c3"],
                     "since": {"completion:c3": {"seq": 1, "epoch": epoch}}})
    ack, *rest = outbox.drain()
    assert ack.recovered == {"completion:c3": True}
    assert [m.seq for m in rest] == [2, 3]
    stranger, other = client(hub)
    send(stranger, {"type": "subscribe", "channels": ["completion:c3"],
                    "since": {"completion:c3": {"seq": 1, "epoch": "another"}}})
    ack, snapshot = other.drain()
    assert ack.recovered == {"completion:c3": False}
    assert isinstance(snapshot, Snapshot) and snapshot.content == "one two three" and snapshot.seq == 3


async def test_cancel_with_rid_is_acked_and_ends_the_stream_for_every_subscriber(services):
    hub, provider = services
    owner, mine = client(hub)
    watcher, theirs = client(hub)
    send(owner, completion("c4"))
    send(watcher, {"type": "subscribe", "channels": ["completion:c4"]})
    provider.send("x")
    await settle()
    mine.drain(), theirs.drain()
    send(watcher, {"type": "cancel", "completionId": "c4", "rid": "k-1"})
    assert theirs.drain()[0] == Ack("k-1")
    await settle()
    [end_mine] = mine.drain()
    [end_theirs] = theirs.drain()
    assert end_mine == end_theirs and end_mine.error.code == "cancelled" and end_mine.seq == 2
    assert provider.closed == 1  # the upstream stream was closed at once


async def test_cancel_without_subscription_or_rid(services):
    hub, _ = services
    owner, _mine = client(hub)
    send(owner, completion("c5"))
    stranger, outbox = client(hub)
    send(stranger, {"type": "cancel", "completionId": "c5"})
    [error] = outbox.drain()
    assert error.error.code == "not_subscribed" and error.rid is None
    send(owner, {"type": "cancel", "completionId": "c5"})
    await settle()
    assert not any(isinstance(m, Ack) for m in _mine.drain())  # no rid, no ack


async def test_completions_per_session_are_limited_and_others_go_on(services):
    hub, provider = services
    session, outbox = client(hub)
    send(session, completion("d1"))
    send(session, completion("d2"))
    send(session, completion("d3", rid="third"))
    messages = outbox.drain()
    errors = [m for m in messages if isinstance(m, ErrorMessage)]
    assert [(e.error.code, e.rid, e.error.retryable) for e in errors] == [("too_many_completions", "third", True)]
    assert hub.broker.channel("completion:d3") is None
    assert sum(isinstance(m, Subscribed) for m in messages) == 2


async def test_a_duplicate_id_is_refused_without_touching_the_running_one(services):
    hub, provider = services
    session, outbox = client(hub)
    send(session, completion("e1"))
    other, theirs = client(hub)
    send(other, completion("e1", rid="dup"))
    [error] = theirs.drain()
    assert error.error.code == "duplicate_id" and error.rid == "dup"
    provider.send("still here")
    provider.end()
    await settle()
    assert [type(m) for m in outbox.drain()] == [Subscribed, ContentChunk, Completed]


async def test_unsubscribe_is_acked_with_rid_and_stops_delivery(services):
    hub, provider = services
    owner, _ = client(hub)
    send(owner, completion("f1"))
    session, outbox = client(hub)
    send(session, {"type": "subscribe", "channels": ["completion:f1"], "streams": ["system"]})
    send(session, {"type": "unsubscribe", "channels": ["completion:f1"], "streams": ["system"], "rid": "u"})
    assert outbox.drain()[-1] == Unsubscribed(channels=["completion:f1"], streams=["system"], rid="u")
    provider.send("unseen")
    await settle()
    assert outbox.drain() == []


async def test_closing_a_session_leaves_its_completion_running_for_the_grace_period(services):
    hub, provider = services
    session, outbox = client(hub)
    send(session, completion("g1"))
    session.close()
    run = hub.completions.get("g1")
    assert run is not None and not run.finished
    assert not hub.broker.channel("completion:g1").subscribers
    returning, again = client(hub)
    send(returning, {"type": "subscribe", "channels": ["completion:g1"]})
    provider.send("back")
    provider.end()
    await settle()
    assert [type(m) for m in again.drain()] == [Subscribed, ContentChunk, Completed]


async def test_an_internal_error_is_answered_and_the_session_goes_on(services, monkeypatch):
    hub, _ = services
    session, outbox = client(hub)

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(hub.workflows, "create", broken)
    send(session, {"type": "create_workflow", "definitionName": "content_creation", "rid": "w"})
    send(session, {"type": "ping"})
    error, pong = outbox.drain()
    assert error.error.code == "internal_error" and error.rid == "w" and pong == Pong()


async def test_authorize_sees_every_action_and_can_refuse_one(services, monkeypatch):
    hub, provider = services
    seen: list[tuple[str, str, str]] = []

    def authorize(principal: Any, action: str, channel: str) -> None:
        seen.append((principal.subject, action, channel))
        if action == "subscribe" and channel == "system":
            from protocol.errors import ProtocolError
            raise ProtocolError("not for you", "unknown_channel")

    monkeypatch.setattr(hub, "authorize", authorize)
    session, outbox = client(hub)
    send(session, completion("h1"))
    send(session, {"type": "subscribe", "channels": ["system"], "rid": "sys"})
    send(session, {"type": "cancel", "completionId": "h1"})
    assert seen == [("anonymous", "completion", "completion:h1"), ("anonymous", "subscribe", "system"),
                    ("anonymous", "cancel", "completion:h1")]
    errors = [m for m in outbox.drain() if isinstance(m, ErrorMessage) and m.seq is None]
    assert [(e.error.code, e.rid) for e in errors] == [("unknown_channel", "sys")]


# The outbox's slow-consumer policy, the same for every transport.


async def test_past_the_soft_limit_pending_content_is_merged_gap_free(services):
    hub, provider = services
    session, outbox = client(hub, soft_limit=300, hard_limit=100_000)
    send(session, completion("m1"))
    outbox.flush()
    outbox.paused = True  # the client stops reading: events pile up in the outbox
    for n in range(40):
        provider.send(f"token{n:02d} ")
    provider.end()
    await settle()
    for _ in range(40):
        await asyncio.sleep(0)
    assert outbox.pending_bytes < 40 * 60  # merged while pending: fewer, larger messages
    outbox.paused = False
    messages = [m for m in outbox.drain() if not isinstance(m, Subscribed)]
    chunks = [m for m in messages if isinstance(m, ContentChunk)]
    assert any(m.first_seq is not None for m in chunks)  # some were merged
    covered = [seq for m in chunks for seq in range(m.first_seq or m.seq, m.seq + 1)]
    assert covered == list(range(1, 41))
    assert "".join(m.content for m in chunks) == "".join(f"token{n:02d} " for n in range(40))
    assert isinstance(messages[-1], Completed) and messages[-1].seq == 41


async def test_past_the_hard_limit_the_client_is_closed_4008_and_others_keep_everything(services):
    hub, provider = services
    slow_session, slow = client(hub, soft_limit=100, hard_limit=400)
    fast_session, fast = client(hub)
    send(fast_session, completion("m2"))
    send(slow_session, {"type": "subscribe", "channels": ["completion:m2"]})
    slow.drain()
    slow.paused = True  # the slow client's socket stopped taking bytes
    for n in range(20):
        provider.send(f"chunk {n} " * 3)
    provider.end()
    for _ in range(60):
        await asyncio.sleep(0)
    assert slow.close_code == 4008 and slow.closed
    messages = [m for m in fast.drain() if not isinstance(m, Subscribed)]
    assert [m.seq for m in messages] == list(range(1, 22)) and isinstance(messages[-1], Completed)


# Bounded replies and unguessable ids (issue 12).


async def test_ids_the_hub_chooses_carry_96_random_bits(services):
    hub, _ = services
    session, outbox = client(hub)
    request = completion("x")
    del request["id"]
    send(session, request)
    send(session, request)
    acks = [m for m in outbox.drain() if isinstance(m, Subscribed)]
    ids = [ack.completion_id for ack in acks]
    assert len(ids) == 2 and ids[0] != ids[1]
    assert all(re.fullmatch(r"comp-[0-9a-f]{24}", ident) for ident in ids)


async def test_a_subscribe_naming_one_channel_many_times_is_one_subscription(services):
    hub, _ = services
    session, outbox = client(hub)
    send(session, {"type": "subscribe", "channels": ["system"] * 50_000, "streams": ["system"] * 1000})
    [ack] = outbox.drain()
    assert ack.channels == ["system"] and ack.streams == ["system"]
    assert sum(len(p) for p in outbox.payloads) < 1000


async def test_too_many_channels_in_one_subscribe_get_one_small_error(services):
    hub, _ = services
    session, outbox = client(hub)
    send(session, {"type": "subscribe", "channels": [f"completion:bad-{n}" for n in range(60_000)], "rid": "big"})
    [error] = outbox.drain()
    assert error.error.code == "invalid_message" and error.rid == "big" and "max_channels_per_message" in error.error.message
    assert sum(len(p) for p in outbox.payloads) < 1000


async def test_replies_echo_long_names_shortened(services):
    hub, _ = services
    session, outbox = client(hub)
    send(session, {"type": "subscribe", "channels": ["x" * 100_000, "completion:" + "y" * 120]})
    first, second = outbox.drain()
    assert first.error.code == second.error.code == "unknown_channel"
    assert sum(len(p) for p in outbox.payloads) < 1000


async def test_a_connection_holds_at_most_max_subscriptions(services, monkeypatch):
    hub, _ = services
    monkeypatch.setattr(hub, "config", msgspec.structs.replace(hub.config, max_subscriptions_per_connection=3,
                                                          max_completions_per_connection=5))
    owner, _ = client(hub)
    for n in range(5):
        send(owner, completion(f"s{n}"))
    session, outbox = client(hub)
    send(session, {"type": "subscribe", "channels": ["completion:s0", "completion:s1"]})
    send(session, {"type": "subscribe", "channels": ["completion:s1", "completion:s2", "completion:s3"], "rid": "more"})
    first, error, second = [m for m in outbox.drain() if isinstance(m, Subscribed)
                            or (isinstance(m, ErrorMessage) and m.seq is None)]
    assert first.channels == ["completion:s0", "completion:s1"]
    assert (error.error.code, error.rid) == ("too_many_subscriptions", "more")
    assert second.channels == ["completion:s1", "completion:s2"]  # up to the limit; s1 was already watched
    send(session, {"type": "unsubscribe", "channels": ["completion:s0"]})
    send(session, {"type": "subscribe", "channels": ["completion:s4"]})
    assert [m.channels for m in outbox.drain() if isinstance(m, Subscribed)] == [["completion:s4"]]
