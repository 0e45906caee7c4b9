"""Tests for protocol/normalizers/openai.py: OpenAI Chat Completions and compatible servers.

Three groups: (a) the recorded streams of ../shared/fixtures against the golden values of
EXPECTED.md (docs/PROVIDERS.md §8.1), (b) our transcripts in tests/data against their sidecars,
(c) targeted cases (truncation, garbage, terminal rules, text decoding, tool-call assembly,
in-band errors). Every body in (a) and (b) is also fed across ``splits`` and must give the
very same events as when fed whole.
"""

from __future__ import annotations

import functools
import json

import pytest

from protocol.events import (
    ChoiceFinished,
    ReasoningDelta,
    ReasoningDone,
    RefusalDelta,
    StreamEnd,
    StreamFailed,
    TextDelta,
    ToolCall,
    Usage,
)
from protocol.normalizers.openai import OpenAIChatNormalizer, map_finish_reason
from tests.support import DATA, load_expected, requires_shared, run_normalizer, shared_fixture, splits, summarize

# Every 2-way split costs a full parse per position (quadratic); above this size the
# byte-at-a-time and 200 random multi-way splits of ``splits`` still run. 8000 keeps both
# tool-call bodies (fragment assembly) exhaustive; the 8.7 KB text-only body is not.
EXHAUSTIVE_LIMIT = 8000

RECORDINGS = [
    "openai_text.sse",
    "openai_tool_call_single.sse",
    "openai_tool_calls.sse",
    "openai_usage.sse",
    "openai_refusal.sse",
    "openai_multi_choice.sse",
    "openai_compat_deepseek_reasoning.sse",
    "openai_compat_openrouter_error.sse",
    "local_llamacpp_openai.sse",
]

TRANSCRIPTS = sorted(p.name for p in DATA.glob("openai_*.sse"))


@functools.cache
def recorded(name: str) -> tuple[bytes, tuple]:
    """A recording's bytes and the events it gives when fed whole."""
    body = shared_fixture(name)
    return body, tuple(run_normalizer(OpenAIChatNormalizer, [body]))


def sse(*payloads: object) -> bytes:
    """An OpenAI-style body: one ``data:`` event per payload (dicts JSON-encoded as UTF-8)."""
    parts = []
    for payload in payloads:
        data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        parts.append(f"data: {data}\n\n")
    return "".join(parts).encode()


