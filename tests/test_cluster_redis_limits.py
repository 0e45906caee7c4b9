"""The Redis broker at Redis's limits (issue 13; docs/PROTOCOL.md "Running several hubs"): a
Redis full to ``maxmemory`` (``noeviction``) refuses the owner's writes mid-stream, and a
subscriber on another node still gets every event exactly (or ``stream_gap``), never a silent
stall; a ``broker.url`` holding a password never shows it. Against redis-servers of the tests'
own (tests/test_cluster_failover.py's ``own_redis``) and ``cbhub serve`` processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from hub.app import run_hub
from hub.config import mask_url
from hub.redis_broker import RedisBroker
from protocol.messages import Completed, ErrorMessage, Subscribed
from tests.conftest import hub_config
from tests.test_cluster import OPENAI, start, text
from tests.test_cluster_failover import free_port, own_redis  # noqa: F401  (fixture)
from tests.test_config import ROOT, clean_environ
from tools.mock_provider import expected_text

TOKENS = 200
PAD = 20_000  # every event carries a 20 kB token: 4 MB in all
HEADROOM = 1 << 20  # maxmemory: Redis's memory at the start plus this: full after about 50 events


async def healthz(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as response:
        return dict(await response.json())


async def test_redis_full_to_maxmemory_holds_the_owners_events_until_it_takes_them_again(
        mock, own_redis, ws_factory):  # noqa: F811
    redis = aioredis.from_url(own_redis.url)
    config = hub_config(mock, broker_url=own_redis.url, broker_prefix="cbhub-oom:", broker_node_timeout_s=1)
    try:
        async with run_hub(config) as a, run_hub(config) as b:
            owner = await ws_factory(a)
            remote = await ws_factory(b)
            await redis.config_set("maxmemory-policy", "noeviction")
            used = (await redis.info("memory"))["used_memory"]
            await redis.config_set("maxmemory", used + HEADROOM)
            ack = await start(owner, "big1", f"[[mock tokens={TOKENS} tps=100 pad={PAD}]]")
            await remote.send({"type": "subscribe", "channels": ["completion:big1"]})
            joined = await remote.recv()
            assert isinstance(joined, Subscribed) and joined.epochs == ack.epochs
            # Redis fills up mid-stream: the owner keeps the refused events and says so.
            async with asyncio.timeout(20):
                while (health := await healthz(a.url))["status"] != "degraded":
                    await asyncio.sleep(0.02)
            assert health["broker"]["connected"] is False
            assert "refuses writes" in health["broker"]["reason"] and "OOM" in health["broker"]["reason"]
            # The owner's own subscriber gets everything, exactly, meanwhile (Redis stays full
            # to the end of the run: its terminal event is refused too).
            on_a = await owner.until_terminal("big1")
            assert isinstance(on_a[-1], Completed) and [m.seq for m in on_a] == list(range(1, len(on_a) + 1))
            assert text(on_a) == expected_text(TOKENS, pad=PAD)
            broker = a.broker
            assert isinstance(broker, RedisBroker)
            waiting = broker.health()["events_unsent"]
            assert waiting > 0 and broker.refused is not None
            round_trips = broker.round_trips
            await redis.config_set("maxmemory", 0)  # Redis takes writes again
            on_b: list[Any] = []
            async with asyncio.timeout(20):  # never a silent stall
                while not on_b or not isinstance(on_b[-1], (Completed, ErrorMessage)):
                    message = await remote.recv()
                    if getattr(message, "completion_id", None) == "big1":
                        on_b.append(message)
            if broker.events_dropped == 0:  # nothing was shed: every event reaches the other node
                assert on_b == on_a
            else:
                assert on_b[-1].error.code == "stream_gap" and on_b[-1].seq is None
                assert on_b[:-1] == on_a[:len(on_b) - 1]
            assert broker.events_dropped == 0  # 4 MB: far below the unsent caps
            async with asyncio.timeout(10):
                while (health := await healthz(a.url))["status"] != "ok":
                    await asyncio.sleep(0.02)
            assert health["broker"]["reason"] is None and health["broker"]["events_unsent"] == 0
            # Redis holds every event once, in order: nothing was lost or written twice.
            entries = await redis.xrange("cbhub-oom:s:completion:big1")
            assert [entry_id for entry_id, _ in entries] == [f"{m.seq}-0".encode() for m in on_a]
            assert (await redis.hget("cbhub-oom:meta:completion:big1", "state")) == b"finished"
            # The other node was never declared lost (the heartbeat survives a full Redis).
            assert b.broker.health()["nodes_lost"] == 0
            print(f"\n{len(on_a)} events of 20 kB; {waiting} waited for Redis (maxmemory {used + HEADROOM} B), "
                  f"sent in {broker.round_trips - round_trips} round trips after CONFIG SET maxmemory 0")
    finally:
        await redis.aclose()


async def test_a_completion_refused_by_a_full_redis_is_retryable_and_healthz_says_why(
        mock, own_redis, ws_factory):  # noqa: F811
    redis = aioredis.from_url(own_redis.url)
    config = hub_config(mock, broker_url=own_redis.url, broker_prefix="cbhub-full:", broker_node_timeout_s=1)
    try:
        async with run_hub(config) as a:
            client = await ws_factory(a)
            await redis.config_set("maxmemory-policy", "noeviction")
            await redis.config_set("maxmemory", 1)  # below what Redis uses already: every write refused
            await client.send({"type": "completion", "id": "f1", "model": OPENAI, "rid": "full",
                               "messages": [{"role": "user", "content": "hi"}]})
            refused = await client.recv()
            assert isinstance(refused, ErrorMessage) and refused.error.retryable, refused
            assert refused.error.code == "hub_overloaded" and refused.rid == "full", refused
            assert "OutOfMemoryError" in refused.error.message
            # Nothing of this node waits for Redis: its keepalive probes with a write of its own.
            health = await healthz(a.url)
            assert health["status"] == "degraded" and "OOM" in health["broker"]["reason"]
            await redis.config_set("maxmemory", 0)
            async with asyncio.timeout(10):
                while (health := await healthz(a.url))["status"] != "ok":
                    await asyncio.sleep(0.02)
            assert health["broker"]["reason"] is None
            await start(client, "f1", "[[mock tokens=3]]")  # the same id: the refused claim left nothing
            assert text(await client.until_terminal("f1")) == expected_text(3)
    finally:
        await redis.aclose()


async def test_a_full_redis_declares_no_node_lost(mock, own_redis, ws_factory):  # noqa: F811
    redis = aioredis.from_url(own_redis.url)
    config = hub_config(mock, broker_url=own_redis.url, broker_prefix="cbhub-beat:", broker_node_timeout_s=1)
    try:
        async with run_hub(config) as a, run_hub(config) as b:
            owner = await ws_factory(a)
            remote = await ws_factory(b)
            await start(owner, "h1", "[[mock tokens=100 tps=50]]")
            await remote.send({"type": "subscribe", "channels": ["completion:h1"]})
            assert isinstance(await remote.recv(), Subscribed)
            on_b = [await remote.recv()]  # B is live
            await redis.config_set("maxmemory-policy", "noeviction")
            await redis.config_set("maxmemory", 1)  # every write that needs memory is refused
            beat = f"cbhub-beat:node:{a.broker.node_id}"
            last, renewed = await redis.pttl(beat), 0
            async with asyncio.timeout(10):  # renewed 5 times (1.25 s, past node_timeout_s) while full
                while renewed < 5:
                    now = await redis.pttl(beat)
                    assert now > 0, "A's heartbeat expired while Redis was full"
                    renewed += now > last
                    last = now
                    await asyncio.sleep(0.02)
            assert a.broker.refused is not None  # its events were refused meanwhile
            await redis.config_set("maxmemory", 0)
            on_a = await owner.until_terminal("h1")
            on_b += await remote.until_terminal("h1")
            assert isinstance(on_a[-1], Completed) and on_b == on_a  # no node_lost, nothing lost
            assert b.broker.health()["nodes_lost"] == 0
    finally:
        await redis.aclose()


def test_mask_url_hides_every_password_form() -> None:
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("rediss://user:p@ss@host/0") == "rediss://user:***@host/0"
    assert mask_url("redis://s3cret@host") == "redis://***@host"
    assert mask_url("redis://host/0?db=1&Password=s3cret#x") == "redis://host/0?db=1&Password=***#x"
    assert mask_url("unix://:s3cret@/run/redis.sock?db=0") == "unix://:***@/run/redis.sock?db=0"
    assert mask_url("unix:///run/redis.sock") == "unix:///run/redis.sock"


def cbhub(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``cbhub ARGS`` with ``CBHUB_BROKER_URL`` = ``url``, its output captured."""
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], cwd=ROOT,
                          env={**clean_environ(), "CBHUB_BROKER_URL": url}, capture_output=True, text=True,
                          timeout=60)


