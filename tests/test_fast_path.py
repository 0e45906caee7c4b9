"""The hub's write path: frames built once, pending frames written together, opt-in batched
frames, and a slow reader that fills its socket without losing or reordering anything.
Real sockets on 127.0.0.1, the ``websockets`` client; nothing here measures time."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
import websockets
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from hub.app import run_hub
from hub.multiplexer import EncodedEvent
from hub.transports.websocket import WebSocketConnection
from protocol.messages import HUB_DECODER, Completed, ContentChunk, ErrorMessage, Pong, Subscribed
from protocol.wsframe import batch_frames, text_frame
from tests.conftest import RECV_TIMEOUT_S, hub_config
from tools.mock_provider import expected_text


def parse_frames(data: bytes) -> list[Frame]:
    """Parse server-to-client frames with the ``websockets`` package's own frame parser."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            while True:
                next(parser)
        except StopIteration as done:
            frames.append(done.value)
    return frames


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_lengths_follow_rfc6455(size):
    payload = b"x" * size
    frame = text_frame(payload)
    [parsed] = parse_frames(frame)
    assert parsed.opcode is Opcode.TEXT and parsed.fin and parsed.data == payload
    header = len(frame) - size
    assert header == (2 if size < 126 else 4 if size < 65536 else 10)
    if 126 <= size < 65536:
        assert frame[1] == 126 and struct.unpack("!H", frame[2:4])[0] == size


def test_batch_frames_split_at_the_limit_and_keep_order():
    payloads = [f'{{"n":{i}}}'.encode() for i in range(50)]
    frames = parse_frames(batch_frames(payloads, limit=40))
    assert len(frames) > 1
    assert all(len(frame.data) <= 40 for frame in frames)
    assert [line for frame in frames for line in frame.data.split(b"\n")] == payloads
    # One payload bigger than the limit still goes out, alone and whole.
    big = b'"' + b"y" * 100 + b'"'
    assert [f.data for f in parse_frames(batch_frames([b"1", big, b"2"], limit=40))] == [b"1", big, b"2"]


def test_an_encoded_event_builds_its_frame_once():
    event = EncodedEvent.of(Pong())
    assert event.frame is event.frame
    assert parse_frames(event.frame)[0].data == event.payload == b'{"type":"pong"}'


async def test_batched_client_gets_the_same_messages_as_a_plain_one(hub, ws_factory):
    plain = await ws_factory(hub)
    await plain.send({"type": "completion", "id": "b1", "model": "gpt-4o-mini", "coalesce": False,
                      "messages": [{"role": "user", "content": "[[mock tokens=60]]"}]})
    plain_messages = await plain.until_terminal("b1")
    # Subscribing after the end replays the whole history in one loop iteration, so the
    # batched client's pending messages are written together, several per frame.
    batched = await ws_factory(hub, query="batch=1")
    await batched.send({"type": "subscribe", "channels": ["completion:b1"]})
    lines: list[str] = []
    frames = 0
    while not lines or '"type":"completed"' not in lines[-1]:
        frame = await asyncio.wait_for(batched.connection.recv(), RECV_TIMEOUT_S)
        frames += 1
        lines.extend(frame.split("\n"))
    messages = [HUB_DECODER.decode(line) for line in lines]
    assert isinstance(messages[0], Subscribed)
    assert messages[1:] == plain_messages
    assert frames < len(lines)  # some frame carried several messages
    assert "".join(m.content for m in messages if isinstance(m, ContentChunk)) == expected_text(60)


async def test_plain_client_gets_one_message_per_frame(hub, ws_connect):
    client = await ws_connect()
    await client.send({"type": "completion", "id": "p1", "model": "gpt-4o-mini", "coalesce": False,
                       "messages": [{"role": "user", "content": "[[mock tokens=30]]"}]})
    messages = await client.until_terminal("p1")
    assert all("\n" not in frame for frame in client.frames)
    assert [m.seq for m in messages] == list(range(1, 32))


async def test_slow_reader_waits_for_drain_and_loses_nothing(mock, ws_factory, monkeypatch):
    drains = 0
    original = WebSocketConnection._drain

    async def counting_drain(self: WebSocketConnection) -> None:
        nonlocal drains
        drains += 1
        await original(self)

    monkeypatch.setattr(WebSocketConnection, "_drain", counting_drain)
    tokens = 6000
    async with run_hub(hub_config(mock)) as hub:
        # max_queue=1: the client stops reading its socket as soon as one frame waits unread.
        slow = await ws_factory(hub, max_queue=1)
        [slow_side] = hub.connections
        # A fixed small kernel send buffer on the hub's side (no autotuning): the hub's
        # transport buffer fills within a few thousand frames.
        slow_side._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        fast = await ws_factory(hub)
        await fast.send({"type": "completion", "id": "s1", "model": "gpt-4o-mini", "coalesce": False,
                         "messages": [{"role": "user", "content": f"[[mock tokens={tokens}]]"}]})
        await slow.send({"type": "subscribe", "channels": ["completion:s1"]})
        fast_messages = await fast.until_terminal("s1")  # the fast reader is not held up
        assert isinstance(fast_messages[-1], Completed)
        slow_messages = await slow.until_terminal("s1")
    assert [m.seq for m in slow_messages] == list(range(1, tokens + 2))
    assert slow_messages == fast_messages
    assert drains >= 1  # the slow reader's transport did fill up and wait


