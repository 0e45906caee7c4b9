"""Tests for hub/testing/mock_provider.py: a real server on 127.0.0.1, real aiohttp clients.

Bodies are parsed with the repo's own framing decoders (protocol/framing.py) and read by the
small per-format readers below, which check the wire shapes of docs/PROVIDERS.md §1-§4. Where the
provider normalizers (protocol/normalizers/) are importable, the same bodies also go through
them and tests/support.py ``summarize``. Timing checks are lower bounds only.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import pathlib
import signal
import socket
import threading
import time
import urllib.request
from typing import Any

import aiohttp
import pytest

from hub.testing.mock_provider import (
    STAMP_PATTERN,
    TOOL_ARGUMENTS,
    Directive,
    DirectiveError,
    MockProvider,
    build_parser,
    expected_reasoning,
    expected_text,
    main,
)
from protocol.framing import JSONArrayDecoder, NDJSONDecoder, SSEDecoder, SSEEvent, StrayLine
from tests.support import summarize

# One request per wire format: (path, query, body for a user message text).
FORMATS: dict[str, tuple[str, dict[str, str] | None, Any]] = {
    "openai": (
        "/v1/chat/completions",
        None,
        lambda text: {
            "model": "gpt-mock",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}],
        },
    ),
    "anthropic": (
        "/v1/messages",
        None,
        lambda text: {
            "model": "claude-mock",
            "max_tokens": 256,
            "stream": True,
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        },
    ),
    "gemini_sse": (
        "/v1beta/models/gemini-mock:streamGenerateContent",
        {"alt": "sse"},
        lambda text: {"contents": [{"role": "user", "parts": [{"text": text}]}]},
    ),
    "gemini_array": (
        "/v1beta/models/gemini-mock:streamGenerateContent",
        None,
        lambda text: {"contents": [{"role": "user", "parts": [{"text": text}]}]},
    ),
    "ollama": (
        "/api/chat",
        None,
        lambda text: {"model": "llama-mock", "messages": [{"role": "user", "content": text}]},
    ),
}
STREAM_TYPES = {
    "openai": "text/event-stream",
    "anthropic": "text/event-stream",
    "gemini_sse": "text/event-stream",
    "gemini_array": "application/json",
    "ollama": "application/x-ndjson",
}
NATIVE_TOOL_FINISH = {
    "openai": "tool_calls",
    "anthropic": "tool_use",
    "gemini_sse": "STOP",
    "gemini_array": "STOP",
    "ollama": "stop",
}


@pytest.fixture
async def mock(tmp_path: pathlib.Path):
    async with MockProvider(replay_dir=tmp_path, tokens=20) as server:
        yield server


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client:
        yield client


class Reply:
    """A response read to its end: status, headers, body, the reads, whether it was cut."""

    def __init__(self, status: int, headers: Any, chunks: list[bytes], cut: bool, elapsed: float, first: float | None):
        self.status = status
        self.headers = headers
        self.chunks = chunks
        self.body = b"".join(chunks)
        self.cut = cut
        self.elapsed = elapsed
        self.first = first  # seconds from sending to the first body bytes


async def call(session: aiohttp.ClientSession, mock: MockProvider, fmt: str, text: str, **overrides: Any) -> Reply:
    path, query, make_body = FORMATS[fmt]
    body = make_body(text)
    body.update(overrides)
    return await send(session, mock.url + path, body, query)


async def send(session: aiohttp.ClientSession, url: str, body: Any, query: dict[str, str] | None = None) -> Reply:
    started = time.perf_counter()
    chunks: list[bytes] = []
    first = None
    cut = False
    async with session.post(url, json=body, params=query) as resp:
        try:
            async for chunk in resp.content.iter_any():
                if first is None:
                    first = time.perf_counter() - started
                chunks.append(chunk)
        except aiohttp.ClientPayloadError:
            cut = True
        return Reply(resp.status, resp.headers, chunks, cut, time.perf_counter() - started, first)


# Per-format readers: what a body says, in one shape.


def _seen() -> dict[str, Any]:
    return {"text": "", "reasoning": "", "signature": None, "tool": None, "finish": None,
            "usage": None, "error": None, "terminal": False}  # fmt: skip


def _sse(body: bytes, collect_stray: bool = False) -> list[SSEEvent | StrayLine]:
    decoder = SSEDecoder(collect_stray=collect_stray)
    events = decoder.feed(body) + decoder.close()
    assert not decoder.unterminated, "every SSE event must end with its blank line"
    return events


def read_openai(body: bytes) -> dict[str, Any]:
    seen = _seen()
    arguments: list[str] = []
    for event in _sse(body):
        assert event.event == "message"  # no event: field (docs/PROVIDERS.md §1.1)
        if event.data == "[DONE]":
            seen["terminal"] = True
            continue
        chunk = json.loads(event.data)
        assert chunk["object"] == "chat.completion.chunk"
        if chunk.get("error"):
            seen["error"] = chunk["error"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            seen["text"] += delta.get("content") or ""
            seen["reasoning"] += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls", []):
                if "id" in call:
                    seen["tool"] = [call["function"]["name"], None]
                arguments.append(call["function"]["arguments"])
            seen["finish"] = choice["finish_reason"] or seen["finish"]
        if chunk.get("usage"):
            seen["usage"] = (chunk["usage"]["prompt_tokens"], chunk["usage"]["completion_tokens"])
    if seen["tool"]:
        seen["tool"] = (seen["tool"][0], json.loads("".join(arguments)))
    return seen


def read_anthropic(body: bytes) -> dict[str, Any]:
    seen = _seen()
    arguments: list[str] = []
    prompt = output = None
    for event in _sse(body):
        data = json.loads(event.data)
        assert data["type"] == event.event  # docs/PROVIDERS.md §2.1
        if event.event == "message_start":
            prompt = data["message"]["usage"]["input_tokens"]
        elif event.event == "content_block_start" and data["content_block"]["type"] == "tool_use":
            seen["tool"] = [data["content_block"]["name"], None]
        elif event.event == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                seen["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                seen["reasoning"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                seen["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                arguments.append(delta["partial_json"])
        elif event.event == "message_delta":
            seen["finish"] = data["delta"]["stop_reason"]
            output = data["usage"]["output_tokens"]
        elif event.event == "message_stop":
            seen["terminal"] = True
        elif event.event == "error":
            seen["error"] = data["error"]
    if output is not None:
        seen["usage"] = (prompt, output)
    if seen["tool"]:
        seen["tool"] = (seen["tool"][0], json.loads("".join(arguments)))
    return seen


def _read_gemini_chunk(seen: dict[str, Any], chunk: dict[str, Any]) -> None:
    if "error" in chunk:
        seen["error"] = chunk["error"]
        return
    candidate = chunk["candidates"][0]
    for part in candidate["content"]["parts"]:
        if "thoughtSignature" in part:
            seen["signature"] = part["thoughtSignature"]
        if "functionCall" in part:
            seen["tool"] = (part["functionCall"]["name"], part["functionCall"]["args"])
        elif part.get("thought"):
            seen["reasoning"] += part["text"]
        else:
            seen["text"] += part["text"]
    assert seen["finish"] is None, "finishReason only on the last chunk"
    seen["finish"] = candidate.get("finishReason")
    usage = chunk["usageMetadata"]
    seen["usage"] = (
        usage["promptTokenCount"],
        usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0),
    )
    assert usage["totalTokenCount"] == sum(seen["usage"])
    seen["terminal"] = seen["finish"] is not None


def read_gemini_sse(body: bytes) -> dict[str, Any]:
    seen = _seen()
    stray: list[str] = []
    for item in _sse(body, collect_stray=True):
        if isinstance(item, StrayLine):
            stray.append(item.text)
        else:
            _read_gemini_chunk(seen, json.loads(item.data))
    if stray:  # the unframed error object of docs/PROVIDERS.md §3.4
        _read_gemini_chunk(seen, json.loads("\n".join(stray)))
    return seen


def read_gemini_array(body: bytes) -> dict[str, Any]:
    seen = _seen()
    decoder = JSONArrayDecoder()
    for element in decoder.feed(body) + decoder.close():
        _read_gemini_chunk(seen, json.loads(element))
    seen["terminal"] = seen["terminal"] and decoder.complete
    return seen


def read_ollama(body: bytes) -> dict[str, Any]:
    seen = _seen()
    decoder = NDJSONDecoder()
    for line in decoder.feed(body) + decoder.close():
        obj = json.loads(line)
        if "error" in obj:
            seen["error"] = obj["error"]
            continue
        message = obj["message"]
        seen["text"] += message["content"]
        seen["reasoning"] += message.get("thinking", "")
        for call in message.get("tool_calls", []):
            seen["tool"] = (call["function"]["name"], call["function"]["arguments"])
        if obj["done"]:
            seen["terminal"] = True
            seen["finish"] = obj["done_reason"]
            seen["usage"] = (obj["prompt_eval_count"], obj["eval_count"])
    return seen


READERS = {
    "openai": read_openai,
    "anthropic": read_anthropic,
    "gemini_sse": read_gemini_sse,
    "gemini_array": read_gemini_array,
    "ollama": read_ollama,
}


def _normalizer_factories() -> dict[str, Any]:
    """The provider normalizers, where their modules exist (other developers write them)."""
    found: dict[str, Any] = {}
    for fmt, module, name, kwargs in (
        ("openai", "openai", "OpenAIChatNormalizer", {}),
        ("anthropic", "anthropic", "AnthropicNormalizer", {}),
        ("gemini_sse", "gemini", "GeminiNormalizer", {"framing": "sse"}),
        ("gemini_array", "gemini", "GeminiNormalizer", {"framing": "array"}),
        ("ollama", "ollama", "OllamaChatNormalizer", {}),
    ):
        try:
            cls = getattr(importlib.import_module(f"protocol.normalizers.{module}"), name)
        except (ImportError, AttributeError):
            continue
        found[fmt] = lambda cls=cls, kwargs=kwargs: cls(**kwargs)
    return found


NORMALIZERS = _normalizer_factories()


def normalized(fmt: str, reply: Reply) -> dict[str, Any]:
    """``summarize`` of the body as the hub's normalizer for ``fmt`` reads it, fed in the
    pieces it arrived in; skips the test when that normalizer does not exist yet."""
    if fmt not in NORMALIZERS:
        pytest.skip(f"no normalizer for {fmt} in protocol/normalizers yet")
    normalizer = NORMALIZERS[fmt]()
    events = [event for chunk in reply.chunks for event in normalizer.feed(chunk)]
    return summarize(events + normalizer.close())


def words(text: str) -> int:
    return len(text.split())


# Generated text.


def test_expected_text_is_deterministic_words_with_spaces():
    text = expected_text(12, seed=4)
    assert text == expected_text(12, seed=4)
    assert text.endswith(" ") and text.count(" ") == 12
    assert expected_text(12, seed=5) != text
    assert expected_text(0) == ""
    assert expected_text(3, seed=4) == "".join(text.split(" ")[i] + " " for i in range(3))
    assert expected_reasoning(12, seed=4) not in (text, "")


# Each format streams expected_text in its own wire format.


@pytest.mark.parametrize("fmt", FORMATS)
async def test_streams_expected_text(mock, session, fmt):
    text = "count to three [[mock tokens=7 seed=3]]"
    reply = await call(session, mock, fmt, text)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith(STREAM_TYPES[fmt])
    seen = READERS[fmt](reply.body)
    assert seen["text"] == expected_text(7, seed=3)
    assert (seen["reasoning"], seen["tool"], seen["error"]) == ("", None, None)
    assert seen["terminal"]
    assert seen["usage"] == (words(text), 7)


@pytest.mark.parametrize("fmt", FORMATS)
async def test_normalizer_reads_text(mock, session, fmt):
    text = "count to three [[mock tokens=7 seed=3]]"
    summary = normalized(fmt, await call(session, mock, fmt, text))
    assert summary["text"] == expected_text(7, seed=3)
    assert (summary["finish_reason"], summary["error"]) == ("stop", None)
    assert summary["usage"]["prompt_tokens"] == words(text)
    assert summary["usage"]["completion_tokens"] == 7
    assert summary["usage"]["total_tokens"] == words(text) + 7


async def test_openai_chunk_sequence(mock, session):
    reply = await call(session, mock, "openai", "[[mock tokens=2]]")
    events = _sse(reply.body)
    chunks = [json.loads(e.data) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = [word + " " for word in expected_text(2).split(" ")[:2]]
    assert [c["choices"][0]["delta"] for c in chunks[1:3]] == [{"content": token} for token in tokens]
    assert chunks[3]["choices"][0]["delta"] == {} and chunks[3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["total_tokens"] == 2 + 2  # prompt: 2 words
    assert len({c["id"] for c in chunks}) == 1
    assert reply.body.endswith(b"data: [DONE]\n\n")
    # Without stream_options.include_usage there is no usage chunk.
    reply = await call(session, mock, "openai", "[[mock tokens=2]]", stream_options={})
    assert all("usage" not in json.loads(e.data) for e in _sse(reply.body)[:-1])


async def test_anthropic_event_sequence(mock, session):
    reply = await call(session, mock, "anthropic", "[[mock tokens=2]]")
    names = [e.event for e in _sse(reply.body)]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]  # fmt: skip
    assert reply.headers["request-id"].startswith("req_")


async def test_gemini_sse_uses_crlf_and_cumulative_usage(mock, session):
    reply = await call(session, mock, "gemini_sse", "[[mock tokens=3]]")
    assert reply.body.count(b"\r\n\r\n") == 4  # three tokens and the finish chunk
    assert b"\n" not in reply.body.replace(b"\r\n", b"")
    totals = [json.loads(e.data)["usageMetadata"]["totalTokenCount"] for e in _sse(reply.body)]
    assert totals == sorted(totals) and totals[-1] == 2 + 3  # prompt: 2 words


async def test_gemini_array_is_flushed_pretty_printed_elements(mock, session):
    reply = await call(session, mock, "gemini_array", "[[mock tokens=3 tps=500]]")
    assert reply.body.startswith(b"[{\n  \"candidates\"")
    assert reply.body.count(b"}\n,\r\n{\n") == 3
    assert reply.body.endswith(b"}\n]")
    assert len(reply.chunks) > 1  # one element at a time, not one body


async def test_ollama_final_line_has_counts_and_durations(mock, session):
    text = "[[mock tokens=3 ttft_ms=20]]"
    reply = await call(session, mock, "ollama", text)
    lines = [json.loads(line) for line in reply.body.splitlines()]
    assert [line["done"] for line in lines] == [False, False, False, True]
    final = lines[-1]
    assert final["done_reason"] == "stop" and final["message"]["content"] == ""
    assert final["eval_count"] == 3 and final["prompt_eval_count"] == words(text)
    assert final["prompt_eval_duration"] >= 15_000_000  # ns: the 20 ms before the first token
    assert final["total_duration"] >= final["prompt_eval_duration"] + final["eval_duration"] - 1
    assert all(line["created_at"].endswith("Z") for line in lines)


@pytest.mark.parametrize(
    ("path", "body", "text", "completion_tokens"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "[[mock tokens=4]]"}]},
         lambda obj: obj["choices"][0]["message"]["content"], lambda obj: obj["usage"]["completion_tokens"]),
        ("/v1/messages", {"messages": [{"role": "user", "content": "[[mock tokens=4]]"}]},
         lambda obj: obj["content"][0]["text"], lambda obj: obj["usage"]["output_tokens"]),
        ("/v1beta/models/g:generateContent", {"contents": [{"parts": [{"text": "[[mock tokens=4]]"}]}]},
         lambda obj: obj["candidates"][0]["content"]["parts"][0]["text"],
         lambda obj: obj["usageMetadata"]["candidatesTokenCount"]),
        ("/api/chat", {"stream": False, "messages": [{"role": "user", "content": "[[mock tokens=4]]"}]},
         lambda obj: obj["message"]["content"], lambda obj: obj["eval_count"]),
    ],
    ids=["openai", "anthropic", "gemini", "ollama"],
)  # fmt: skip
async def test_not_streamed_answers_one_json_object(mock, session, path, body, text, completion_tokens):
    reply = await send(session, mock.url + path, body)
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    answer = json.loads(reply.body)
    assert text(answer) == expected_text(4)
    assert completion_tokens(answer) == 4


async def test_models_list(mock, session):
    async with session.get(mock.url + "/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["mock-model"]


# Directives: reasoning, tool, status, error_after, truncate_after.


@pytest.mark.parametrize("fmt", FORMATS)
async def test_reasoning_comes_first_in_the_provider_format(mock, session, fmt):
    reply = await call(session, mock, fmt, "think [[mock reasoning=4 tokens=3 seed=5]]")
    seen = READERS[fmt](reply.body)
    assert seen["reasoning"] == expected_reasoning(4, seed=5)
    assert seen["text"] == expected_text(3, seed=5)
    assert seen["usage"][1] == 7
    if fmt in ("anthropic", "gemini_sse", "gemini_array"):
        assert seen["signature"]
    summary = normalized(fmt, reply)
    assert (summary["reasoning"], summary["text"]) == (expected_reasoning(4, seed=5), expected_text(3, seed=5))


@pytest.mark.parametrize("fmt", FORMATS)
async def test_tool_call_ends_the_answer(mock, session, fmt):
    reply = await call(session, mock, fmt, "weather? [[mock tokens=2 tool=get_weather]]")
    seen = READERS[fmt](reply.body)
    assert seen["text"] == expected_text(2)
    assert seen["tool"] == ("get_weather", TOOL_ARGUMENTS)
    assert seen["finish"] == NATIVE_TOOL_FINISH[fmt] and seen["terminal"]
    summary = normalized(fmt, reply)
    assert [(c["name"], c["arguments"]) for c in summary["tool_calls"]] == [("get_weather", TOOL_ARGUMENTS)]
    assert summary["finish_reason"] == "tool_calls"


async def test_openai_tool_arguments_are_fragments_keyed_by_index(mock, session):
    reply = await call(session, mock, "openai", "[[mock tokens=0 tool=lookup]]")
    calls = [
        call
        for e in _sse(reply.body)[:-1]
        for choice in json.loads(e.data)["choices"]
        for call in choice["delta"].get("tool_calls", [])
    ]
    assert len(calls) >= 3 and all(call["index"] == 0 for call in calls)
    assert calls[0]["id"].startswith("call_") and calls[0]["function"] == {"name": "lookup", "arguments": ""}
    assert all(set(call) == {"index", "function"} and set(call["function"]) == {"arguments"} for call in calls[1:])


@pytest.mark.parametrize(
    ("fmt", "shape"),
    [
        ("openai", lambda b: b["error"]["type"] == "requests" and b["error"]["code"] == "rate_limit_exceeded"),
        ("anthropic", lambda b: b["type"] == "error" and b["error"]["type"] == "rate_limit_error"),
        ("gemini_sse", lambda b: b["error"]["code"] == 429 and b["error"]["status"] == "RESOURCE_EXHAUSTED"),
        ("ollama", lambda b: isinstance(b["error"], str)),
    ],
)
async def test_status_answers_the_provider_error_shape(mock, session, fmt, shape):
    reply = await call(session, mock, fmt, "[[mock status=429 retry_after=2 ttft_ms=5000]]")
    assert reply.status == 429
    assert reply.headers["retry-after"] == "2"
    assert reply.elapsed < 4  # "at once": ttft_ms does not apply
    assert shape(json.loads(reply.body))


@pytest.mark.parametrize("fmt", FORMATS)
async def test_error_after_sends_an_in_band_error(mock, session, fmt):
    reply = await call(session, mock, fmt, "[[mock tokens=10 error_after=3]]")
    assert reply.status == 200 and not reply.cut
    seen = READERS[fmt](reply.body)
    assert seen["text"] == expected_text(3)
    assert seen["error"]
    if fmt == "anthropic":
        assert seen["error"]["type"] == "overloaded_error" and not seen["terminal"]
    summary = normalized(fmt, reply)
    assert summary["text"] == expected_text(3)
    assert summary["finish_reason"] == "error" and summary["error"]["code"] != "stream_truncated"


@pytest.mark.parametrize("fmt", FORMATS)
async def test_truncate_after_closes_without_terminal_marker(mock, session, fmt):
    reply = await call(session, mock, fmt, "[[mock tokens=10 truncate_after=4]]")
    assert reply.status == 200
    assert reply.cut  # the chunked body never ended
    seen = READERS[fmt](reply.body) if fmt != "gemini_array" else read_gemini_array(reply.body + b"]")
    assert seen["text"] == expected_text(4)
    assert not seen["terminal"] and seen["error"] is None
    summary = normalized(fmt, reply)
    assert summary["text"] == expected_text(4)
    assert summary["error"]["code"] == "stream_truncated"
    assert mock.stats["completed"] == 1


async def test_directive_parsing_merges_and_rejects():
    body = b'{"messages": ["a [[mock tokens=3 tps=5]]", "b [[mock tokens=4 tool=f]]", "[[mocked x]]"]}'
    directive = Directive.parse(body, Directive(tokens=9, seed=2))
    assert (directive.tokens, directive.tps, directive.tool, directive.seed) == (4, 5.0, "f", 2)
    assert Directive.parse(b"no directive", Directive(tokens=9)).tokens == 9
    for bad in (b"[[mock tokns=3]]", b"[[mock tokens=-1]]", b"[[mock status=200]]", b"[[mock tokens]]"):
        with pytest.raises(DirectiveError):
            Directive.parse(bad)


async def test_bad_directive_is_a_400_in_the_provider_shape(mock, session):
    reply = await call(session, mock, "anthropic", "[[mock speed=fast]]")
    assert reply.status == 400
    error = json.loads(reply.body)["error"]
    assert error["type"] == "invalid_request_error" and "speed=fast" in error["message"]


async def test_server_defaults_apply_without_directive(session, tmp_path):
    async with MockProvider(tokens=5, seed=8) as server:
        reply = await call(session, server, "ollama", "hello")
    assert read_ollama(reply.body)["text"] == expected_text(5, seed=8)


# Replay.


@pytest.mark.parametrize(
    ("fmt", "content_type"), [("openai", "text/event-stream"), ("gemini_array", "application/json")]
)
async def test_replay_writes_the_file_byte_for_byte(mock, session, tmp_path, fmt, content_type):
    data = ("data: {\"x\": \"héllo 東京\"}\r\n\r\n" * 12).encode() + b"\xff no final newline"
    (tmp_path / "recording.sse").write_bytes(data)
    reply = await call(session, mock, fmt, "[[mock replay=recording.sse tps=1000 seed=3 tokens=99]]")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith(content_type)
    assert reply.body == data
    assert len(reply.chunks) > 1  # paced pieces arrive as separate reads


async def test_replay_absolute_path_with_status_and_truncation(mock, session, tmp_path):
    path = tmp_path / "sub" / "error.json"
    path.parent.mkdir()
    path.write_bytes(b'{"error": {"code": 503}}')
    reply = await call(session, mock, "gemini_sse", f"[[mock replay={path} status=503]]")
    assert (reply.status, reply.body) == (503, path.read_bytes())
    (tmp_path / "long.txt").write_bytes(bytes(range(256)) * 8)
    reply = await call(session, mock, "ollama", "[[mock replay=long.txt truncate_after=2]]")
    assert reply.cut and 2 <= len(reply.body) <= 128 and (bytes(range(256)) * 8).startswith(reply.body)
    reply = await call(session, mock, "ollama", "[[mock replay=missing.txt]]")
    assert reply.status == 400 and "missing.txt" in json.loads(reply.body)["error"]


# Pacing (lower bounds only).


async def test_tps_and_ttft_are_respected(mock, session):
    reply = await call(session, mock, "openai", "[[mock tokens=10 tps=100]]")
    assert reply.elapsed > 0.05  # 9 intervals of 10 ms
    reply = await call(session, mock, "ollama", "[[mock tokens=2 ttft_ms=100]]")
    assert reply.first is not None and reply.first > 0.05
    reply = await send(session, mock.url + "/v1/chat/completions",
                       {"messages": [{"role": "user", "content": "[[mock tokens=5 tps=100 ttft_ms=20]]"}]})  # fmt: skip
    assert reply.elapsed > 0.05  # not streamed: the whole generation time before the answer


# Benchmark support: send-time stamps and gates.


@pytest.mark.parametrize("fmt", FORMATS)
async def test_stamp_replaces_tokens_with_send_times(mock, session, fmt):
    before = time.monotonic_ns()
    reply = await call(session, mock, fmt, "[[mock tokens=5 stamp=1]]")
    after = time.monotonic_ns()
    text = READERS[fmt](reply.body)["text"]
    stamps = [int(value) for value in STAMP_PATTERN.findall(text)]
    assert len(stamps) == 5 and text == "".join(f"@{ns} " for ns in stamps)
    assert before <= stamps[0] <= stamps[-1] <= after
    assert stamps == sorted(stamps)


async def test_gate_holds_streams_until_released(mock, session):
    path, query, make_body = FORMATS["openai"]

    async def first_chunk_after_head() -> bytes:
        async with session.post(mock.url + path, json=make_body("[[mock tokens=2 gate=g1]]")) as resp:
            assert resp.status == 200
            return await resp.read()

    readers = [asyncio.create_task(first_chunk_after_head()) for _ in range(3)]
    for _ in range(200):
        async with session.get(mock.url + "/_mock/gates") as resp:
            if await resp.json() == {"g1": 3}:
                break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the three requests never queued at the gate")
    assert not any(task.done() for task in readers)
    async with session.post(mock.url + "/_mock/release", params={"gate": "g1"}) as resp:
        assert await resp.json() == {"gate": "g1", "released": 3}
    bodies = await asyncio.gather(*readers)
    assert all(READERS["openai"](body)["text"] == expected_text(2) for body in bodies)
    # Once open, the gate lets later requests through at once.
    assert READERS["openai"](await first_chunk_after_head())["text"] == expected_text(2)
    async with session.get(mock.url + "/_mock/gates") as resp:
        assert await resp.json() == {}
    async with session.post(mock.url + "/_mock/release") as resp:
        assert resp.status == 400


# Observability.


async def test_client_disconnect_is_counted(mock, session):
    path, query, make_body = FORMATS["anthropic"]
    async with session.post(mock.url + path, json=make_body("[[mock tokens=1000 tps=50]]")) as resp:
        await resp.content.readany()
        assert mock.stats["active"] == 1
        closed_at = time.perf_counter()
        resp.close()
    for _ in range(200):
        if mock.stats["disconnected"]:
            break
        await asyncio.sleep(0.01)
    detected_after = time.perf_counter() - closed_at
    assert mock.stats == {"requests": 1, "completed": 0, "disconnected": 1, "active": 0}
    assert detected_after < 1.0  # well within a second; in practice one loop turn


async def test_stats_request_log_and_reset(mock, session):
    path, query, make_body = FORMATS["gemini_sse"]
    body = make_body("hi [[mock tokens=1]]")
    headers = {"x-goog-api-key": "test-key", "X-Custom": "1"}
    async with session.post(mock.url + path, params=query, json=body, headers=headers) as resp:
        await resp.read()
    await call(session, mock, "anthropic", "[[mock tokens=1]]")
    async with session.get(mock.url + "/_mock/stats") as resp:
        assert await resp.json() == {"requests": 2, "completed": 2, "disconnected": 0, "active": 0}
    async with session.get(mock.url + "/_mock/requests") as resp:
        log = await resp.json()
    assert [entry["path"] for entry in log] == [path, "/v1/messages"]
    assert log[0]["query"] == {"alt": "sse"} and log[0]["body"] == body
    assert log[0]["headers"]["x-goog-api-key"] == "test-key" and log[0]["headers"]["x-custom"] == "1"
    async with session.post(mock.url + "/_mock/reset") as resp:
        assert resp.status == 200
    assert mock.stats == {"requests": 0, "completed": 0, "disconnected": 0, "active": 0}
    assert mock.requests == []


async def test_request_log_keeps_the_last_100(mock, session):
    for i in range(103):
        async with session.get(mock.url + "/v1/models", params={"i": str(i)}) as resp:
            await resp.read()
    assert [entry["query"]["i"] for entry in mock.requests] == [str(i) for i in range(3, 103)]


# Command line.


def test_parser_defaults():
    args = build_parser().parse_args([])
    defaults = (args.host, args.port, args.tokens, args.tps, args.ttft_ms, args.replay_dir)
    assert defaults == ("127.0.0.1", 9100, 20, 0.0, 0.0, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--tokens", "-1"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_main_serves_until_sigint():
    """main() in this process: a thread asks for an answer once the port is up, then sends
    SIGINT to this process, which main's signal handler turns into a clean stop."""
    port = _free_port()
    answer: dict[str, Any] = {}
    main_returned = threading.Event()

    def client() -> None:
        body = json.dumps({"stream": False, "messages": [{"role": "user", "content": "hi"}]}).encode()
        deadline = time.monotonic() + 5
        while not main_returned.is_set() and time.monotonic() < deadline:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/api/chat", data=body)
                with urllib.request.urlopen(request, timeout=5) as resp:
                    answer.update(json.loads(resp.read()))
                break
            except OSError:  # not listening yet
                time.sleep(0.01)
        if not main_returned.is_set():  # never signal a process whose handler is gone
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        status = main(["--port", str(port), "--tokens", "3"])
    finally:
        main_returned.set()
        thread.join()
    assert status == 0
    assert answer["message"]["content"] == expected_text(3)


