"""Rate limits counted across the cluster in Redis (issue 13; hub/cluster_limits.py): two hubs
sharing the Redis broker, with authentication, in this event loop, against a real Redis
(database 15, or ``CBHUB_TEST_REDIS_URL``) under a key prefix of each test's own, unlinked
afterwards. The fixtures come from tests/test_cluster.py, whose import skips this module
when no Redis answers (unless ``CBHUB_REQUIRE_REDIS=1``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from hub.app import Hub, run_hub
from hub.cluster_limits import ClusterLimiter, _sha1
from hub.ratelimit import RateLimiter, Ticket
from protocol.errors import HubError
from protocol.messages import Completed, ErrorMessage, Subscribed
from tests.conftest import WSClient, hub_config
from tests.test_auth_hub import auth_config, make_token
from tests.test_cluster import REDIS_URL, prefix  # noqa: F401 (a fixture; importing skips without Redis)
from tests.test_cluster_failover import WS, serve  # noqa: F401 (a fixture: cbhub serve processes)
from tools.mock_provider import MockProvider

OPENAI = "openai/gpt-4o-mini"
#: A completion that runs until it is cancelled.
ENDLESS = "[[mock tokens=100000 tps=200]]"


@pytest.fixture
async def nodes(mock: MockProvider, prefix: str) -> AsyncIterator[list[Hub]]:  # noqa: F811
    """Two hubs (A, B) with JWT authentication sharing the Redis broker."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(run_hub(auth_config(mock, broker_url=REDIS_URL, broker_prefix=prefix)))
               for _ in range(2)]


async def connect(ws_factory: Any, hub: Hub, token: str) -> WSClient:
    client: WSClient = await ws_factory(hub, f"token={token}")
    return client


def completion(ident: str, directive: str = "[[mock tokens=3]]", rid: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "completion", "id": ident, "model": OPENAI,
                               "messages": [{"role": "user", "content": directive}]}
    if rid is not None:
        message["rid"] = rid
    return message


async def answer_to(client: WSClient, message: dict[str, Any]) -> Any:
    """Send ``message``; its acknowledgement or refusal (stream events of other runs skipped)."""
    await client.send(message)
    while True:
        reply = await client.recv()
        if isinstance(reply, Subscribed) or (isinstance(reply, ErrorMessage) and reply.seq is None):
            return reply


def limiter_of(hub: Hub) -> ClusterLimiter:
    assert hub.cluster_limits is not None
    return hub.cluster_limits


@dataclasses.dataclass(frozen=True)
class Who:
    subject: str
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None