async def test_serve_never_prints_the_password_of_broker_url(own_redis):  # noqa: F811
    # Nothing answers on the port.
    dead = f"redis://hubuser:dead-pass-4711@127.0.0.1:{free_port()}/0"
    done = await asyncio.to_thread(cbhub, dead, "serve", "--port", "0")
    assert done.returncode == 2
    assert done.stderr.startswith(f"cbhub: broker.url {mask_url(dead)!r}: Redis does not answer"), done.stderr
    assert "dead-pass-4711" not in done.stderr + done.stdout and "hubuser:***@" in done.stderr
    # Redis answers, and refuses the password (WRONGPASS).
    redis = aioredis.from_url(own_redis.url)
    try:
        await redis.config_set("requirepass", "the-right-one")
    finally:
        await redis.aclose()
    wrong = own_redis.url.replace("redis://", "redis://:wrong-pass-0815@")
    done = await asyncio.to_thread(cbhub, wrong, "serve", "--port", "0")
    assert done.returncode == 2
    assert done.stderr.startswith(f"cbhub: broker.url {mask_url(wrong)!r}: Redis does not answer"), done.stderr
    assert "wrong-pass-0815" not in done.stderr + done.stdout and ":***@" in done.stderr
    # `cbhub config` shows it masked too.
    shown = await asyncio.to_thread(cbhub, wrong, "config")
    assert shown.returncode == 0 and mask_url(wrong) in shown.stdout and "wrong-pass-0815" not in shown.stdout