def test_main_reports_a_port_in_use(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert main(["--port", str(sock.getsockname()[1])]) == 1
    assert "cannot listen" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", FORMATS)
async def test_burst_writes_several_tokens_per_write_with_the_same_text(mock, session, fmt):
    reply = await call(session, mock, fmt, "[[mock tokens=10 burst=4 tps=200]]")
    assert READERS[fmt](reply.body)["text"] == expected_text(10)
    plain = await call(session, mock, fmt, "[[mock tokens=10 tps=200]]")
    assert plain.body.count(b"\n") == reply.body.count(b"\n")  # same chunks, fewer writes
    # 10 tokens in writes of 4: pacing steps at 0, 4 and 8 tokens -> 2 intervals of 5 ms,
    # where one token per write takes 9.
    assert reply.elapsed < plain.elapsed


async def test_script_steps_through_faults_per_request(mock, session):
    text = "[[mock tokens=2 script=503,429,garbage,ok retry_after_ms=1500 script_id=s1]]"
    first = await call(session, mock, "openai", text)
    assert first.status == 503 and first.headers["retry-after-ms"] == "1500"
    assert (await call(session, mock, "openai", text)).status == 429
    garbage = await call(session, mock, "openai", text)
    assert garbage.status == 200 and garbage.headers["Content-Type"].startswith("text/html")
    ok = await call(session, mock, "openai", text)
    assert ok.status == 200 and READERS["openai"](ok.body)["text"] == expected_text(2)
    # past the end of the script: ok; another script_id has its own counter
    assert (await call(session, mock, "openai", text)).status == 200
    other = text.replace("s1", "s2")
    assert (await call(session, mock, "openai", other)).status == 503
    async with session.get(mock.url + "/_mock/scripts") as resp:
        assert await resp.json() == {"s1": 5, "s2": 1}
    mock.reset()
    assert (await call(session, mock, "openai", text)).status == 503


async def test_script_drop_and_stall(mock, session):
    path, query, make_body = FORMATS["anthropic"]
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with session.post(mock.url + path, json=make_body("[[mock script=drop script_id=d]]")) as resp:
            await resp.read()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            async with session.post(mock.url + path, json=make_body("[[mock script=stall script_id=t]]")) as resp:
                await resp.read()
    for _ in range(100):  # the stalled handler notices the client left
        if mock.stats["active"] == 0:
            break
        await asyncio.sleep(0.02)
    assert mock.stats["active"] == 0


def test_script_rejects_unknown_steps():
    with pytest.raises(DirectiveError, match="script step 'boom'"):
        Directive.parse("[[mock script=503,boom]]")
