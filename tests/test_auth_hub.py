"""Authentication and ownership over real sockets (issue 11, parts 1 and 2): credentials on the
WebSocket (header, ?token=, the auth message), refresh and expiry, two subjects that cannot see
each other's runs, admins and channel patterns, models, and /v1 with the openai SDK."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import openai
import pytest
import websockets

from hub.app import Hub, run_hub
from hub.auth import api_key_digest
from hub.config import ApiKeyEntry
from protocol.messages import Ack, AgentStarted, Authenticated, Completed, ErrorMessage, Subscribed
from tests.conftest import RECV_TIMEOUT_S, WSClient, hub_config
from tools.mock_provider import MockProvider

SECRET = "test-secret-" + "z" * 40
ADMIN_KEY = "cbk-admin-key-for-tests"
READER_KEY = "cbk-reader-key-for-tests"
#: A completion that streams for a while (long enough to subscribe to and cancel it).
SLOW = "[[mock tokens=400 tps=100]]"
FAST = "[[mock tokens=5]]"


def make_token(sub: str = "alice", ttl_s: float = 3600, **claims: Any) -> str:
    now = time.time()
    payload: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": int(now + ttl_s)}
    if claims:
        payload["cbhub"] = claims
    return jwt.encode(payload, SECRET, algorithm="HS256")


def auth_config(mock: MockProvider, **overrides: Any) -> Any:
    keys = [ApiKeyEntry(name="ops", sha256=api_key_digest(ADMIN_KEY), admin=True),
            ApiKeyEntry(name="reader", sha256=api_key_digest(READER_KEY), subject="reader",
                        channels=["completion:shared-*", "workflow:shared-*"])]
    values: dict[str, Any] = {"auth_mode": "jwt_or_api_key", "jwt_secret": SECRET, "api_keys": keys,
                              "jwt_leeway_s": 0.0}
    values.update(overrides)
    return hub_config(mock, **values)


@pytest.fixture
async def hub(mock: MockProvider) -> AsyncIterator[Hub]:
    async with run_hub(auth_config(mock)) as running:
        yield running


def ws_url(hub: Hub, query: str = "") -> str:
    return hub.url.replace("http", "ws", 1) + "/ws/stream" + (f"?{query}" if query else "")


@pytest.fixture
async def connect(hub: Hub) -> AsyncIterator[Any]:
    """``await connect(token=None, header=None, query="")``: a WSClient, authenticated by an
    auth message when ``token`` is given (its ``authenticated`` answer is consumed)."""
    opened: list[Any] = []

    async def open_client(token: str | None = None, header: str | None = None, query: str = "") -> WSClient:
        headers = {"Authorization": f"Bearer {header}"} if header is not None else None
        connection = await websockets.connect(ws_url(hub, query), compression=None, additional_headers=headers)
        opened.append(connection)
        client = WSClient(connection)
        if token is not None:
            await client.send({"type": "auth", "token": token})
            answer = await client.recv()
            assert isinstance(answer, Authenticated), answer
        return client

    yield open_client
    for connection in opened:
        await connection.close()


async def closed_with(client: WSClient) -> tuple[int | None, str | None]:
    """Read until the hub closes the socket; its close code and reason."""
    try:
        while True:
            await client.recv()
    except websockets.ConnectionClosed as closed:
        return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, None)


async def start(client: WSClient, ident: str, content: str = FAST, **fields: Any) -> Subscribed:
    await client.send({"type": "completion", "id": ident, "model": "openai/gpt-4o-mini",
                       "messages": [{"role": "user", "content": content}], **fields})
    ack = await client.recv()
    assert isinstance(ack, Subscribed) and ack.completion_id == ident, ack
    return ack


async def answer(client: WSClient, message: dict[str, Any]) -> Any:
    """The hub's answer to ``message`` (sent with rid ``q``), skipping stream events."""
    await client.send({**message, "rid": "q"})
    while True:
        reply = await client.recv()
        if getattr(reply, "rid", None) == "q":
            return reply


