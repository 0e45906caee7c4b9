"""Tests for protocol/normalizers/anthropic.py.

(a) every recorded Anthropic stream in ../shared/fixtures against the golden values of
EXPECTED.md §8.2, fed whole and across ``splits`` (every split must give the same events);
(b) our own transcripts in tests/data against their ``.expected.json`` sidecars;
(c) targeted cases: truncation, garbage, the terminal rule, unknown and ping events, mappings.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from protocol.events import (
    ChoiceFinished,
    ReasoningDelta,
    ReasoningDone,
    StreamEnd,
    StreamFailed,
    TextDelta,
    ToolCall,
)
from protocol.normalizers.anthropic import AnthropicNormalizer
from tests.support import (
    DATA,
    load_expected,
    requires_shared,
    run_normalizer,
    shared_fixture,
    splits,
    summarize,
)


def run(body: bytes | list[bytes]) -> list[Any]:
    return run_normalizer(AnthropicNormalizer, [body] if isinstance(body, bytes) else body)


def assert_well_formed(events: list[Any]) -> None:
    """The contract of protocol/normalizers/base.py, checked on one event list."""
    terminals = [i for i, e in enumerate(events) if isinstance(e, (StreamEnd, StreamFailed))]
    assert terminals == [len(events) - 1], "exactly one terminal event, and it is the last"
    for event in events:
        if isinstance(event, TextDelta):
            assert event.text
        if isinstance(event, ReasoningDelta):
            assert event.text or event.signature or event.redacted


def run_all_splits(body: bytes, **kwargs: Any) -> list[Any]:
    """Events of the whole body, after checking that every split gives exactly the same."""
    whole = run(body)
    assert_well_formed(whole)
    for pieces in splits(body, **kwargs):
        assert run(pieces) == whole, f"split into {len(pieces)} reads differs"
    return whole


def sse(*events: tuple[str, str]) -> bytes:
    return "".join(f"event: {name}\ndata: {data}\n\n" for name, data in events).encode()


# (a) Recordings, EXPECTED.md §8.2.

GOLDEN: dict[str, dict[str, Any]] = {
    "anthropic_text.sse": {
        "text": "1\n2\n3\n4\n5",
        "finish_reason": "stop",
        "raw_finish_reason": "end_turn",
        "usage": (15, 13, 28),
        "model": "claude-3-opus-20240229",
        "response_id": "msg_01Ju7oPaDmjgrhWq8gNP4AUj",
    },
    "anthropic_tool_use.sse": {
        "text": "I'll check the current weather in Paris for you.",
        "tool_calls": [
            {"id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "name": "get_weather", "arguments": {"location": "Paris"}, "valid": True}
        ],
        "finish_reason": "tool_calls",
        "usage": (377, 65, 442),
    },
    "anthropic_tool_use_max_tokens.sse": {
        "text_len": 135,
        "text_head": "I'll create a comprehensive tax guide",
        "tool_names": ["make_file"],
        "tool_valid": [False],
        "finish_reason": "length",
        "raw_finish_reason": "max_tokens",
        "usage": (450, 124, 574),
    },
    "anthropic_thinking.sse": {
        "text_len": 1021,
        "text_head": "Here are the basic steps for safely crossing the street:",
        "reasoning_len": 202,
        "signature_lens": [504],
        "finish_reason": "stop",
        "usage": (43, 282, 325),
    },
    "anthropic_redacted_thinking.sse": {
        "text_len": 359,
        "text_head": "I notice that you've sent what",
        "reasoning_len": 0,
        "redacted": 2,
        "finish_reason": "stop",
        "usage": (92, 189, 281),
    },
    "anthropic_web_search_citations.sse": {
        "text_len": 1335,
        "text_head": "Based on the search results,",
        "reasoning_len": 405,
        "signature_lens": [776],
        "tool_calls": [
            {"id": "srvtoolu_01FYcUbzEaqqQh1WBRj1QX3h", "name": "web_search", "arguments": {"query": "San Francisco weather today"}, "valid": True},
            {"id": "srvtoolu_01FDqc7ruGpVRoNuD5G6jkUx", "name": "web_search", "arguments": {"query": "San Francisco weather September 16 2025"}, "valid": True},
        ],
        "server": [True, True],
        "citations": 7,
        "finish_reason": "stop",
        "usage": (22397, 637, 23034),
    },
    "anthropic_error.sse": {
        "text": "",
        "finish_reason": "error",
        "error": {"code": "provider_error", "status": 529},
        "failed": ("overloaded_error", "Overloaded", True),
        "usage": None,
    },
    # Not in EXPECTED.md: llama-server's Anthropic endpoint (REAL_LLM.md). input_tokens 13 plus
    # cache_read_input_tokens 24 gives prompt 37 (module docstring, usage policy).
    "local_llamacpp_anthropic.sse": {
        "text": "A moon is a celestial body in the night sky that orbits around the Earth, often being "
        "illuminated by the Earth's gravitational pull.",
        "finish_reason": "stop",
        "usage": (37, 27, 64),
        "cached_tokens": 24,
        "model": "smollm2",
    },
}


def check_golden(events: list[Any], golden: dict[str, Any]) -> None:
    summary = summarize(events)
    last = events[-1]
    tool_calls = [e for e in events if isinstance(e, ToolCall)]
    for key, want in golden.items():
        if key == "text":
            assert summary["text"] == want
        elif key == "text_len":
            assert len(summary["text"]) == want
        elif key == "text_head":
            assert summary["text"].startswith(want)
        elif key == "reasoning_len":
            assert len(summary["reasoning"]) == want
        elif key == "signature_lens":
            assert [len(s) for s in summary["signatures"]] == want
        elif key == "tool_names":
            assert [c.name for c in tool_calls] == want
        elif key == "tool_valid":
            assert [c.arguments_valid for c in tool_calls] == want
        elif key == "server":
            assert [c.server for c in tool_calls] == want
        elif key == "usage":
            if want is None:
                assert summary["usage"] is None
            else:
                u = summary["usage"]
                assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]) == want
        elif key == "cached_tokens":
            assert last.usage.cached_tokens == want
        elif key in ("raw_finish_reason", "model", "response_id"):
            assert getattr(last, key) == want
        elif key == "failed":
            assert isinstance(last, StreamFailed)
            assert (last.provider_type, last.message, last.retryable) == want
        else:
            assert summary[key] == want, key


@requires_shared
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_recording_matches_golden_across_splits(name: str) -> None:
    body = shared_fixture(name)
    # Every 2-way split only up to 4 KB: the 59 KB web-search recording gets the one-byte reads
    # and the random multi-way splits.
    events = run_all_splits(body, exhaustive_limit=4096)
    check_golden(events, GOLDEN[name])


@requires_shared
def test_recording_unclosed_tool_block_is_emitted_before_the_end() -> None:
    # docs/PROVIDERS.md §2.6: no content_block_stop for index 1; the call is flushed at message_delta.
    events = run(shared_fixture("anthropic_tool_use_max_tokens.sse"))
    kinds = [type(e) for e in events[-3:]]
    assert kinds == [ToolCall, ChoiceFinished, StreamEnd]
    call = events[-3]
    assert call.id == "toolu_01EKqbqmZrGRXy18eN7m9kvY"
    assert call.arguments_raw.startswith('{"filename": "taxes.txt", "lines_of_text": [')
    assert call.arguments == call.arguments_raw  # invalid JSON: the raw string is kept


@requires_shared
def test_recording_thinking_order() -> None:
    events = run(shared_fixture("anthropic_thinking.sse"))
    kinds = [type(e).__name__ for e in events]
    done = kinds.index("ReasoningDone")
    assert set(kinds[:done]) == {"ReasoningDelta"}
    assert events[done - 1].signature is not None and events[done - 1].text == ""
    assert kinds[done + 1] == "TextDelta"
    assert kinds.count("ReasoningDone") == 1


@requires_shared
def test_recording_redacted_blocks_are_kept_opaque() -> None:
    events = run(shared_fixture("anthropic_redacted_thinking.sse"))
    reasoning = [e for e in events if isinstance(e, (ReasoningDelta, ReasoningDone))]
    assert [type(e) for e in reasoning] == [ReasoningDelta, ReasoningDone] * 2
    assert reasoning[0].redacted.startswith("EqkECkYIBxgCKkA8")
    assert reasoning[0].text == "" and reasoning[0].signature is None


# (b) Our transcripts (tests/data/anthropic_*.sse) against their sidecars.

TRANSCRIPTS = sorted(p.name for p in DATA.glob("anthropic_*.sse"))


def test_transcripts_exist() -> None:
    assert {"anthropic_text.sse", "anthropic_thinking_tool_use.sse"} <= set(TRANSCRIPTS)


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_transcript_matches_sidecar_across_splits(name: str) -> None:
    path = DATA / name
    events = run_all_splits(path.read_bytes())
    assert summarize(events) == load_expected(path)


def test_transcript_every_prefix_is_truncated_until_message_stop() -> None:
    """EOF anywhere before the complete ``message_stop`` JSON is a truncated stream, never a
    success, and never mistaken for garbage (docs/PROVIDERS.md §6.5, §10.4)."""
    body = (DATA / "anthropic_text.sse").read_bytes()
    stop_end = body.rindex(b"}") + 1  # end of the message_stop JSON
    for cut in range(len(body) + 1):
        last = run(body[:cut])[-1]
        if cut >= stop_end:
            assert isinstance(last, StreamEnd), cut
        else:
            assert isinstance(last, StreamFailed) and last.code == "stream_truncated", cut


# (c) Targeted cases.

START = '{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":10,"cache_creation_input_tokens":3,"cache_read_input_tokens":5,"output_tokens":1}}}'
TEXT_START = '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'
STOP = '{"type":"message_stop"}'


def text_delta(text: str, index: int = 0) -> str:
    return msgspec.json.encode({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}).decode()


def message_delta(stop_reason: str | None, usage: str = '{"output_tokens":7}') -> str:
    reason = "null" if stop_reason is None else f'"{stop_reason}"'
    return f'{{"type":"message_delta","delta":{{"stop_reason":{reason},"stop_sequence":null}},"usage":{usage}}}'


def test_truncated_keeps_the_usage_so_far() -> None:
    events = run(sse(("message_start", START), ("content_block_start", TEXT_START), ("content_block_delta", text_delta("Hi"))))
    assert summarize(events)["text"] == "Hi"
    last = events[-1]
    assert isinstance(last, StreamFailed)
    assert (last.code, last.retryable) == ("stream_truncated", True)
    assert last.usage is not None and last.usage.prompt_tokens == 18


def test_message_delta_without_message_stop_is_truncated() -> None:
    events = run(sse(("message_start", START), ("message_delta", message_delta("end_turn"))))
    assert not any(isinstance(e, (StreamEnd, ChoiceFinished)) for e in events)
    assert events[-1].code == "stream_truncated"


def test_garbage_is_invalid_upstream_response_and_keeps_earlier_events() -> None:
    body = sse(("message_start", START), ("content_block_start", TEXT_START), ("content_block_delta", text_delta("Hi")))
    body += b"event: content_block_delta\ndata: {not json\n\n" + sse(("content_block_delta", text_delta("lost")), ("message_stop", STOP))
    for pieces in ([body], [body[:-3], body[-3:]]):
        events = run(pieces)
        assert summarize(events)["text"] == "Hi"
        assert isinstance(events[-1], StreamFailed)
        assert events[-1].code == "invalid_upstream_response"


@pytest.mark.parametrize("data", ["[1, 2]", '"text"', "42", '{"type":"content_block_delta","index":"zero","delta":{"type":"text_delta","text":"x"}}'])
def test_wrong_shapes_are_invalid(data: str) -> None:
    events = run(sse(("message_start", START), ("content_block_delta", data), ("message_stop", STOP)))
    assert [type(e) for e in events] == [StreamFailed]
    assert events[0].code == "invalid_upstream_response"


# End of body (protocol/normalizers/base.py): a last event that does not parse is a cut when
# its text is not well-formed JSON, garbage when it is JSON of the wrong shape.

CUT_AT_EOF = [
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"wor',
    '{"type":"content_block_delta","index":"zero",',  # msgspec: "expected int" before the cut
    "[",  # msgspec: ValidationError "expected object", yet a cut
]
WRONG_SHAPE_AT_EOF = [
    "[1, 2]",
    "42",
    '{"type":"content_block_delta","index":"zero","delta":{"type":"text_delta","text":"x"}}',
    '{"type":"message_stop","index":"zero"}',
]


@pytest.mark.parametrize("end", ["", "\n"])
@pytest.mark.parametrize("data", CUT_AT_EOF)
def test_last_event_cut_mid_json_at_eof_is_truncated(data: str, end: str) -> None:
    body = sse(("message_start", START), ("content_block_start", TEXT_START), ("content_block_delta", text_delta("Hi")))
    body += f"event: content_block_delta\ndata: {data}{end}".encode()
    for pieces in splits(body, random_count=20):
        events = run(pieces)
        assert summarize(events)["text"] == "Hi"
        last = events[-1]
        assert (type(last), last.code, last.retryable) == (StreamFailed, "stream_truncated", True)
        assert last.usage is not None and last.usage.prompt_tokens == 18


@pytest.mark.parametrize("end", ["", "\n"])
@pytest.mark.parametrize("data", WRONG_SHAPE_AT_EOF)
def test_last_event_of_wrong_shape_at_eof_is_invalid(data: str, end: str) -> None:
    name = "message_stop" if "message_stop" in data else "content_block_delta"
    body = sse(("message_start", START), ("content_block_start", TEXT_START), ("content_block_delta", text_delta("Hi")))
    body += f"event: {name}\ndata: {data}{end}".encode()
    for pieces in splits(body, random_count=20):
        events = run(pieces)
        assert summarize(events)["text"] == "Hi"
        assert [type(e) for e in events][-1] is StreamFailed
        assert (events[-1].code, events[-1].retryable) == ("invalid_upstream_response", False)


def test_nothing_after_the_terminal_event() -> None:
    normalizer = AnthropicNormalizer()
    events = normalizer.feed(sse(("message_start", START), ("message_stop", STOP), ("content_block_delta", text_delta("late"))) + b"garbage\n\n")
    assert [type(e) for e in events] == [ChoiceFinished, StreamEnd]
    assert normalizer.done
    assert normalizer.feed(sse(("content_block_delta", text_delta("later")))) == []
    assert normalizer.close() == []


def test_nothing_after_an_error_event() -> None:
    body = sse(("message_start", START), ("error", '{"type":"error","error":{"type":"api_error","message":"Internal server error"}}'), ("message_stop", STOP))
    events = run(body)
    assert [type(e) for e in events] == [StreamFailed]
    assert (events[0].status, events[0].retryable, events[0].provider_type) == (500, True, "api_error")
    assert events[0].usage.prompt_tokens == 18  # usage seen before the failure


def test_ping_is_ignored() -> None:
    body = sse(("message_start", START), ("content_block_start", TEXT_START), ("ping", '{"type": "ping"}'),
               ("content_block_delta", text_delta("a")), ("ping", '{"type": "ping"}'), ("message_stop", STOP))
    events = run(body)
    assert [type(e) for e in events] == [TextDelta, ChoiceFinished, StreamEnd]


def test_unknown_event_block_and_delta_types_are_ignored() -> None:
    body = sse(
        ("message_start", START),
        # An unknown named event, even with a body that is not JSON: dropped by name.
        ("content_block_teleport", "<<binary>>"),
        # An unknown event type with no event: line, whose fields clash with ours.
        ("message", '{"type":"message_annotation","message":"a string","index":"x"}'),
        # A beta block type (AN-SDK compaction fixture) and its own delta type.
        ("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"compaction","text":{"summary":1}}}'),
        ("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"compaction_delta","content":"x"}}'),
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        ("content_block_start", '{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}'),
        ("content_block_delta", '{"type":"content_block_delta","index":1,"delta":{"type":"future_delta","text":{"not":"a string"}}}'),
        ("content_block_delta", text_delta("kept", 1)),
        ("content_block_stop", '{"type":"content_block_stop","index":1}'),
        # A result block (ignored, like web_search_tool_result).
        ("content_block_start", '{"type":"content_block_start","index":2,"content_block":{"type":"code_execution_tool_result","tool_use_id":"srvtoolu_1","content":{"stdout":"4"}}}'),
        ("content_block_stop", '{"type":"content_block_stop","index":2}'),
        ("message_delta", message_delta("end_turn")),
        ("message_stop", STOP),
    )
    events = run(body)
    assert [type(e) for e in events] == [TextDelta, ChoiceFinished, StreamEnd]
    assert events[0].text == "kept"


def test_usage_merges_field_by_field_and_counts_the_cache() -> None:
    body = sse(("message_start", START), ("message_delta", message_delta("end_turn", '{"output_tokens":40,"cache_read_input_tokens":6}')), ("message_stop", STOP))
    end = run(body)[-1]
    # prompt = input 10 (message_start) + cache creation 3 (message_start) + cache read 6 (delta)
    assert end.usage.prompt_tokens == 19
    assert (end.usage.completion_tokens, end.usage.total_tokens, end.usage.cached_tokens) == (40, 59, 6)
    assert (end.model, end.response_id) == ("claude-x", "msg_1")


def test_no_usage_at_all_gives_none() -> None:
    end = run(sse(("message_start", '{"type":"message_start","message":{"id":"m"}}'), ("message_stop", STOP)))[-1]
    assert isinstance(end, StreamEnd)
    assert (end.usage, end.finish_reason, end.raw_finish_reason) == (None, "stop", None)


@pytest.mark.parametrize(
    ("raw", "mapped"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("some_future_reason", "stop"),
    ],
)
def test_stop_reason_mapping(raw: str, mapped: str) -> None:
    events = run(sse(("message_start", START), ("message_delta", message_delta(raw)), ("message_stop", STOP)))
    assert events[-2] == ChoiceFinished(mapped, raw)
    assert (events[-1].finish_reason, events[-1].raw_finish_reason) == (mapped, raw)


@pytest.mark.parametrize(
    ("error_type", "status", "code", "retryable"),
    [
        ("overloaded_error", 529, "provider_error", True),
        ("rate_limit_error", 429, "rate_limited", True),
        ("api_error", 500, "provider_error", True),
        ("invalid_request_error", 400, "provider_error", False),
        ("authentication_error", 401, "provider_error", False),
        ("permission_error", 403, "provider_error", False),
        ("not_found_error", 404, "provider_error", False),
        ("request_too_large", 413, "provider_error", False),
        ("brand_new_error", None, "provider_error", False),
    ],
)
def test_error_event_mapping(error_type: str, status: int | None, code: str, retryable: bool) -> None:
    data = f'{{"type":"error","error":{{"details":null,"type":"{error_type}","message":"boom"}},"request_id":"req_011C"}}'
    [failed] = run(sse(("error", data)))
    assert isinstance(failed, StreamFailed)
    assert (failed.code, failed.status, failed.retryable, failed.provider_type, failed.message) == (code, status, retryable, error_type, "boom")


def tool_body(fragments: list[str], *, close_block: bool = True, kind: str = "tool_use", start_input: str = "{}") -> bytes:
    events = [
        ("message_start", START),
        ("content_block_start", f'{{"type":"content_block_start","index":0,"content_block":{{"type":"{kind}","id":"toolu_9","name":"noop","input":{start_input}}}}}'),
    ]
    for fragment in fragments:
        delta = msgspec.json.encode({"type": "input_json_delta", "partial_json": fragment}).decode()
        events.append(("content_block_delta", f'{{"type":"content_block_delta","index":0,"delta":{delta}}}'))
    if close_block:
        events.append(("content_block_stop", '{"type":"content_block_stop","index":0}'))
    events.append(("message_stop", STOP))
    return sse(*events)


def test_tool_with_only_an_empty_fragment_has_empty_object_arguments() -> None:
    [call] = [e for e in run(tool_body([""])) if isinstance(e, ToolCall)]
    assert (call.arguments, call.arguments_valid, call.server) == ({}, True, False)


def test_tool_arguments_split_mid_token_and_mid_escape() -> None:
    fragments = ['{"pa', 'th": "C:\\', '\\tmp\\u00', 'e9", "n": 1', "2}"]
    [call] = [e for e in run(tool_body(fragments)) if isinstance(e, ToolCall)]
    assert call.arguments == {"path": "C:\\tmp\u00e9", "n": 12}
    assert call.arguments_raw == "".join(fragments)


def test_tool_block_closed_by_message_stop_without_message_delta() -> None:
    events = run(tool_body(['{"a": [1, 2'], close_block=False, kind="server_tool_use"))
    assert [type(e) for e in events] == [ToolCall, ChoiceFinished, StreamEnd]
    assert (events[0].arguments_valid, events[0].arguments, events[0].server) == (False, '{"a": [1, 2', True)


def test_tool_input_given_whole_in_content_block_start() -> None:
    [call] = [e for e in run(tool_body([], start_input='{"q": "x"}')) if isinstance(e, ToolCall)]
    assert call.arguments == {"q": "x"}


def test_empty_text_and_thinking_deltas_are_dropped() -> None:
    body = sse(
        ("message_start", START),
        ("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}'),
        ("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":""}}'),
        ("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}'),
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        ("content_block_start", '{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}'),
        ("content_block_delta", text_delta("", 1)),
        ("message_stop", STOP),
    )
    events = run(body)
    assert events[:2] == [ReasoningDelta("", signature="c2ln"), ReasoningDone()]
    assert [type(e) for e in events[2:]] == [ChoiceFinished, StreamEnd]
