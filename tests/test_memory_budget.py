"""The memory budget as a running bound (issue 12; hub/memory.py, docs/PROTOCOL.md "Limits").

- the estimate of a held event is above what tracemalloc sees, and not far above;
- relief goes in order: trim finished histories (oldest first), retire finished streams, end
  the largest running consumers with ``hub_overloaded``; new work is refused while over the
  budget and admitted again once memory is free;
- the attack of the issue (many completions with multi-megabyte answers whose clients never
  read) against a hub in a child process: its RSS stays within the budget plus the documented
  constant, ``/healthz`` answers within 1 s throughout, and a normal client's streams complete
  exactly.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import socket
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import websockets

from hub.app import run_hub
from hub.channel import HistoryBounds
from hub.memory import EVENT_OVERHEAD_BYTES, HISTORY_PAYLOAD_FACTOR
from hub.multiplexer import StreamMultiplexer
from protocol.messages import Completed, ContentChunk, ErrorMessage, Snapshot, Subscribed
from tests.conftest import hub_config
from tools.mock_provider import expected_text

OPENAI = "openai/gpt-4o-mini"
MIB = 1 << 20
#: docs/PROTOCOL.md "Limits": RSS stays within memory_budget_bytes plus this.
RSS_CONSTANT_BYTES = 128 * MIB


@pytest.mark.parametrize("chars", [1, 20, 100, 1000, 10_000])
def test_history_estimate_bounds_what_tracemalloc_sees(chars: int) -> None:
    broker = StreamMultiplexer()
    channel = broker.open_channel("completion:c", HistoryBounds(1 << 30))
    count = 2000
    texts = [("x" * (chars - 1)) + str(i % 10) for i in range(count)]  # built before measuring
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for text in texts:
            event = channel.publish(ContentChunk("comp-0123456789abcdef01234567", 0, text))
            assert event.frame  # a WebSocket subscriber builds it; it stays with the event
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The texts existed before; in the hub the message's text is new, so count it as held.
    held += sum(len(text) + 49 for text in texts)
    estimate = HISTORY_PAYLOAD_FACTOR * broker.history_bytes + EVENT_OVERHEAD_BYTES * broker.history_events
    assert broker.history_events == count
    assert held <= estimate <= 2 * held, (held, estimate)


async def _complete(client: Any, completion_id: str, content: str) -> list[Any]:
    await client.send({"type": "completion", "id": completion_id, "model": OPENAI, "coalesce": False,
                       "messages": [{"role": "user", "content": content}]})
    return await client.until_terminal(completion_id)


async def test_relief_trims_oldest_finished_history_first_and_resume_still_gets_everything(mock, ws_factory):
    async with run_hub(hub_config(mock)) as hub:
        hub.memory.stop()  # the test calls relieve itself, at chosen budgets
        client = await ws_factory(hub)
        for name in ("c1", "c2", "c3"):
            assert isinstance((await _complete(client, name, "[[mock tokens=40]]"))[-1], Completed)
        channels = [hub.broker.channel(f"completion:{name}") for name in ("c1", "c2", "c3")]
        sizes = [len(channel.history) for channel in channels]
        assert min(sizes) > 40
        use = hub.memory.use()
        hub.memory.budget = int(use.total * 0.95)  # just over: one trim is enough
        hub.memory.relieve(use)
        assert [len(channel.history) for channel in channels] == [1, sizes[1], sizes[2]]
        assert (hub.memory.trimmed, hub.memory.retired, hub.memory.ended) == (1, 0, 0)
        assert hub.memory.use().total <= hub.memory.budget

        # A returning subscriber of the trimmed stream gets the snapshot and the terminal event.
        late = await ws_factory(hub)
        await late.send({"type": "subscribe", "channels": ["completion:c1"]})
        ack = await late.recv()
        assert isinstance(ack, Subscribed)
        snapshot = await late.recv()
        assert isinstance(snapshot, Snapshot) and snapshot.content == expected_text(40)
        assert isinstance(await late.recv(), Completed)


async def test_relief_retires_finished_streams_then_ends_the_largest_running_one(mock, ws_factory):
    async with run_hub(hub_config(mock)) as hub:
        hub.memory.stop()
        client = await ws_factory(hub)
        assert isinstance((await _complete(client, "done", "[[mock tokens=40]]"))[-1], Completed)
        # Two running completions, paced so that they are still running at the relief; the
        # faster one holds more history and is ended first.
        for name, tps in (("small", 5), ("big", 100)):
            await client.send({"type": "completion", "id": name, "model": OPENAI, "coalesce": False,
                               "messages": [{"role": "user", "content": f"[[mock tokens=1000 tps={tps}]]"}]})
        while hub.completions.get("big") is None or hub.completions.get("small") is None:
            await client.recv()
        big = hub.completions.get("big")
        small = hub.completions.get("small")
        assert big is not None and small is not None
        while len(big.channel.history) < 30 or len(small.channel.history) < 2:
            await client.recv()
        use = hub.memory.use()
        # Over the budget by more than the finished stream holds: it goes, then "big".
        done = hub.completions.get("done")
        assert done is not None
        freed_by_done = hub.memory._channel_cost("completion:done") + done.state_bytes
        hub.memory.budget = int((use.total - freed_by_done - hub.memory._channel_cost("completion:big") // 2) / 0.9)
        hub.memory.relieve(use)
        assert hub.completions.get("done") is None and hub.broker.channel("completion:done") is None
        assert (hub.memory.retired, hub.memory.ended) == (1, 1)
        ended = await client.until_terminal("big")
        assert isinstance(ended[-1], ErrorMessage)
        assert ended[-1].error.code == "hub_overloaded" and ended[-1].error.retryable
        assert not small.finished

        # While over the budget, new work is refused; once memory is free it is admitted again.
        hub.memory.budget = 1
        await client.send({"type": "completion", "id": "refused", "model": OPENAI,
                           "messages": [{"role": "user", "content": "[[mock tokens=3]]"}]})
        refused = await client.recv()
        while getattr(refused, "completion_id", None) == "small":
            refused = await client.recv()
        assert isinstance(refused, ErrorMessage) and refused.error.code == "hub_overloaded" and refused.error.retryable
        hub.memory.budget = 1 << 30
        final = await _complete(client, "admitted", "[[mock tokens=3]]")
        assert isinstance(final[-1], Completed)
        assert "".join(m.content for m in final if isinstance(m, ContentChunk)) == expected_text(3)


# The attack, against a hub in a child process (its RSS is its own).


def _rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


async def _start_hub(tmp_path: Path, mock_url: str, budget: int) -> tuple[asyncio.subprocess.Process, str]:
    config = tmp_path / "hub.yaml"
    config.write_text(f"providers:\n  openai:\n    base_url: {mock_url}/v1\n"
                      f"limits:\n  memory_budget_bytes: {budget}\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CBHUB_", "OPENAI_"))}
    with (tmp_path / "hub.log").open("w") as log:  # the child keeps its own descriptor
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.cli", "serve", "--config", str(config), "--port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=log, env=env)
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    found = re.search(rb"listening on (http://\S+)", line)
    assert found, line
    return process, found.group(1).decode()


async def _attacker(url: str, index: int, completions: int) -> websockets.asyncio.client.ClientConnection:
    """A client that starts multi-megabyte completions and never reads its socket."""
    connection = await websockets.connect(url.replace("http", "ws", 1) + "/ws/stream", compression=None,
                                          max_queue=1)
    connection.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for k in range(completions):
        await connection.send(
            f'{{"type":"completion","id":"a{index}-{k}","model":"{OPENAI}",'
            f'"messages":[{{"role":"user","content":"[[mock tokens=60 pad=65536 seed={k}]]"}}]}}')
    connection.transport.pause_reading()  # never reads again
    return connection


async def _sse_attacker(url: str, index: int) -> asyncio.StreamWriter:
    """An OpenAI-compatible streaming request for a multi-megabyte answer that is never read."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = msgspec.json.encode({"model": OPENAI, "stream": True, "messages": [
        {"role": "user", "content": f"[[mock tokens=60 pad=65536 seed={index}]]"}]})
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (url.removeprefix("http://").encode(), len(body), body))
    writer.transport.pause_reading()
    return writer