def shape(reply: Any) -> Any:
    """An error answer as the client sees it (code, message, retryable, status)."""
    assert isinstance(reply, ErrorMessage), reply
    return (reply.error.code, reply.error.message, reply.error.retryable, reply.error.status)


# Credentials on the WebSocket.


async def test_the_auth_message_is_answered_authenticated_with_expiry(connect: Any) -> None:
    client = await connect()
    token = make_token("alice", ttl_s=600)
    reply = await answer(client, {"type": "auth", "token": token})
    assert isinstance(reply, Authenticated) and reply.subject == "alice"
    assert reply.expires_at == jwt.decode(token, options={"verify_signature": False})["exp"] * 1000
    await start(client, "auth-msg")
    assert isinstance((await client.until_terminal("auth-msg"))[-1], Completed)


async def test_an_api_key_in_the_auth_message_has_no_expiry(connect: Any) -> None:
    client = await connect()
    reply = await answer(client, {"type": "auth", "token": ADMIN_KEY})
    assert reply == Authenticated(subject="key:ops", expires_at=None, rid="q")


@pytest.mark.parametrize("where", ["header", "query"])
async def test_a_credential_on_the_upgrade_needs_no_auth_message(connect: Any, where: str) -> None:
    token = make_token("bob")
    client = await (connect(header=token) if where == "header" else connect(query=f"token={token}"))
    await start(client, f"upgrade-{where}")
    assert isinstance((await client.until_terminal(f"upgrade-{where}"))[-1], Completed)


@pytest.mark.parametrize("credential", ["garbage", make_token(ttl_s=-60), "cbk-unknown"])
async def test_a_refused_credential_on_the_upgrade_closes_4001(connect: Any, credential: str) -> None:
    client = await connect(header=credential)
    expired = credential.count(".") == 2 and jwt.decode(credential, options={"verify_signature": False})["exp"] < time.time()
    assert await closed_with(client) == (4001, "token_expired" if expired else "invalid_token")


async def test_messages_before_auth_are_refused_and_not_acted_on(hub: Hub, connect: Any) -> None:
    client = await connect()
    reply = await answer(client, {"type": "completion", "id": "early", "model": "openai/gpt-4o-mini",
                                  "messages": [{"role": "user", "content": "hi"}]})
    assert shape(reply)[0] == "unauthorized"
    assert shape(await answer(client, {"type": "ping"}))[0] == "unauthorized"
    assert "early" not in hub.completions.runs
    await client.send({"type": "auth", "token": make_token()})
    assert isinstance(await client.recv(), Authenticated)
    await start(client, "early")


async def test_messages_right_after_auth_wait_for_it(connect: Any) -> None:
    """Sent at once after the auth message, before its answer: acted on after it, in order."""
    client = await connect()
    await client.send({"type": "auth", "token": make_token()})
    await client.send({"type": "ping", "rid": "p"})
    first, second = await client.recv(), await client.recv()
    assert isinstance(first, Authenticated) and getattr(second, "rid", None) == "p"


async def test_a_bad_auth_message_is_answered_then_4001(connect: Any) -> None:
    client = await connect()
    reply = await answer(client, {"type": "auth", "token": make_token(ttl_s=-120)})
    assert shape(reply) == ("token_expired", "token expired", False, None)
    assert await closed_with(client) == (4001, "token_expired")


async def test_no_credential_within_the_timeout_closes_4001(mock: MockProvider) -> None:
    async with run_hub(auth_config(mock, auth_timeout_s=0.2)) as hub:
        connection = await websockets.connect(ws_url(hub), compression=None)
        client = WSClient(connection)
        started = time.monotonic()
        reply = await client.recv()
        assert shape(reply)[0] == "unauthorized"
        assert await closed_with(client) == (4001, "unauthorized")
        assert time.monotonic() - started < RECV_TIMEOUT_S / 2


