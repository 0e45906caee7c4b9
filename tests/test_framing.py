"""Tests for protocol/framing.py: SSEDecoder, NDJSONDecoder, JSONArrayDecoder.

SSE rules are those of WHATWG HTML §9.2.6 "Interpreting an event stream" (docs/PROVIDERS.md §5);
where a web-platform-tests file (``eventsource/format-*.htm``) or an SDK regression test
covers the same rule, it is named in the test's comment. The hub's EOF policy (a pending
event is dispatched at ``close()`` with ``unterminated`` set, docs/PROVIDERS.md §10.9) replaces the
spec's "discard at EOF".
"""

from __future__ import annotations

import itertools
import re

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import FramingError
from protocol.framing import JSONArrayDecoder, NDJSONDecoder, SSEDecoder, SSEEvent, StrayLine
from tests.support import SHARED_FIXTURES, requires_shared, shared_fixture, splits

BOM = b"\xef\xbb\xbf"


def parse_sse(pieces: list[bytes] | bytes, *, collect_stray: bool = False) -> tuple[list, bool]:
    """Feed ``pieces`` to a fresh SSEDecoder, close it; return (all items, unterminated)."""
    if isinstance(pieces, bytes):
        pieces = [pieces]
    decoder = SSEDecoder(collect_stray=collect_stray)
    out: list = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    out.extend(decoder.close())
    return out, decoder.unterminated


def parse_ndjson(pieces: list[bytes] | bytes) -> tuple[list[bytes], bool]:
    if isinstance(pieces, bytes):
        pieces = [pieces]
    decoder = NDJSONDecoder()
    out: list[bytes] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    out.extend(decoder.close())
    return out, decoder.unterminated


def parse_array(pieces: list[bytes] | bytes) -> tuple[list[bytes], bool]:
    if isinstance(pieces, bytes):
        pieces = [pieces]
    decoder = JSONArrayDecoder()
    out: list[bytes] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    out.extend(decoder.close())
    return out, decoder.complete


def two_way_splits(data: bytes) -> list[list[bytes]]:
    """The body whole, one byte at a time, and cut once at every position."""
    return [[data], [data[i : i + 1] for i in range(len(data))]] + [
        [data[:i], data[i:]] for i in range(1, len(data))
    ]


def datas(items: list) -> list[str]:
    return [item.data for item in items if isinstance(item, SSEEvent)]


# SSE: line ends.


def test_sse_cr_lf_crlf_mixed():
    # §9.2.6: lines end with CRLF, a lone LF or a lone CR. WPT format-newlines.htm:
    # "data:test\r\ndata\ndata:test\r\n\r" gives "test\n\ntest".
    events, unterminated = parse_sse(b"data:test\r\ndata\ndata:test\r\n\r")
    assert events == [SSEEvent("test\n\ntest")]
    assert not unterminated


def test_sse_each_line_end_alone_terminates_an_event():
    # §9.2.6: the blank line may itself end with CR, LF or CRLF.
    body = b"data: a\r\rdata: b\n\ndata: c\r\n\r\ndata: d\r\n\rdata: e\n\r\n"
    assert parse_sse(body) == ([SSEEvent(x) for x in "abcde"], False)


def test_sse_crlf_split_across_reads_is_one_line_end():
    # docs/PROVIDERS.md §5 "CRLF split across network chunks" (openai-agents-python#4214, sseclient#11):
    # the LF after a CR that ended the previous read is not a second (blank) line.
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []  # a spurious blank line would dispatch "a" here
    assert decoder.feed(b"\n") == []  # ... and "b" here
    assert decoder.feed(b"\r") == [SSEEvent("a\nb")]  # a real blank line (CR)
    assert decoder.feed(b"\n") == []  # the LF of that CRLF
    assert decoder.feed(b"data: c\n\n") == [SSEEvent("c")]
    assert decoder.close() == []
    assert not decoder.unterminated


def test_sse_crlf_blank_line_split_across_reads():
    # The CRLF of the blank line itself straddles two reads: one dispatch, not two blank lines
    # (a second blank line would be harmless here, so check the next event is intact too).
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\n\r") == [SSEEvent("a")]
    assert decoder.feed(b"\ndata: b\r\n") == []
    assert decoder.feed(b"data: c\r\n\r\n") == [SSEEvent("b\nc")]