@pytest.mark.parametrize("gap_tokens", [0, 2])
async def test_idle_timeout_between_chunks_ends_the_stream_with_upstream_timeout(mock, ws_factory, gap_tokens):
    """The idle deadline (hub/providers.py IdleDeadline) re-arms lazily; a gap longer than
    idle_timeout_s still ends the completion with ``upstream_timeout`` after what arrived."""
    async with run_hub(hub_config(mock, idle_timeout_s=0.3)) as hub:
        client = await ws_factory(hub)
        # Fast tokens (each well inside the timeout), then a 5 s wait before the next one:
        # tps=0.2 paces every token 5 s apart, ttft_ms=0 lets the first one out at once.
        directive = f"[[mock tokens={gap_tokens + 1} tps=0.2]]" if gap_tokens else "[[mock tokens=3 ttft_ms=5000]]"
        await client.send({"type": "completion", "id": "idle", "model": "gpt-4o-mini", "coalesce": False,
                           "messages": [{"role": "user", "content": directive}]})
        messages = await client.until_terminal("idle")
    assert isinstance(messages[-1], ErrorMessage) and messages[-1].error.code == "upstream_timeout"
    assert messages[-1].error.retryable
    content = "".join(m.content for m in messages if isinstance(m, ContentChunk))
    assert content == (expected_text(gap_tokens + 1)[: len(content)] if gap_tokens else "")
    if gap_tokens:
        assert content  # the token before the gap was forwarded before the error


async def test_idle_deadline_does_not_fire_while_chunks_keep_coming(mock, ws_factory):
    async with run_hub(hub_config(mock, idle_timeout_s=0.3)) as hub:
        client = await ws_factory(hub)
        # 12 tokens at 20/s: 0.6 s in all, twice the idle timeout, but no gap near it.
        await client.send({"type": "completion", "id": "busy", "model": "gpt-4o-mini", "coalesce": False,
                           "messages": [{"role": "user", "content": "[[mock tokens=12 tps=20]]"}]})
        messages = await client.until_terminal("busy")
    assert isinstance(messages[-1], Completed)
    assert "".join(m.content for m in messages if isinstance(m, ContentChunk)) == expected_text(12)


async def test_shutdown_sends_a_slow_readers_pending_frames_and_final_error_before_closing(mock, ws_factory):
    # The client reads nothing until the hub is shutting its connection down, so frames are
    # pending then; from that moment it reads everything, as a client does, while the hub
    # waits (up to 1 s) for it to take the close frame. A small soft limit keeps what is
    # pending small (merged). No sleep decides the outcome: the client starts reading on an
    # event, the moment the hub calls the connection's shut_down.
    hub_context = run_hub(hub_config(mock, outbound_soft_limit_bytes=32_768))
    hub = await hub_context.__aenter__()
    exiting = None
    try:
        slow = await ws_factory(hub, max_queue=1)
        [slow_side] = hub.connections
        slow_side._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        shutting_down = asyncio.Event()
        shut_down = slow_side.shut_down

        async def shut_down_observed() -> None:
            shutting_down.set()
            await shut_down()

        slow_side.shut_down = shut_down_observed
        await slow.send({"type": "completion", "id": "sd", "model": "gpt-4o-mini", "coalesce": False,
                         "messages": [{"role": "user", "content": "[[mock tokens=100000 tps=20000]]"}]})
        for _ in range(500):  # until the hub holds frames for it (its socket buffer is full)
            if slow_side._protocol.writing_paused and slow_side.pending:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the slow reader's transport never filled up")
        exiting = asyncio.create_task(hub_context.__aexit__(None, None, None))
        async with asyncio.timeout(30):
            await shutting_down.wait()
        messages = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                messages.append(await slow.recv())
    finally:
        await (exiting if exiting is not None else hub_context.__aexit__(None, None, None))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    covered = []  # a merged chunk (firstSeq) stands for firstSeq..seq
    for m in messages:
        if getattr(m, "seq", None) is not None:
            covered.extend(range(getattr(m, "first_seq", None) or m.seq, m.seq + 1))
    seqs = covered
    assert seqs == list(range(1, len(seqs) + 1))  # nothing lost before the end
    last = messages[-1]
    assert isinstance(last, ErrorMessage) and last.error.code == "shutting_down" and last.seq == seqs[-1]
