"""Timeouts for every half-open thing (issue 12): request heads, bodies, idle keep-alive, running
out of file descriptors, and a log that repeated records cannot flood (hub/transports/http_limits.py,
hub/logsafe.py). Every attack runs over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from hub.app import run_hub
from hub.logsafe import RepeatFilter, install_secret_filter, loop_exception_handler, uninstall_secret_filter
from protocol.framing import SSEDecoder
from tests.conftest import hub_config
from tools.bench.procs import hub_env
from tools.mock_provider import expected_text

OPENAI = "openai/gpt-4o-mini"
#: The issue's requirement: /healthz answers within this many seconds during and after an attack.
HEALTH_S = 1.0
#: Upper bound for waiting on something the hub must do (a close, a child starting); a safety
#: net, never a measured timing.
WAIT_S = 10.0


async def healthz(url: str) -> float:
    """Seconds a ``GET /healthz`` on a new connection took; fails past :data:`HEALTH_S`."""
    host, port = url.split("//")[1].split(":")
    started = time.monotonic()
    async with asyncio.timeout(HEALTH_S):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            status = await reader.readline()
        finally:
            writer.close()
    assert status.startswith(b"HTTP/1.1 200"), status
    return time.monotonic() - started


async def open_raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.split("//")[1].split(":")
    return await asyncio.open_connection(host, int(port))


async def closed_after(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the hub sends until it closes the connection, and the seconds that took."""
    started = time.monotonic()
    async with asyncio.timeout(WAIT_S):
        data = await reader.read()
    return data, time.monotonic() - started


async def sse_text(session: aiohttp.ClientSession, url: str, prompt: str) -> str:
    """The content of a streamed ``/v1/chat/completions`` answer."""
    async with session.post(url + "/v1/chat/completions", json={
            "model": OPENAI, "stream": True, "messages": [{"role": "user", "content": prompt}]}) as response:
        assert response.status == 200
        decoder, text = SSEDecoder(), ""
        async for piece in response.content.iter_any():
            for event in decoder.feed(piece):
                if event.data != "[DONE]":
                    chunk = json.loads(event.data)
                    text += "".join(choice["delta"].get("content") or "" for choice in chunk["choices"])
    return text


# Request heads (a WebSocket's opening handshake is one).