def test_sse_lone_cr_at_end_of_read_followed_by_non_lf():
    # §9.2.6: a lone CR is a full line end; the byte after it (here in the next read) starts
    # the next line and must not be swallowed.
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\r") == [SSEEvent("a\nb")]
    # A CR then CR across reads: two line ends, so the second one dispatches.
    assert decoder.feed(b"data: c\r") == []
    assert decoder.feed(b"\rdata: d\n\n") == [SSEEvent("c"), SSEEvent("d")]


@pytest.mark.parametrize("text", ["😊", "é", "€", "a😊é€z"])
def test_sse_multibyte_character_split_at_every_byte(text):
    # OA-SDK test_multi_byte_character_multiple_chunks; docs/PROVIDERS.md §5 (eko #287 emitted U+FFFD).
    body = f"data: {text}\n\n".encode()
    for pieces in two_way_splits(body):
        assert parse_sse(pieces) == ([SSEEvent(text)], False), pieces


def test_sse_invalid_utf8_becomes_replacement_character():
    # §9.2.6: the stream is decoded with "UTF-8 decode" (errors become U+FFFD).
    assert datas(parse_sse(b"data: a\xffb\n\n")[0]) == ["a\ufffdb"]
    # A sequence cut by the line end is one U+FFFD, and the line end still counts, also
    # when the cut sequence and the LF arrive in different reads.
    assert datas(parse_sse([b"data: x\xf0\x9f", b"\ndata: y\n\n"])[0]) == ["x\ufffd\ny"]
    # A lone continuation byte.
    assert datas(parse_sse(b"data: \x80\n\n")[0]) == ["\ufffd"]


def test_sse_unicode_line_separators_are_not_line_breaks():
    # docs/PROVIDERS.md §5, §10.10; OA-SDK test_special_new_line_character ({"content":" \u2028"}).
    # str.splitlines() would also split on VT, FF, FS, GS, RS, NEL, LS and PS.
    text = '{"content":" \u2028"} a\u2029b\x85c\x0bd\x0ce\x1cf\x1dg\x1eh'
    events, _ = parse_sse(f"data: {text}\n\n".encode())
    assert events == [SSEEvent(text)]


# SSE: fields.


def test_sse_comment_lines_are_ignored():
    # §9.2.6: "If the line starts with a U+003A COLON character (:): Ignore the line."
    body = b": keep-alive\ndata: a\n:\n: data: b\ndata: c\n\n:only a comment\n\n"
    events, _ = parse_sse(body, collect_stray=True)  # comments are not stray lines either
    assert events == [SSEEvent("a\nc")]


def test_sse_multiline_data_joined_with_lf():
    # OA-SDK tests/test_streaming.py::test_multiple_data_lines expects '{\n"foo":\n\n\ntrue}'.
    pieces = [b"event: ping\n", b"data: {\n", b'data: "foo":\n', b"data: \n", b"data:\n", b"data: true}\n", b"\n\n"]
    assert parse_sse(pieces) == ([SSEEvent('{\n"foo":\n\n\ntrue}', "ping")], False)


def test_sse_exactly_one_leading_space_is_stripped():
    # §9.2.6: "If value starts with a U+0020 SPACE character, remove it from value."
    # WPT format-leading-space.htm: "data:\ttest\rdata: \r\ndata:test\n\n" gives "\ttest\n\ntest".
    assert datas(parse_sse(b"data:  x\n\n")[0]) == [" x"]
    assert datas(parse_sse(b"data:\ttest\rdata: \r\ndata:test\n\n")[0]) == ["\ttest\n\ntest"]
    assert parse_sse(b"event:  sp\ndata: x\n\n")[0] == [SSEEvent("x", " sp")]


def test_sse_space_after_colon_is_optional():
    # §9.2.6: "data:x" and "data: x" are the same field and value.
    assert parse_sse(b"data:x\n\n") == parse_sse(b"data: x\n\n") == ([SSEEvent("x")], False)
    assert parse_sse(b"event:e\ndata:x\n\n")[0] == parse_sse(b"event: e\ndata: x\n\n")[0]


