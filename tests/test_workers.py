"""``cbhub serve --workers N`` (hub/workers.py): worker processes on one port (SO_REUSEPORT)
sharing the Redis broker, a supervisor that forwards SIGTERM so that every worker drains, and
replaces a worker that dies. The hub runs as a real ``cbhub serve`` process against the mock
provider of this test's event loop; Redis on 127.0.0.1 (database 15, or ``CBHUB_TEST_REDIS_URL``),
every key under a prefix of the test's own, unlinked afterwards (SCAN + UNLINK). The tests that
need Redis skip when none answers, unless ``CBHUB_REQUIRE_REDIS=1`` (.ci/run sets it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

from protocol.messages import Completed, ContentChunk, ErrorMessage, Subscribed
from tests.conftest import REDIS_URL, WSClient, redis_answers, redis_prefix_for_test
from tests.test_config import ROOT, clean_environ
from tools.bench.procs import hub_env
from tools.mock_provider import MockProvider, expected_text

OPENAI = "openai/gpt-4o-mini"
#: Bound for a worker process to start (interpreters spawned on a busy 2-core machine), in s.
START_TIMEOUT_S = 60.0


REDIS_ANSWERS = redis_answers()  # raises under CBHUB_REQUIRE_REDIS=1
needs_redis = pytest.mark.skipif(not REDIS_ANSWERS, reason=f"no Redis answers at {REDIS_URL}")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are unlinked at the end."""
    with redis_prefix_for_test() as value:
        yield value


class Served:
    """A running ``cbhub serve --workers N``: its process, the one URL it printed, the workers'
    pids from that line, and the file its stderr (the logs) goes to."""

    def __init__(self, process: asyncio.subprocess.Process, url: str, pids: list[int], log: Path) -> None:
        self.process = process
        self.url = url
        self.pids = pids
        self.log = log

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    async def wait_for_log(self, pattern: str) -> re.Match[str]:
        """The first match of ``pattern`` in the logs, once it is written."""
        async with asyncio.timeout(START_TIMEOUT_S):
            while (found := re.search(pattern, self.log_text())) is None:
                await asyncio.sleep(0.05)
        return found

    async def ws(self) -> WSClient:
        url = self.url.replace("http", "ws", 1) + "/ws/stream"
        return WSClient(await websockets.connect(url, compression=None))


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, env: dict[str, str], *args: str) -> AsyncIterator[Served]:
    """``python -m hub.cli serve --port 0 ARGS`` with ``env`` until its listening line; at the
    end SIGTERM unless it has exited already."""
    log = tmp_path / f"serve-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.cli", "serve", "--port", "0", "--log-level", "INFO", *args, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=stderr)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            line = (await process.stdout.readline()).decode()
        found = re.match(r"circuit-breaker-hub listening on (\S+) .*workers, pids ([\d ]+)\)", line)
        assert found, (line, log.read_text())
        yield Served(process, found[1], [int(pid) for pid in found[2].split()], log)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(START_TIMEOUT_S):
                await process.wait()


def worker_env(mock: MockProvider, prefix: str, **config: Any) -> dict[str, str]:
    return {**clean_environ(), **hub_env(mock.url, broker_url=REDIS_URL, broker_prefix=prefix, **config)}


async def healthz_pids(url: str, wanted: set[int]) -> dict[int, str]:
    """``{pid: broker node}`` of the processes that answered ``/healthz``, each request on a new
    connection, until every pid of ``wanted`` answered (at most 400 requests)."""
    seen: dict[int, str] = {}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(400):
            async with session.get(url + "/healthz") as response:
                body = await response.json()
            assert response.status == 200 and body["status"] == "ok"
            seen[body["pid"]] = body["node"]
            if wanted <= set(seen):
                break
    return seen


