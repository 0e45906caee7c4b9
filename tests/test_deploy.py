"""docs/deploy/nginx.conf, as docs/DEPLOY.md gives it, in front of two hubs that share the Redis
broker: a real nginx (its own prefix, pid, logs and temporary files under the test's temporary
directory; only the upstream servers and the listen port rewritten), two hubs and the mock
provider in this event loop, Redis on 127.0.0.1 (database 15 or ``CBHUB_TEST_REDIS_URL``, keys
under a prefix of the test's own, unlinked afterwards).

Skipped when no ``nginx`` binary is on the PATH (``apt-get install nginx-light``; .ci/run
installs it) unless ``CBHUB_REQUIRE_NGINX=1``, and when no Redis answers unless
``CBHUB_REQUIRE_REDIS=1``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

from hub.app import Hub, run_hub
from protocol.messages import Completed, ContentChunk, Subscribed
from tests.conftest import RECV_TIMEOUT_S, WSClient, hub_config
from tests.support import ROOT
from tests.test_workers import REDIS_ANSWERS, REDIS_URL, prefix  # noqa: F401  (prefix: a fixture)
from tools.mock_provider import MockProvider, expected_text

NGINX = shutil.which("nginx")
if NGINX is None and os.environ.get("CBHUB_REQUIRE_NGINX") == "1":
    raise RuntimeError("CBHUB_REQUIRE_NGINX=1 but no nginx binary is on the PATH")
needs_nginx_and_redis = pytest.mark.skipif(
    NGINX is None or not REDIS_ANSWERS,
    reason="no nginx binary (apt-get install nginx-light)" if NGINX is None else f"no Redis answers at {REDIS_URL}")

SITE = ROOT / "docs" / "deploy" / "nginx.conf"
OPENAI = "openai/gpt-4o-mini"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def site_for(upstreams: list[int], listen: int) -> str:
    """docs/deploy/nginx.conf with its upstream servers on ``127.0.0.1:<upstreams>`` and its
    listen port on ``127.0.0.1:<listen>``; nothing else changed."""
    text = SITE.read_text(encoding="utf-8")
    servers = re.findall(r"(?m)^    server 10\.0\.0\.\d+:8765( [^;]*);\n", text)
    assert len(servers) == 2, "docs/deploy/nginx.conf: the upstream is expected to name two servers"
    text = re.sub(r"(?m)^    server 10\.0\.0\.\d+:8765[^;]*;\n", "", text, count=1)
    text = re.sub(r"(?m)^    server 10\.0\.0\.\d+:8765[^;]*;\n",
                  "".join(f"    server 127.0.0.1:{port}{servers[0]};\n" for port in upstreams), text, count=1)
    text, listens = re.subn(r"(?m)^    listen 80;$", f"    listen 127.0.0.1:{listen};", text)
    assert listens == 1
    return text


@contextlib.asynccontextmanager
async def nginx(tmp_path: Path, upstreams: list[int]) -> AsyncIterator[str]:
    """nginx in the foreground with the site config (checked with ``nginx -t`` first); yields
    ``http://127.0.0.1:<port>`` once it accepts connections."""
    port = free_port()
    (tmp_path / "cbhub.conf").write_text(site_for(upstreams, port), encoding="utf-8")
    temp = "\n".join(f"    {kind}_temp_path {tmp_path / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                               "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
{"user root;" if os.geteuid() == 0 else ""}
events {{ worker_connections 256; }}
http {{
    access_log {tmp_path}/access.log;
{temp}
    include {tmp_path}/cbhub.conf;
}}
""", encoding="utf-8")
    assert NGINX is not None
    argv = [NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(tmp_path / "nginx.conf")]
    check = await asyncio.create_subprocess_exec(*argv, "-t", stderr=asyncio.subprocess.PIPE)
    _, problems = await check.communicate()
    assert check.returncode == 0, problems.decode()
    process = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(RECV_TIMEOUT_S):
            while True:  # nginx has no readiness signal: its port answers
                assert process.returncode is None, (tmp_path / "error.log").read_text()
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    await writer.wait_closed()
                    break
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGQUIT)  # graceful: the open requests finish
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.fixture
async def hubs(mock: MockProvider, prefix: str) -> AsyncIterator[list[Hub]]:  # noqa: F811
    """Two hubs sharing the Redis broker, in this event loop."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(run_hub(hub_config(mock, broker_url=REDIS_URL, broker_prefix=prefix)))
               for _ in range(2)]