def test_sse_field_without_colon_has_empty_value():
    # §9.2.6: a line without a colon is a field name with the empty string as value, so a
    # lone "data" appends an empty line. WPT format-field-data.htm:
    # "data:\n\ndata\ndata\n\ndata:test\n\n" gives "", "\n", "test".
    events, _ = parse_sse(b"data:\n\ndata\ndata\n\ndata:test\n\n")
    assert events == [SSEEvent(""), SSEEvent("\n"), SSEEvent("test")]


def test_sse_field_parsing_wpt():
    # WPT format-field-parsing.htm (served without a final blank line; our EOF policy flushes).
    body = b"data:\0\ndata:  2\rData:1\ndata\0:2\ndata:1\r\0data:4\nda-ta:3\rdata_5\ndata:3\rdata:\r\n data:32\ndata:4\n"
    assert parse_sse(body) == ([SSEEvent("\0\n 2\n1\n3\n\n4")], True)


def test_sse_event_without_data_is_not_dispatched():
    # §9.2.6 dispatch: "If the data buffer is an empty string, set the data buffer and the
    # event type buffer to the empty string and return." (docs/PROVIDERS.md §5: "event: ping" alone).
    events, _ = parse_sse(b"event: ping\n\ndata: x\n\n")
    assert events == [SSEEvent("x", "message")]  # "ping" must not leak into the next event
    events, _ = parse_sse(b"event: a\nid: 1\nretry: 5\n\n\n\n")
    assert events == []


def test_sse_event_type():
    # §9.2.6 "event" field; WPT format-field-event.htm, format-field-event-empty.htm.
    # Field names are case-sensitive; the last "event" line wins; an empty type is "message".
    body = b"event: add\ndata: 1\n\nevent: x\nevent: remove\ndata: 2\n\nevent:\ndata: 3\n\nEvent: nope\ndata: 4\n\n"
    events, _ = parse_sse(body)
    assert [(e.event, e.data) for e in events] == [("add", "1"), ("remove", "2"), ("message", "3"), ("message", "4")]


def test_sse_id_persists_and_null_id_is_ignored():
    # §9.2.6 "id": the last event ID buffer is not reset by a dispatch; a value containing
    # U+0000 is ignored (WPT format-field-id-null.htm); "id" alone sets it to "".
    body = b"data: a\n\nid: 1\ndata: b\n\ndata: c\n\nid: 2\x003\ndata: d\n\nid\ndata: e\n\n"
    decoder = SSEDecoder()
    events = decoder.feed(body)
    assert [(e.data, e.id) for e in events] == [("a", None), ("b", "1"), ("c", "1"), ("d", "1"), ("e", "")]
    assert decoder.last_event_id == ""
    # An id set in an event that is not dispatched still sets the buffer.
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 7\n\ndata: x\n\n") == [SSEEvent("x", id="7")]
    assert decoder.last_event_id == "7"


def test_sse_retry_only_ascii_digits():
    # §9.2.6 "retry": "If the field value consists of only ASCII digits ..." (WPT
    # format-field-retry.htm, format-field-retry-bogus.htm, format-field-retry-empty.htm).
    bogus = ["10a", " 5", "+5", "-1", "1.5", "5 ", "", "\u0663", "\u00b2", "\uff15", "0x10"]
    lines = b"".join(b"retry: " + value.encode() + b"\n" for value in bogus)
    body = b"data: a\n\nretry: 1000\ndata: b\n\n" + lines + b"data: c\n\nretry:0\ndata: d\n\nretry\ndata: e\n\n"
    events, _ = parse_sse(body)
    assert [(e.data, e.retry) for e in events] == [("a", None), ("b", 1000), ("c", 1000), ("d", 0), ("e", 0)]


def test_sse_bom_stripped_at_start():
    # §9.2.6: "The UTF-8 decode algorithm strips one leading UTF-8 Byte Order Mark (BOM)".
    # WPT format-bom.htm. Also when the BOM itself is split across reads.
    body = BOM + b"data: a\n\n"
    for pieces in two_way_splits(body):
        assert parse_sse(pieces, collect_stray=True) == ([SSEEvent("a")], False), pieces


