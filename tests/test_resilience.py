"""Fault injection: retries, fallbacks, circuit breakers and the dead-letter log, against the
mock provider's scripted faults (``[[mock script=...]]``) over real sockets, plus unit tests
of the pure pieces (backoff, Retry-After, the breaker's state machine with time passed in)."""

from __future__ import annotations

import asyncio
import email.utils
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from hub.app import run_hub
from hub.completions import retry_delay_s
from hub.config import HubConfig
from hub.resilience import CircuitBreaker, backoff_delay_s, retry_after_s
from protocol.errors import ProviderError
from protocol.messages import Attempt, CircuitState, Completed, ContentChunk, ErrorMessage, Subscribed
from tests.conftest import hub_config
from tools.mock_provider import expected_text

OPENAI = "openai/gpt-4o-mini"
ANTHROPIC = "anthropic/claude-3-haiku-20240307"


def fast(mock: Any, tmp_path: Path, **overrides: Any) -> HubConfig:
    """Hub config with retries that do not wait long and a dead-letter log in tmp_path."""
    values: dict[str, Any] = {"retry_base_delay_ms": 1.0, "retry_max_delay_ms": 5.0,
                              "dead_letter_path": str(tmp_path / "dead.jsonl"), "anthropic_api_key": "sk-ant-secret-key-123"}
    values.update(overrides)
    return hub_config(mock, **values)


async def complete(client: Any, cid: str, content: str, model: str = OPENAI, **extra: Any) -> list[Any]:
    await client.send({"type": "completion", "id": cid, "model": model, "coalesce": False,
                       "messages": [{"role": "user", "content": content}], **extra})
    return await client.until_terminal(cid)


def text_of(messages: list[Any]) -> str:
    return "".join(m.content for m in messages if isinstance(m, ContentChunk))


# Pure pieces.


def test_backoff_is_full_jitter_below_the_capped_exponential():
    rng = random.Random(7)
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (3, 0.8), (10, 2.0)]:
        delays = [backoff_delay_s(attempt, 100, 2000, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2  # spread over the range


def test_retry_after_headers():
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}, cap_s=30) == 1.5
    assert retry_after_s({"retry-after": "7"}, cap_s=30) == 7
    assert retry_after_s({"retry-after": "120"}, cap_s=30) == 30  # capped
    date = email.utils.formatdate(1_000_010, usegmt=True)
    assert retry_after_s({"retry-after": date}, cap_s=30, now=1_000_000) == pytest.approx(10)
    assert retry_after_s({"retry-after": "soon"}, cap_s=30) is None
    assert retry_after_s({}, cap_s=30) is None


def test_retry_delay_prefers_the_providers_wait():
    config = HubConfig(retry_base_delay_ms=100, retry_max_delay_ms=1000)
    asked = ProviderError("slow down", "rate_limited", retryable=True, status=429, retry_after_s=2.5)
    assert retry_delay_s(asked, 0, config) == 2.5
    plain = ProviderError("boom", "provider_error", retryable=True, status=503)
    assert 0 <= retry_delay_s(plain, 2, config) <= 0.4


def test_circuit_breaker_states():
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker(failure_rate=0.5, window_s=10, min_requests=4, cooldown_s=5, half_open_probes=1,
                             on_change=lambda b, previous: changes.append((previous, b.state)))
    for t, ok in [(0, True), (1, False), (2, True)]:
        assert breaker.allow(t)
        breaker.record(t, ok)
    assert breaker.state == "closed"  # 1 failure in 3: under min_requests anyway
    breaker.record(3, False)  # 2 of 4 failed: 50%
    assert breaker.state == "open" and not breaker.allow(4)
    assert breaker.allow(8.1)  # cool-down over: one probe
    assert breaker.state == "half_open" and not breaker.allow(8.2)  # only one probe at a time
    breaker.record(8.5, False)  # the probe failed
    assert breaker.state == "open" and not breaker.allow(9)
    assert breaker.allow(13.6)
    breaker.record(13.7, True)
    assert breaker.state == "closed" and breaker.allow(14)
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                       ("open", "half_open"), ("half_open", "closed")]