async def test_big_answers_to_clients_that_never_read_keep_rss_within_the_budget(mock, tmp_path):
    budget = 64 * MIB
    process, url = await _start_hub(tmp_path, mock.url, budget)
    stop = asyncio.Event()
    rss: list[int] = []
    health_s: list[float] = []
    normal_texts: list[tuple[str, str]] = []
    refusals = 0

    async def sample() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                rss.append(_rss_bytes(process.pid))
                started = time.monotonic()
                async with asyncio.timeout(1.0), session.get(url + "/healthz") as response:
                    assert response.status == 200
                    await response.json()
                health_s.append(time.monotonic() - started)
                await asyncio.sleep(0.1)

    async def normal_client() -> None:
        nonlocal refusals
        async with websockets.connect(url.replace("http", "ws", 1) + "/ws/stream", compression=None) as ws:
            k = 0
            while not stop.is_set():
                k += 1
                ident = f"n{k}"
                await ws.send(f'{{"type":"completion","id":"{ident}","rid":"{ident}","model":"{OPENAI}",'
                              f'"messages":[{{"role":"user","content":"[[mock tokens=30 tps=300 seed={k}]]"}}]}}')
                text: list[str] = []
                while True:
                    message = msgspec_decode(await asyncio.wait_for(ws.recv(), 30))
                    if message.get("completionId") != ident and message.get("rid") != ident:
                        continue
                    if message["type"] == "content_chunk":
                        text.append(message["content"])
                    elif message["type"] == "completed":
                        normal_texts.append(("".join(text), expected_text(30, k)))
                        break
                    elif message["type"] == "error":
                        assert message["error"]["code"] == "hub_overloaded", message
                        assert not text  # refused at admission, never cut mid-stream
                        refusals += 1
                        await asyncio.sleep(0.2)
                        break

    sampler = normal = None
    try:
        await asyncio.sleep(0.5)
        baseline = _rss_bytes(process.pid)
        sampler = asyncio.create_task(sample())
        normal = asyncio.create_task(normal_client())
        # 16 WebSockets x 4 completions of 3.9 MB each and 8 SSE responses of 3.9 MB: 280 MB of
        # answers, far past the budget.
        attackers = [await _attacker(url, index, 4) for index in range(16)]
        sse_attackers = [await _sse_attacker(url, index) for index in range(8)]
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                async with session.get(url + "/healthz") as response:
                    memory = (await response.json())["memory"]
                if memory["ended"] >= 1 and mock.stats["active"] == 0:
                    break
                await asyncio.sleep(0.2)
            assert memory["ended"] >= 1, memory
            after_attack = memory
        for connection in attackers:
            connection.transport.abort()
        for writer in sse_attackers:
            writer.transport.abort()
        await asyncio.sleep(1.5)  # the governor's next checks free what the attackers left
        done_before = len(normal_texts)
        deadline = time.monotonic() + 30
        while len(normal_texts) < done_before + 2:  # admitted again once memory is free
            assert not normal.done(), normal.exception()
            assert time.monotonic() < deadline, "no normal completion after the attack"
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(sampler, normal)
    finally:
        stop.set()
        for task in (sampler, normal):
            if task is not None and not task.done():
                task.cancel()
        process.terminate()
        await process.wait()
    assert normal_texts and all(got == want for got, want in normal_texts)
    assert max(health_s) < 1.0
    peak = max(rss)
    print(f"baseline RSS {baseline / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB, budget {budget / MIB:.0f} MiB, "
          f"governor {after_attack}, normal completions {len(normal_texts)}, refused {refusals}")
    assert peak <= budget + RSS_CONSTANT_BYTES, (peak, baseline)


def msgspec_decode(frame: str | bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(frame)
    return decoded