def test_sse_second_bom_is_not_stripped():
    # WPT format-bom-2.htm: with two BOMs, the first field name is "\ufeffdata" and is ignored.
    body = BOM + BOM + b"data: a\n\ndata: b\n\n"
    for pieces in two_way_splits(body):
        assert parse_sse(pieces) == ([SSEEvent("b")], False), pieces
    events, _ = parse_sse(body, collect_stray=True)
    assert events == [StrayLine("\ufeffdata: a"), SSEEvent("b")]


def test_sse_bom_not_at_start_is_not_stripped():
    events, _ = parse_sse(b"data: a\n\n" + BOM + b"data: b\n\n", collect_stray=True)
    assert events == [SSEEvent("a"), StrayLine("\ufeffdata: b")]


def test_sse_body_that_only_looks_like_a_bom_start():
    # The first bytes of a BOM are held back until known; if no BOM follows they are data.
    assert parse_sse([b"\xef", b"\xbb", b"data: a\n\n"], collect_stray=True) == (
        [StrayLine("\ufffddata: a")],
        False,
    )
    assert parse_sse([b"\xef\xbb"], collect_stray=True) == ([StrayLine("\ufffd")], False)
    assert parse_sse([BOM]) == ([], False)


def test_sse_several_events_in_one_read():
    # docs/PROVIDERS.md §5 (urllib3.future PR #344 dropped everything after the first blank line).
    decoder = SSEDecoder()
    events = decoder.feed(b"data: 1\n\nevent: e\ndata: 2\n\n: c\n\ndata: 3\r\n\r\ndata: 4\r\rdata: 5")
    assert [(e.event, e.data) for e in events] == [("message", "1"), ("e", "2"), ("message", "3"), ("message", "4")]
    assert decoder.close() == [SSEEvent("5")]


def test_sse_unknown_fields():
    # §9.2.6: "Otherwise: The field is ignored." With collect_stray they are returned, in order.
    body = b'foo: bar\nDATA: x\ndata: y\n  "error": {\nretry2: 1\n\n'
    assert parse_sse(body) == ([SSEEvent("y")], False)
    events, _ = parse_sse(body, collect_stray=True)
    assert events == [
        StrayLine("foo: bar"),
        StrayLine("DATA: x"),
        StrayLine('  "error": {'),
        StrayLine("retry2: 1"),
        SSEEvent("y"),
    ]


# SSE: end of body (module docstring "EOF policy").


def test_sse_pending_event_dispatched_at_close():
    # The spec discards it (§9.2.6, WPT format-data-before-final-empty-line); we flush it.
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\nevent: message_stop\ndata: b") == [SSEEvent("a")]
    assert not decoder.unterminated
    assert decoder.close() == [SSEEvent("b", "message_stop")]
    assert decoder.unterminated
    assert decoder.close() == []


@pytest.mark.parametrize(
    ("tail", "last"),
    [(b"data: b\n", "b"), (b"data: b\r\n", "b"), (b"data: b\r", "b"), (b"data: b\ndata: c\n", "b\nc"), (b"data: b\rdata", "b\n")],
)
def test_sse_pending_event_with_line_end_but_no_blank_line(tail, last):
    assert parse_sse(b"data: a\n\n" + tail) == ([SSEEvent("a"), SSEEvent(last)], True)


@pytest.mark.parametrize("body", [b"data: a\n\n", b"data: a\r\r", b"data: a\r\n\r\n", b"data: a\n\n: bye\n", b"data: a\n\nevent: x\n"])
def test_sse_terminated_stream_is_not_unterminated(body):
    # Nothing pending with data at EOF: nothing flushed, flag stays False.
    assert parse_sse(body) == ([SSEEvent("a")], False)


def test_sse_empty_body():
    assert parse_sse(b"") == ([], False)
    assert parse_sse([b"", b"", b""]) == ([], False)


@pytest.mark.parametrize("decoder_class", [SSEDecoder, NDJSONDecoder, JSONArrayDecoder])
def test_feed_after_close_raises(decoder_class):
    decoder = decoder_class()
    decoder.feed(b"")
    decoder.close()
    with pytest.raises(FramingError):
        decoder.feed(b"data: x\n\n")


# SSE: recorded provider streams.