async def test_refresh_over_an_open_socket_keeps_it_open(mock: MockProvider) -> None:
    async with run_hub(auth_config(mock, auth_expiry_grace_s=0.3)) as hub:
        connection = await websockets.connect(ws_url(hub), compression=None)
        client = WSClient(connection)
        short = make_token("alice", ttl_s=1.5)
        assert isinstance(await answer(client, {"type": "auth", "token": short}), Authenticated)
        await start(client, "long-run", SLOW)
        fresh = make_token("alice", ttl_s=600)
        await client.send({"type": "auth", "token": fresh, "rid": "refresh"})
        seen: list[Any] = []
        while not isinstance(seen[-1:] and seen[-1], Authenticated):
            seen.append(await client.recv())
        assert seen[-1].expires_at == jwt.decode(fresh, options={"verify_signature": False})["exp"] * 1000
        # Past the first token's expiry and the grace: still open, no token_expired.
        await asyncio.sleep(2.2)
        assert await answer(client, {"type": "ping"}) is not None
        frames = [frame for frame in client.frames if "token_expired" in frame]
        assert frames == []
        # Another subject's token is no refresh.
        reply = await answer(client, {"type": "auth", "token": make_token("mallory")})
        assert shape(reply)[0] == "invalid_token"
        assert (await answer(client, {"type": "cancel", "completionId": "long-run"})) == Ack("q")


async def test_expiry_sends_token_expired_on_a_timer_then_closes_4001(mock: MockProvider) -> None:
    async with run_hub(auth_config(mock, auth_expiry_grace_s=0.5)) as hub:
        connection = await websockets.connect(ws_url(hub), compression=None)
        client = WSClient(connection)
        assert isinstance(await answer(client, {"type": "auth", "token": make_token(ttl_s=1)}), Authenticated)
        expired = await client.recv()  # no client message needed
        assert shape(expired)[0] == "token_expired" and expired.rid is None
        assert shape(await answer(client, {"type": "ping"}))[0] == "token_expired"
        assert await closed_with(client) == (4001, "token_expired")


async def test_mode_none_answers_auth_as_anonymous(mock: MockProvider) -> None:
    async with run_hub(hub_config(mock)) as hub:
        connection = await websockets.connect(ws_url(hub), compression=None)
        client = WSClient(connection)
        assert await answer(client, {"type": "auth", "token": "anything"}) == Authenticated("anonymous", None, "q")
        await start(client, "anon")
        await connection.close()


# Ownership: B cannot see A's runs; A, an admin and a channel pattern can.


async def test_another_subject_cannot_subscribe_resume_cancel_or_detect_a_completion(connect: Any) -> None:
    alice = await connect(make_token("alice"))
    bob = await connect(make_token("bob"))
    ack = await start(alice, "a-secret", SLOW)
    name = "completion:a-secret"
    cursor = {"seq": 1, "epoch": ack.epochs[name]}

    reply = shape(await answer(bob, {"type": "subscribe", "channels": [name]}))
    missing = shape(await answer(bob, {"type": "subscribe", "channels": ["completion:zzzzzzzz"]}))
    assert reply == ("unknown_channel", "no channel 'completion:a-secret' is open", False, None)
    assert missing == ("unknown_channel", "no channel 'completion:zzzzzzzz' is open", False, None)
    resume = shape(await answer(bob, {"type": "subscribe", "channels": [name], "since": {name: cursor}}))
    assert resume == reply
    cancel = shape(await answer(bob, {"type": "cancel", "completionId": "a-secret"}))
    cancel_missing = shape(await answer(bob, {"type": "cancel", "completionId": "zzzzzzzz"}))
    assert cancel == ("unknown_completion", "no completion 'a-secret'", False, None)
    assert cancel_missing == ("unknown_completion", "no completion 'zzzzzzzz'", False, None)
    # An id that is taken is taken, for everyone alike.
    await bob.send({"type": "completion", "id": "a-secret", "model": "openai/gpt-4o-mini",
                    "messages": [{"role": "user", "content": "x"}], "rid": "dup"})
    duplicate = await bob.recv()
    assert shape(duplicate)[0] == "duplicate_id"
    # Bob's frames never mention the run's events.
    assert not any('"completionId":"a-secret"' in frame for frame in bob.frames)

    # The owner and an admin can; the admin may cancel it too.
    owner_again = await connect(make_token("alice"))
    assert isinstance(await answer(owner_again, {"type": "subscribe", "channels": [name]}), Subscribed)
    admin = await connect(ADMIN_KEY)
    assert isinstance(await answer(admin, {"type": "subscribe", "channels": [name], "since": {name: cursor}}),
                      Subscribed)
    assert await answer(admin, {"type": "cancel", "completionId": "a-secret"}) == Ack("q")