def port_of(hub: Hub) -> int:
    return int(hub.url.rsplit(":", 1)[1])


async def start(client: WSClient, cid: str, directive: str) -> None:
    await client.send({"type": "completion", "id": cid, "model": OPENAI, "coalesce": False,
                       "messages": [{"role": "user", "content": directive}]})
    ack = await client.recv()
    assert isinstance(ack, Subscribed), ack


@needs_nginx_and_redis
async def test_websocket_through_nginx_is_balanced_over_both_hubs_which_serve_each_others_completions(
        hubs, tmp_path):
    async with nginx(tmp_path, [port_of(hub) for hub in hubs]) as url:
        ws_url = url.replace("http", "ws", 1) + "/ws/stream"
        # Connections through nginx until each hub holds one (least_conn sends the second to
        # the hub without one).
        on: dict[int, WSClient] = {}
        opened: list[WSClient] = []
        try:
            for _ in range(20):
                before = [len(hub.connections) for hub in hubs]
                client = WSClient(await websockets.connect(ws_url, compression=None))
                opened.append(client)
                await client.send({"type": "ping", "rid": "p"})  # answered once the hub holds it
                assert (await client.recv()).rid == "p"
                grew = [index for index, hub in enumerate(hubs) if len(hub.connections) > before[index]]
                assert len(grew) == 1
                on.setdefault(grew[0], client)
                if len(on) == 2:
                    break
            assert set(on) == {0, 1}
            # A completion on one hub, a subscriber on the other: the same messages, through nginx.
            await start(on[0], "n1", "[[mock tokens=40 tps=400]]")
            await on[1].send({"type": "subscribe", "channels": ["completion:n1"]})
            assert isinstance(await on[1].recv(), Subscribed)
            first, second = await asyncio.gather(on[0].until_terminal("n1"), on[1].until_terminal("n1"))
            assert first == second and isinstance(first[-1], Completed)
            assert [m.seq for m in first] == list(range(1, len(first) + 1))
            assert "".join(m.content for m in first if isinstance(m, ContentChunk)) == expected_text(40)
        finally:
            for client in opened:
                await client.connection.close()


@needs_nginx_and_redis
async def test_sse_through_nginx_arrives_unbuffered(hubs, mock, tmp_path):
    body: dict[str, Any] = {"model": OPENAI, "stream": True,
                            "messages": [{"role": "user", "content": "[[mock tokens=50 tps=1]]"}]}
    async with nginx(tmp_path, [port_of(hub) for hub in hubs]) as url:
        # aiohttp's own bound on each read as well: with a buffering nginx (gzip on), asyncio.timeout
        # was seen not to end a readline of the compressed body still waiting for data.
        timeout = aiohttp.ClientTimeout(sock_read=RECV_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(url + "/v1/chat/completions", json=body) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/event-stream")
                async with asyncio.timeout(RECV_TIMEOUT_S):
                    while True:
                        line = (await response.content.readline()).decode()
                        if not line.startswith("data: ") or line.startswith("data: [DONE]"):
                            continue
                        delta = json.loads(line[6:])["choices"][0]["delta"]
                        if delta.get("content"):
                            break
                # The first token came through while the provider still streams the other 49
                # (one a second): nginx passed it on at once, not when the response ended or
                # filled a buffer.
                assert delta["content"] == expected_text(50).split(" ")[0] + " "
                assert mock.stats["active"] == 1 and mock.stats["completed"] == 0
        # Leaving cancels it upstream, through nginx and the hub.
        async with asyncio.timeout(RECV_TIMEOUT_S):
            while mock.stats["active"]:
                await asyncio.sleep(0.01)
    assert mock.stats["disconnected"] == 1


def test_docs_deploy_shows_the_tested_site_config() -> None:
    """docs/DEPLOY.md quotes docs/deploy/nginx.conf whole, so the configuration a reader copies
    is the one the tests above run."""
    text = (ROOT / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    blocks = re.findall(r"(?ms)^```nginx\n(.*?)^```$", text)
    assert SITE.read_text(encoding="utf-8") in blocks