# Dispatched events per recording under our EOF policy: EXPECTED.md §8 counts (strict parser)
# plus one for a recording whose last event lacks its blank line ("pending@EOF").
# name: (events, unterminated)
SSE_EXPECTED = {
    "openai_text": (34, False),
    "openai_tool_call_single": (11, False),
    "openai_tool_calls": (26, False),
    "openai_usage": (5, False),
    "openai_refusal": (14, False),
    "openai_multi_choice": (50, False),
    "openai_compat_deepseek_reasoning": (212, False),
    "openai_compat_openrouter_error": (5, False),
    "openai_responses_text": (15, False),
    "openai_responses_function_call": (11, False),
    "anthropic_text": (9, False),
    "anthropic_tool_use": (14 + 1, True),
    "anthropic_tool_use_max_tokens": (15 + 1, True),
    "anthropic_thinking": (118, False),
    "anthropic_redacted_thinking": (27, False),
    "anthropic_web_search_citations": (111, False),
    "anthropic_error": (1, False),
    "gemini_sse": (3, False),
    "gemini_sse_thinking": (23, False),
    "gemini_sse_function_call": (2, False),
    "gemini_sse_prompt_blocked": (0 + 1, True),
    "gemini_sse_finish_safety": (1, False),
    "gemini_sse_error_mid_stream": (2, False),
}

SSE_RECORDINGS = sorted(path.name for path in SHARED_FIXTURES.glob("*.sse")) if SHARED_FIXTURES.is_dir() else []


@requires_shared
def test_sse_recordings_present():
    # Guards the parametrized tests below against a renamed or missing recording.
    assert {f"{name}.sse" for name in SSE_EXPECTED} <= set(SSE_RECORDINGS)


@requires_shared
@pytest.mark.parametrize("name", SSE_RECORDINGS)
def test_sse_recording_split_invariance(name):
    body = shared_fixture(name)
    expected = parse_sse(body, collect_stray=True)
    assert expected[0]
    # Exhaustive 2-way splits cost O(n²): every cut point for bodies up to 10 KB, none for the
    # three 59-68 KB recordings; all get byte-at-a-time and random multi-way splits.
    if len(body) > 50_000:
        ways = splits(body, exhaustive_limit=0, random_count=20)
    else:
        ways = splits(body, exhaustive_limit=10_000, random_count=100)
    for pieces in ways:
        assert parse_sse(pieces, collect_stray=True) == expected, [len(p) for p in pieces]


@requires_shared
@pytest.mark.parametrize("name", sorted(SSE_EXPECTED))
def test_sse_recording_event_count(name):
    count, unterminated = SSE_EXPECTED[name]
    items, flag = parse_sse(shared_fixture(f"{name}.sse"), collect_stray=True)
    events = [item for item in items if isinstance(item, SSEEvent)]
    assert len(events) == count
    assert flag is unterminated
    for event in events:
        # A torn or merged event would not decode; named events repeat their type in the data.
        if event.data == "[DONE]":
            continue
        payload = msgspec.json.decode(event.data)
        if event.event != "message":
            assert payload["type"] == event.event
    if name != "gemini_sse_error_mid_stream":
        assert len(items) == len(events)  # no stray lines in the other recordings


@requires_shared
def test_sse_recording_terminal_events():
    items, _ = parse_sse(shared_fixture("anthropic_tool_use.sse"))
    assert items[-1].event == "message_stop"  # the flushed, unterminated last event
    items, _ = parse_sse(shared_fixture("openai_text.sse"))
    assert items[-1].data == "[DONE]"
    items, _ = parse_sse(shared_fixture("gemini_sse_prompt_blocked.sse"))
    assert msgspec.json.decode(items[0].data)["promptFeedback"]["blockReason"] == "SAFETY"


@requires_shared
def test_sse_openrouter_comments_ignored():
    body = shared_fixture("openai_compat_openrouter_error.sse")
    assert sum(line.startswith(b":") for line in body.splitlines()) == 17
    items, _ = parse_sse(body, collect_stray=True)
    assert len(items) == 5 and all(isinstance(item, SSEEvent) for item in items)
    assert items[-1].data == "[DONE]"


