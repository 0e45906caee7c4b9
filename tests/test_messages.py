"""Tests for protocol/messages.py: client message decoding and hub message encoding.

Client → hub: every shape the docstrings document is accepted, from ``str`` and ``bytes``;
every rejection carries the stable ``code`` of protocol/errors.py and names the field.
Hub → client: each message encodes to the exact camelCase JSON of the protocol and
decodes back to an equal Struct through ``HUB_DECODER``.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.messages import (
    CHANNEL_PATTERN,
    COMPLETION_ID_PATTERN,
    HUB_DECODER,
    Cancel,
    ChatMessage,
    CitationMessage,
    Completed,
    Completion,
    ContentChunk,
    ErrorInfo,
    ErrorMessage,
    Ping,
    Pong,
    RefusalChunk,
    Subscribe,
    Subscribed,
    ThinkingStatus,
    ToolCallMessage,
    Unsubscribe,
    Unsubscribed,
    UsageInfo,
    decode_client_message,
    encode,
)

CLIENT_TAGS = ("completion", "subscribe", "unsubscribe", "cancel", "ping")
ERROR_CODES = {"invalid_json", "unknown_type", "invalid_message"}

HELLO = [{"role": "user", "content": "Hello"}]


def completion(**fields: Any) -> dict[str, Any]:
    """A valid completion message as a dict, with ``fields`` added or replaced."""
    message: dict[str, Any] = {"type": "completion", "model": "openai/gpt-4o-mini", "messages": HELLO}
    message.update(fields)
    return message


def reject(payload: Any) -> ProtocolError:
    """Decode ``payload`` (a dict/list is JSON-encoded first); return the ProtocolError."""
    data = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
    with pytest.raises(ProtocolError) as info:
        decode_client_message(data)
    return info.value


# Client → hub: accepted shapes.


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_minimal_completion(as_bytes: bool) -> None:
    data = json.dumps(completion(id="comp-123"))
    message = decode_client_message(data.encode() if as_bytes else data)
    assert message == Completion(
        model="openai/gpt-4o-mini", messages=[ChatMessage(role="user", content="Hello")], id="comp-123"
    )
    assert message.coalesce is True
    assert message.max_tokens is None


def test_completion_with_every_option() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}], "name": "alice"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]
    message = decode_client_message(
        json.dumps(
            completion(
                id="comp_1.a:b-c",
                messages=messages,
                max_tokens=256,
                temperature=0.2,
                tools=tools,
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                stop=["\n\n", "END"],
                reasoning={"effort": "low"},
                thinking={"type": "enabled", "budget_tokens": 1024},
                coalesce=False,
            )
        )
    )
    assert isinstance(message, Completion)
    assert message.id == "comp_1.a:b-c"
    assert message.max_tokens == 256
    assert message.temperature == 0.2
    assert message.tools == tools
    assert message.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert message.stop == ["\n\n", "END"]
    assert message.reasoning == {"effort": "low"}
    assert message.thinking == {"type": "enabled", "budget_tokens": 1024}
    assert message.coalesce is False
    assert [m.role for m in message.messages] == ["system", "developer", "user", "assistant", "tool"]
    assert message.messages[2].content == [{"type": "text", "text": "Weather in Paris?"}]
    assert message.messages[2].name == "alice"
    assert message.messages[3].tool_calls is not None and message.messages[3].tool_calls[0]["id"] == "call_1"
    assert message.messages[4].tool_call_id == "call_1"


@pytest.mark.parametrize(
    ("field", "value"),
    [("tool_choice", "required"), ("stop", "END"), ("reasoning", "high"), ("temperature", 1)],
)
def test_completion_alternative_option_shapes(field: str, value: Any) -> None:
    message = decode_client_message(json.dumps(completion(**{field: value})))
    assert getattr(message, field) == value


def test_completion_id_of_128_characters_is_accepted() -> None:
    message = decode_client_message(json.dumps(completion(id="a" * 128)))
    assert isinstance(message, Completion) and message.id == "a" * 128


@pytest.mark.parametrize(
    ("fields", "channels", "streams"),
    [
        ({"channels": ["completion:comp-123", "system"]}, ["completion:comp-123", "system"], []),
        ({"streams": ["completion", "workflow", "agent_status"]}, [], ["completion", "workflow", "agent_status"]),
        ({"channels": ["agent:a1"], "streams": ["system"]}, ["agent:a1"], ["system"]),
    ],
)
@pytest.mark.parametrize("kind", [Subscribe, Unsubscribe], ids=["subscribe", "unsubscribe"])
def test_subscribe_and_unsubscribe(kind: type, fields: dict[str, Any], channels: list[str], streams: list[str]) -> None:
    tag = "subscribe" if kind is Subscribe else "unsubscribe"
    for data in (json.dumps({"type": tag, **fields}), json.dumps({"type": tag, **fields}).encode()):
        message = decode_client_message(data)
        assert type(message) is kind
        assert message.channels == channels
        assert message.streams == streams


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_cancel_uses_camel_case_completion_id(as_bytes: bool) -> None:
    data = '{"type":"cancel","completionId":"comp-123"}'
    message = decode_client_message(data.encode() if as_bytes else data)
    assert message == Cancel(completion_id="comp-123")


@pytest.mark.parametrize("data", ['{"type":"ping"}', b'{"type":"ping"}', ' { "type" : "ping" } \n'])
def test_ping(data: str | bytes) -> None:
    assert decode_client_message(data) == Ping()


# Client → hub: rejections.


@pytest.mark.parametrize(
    "data",
    ["", "   ", "{", '{"type":"ping"', "{'type': 'ping'}", "ping", b"\x00\x01", '{"type":"ping"} x', b"\xff\xfe"],
)
def test_malformed_json_is_invalid_json(data: str | bytes) -> None:
    assert reject(data).code == "invalid_json"


def test_invalid_utf8_inside_a_string_is_invalid_json() -> None:
    # Well-formed JSON whose string holds a byte that is not UTF-8 (0xff): msgspec raises
    # UnicodeDecodeError, which must not escape as anything but invalid_json.
    assert reject(b'{"type":"\xff"}').code == "invalid_json"
    assert reject(b'{"type":"ping","extra":1,"other":"\xff"}').code == "invalid_json"


@pytest.mark.parametrize("data", ["[]", '[{"type":"ping"}]', "3", "-1.5e3", '"ping"', "null", "true"])
def test_json_that_is_not_an_object_is_invalid_message(data: str) -> None:
    error = reject(data)
    assert error.code == "invalid_message"
    assert "object" in error.message


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"model": "gpt-4o", "messages": HELLO},
        {"type": None},
        {"type": "pong"},
        {"type": "COMPLETION"},
        {"type": "content_chunk", "completionId": "c", "seq": 0, "content": "x"},
        {"type": 5},
        {"type": True},
        {"type": ["ping"]},
        {"type": {"name": "ping"}},
    ],
)
def test_missing_or_unknown_type_is_unknown_type(payload: dict[str, Any]) -> None:
    error = reject(payload)
    assert error.code == "unknown_type"
    assert "type" in error.message


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"type": "completion", "messages": HELLO}, "model"),
        ({"type": "completion", "model": "gpt-4o"}, "messages"),
        (completion(max_tokens="ten"), "max_tokens"),
        (completion(max_tokens=1.5), "max_tokens"),
        (completion(temperature="hot"), "temperature"),
        (completion(model=42), "model"),
        (completion(messages="Hello"), "messages"),
        (completion(coalesce="no"), "coalesce"),
        (completion(stop=[1, 2]), "stop"),
        (completion(tools={"name": "f"}), "tools"),
        (completion(unknown=1), "unknown"),
        (completion(completionId="c1"), "completionId"),
        (completion(messages=[{"role": "robot", "content": "hi"}]), "role"),
        (completion(messages=[{"content": "hi"}]), "role"),
        (completion(messages=[{"role": "user", "content": 7}]), "content"),
        (completion(messages=[]), "messages"),
        (completion(model=""), "model"),
        (completion(id="comp 123"), "id"),
        (completion(id=""), "id"),
        (completion(id="a" * 129), "id"),
        (completion(id="comp/123"), "id"),
        (completion(id=123), "id"),
        ({"type": "subscribe"}, "channels"),
        ({"type": "subscribe", "channels": [], "streams": []}, "streams"),
        ({"type": "unsubscribe"}, "channels"),
        ({"type": "subscribe", "channels": "system"}, "channels"),
        ({"type": "subscribe", "channels": ["system"], "topic": "x"}, "topic"),
        ({"type": "cancel"}, "completionId"),
        ({"type": "cancel", "completion_id": "c1"}, "completion_id"),
        ({"type": "cancel", "completionId": 7}, "completionId"),
        ({"type": "ping", "id": 1}, "id"),
    ],
)
def test_invalid_fields_are_invalid_message_naming_the_field(payload: dict[str, Any], field: str) -> None:
    error = reject(payload)
    assert error.code == "invalid_message"
    assert field in error.message
    assert error.retryable is False


def test_errors_are_reported_as_hub_error_objects() -> None:
    error = reject('{"type":"nope"}')
    assert error.as_dict() == {"code": "unknown_type", "message": error.message, "retryable": False}
    assert "nope" in error.message


def test_id_pattern_and_channel_pattern() -> None:
    assert COMPLETION_ID_PATTERN.fullmatch("comp-123")
    assert not COMPLETION_ID_PATTERN.fullmatch("comp 123")
    for name in ("completion:comp-1", "workflow:w_1", "agent:a.b", "system"):
        assert CHANNEL_PATTERN.fullmatch(name), name
    for name in ("completion:", "agents:a", "system:1", "completion:a b"):
        assert not CHANNEL_PATTERN.fullmatch(name), name


# Hub → client: exact wire JSON.

USAGE = UsageInfo(prompt_tokens=10, completion_tokens=20, total_tokens=30)

WIRE = [
    (
        ContentChunk(completion_id="comp-123", seq=4, content="Hel"),
        b'{"type":"content_chunk","completionId":"comp-123","seq":4,"content":"Hel"}',
    ),
    (
        Completed(completion_id="comp-123", seq=9, finish_reason="stop", provider="openai", model="gpt-4o",
                  usage=USAGE, ttft_ms=12.5),
        b'{"type":"completed","completionId":"comp-123","seq":9,"finishReason":"stop","provider":"openai",'
        b'"model":"gpt-4o","usage":{"promptTokens":10,"completionTokens":20,"totalTokens":30},"ttftMs":12.5}',
    ),
    (
        Completed(completion_id="c1", seq=2, finish_reason="length", provider="anthropic", model="claude-3-5-haiku"),
        b'{"type":"completed","completionId":"c1","seq":2,"finishReason":"length","provider":"anthropic",'
        b'"model":"claude-3-5-haiku"}',
    ),
    (
        Completed(completion_id="c1", seq=3, finish_reason="stop", provider="google", model="gemini-2.0-flash",
                  usage=UsageInfo(prompt_tokens=1, completion_tokens=5, total_tokens=6, reasoning_tokens=3)),
        b'{"type":"completed","completionId":"c1","seq":3,"finishReason":"stop","provider":"google",'
        b'"model":"gemini-2.0-flash","usage":{"promptTokens":1,"completionTokens":5,"totalTokens":6,"reasoningTokens":3}}',
    ),
    (
        ErrorMessage(error=ErrorInfo(code="unknown_type", message="bad", retryable=False)),
        b'{"type":"error","error":{"code":"unknown_type","message":"bad","retryable":false}}',
    ),
    (
        ErrorMessage(error=ErrorInfo(code="rate_limited", message="slow down", retryable=True, status=429),
                     completion_id="c1", seq=7),
        b'{"type":"error","error":{"code":"rate_limited","message":"slow down","retryable":true,"status":429},'
        b'"completionId":"c1","seq":7}',
    ),
    (
        ToolCallMessage(completion_id="c1", seq=5, id="call_1", tool="get_weather", arguments={"city": "Paris"}),
        b'{"type":"tool_call","completionId":"c1","seq":5,"id":"call_1","tool":"get_weather","arguments":{"city":"Paris"}}',
    ),
    (
        ToolCallMessage(completion_id="c1", seq=5, id="call_1", tool="get_weather", arguments='{"city": "Par',
                        arguments_valid=False),
        b'{"type":"tool_call","completionId":"c1","seq":5,"id":"call_1","tool":"get_weather",'
        b'"arguments":"{\\"city\\": \\"Par","argumentsValid":false}',
    ),
    (
        ToolCallMessage(completion_id="c1", seq=6, id="srvtoolu_1", tool="web_search", arguments={"query": "x"},
                        server_tool=True),
        b'{"type":"tool_call","completionId":"c1","seq":6,"id":"srvtoolu_1","tool":"web_search",'
        b'"arguments":{"query":"x"},"serverTool":true}',
    ),
    (
        ToolCallMessage(completion_id="c1", seq=7, id="call_0", tool="f", arguments={}, signature="CiQBsig"),
        b'{"type":"tool_call","completionId":"c1","seq":7,"id":"call_0","tool":"f","arguments":{},"signature":"CiQBsig"}',
    ),
    (
        ThinkingStatus(completion_id="c1", seq=1, status="thinking", content="Let me think"),
        b'{"type":"thinking_status","completionId":"c1","seq":1,"status":"thinking","content":"Let me think"}',
    ),
    (
        ThinkingStatus(completion_id="c1", seq=2, status="thinking", signature="EqQBCgIYAhIM"),
        b'{"type":"thinking_status","completionId":"c1","seq":2,"status":"thinking","signature":"EqQBCgIYAhIM"}',
    ),
    (
        ThinkingStatus(completion_id="c1", seq=3, status="thinking", redacted="b64data"),
        b'{"type":"thinking_status","completionId":"c1","seq":3,"status":"thinking","redacted":"b64data"}',
    ),
    (
        ThinkingStatus(completion_id="c1", seq=4, status="done"),
        b'{"type":"thinking_status","completionId":"c1","seq":4,"status":"done"}',
    ),
    (
        RefusalChunk(completion_id="c1", seq=1, content="I can't"),
        b'{"type":"refusal","completionId":"c1","seq":1,"content":"I can\'t"}',
    ),
    (
        CitationMessage(completion_id="c1", seq=8, citation={"type": "char_location", "cited_text": "x"}),
        b'{"type":"citation","completionId":"c1","seq":8,"citation":{"type":"char_location","cited_text":"x"}}',
    ),
    (
        Subscribed(channels=["completion:c1"], streams=["system"]),
        b'{"type":"subscribed","channels":["completion:c1"],"streams":["system"]}',
    ),
    (
        Subscribed(channels=["completion:c1"], completion_id="c1"),
        b'{"type":"subscribed","channels":["completion:c1"],"completionId":"c1"}',
    ),
    (Unsubscribed(streams=["workflow"]), b'{"type":"unsubscribed","streams":["workflow"]}'),
    (Pong(), b'{"type":"pong"}'),
]


@pytest.mark.parametrize(("message", "wire"), WIRE, ids=[f"{type(m).__name__}-{i}" for i, (m, _) in enumerate(WIRE)])
def test_hub_message_wire_json_and_round_trip(message: Any, wire: bytes) -> None:
    assert encode(message) == wire
    assert HUB_DECODER.decode(wire) == message


def test_error_always_carries_retryable() -> None:
    for retryable in (False, True):
        payload = json.loads(encode(ErrorMessage(error=ErrorInfo(code="c", message="m", retryable=retryable))))
        assert payload["error"]["retryable"] is retryable


def test_tool_call_arguments_valid_only_when_false() -> None:
    valid = json.loads(encode(ToolCallMessage(completion_id="c", seq=0, id="i", tool="t", arguments={})))
    invalid = json.loads(
        encode(ToolCallMessage(completion_id="c", seq=0, id="i", tool="t", arguments="{", arguments_valid=False))
    )
    assert "argumentsValid" not in valid
    assert invalid["argumentsValid"] is False


def test_hub_fields_are_camel_case() -> None:
    for message, wire in WIRE:
        keys = set(json.loads(wire)) | set(json.loads(wire).get("usage") or {})
        assert not any("_" in key for key in keys), (type(message).__name__, keys)


# Property: decode_client_message never fails with anything but a ProtocolError.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)

field_names = st.sampled_from(
    ["model", "messages", "id", "max_tokens", "temperature", "tools", "tool_choice", "stop", "reasoning",
     "thinking", "coalesce", "channels", "streams", "completionId", "role", "content"]
) | st.text(max_size=8)

tagged_objects = st.builds(
    lambda tag, fields: {**fields, "type": tag},
    st.sampled_from(CLIENT_TAGS) | json_values,
    st.dictionaries(field_names, json_values, max_size=5),
)


def _check(data: str | bytes) -> None:
    try:
        message = decode_client_message(data)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES, exc.code
        assert exc.message
    else:
        assert isinstance(message, (Completion, Subscribe, Unsubscribe, Cancel, Ping))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_random_bytes_give_a_message_or_a_protocol_error(data: bytes) -> None:
    _check(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | tagged_objects, st.booleans())
def test_random_json_gives_a_message_or_a_protocol_error(value: Any, as_bytes: bool) -> None:
    text = json.dumps(value, ensure_ascii=False)
    _check(text.encode() if as_bytes else text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tagged_objects, st.binary(min_size=1, max_size=4))
def test_json_with_invalid_utf8_bytes_gives_a_protocol_error(value: dict[str, Any], junk: bytes) -> None:
    # Splice raw bytes into a string value: what a client sending broken UTF-8 would produce.
    data = json.dumps({**value, "zz": "@"}).encode().replace(b'"zz": "@"', b'"zz": "' + junk.replace(b'"', b"") + b'"')
    _check(data)


def test_msgspec_round_trip_of_client_messages() -> None:
    # The client Structs encode back to what they were decoded from (the Python SDK relies on it).
    for payload in (completion(id="c1", max_tokens=5), {"type": "cancel", "completionId": "c1"},
                    {"type": "subscribe", "channels": ["system"]}, {"type": "ping"}):
        message = decode_client_message(json.dumps(payload))
        assert decode_client_message(msgspec.json.encode(message)) == message
