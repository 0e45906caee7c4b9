"""Origins and hosts (hub/transports/guard.py, docs/PROTOCOL.md "Origins and hosts"), over real
sockets: the ``Origin`` of a WebSocket upgrade (the websockets client) and of ``/v1`` requests
(aiohttp), ``*.`` patterns, clients without ``Origin``, ``Host`` rebinding, CORS, and the
JSON-only ``/v1`` POST."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import msgspec
import openai
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from hub.app import Hub, run_hub
from hub.config import HubConfig
from hub.transports.guard import host_allowed, origin_allowed
from protocol.messages import Pong
from tests.conftest import WSClient, hub_config
from tools.mock_provider import MockProvider, expected_text

OPENAI = "openai/gpt-4o-mini"
APP = "https://app.example.com"
FOREIGN = "https://evil.example"


def chat(stream: bool = False) -> bytes:
    return msgspec.json.encode({"model": OPENAI, "stream": stream,
                                "messages": [{"role": "user", "content": "hi [[mock tokens=5]]"}]})


JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def guarded(mock: MockProvider) -> AsyncIterator[Hub]:
    """A hub that allows one exact origin and one pattern."""
    config = hub_config(mock, allowed_origins=[APP, "https://*.team.example"])
    async with run_hub(config) as running:
        yield running


def ws_url(hub: Hub) -> str:
    return hub.url.replace("http", "ws", 1) + "/ws/stream"


def own_origin(hub: Hub) -> str:
    return hub.url  # http://127.0.0.1:<port>, the Host a browser on the page sends


async def ping(hub: Hub, **options: Any) -> None:
    """Open the WebSocket with ``options`` and get a pong back."""
    async with websockets.connect(ws_url(hub), compression=None, **options) as connection:
        client = WSClient(connection)
        await client.send({"type": "ping"})
        assert isinstance(await client.recv(), Pong)


async def refused_upgrade(hub: Hub, **options: Any) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(ws_url(hub), compression=None, open_timeout=5, **options)
    return info.value


# The WebSocket upgrade.


@pytest.mark.parametrize("origin", [APP, "https://a.team.example", "https://a.b.team.example"])
async def test_an_allowed_origin_opens_the_websocket(guarded: Hub, origin: str) -> None:
    await ping(guarded, origin=origin)


async def test_the_origin_may_also_come_as_a_header(guarded: Hub) -> None:
    await ping(guarded, additional_headers={"Origin": APP})


@pytest.mark.parametrize("origin", [
    FOREIGN,
    "http://app.example.com",  # another scheme
    "https://app.example.com:8443",  # another port
    "https://team.example",  # a pattern needs at least one label
    "https://evilteam.example",  # not under the pattern's name
    "https://app.example.com.evil.example",
    "null",  # sandboxed frames, file:// pages
])
async def test_a_foreign_origin_is_refused_403_before_the_upgrade(guarded: Hub, origin: str) -> None:
    refused = await refused_upgrade(guarded, origin=origin)
    assert refused.response.status_code == 403
    body = msgspec.json.decode(refused.response.body)
    assert body["error"]["code"] == "forbidden" and "allowed_origins" in body["error"]["message"]
    assert guarded.connections == set()


async def test_no_origin_is_a_non_browser_client_and_allowed(guarded: Hub) -> None:
    await ping(guarded)


async def test_the_hubs_own_origin_is_always_allowed(guarded: Hub) -> None:
    await ping(guarded, origin=own_origin(guarded))


# /v1: Origin, CORS.


async def test_v1_with_an_allowed_origin_answers_with_cors_headers(guarded: Hub) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(guarded.url + "/v1/chat/completions", data=chat(), headers={**JSON, "Origin": APP}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == APP
            assert response.headers["Access-Control-Expose-Headers"] == "Retry-After, x-should-retry"
            assert "Origin" in response.headers.getall("Vary")
            assert (await response.json())["choices"][0]["message"]["content"] == expected_text(5)
        async with http.get(guarded.url + "/v1/models", headers={"Origin": "https://x.team.example"}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == "https://x.team.example"


async def test_an_sse_stream_to_an_allowed_origin_carries_the_cors_header(guarded: Hub) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            guarded.url + "/v1/chat/completions", data=chat(stream=True), headers={**JSON, "Origin": APP}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Access-Control-Allow-Origin"] == APP
        assert (await response.text()).endswith("data: [DONE]\n\n")


async def test_v1_without_origin_has_no_cors_header(guarded: Hub) -> None:
    async with aiohttp.ClientSession() as http, http.get(guarded.url + "/v1/models") as response:
        assert response.status == 200
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_v1_from_a_foreign_origin_is_refused_and_starts_nothing(guarded: Hub) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(guarded.url + "/v1/chat/completions", data=chat(),
                             headers={**JSON, "Origin": FOREIGN}) as response:
            assert response.status == 403
            assert "Access-Control-Allow-Origin" not in response.headers
            assert (await response.json())["error"]["code"] == "forbidden"
        stream_url = guarded.url + "/v1/chat/completions/stream?model=" + OPENAI + "&messages=" + \
            '[{"role":"user","content":"hi"}]'
        async with http.get(stream_url, headers={"Origin": FOREIGN}) as response:
            assert response.status == 403
        async with http.get(guarded.url + "/v1/models", headers={"Origin": FOREIGN}) as response:
            assert response.status == 403
    assert guarded.completions.runs == {}


async def test_cors_preflight(guarded: Hub) -> None:
    request = {"Origin": APP, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
    async with aiohttp.ClientSession() as http:
        async with http.options(guarded.url + "/v1/chat/completions", headers=request) as response:
            assert response.status == 204
            headers = response.headers
            assert headers["Access-Control-Allow-Origin"] == APP
            assert headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
            assert headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
            assert headers["Access-Control-Max-Age"] == "600"
            assert "Origin" in headers.getall("Vary")
        async with http.options(guarded.url + "/v1/chat/completions", headers={**request, "Origin": FOREIGN}) as response:
            assert response.status == 403
            assert "Access-Control-Allow-Origin" not in response.headers
    assert guarded.completions.runs == {}


# /v1 POSTs must be JSON.


@pytest.mark.parametrize("content_type", [
    "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    None,
])
async def test_a_post_that_is_not_json_is_refused_415_and_runs_nothing(hub: Hub, content_type: str | None) -> None:
    # What a cross-site <form> or fetch(..., {mode: "no-cors"}) can send without a preflight,
    # from the hub's own origin even (the check does not depend on Origin).
    headers = {"Content-Type": content_type} if content_type else {}
    async with aiohttp.ClientSession() as http:
        async with http.post(hub.url + "/v1/chat/completions", data=chat(), headers=headers,
                             skip_auto_headers=["Content-Type"]) as response:
            assert response.status == 415
            error = (await response.json())["error"]
            assert error["code"] == "invalid_message" and error["type"] == "invalid_request_error"
    assert hub.completions.runs == {}


async def test_json_with_parameters_is_accepted(hub: Hub) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            hub.url + "/v1/chat/completions", data=chat(),
            headers={"Content-Type": "application/json; charset=utf-8"}) as response:
        assert response.status == 200


async def test_the_openai_sdk_still_works(hub: Hub) -> None:
    client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
    try:
        answer = await client.chat.completions.create(model=OPENAI, messages=[{"role": "user", "content": "hi [[mock tokens=5]]"}])
        assert answer.choices[0].message.content == expected_text(5)
        parts = [chunk.choices[0].delta.content or "" async for chunk in await client.chat.completions.create(
            model=OPENAI, stream=True, messages=[{"role": "user", "content": "hi [[mock tokens=5]]"}]) if chunk.choices]
        assert "".join(parts) == expected_text(5)
    finally:
        await client.close()


# Host.


@pytest.mark.parametrize("path", ["/healthz", "/v1/models", "/", "/ws/stream"])
async def test_a_rebound_host_is_refused_421_on_every_path(hub: Hub, path: str) -> None:
    # A page on evil.example whose name now resolves to 127.0.0.1 sends its own name as Host
    # (and is same-origin with itself, so its Origin would pass the own-origin rule).
    port = hub.url.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example", "localhost.evil.example:" + port):
        async with aiohttp.ClientSession() as http, http.get(
                hub.url + path, headers={"Host": host, "Origin": f"http://{host}"}) as response:
            assert response.status == 421, host
            assert (await response.json())["error"]["code"] == "forbidden"


async def test_a_rebound_host_cannot_open_the_websocket(hub: Hub) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(ws_url(hub), headers={"Host": "evil.example"})
        assert info.value.status == 421
    assert hub.connections == set()


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST"])
async def test_the_default_config_accepts_localhost_and_its_own_origin(hub: Hub, name: str) -> None:
    assert hub.config.allowed_hosts == [] and hub.config.allowed_origins == []
    port = hub.url.rsplit(":", 1)[1]
    async with aiohttp.ClientSession() as http:
        for host in (f"{name}:{port}", name):
            async with http.get(hub.url + "/healthz", headers={"Host": host}) as response:
                assert response.status == 200, host
        own = {"Host": f"{name}:{port}", "Origin": f"http://{name.lower()}:{port}"}
        async with http.get(hub.url + "/v1/models", headers=own) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == own["Origin"]
        websocket = await http.ws_connect(ws_url(hub), headers=own)
        await websocket.send_str('{"type":"ping"}')
        assert (await websocket.receive_json())["type"] == "pong"
        await websocket.close()
        # Another origin on the same host name (another port: another local app) is foreign.
        async with http.get(hub.url + "/v1/models", headers={**own, "Origin": f"http://{name.lower()}:1"}) as response:
            assert response.status == 403


async def test_the_page_is_served_to_its_own_origin(hub: Hub) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/static/app.js", "/sdk/index.js"):
            async with http.get(hub.url + path, headers={"Origin": own_origin(hub)}) as response:
                assert response.status == 200, path
        async with http.get(hub.url + "/") as response:
            assert response.status == 200


async def test_configured_hosts_replace_the_defaults(mock: MockProvider) -> None:
    config = hub_config(mock, allowed_hosts=["api.example.com", "*.internal.example:8443"])
    async with run_hub(config) as hub, aiohttp.ClientSession() as http:
        for host, status in (("api.example.com", 200), ("api.example.com:9999", 200),
                             ("a.internal.example:8443", 200), ("a.internal.example", 421),
                             ("internal.example:8443", 421), ("127.0.0.1", 421), ("localhost", 421)):
            async with http.get(hub.url + "/healthz", headers={"Host": host}) as response:
                assert response.status == status, host
        # Behind a TLS proxy the page's origin is https://<Host>: its own.
        headers = {"Host": "api.example.com", "Origin": "https://api.example.com"}
        async with http.get(hub.url + "/v1/models", headers=headers) as response:
            assert response.status == 200


# The rules, without sockets.


def test_origin_rules() -> None:
    allowed = ["https://app.example.com", "https://*.example.org", "http://localhost:3000", "null"]
    assert origin_allowed("https://app.example.com", None, allowed)
    assert origin_allowed("https://APP.example.com:443", None, allowed)
    assert origin_allowed("https://a.example.org", None, allowed)
    assert origin_allowed("https://a.b.example.org", None, allowed)
    assert origin_allowed("http://localhost:3000", None, allowed)
    assert origin_allowed("null", None, allowed)
    assert not origin_allowed("https://example.org", None, allowed)
    assert not origin_allowed("http://a.example.org", None, allowed)
    assert not origin_allowed("https://a.example.org:8443", None, allowed)
    assert not origin_allowed("http://localhost:3001", None, allowed)
    assert not origin_allowed("null", None, [])
    assert not origin_allowed("https://app.example.com/path", None, allowed)
    assert not origin_allowed("https://user@app.example.com", None, allowed)
    assert not origin_allowed("garbage", "garbage", allowed)
    # The hub's own origin, by the Host the request was sent to.
    assert origin_allowed("http://hub.local:8765", "hub.local:8765", [])
    assert origin_allowed("https://hub.example", "hub.example", [])
    assert origin_allowed("http://hub.example", "hub.example:80", [])
    assert not origin_allowed("http://hub.local:8766", "hub.local:8765", [])
    assert not origin_allowed("ws://hub.local:8765", "hub.local:8765", [])


def test_host_rules() -> None:
    default = HubConfig(host="0.0.0.0")
    for host in ("localhost", "localhost:8765", "127.0.0.1:1", "[::1]:8765", "[::1]", "0.0.0.0:8765",
                 "192.168.1.5:8765", "localhost."):
        assert host_allowed(host, default, "192.168.1.5"), host
    for host in ("evil.example", "192.168.1.6", "::1", "[::1", "localhost:x", "localhost:8765:1", "", ":8765"):
        assert not host_allowed(host, default, "192.168.1.5"), host
    assert host_allowed("[fe80::1]:8765", default, "fe80::1")
    assert host_allowed("anything.example", HubConfig(allowed_hosts=["*"]), None)


# Whatever auth.mode is.


async def test_origins_are_checked_before_auth(mock: MockProvider) -> None:
    secret = "origins-test-secret-of-at-least-32-bytes"
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, secret, algorithm="HS256")
    config = hub_config(mock, auth_mode="jwt", jwt_secret=secret, allowed_origins=[APP])
    async with run_hub(config) as hub:
        # A valid credential does not let a foreign page in...
        refused = await refused_upgrade(hub, origin=FOREIGN, additional_headers={"Authorization": f"Bearer {token}"})
        assert refused.response.status_code == 403
        async with aiohttp.ClientSession() as http:
            async with http.post(hub.url + "/v1/chat/completions", data=chat(), headers={
                    **JSON, "Origin": FOREIGN, "Authorization": f"Bearer {token}"}) as response:
                assert response.status == 403
            # ...nor a text/plain POST, with or without one.
            for headers in ({"Authorization": f"Bearer {token}"}, {}):
                async with http.post(hub.url + "/v1/chat/completions", data=chat(),
                                     headers={**headers, "Content-Type": "text/plain"}) as response:
                    assert response.status == 415
            # An allowed origin gets past the guard; auth then decides.
            async with http.post(hub.url + "/v1/chat/completions", data=chat(), headers={**JSON, "Origin": APP}) as response:
                assert response.status == 401
                assert response.headers["Access-Control-Allow-Origin"] == APP
            async with http.post(hub.url + "/v1/chat/completions", data=chat(), headers={
                    **JSON, "Origin": APP, "Authorization": f"Bearer {token}"}) as response:
                assert response.status == 200
        assert len(hub.completions.runs) == 1