def test_circuit_breaker_forgets_outside_the_window():
    breaker = CircuitBreaker(failure_rate=0.5, window_s=10, min_requests=2, cooldown_s=5)
    breaker.record(0, False)
    breaker.record(11, False)  # the first failure has left the window: 1 outcome only
    assert breaker.state == "closed"
    breaker.record(12, False)
    assert breaker.state == "open"


# Retries.


async def test_retryable_statuses_are_retried_until_one_succeeds(mock, ws_factory, tmp_path):
    async with run_hub(fast(mock, tmp_path)) as hub:
        client = await ws_factory(hub)
        messages = await complete(client, "r1", "[[mock tokens=4 script=503,429 script_id=r1]]")
    done = messages[-1]
    assert isinstance(done, Completed) and text_of(messages) == expected_text(4)
    assert done.attempts == [Attempt("openai", "gpt-4o-mini", "provider_error", 503),
                             Attempt("openai", "gpt-4o-mini", "rate_limited", 429),
                             Attempt("openai", "gpt-4o-mini")]
    assert mock.stats["requests"] == 3
    assert [m.seq for m in messages] == list(range(1, 6))  # the failed attempts left no trace


@pytest.mark.parametrize("step, code", [("drop", "upstream_unreachable"), ("stall", "upstream_timeout"),
                                        ("500", "provider_error"), ("529", "provider_error")])
async def test_network_faults_and_timeouts_are_retried(mock, ws_factory, tmp_path, step, code):
    config = fast(mock, tmp_path, first_byte_timeout_s=0.2, connect_timeout_s=1.0)
    async with run_hub(config) as hub:
        client = await ws_factory(hub)
        messages = await complete(client, "n1", f"[[mock tokens=2 script={step} script_id=n-{step}]]")
    assert isinstance(messages[-1], Completed)
    assert [a.error for a in messages[-1].attempts] == [code, None]


@pytest.mark.parametrize("status, code", [(400, "provider_error"), (401, "auth_failed"), (403, "auth_failed"),
                                          (404, "model_not_found"), (422, "provider_error")])
async def test_client_errors_are_never_retried(mock, ws_factory, tmp_path, status, code):
    async with run_hub(fast(mock, tmp_path)) as hub:
        client = await ws_factory(hub)
        messages = await complete(client, "c1", f"[[mock script={status} script_id=c{status}]]")
    [error] = messages
    assert isinstance(error, ErrorMessage) and error.error.code == code and not error.error.retryable
    assert mock.stats["requests"] == 1


async def test_retries_stop_after_max_attempts_with_the_last_error(mock, ws_factory, tmp_path):
    async with run_hub(fast(mock, tmp_path, retry_max_attempts=2)) as hub:
        client = await ws_factory(hub)
        messages = await complete(client, "m1", "[[mock script=503,502,ok script_id=m1]]")
    [error] = messages
    assert isinstance(error, ErrorMessage) and error.error.code == "provider_error" and error.error.status == 502
    assert error.error.retryable and [a.status for a in error.attempts] == [503, 502]
    assert mock.stats["requests"] == 2


async def test_a_failure_after_content_is_an_error_never_a_retry(mock, ws_factory, tmp_path):
    async with run_hub(fast(mock, tmp_path)) as hub:
        client = await ws_factory(hub)
        cut = await complete(client, "a1", "[[mock tokens=6 truncate_after=3]]", fallbacks=[ANTHROPIC])
        inband = await complete(client, "a2", "[[mock tokens=6 error_after=2]]")
    assert text_of(cut) == expected_text(3)
    assert isinstance(cut[-1], ErrorMessage) and cut[-1].error.code == "stream_truncated" and cut[-1].error.retryable
    assert cut[-1].attempts == [Attempt("openai", "gpt-4o-mini", "stream_truncated")]
    assert text_of(inband) == expected_text(2) and isinstance(inband[-1], ErrorMessage)
    assert mock.stats["requests"] == 2  # one each: no retry, no fallback


