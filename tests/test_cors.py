"""CORS on ``/v1`` (issue 14, item 4; hub/transports/guard.py, docs/PROTOCOL.md "Origins and
hosts"), with real HTTP requests (aiohttp) against a running hub and the mock provider:
preflights for every ``/v1`` path, answered before auth, allowing what the real openai and
anthropic SDKs send; the headers of an actual streamed SSE response; disallowed origins; what
``*`` and an empty ``auth.allowed_origins`` mean."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import anthropic
import jwt
import msgspec
import openai
import pytest
from aiohttp import web

from hub.app import Hub, run_hub
from hub.transports.guard import MAX_REQUEST_HEADER_NAMES, MAX_REQUEST_HEADERS_CHARS, allow_headers
from tests.conftest import hub_config
from tools.mock_provider import MockProvider, expected_text

APP = "https://app.example.com"
FOREIGN = "https://evil.example"
SECRET = "cors-test-secret-of-at-least-32-bytes!!"
MODEL = "openai/gpt-4o-mini"

#: Request headers a browser sets itself or that need no preflight (Fetch standard: forbidden
#: request headers, CORS-safelisted ones); a page's fetch() cannot or need not ask for them.
BROWSER_OWN = frozenset({"host", "content-length", "accept-encoding", "connection", "user-agent", "accept",
                         "accept-language", "content-language", "keep-alive", "te", "transfer-encoding"})


def preflight(origin: str, headers: str = "authorization, content-type") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers}


def chat_body(stream: bool) -> bytes:
    return msgspec.json.encode({"model": MODEL, "stream": stream,
                                "messages": [{"role": "user", "content": "hi [[mock tokens=7 seed=3]]"}]})


def allowed_names(response: aiohttp.ClientResponse) -> set[str]:
    return {name.strip().lower() for name in response.headers["Access-Control-Allow-Headers"].split(",")}


@pytest.fixture
async def jwt_hub(mock: MockProvider) -> AsyncIterator[Hub]:
    """A hub that requires a token, allowing one exact origin and one pattern."""
    config = hub_config(mock, auth_mode="jwt", jwt_secret=SECRET, allowed_origins=[APP, "https://*.team.example"])
    async with run_hub(config) as running:
        yield running


def bearer() -> dict[str, str]:
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


async def sdk_header_names() -> set[str]:
    """The header names the real openai and anthropic SDKs put on a request (recorded by a
    bare aiohttp server that answers 404), less those a browser sets itself: what their
    browser builds ask for in a preflight."""
    names: set[str] = set()

    async def record(request: web.Request) -> web.Response:
        names.update(name.lower() for name in request.headers)
        return web.json_response({"error": {"message": "recorded", "type": "not_found"}}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-unused", max_retries=0)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model=MODEL, stream=True, messages=[{"role": "user", "content": "hi"}])
        await client.close()
        messages = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{port}", api_key="sk-unused", max_retries=0)
        with pytest.raises(anthropic.NotFoundError):
            await messages.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        await messages.close()
    finally:
        await runner.cleanup()
    # The anthropic SDK's browser build adds the first (dangerouslyAllowBrowser: true).
    names.add("anthropic-dangerous-direct-browser-access")
    names.add("x-api-key")  # how its older releases send the key (this one sends Authorization)
    return names - BROWSER_OWN


# Preflights.


async def test_a_preflight_allows_what_the_real_sdks_send_without_a_credential(jwt_hub: Hub) -> None:
    names = await sdk_header_names()
    # What the SDKs of today send (openai 3.x, anthropic 2.x): the list is not guessed.
    assert {"authorization", "content-type", "x-stainless-lang", "x-stainless-retry-count",
            "anthropic-version"} <= names, names
    async with aiohttp.ClientSession() as http:
        for path in ("/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/models"):
            async with http.options(jwt_hub.url + path, headers=preflight(APP, ", ".join(sorted(names)))) as response:
                assert response.status == 204, path  # no Authorization: a preflight never carries one
                assert response.headers["Access-Control-Allow-Origin"] == APP
                assert response.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
                assert allowed_names(response) == names
                assert response.headers["Access-Control-Max-Age"] == "600"
                assert "Origin" in response.headers.getall("Vary")
                assert "Access-Control-Request-Headers" in response.headers.getall("Vary")
                assert await response.read() == b""
    assert jwt_hub.completions.runs == {}


async def test_a_preflight_from_a_pattern_origin_and_with_no_requested_headers(jwt_hub: Hub) -> None:
    async with aiohttp.ClientSession() as http, http.options(jwt_hub.url + "/v1/chat/completions", headers={
            "Origin": "https://a.b.team.example", "Access-Control-Request-Method": "GET"}) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://a.b.team.example"
        assert response.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
        assert "Access-Control-Allow-Private-Network" not in response.headers


async def test_a_private_network_preflight_is_allowed_for_an_allowed_origin(jwt_hub: Hub) -> None:
    request = {**preflight(APP), "Access-Control-Request-Private-Network": "true"}
    async with aiohttp.ClientSession() as http, http.options(jwt_hub.url + "/v1/models", headers=request) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Private-Network"] == "true"


@pytest.mark.parametrize("origin", [FOREIGN, "http://app.example.com", "https://team.example", "null"])
async def test_a_preflight_from_a_disallowed_origin_is_refused_403_without_cors_headers(
        jwt_hub: Hub, origin: str) -> None:
    async with aiohttp.ClientSession() as http, http.options(
            jwt_hub.url + "/v1/chat/completions", headers=preflight(origin)) as response:
        assert response.status == 403
        assert not [name for name in response.headers if name.lower().startswith("access-control-")]
        error = (await response.json())["error"]
        assert error["code"] == "forbidden" and "auth.allowed_origins" in error["message"]


@pytest.mark.parametrize("requested", [
    "x-ok, bad header",  # a space inside a name
    "x-ok, x-\u00e9",  # not a token
    "x-ok, bad:name",
    ", ".join(f"x-h{i}" for i in range(MAX_REQUEST_HEADER_NAMES + 1)),
    "x-" + "a" * MAX_REQUEST_HEADERS_CHARS,
])
async def test_a_preflight_asking_for_malformed_or_too_many_headers_is_refused_400(jwt_hub: Hub, requested: str) -> None:
    async with aiohttp.ClientSession() as http, http.options(
            jwt_hub.url + "/v1/chat/completions", headers=preflight(APP, requested)) as response:
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["code"] == "invalid_message" and "Access-Control-Request-Headers" in error["message"]
        assert "Access-Control-Allow-Headers" not in response.headers


def test_allow_headers_rules() -> None:
    assert allow_headers(None) == "Authorization, Content-Type"
    assert allow_headers("") == "Authorization, Content-Type"
    assert allow_headers("content-type, AUTHORIZATION, x-a, , X-A, anthropic-version") == \
        "Authorization, Content-Type, x-a, anthropic-version"
    at_bound = ", ".join(f"x-{i}" for i in range(MAX_REQUEST_HEADER_NAMES))
    assert allow_headers(at_bound) is not None
    assert allow_headers(at_bound + ", x-one-more") is None
    assert allow_headers("x-a\tb") is None


# Actual requests.


async def test_an_actual_streamed_response_carries_the_cors_headers(jwt_hub: Hub) -> None:
    headers = {**bearer(), "Content-Type": "application/json", "Origin": APP, "x-stainless-lang": "js"}
    async with aiohttp.ClientSession() as http, http.post(
            jwt_hub.url + "/v1/chat/completions", data=chat_body(stream=True), headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Access-Control-Allow-Origin"] == APP
        assert response.headers["Access-Control-Expose-Headers"] == "Retry-After, x-should-retry"
        assert "Origin" in response.headers.getall("Vary")
        events = [line[6:] for line in (await response.text()).split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(choice["delta"].get("content") or "" for event in events[:-1]
                   for choice in msgspec.json.decode(event)["choices"])
    assert text == expected_text(7, 3)


async def test_an_error_to_an_allowed_origin_is_readable_by_the_page(jwt_hub: Hub) -> None:
    # Without a token: 401, and the page may read why (the CORS header is on the error too).
    async with aiohttp.ClientSession() as http, http.post(
            jwt_hub.url + "/v1/chat/completions", data=chat_body(stream=True),
            headers={"Content-Type": "application/json", "Origin": APP}) as response:
        assert response.status == 401
        assert response.headers["Access-Control-Allow-Origin"] == APP
        assert (await response.json())["error"]["code"] in ("unauthorized", "invalid_token")
    assert jwt_hub.completions.runs == {}


async def test_an_actual_request_from_a_disallowed_origin_gets_no_cors_headers(jwt_hub: Hub) -> None:
    headers = {**bearer(), "Content-Type": "application/json", "Origin": FOREIGN}
    async with aiohttp.ClientSession() as http, http.post(
            jwt_hub.url + "/v1/chat/completions", data=chat_body(stream=True), headers=headers) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Expose-Headers" not in response.headers
    assert jwt_hub.completions.runs == {}


# What the list means.


async def test_a_star_allows_every_origin_but_null(mock: MockProvider) -> None:
    async with run_hub(hub_config(mock, allowed_origins=["*"])) as hub, aiohttp.ClientSession() as http:
        for origin in (FOREIGN, "http://localhost:3000", "https://a.b.example.org:8443"):
            async with http.options(hub.url + "/v1/chat/completions", headers=preflight(origin)) as response:
                assert response.status == 204, origin
                assert response.headers["Access-Control-Allow-Origin"] == origin  # echoed, never a literal *
            async with http.post(hub.url + "/v1/chat/completions", data=chat_body(stream=False),
                                 headers={"Content-Type": "application/json", "Origin": origin}) as response:
                assert response.status == 200
                assert response.headers["Access-Control-Allow-Origin"] == origin
                assert (await response.json())["choices"][0]["message"]["content"] == expected_text(7, 3)
        for origin in ("null", "not an origin"):
            async with http.options(hub.url + "/v1/models", headers=preflight(origin)) as response:
                assert response.status == 403, origin


async def test_an_empty_list_allows_only_the_hubs_own_origin(mock: MockProvider) -> None:
    async with run_hub(hub_config(mock)) as hub, aiohttp.ClientSession() as http:
        assert hub.config.allowed_origins == []
        async with http.options(hub.url + "/v1/chat/completions", headers=preflight(hub.url)) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == hub.url
        async with http.options(hub.url + "/v1/chat/completions", headers=preflight(APP)) as response:
            assert response.status == 403
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_paths_outside_v1_get_no_cors(mock: MockProvider) -> None:
    async with run_hub(hub_config(mock, allowed_origins=[APP])) as hub, aiohttp.ClientSession() as http:
        async with http.get(hub.url + "/healthz", headers={"Origin": APP}) as response:
            assert response.status == 200
            assert "Access-Control-Allow-Origin" not in response.headers
        async with http.options(hub.url + "/healthz", headers=preflight(APP)) as response:
            assert response.status == 405
            assert "Access-Control-Allow-Origin" not in response.headers
