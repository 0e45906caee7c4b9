"""Tests for protocol/openai_compat.py: the OpenAI-compatible request parser and encoders.

Encoder output is read back with the hub's own SSE parser (protocol/framing.py) and checked
against OpenAI's chunk shape (docs/PROVIDERS.md §1.1-§1.2); the openai package's Pydantic models
confirm that an OpenAI client would accept each chunk.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from protocol.errors import ProtocolError
from protocol.framing import SSEDecoder, SSEEvent
from protocol.messages import (
    ChatMessage,
    CitationMessage,
    Completed,
    Completion,
    ContentChunk,
    ErrorInfo,
    ErrorMessage,
    RefusalChunk,
    ThinkingStatus,
    ToolCallMessage,
    UsageInfo,
)
from protocol.openai_compat import (
    DONE,
    ChunkEncoder,
    completion_object,
    decode_chat_request,
    error_body,
    usage_dict,
)

RESPONSE_ID = "chatcmpl-abc123"
MODEL = "openai/gpt-4o-mini"
CREATED = 1_700_000_000
USAGE = UsageInfo(prompt_tokens=12, completion_tokens=7, total_tokens=19)


def body(**fields: Any) -> bytes:
    request: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]}
    request.update(fields)
    return json.dumps(request).encode()


# decode_chat_request.


def test_decode_valid_request() -> None:
    request = decode_chat_request(
        body(stream=True, stream_options={"include_usage": True}, max_tokens=50, temperature=0.5,
             stop="END", tool_choice="auto", tools=[{"type": "function", "function": {"name": "f"}}],
             user="ignored-field", n=1)
    )
    assert request.model == MODEL
    assert request.messages == [ChatMessage(role="user", content="Hello")]
    assert request.stream is True
    assert request.stream_options is not None and request.stream_options.include_usage is True
    completion = request.to_completion("comp-1")
    assert isinstance(completion, Completion)
    assert completion.id == "comp-1"
    assert completion.model == MODEL
    assert completion.max_tokens == 50
    assert completion.temperature == 0.5
    assert completion.stop == "END"
    assert completion.tool_choice == "auto"
    assert completion.tools == [{"type": "function", "function": {"name": "f"}}]
    assert completion.reasoning is None
    assert completion.coalesce is True


def test_defaults_stream_false_and_no_usage_option() -> None:
    request = decode_chat_request(body())
    assert request.stream is False
    assert request.stream_options is None
    assert request.to_completion().id is None


def test_max_completion_tokens_is_a_synonym_of_max_tokens() -> None:
    assert decode_chat_request(body(max_completion_tokens=300)).to_completion().max_tokens == 300
    # When both are given, max_tokens wins.
    assert decode_chat_request(body(max_tokens=10, max_completion_tokens=300)).to_completion().max_tokens == 10


def test_reasoning_effort_becomes_completion_reasoning() -> None:
    assert decode_chat_request(body(reasoning_effort="high")).to_completion().reasoning == {"effort": "high"}


def test_coalesce_extension() -> None:
    assert decode_chat_request(body(coalesce=False)).to_completion().coalesce is False


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b'{"model": "m",}', b'{"model":"\xff","messages":[]}'])
def test_request_that_is_not_json_is_invalid_json(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_chat_request(data)
    assert info.value.code == "invalid_json"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), "model"),
        (json.dumps({"model": "gpt-4o"}).encode(), "messages"),
        (body(messages=[]), "messages"),
        (body(max_tokens="ten"), "max_tokens"),
        (body(stream="yes"), "stream"),
        (body(messages=[{"role": "wizard", "content": "hi"}]), "role"),
        (body(stream_options={"include_usage": "yes"}), "include_usage"),
        (b"[]", "object"),
    ],
)
def test_invalid_request_is_invalid_message_naming_the_field(data: bytes, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_chat_request(data)
    assert info.value.code == "invalid_message"
    assert field in info.value.message


# ChunkEncoder, read back with SSEDecoder.


def parse(stream: bytes) -> list[str]:
    decoder = SSEDecoder()
    events = decoder.feed(stream) + decoder.close()
    assert not decoder.unterminated, "every event must end with a blank line"
    assert all(isinstance(e, SSEEvent) and e.event == "message" for e in events)
    return [e.data for e in events]  # type: ignore[union-attr]


def encode_all(messages: list[Any], *, include_usage: bool = False) -> list[str]:
    encoder = ChunkEncoder(RESPONSE_ID, MODEL, CREATED, include_usage=include_usage)
    return parse(b"".join(encoder.encode(m) for m in messages))


def chunks(datas: list[str]) -> list[dict[str, Any]]:
    """Every event but the final ``[DONE]``, parsed; each checked against OpenAI's model."""
    assert datas[-1] == "[DONE]"
    assert "[DONE]" not in datas[:-1]
    out = [json.loads(d) for d in datas[:-1]]
    for chunk in out:
        if "error" not in chunk:
            ChatCompletionChunk.model_validate(chunk)
    return out


