"""Tests for protocol/normalizers/gemini.py.

(a) every recorded Gemini body in ../shared/fixtures against the golden values of EXPECTED.md
§8.3, fed whole and across ``splits`` (every split must give the same events);
(b) our own transcripts in tests/data against their ``.expected.json`` sidecars;
(c) targeted cases: truncation, garbage, the terminal rule, in-band errors, mappings.
"""

from __future__ import annotations

import json
from typing import Any

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
from protocol.normalizers.gemini import GeminiNormalizer, map_finish_reason
from tests.support import (
    DATA,
    load_expected,
    requires_shared,
    run_normalizer,
    shared_fixture,
    splits,
    summarize,
)


def run(body: bytes | list[bytes], framing: str = "sse") -> list[Any]:
    return run_normalizer(lambda: GeminiNormalizer(framing), [body] if isinstance(body, bytes) else body)


def assert_well_formed(events: list[Any]) -> None:
    """The contract of protocol/normalizers/base.py, checked on one event list."""
    terminals = [i for i, e in enumerate(events) if isinstance(e, (StreamEnd, StreamFailed))]
    assert terminals == [len(events) - 1], "exactly one terminal event, and it is the last"
    open_run = False
    for event in events:
        if isinstance(event, TextDelta):
            assert event.text
            assert not open_run, "answer text inside an open reasoning run"
        elif isinstance(event, ReasoningDelta):
            assert event.text or event.signature
            open_run = True
        elif isinstance(event, ReasoningDone):
            assert open_run, "ReasoningDone without a run"
            open_run = False
    if isinstance(events[-1], StreamEnd):
        assert not open_run, "a successful stream closes its reasoning run"


def run_all_splits(body: bytes, framing: str) -> list[Any]:
    """Events of the whole body, after checking that every split gives exactly the same."""
    whole = run(body, framing)
    assert_well_formed(whole)
    for pieces in splits(body, exhaustive_limit=4096):
        assert run(pieces, framing) == whole, f"split into {len(pieces)} reads differs"
    return whole


def framing_of(name: str) -> str:
    return "array" if name.endswith(".json") else "sse"


def data(*chunks: dict[str, Any], crlf: bool = True) -> bytes:
    """Gemini alt=sse framing of response chunks."""
    nl = "\r\n" if crlf else "\n"
    return "".join(f"data: {json.dumps(c)}{nl}{nl}" for c in chunks).encode()


def array(*elements: dict[str, Any]) -> bytes:
    """Gemini alt=json framing: one pretty-printed array, elements separated by ``\\n,\\r\\n``."""
    return ("[" + "\n,\r\n".join(json.dumps(e, indent=2) for e in elements) + "\n]").encode()