async def test_an_in_band_error_before_any_content_is_retried(mock, ws_factory, tmp_path):
    async with run_hub(fast(mock, tmp_path, retry_max_attempts=2)) as hub:
        client = await ws_factory(hub)
        messages = await complete(client, "i1", "[[mock tokens=3 error_after=0]]", model=ANTHROPIC)
    error = messages[-1]
    assert isinstance(error, ErrorMessage) and [a.error for a in error.attempts] == ["provider_error"] * 2
    assert not any(isinstance(m, ContentChunk) for m in messages)


# Fallbacks.


async def test_request_fallbacks_serve_when_the_primary_keeps_failing(mock, ws_factory, tmp_path):
    async with run_hub(fast(mock, tmp_path, retry_max_attempts=2)) as hub:
        client = await ws_factory(hub)
        messages = await complete(client, "f1", "[[mock tokens=3 script=503,503 script_id=f1]]", fallbacks=[ANTHROPIC])
    done = messages[-1]
    assert isinstance(done, Completed) and done.provider == "anthropic" and done.model == "claude-3-haiku-20240307"
    assert [(a.provider, a.error) for a in done.attempts] == [
        ("openai", "provider_error"), ("openai", "provider_error"), ("anthropic", None)]
    assert text_of(messages) == expected_text(3)


async def test_configured_fallback_chain_and_unusable_fallbacks(mock, ws_factory, tmp_path):
    chain = {OPENAI: ["nosuch/model", ANTHROPIC]}
    async with run_hub(fast(mock, tmp_path, retry_max_attempts=1, fallbacks=chain)) as hub:
        client = await ws_factory(hub)
        messages = await complete(client, "f2", "[[mock tokens=2 script=500 script_id=f2]]")
    done = messages[-1]
    assert isinstance(done, Completed) and done.provider == "anthropic"
    assert [a.error for a in done.attempts] == ["provider_error", "model_not_found", None]


async def test_auth_failure_is_reported_at_once_without_fallback(mock, ws_factory, tmp_path):
    async with run_hub(fast(mock, tmp_path, openai_api_key="sk-proj-verysecretkey0123456789")) as hub:
        client = await ws_factory(hub)
        messages = await complete(client, "f3", "[[mock script=401 script_id=f3]]", fallbacks=[ANTHROPIC])
    [error] = messages
    assert error.error.code == "auth_failed" and "verysecret" not in error.error.message
    assert mock.stats["requests"] == 1


# Dead-letter log.