def chunk(delta: dict | None = None, finish: str | None = None, index: int = 0, **top: object) -> dict:
    """A ``chat.completion.chunk`` with one choice."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "model": "gpt-test",
        "choices": [{"index": index, "delta": delta or {}, "finish_reason": finish}],
        **top,
    }


def usage_chunk(prompt: int, completion: int, **extra: object) -> dict:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, **extra}
    return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "choices": [], "usage": usage}


def run(body: bytes, **kwargs: object) -> list:
    return run_normalizer(functools.partial(OpenAIChatNormalizer, **kwargs), [body])


def assert_contract(events: list | tuple) -> None:
    """Rules of protocol/normalizers/base.py: one terminal event, last; no empty deltas."""
    terminal = [e for e in events if isinstance(e, (StreamEnd, StreamFailed))]
    assert len(terminal) == 1 and events[-1] is terminal[0]
    for event in events:
        if isinstance(event, (TextDelta, RefusalDelta, ReasoningDelta)):
            assert event.text, event


def finished(events, choice: int = 0) -> list[ChoiceFinished]:
    return [e for e in events if isinstance(e, ChoiceFinished) and e.choice == choice]


# (a) Recordings: golden values of EXPECTED.md §8.1.


@requires_shared
@pytest.mark.parametrize("name", RECORDINGS)
def test_recording_same_events_across_splits(name):
    body, whole = recorded(name)
    assert_contract(whole)
    for pieces in splits(body, exhaustive_limit=EXHAUSTIVE_LIMIT):
        events = run_normalizer(OpenAIChatNormalizer, pieces)
        assert tuple(events) == whole, [len(p) for p in pieces]


@requires_shared
def test_recording_text():
    _, events = recorded("openai_text.sse")
    s = summarize(events)
    assert len(s["text"]) == 159
    assert s["text"].startswith("I'm unable to provide real-time weather updates.")
    assert (s["refusal"], s["reasoning"], s["tool_calls"], s["error"]) == ("", "", [], None)
    assert s["finish_reason"] == "stop"
    assert s["usage"] == {"prompt_tokens": 14, "completion_tokens": 30, "total_tokens": 44, "reasoning_tokens": 0}
    end = events[-1]
    assert end == StreamEnd(
        finish_reason="stop",
        usage=Usage(14, 30, 44, reasoning_tokens=0),
        raw_finish_reason="stop",
        model="gpt-4o-2024-08-06",
        response_id="chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL",
    )
    assert finished(events) == [ChoiceFinished("stop", "stop", 0)]


@requires_shared
def test_recording_tool_call_single():
    _, events = recorded("openai_tool_call_single.sse")
    s = summarize(events)
    assert s["tool_calls"] == [
        {"id": "call_4XzlGBLtUe9dy3GVNV4jhq7h", "name": "get_weather", "arguments": {"city": "New York City"}, "valid": True}
    ]
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert calls[0].arguments_raw == '{"city":"New York City"}'
    assert s["text"] == ""
    assert s["finish_reason"] == "tool_calls"
    assert s["usage"] == {"prompt_tokens": 44, "completion_tokens": 16, "total_tokens": 60, "reasoning_tokens": 0}
    # The call is complete at the finish chunk: emitted just before ChoiceFinished.
    assert [type(e) for e in events] == [ToolCall, ChoiceFinished, StreamEnd]


@requires_shared
def test_recording_tool_calls_parallel():
    _, events = recorded("openai_tool_calls.sse")
    s = summarize(events)
    assert s["tool_calls"] == [
        {
            "id": "call_JMW1whyEaYG438VE1OIflxA2",
            "name": "GetWeatherArgs",
            "arguments": {"city": "Edinburgh", "country": "GB", "units": "c"},
            "valid": True,
        },
        {
            "id": "call_DNYTawLBoN8fj3KN6qU9N1Ou",
            "name": "get_stock_price",
            "arguments": {"ticker": "AAPL", "exchange": "NASDAQ"},
            "valid": True,
        },
    ]
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert calls[0].arguments_raw == '{"city": "Edinburgh", "country": "GB", "units": "c"}'
    assert calls[1].arguments_raw == '{"ticker": "AAPL", "exchange": "NASDAQ"}'
    assert s["finish_reason"] == "tool_calls"
    assert s["usage"] == {"prompt_tokens": 149, "completion_tokens": 60, "total_tokens": 209, "reasoning_tokens": 0}


@requires_shared
def test_recording_usage_chunk_after_length():
    _, events = recorded("openai_usage.sse")
    s = summarize(events)
    assert s["text"] == '{"'
    assert s["finish_reason"] == "length"
    assert s["usage"] == {"prompt_tokens": 79, "completion_tokens": 1, "total_tokens": 80, "reasoning_tokens": 0}
    assert finished(events) == [ChoiceFinished("length", "length", 0)]


@requires_shared
def test_recording_refusal():
    _, events = recorded("openai_refusal.sse")
    s = summarize(events)
    assert s["refusal"] == "I'm sorry, I can't assist with that request."
    assert s["text"] == ""
    assert s["finish_reason"] == "stop"
    assert s["usage"] == {"prompt_tokens": 79, "completion_tokens": 11, "total_tokens": 90, "reasoning_tokens": 0}


@requires_shared
def test_recording_multi_choice():
    _, events = recorded("openai_multi_choice.sse")
    temperatures = {0: 65, 1: 61, 2: 59}
    for choice, temperature in temperatures.items():
        text = summarize(events, choice=choice)["text"]
        assert len(text) == 53
        assert json.loads(text) == {"city": "San Francisco", "temperature": temperature, "units": "f"}
        assert finished(events, choice) == [ChoiceFinished("stop", "stop", choice)]
    assert {e.choice for e in events if isinstance(e, TextDelta)} == {0, 1, 2}
    ends = [e for e in events if isinstance(e, StreamEnd)]
    assert len(ends) == 1
    assert ends[0].finish_reason == "stop"
    assert ends[0].usage == Usage(79, 42, 121, reasoning_tokens=0)


@requires_shared
def test_recording_deepseek_reasoning():
    _, events = recorded("openai_compat_deepseek_reasoning.sse")
    s = summarize(events)
    assert len(s["reasoning"]) == 882
    assert s["text"] == "Hello there! 😊 How can I help you today?"
    assert len(s["text"]) == 40
    assert s["finish_reason"] == "stop"
    # Usage arrives on the finish chunk (no choices [] chunk); every other chunk says null.
    assert s["usage"] == {"prompt_tokens": 6, "completion_tokens": 212, "total_tokens": 218, "reasoning_tokens": 198}
    assert events[-1].usage.cached_tokens == 0
    kinds = [type(e) for e in events]
    assert kinds.count(ReasoningDone) == 1
    done_at = kinds.index(ReasoningDone)
    assert kinds.index(TextDelta) == done_at + 1
    assert ReasoningDelta not in kinds[done_at:]


@requires_shared
def test_recording_openrouter_error():
    _, events = recorded("openai_compat_openrouter_error.sse")
    s = summarize(events)
    assert len(s["reasoning"]) == 42
    assert s["reasoning"] == "We need to respond to a greeting. The user"
    assert s["text"] == ""
    # finish_reason "length" is repeated on two chunks: reported once, reasoning closed first.
    assert finished(events) == [ChoiceFinished("length", "length", 0)]
    assert isinstance(events[-2], ChoiceFinished) and isinstance(events[-3], ReasoningDone)
    failure = events[-1]
    assert failure == StreamFailed(
        code="provider_error",
        message="Token limit reached",
        status=400,
        retryable=False,
        provider_type=None,
        usage=Usage(43, 10, 53, reasoning_tokens=11, cached_tokens=0),
    )
    assert not any(isinstance(e, StreamEnd) for e in events)  # the [DONE] after it is ignored


@requires_shared
def test_recording_llamacpp():
    # Not in EXPECTED.md; values read off the recording (259 data events, docs/PROVIDERS.md §1.5).
    body, _ = recorded("local_llamacpp_openai.sse")
    events = run_normalizer(lambda: OpenAIChatNormalizer(provider="llamacpp"), [body])
    s = summarize(events)
    assert len(s["text"]) == 1102
    assert s["text"].startswith('Once upon a time, there was a robot named "Ark" who was made')
    assert s["text"].endswith(" could create and create other robots. K")
    assert s["finish_reason"] == "length"
    assert s["usage"] == {"prompt_tokens": 47, "completion_tokens": 256, "total_tokens": 303, "reasoning_tokens": None}
    assert events[-1].usage.cached_tokens == 46
    assert events[-1].model == "smollm2"


# (b) Our transcripts against their sidecars.


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_transcript_matches_sidecar_across_splits(name):
    path = DATA / name
    body = path.read_bytes()
    whole = run_normalizer(OpenAIChatNormalizer, [body])
    assert_contract(whole)
    assert summarize(whole) == load_expected(path)
    for pieces in splits(body, exhaustive_limit=EXHAUSTIVE_LIMIT):
        assert run_normalizer(OpenAIChatNormalizer, pieces) == whole, [len(p) for p in pieces]


def test_required_transcripts_present():
    for name in ("openai_text.sse", "openai_tool_calls.sse", "openai_compat_reasoning.sse"):
        assert name in TRANSCRIPTS
        assert (DATA / (name + ".expected.json")).is_file()


def test_transcript_obfuscation_is_not_content():
    body = (DATA / "openai_text.sse").read_bytes()
    assert b'"obfuscation":' in body
    text = summarize(run(body))["text"]
    for line in body.decode().splitlines():
        if '"obfuscation":"' in line:
            padding = line.split('"obfuscation":"')[1].split('"')[0]
            assert padding not in text


# (c) Targeted cases.


def test_truncated_after_finish_is_failure():
    body = (DATA / "openai_text.sse").read_bytes()
    assert body.endswith(b"data: [DONE]\n\n")
    events = run(body[: -len(b"data: [DONE]\n\n")])
    assert finished(events) == [ChoiceFinished("stop", "stop", 0)]
    assert not any(isinstance(e, StreamEnd) for e in events)
    failure = events[-1]
    assert isinstance(failure, StreamFailed)
    assert failure.code == "stream_truncated" and failure.retryable
    assert failure.usage == Usage(24, 35, 59, reasoning_tokens=0, cached_tokens=0)


def test_every_prefix_without_done_is_truncated():
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Grüße 👋"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": 1}'}}]}),
        chunk({}, "tool_calls"),
        usage_chunk(3, 4),
        "[DONE]",
    )
    done_at = body.index(b"data: [DONE]") + len(b"data: [DONE]")
    for cut in range(done_at):
        events = run(body[:cut])
        assert_contract(events)
        assert events[-1].code == "stream_truncated", (cut, events[-1])
    # With the marker complete, the blank line may be missing (EOF dispatches the event).
    for cut in range(done_at, len(body) + 1):
        assert isinstance(run(body[:cut])[-1], StreamEnd)


def test_truncated_stream_emits_no_pending_tool_call():
    body = sse(
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": '{"x": 1}'}}]}),
    )
    events = run(body)
    assert [type(e) for e in events] == [StreamFailed]
    assert events[0].code == "stream_truncated"


@pytest.mark.parametrize(
    "body",
    [
        b"data: {not json}\n\n",
        b"data: hello\n\n",
        b'data: {"choices": "nope"}\n\n',
        b'data: {"choices": [{"index": 0, "delta": {"content": 5}}]}\n\n',
        b"data: [1, 2]\n\n",
    ],
)
def test_garbage_is_invalid_upstream_response(body):
    events = run(body + sse("[DONE]"))
    assert len(events) == 1
    assert events[0].code == "invalid_upstream_response"
    assert events[0].retryable is False


def test_garbage_after_text_keeps_text_whatever_the_reads():
    body = sse(chunk({"content": "Hi"})) + b"data: {oops\n\n" + sse(chunk({"content": "never"}), "[DONE]")
    for pieces in splits(body):
        events = run_normalizer(OpenAIChatNormalizer, pieces)
        assert [type(e) for e in events] == [TextDelta, StreamFailed]
        assert events[0] == TextDelta("Hi", 0)
        assert events[-1].code == "invalid_upstream_response"


def test_nothing_after_done():
    normalizer = OpenAIChatNormalizer()
    events = normalizer.feed(sse(chunk({"content": "A"}), chunk({}, "stop"), "[DONE]", chunk({"content": "B"})))
    assert events[-1].finish_reason == "stop"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["A"]
    assert normalizer.done
    assert normalizer.feed(sse(chunk({"content": "C"}), "[DONE]")) == []
    assert normalizer.close() == []


def test_nothing_after_in_band_error():
    events = run(sse(chunk({"content": "A"}), {"error": {"message": "boom"}}, chunk({"content": "B"}), "[DONE]"))
    assert [type(e) for e in events] == [TextDelta, StreamFailed]


def test_no_empty_or_null_deltas():
    events = run(
        sse(
            chunk({"role": "assistant", "content": "", "refusal": None}),
            chunk({"content": None, "reasoning_content": "", "reasoning": None, "refusal": ""}),
            chunk({"tool_calls": []}),
            chunk(None),
            {"id": "x", "choices": [{"index": 0, "finish_reason": None}]},
            "[DONE]",
        )
    )
    assert [type(e) for e in events] == [StreamEnd]


def test_blank_data_event_is_skipped():
    events = run(b"data:\n\n" + b"data: \n\n" + sse(chunk({"content": "x"}), "[DONE]"))
    assert [type(e) for e in events] == [TextDelta, StreamEnd]


@pytest.mark.parametrize("encoded", [b'" \\u2028 \\u2029 \\u0085"', '" \u2028 \u2029 \u0085"'.encode()])
def test_unicode_line_separators_in_content_preserved(encoded):
    # docs/PROVIDERS.md §10.10 (OA-SDK test_special_new_line_character): raw or escaped, U+2028 is
    # text, not a line end.
    body = b'data: {"choices":[{"index":0,"delta":{"content":' + encoded + b"}}]}\n\n" + sse("[DONE]")
    for pieces in splits(body):
        events = run_normalizer(OpenAIChatNormalizer, pieces)
        assert summarize(events)["text"] == " \u2028 \u2029 \u0085"
        assert isinstance(events[-1], StreamEnd)


def test_multibyte_characters_split_across_reads():
    body = sse(chunk({"content": "😊 Zürich — 東京"}), chunk({"reasoning": "é"}), chunk({"content": "🗼"}), "[DONE]")
    emoji_at = body.index("😊".encode())
    for cut in range(emoji_at, emoji_at + 5):
        events = run_normalizer(OpenAIChatNormalizer, [body[:cut], body[cut:]])
        assert summarize(events)["text"] == "😊 Zürich — 東京🗼"
    for pieces in splits(body):
        events = run_normalizer(OpenAIChatNormalizer, pieces)
        assert summarize(events)["text"] == "😊 Zürich — 東京🗼"
        assert "\ufffd" not in summarize(events)["reasoning"]


def test_crlf_and_comments_give_same_events():
    lf = sse(chunk({"content": "a"}), chunk({}, "stop"), "[DONE]")
    crlf = b": keep-alive\r\n\r\n" + lf.replace(b"\n", b"\r\n")
    assert run(crlf) == run(lf)


def test_reasoning_spellings_and_done_before_content():
    events = run(
        sse(
            chunk({"reasoning": "think "}),  # OpenRouter / Ollama /v1 / llama.cpp
            chunk({"reasoning_content": "more", "reasoning": "more"}),  # both: not doubled
            chunk({"content": "answer"}),
            chunk({}, "stop"),
            "[DONE]",
        )
    )
    assert events[:4] == [
        ReasoningDelta("think "),
        ReasoningDelta("more"),
        ReasoningDone(0),
        TextDelta("answer"),
    ]


def test_reasoning_closed_by_tool_call_refusal_and_done():
    tool = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}}
    events = run(sse(chunk({"reasoning_content": "r"}), chunk({"tool_calls": [tool]}), chunk({}, "tool_calls"), "[DONE]"))
    assert [type(e) for e in events] == [ReasoningDelta, ReasoningDone, ToolCall, ChoiceFinished, StreamEnd]
    events = run(sse(chunk({"reasoning_content": "r"}), chunk({"refusal": "no"}), "[DONE]"))
    assert [type(e) for e in events] == [ReasoningDelta, ReasoningDone, RefusalDelta, StreamEnd]
    events = run(sse(chunk({"reasoning_content": "r"}), "[DONE]"))
    assert [type(e) for e in events] == [ReasoningDelta, ReasoningDone, StreamEnd]


def test_tool_call_fragments_interleaved_and_keyed_by_choice():
    def frag(index, arguments, **first):
        return {"index": index, "function": {"arguments": arguments, **first.pop("function", {})}, **first}

    body = sse(
        chunk({"tool_calls": [frag(0, "", id="call_a", function={"name": "alpha"})]}, index=0),
        chunk({"tool_calls": [frag(0, "", id="call_b", function={"name": "beta"})]}, index=1),
        chunk({"tool_calls": [frag(1, '{"n"', id="call_c", function={"name": "gamma"})]}, index=0),
        chunk({"tool_calls": [frag(0, '{"q": "x')]}, index=0),
        chunk({"tool_calls": [frag(0, '[1, 2]')]}, index=1),
        chunk({"tool_calls": [frag(1, ": 2}"), frag(0, 'y"}')]}, index=0),
        chunk({}, "tool_calls", index=1),
        chunk({}, "tool_calls", index=0),
        "[DONE]",
    )
    events = run(body)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.choice, c.id, c.name, c.arguments) for c in calls] == [
        (1, "call_b", "beta", [1, 2]),
        (0, "call_a", "alpha", {"q": "xy"}),
        (0, "call_c", "gamma", {"n": 2}),
    ]
    # Each choice's calls come right before its own ChoiceFinished.
    assert [type(e) for e in events] == [ToolCall, ChoiceFinished, ToolCall, ToolCall, ChoiceFinished, StreamEnd]


def test_tool_calls_with_stop_report_tool_calls():
    tool = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    events = run(sse(chunk({"tool_calls": [tool]}), chunk({}, "stop"), "[DONE]"))
    assert finished(events) == [ChoiceFinished("tool_calls", "stop", 0)]
    assert events[-1].finish_reason == "tool_calls" and events[-1].raw_finish_reason == "stop"


def test_tool_calls_flushed_at_done_without_finish_reason():
    # Ollama /v1 style: the complete call in one delta (docs/PROVIDERS.md §1.5), no finish chunk.
    tool = {"index": 0, "id": "call_x", "type": "function", "function": {"name": "get", "arguments": '{"k":"v"}'}}
    events = run(sse(chunk({"role": "assistant", "content": "", "tool_calls": [tool]}), "[DONE]"))
    assert [type(e) for e in events] == [ToolCall, StreamEnd]
    assert events[0].arguments == {"k": "v"}
    assert events[-1].finish_reason == "tool_calls" and events[-1].raw_finish_reason is None


def test_deprecated_function_call_and_missing_ids():
    events = run(
        sse(
            chunk({"function_call": {"name": "lookup", "arguments": ""}}),
            chunk({"function_call": {"arguments": '{"id": 7}'}}),
            chunk({}, "function_call"),
            "[DONE]",
        )
    )
    call = events[0]
    assert (call.id, call.name, call.arguments) == ("call_0", "lookup", {"id": 7})
    assert finished(events) == [ChoiceFinished("tool_calls", "function_call", 0)]
    # A tool call fragment without index or id: position in the list, synthesized id.
    events = run(sse(chunk({"tool_calls": [{"function": {"name": "a", "arguments": "{}"}}]}), chunk({}, "tool_calls"), "[DONE]"))
    assert events[0].id == "call_0" and events[0].name == "a"


def test_unparseable_arguments_are_kept_raw():
    tool = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a": '}}
    events = run(sse(chunk({"tool_calls": [tool]}), chunk({}, "length"), "[DONE]"))
    call = events[0]
    assert (call.arguments_valid, call.arguments, call.arguments_raw) == (False, '{"a": ', '{"a": ')
    assert events[-1].finish_reason == "length"  # length is not rewritten to tool_calls


@pytest.mark.parametrize(
    ("raw", "had_tools", "expected"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("tool_calls", True, "tool_calls"),
        ("function_call", False, "tool_calls"),
        ("content_filter", False, "content_filter"),
        ("stop", True, "tool_calls"),
        ("length", True, "length"),
        ("something_new", False, "stop"),
        (None, False, "stop"),
    ],
)
def test_map_finish_reason(raw, had_tools, expected):
    assert map_finish_reason(raw, had_tools) == expected


def test_done_without_finish_reason_is_end_with_raw_none():
    events = run(sse(chunk({"content": "partial"}), "[DONE]"))
    assert events[-1] == StreamEnd(finish_reason="stop", raw_finish_reason=None, model="gpt-test", response_id="chatcmpl-test")


@pytest.mark.parametrize(
    ("error", "code", "status", "retryable", "provider_type", "message"),
    [
        ({"code": 429, "message": "Rate limit exceeded", "type": "rate_limit_error"}, "rate_limited", 429, True, "rate_limit_error", "Rate limit exceeded"),
        ({"code": "503", "message": "Service unavailable"}, "provider_error", 503, True, None, "Service unavailable"),
        ({"code": 400, "message": "Token limit reached"}, "provider_error", 400, False, None, "Token limit reached"),
        ({"message": "The server had an error", "type": "server_error", "param": None, "code": None}, "provider_error", None, False, "server_error", "The server had an error"),
        ({"message": "too long", "code": "context_length_exceeded"}, "provider_error", None, False, "context_length_exceeded", "too long"),
        ({"code": 1234, "message": "odd"}, "provider_error", None, False, None, "odd"),
        ({"type": "overloaded"}, "provider_error", None, False, "overloaded", "An error occurred during streaming"),
        ("upstream went away", "provider_error", None, False, None, "upstream went away"),
    ],
)
def test_in_band_error_mapping(error, code, status, retryable, provider_type, message):
    events = run(sse(chunk({"content": "x"}), usage_chunk(5, 1), {"error": error}, "[DONE]"), provider="openrouter")
    assert events[0] == TextDelta("x")
    assert events[-1] == StreamFailed(
        code=code,
        message=message,
        status=status,
        retryable=retryable,
        provider_type=provider_type,
        usage=Usage(5, 1, 6),
    )


@pytest.mark.parametrize("error", [None, {}, "", False, 0])
def test_falsy_error_is_ignored(error):
    # OA-SDK raises only for a truthy data["error"] (docs/PROVIDERS.md §1.1).
    events = run(sse(chunk({"content": "ok"}, error=error), chunk({}, "stop"), "[DONE]"))
    assert [type(e) for e in events] == [TextDelta, ChoiceFinished, StreamEnd]


def test_usage_last_non_null_wins():
    events = run(
        sse(
            chunk({"content": "a"}, usage=None),
            chunk({}, "stop", usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}),
            usage_chunk(
                9,
                4,
                completion_tokens_details={"reasoning_tokens": 3},
                prompt_tokens_details={"cached_tokens": 8},
            ),
            {"id": "x", "choices": [], "usage": None},
            "[DONE]",
        )
    )
    assert events[-1].usage == Usage(9, 4, 13, reasoning_tokens=3, cached_tokens=8)
    # A server that leaves total_tokens out: prompt + completion.
    events = run(sse({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}, "[DONE]"))
    assert events[-1].usage == Usage(2, 3, 5)


def test_provider_name_is_used():
    normalizer = OpenAIChatNormalizer(provider="deepseek")
    assert normalizer.provider == "deepseek"
    assert OpenAIChatNormalizer().provider == "openai"
    events = normalizer.feed(sse(chunk({"content": "x"})))
    failure = normalizer.close()[-1]
    assert events == [TextDelta("x")]
    assert failure.code == "stream_truncated" and "deepseek" in failure.message


def test_empty_body_is_truncated():
    events = run(b"")
    assert [e.code for e in events] == ["stream_truncated"]


def test_wrong_shape_pending_event_at_eof_is_invalid_not_truncated():
    # Valid JSON of the wrong shape cannot be a cut: the EOF policy does not hide it.
    events = run(sse(chunk({"content": "Hi"})) + b'data: {"choices": "nope"}')
    assert events[-1].code == "invalid_upstream_response"