def chunk(*parts: dict[str, Any], finish: str | None = None, index: int = 0, usage: dict[str, int] | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": list(parts), "role": "model"}, "index": index}
    if finish is not None:
        candidate["finishReason"] = finish
    out: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-test", "responseId": "resp-1"}
    if usage is not None:
        out["usageMetadata"] = usage
    return out


# (a) Recordings, EXPECTED.md §8.3.

GOLDEN: dict[str, dict[str, Any]] = {
    "gemini_sse.sse": {
        "text": "The capital of France is Paris.\n",
        "finish_reason": "stop",
        "raw_finish_reason": "STOP",
        "usage": (13, 8, 21, None),
        "model": "gemini-2.0-flash-exp",
        "response_id": "w1peaMz6INOvnvgPgYfPiQY",
    },
    "gemini_sse_thinking.sse": {
        "text_len": 1938,
        "reasoning_len": 1575,
        "signature_lens": [6152],
        "finish_reason": "stop",
        "usage": (34, 469 + 787, 1290, 787),
    },
    "gemini_sse_function_call.sse": {
        "text": "",
        "tool_calls": [{"id": "call_0", "name": "get_country", "arguments": {}, "valid": True}],
        "tool_signature_lens": [1408],
        "signature_lens": [],
        "finish_reason": "tool_calls",
        "raw_finish_reason": "STOP",
        "usage": (29, 10 + 202, 241, 202),
    },
    "gemini_sse_prompt_blocked.sse": {
        "text": "",
        "finish_reason": "content_filter",
        "raw_finish_reason": "SAFETY",
        "usage": None,
        "error": None,
    },
    "gemini_sse_finish_safety.sse": {
        "text": "<redacted>",
        "finish_reason": "content_filter",
        "raw_finish_reason": "SAFETY",
        "usage": (10, 66, 76, None),
    },
    "gemini_sse_error_mid_stream.sse": {
        "text": "First Second ",
        "finish_reason": "error",
        "error": {"code": "provider_error", "status": 499},
        "failed": ("CANCELLED", "The operation was cancelled.", False),
    },
    "gemini_array.json": {
        "text": "Scoop",
        "reasoning_len": 275,
        "signature_lens": [1600],
        "finish_reason": "stop",
        "usage": (11, 2 + 291, 304, 291),
        "response_id": "IopyaseNCL-s-8YP7urOoAY",
    },
    "gemini_array_function_call.json": {
        "text": "",
        "reasoning_len": 236,
        "tool_calls": [{"id": "call_0", "name": "pelican_name_generator", "arguments": {}, "valid": True}],
        "tool_signature_lens": [336],
        "finish_reason": "tool_calls",
        "usage": (32, 12 + 42, 86, 42),
    },
    "gemini_error_403.json": {
        "finish_reason": "error",
        "error": {"code": "provider_error", "status": 403},
        "failed": ("PERMISSION_DENIED", "Method doesn't allow unregistered callers", False),
    },
    "gemini_error_429.json": {
        "finish_reason": "error",
        "error": {"code": "rate_limited", "status": 429},
        "failed": ("RESOURCE_EXHAUSTED", "Quota exceeded for quota metric", True),
    },
}


def check_golden(events: list[Any], golden: dict[str, Any]) -> None:
    summary = summarize(events)
    last = events[-1]
    for key, want in golden.items():
        if key == "text_len":
            assert len(summary["text"]) == want
        elif key == "reasoning_len":
            assert len(summary["reasoning"]) == want
        elif key == "signature_lens":
            assert [len(s) for s in summary["signatures"]] == want
        elif key == "tool_signature_lens":
            assert [len(e.signature) for e in events if isinstance(e, ToolCall)] == want
        elif key == "usage":
            if want is None:
                assert summary["usage"] is None
            else:
                u = summary["usage"]
                assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"], u["reasoning_tokens"]) == want
        elif key in ("raw_finish_reason", "model", "response_id"):
            assert getattr(last, key) == want
        elif key == "failed":
            assert isinstance(last, StreamFailed)
            provider_type, message_head, retryable = want
            assert (last.provider_type, last.retryable) == (provider_type, retryable)
            assert last.message.startswith(message_head)
        else:
            assert summary[key] == want, key


@requires_shared
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_recording_matches_golden_across_splits(name: str) -> None:
    events = run_all_splits(shared_fixture(name), framing_of(name))
    check_golden(events, GOLDEN[name])


@requires_shared
def test_recording_signature_on_empty_text_part_after_the_answer() -> None:
    # gemini_array.json: thought, answer "Scoop", then {"text": "", "thoughtSignature": ...}.
    events = run(shared_fixture("gemini_array.json"), "array")
    kinds = [type(e) for e in events]
    assert kinds == [ReasoningDelta, ReasoningDone, TextDelta, ReasoningDelta, ReasoningDone, ChoiceFinished, StreamEnd]
    assert events[3].text == "" and len(events[3].signature) == 1600


@requires_shared
def test_recording_signature_on_first_answer_part_precedes_reasoning_done() -> None:
    events = run(shared_fixture("gemini_sse_thinking.sse"))
    done = next(i for i, e in enumerate(events) if isinstance(e, ReasoningDone))
    assert events[done - 1].signature is not None and events[done - 1].text == ""
    assert isinstance(events[done + 1], TextDelta)
    assert events[done + 1].text.startswith("This is a great question!")


@requires_shared
def test_recording_prompt_blocked_has_no_final_blank_line() -> None:
    body = shared_fixture("gemini_sse_prompt_blocked.sse")
    assert not body.endswith(b"\r\n\r\n")  # dispatched at EOF (framing.py EOF policy)
    events = run(body)
    assert [type(e) for e in events] == [ChoiceFinished, StreamEnd]
    assert events[0] == ChoiceFinished("content_filter", "SAFETY")


# (b) Our transcripts (tests/data/gemini_*) against their sidecars.

TRANSCRIPTS = sorted(p.name for p in DATA.glob("gemini_*") if not p.name.endswith(".expected.json"))


def test_transcripts_exist() -> None:
    assert {"gemini_sse.sse", "gemini_sse_function_call.sse", "gemini_array.json"} <= set(TRANSCRIPTS)


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_transcript_matches_sidecar_across_splits(name: str) -> None:
    path = DATA / name
    events = run_all_splits(path.read_bytes(), framing_of(name))
    assert summarize(events) == load_expected(path)


def test_transcript_sse_every_prefix_is_truncated_until_the_finish_chunk() -> None:
    """EOF before the complete chunk carrying finishReason is a truncated stream (§6.5)."""
    body = (DATA / "gemini_sse.sse").read_bytes()
    finish_end = body.rindex(b"}") + 1
    for cut in range(len(body) + 1):
        last = run(body[:cut])[-1]
        if cut >= finish_end:
            assert isinstance(last, StreamEnd), cut
        else:
            assert isinstance(last, StreamFailed) and last.code == "stream_truncated", cut


def test_transcript_array_every_prefix_is_truncated_until_the_closing_bracket() -> None:
    body = (DATA / "gemini_array.json").read_bytes()
    assert body.endswith(b"]")
    for cut in range(len(body)):
        last = run(body[:cut], "array")[-1]
        assert isinstance(last, StreamFailed) and last.code == "stream_truncated", cut
    assert isinstance(run(body, "array")[-1], StreamEnd)


# (c) Targeted cases.


def test_unknown_framing_is_rejected() -> None:
    with pytest.raises(ValueError, match="framing"):
        GeminiNormalizer("ndjson")


def test_sse_eof_without_finish_reason_is_truncated_with_usage() -> None:
    usage = {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6}
    events = run(data(chunk({"text": "Hel"}, usage=usage), chunk({"text": "lo"})))
    assert summarize(events)["text"] == "Hello"
    last = events[-1]
    assert (type(last), last.code, last.retryable) == (StreamFailed, "stream_truncated", True)
    assert (last.usage.prompt_tokens, last.usage.total_tokens) == (4, 6)


def test_sse_content_after_a_finish_reason_reopens_the_candidate() -> None:
    events = run(data(chunk({"text": "a"}, finish="STOP"), chunk({"text": "b"})))
    assert events[-1].code == "stream_truncated"


def test_array_closed_without_finish_reason_is_truncated_at_once() -> None:
    normalizer = GeminiNormalizer("array")
    events = normalizer.feed(array(chunk({"text": "partial"})))
    assert [type(e) for e in events] == [TextDelta, StreamFailed]
    assert events[-1].code == "stream_truncated"
    assert normalizer.close() == []


def test_array_without_closing_bracket_is_truncated() -> None:
    body = array(chunk({"text": "ok"}, finish="STOP"))[:-1]
    events = run(body, "array")
    assert [type(e) for e in events] == [TextDelta, StreamFailed]
    assert events[-1].code == "stream_truncated"


@pytest.mark.parametrize(
    ("body", "framing"),
    [
        (b"data: not json\r\n\r\n", "sse"),
        (b"data: [1, 2]\r\n\r\n", "sse"),
        (b'data: {"candidates": 5}\r\n\r\n', "sse"),
        (b"{ this is not json }\n", "sse"),  # unframed JSON that does not parse
        (b"[1, 2]", "array"),  # scalar elements: a FramingError inside the decoder
        (b"<html>502</html>", "array"),
        (b'[{"candidates": [{"content": {"parts": "text"}}]}]', "array"),
    ],
)
def test_garbage_is_invalid_upstream_response(body: bytes, framing: str) -> None:
    for pieces in ([body], [body[i : i + 1] for i in range(len(body))]):
        events = run(pieces, framing)
        assert [type(e) for e in events] == [StreamFailed]
        assert events[0].code == "invalid_upstream_response"


def test_garbage_keeps_the_events_completed_earlier_in_the_same_read() -> None:
    body = data(chunk({"text": "kept"})) + b"data: {oops\r\n\r\n" + data(chunk({"text": "lost"}, finish="STOP"))
    events = run(body)
    assert summarize(events)["text"] == "kept"
    assert events[-1].code == "invalid_upstream_response"


def test_nothing_after_the_terminal_event_sse() -> None:
    err = {"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}
    normalizer = GeminiNormalizer()
    events = normalizer.feed(data(chunk({"text": "a"}), err, chunk({"text": "late"}, finish="STOP")))
    assert [type(e) for e in events] == [TextDelta, StreamFailed]
    assert (events[-1].status, events[-1].retryable, events[-1].provider_type) == (500, True, "INTERNAL")
    assert normalizer.feed(data(chunk({"text": "later"}))) == []
    assert normalizer.close() == []


def test_nothing_after_the_terminal_event_array() -> None:
    normalizer = GeminiNormalizer("array")
    events = normalizer.feed(array(chunk({"text": "a"}, finish="STOP")))
    assert [type(e) for e in events] == [TextDelta, ChoiceFinished, StreamEnd]
    assert normalizer.feed(b"\n,{}") == []  # bytes after "]" are never looked at
    assert normalizer.close() == []


def test_bytes_after_the_closing_bracket_in_the_same_read() -> None:
    # The array (and its finishReason) is complete before the stray bytes, whatever the split:
    # the elements completed in the read that also holds the garbage are not lost.
    body = array(chunk({"text": "a"}, finish="STOP")) + b"\n,{}"
    for pieces in splits(body, exhaustive_limit=len(body), random_count=20):
        events = run(pieces, "array")
        assert isinstance(events[-1], StreamEnd)
        assert [e.text for e in events if isinstance(e, TextDelta)] == ["a"]


def test_unframed_error_with_braces_and_quotes_in_strings() -> None:
    error = '{\n  "error": {\n    "code": 400,\n    "message": "bad {field} \\"}\\" here",\n    "status": "INVALID_ARGUMENT"\n  }\n}\n'
    body = data(chunk({"text": "x"})) + error.encode() + data(chunk({"text": "late"}, finish="STOP"))
    for pieces in splits(body, exhaustive_limit=len(body), random_count=20):
        events = run(pieces)
        assert [type(e) for e in events] == [TextDelta, StreamFailed]
        failed = events[-1]
        assert (failed.code, failed.status, failed.retryable, failed.provider_type) == ("provider_error", 400, False, "INVALID_ARGUMENT")
        assert failed.message == 'bad {field} "}" here'


def test_unframed_error_on_one_line_and_data_framed_error() -> None:
    one_line = b'{"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}\n'
    framed = data({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
    [failed] = run(one_line)
    assert (failed.code, failed.status, failed.retryable) == ("rate_limited", 429, True)
    [failed] = run(framed)
    assert (failed.code, failed.status, failed.retryable) == ("provider_error", 503, True)


def test_unframed_error_cut_at_eof_is_truncated() -> None:
    events = run(data(chunk({"text": "x"}, finish="STOP")) + b'{\n  "error": {\n    "code": 500,\n')
    assert [type(e) for e in events] == [TextDelta, StreamFailed]
    assert events[-1].code == "stream_truncated"


# End of body (protocol/normalizers/base.py): a last event that does not parse is a cut when
# its text is not well-formed JSON, garbage when it is JSON of the wrong shape.

USAGE = {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6}


@pytest.mark.parametrize("end", ["", "\r\n"])
@pytest.mark.parametrize(
    "cut",
    [
        '{"candidates": [{"content": {"parts": [{"text": "wor',
        '{"candidates": 5,',  # msgspec: ValidationError "expected array", yet a cut
        "[",  # msgspec: ValidationError "expected object", yet a cut
    ],
)
def test_last_event_cut_mid_json_at_eof_is_truncated(cut: str, end: str) -> None:
    body = data(chunk({"text": "Hel"}, usage=USAGE)) + f"data: {cut}{end}".encode()
    for pieces in splits(body, random_count=20):
        events = run(pieces)
        assert summarize(events)["text"] == "Hel"
        last = events[-1]
        assert (type(last), last.code, last.retryable) == (StreamFailed, "stream_truncated", True)
        assert last.usage is not None and last.usage.total_tokens == 6


@pytest.mark.parametrize("end", ["", "\r\n"])
@pytest.mark.parametrize("wrong", ["[1, 2]", '{"candidates": 5}', '{"candidates": [{"content": {"parts": "text"}}]}'])
def test_last_event_of_wrong_shape_at_eof_is_invalid(wrong: str, end: str) -> None:
    body = data(chunk({"text": "Hel"}, usage=USAGE)) + f"data: {wrong}{end}".encode()
    for pieces in splits(body, random_count=20):
        events = run(pieces)
        assert summarize(events)["text"] == "Hel"
        assert [type(e) for e in events][-1] is StreamFailed
        assert (events[-1].code, events[-1].retryable) == ("invalid_upstream_response", False)


def test_unframed_json_of_wrong_shape_at_eof_is_invalid() -> None:
    # Unframed JSON whose closing brace is the body's last byte: judged on the whole object
    # (not on its last line alone, "}", which is no JSON).
    body = data(chunk({"text": "Hel"})) + b'{\n  "candidates": 5\n}'
    for pieces in splits(body, random_count=20):
        events = run(pieces)
        assert summarize(events)["text"] == "Hel"
        assert events[-1].code == "invalid_upstream_response"


def test_unframed_chunk_that_is_not_an_error_is_processed() -> None:
    body = data(chunk({"text": "a"})) + json.dumps(chunk({"text": "b"}, finish="STOP"), indent=2).encode() + b"\n"
    assert summarize(run(body)) | {"usage": None} == summarize(run(data(chunk({"text": "ab"}, finish="STOP")))) | {"usage": None}


def test_stray_lines_that_start_no_json_are_ignored() -> None:
    body = b"foo: bar\r\nnot-a-field\r\n" + data(chunk({"text": "ok"}, finish="STOP"))
    assert summarize(run(body))["text"] == "ok"
    assert isinstance(run(body)[-1], StreamEnd)


def test_error_array_element_after_content() -> None:
    body = array(chunk({"text": "a"}), {"error": {"code": 499, "message": "The operation was cancelled.", "status": "CANCELLED"}})
    events = run(body, "array")
    assert [type(e) for e in events] == [TextDelta, StreamFailed]
    assert (events[-1].status, events[-1].retryable, events[-1].provider_type) == (499, False, "CANCELLED")


@pytest.mark.parametrize(
    ("raw", "tool_last", "mapped"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", False, "length"),
        ("MAX_TOKENS", True, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("IMAGE_SAFETY", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "error"),
        ("OTHER", False, "error"),
        ("LANGUAGE", False, "error"),
        ("FINISH_REASON_UNSPECIFIED", False, "error"),
        ("SOMETHING_NEW", False, "error"),
    ],
)
def test_finish_reason_mapping(raw: str, tool_last: bool, mapped: str) -> None:
    assert map_finish_reason(raw, tool_last) == mapped


def test_malformed_function_call_ends_with_finish_reason_error() -> None:
    events = run(data(chunk({"text": "Let me call it."}, finish="MALFORMED_FUNCTION_CALL")))
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert (end.finish_reason, end.raw_finish_reason) == ("error", "MALFORMED_FUNCTION_CALL")


def test_text_after_a_function_call_means_stop() -> None:
    call = {"functionCall": {"name": "f", "args": {"x": 1}}}
    events = run(data(chunk(call), chunk({"text": "Done."}, finish="STOP")))
    assert events[-1].finish_reason == "stop"
    events = run(data(chunk({"text": "Calling."}), chunk(call, {"text": ""}, finish="STOP")))
    assert events[-1].finish_reason == "tool_calls"


def test_function_calls_get_sequential_ids_unless_given() -> None:
    parts = [
        {"functionCall": {"name": "a", "args": {"n": 1}}},
        {"functionCall": {"name": "b"}},
        {"functionCall": {"id": "fc-7", "name": "c", "args": {"nested": {"l": [1, "2"]}}}},
    ]
    calls = [e for e in run(data(chunk(*parts, finish="STOP"))) if isinstance(e, ToolCall)]
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("call_0", "a", {"n": 1}),
        ("call_1", "b", {}),
        ("fc-7", "c", {"nested": {"l": [1, "2"]}}),
    ]
    assert json.loads(calls[2].arguments_raw) == {"nested": {"l": [1, "2"]}}


def test_thought_then_function_call_closes_the_reasoning_run() -> None:
    events = run(data(chunk({"text": "Thinking", "thought": True, "thoughtSignature": "c2ln"}),
                      chunk({"functionCall": {"name": "f", "args": {}}}, finish="STOP")))
    assert [type(e) for e in events] == [ReasoningDelta, ReasoningDone, ToolCall, ChoiceFinished, StreamEnd]
    assert events[0] == ReasoningDelta("Thinking", signature="c2ln")


def test_usage_last_wins_total_defaults_to_sum_and_cached_is_kept() -> None:
    first = {"promptTokenCount": 50, "candidatesTokenCount": 1, "totalTokenCount": 51}
    last = {"promptTokenCount": 40, "candidatesTokenCount": 9, "thoughtsTokenCount": 5, "cachedContentTokenCount": 32}
    end = run(data(chunk({"text": "a"}, usage=first), chunk({"text": "b"}, finish="STOP", usage=last)))[-1]
    assert end.usage.prompt_tokens == 40
    assert (end.usage.completion_tokens, end.usage.total_tokens) == (14, 54)
    assert (end.usage.reasoning_tokens, end.usage.cached_tokens) == (5, 32)


def test_candidate_without_parts_and_usage_only_chunks() -> None:
    body = data(
        {"candidates": [{"content": {"role": "model"}, "index": 0}]},
        chunk({"text": "hi"}, finish="STOP"),
        {"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4}},
    )
    events = run(body)
    assert [type(e) for e in events] == [TextDelta, ChoiceFinished, StreamEnd]
    assert events[-1].usage.total_tokens == 4


def test_two_candidates_each_get_a_choice_finished() -> None:
    body = data(
        {"candidates": [chunk({"text": "A1"})["candidates"][0], chunk({"text": "B1"}, index=1)["candidates"][0]]},
        {"candidates": [chunk({"text": "A2"}, finish="STOP")["candidates"][0], chunk({"functionCall": {"name": "f", "args": {}}}, finish="STOP", index=1)["candidates"][0]]},
    )
    events = run(body)
    assert summarize(events, choice=0)["text"] == "A1A2"
    assert summarize(events, choice=1)["text"] == "B1"
    finished = [e for e in events if isinstance(e, ChoiceFinished)]
    assert finished == [ChoiceFinished("stop", "STOP", 0), ChoiceFinished("tool_calls", "STOP", 1)]
    assert events[-1].finish_reason == "stop"
    unfinished = data({"candidates": [chunk({"text": "A"}, finish="STOP")["candidates"][0], chunk({"text": "B"}, index=1)["candidates"][0]]})
    assert run(unfinished)[-1].code == "stream_truncated"


def test_prompt_blocked_is_a_content_filter_finish() -> None:
    body = data({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}})
    events = run(body)
    assert events == [
        ChoiceFinished("content_filter", "PROHIBITED_CONTENT"),
        StreamEnd("content_filter", events[-1].usage, "PROHIBITED_CONTENT"),
    ]
    assert events[-1].usage.prompt_tokens == 8


def test_empty_body_is_truncated() -> None:
    for framing in ("sse", "array"):
        [failed] = run(b"", framing)
        assert failed.code == "stream_truncated"
