"""Tests for protocol/normalizers/ollama.py: Ollama native ``/api/chat`` NDJSON.

(a) The recorded Ollama bodies of ../shared/fixtures against EXPECTED.md (docs/PROVIDERS.md §8.4),
(b) our transcripts in tests/data against their sidecars, (c) targeted cases. Every body in
(a) and (b) is also fed across ``splits`` and must give the very same events as when whole.
"""

from __future__ import annotations

import functools
import json

import pytest

from protocol.events import (
    ChoiceFinished,
    ReasoningDelta,
    ReasoningDone,
    StreamEnd,
    StreamFailed,
    TextDelta,
    ToolCall,
    Usage,
)
from protocol.normalizers.ollama import OllamaChatNormalizer
from tests.support import DATA, load_expected, requires_shared, run_normalizer, shared_fixture, splits, summarize

RECORDINGS = [
    "ollama_chat.ndjson",
    "ollama_chat_thinking.ndjson",
    "ollama_chat_tool_call.json",
    "ollama_error_400.json",
]

TRANSCRIPTS = sorted(p.name for p in DATA.glob("ollama_*.ndjson"))


@functools.cache
def recorded(name: str) -> tuple[bytes, tuple]:
    """A recording's bytes and the events it gives when fed whole."""
    body = shared_fixture(name)
    return body, tuple(run_normalizer(OllamaChatNormalizer, [body]))


def ndjson(*lines: object) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


def line(content: str = "", thinking: str | None = None, tool_calls: list | None = None, **top: object) -> dict:
    message: dict = {"role": "assistant", "content": content}
    if thinking is not None:
        message["thinking"] = thinking
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {"model": "test:1b", "created_at": "2025-06-11T09:00:00.000000000Z", "message": message, "done": False, **top}


def done(reason: str | None = "stop", prompt: int | None = 7, completion: int | None = 5) -> dict:
    last = line(done=True)
    if reason is not None:
        last["done_reason"] = reason
    if prompt is not None:
        last["prompt_eval_count"] = prompt
    if completion is not None:
        last["eval_count"] = completion
    return last


def run(body: bytes) -> list:
    return run_normalizer(OllamaChatNormalizer, [body])


def assert_contract(events: list | tuple) -> None:
    """Rules of protocol/normalizers/base.py: one terminal event, last; no empty deltas."""
    terminal = [e for e in events if isinstance(e, (StreamEnd, StreamFailed))]
    assert len(terminal) == 1 and events[-1] is terminal[0]
    for event in events:
        if isinstance(event, (TextDelta, ReasoningDelta)):
            assert event.text, event


# (a) Recordings: golden values of EXPECTED.md §8.4.


@requires_shared
@pytest.mark.parametrize("name", RECORDINGS)
def test_recording_same_events_across_splits(name):
    body, whole = recorded(name)
    assert_contract(whole)
    for pieces in splits(body, exhaustive_limit=8192):
        assert tuple(run_normalizer(OllamaChatNormalizer, pieces)) == whole, [len(p) for p in pieces]


@requires_shared
def test_recording_chat():
    _, events = recorded("ollama_chat.ndjson")
    s = summarize(events)
    assert s["text"] == "Okay, here we go!\n\n1, 2, 3, 4, 5\n"
    assert len(s["text"]) == 33
    assert s["reasoning"] == ""
    assert s["finish_reason"] == "stop"
    assert s["usage"] == {"prompt_tokens": 16, "completion_tokens": 22, "total_tokens": 38, "reasoning_tokens": None}
    assert list(events[-2:]) == [
        ChoiceFinished("stop", "stop", 0),
        StreamEnd(finish_reason="stop", usage=Usage(16, 22, 38), raw_finish_reason="stop", model="gemma3:1b"),
    ]


@requires_shared
def test_recording_chat_thinking():
    _, events = recorded("ollama_chat_thinking.ndjson")
    s = summarize(events)
    assert len(s["reasoning"]) == 120
    assert s["reasoning"].startswith('User asks: "Count from 1 to 5".')
    assert s["text"] == "1  \n2  \n3  \n4  \n5"
    assert len(s["text"]) == 17
    assert s["finish_reason"] == "stop"
    assert s["usage"] == {"prompt_tokens": 74, "completion_tokens": 57, "total_tokens": 131, "reasoning_tokens": None}
    kinds = [type(e) for e in events]
    assert kinds.count(ReasoningDone) == 1
    assert kinds.index(TextDelta) == kinds.index(ReasoningDone) + 1  # closed at the switch
    assert ReasoningDelta not in kinds[kinds.index(ReasoningDone) :]