async def test_a_channel_pattern_grants_reading_matching_runs(connect: Any) -> None:
    alice = await connect(make_token("alice"))
    await start(alice, "shared-1", SLOW)
    await start(alice, "private-1", SLOW)
    reader = await connect(READER_KEY)
    assert isinstance(await answer(reader, {"type": "subscribe", "channels": ["completion:shared-1"]}), Subscribed)
    assert shape(await answer(reader, {"type": "subscribe", "channels": ["completion:private-1"]}))[0] == \
        "unknown_channel"
    claims = await connect(make_token("carol", channels=["completion:private-*"]))
    assert isinstance(await answer(claims, {"type": "subscribe", "channels": ["completion:private-1"]}), Subscribed)


async def test_another_subject_cannot_subscribe_to_or_cancel_a_workflow(hub: Hub, connect: Any) -> None:
    alice = await connect(make_token("alice"))
    await alice.send({"type": "create_workflow", "workflowId": "wf-a", "definitionName": "content_creation",
                      "input": {"topic": "tides [[mock tokens=300 tps=100]]", "audience": "x"}})
    ack = await alice.recv()
    assert isinstance(ack, Subscribed) and ack.workflow_id == "wf-a", ack
    bob = await connect(make_token("bob"))
    for_a = shape(await answer(bob, {"type": "subscribe_workflow", "workflowId": "wf-a"}))
    for_missing = shape(await answer(bob, {"type": "subscribe_workflow", "workflowId": "wf-z"}))
    assert for_a == ("unknown_channel", "no channel 'workflow:wf-a' is open", False, None)
    assert for_missing == ("unknown_channel", "no channel 'workflow:wf-z' is open", False, None)
    cancel_a = shape(await answer(bob, {"type": "cancel_workflow", "workflowId": "wf-a"}))
    cancel_missing = shape(await answer(bob, {"type": "cancel_workflow", "workflowId": "wf-z"}))
    assert cancel_a == (cancel_missing[0], cancel_missing[1].replace("wf-z", "wf-a"), *cancel_missing[2:])
    admin = await connect(ADMIN_KEY)
    assert isinstance(await answer(admin, {"type": "subscribe_workflow", "workflowId": "wf-a"}), Subscribed)
    # An agent's channel, once it is open, belongs to the workflow's owner too.
    while not isinstance(await alice.recv(), AgentStarted):
        pass
    agent = "agent:wf-a.researcher"
    assert hub.broker.channel(agent) is not None
    for_agent = shape(await answer(bob, {"type": "subscribe", "channels": [agent]}))
    assert for_agent == ("unknown_channel", f"no channel {agent!r} is open", False, None)
    assert isinstance(await answer(alice, {"type": "subscribe", "channels": [agent]}), Subscribed)
    assert await answer(alice, {"type": "cancel_workflow", "workflowId": "wf-a"}) == Ack("q")


async def test_type_level_subscriptions_and_system_are_for_admins(connect: Any) -> None:
    bob = await connect(make_token("bob"))
    assert shape(await answer(bob, {"type": "subscribe", "streams": ["completion"]}))[0] == "forbidden"
    assert shape(await answer(bob, {"type": "subscribe", "channels": ["system"]}))[0] == "forbidden"
    admin = await connect(make_token("root", admin=True))
    reply = await answer(admin, {"type": "subscribe", "streams": ["completion"], "channels": ["system"]})
    assert isinstance(reply, Subscribed) and reply.streams == ["completion"] and reply.channels == ["system"]