@pytest.mark.parametrize("sent", [
    b"",
    b"GET /healthz HTTP/1.1\r\n",
    b"GET /ws/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
], ids=["nothing", "one-header-line", "websocket-handshake"])
async def test_a_connection_without_a_complete_head_is_closed_after_header_timeout(mock, sent: bytes) -> None:
    async with run_hub(hub_config(mock, http_header_timeout_s=0.5)) as hub:
        reader, writer = await open_raw(hub.url)
        opened = time.monotonic()
        writer.write(sent)
        await healthz(hub.url)  # answered meanwhile
        data, _ = await closed_after(reader)
        writer.close()
        assert data == b""  # closed without an answer
        assert time.monotonic() - opened >= 0.45  # not before its deadline (0.5 s after the accept)
        await healthz(hub.url)


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP response with a ``Content-Length``: its status line."""
    async with asyncio.timeout(WAIT_S):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
    return head.split(b"\r\n")[0]


async def test_a_head_in_pieces_counts_once_complete_and_keepalive_takes_over(mock) -> None:
    async with run_hub(hub_config(mock, http_header_timeout_s=0.5)) as hub:
        reader, writer = await open_raw(hub.url)
        for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n\r", b"\n"):  # the blank line split
            writer.write(piece)
            await asyncio.sleep(0.15)
        assert await read_response(reader) == b"HTTP/1.1 200 OK"
        await asyncio.sleep(0.75)  # past the head deadline: the connection is a keep-alive one now
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert await read_response(reader) == b"HTTP/1.1 200 OK"
        writer.close()


async def test_streams_longer_than_the_header_timeout_are_not_cut(mock, ws_factory) -> None:
    async with run_hub(hub_config(mock, http_header_timeout_s=0.3)) as hub, aiohttp.ClientSession() as session:
        client = await ws_factory(hub)
        await client.send({"type": "completion", "id": "ws", "model": OPENAI, "coalesce": False,
                           "messages": [{"role": "user", "content": "[[mock tokens=20 tps=20 seed=1]]"}]})
        sse = await sse_text(session, hub.url, "[[mock tokens=20 tps=20 seed=2]]")  # about 1 s
        messages = await client.until_terminal("ws")
        assert sse == expected_text(20, seed=2)
        assert "".join(getattr(m, "content", "") or "" for m in messages) == expected_text(20, seed=1)
        assert type(messages[-1]).__name__ == "Completed"


# Bodies.

async def test_a_body_that_stops_halfway_gets_408_after_body_timeout(mock) -> None:
    async with run_hub(hub_config(mock, http_body_timeout_s=0.5)) as hub:
        reader, writer = await open_raw(hub.url)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n" + b'{"model": ')
        started = time.monotonic()
        async with asyncio.timeout(WAIT_S):
            head = await reader.readuntil(b"\r\n\r\n")
        elapsed = time.monotonic() - started
        status, *lines = head.decode().split("\r\n")
        headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines if line)}
        async with asyncio.timeout(WAIT_S):
            body = json.loads(await reader.readexactly(int(headers["content-length"])))
        writer.close()
        assert status.startswith("HTTP/1.1 408")
        assert headers["connection"] == "close" and headers["content-type"].startswith("application/json")
        assert body["error"]["code"] == "invalid_message" and "http.body_timeout_s" in body["error"]["message"]
        assert elapsed >= 0.4
        await healthz(hub.url)


async def test_a_whole_body_is_served_as_before(mock) -> None:
    async with run_hub(hub_config(mock, http_body_timeout_s=0.5)) as hub, aiohttp.ClientSession() as session:
        assert await sse_text(session, hub.url, "[[mock tokens=5 seed=3]]") == expected_text(5, seed=3)


# Idle keep-alive.

@pytest.mark.parametrize("next_head", [b"", b"GET /healthz HTTP/1.1\r\n"], ids=["idle", "half-sent-second-head"])
async def test_an_idle_keepalive_connection_is_closed_after_keepalive_timeout(mock, next_head: bytes) -> None:
    async with run_hub(hub_config(mock, http_keepalive_timeout_s=0.5, http_header_timeout_s=30)) as hub:
        reader, writer = await open_raw(hub.url)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert await read_response(reader) == b"HTTP/1.1 200 OK"
        writer.write(next_head)
        data, elapsed = await closed_after(reader)
        writer.close()
        assert data == b"" and elapsed >= 0.4


# Running out of file descriptors.

#: The child: set its own open-files limit, optionally turn off the listener's early making of
#: room (so that accept() itself fails with EMFILE), then run `cbhub serve`.
CHILD = """
import resource, sys
limit, reserve = int(sys.argv[1]), sys.argv[2]
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
if reserve != "default":
    import hub.transports.http_limits as http_limits
    http_limits.FD_RESERVE = int(reserve)
from hub.cli import main
sys.exit(main(sys.argv[3:]))
"""
FD_LIMIT = 256
ATTACKERS = 384  # half again as many sockets as the hub may open
BUDGET = 64 << 20  # the child's memory_budget_bytes; RSS must stay within it + 128 MiB


async def slow_loris(url: str, closed_by_hub: list[int]) -> None:
    """One attacker: connect, send one header line, hold the socket; when the hub closes it,
    open another one. Runs until cancelled."""
    while True:
        try:
            async with asyncio.timeout(WAIT_S):
                reader, writer = await open_raw(url)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.05)
            continue
        try:
            writer.write(b"GET / HTTP/1.1\r\n")
            with contextlib.suppress(OSError):
                await reader.read(1)
            closed_by_hub[0] += 1
        finally:
            writer.close()
        await asyncio.sleep(0.02)


def _rss_peak_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_NOFILE and /proc: Linux")
@pytest.mark.parametrize(("reserve", "loop"), [
    ("default", "asyncio"),
    ("-1000000", "asyncio"),  # no early room-making: accept() itself fails with EMFILE
    pytest.param("default", "uvloop", marks=pytest.mark.skipif(not _has_uvloop(), reason="needs uvloop")),
], ids=["make-room-early", "accept-fails-with-emfile", "make-room-early-uvloop"])
async def test_more_half_open_sockets_than_the_open_files_limit(mock, tmp_path, reserve: str, loop: str) -> None:
    """The issue's attack, harder: more sockets than the hub may open, each sending one header
    line and stopping, and re-opened by the attacker as soon as the hub closes it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = ATTACKERS * 2 + 256
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the test process needs {needed} open files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    log_path = tmp_path / "hub.log"
    env = {**os.environ, **hub_env(mock.url, memory_budget_bytes=BUDGET, shutdown_drain_timeout_s=0)}
    with log_path.open("wb") as log_file:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(FD_LIMIT), reserve, "serve", "--port", "0", "--log-level", "INFO",
            "--loop", loop, env=env, stdout=asyncio.subprocess.PIPE, stderr=log_file)
    try:
        assert child.stdout is not None
        line = (await asyncio.wait_for(child.stdout.readline(), 30)).decode()
        url = line.split("listening on ")[1].split()[0]
        await healthz(url)
        closed_by_hub = [0]
        attackers = [asyncio.create_task(slow_loris(url, closed_by_hub)) for _ in range(ATTACKERS)]
        async with aiohttp.ClientSession() as session:
            # Another client's stream, about 1.5 s, all through the attack.
            stream = asyncio.create_task(sse_text(session, url, "[[mock tokens=30 tps=20 seed=5]]"))
            during = []
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline or not stream.done():
                during.append(await healthz(url))
                await asyncio.sleep(0.1)
            text = await stream
        assert closed_by_hub[0] >= ATTACKERS - FD_LIMIT  # the hub made room by closing attackers
        for task in attackers:
            task.cancel()
        await asyncio.gather(*attackers, return_exceptions=True)
        after = [await healthz(url) for _ in range(3)]
        rss_peak = _rss_peak_bytes(child.pid)
    finally:
        if child.returncode is None:
            child.terminate()
        await asyncio.wait_for(child.wait(), WAIT_S)
    log_text = log_path.read_text(errors="replace")
    print(f"\n{reserve} {loop}: {len(during)} health checks during, slowest {max(during):.3f} s; after, slowest "
          f"{max(after):.3f} s; attackers closed by the hub {closed_by_hub[0]}; log {len(log_text)} bytes; "
          f"RSS peak {rss_peak / 2**20:.0f} MiB")
    assert text == expected_text(30, seed=5)
    assert len(log_text) < 50_000 and "Traceback" not in log_text, log_text[-2000:]
    assert rss_peak <= BUDGET + (128 << 20)