@requires_shared
def test_sse_gemini_mid_stream_error_in_stray_lines():
    # docs/PROVIDERS.md §3.4: the error JSON is written without "data:"; the stray lines rebuild it.
    items, unterminated = parse_sse(shared_fixture("gemini_sse_error_mid_stream.sse"), collect_stray=True)
    events = [item for item in items if isinstance(item, SSEEvent)]
    stray = [item.text for item in items if isinstance(item, StrayLine)]
    assert len(events) == 2 and not unterminated
    assert items[: len(events)] == events  # the stray lines come after both events
    error = msgspec.json.decode("\n".join(stray))["error"]
    assert (error["code"], error["status"]) == (499, "CANCELLED")


# NDJSON.

NDJSON_BODY = '{"a":1}\n{"t":"😊 é"}\n{"done":true}\n'.encode()


def test_ndjson_lines_split_anywhere():
    expected = [b'{"a":1}', '{"t":"😊 é"}'.encode(), b'{"done":true}']
    for pieces in two_way_splits(NDJSON_BODY):
        assert parse_ndjson(pieces) == (expected, False), pieces


def test_ndjson_multibyte_characters_survive_splits():
    for pieces in two_way_splits(NDJSON_BODY):
        lines, _ = parse_ndjson(pieces)
        assert msgspec.json.decode(lines[1]) == {"t": "😊 é"}


def test_ndjson_crlf_tolerated():
    body = b'{"a":1}\r\n{"b":2}\r\n'
    for pieces in two_way_splits(body):
        assert parse_ndjson(pieces) == ([b'{"a":1}', b'{"b":2}'], False), pieces


def test_ndjson_blank_lines_skipped():
    body = b'\n{"a":1}\n\n   \n\r\n\t\n{"b":2}\n\n'
    assert parse_ndjson(body) == ([b'{"a":1}', b'{"b":2}'], False)


def test_ndjson_last_line_without_lf_returned_at_close():
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert decoder.feed(b":2}") == []
    assert not decoder.unterminated
    assert decoder.close() == [b'{"b":2}']
    assert decoder.unterminated
    # A trailing CR or blank remainder is not a line.
    assert parse_ndjson(b'{"a":1}\r') == ([b'{"a":1}'], True)
    assert parse_ndjson(b'{"a":1}\n  ') == ([b'{"a":1}'], False)
    assert parse_ndjson(b'{"a":1}\n') == ([b'{"a":1}'], False)


@requires_shared
@pytest.mark.parametrize(("name", "count"), [("ollama_chat.ndjson", 22), ("ollama_chat_thinking.ndjson", 48)])
def test_ndjson_ollama_recordings(name, count):
    body = shared_fixture(name)
    for pieces in splits(body, random_count=50):
        lines, unterminated = parse_ndjson(pieces)
        assert len(lines) == count and not unterminated
    chunks = [msgspec.json.decode(line) for line in lines]
    assert [chunk["done"] for chunk in chunks] == [False] * (count - 1) + [True]
    assert chunks[-1]["done_reason"] == "stop"


# JSON array.


@requires_shared
@pytest.mark.parametrize(("name", "count"), [("gemini_array.json", 3), ("gemini_array_function_call.json", 2)])
def test_json_array_gemini_recordings(name, count):
    body = shared_fixture(name)
    whole = msgspec.json.decode(body)
    assert len(whole) == count
    for pieces in splits(body, random_count=50):
        elements, complete = parse_array(pieces)
        assert complete
        assert [msgspec.json.decode(element) for element in elements] == whole


@requires_shared
def test_json_array_error_envelope_recording():
    body = shared_fixture("gemini_error_429.json")
    elements, complete = parse_array(body)
    assert complete
    assert [msgspec.json.decode(element) for element in elements] == [msgspec.json.decode(body)]


def test_json_array_strings_with_brackets_and_escapes():
    # Braces, brackets, commas and escaped quotes/backslashes inside strings are not structure.
    values = [{"a": '\\"}'}, {"b": "]["}, {"c": "{{{", "d": "\\\\"}, {"e": '"', "f": ",]"}]
    body = b'[{"a":"\\\\\\"}"},{"b":"]["},\n{"c":"{{{","d":"\\\\\\\\"},{"e":"\\"","f":",]"}]'
    assert msgspec.json.decode(body) == values
    for pieces in two_way_splits(body):
        elements, complete = parse_array(pieces)
        assert complete, pieces
        assert [msgspec.json.decode(element) for element in elements] == values, pieces


