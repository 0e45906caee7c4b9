"""Retries that do not multiply (issue 14 item 5): a client SDK's retries on top of the hub's.

The hub retries a 429/5xx itself (error_handling.retries); when it did (more than one attempt,
or a breaker refused), its error answer on /v1 carries ``x-should-retry: false``, which the
openai and anthropic SDKs obey before their own rules, so one client request costs the
provider ``retries.max_attempts`` upstream requests, not that times the SDK's 1 + max_retries.
The circuit breaker counts one failure for the request however many attempts it took."""

from __future__ import annotations

from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from hub.app import run_hub
from tests.conftest import hub_config
from tools.mock_provider import MockProvider

RATE_LIMITED = "hello [[mock status=429]]"


def config(mock: MockProvider, attempts: int) -> Any:
    return hub_config(mock, retry_max_attempts=attempts, retry_base_delay_ms=1.0, retry_max_delay_ms=2.0)


def breaker_stats(hub: Any, mock: MockProvider) -> tuple[float | None, int]:
    import asyncio

    return hub.completions.breakers.get("openai", mock.url).stats(asyncio.get_running_loop().time())


async def test_openai_sdk_does_not_retry_what_the_hub_already_retried(mock: MockProvider) -> None:
    async with run_hub(config(mock, attempts=3)) as hub:
        client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="not-needed")  # max_retries: the default, 2
        assert client.max_retries == 2
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="openai/gpt-4o-mini",
                                                 messages=[{"role": "user", "content": RATE_LIMITED}])
        await client.close()
        stats = breaker_stats(hub, mock)
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert mock.stats["requests"] == 3  # the hub's 3 attempts; the SDK added none (without the header: 9)
    assert stats == (1.0, 1)  # one failure for the one client request


async def test_the_anthropic_sdk_obeys_it_too(mock: MockProvider) -> None:
    async with run_hub(config(mock, attempts=2)) as hub:
        client = anthropic.AsyncAnthropic(base_url=hub.url, api_key="not-needed")
        assert client.max_retries == 2
        with pytest.raises(anthropic.RateLimitError) as raised:
            await client.messages.create(model="openai/gpt-4o-mini", max_tokens=10,
                                         messages=[{"role": "user", "content": RATE_LIMITED}])
        await client.close()
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert mock.stats["requests"] == 2


async def test_without_hub_retries_the_sdk_retries_and_each_request_counts(mock: MockProvider) -> None:
    async with run_hub(config(mock, attempts=1)) as hub:
        async with aiohttp.ClientSession() as session:
            async with session.post(hub.url + "/v1/chat/completions", json={
                    "model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": RATE_LIMITED}]}) as response:
                assert response.status == 429
                assert "x-should-retry" not in response.headers  # one attempt: the client may retry
        client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="not-needed", max_retries=2)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="openai/gpt-4o-mini",
                                                 messages=[{"role": "user", "content": RATE_LIMITED}])
        await client.close()
        stats = breaker_stats(hub, mock)
    assert mock.stats["requests"] == 1 + 3  # the raw request, then the SDK's request and its 2 retries
    assert stats == (1.0, 4)  # one failure per upstream response here: each was its own request


async def test_a_hub_that_retried_and_then_served_sends_no_header(mock: MockProvider) -> None:
    async with run_hub(config(mock, attempts=3)) as hub:
        async with aiohttp.ClientSession() as session:
            async with session.post(hub.url + "/v1/chat/completions", json={
                    "model": "openai/gpt-4o-mini",
                    "messages": [{"role": "user", "content": "[[mock script=429,ok script_id=served]]"}]}) as response:
                assert response.status == 200
                assert "x-should-retry" not in response.headers
                await response.json()
        stats = breaker_stats(hub, mock)
    assert mock.stats["requests"] == 2
    assert stats == (0.5, 2)  # the request's one failure and its success
