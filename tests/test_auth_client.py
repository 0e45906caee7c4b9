"""The Python SDK and ``cbhub chat`` against a hub that requires a token (issue 11, part 6):
the auth message first on every connection, refresh before expiry, a refusal stops the client."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import pytest

from hub.app import Hub, run_hub
from hub.client import HubAuthError, HubClient, HubStreamError
from protocol.messages import ContentChunk
from tests.conftest import RECV_TIMEOUT_S
from tests.support import ROOT
from tests.test_auth_hub import ADMIN_KEY, auth_config, make_token, ws_url
from tools.mock_provider import MockProvider

MODEL = "openai/gpt-4o-mini"
PROMPT = [{"role": "user", "content": "[[mock tokens=5]]"}]


@pytest.fixture
async def hub(mock: MockProvider) -> AsyncIterator[Hub]:
    async with run_hub(auth_config(mock, auth_expiry_grace_s=0.5, auth_timeout_s=1.0)) as running:
        yield running


async def text(client: HubClient, prompt: list[dict[str, str]] = PROMPT) -> str:
    async with asyncio.timeout(RECV_TIMEOUT_S):
        return "".join([event.content async for event in client.completion(model=MODEL, messages=prompt)
                        if isinstance(event, ContentChunk)])


async def test_a_token_is_sent_first_and_the_client_works(hub: Hub) -> None:
    async with HubClient(ws_url(hub), token=make_token("alice")) as client:
        assert client.authenticated is not None and client.authenticated.subject == "alice"
        assert await text(client)
    async with HubClient(ws_url(hub), token=ADMIN_KEY) as client:
        assert client.authenticated is not None and client.authenticated.expires_at is None
        assert await text(client)


@pytest.mark.parametrize(("token", "code"), [("cbk-wrong", "invalid_token"),
                                             (make_token(ttl_s=-60), "token_expired")])
async def test_a_refused_token_raises_hub_auth_error_at_connect(hub: Hub, token: str, code: str) -> None:
    with pytest.raises(HubAuthError) as refused:
        await HubClient(ws_url(hub), token=token).connect()
    assert refused.value.code == code


async def test_without_a_token_requests_are_refused_then_the_hub_closes_4001(hub: Hub) -> None:
    async with HubClient(ws_url(hub)) as client:
        with pytest.raises(HubStreamError) as refused:
            await text(client)
        assert refused.value.code == "unauthorized"
        async with asyncio.timeout(RECV_TIMEOUT_S):
            while client._failure is None:
                await asyncio.sleep(0.05)
        assert isinstance(client._failure, HubAuthError) and client._failure.close_code == 4001


async def test_get_token_refreshes_before_expiry_and_on_every_reconnect(hub: Hub) -> None:
    calls: list[str] = []

    async def get_token() -> str:
        calls.append("call")
        return make_token("alice", ttl_s=6)  # refreshed 5 s before it expires

    async with HubClient(ws_url(hub), get_token=get_token, base_delay_s=0.02, max_delay_s=0.05) as client:
        first = client.authenticated
        assert first is not None and len(calls) == 1
        async with asyncio.timeout(RECV_TIMEOUT_S):
            while len(calls) < 2:
                await asyncio.sleep(0.05)
            while client.authenticated is first:
                await asyncio.sleep(0.05)
        assert client.authenticated.subject == "alice"
        client.websocket.transport.abort()  # a reconnect authenticates again
        async with asyncio.timeout(RECV_TIMEOUT_S):
            while client.reconnects < 1:
                await asyncio.sleep(0.05)
        assert len(calls) >= 3
        assert await text(client)


async def test_cbhub_chat_token(hub: Hub) -> None:
    async def chat(*args: str) -> tuple[int, str, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
        env.pop("CBHUB_TOKEN", None)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.cli", "chat", "--url", ws_url(hub), *args, "[[mock tokens=4]]", cwd=ROOT,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 30)
        return process.returncode or 0, out.decode(), err.decode()

    status, out, err = await chat("--token", make_token())
    assert status == 0 and out.strip(), err
    status, out, err = await chat("--token", "cbk-wrong")
    assert status == 1 and "invalid_token" in err and out == ""