def test_json_array_nested_arrays():
    body = b'[[1,[2,3],{"x":[]}], {"y":[{"z":[[]]}]}]'
    for pieces in two_way_splits(body):
        assert parse_array(pieces) == ([b'[1,[2,3],{"x":[]}]', b'{"y":[{"z":[[]]}]}'], True), pieces


@pytest.mark.parametrize("body", [b"[]", b" [ ] ", b"\r\n[\n]\n"])
def test_json_array_empty(body):
    assert parse_array(body) == ([], True)


def test_json_array_elements_returned_as_they_complete():
    decoder = JSONArrayDecoder()
    assert decoder.feed(b'[{\n  "a": 1\n') == []
    assert decoder.feed(b'}\n,\r\n{"b"') == [b'{\n  "a": 1\n}']
    assert decoder.feed(b':2}\n]') == [b'{"b":2}']
    assert decoder.complete


def test_json_array_bare_object_is_one_element():
    body = b'{"error": {"code": 403, "message": "x [y] {z}", "status": "PERMISSION_DENIED"}}\n'
    for pieces in two_way_splits(body):
        assert parse_array(pieces) == ([body.strip()], True), pieces


@pytest.mark.parametrize(
    ("body", "elements"),
    [(b"", []), (b"[", []), (b'[{"a":1}', [b'{"a":1}']), (b'[{"a":1},', [b'{"a":1}']), (b'[{"a":1}, {"b"', [b'{"a":1}']), (b'{"error": {', [])],
)
def test_json_array_incomplete(body, elements):
    # Without the closing "]" (or the end of a bare object) the body is cut: complete is False.
    assert parse_array(body) == (elements, False)


@pytest.mark.parametrize(
    "body",
    [b"[1,2]", b"x", b"[{}{}]", b"[{}] x", b"[{}]{}", b"[{}],", b"[{}]]", b"[{},]", b"[,{}]", b'"s"', b"[null]", b'[{}, "s"]', b"{}{}", b"{} []"],
)
def test_json_array_garbage_raises(body):
    for pieces in ([body], [body[i : i + 1] for i in range(len(body))]):
        with pytest.raises(FramingError):
            parse_array(pieces)


# Property-based tests.

_no_line_end = st.characters(codec="utf-8", exclude_characters="\r\n")
_line_text = st.text(_no_line_end, max_size=10) | st.text(st.sampled_from(" :\x00\u2028\u0085\ufeffé😊d1\u0663"), max_size=6)
_UNKNOWN_FIELDS = ["foo", "Data", "EVENT", "data ", " data", "\ufeffdata", "dat", "ID", "retry2", "{", '  "error"']


@st.composite
def _sse_events(draw):
    """One event: a list of (kind, value) lines, in stream order, without the blank line."""
    lines = [("data", value) for value in draw(st.lists(_line_text, max_size=4))]
    extras = draw(
        st.lists(
            st.tuples(st.sampled_from(["event", "id", "retry", "comment", "unknown"]), _line_text)
            | st.tuples(st.just("retry"), st.from_regex(r"[0-9]{1,6}", fullmatch=True)),
            max_size=4,
        )
    )
    for extra in extras:
        lines.insert(draw(st.integers(0, len(lines))), extra)
    return lines