@requires_shared
def test_recording_non_streamed_tool_call():
    _, events = recorded("ollama_chat_tool_call.json")
    s = summarize(events)
    assert s["reasoning"] == "User asks about weather in San Francisco. Use function getWeather."
    assert s["tool_calls"] == [
        {"id": "call_mo1wm122", "name": "getWeather", "arguments": {"location": "San Francisco, CA"}, "valid": True}
    ]
    assert s["text"] == ""
    # done_reason is "stop" on the wire; the hub reports tool_calls (docs/PROVIDERS.md §4.1, §10.6).
    assert s["finish_reason"] == "tool_calls"
    assert events[-1].raw_finish_reason == "stop"
    assert s["usage"] == {"prompt_tokens": 145, "completion_tokens": 44, "total_tokens": 189, "reasoning_tokens": None}
    assert [type(e) for e in events] == [ReasoningDelta, ReasoningDone, ToolCall, ChoiceFinished, StreamEnd]


@requires_shared
def test_recording_error_400_body():
    body, events = recorded("ollama_error_400.json")
    assert not body.endswith(b"\n")  # one line without its line end
    assert events == (
        StreamFailed(
            code="provider_error",
            message="registry.ollama.ai/library/gemma3:1b does not support tools",
            status=None,
            retryable=False,
        ),
    )


# (b) Our transcripts against their sidecars.


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_transcript_matches_sidecar_across_splits(name):
    path = DATA / name
    body = path.read_bytes()
    whole = run_normalizer(OllamaChatNormalizer, [body])
    assert_contract(whole)
    assert summarize(whole) == load_expected(path)
    for pieces in splits(body, exhaustive_limit=8192):
        assert run_normalizer(OllamaChatNormalizer, pieces) == whole, [len(p) for p in pieces]


def test_required_transcripts_present():
    for name in ("ollama_chat.ndjson", "ollama_tool_call.ndjson"):
        assert name in TRANSCRIPTS
        assert (DATA / (name + ".expected.json")).is_file()
    # The sidecar carries the finish reason as the hub maps it, not Ollama's "stop".
    assert load_expected(DATA / "ollama_tool_call.ndjson")["finish_reason"] == "tool_calls"
    assert b'"done_reason":"stop"' in (DATA / "ollama_tool_call.ndjson").read_bytes()


# (c) Targeted cases.


def test_missing_done_line_is_truncated():
    body = (DATA / "ollama_chat.ndjson").read_bytes()
    last = body.rstrip(b"\n").rfind(b"\n") + 1
    events = run(body[:last])
    assert not any(isinstance(e, (StreamEnd, ChoiceFinished)) for e in events)
    assert events[-1].code == "stream_truncated" and events[-1].retryable


def test_every_prefix_without_done_is_truncated():
    body = ndjson(
        line(thinking="hmm"),
        line("Grüße 👋"),
        line(tool_calls=[{"function": {"name": "f", "arguments": {"x": 1}}}]),
        done(),
    )
    done_end = len(body) - 1  # the done line is complete once its closing brace is in
    for cut in range(done_end):
        events = run(body[:cut])
        assert_contract(events)
        assert events[-1].code == "stream_truncated", (cut, events[-1])
    for cut in (done_end, len(body)):
        assert isinstance(run(body[:cut])[-1], StreamEnd)


@pytest.mark.parametrize(
    "bad",
    [b"not json", b"{oops}", b'{"message": "text"}', b'{"done": "yes"}', b"[1, 2]", b'{"message": {"content": 5}}'],
)
def test_garbage_line_is_invalid_upstream_response(bad):
    body = ndjson(line("Hi")) + bad + b"\n" + ndjson(line("never"), done())
    for pieces in splits(body):
        events = run_normalizer(OllamaChatNormalizer, pieces)
        assert [type(e) for e in events] == [TextDelta, StreamFailed]
        assert events[-1].code == "invalid_upstream_response"


def test_wrong_shape_last_line_without_newline_is_invalid_not_truncated():
    events = run(ndjson(line("Hi")) + b'{"done": "yes"}')
    assert events[-1].code == "invalid_upstream_response"