async def test_invalid_upstream_response_is_dead_lettered_and_failed_over(mock, ws_factory, tmp_path):
    config = fast(mock, tmp_path, openai_api_key="sk-proj-verysecretkey0123456789")
    async with run_hub(config) as hub:
        client = await ws_factory(hub)
        messages = await complete(client, "d1", "[[mock tokens=2 script=garbage script_id=d1]]", fallbacks=[ANTHROPIC])
    done = messages[-1]
    assert isinstance(done, Completed) and done.provider == "anthropic"
    assert done.attempts[0] == Attempt("openai", "gpt-4o-mini", "invalid_upstream_response", 200)
    [record] = [orjson.loads(line) for line in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert record["requestId"] == "d1" and record["provider"] == "openai" and record["status"] == 200
    assert record["contentType"].startswith("text/html") and "Bad Gateway" in record["excerpt"]
    assert "verysecret" not in orjson.dumps(record).decode()


async def test_unparseable_stream_is_dead_lettered(mock, ws_factory, tmp_path):
    body = tmp_path / "broken.sse"
    body.write_bytes(b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
                     b'{"content":"Hi"},"finish_reason":null}]}\n\ndata: {"choices": 12}\n\ndata: [DONE]\n\n')
    async with run_hub(fast(mock, tmp_path)) as hub:
        client = await ws_factory(hub)
        messages = await complete(client, "d2", f"[[mock replay={body}]]")
    assert isinstance(messages[-1], ErrorMessage) and messages[-1].error.code == "invalid_upstream_response"
    [record] = [orjson.loads(line) for line in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert record["code"] == "invalid_upstream_response" and '"choices": 12' in record["excerpt"]


def test_dead_letter_log_is_bounded_and_rotated(tmp_path):
    from hub.resilience import DeadLetterLog

    log = DeadLetterLog(str(tmp_path / "dl" / "dead.jsonl"), max_bytes=2000, backups=2)
    for n in range(100):
        log.write({"n": n, "excerpt": "x" * 100})
    log.close()
    files = sorted(p.name for p in (tmp_path / "dl").iterdir())
    assert files == ["dead.jsonl", "dead.jsonl.1", "dead.jsonl.2"]
    assert all(p.stat().st_size <= 2000 for p in (tmp_path / "dl").iterdir())
    newest = [orjson.loads(line)["n"] for line in (tmp_path / "dl" / "dead.jsonl").read_bytes().splitlines()]
    assert newest[-1] == 99


# Circuit breaker through the hub.


async def test_circuit_opens_fails_over_at_once_and_closes_after_a_probe(mock, ws_factory, tmp_path):
    config = fast(mock, tmp_path, retry_max_attempts=1, breaker_min_requests=2, breaker_failure_rate=0.5,
                  breaker_cooldown_s=0.2, breaker_window_s=60)
    async with run_hub(config) as hub:
        watcher = await ws_factory(hub)
        await watcher.send({"type": "subscribe", "channels": ["system"]})
        assert isinstance(await watcher.recv(), Subscribed)
        client = await ws_factory(hub)
        for n in range(2):
            failed = await complete(client, f"b{n}", f"[[mock script=503 script_id=b{n}]]")
            assert failed[-1].error.code == "provider_error"
        opened = await watcher.recv()
        assert isinstance(opened, CircuitState) and (opened.provider, opened.state, opened.previous) == (
            "openai", "open", "closed")
        assert opened.base_url == mock.url and opened.failure_rate == 1.0 and opened.seq == 1
        requests_so_far = mock.stats["requests"]
        refused = await complete(client, "b2", "[[mock tokens=1]]")
        assert refused[-1].error.code == "provider_unavailable" and refused[-1].error.retryable
        served = await complete(client, "b3", "[[mock tokens=1]]", fallbacks=[ANTHROPIC])
        assert served[-1].provider == "anthropic"
        assert [a.error for a in served[-1].attempts] == ["provider_unavailable", None]
        assert mock.stats["requests"] == requests_so_far + 1  # only the anthropic call went out
        import asyncio

        await asyncio.sleep(0.25)  # the cool-down
        probe = await complete(client, "b4", "[[mock tokens=1]]")
        assert isinstance(probe[-1], Completed)
        states = [(await watcher.recv()).state for _ in range(2)]
        assert states == ["half_open", "closed"]


async def test_one_request_s_retries_count_once_against_the_breaker(mock, ws_factory, tmp_path):
    # Fair breakers (issue 12): a request that keeps failing counts once, whatever its retries;
    # only failures of distinct requests open the breaker for everyone.
    config = fast(mock, tmp_path, retry_max_attempts=3, breaker_min_requests=2, breaker_failure_rate=0.5,
                  breaker_cooldown_s=30, breaker_window_s=60)
    async with run_hub(config) as hub:
        client = await ws_factory(hub)
        failed = await complete(client, "f0", "[[mock script=503,503,503 script_id=f0]]")
        assert failed[-1].error.code == "provider_error" and len(failed[-1].attempts) == 3
        [breaker] = hub.completions.breakers.breakers.values()
        assert breaker.state == "closed" and breaker.stats(asyncio.get_running_loop().time())[1] == 1
        served = await complete(client, "ok", "[[mock tokens=1]]")
        assert isinstance(served[-1], Completed)  # the provider still serves everyone
        for n in (1, 2):
            await complete(client, f"f{n}", f"[[mock script=503 script_id=f{n}]]")
        assert breaker.state == "open"  # distinct failing requests do open it
