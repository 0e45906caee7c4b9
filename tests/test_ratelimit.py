"""Rate limits per subject (hub/ratelimit.py): the buckets on a test clock, then the hub over
real sockets with the mock provider (WebSocket and the OpenAI-compatible API)."""

from __future__ import annotations

import dataclasses

import aiohttp
import msgspec
import openai
import pytest

from hub.app import run_hub
from hub.ratelimit import RateLimiter, estimate_tokens
from hub.session import ANONYMOUS
from protocol.errors import HubError
from protocol.messages import ChatMessage, Completed, ErrorMessage, Pong
from tests.conftest import hub_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass(frozen=True)
class Who:
    subject: str
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None


def refused(limiter: RateLimiter, who: Who, estimate: int = 0) -> int:
    with pytest.raises(HubError) as error:
        limiter.admit(who, estimate)
    assert error.value.code == "rate_limited" and error.value.retryable
    assert error.value.retry_after_ms is not None
    return error.value.retry_after_ms


def test_rpm_refuses_exactly_the_requests_over_the_limit_and_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(default_rpm=3, clock=clock)
    alice = Who("alice")
    tickets = [limiter.admit(alice) for _ in range(3)]
    assert refused(limiter, alice) == 20_000  # one request comes back every 60/3 s
    assert limiter.admit(Who("bob")) is not None  # another subject has its own bucket
    clock.now += 19.5
    assert refused(limiter, alice) == 500
    clock.now += 0.5
    limiter.admit(alice)
    clock.now += 60
    for _ in range(3):  # a full window later the whole burst is back, no more
        limiter.admit(alice)
    refused(limiter, alice)
    for ticket in tickets:
        ticket.release()


def test_a_refusal_takes_nothing_from_any_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(default_rpm=2, default_tpm=1000, clock=clock)
    alice = Who("alice")
    limiter.admit(alice, 900).release(900)
    assert refused(limiter, alice, 500) == 24_000  # tpm: 400 missing at 1000/60 per s
    limiter.admit(alice, 100)  # rpm still had its second request: the refusal took none


def test_tpm_settles_the_estimate_with_the_real_usage() -> None:
    clock = Clock()
    limiter = RateLimiter(default_tpm=600, clock=clock)
    alice = Who("alice")
    ticket = limiter.admit(alice, 100)
    ticket.release(700)  # it used 600 more than estimated: the bucket is now at -200
    assert refused(limiter, alice, 10) == 11_000  # 110 tokens missing at 10 per s
    ticket.release(5000)  # a second release changes nothing
    clock.now += 11
    limiter.admit(alice, 10)


def test_max_concurrent_counts_runs_until_released() -> None:
    limiter = RateLimiter(default_max_concurrent=2, clock=Clock())
    alice = Who("alice")
    first, second = limiter.admit(alice), limiter.admit(alice)
    assert refused(limiter, alice) == 1000
    first.release()
    first.release()
    third = limiter.admit(alice)
    assert limiter.running("alice") == 2
    second.release(), third.release()
    assert limiter.running("alice") == 0


def test_a_principal_s_own_limits_win_over_the_defaults() -> None:
    limiter = RateLimiter(default_rpm=1, clock=Clock())
    limiter.admit(Who("generous", rpm=3))
    limiter.admit(Who("generous", rpm=3))
    limiter.admit(ANONYMOUS)
    refused(limiter, ANONYMOUS)
    unlimited = RateLimiter(clock=Clock())
    for _ in range(1000):
        unlimited.admit(ANONYMOUS, 10**9)


def test_estimate_is_prompt_chars_over_four_plus_max_tokens() -> None:
    messages = [ChatMessage("system", "x" * 40), ChatMessage("user", [{"type": "text", "text": "y" * 39}])]
    assert estimate_tokens(messages, 100) == 20 + 100
    assert estimate_tokens(messages, None) == 20 + 256


def _completion(ident: str) -> dict[str, object]:
    return {"type": "completion", "id": ident, "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "[[mock tokens=3]]"}]}


async def test_over_rpm_on_the_websocket_is_refused_without_a_provider_request(mock, ws_factory) -> None:
    async with run_hub(hub_config(mock, default_rpm=2)) as hub:
        client = await ws_factory(hub)
        for ident in ("r1", "r2"):
            await client.send(_completion(ident))
            messages = await client.until_terminal(ident)
            assert isinstance(messages[-1], Completed)
        requests_before = mock.stats["requests"]
        await client.send({**_completion("r3"), "rid": "third"})
        error = await client.recv()
        assert isinstance(error, ErrorMessage) and error.error.code == "rate_limited"
        assert error.rid == "third" and error.completion_id is None and error.error.retryable
        assert 29_000 <= error.error.retry_after_ms <= 30_000  # 2 per minute: one every 30 s
        await client.send({"type": "ping"})  # the connection goes on
        assert isinstance(await client.recv(), Pong)
        assert hub.completions.get("r3") is None
        assert mock.stats["requests"] == requests_before == 2


async def test_over_rpm_on_v1_is_429_with_retry_after(mock) -> None:
    async with run_hub(hub_config(mock, default_rpm=1)) as hub:
        client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="x", max_retries=0)
        answer = await client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "[[mock tokens=2]]"}])
        assert answer.choices[0].finish_reason == "stop"
        await client.close()
        async with aiohttp.ClientSession() as http:
            body = msgspec.json.encode({"model": "openai/gpt-4o-mini",
                                        "messages": [{"role": "user", "content": "hi"}]})
            async with http.post(hub.url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"}) as response:
                assert response.status == 429
                assert 59 <= int(response.headers["Retry-After"]) <= 60
                assert (await response.json())["error"]["code"] == "rate_limited"
        assert len(hub.completions.runs) == 1