async def test_a_second_run_on_another_node_is_refused_as_on_the_same_node_until_the_first_ends(nodes, ws_factory):
    a, b = nodes
    token = make_token("alice", max_concurrent=1)
    on_a, on_b = await connect(ws_factory, a, token), await connect(ws_factory, b, token)
    assert isinstance(await answer_to(on_a, completion("first", ENDLESS)), Subscribed)
    local = await answer_to(on_a, completion("again", rid="same-node"))
    remote = await answer_to(on_b, completion("other", rid="other-node"))
    for refusal, rid in ((local, "same-node"), (remote, "other-node")):
        assert isinstance(refusal, ErrorMessage) and refusal.rid == rid and refusal.completion_id is None
        assert refusal.error.code == "rate_limited" and refusal.error.retryable
        assert refusal.error.retry_after_ms == 1000
        assert refusal.error.message == "rate limited: alice runs 1 requests (max_concurrent 1); retry in 1000 ms"
    assert b.completions.get("other") is None
    # The OpenAI-compatible API of node B counts the same run.
    async with aiohttp.ClientSession() as http:
        body = msgspec.json.encode({"model": OPENAI, "messages": [{"role": "user", "content": "hi"}]})
        async with http.post(b.url + "/v1/chat/completions", data=body, headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {token}"}) as response:
            assert response.status == 429 and response.headers["Retry-After"] == "1"
            assert (await response.json())["error"]["code"] == "rate_limited"
    await on_a.send({"type": "cancel", "completionId": "first"})
    ended = await on_a.until_terminal("first")
    assert isinstance(ended[-1], ErrorMessage) and ended[-1].error.code == "cancelled"
    await limiter_of(a).flush()  # the release has reached Redis
    assert isinstance(await answer_to(on_b, completion("other")), Subscribed)
    assert isinstance((await on_b.until_terminal("other"))[-1], Completed)
    async with aiohttp.ClientSession() as http, http.get(b.url + "/healthz") as response:
        limits = (await response.json())["limits"]
    # B decided its three requests in Redis (two refused, one admitted), none alone.
    assert limits["admissions"] == 3 and limits["fallbacks"] == 0 and not limits["local_only"]


async def test_requests_per_minute_count_together_on_every_node(nodes, ws_factory, mock):
    a, b = nodes
    token = make_token("bob", rpm=2)
    on_a, on_b = await connect(ws_factory, a, token), await connect(ws_factory, b, token)
    for client, ident in ((on_a, "r1"), (on_b, "r2")):
        assert isinstance(await answer_to(client, completion(ident)), Subscribed)
        assert isinstance((await client.until_terminal(ident))[-1], Completed)
    for client, ident in ((on_a, "r3"), (on_b, "r4")):
        refusal = await answer_to(client, completion(ident))
        assert isinstance(refusal, ErrorMessage) and refusal.error.code == "rate_limited"
        assert 29_000 <= refusal.error.retry_after_ms <= 30_000  # 2 per minute: one every 30 s, as in memory
        assert "bob is over 2 requests per minute" in refusal.error.message
    assert mock.stats["requests"] == 2
    # Another subject has its own buckets.
    carol = await connect(ws_factory, b, make_token("carol", rpm=2))
    assert isinstance(await answer_to(carol, completion("c1")), Subscribed)


async def test_a_workflow_counts_against_max_concurrent_on_every_node(nodes, ws_factory):
    a, b = nodes
    token = make_token("dora", max_concurrent=1)
    on_a, on_b = await connect(ws_factory, a, token), await connect(ws_factory, b, token)
    assert isinstance(await answer_to(on_a, completion("d1", ENDLESS)), Subscribed)
    refusal = await answer_to(on_b, {"type": "create_workflow", "workflowId": "wf-d", "rid": "w",
                                     "definitionName": "content_creation", "input": {"topic": "x", "audience": "y"}})
    assert isinstance(refusal, ErrorMessage) and refusal.error.code == "rate_limited" and refusal.rid == "w"
    assert b.workflows.runs.get("wf-d") is None


async def test_admissions_racing_on_two_nodes_never_pass_the_limit(nodes):
    a, b = nodes
    erin = Who("erin", max_concurrent=3)
    attempts = [limiter_of(hub).admit(erin) for hub in (a, b) for _ in range(30)]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    admitted = [result for result in results if isinstance(result, Ticket)]
    refused = [result for result in results if isinstance(result, HubError)]
    assert len(admitted) == 3 and len(refused) == 57
    assert {error.code for error in refused} == {"rate_limited"}
    assert limiter_of(a).admissions + limiter_of(b).admissions == 60
    # Each node sent the admissions of one event-loop iteration in one round trip.
    assert limiter_of(a).admission_round_trips == limiter_of(b).admission_round_trips == 1
    assert limiter_of(a).fallbacks == limiter_of(b).fallbacks == 0
    for ticket in admitted:
        ticket.release()
    await limiter_of(a).flush()
    await limiter_of(b).flush()
    again = await asyncio.gather(*(limiter_of(hub).admit(erin) for hub in (b, a, b, a)), return_exceptions=True)
    assert sum(isinstance(result, Ticket) for result in again) == 3


async def test_completions_racing_on_two_nodes_never_pass_the_limit(nodes, ws_factory):
    a, b = nodes
    token = make_token("fay", max_concurrent=2)
    clients = [await connect(ws_factory, hub, token) for hub in (a, b) for _ in range(6)]
    replies = await asyncio.gather(*(answer_to(client, completion(f"f{index}", ENDLESS))
                                     for index, client in enumerate(clients)))
    started = [reply for reply in replies if isinstance(reply, Subscribed)]
    assert len(started) == 2
    assert all(reply.error.code == "rate_limited" for reply in replies if isinstance(reply, ErrorMessage))
    assert len(a.completions.runs) + len(b.completions.runs) == 2


async def test_tokens_used_on_one_node_are_settled_for_every_node(nodes):
    a, b = nodes
    gus = Who("gus", tpm=600)
    ticket = await limiter_of(a).admit(gus, 100)
    ticket.release(700)  # 600 more than estimated: the bucket goes to -200, as in memory
    await limiter_of(a).flush()
    with pytest.raises(HubError) as refusal:
        await limiter_of(b).admit(gus, 10)
    # 210 tokens missing at 10 per s, less what refilled since.
    assert refusal.value.code == "rate_limited" and 10_000 < refusal.value.retry_after_ms <= 11_000


async def test_live_runs_keep_their_lease_and_a_dead_node_s_runs_stop_counting(prefix):  # noqa: F811
    hank = Who("hank", max_concurrent=1)
    alive, dead, other = (ClusterLimiter(REDIS_URL, prefix, RateLimiter(), lease_s) for lease_s in (0.3, 1.0, 1.0))
    for limiter in (alive, dead, other):
        await limiter.connect()
    try:
        ticket = await alive.admit(hank)
        refreshes = alive.refreshes
        async with asyncio.timeout(10):
            while alive.refreshes < refreshes + 4:  # four refreshes: more than a lease time (0.3 s)
                await asyncio.sleep(0.05)
        with pytest.raises(HubError):
            await other.admit(hank)  # still counted: its node refreshes the lease
        ticket.release()
        await alive.flush()
        ivan = Who("ivan", max_concurrent=1)
        await dead.admit(ivan)
        assert dead._settler is not None
        dead._settler.cancel()  # the node dies: no refresh, no release
        with pytest.raises(HubError) as refusal:
            await other.admit(ivan)
        assert refusal.value.retry_after_ms == 1000
        async with asyncio.timeout(10):  # the lease ends 1 s after its last refresh
            while True:
                try:
                    await other.admit(ivan)
                    break
                except HubError:
                    await asyncio.sleep(0.1)
    finally:
        for limiter in (alive, dead, other):
            await limiter.close()


async def test_the_runs_of_a_killed_node_stop_counting_after_node_timeout_s(serve, prefix, mock, ws_factory,  # noqa: F811
                                                                            monkeypatch):
    import tests.test_cluster_failover as failover

    environ = failover.clean_environ
    monkeypatch.setattr(failover, "clean_environ", lambda: {**environ(), "CBHUB_DEFAULT_MAX_CONCURRENT": "1"})
    a = await serve(REDIS_URL, prefix)  # broker.node_timeout_s 1
    config = hub_config(mock, broker_url=REDIS_URL, broker_prefix=prefix, broker_node_timeout_s=1.0,
                        default_max_concurrent=1)
    async with run_hub(config) as b:
        on_a = await WS.to(a)
        await on_a.send(completion("k1", ENDLESS))
        assert isinstance(await on_a.recv(), Subscribed)
        on_b = await ws_factory(b)
        refusal = await answer_to(on_b, completion("k2"))
        assert isinstance(refusal, ErrorMessage) and refusal.error.code == "rate_limited"
        a.process.kill()
        attempts = 1
        async with asyncio.timeout(10):  # the lease ends 1 s after A's last refresh
            while not isinstance(await answer_to(on_b, completion(f"k2-{attempts}")), Subscribed):
                attempts += 1
                await asyncio.sleep(0.1)
        print(f"\nadmitted on B after {attempts} attempts 0.1 s apart once A was killed")
        await on_a.connection.close()


async def test_without_redis_admission_falls_back_to_this_node_s_limits():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    limiter = ClusterLimiter(url, "cbhub-test-none:", RateLimiter(), 5.0)
    await limiter.connect()
    try:
        jane = Who("jane", max_concurrent=1)
        first = await limiter.admit(jane)
        with pytest.raises(HubError) as refusal:
            await limiter.admit(jane)
        assert refusal.value.code == "rate_limited" and refusal.value.retry_after_ms == 1000
        assert limiter.fallbacks == 1 and limiter.admissions == 0  # the second did not even ask Redis
        first.release()
        assert limiter.local.running("jane") == 0
    finally:
        await limiter.close()


async def test_a_redis_that_does_not_answer_is_given_up_after_the_admission_timeout():
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads everything, answers nothing
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = ClusterLimiter(f"redis://127.0.0.1:{port}/0", "cbhub-test-none:", RateLimiter(), 5.0)
    try:
        await limiter.connect()  # loading the scripts times out too, quietly
        lou = Who("lou", rpm=1)
        await limiter.admit(lou)  # decided here once ADMIT_TIMEOUT_S has passed
        with pytest.raises(HubError):
            await limiter.admit(lou)  # this node's rpm bucket, at once
        assert limiter.fallbacks == 1 and limiter.admissions == 0
    finally:
        await limiter.close()
        server.close()


async def test_a_script_missing_from_redis_is_loaded_again(prefix):  # noqa: F811
    limiter = ClusterLimiter(REDIS_URL, prefix, RateLimiter(), 5.0)
    await limiter.connect()
    try:
        source = f"return {{KEYS[1], ARGV[1], '{uuid.uuid4().hex}'}}"  # never loaded before
        answers = await limiter._run_scripts(_sha1(source), source, [([prefix + "k1"], ["a"]), ([prefix + "k2"], ["b"])])
        assert [answer[:2] for answer in answers] == [[(prefix + "k1").encode(), b"a"], [(prefix + "k2").encode(), b"b"]]
    finally:
        await limiter.close()


async def test_what_redis_refuses_for_one_subject_does_not_stop_the_others(prefix, caplog):  # noqa: F811
    import redis.asyncio as aioredis

    limiter = ClusterLimiter(REDIS_URL, prefix, RateLimiter(), 5.0)
    await limiter.connect()
    client = aioredis.from_url(REDIS_URL)
    try:
        ticket = await limiter.admit(Who("zed", max_concurrent=5))
        await client.delete(f"{prefix}lim:run:zed")
        await client.set(f"{prefix}lim:run:zed", "not a sorted set")  # ZREM fails: WRONGTYPE
        ticket.release()
        async with asyncio.timeout(5):
            await limiter.flush()
        assert "Redis refused 1 releases" in caplog.text
        amy = Who("amy", max_concurrent=1)
        (await limiter.admit(amy)).release()  # the releases after it go on
        async with asyncio.timeout(5):
            await limiter.flush()
        assert await client.exists(f"{prefix}lim:run:amy") == 0
        assert isinstance(await limiter.admit(amy), Ticket)
        # An admission Redis refuses is decided here, for that subject alone.
        await limiter.admit(Who("zed", max_concurrent=5))
        assert limiter.fallbacks == 1 and "Redis refused the admission of zed" in caplog.text
        with pytest.raises(HubError):
            await limiter.admit(amy)  # still decided in Redis: amy runs 1 of 1
        assert limiter.statistics()["local_only"] is False
    finally:
        await client.aclose()
        await limiter.close()


async def test_a_subject_without_limits_never_asks_redis_and_memory_has_no_cluster_limits(nodes, mock):
    a, _ = nodes
    for _ in range(3):
        (await limiter_of(a).admit(Who("kim"))).release()
    assert limiter_of(a).admissions == 0 and limiter_of(a).local.running("kim") == 0
    async with run_hub(auth_config(mock)) as alone:
        assert alone.cluster_limits is None


async def test_admission_cost(nodes):
    """Prints the time of one admission in Redis beside one in memory (no assertion on it)."""
    limiter = limiter_of(nodes[0])
    lee = Who("lee", rpm=10**9, tpm=10**12, max_concurrent=10**6)
    count = 300
    started = time.perf_counter()
    tickets = [await limiter.admit(lee, 100) for _ in range(count)]
    in_redis = (time.perf_counter() - started) / count
    local = RateLimiter()
    started = time.perf_counter()
    for _ in range(count):
        local.admit(lee, 100)
    in_memory = (time.perf_counter() - started) / count
    assert limiter.admissions == count and limiter.live() == count
    for ticket in tickets:
        ticket.release(50)
    await limiter.flush()
    assert limiter.live() == 0
    print(f"\nadmission: {in_redis * 1e6:.0f} us in Redis (one EVALSHA), {in_memory * 1e6:.1f} us in memory")