async def owner_node(prefix: str, completion_id: str) -> str:
    """The broker node that runs ``completion_id`` (its meta hash in Redis)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        node = await client.hget(f"{prefix}meta:completion:{completion_id}", "node")
    finally:
        await client.aclose()
    assert node is not None
    return str(node.decode())


async def start(client: WSClient, cid: str, directive: str) -> Subscribed:
    await client.send({"type": "completion", "id": cid, "model": OPENAI, "coalesce": False,
                       "messages": [{"role": "user", "content": directive}]})
    ack = await client.recv()
    assert isinstance(ack, Subscribed), ack
    return ack


async def read_until_closed(client: WSClient) -> tuple[list[Any], int | None]:
    messages = []
    try:
        while True:
            messages.append(await client.recv())
    except websockets.ConnectionClosed as closed:
        return messages, closed.rcvd.code if closed.rcvd else None


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@needs_redis
async def test_two_workers_share_one_port_and_every_completion_then_drain_on_sigterm(mock, prefix, tmp_path):
    env = worker_env(mock, prefix, shutdown_drain_timeout_s=0.3)
    async with serve(tmp_path, env, "--workers", "2") as served:
        # Connections land on both workers: two pids answer /healthz on the one port.
        assert len(set(served.pids)) == 2
        nodes = await healthz_pids(served.url, set(served.pids))
        assert set(nodes) == set(served.pids) and len(set(nodes.values())) == 2

        # Find a WebSocket connection on each worker: the node that runs a completion started
        # through a connection is the worker that connection landed on.
        by_node: dict[str, WSClient] = {}
        for attempt in range(100):
            client = await served.ws()
            await start(client, f"probe{attempt}", "[[mock tokens=2]]")
            await client.until_terminal(f"probe{attempt}")
            node = await owner_node(prefix, f"probe{attempt}")
            if node in by_node:
                await client.connection.close()
            else:
                by_node[node] = client
            if len(by_node) == 2:
                break
        assert set(by_node) == set(nodes.values())
        first, second = by_node.values()

        # A completion started on one worker is subscribable from a connection on the other.
        await start(first, "x1", "[[mock tokens=60 tps=300]]")
        await second.send({"type": "subscribe", "channels": ["completion:x1"]})
        joined = await second.recv()
        assert isinstance(joined, Subscribed), joined
        seen_first, seen_second = await asyncio.gather(first.until_terminal("x1"), second.until_terminal("x1"))
        assert seen_first == seen_second
        assert [m.seq for m in seen_first] == list(range(1, len(seen_first) + 1))
        assert isinstance(seen_first[-1], Completed)
        assert "".join(m.content for m in seen_first if isinstance(m, ContentChunk)) == expected_text(60)

        # SIGTERM to the supervisor: every worker drains (the running completion ends with
        # shutting_down after the 0.3 s drain, WebSockets close 1012) and all exit 0.
        await start(first, "d1", "[[mock tokens=1000 tps=20]]")
        assert isinstance(await first.recv(), ContentChunk)
        served.process.send_signal(signal.SIGTERM)
        (messages, code), (_, other_code) = await asyncio.gather(read_until_closed(first),
                                                                read_until_closed(second))
        async with asyncio.timeout(START_TIMEOUT_S):
            status = await served.process.wait()
    assert status == 0 and code == 1012 and other_code == 1012
    assert isinstance(messages[-1], ErrorMessage) and messages[-1].error.code == "shutting_down"
    logs = served.log_text()
    assert "SIGTERM: stopping the 2 workers" in logs
    for index, pid in enumerate(served.pids, start=1):
        assert f"worker {index} (pid {pid}) exited with status 0" in logs, logs
        assert gone(pid)


@needs_redis
async def test_a_worker_that_dies_is_logged_and_replaced(mock, prefix, tmp_path):
    async with serve(tmp_path, worker_env(mock, prefix), "--workers", "2") as served:
        victim = served.pids[1]
        os.kill(victim, signal.SIGKILL)
        await served.wait_for_log(rf"worker 2 \(pid {victim}\) was killed by SIGKILL after [\d.]+ s; "
                                  r"starting a new worker in its place in 1 s")
        replacement = int((await served.wait_for_log(r"worker 2 restarted \(pid (\d+)\)"))[1])
        await served.wait_for_log(rf"worker 2 \(pid {replacement}\) listening on")
        assert replacement != victim and gone(victim)
        nodes = await healthz_pids(served.url, {served.pids[0], replacement})
        assert {served.pids[0], replacement} <= set(nodes)
        survivor = await served.ws()  # the port still serves
        await start(survivor, "after1", "[[mock tokens=5]]")
        assert isinstance((await survivor.until_terminal("after1"))[-1], Completed)
        await survivor.connection.close()
        served.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(START_TIMEOUT_S):
            assert await served.process.wait() == 0


@needs_redis
async def test_a_worker_that_does_not_stop_is_killed_after_the_drain_timeout(mock, prefix, tmp_path):
    env = worker_env(mock, prefix, shutdown_drain_timeout_s=0, shutdown_kill_after_s=0.5)
    async with serve(tmp_path, env, "--workers", "2") as served:
        stuck, fine = served.pids[1], served.pids[0]
        os.kill(stuck, signal.SIGSTOP)  # a worker that hangs: it takes no signal but SIGKILL
        served.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(START_TIMEOUT_S):
            status = await served.process.wait()
    logs = served.log_text()
    assert status == 1
    assert f"worker 2 (pid {stuck}) still runs 0.5 s after the drain timeout" in logs, logs
    assert f"worker 2 (pid {stuck}) was killed by SIGKILL" in logs
    assert f"worker 1 (pid {fine}) exited with status 0" in logs
    assert gone(stuck) and gone(fine)


@pytest.mark.parametrize("how", ["flag", "config"])
def test_workers_without_a_broker_url_are_refused(how):
    import subprocess

    argv = [sys.executable, "-m", "hub.cli", "serve", "--port", "0"]
    env = clean_environ()
    if how == "flag":
        argv += ["--workers", "2"]
    else:
        env["CBHUB_WORKERS"] = "2"
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("cbhub: --workers 2 (performance.workers) needs the Redis broker: set broker.url "
                                  "(CBHUB_BROKER_URL"), done.stderr


def test_workers_exit_2_naming_broker_url_when_redis_does_not_answer():
    import subprocess

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    done = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--port", "0", "--workers", "2"], cwd=ROOT,
                          env={**clean_environ(), "CBHUB_BROKER_URL": url}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert f"cbhub: broker.url {url!r}: Redis does not answer" in done.stderr
    assert "before listening; stopping the others" in done.stderr


def test_workers_on_a_port_in_use_print_one_line_and_exit_2():
    import subprocess

    with socket.socket() as taken:  # listening without SO_REUSEPORT: no worker can share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--port", str(port), "--workers", "2"],
                              cwd=ROOT, env={**clean_environ(), "CBHUB_BROKER_URL": REDIS_URL}, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.startswith(f"cbhub: cannot listen on 127.0.0.1:{port}: address already in use"), done.stderr
    assert done.stderr.count("\n") == 1 and "Errno" not in done.stderr and "Traceback" not in done.stderr