# Logging that cannot flood.

def _repeat_handler(window_s: float = 10.0) -> tuple[logging.Logger, io.StringIO, list[float], RepeatFilter]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    now = [100.0]
    repeat_filter = RepeatFilter(handler, window_s, clock=lambda: now[0])
    handler.addFilter(repeat_filter)
    logger = logging.getLogger("cbhub.test_repeats")
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    return logger, stream, now, repeat_filter


def test_a_thousand_identical_records_are_one_line_and_a_count() -> None:
    logger, stream, now, repeat_filter = _repeat_handler()
    install_secret_filter(())  # the messages have their arguments merged in, as under cbhub serve
    try:
        for index in range(1000):
            logger.warning("connection from %s failed", f"10.0.0.{index % 250}")
            now[0] += 0.005  # 5 s in all: one window
        logger.info("something else")
        assert stream.getvalue().splitlines() == [
            "WARNING cbhub.test_repeats: connection from 10.0.0.0 failed", "INFO cbhub.test_repeats: something else"]
        now[0] += 10
        logger.warning("connection from %s failed", "10.0.0.7")  # a new window: the count comes first
    finally:
        uninstall_secret_filter()
    repeat_filter.flush(everything=True)
    lines = stream.getvalue().splitlines()
    assert lines[2:] == ["WARNING cbhub.test_repeats: connection from 10.0.0.249 failed "
                         "(repeated 999 times in the last 10 s)",
                         "WARNING cbhub.test_repeats: connection from 10.0.0.7 failed"]


def test_records_differing_in_level_or_exception_type_are_not_collapsed() -> None:
    logger, stream, _now, repeat_filter = _repeat_handler()
    for error in (OSError, ValueError, OSError):
        try:
            raise error("boom")
        except error:
            logger.exception("failed")
    logger.error("failed")
    repeat_filter.flush(everything=True)
    text = stream.getvalue()
    assert text.count("OSError: boom") == 1 and text.count("ValueError: boom") == 1
    assert "failed (repeated 1 times in the last 10 s)" in text  # the second OSError, without traceback
    assert text.count("ERROR cbhub.test_repeats: failed\n") == 3  # OSError, ValueError, no exception


def test_loop_errors_go_through_logging_without_traceback_when_out_of_descriptors(caplog) -> None:
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            error = OSError(errno.EMFILE, "Too many open files")
            loop_exception_handler(loop, {"message": "socket.accept() out of system resource", "exception": error})
            loop_exception_handler(loop, {"message": "task failed", "exception": RuntimeError("x")})
    finally:
        loop.close()
    first, second = caplog.records
    assert first.exc_info is None and "Too many open files" in first.getMessage()
    assert second.exc_info is not None and second.exc_info[0] is RuntimeError