async def test_models_claim_limits_the_models(connect: Any) -> None:
    client = await connect(make_token("dana", models=["anthropic/*"]))
    reply = await answer(client, {"type": "completion", "model": "openai/gpt-4o-mini",
                                  "messages": [{"role": "user", "content": "x"}]})
    assert shape(reply)[0] == "forbidden"
    reply = await answer(client, {"type": "completion", "model": "anthropic/claude-3-5-haiku-latest",
                                  "fallbacks": ["openai/gpt-4o-mini"], "messages": [{"role": "user", "content": "x"}]})
    assert shape(reply)[0] == "forbidden"
    await start(client, "allowed", model="anthropic/claude-3-5-haiku-latest")
    reply = await answer(client, {"type": "create_workflow", "definitionName": "content_creation", "input": {}})
    assert shape(reply)[0] == "forbidden"


# /v1 and the openai SDK.


async def test_openai_sdk_with_a_valid_and_an_invalid_api_key(hub: Hub) -> None:
    def sdk(api_key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key=api_key, max_retries=0)

    async with sdk(ADMIN_KEY) as good:
        reply = await good.chat.completions.create(model="openai/gpt-4o-mini",
                                                   messages=[{"role": "user", "content": FAST}])
        assert reply.choices[0].message.content
        stream = await good.chat.completions.create(model="openai/gpt-4o-mini", stream=True,
                                                    messages=[{"role": "user", "content": FAST}])
        assert [chunk async for chunk in stream]
    assert {run.owner for run in hub.completions.runs.values()} == {"key:ops"}
    async with sdk(make_token()) as with_jwt:
        assert (await with_jwt.models.list()).data is not None
    async with sdk("cbk-wrong") as bad:
        with pytest.raises(openai.AuthenticationError) as refused:
            await bad.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert refused.value.status_code == 401 and refused.value.code == "invalid_token"
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()


async def test_v1_without_a_credential_is_401_unauthorized(hub: Hub) -> None:
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(hub.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert (await response.json())["error"]["code"] == "unauthorized"
        async with http.get(hub.url + "/v1/models") as response:
            assert response.status == 401
        expired = {"Authorization": f"Bearer {make_token(ttl_s=-60)}"}
        async with http.post(hub.url + "/v1/chat/completions", json=body, headers=expired) as response:
            assert response.status == 401 and (await response.json())["error"]["code"] == "token_expired"
        async with http.get(hub.url + "/healthz") as response:
            assert response.status == 200


async def test_eventsource_get_takes_a_token_in_the_query(hub: Hub) -> None:
    query = {"model": "openai/gpt-4o-mini", "messages": '[{"role":"user","content":"[[mock tokens=3]]"}]'}
    async with aiohttp.ClientSession() as http:
        async with http.get(hub.url + "/v1/chat/completions/stream", params=query) as response:
            assert response.status == 401
        async with http.get(hub.url + "/v1/chat/completions/stream",
                            params={**query, "token": make_token()}) as response:
            assert response.status == 200 and "[DONE]" in await response.text()


async def test_an_http_stream_outlives_its_token(mock: MockProvider) -> None:
    """An HTTP request is authorized once: the token expiring mid-stream does not cut it."""
    async with run_hub(auth_config(mock, auth_expiry_grace_s=0.1)) as hub:
        async with openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key=make_token(ttl_s=2),
                                      max_retries=0) as sdk:
            stream = await sdk.chat.completions.create(
                model="openai/gpt-4o-mini", stream=True,
                messages=[{"role": "user", "content": "[[mock tokens=300 tps=75]]"}])
            chunks = [chunk async for chunk in stream]
        assert chunks[-1].choices[0].finish_reason == "stop"


async def test_v1_models_lists_only_the_subject_s_models(hub: Hub) -> None:
    async with aiohttp.ClientSession() as http:
        everything = {"Authorization": f"Bearer {make_token()}"}
        async with http.get(hub.url + "/v1/models", headers=everything) as response:
            all_ids = {entry["id"] for entry in (await response.json())["data"]}
        only = {"Authorization": f"Bearer {make_token(models=['anthropic/*'])}"}
        async with http.get(hub.url + "/v1/models", headers=only) as response:
            ids = {entry["id"] for entry in (await response.json())["data"]}
    assert ids and ids < all_ids and all(model.startswith("anthropic/") for model in ids)