@st.composite
def _sse_streams(draw):
    """(body, expected items, expected unterminated) for a random event list."""
    events = draw(st.lists(_sse_events(), max_size=6))
    terminated = draw(st.booleans())
    texts: list[str] = []
    expected: list = []
    last_id = retry = None
    unterminated = False
    for number, lines in enumerate(events):
        event_type = ""
        data: list[str] = []
        for kind, value in lines:
            if kind == "comment":
                texts.append(":" + value)
                continue
            if kind == "unknown":
                text = draw(st.sampled_from(_UNKNOWN_FIELDS)) + ": " + value
                texts.append(text)
                expected.append(StrayLine(text))
                continue
            if kind == "data" and value == "":
                texts.append(draw(st.sampled_from(["data", "data:", "data: "])))
            else:
                separator = ": " if value.startswith(" ") else draw(st.sampled_from([":", ": "]))
                texts.append(kind + separator + value)
            if kind == "data":
                data.append(value)
            elif kind == "event":
                event_type = value
            elif kind == "id" and "\x00" not in value:
                last_id = value
            elif kind == "retry" and re.fullmatch("[0-9]+", value, re.ASCII):
                retry = int(value)
        last = number == len(events) - 1
        if data:
            expected.append(SSEEvent("\n".join(data), event_type or "message", last_id, retry))
            unterminated = last and not terminated
        if not last or terminated:
            texts.append("")
    body = ""
    previous_end = ""
    for text in texts:
        # A blank line right after a CR must not start with LF: "\r" + "\n" is one line end.
        choices = ["\r", "\r\n"] if previous_end == "\r" and not text else ["\r", "\n", "\r\n"]
        previous_end = draw(st.sampled_from(choices))
        body += text + previous_end
    if texts and texts[-1] and draw(st.booleans()):
        body = body[: -len(previous_end)]  # the last line has no line end either
    bom = draw(st.booleans()) or body.startswith("\ufeff")
    return (BOM if bom else b"") + body.encode(), expected, unterminated


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({cut % (len(data) + 1) for cut in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


_cuts = st.lists(st.integers(0, 10_000), max_size=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=_sse_streams(), cuts=_cuts)
def test_sse_random_event_streams_round_trip(stream, cuts):
    body, expected, unterminated = stream
    assert parse_sse(_cut(body, cuts), collect_stray=True) == (expected, unterminated)


_framing_bytes = st.lists(
    st.sampled_from(
        [b"data:", b"data: x", b"event: e", b"id:", b"retry: 1", b":", b"\r", b"\n", b"\r\n", BOM, b"{", b"}", b"[", b"]",
         b'"', b"\\", b",", b" ", b"1", b"\xf0\x9f", b"\x98\x8a", b"\xff", b"\x00", b"\xe2\x80\xa8"]
    )
    | st.binary(max_size=4),
    max_size=40,
).map(b"".join)


def _outcome(factory, pieces: list[bytes]):
    """(items, end flag) or "FramingError"; any other exception fails the test."""
    decoder = factory()
    items: list = []
    try:
        for piece in pieces:
            items.extend(decoder.feed(piece))
        items.extend(decoder.close())
    except FramingError:
        return "FramingError"
    flag = decoder.complete if isinstance(decoder, JSONArrayDecoder) else decoder.unterminated
    return items, flag


@settings(max_examples=300, deadline=None)
@given(data=_framing_bytes | st.binary(max_size=60), cuts=_cuts)
def test_random_bytes_give_lists_or_framing_error(data, cuts):
    pieces = _cut(data, cuts)
    for factory in (lambda: SSEDecoder(collect_stray=True), NDJSONDecoder, JSONArrayDecoder):
        whole = _outcome(factory, [data])
        split = _outcome(factory, pieces)
        assert split == whole
        if whole == "FramingError":
            continue
        items, flag = whole
        assert isinstance(flag, bool)
        for item in items:
            if factory is NDJSONDecoder:
                assert isinstance(item, bytes) and b"\n" not in item and item.strip()
            elif factory is JSONArrayDecoder:
                assert isinstance(item, bytes) and item[:1] in (b"{", b"[") and item[-1:] in (b"}", b"]")
            else:
                assert isinstance(item, (SSEEvent, StrayLine))


_json_text = st.text(max_size=8) | st.text(st.sampled_from('{}[]"\\,:/ é😊\n\t'), max_size=8)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _json_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_json_text, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    elements=st.lists(st.dictionaries(_json_text, _json_values, max_size=4), max_size=5),
    style=st.sampled_from(["msgspec", "orjson", "orjson-indent", "gemini"]),
    cuts=_cuts,
)
def test_json_arrays_round_trip(elements, style, cuts):
    if style == "msgspec":
        body = msgspec.json.encode(elements)
    elif style == "orjson":
        body = orjson.dumps(elements)
    elif style == "orjson-indent":
        body = orjson.dumps(elements, option=orjson.OPT_INDENT_2)
    else:  # docs/PROVIDERS.md §3.1: "[{…}\n,\r\n{…}\n]"
        body = b"[" + b"\n,\r\n".join(orjson.dumps(e, option=orjson.OPT_INDENT_2) for e in elements) + b"\n]"
    raw, complete = parse_array(_cut(body, cuts))
    assert complete
    assert [msgspec.json.decode(element) for element in raw] == elements