def deltas(parsed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in parsed if c.get("choices")]


TEXT_STREAM = [
    ContentChunk(completion_id="c1", seq=0, content="Hel"),
    ContentChunk(completion_id="c1", seq=1, content="lo!"),
    Completed(completion_id="c1", seq=2, finish_reason="stop", provider="openai", model="gpt-4o-mini", usage=USAGE),
]


def test_text_stream_chunks() -> None:
    parsed = chunks(encode_all(TEXT_STREAM))
    for chunk in parsed:
        assert chunk["id"] == RESPONSE_ID
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["created"] == CREATED
        assert chunk["model"] == MODEL
    assert parsed[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert deltas(parsed)[1:3] == [{"content": "Hel"}, {"content": "lo!"}]
    assert [c["choices"][0]["finish_reason"] for c in parsed] == [None, None, None, "stop"]
    assert parsed[-1]["choices"][0]["delta"] == {}
    assert all("usage" not in c for c in parsed)  # include_usage was not asked for


def test_role_is_sent_once_first() -> None:
    parsed = chunks(encode_all(TEXT_STREAM))
    assert [("role" in d) for d in deltas(parsed)] == [True, False, False, False]


def test_usage_chunk_only_with_include_usage() -> None:
    parsed = chunks(encode_all(TEXT_STREAM, include_usage=True))
    usage_chunk = parsed[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    assert usage_chunk["id"] == RESPONSE_ID
    assert parsed[-2]["choices"][0]["finish_reason"] == "stop"
    assert sum(1 for c in parsed if c["choices"] == []) == 1


def test_usage_chunk_carries_reasoning_tokens() -> None:
    usage = UsageInfo(prompt_tokens=1, completion_tokens=10, total_tokens=11, reasoning_tokens=6)
    done = Completed(completion_id="c1", seq=0, finish_reason="stop", provider="openai", model="o3", usage=usage)
    parsed = chunks(encode_all([done], include_usage=True))
    assert parsed[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 6}


def test_tool_call_deltas_carry_index_id_type_function() -> None:
    parsed = chunks(encode_all([
        ToolCallMessage(completion_id="c1", seq=0, id="call_a", tool="get_weather", arguments={"city": "Paris"}),
        ToolCallMessage(completion_id="c1", seq=1, id="call_b", tool="get_time", arguments='{"tz": "Eur',
                        arguments_valid=False),
        Completed(completion_id="c1", seq=2, finish_reason="tool_calls", provider="openai", model="gpt-4o"),
    ]))
    calls = [d["tool_calls"] for d in deltas(parsed) if "tool_calls" in d]
    assert calls == [
        [{"index": 0, "id": "call_a", "type": "function",
          "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}],
        [{"index": 1, "id": "call_b", "type": "function",
          "function": {"name": "get_time", "arguments": '{"tz": "Eur'}}],  # raw string kept as is
    ]
    assert json.loads(calls[0][0]["function"]["arguments"]) == {"city": "Paris"}
    assert parsed[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_reasoning_and_refusal_deltas() -> None:
    parsed = chunks(encode_all([
        ThinkingStatus(completion_id="c1", seq=0, status="thinking", content="Let me see"),
        ThinkingStatus(completion_id="c1", seq=1, status="thinking", signature="sig"),  # no text: no chunk
        ThinkingStatus(completion_id="c1", seq=2, status="done"),  # no chunk
        CitationMessage(completion_id="c1", seq=3, citation={"type": "x"}),  # not in OpenAI's format
        RefusalChunk(completion_id="c1", seq=4, content="I can't help"),
        Completed(completion_id="c1", seq=5, finish_reason="stop", provider="anthropic", model="claude"),
    ]))
    assert deltas(parsed) == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "Let me see"},
        {"refusal": "I can't help"},
        {},
    ]


def test_first_message_being_terminal_still_starts_with_role() -> None:
    done = Completed(completion_id="c1", seq=0, finish_reason="length", provider="openai", model="m")
    parsed = chunks(encode_all([done]))
    assert deltas(parsed) == [{"role": "assistant", "content": ""}, {}]
    assert parsed[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("status", "kind"), [(400, "invalid_request_error"), (None, "api_error"), (529, "api_error")]
)
def test_error_message_gives_error_chunk_then_done(status: int | None, kind: str) -> None:
    error = ErrorMessage(
        error=ErrorInfo(code="rate_limited", message="Too many requests", retryable=True, status=status),
        completion_id="c1",
        seq=3,
    )
    datas = encode_all([ContentChunk(completion_id="c1", seq=0, content="par"), error])
    assert datas[-1] == "[DONE]"
    assert json.loads(datas[-2]) == {
        "error": {"message": "Too many requests", "type": kind, "param": None, "code": "rate_limited"}
    }
    assert deltas([json.loads(d) for d in datas[:-2]]) == [{"role": "assistant", "content": ""}, {"content": "par"}]


def test_done_is_the_literal_last_event() -> None:
    encoder = ChunkEncoder(RESPONSE_ID, MODEL, CREATED)
    stream = b"".join(encoder.encode(m) for m in TEXT_STREAM)
    assert stream.endswith(DONE)
    assert DONE == b"data: [DONE]\n\n"
    assert stream.count(b"[DONE]") == 1


def test_special_characters_survive_encoding() -> None:
    text = 'quote " backslash \\ newline \n emoji 😀 </script>'
    parsed = chunks(encode_all([ContentChunk(completion_id="c", seq=0, content=text),
                                Completed(completion_id="c", seq=1, finish_reason="stop", provider="p", model="m")]))
    assert deltas(parsed)[1] == {"content": text}


def test_error_body_envelope() -> None:
    assert json.loads(error_body("model_not_found", "no such model", 404)) == {
        "error": {"message": "no such model", "type": "invalid_request_error", "param": None, "code": "model_not_found"}
    }
    assert json.loads(error_body("provider_error", "boom"))["error"]["type"] == "api_error"


def test_usage_dict() -> None:
    assert usage_dict(USAGE) == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


# completion_object.


def test_completion_object_aggregates_text_and_usage() -> None:
    result = completion_object(RESPONSE_ID, MODEL, CREATED, TEXT_STREAM)
    assert result == {
        "id": RESPONSE_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
    ChatCompletion.model_validate(result)


def test_completion_object_aggregates_tool_calls_and_reasoning() -> None:
    messages = [
        ThinkingStatus(completion_id="c", seq=0, status="thinking", content="need "),
        ThinkingStatus(completion_id="c", seq=1, status="thinking", content="weather"),
        ThinkingStatus(completion_id="c", seq=2, status="done"),
        ToolCallMessage(completion_id="c", seq=3, id="call_1", tool="get_weather", arguments={"city": "Paris"}),
        ToolCallMessage(completion_id="c", seq=4, id="call_2", tool="get_time", arguments="{bad", arguments_valid=False),
        Completed(completion_id="c", seq=5, finish_reason="tool_calls", provider="openai", model="gpt-4o"),
    ]
    result = completion_object(RESPONSE_ID, MODEL, CREATED, messages)
    message = result["choices"][0]["message"]
    assert message["content"] is None  # tool calls only
    assert message["reasoning_content"] == "need weather"
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{bad"}},
    ]
    assert result["choices"][0]["finish_reason"] == "tool_calls"
    assert "usage" not in result
    ChatCompletion.model_validate(result)


def test_completion_object_text_with_tool_calls_and_refusal() -> None:
    messages = [
        ContentChunk(completion_id="c", seq=0, content="Checking."),
        ToolCallMessage(completion_id="c", seq=1, id="call_1", tool="f", arguments={}),
        RefusalChunk(completion_id="c", seq=2, content="No."),
        Completed(completion_id="c", seq=3, finish_reason="tool_calls", provider="openai", model="m", usage=USAGE),
    ]
    message = completion_object(RESPONSE_ID, MODEL, CREATED, messages)["choices"][0]["message"]
    assert message["content"] == "Checking."
    assert message["refusal"] == "No."
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}


def test_completion_object_of_no_output_has_empty_content() -> None:
    done = Completed(completion_id="c", seq=0, finish_reason="length", provider="openai", model="m")
    result = completion_object(RESPONSE_ID, MODEL, CREATED, [done])
    assert result["choices"][0]["message"]["content"] == ""
    assert result["choices"][0]["finish_reason"] == "length"