def test_nothing_after_done():
    normalizer = OllamaChatNormalizer()
    events = normalizer.feed(ndjson(line("A"), done(), line("B"), done()))
    assert [type(e) for e in events] == [TextDelta, ChoiceFinished, StreamEnd]
    assert normalizer.done
    assert normalizer.feed(ndjson(line("C"))) == []
    assert normalizer.close() == []


def test_mid_stream_error_line():
    events = run(ndjson(line("partial"), {"error": "an error was encountered while running the model: unexpected EOF"}))
    assert events == [
        TextDelta("partial"),
        StreamFailed(
            code="provider_error",
            message="an error was encountered while running the model: unexpected EOF",
            retryable=False,
        ),
    ]


def test_error_object_is_tolerated():
    events = run(ndjson({"error": {"message": "model not found", "type": "not_found"}}))
    assert events[-1].code == "provider_error" and events[-1].message == "model not found"


def test_no_empty_deltas():
    events = run(ndjson(line(""), line("", thinking=""), {"model": "m", "done": False}, line(tool_calls=[]), done()))
    assert [type(e) for e in events] == [ChoiceFinished, StreamEnd]


def test_tool_calls_synthesized_ids_and_order():
    events = run(
        ndjson(
            line(
                tool_calls=[
                    {"function": {"name": "first", "arguments": {"a": 1}}},
                    {"id": "call_real", "function": {"index": 1, "name": "second", "arguments": {}}},
                ]
            ),
            line(tool_calls=[{"function": {"name": "third", "arguments": None}}]),
            line(tool_calls=[{"function": {"name": "fourth", "arguments": '{"s": "json text"}'}}]),
            done(),
        )
    )
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.id, c.name, c.arguments, c.arguments_valid) for c in calls] == [
        ("call_0", "first", {"a": 1}, True),
        ("call_real", "second", {}, True),
        ("call_2", "third", {}, True),
        ("call_3", "fourth", {"s": "json text"}, True),
    ]
    assert calls[0].arguments_raw == '{"a":1}'
    assert events[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("reason", "with_tool", "expected"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("stop", True, "tool_calls"),
        ("length", True, "length"),
        (None, False, "stop"),
        ("unload", False, "stop"),
    ],
)
def test_done_reason_mapping(reason, with_tool, expected):
    lines = [line(tool_calls=[{"function": {"name": "f", "arguments": {}}}])] if with_tool else [line("x")]
    events = run(ndjson(*lines, done(reason)))
    assert events[-2] == ChoiceFinished(expected, reason, 0)
    assert events[-1].finish_reason == expected and events[-1].raw_finish_reason == reason


def test_usage_counts():
    assert run(ndjson(done(prompt=None, completion=None)))[-1].usage is None
    assert run(ndjson(done(prompt=None, completion=3)))[-1].usage == Usage(0, 3, 3)
    assert run(ndjson(done(prompt=12, completion=30)))[-1].usage == Usage(12, 30, 42)


def test_reasoning_closed_by_content_tool_call_and_done():
    events = run(ndjson(line(thinking="a"), line(thinking="b"), line("x"), line(thinking="c"), done()))
    assert [type(e) for e in events] == [
        ReasoningDelta,
        ReasoningDelta,
        ReasoningDone,
        TextDelta,
        ReasoningDelta,
        ReasoningDone,
        ChoiceFinished,
        StreamEnd,
    ]


def test_unicode_line_separators_preserved():
    body = ndjson(line(" \u2028 \u2029 \u0085 "), done())
    assert "\u2028".encode() in body  # raw UTF-8, not escaped
    for pieces in splits(body):
        assert summarize(run_normalizer(OllamaChatNormalizer, pieces))["text"] == " \u2028 \u2029 \u0085 "


def test_multibyte_characters_split_across_reads():
    body = ndjson(line("😊 Zürich — 東京", thinking="é"), done())
    emoji_at = body.index("😊".encode())
    for cut in range(emoji_at, emoji_at + 5):
        events = run_normalizer(OllamaChatNormalizer, [body[:cut], body[cut:]])
        assert summarize(events)["text"] == "😊 Zürich — 東京"
    for pieces in splits(body):
        s = summarize(run_normalizer(OllamaChatNormalizer, pieces))
        assert (s["text"], s["reasoning"]) == ("😊 Zürich — 東京", "é")


def test_crlf_and_blank_lines():
    lf = ndjson(line("a"), done())
    assert run(b"\n" + lf.replace(b"\n", b"\r\n\r\n")) == run(lf)


def test_empty_body_is_truncated():
    assert [e.code for e in run(b"")] == ["stream_truncated"]
