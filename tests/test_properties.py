"""Property-based tests of everything that parses bytes from outside the hub.

- :func:`protocol.messages.decode_client_message` (client frames): returns a client message
  or raises :class:`~protocol.errors.ProtocolError` with one of the codes its docstring lists,
  each of which docs/PROTOCOL.md's "Error codes" table gives as a client-fault answer; never
  any other exception. tests/test_messages.py already feeds it short random bytes and random
  JSON; here: generated *valid* messages (accepted, with the values sent), single mutations of
  them (the exact code, naming the field), byte-level corruption of valid frames, nesting
  from 1 to 20 000 levels, and huge frames.
- The framing parsers of protocol/framing.py, fed arbitrary bytes cut at arbitrary points and
  then closed: tests/test_framing.py checks that the outcome does not depend on the cuts; here
  the outcome is also compared with a whole-body reference model (SSE, NDJSON), and the
  JSON array's documented error behaviour (elements before the bad byte come first; a cut
  body is never an error) is checked.
- The four normalizers (five framings: Gemini has two) fed arbitrary bytes and mutated
  recordings: only unified events come out, the last is exactly one ``StreamEnd`` or
  ``StreamFailed`` (protocol/normalizers/base.py), whose code is a terminal code of the
  protocol, and the result does not depend on how the body was cut into reads.

Every property runs a fixed number of examples with a derandomized seed (no example database),
so a CI run tests the same inputs each time.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import FramingError, ProtocolError
from protocol.events import (
    ChoiceFinished,
    Citation,
    ReasoningDelta,
    ReasoningDone,
    RefusalDelta,
    StreamEnd,
    StreamFailed,
    TextDelta,
    ToolCall,
)
from protocol.framing import JSONArrayDecoder, NDJSONDecoder, SSEDecoder, SSEEvent, StrayLine
from protocol.messages import (
    COMPLETION_ID_PATTERN,
    Cancel,
    Completion,
    Ping,
    Subscribe,
    Unsubscribe,
    decode_client_message,
)
from protocol.normalizers.anthropic import AnthropicNormalizer
from protocol.normalizers.gemini import GeminiNormalizer
from protocol.normalizers.ollama import OllamaChatNormalizer
from protocol.normalizers.openai import OpenAIChatNormalizer
from tests.support import DATA, ROOT


def prop(max_examples: int) -> Callable[[Any], Any]:
    """Hypothesis settings of this module: modest, derandomized, no example database."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# The documented error codes, read from docs/PROTOCOL.md's "Error codes" table:
# | code | fault | retryable | sent as | when | HTTP |


def _error_code_table() -> list[tuple[str, str, str]]:
    text = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    section = text.split("\n## Error codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+?) \| [^|]+? \| ([^|]+?) \|", section, re.MULTILINE)
    return [(code, fault.strip(), sent_as.strip()) for code, fault, sent_as in rows]


_TABLE = _error_code_table()
#: Codes that answer a client message the hub rejected (fault "client", sent as "answer").
CLIENT_ANSWER_CODES = frozenset(code for code, fault, sent_as in _TABLE if fault == "client" and "answer" in sent_as)
#: Codes that end a completion (sent as "terminal").
TERMINAL_CODES = frozenset(code for code, _, sent_as in _TABLE if "terminal" in sent_as)
#: The codes decode_client_message documents (its docstring's "Raises").
DECODER_CODES = frozenset({"invalid_json", "unknown_type", "invalid_message"})
#: What a normalizer's StreamFailed may carry (protocol/normalizers/base.py and
#: docs/PROTOCOL.md "Reading provider streams": in-band errors, truncation, garbage).
NORMALIZER_CODES = frozenset({"provider_error", "rate_limited", "stream_truncated", "invalid_upstream_response"})


def test_documented_code_sets() -> None:
    assert len(_TABLE) >= 20  # the table was found and parsed
    assert DECODER_CODES <= CLIENT_ANSWER_CODES
    assert CLIENT_ANSWER_CODES >= {"duplicate_id", "unknown_completion", "not_subscribed", "unknown_channel"}
    assert NORMALIZER_CODES <= TERMINAL_CODES


# decode_client_message.

_CLIENT_TYPES = (Completion, Subscribe, Unsubscribe, Cancel, Ping)


def decode_outcome(data: str | bytes) -> Any:
    """The decoded message, or ("error", code) for a documented ProtocolError; anything else
    (another exception, an undocumented code) fails the test."""
    try:
        message = decode_client_message(data)
    except ProtocolError as exc:
        assert exc.code in DECODER_CODES, exc.code
        assert exc.code in CLIENT_ANSWER_CODES, exc.code
        assert exc.message and exc.retryable is False
        return ("error", exc.code)
    assert isinstance(message, _CLIENT_TYPES)
    return message


_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_objects = st.dictionaries(st.text(max_size=8), _json, max_size=4)

_chat_messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"])},
    optional={
        "content": st.none() | st.text(max_size=30) | st.lists(_objects, max_size=3),
        "name": st.text(max_size=8),
        "tool_calls": st.lists(_objects, max_size=2),
        "tool_call_id": st.text(max_size=8),
    },
)
_completions = st.fixed_dictionaries(
    {"type": st.just("completion"), "model": st.text(min_size=1, max_size=24),
     "messages": st.lists(_chat_messages, min_size=1, max_size=3)},
    optional={
        "id": st.from_regex(COMPLETION_ID_PATTERN, fullmatch=True),
        "max_tokens": st.integers(-(2**63), 2**63 - 1),
        "temperature": st.floats(allow_nan=False, allow_infinity=False),
        "tools": st.lists(_objects, max_size=2),
        "tool_choice": st.text(max_size=8) | _objects,
        "stop": st.text(max_size=8) | st.lists(st.text(max_size=8), max_size=3),
        "reasoning": st.text(max_size=8) | _objects,
        "thinking": _objects,
        "coalesce": st.booleans(),
        "fallbacks": st.lists(st.text(max_size=12), max_size=3),
    },
)
_subscriptions = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe"])},
    optional={"channels": st.lists(st.text(max_size=16), max_size=3), "streams": st.lists(st.text(max_size=12), max_size=3)},
).filter(lambda message: message.get("channels") or message.get("streams"))
_cancels = st.fixed_dictionaries({"type": st.just("cancel"), "completionId": st.text(max_size=16)})
valid_messages = _completions | _subscriptions | _cancels | st.just({"type": "ping"})

# The fields of each message type, as spelled on the wire; which ones are required; and a
# value of the wrong type for each.
_FIELDS = {
    "completion": {"model", "messages", "id", "max_tokens", "temperature", "tools", "tool_choice", "stop",
                   "reasoning", "thinking", "coalesce", "fallbacks"},
    "subscribe": {"channels", "streams"},
    "unsubscribe": {"channels", "streams"},
    "cancel": {"completionId"},
    "ping": set(),
}
_REQUIRED = {"completion": ("model", "messages"), "cancel": ("completionId",)}
_WRONG_TYPES = {
    "model": [1, None, [], {}],
    "messages": ["Hi", 1, {}, None, [1], [{"content": "no role"}], [{"role": "robot"}]],
    "id": [1, [], {}],
    "max_tokens": ["ten", 1.5, [], True],
    "temperature": ["hot", [], {}, True],
    "tools": [{}, "x", 1, [1]],
    "tool_choice": [1, [], True],
    "stop": [1, [1], {}],
    "reasoning": [1, [], True],
    "thinking": ["x", 1, []],
    "coalesce": [1, "no", None],
    "fallbacks": ["m", [1], {}],
    "channels": ["system", [1], {}],
    "streams": ["completion", [None], 1],
    "completionId": [7, None, [], {}],
}


def _dumps(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode()


@prop(150)
@given(valid_messages, st.booleans(), st.booleans())
def test_valid_messages_decode_to_the_values_sent(message: dict[str, Any], ascii_only: bool, as_str: bool) -> None:
    data = _dumps(message, ascii_only)
    decoded = decode_outcome(data.decode() if as_str else data)
    assert not isinstance(decoded, tuple), decoded
    assert type(decoded).__struct_config__.tag == message["type"]
    wire = msgspec.to_builtins(decoded)
    for field, value in message.items():
        if field == "messages":  # ChatMessage leaves out fields that are None
            value = [{k: v for k, v in m.items() if v is not None} for m in value]
        assert wire[field] == value, field
    assert decode_client_message(msgspec.json.encode(decoded)) == decoded


@st.composite
def _mutations(draw: st.DrawFn) -> tuple[dict[str, Any], str, str | None]:
    """(a valid message with one thing wrong, the expected code, a text the error names)."""
    message = dict(draw(valid_messages))
    kind = message["type"]
    choices = ["unknown_field", "no_type", "unknown_type"]
    if kind in _REQUIRED:
        choices.append("missing")
    if _FIELDS[kind]:
        choices.append("wrong_type")
    choice = draw(st.sampled_from(choices))
    if choice == "unknown_field":
        name = draw(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,11}", fullmatch=True).filter(
            lambda n: n not in _FIELDS[kind] and n != "type"))
        message[name] = draw(_json)
        return message, "invalid_message", name
    if choice == "no_type":
        del message["type"]
        return message, "unknown_type", "type"
    if choice == "unknown_type":
        message["type"] = draw(st.text(max_size=12).filter(lambda t: t not in _FIELDS) | st.integers() | st.lists(st.text(), max_size=2))
        return message, "unknown_type", "type"
    if choice == "missing":
        field = draw(st.sampled_from(_REQUIRED[kind]))
        message.pop(field)
        return message, "invalid_message", field
    field = draw(st.sampled_from(sorted(_FIELDS[kind])))
    message[field] = draw(st.sampled_from(_WRONG_TYPES[field]))
    return message, "invalid_message", None if field == "messages" else field


@prop(200)
@given(_mutations(), st.booleans())
def test_one_thing_wrong_gives_its_code_naming_the_field(case: tuple[dict[str, Any], str, str | None], ascii_only: bool) -> None:
    message, code, named = case
    with pytest.raises(ProtocolError) as info:
        decode_client_message(_dumps(message, ascii_only))
    assert info.value.code == code, info.value
    if named is not None:
        assert named in info.value.message


@st.composite
def _corrupted(draw: st.DrawFn) -> bytes:
    """A valid frame with a few bytes deleted, inserted or replaced, or cut short."""
    data = bytearray(_dumps(draw(valid_messages), draw(st.booleans())))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["delete", "insert", "replace", "cut"]))
        junk = draw(st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"\\", b",", b":", b"\x00", b"\xff", b"\xc3",
                                     b"\xed\xa0\x80", b"\xf0\x9f", b"null", b"1e999", b"-", b" "]) | st.binary(max_size=3))
        if edit == "delete":
            del data[position : position + draw(st.integers(1, 4))]
        elif edit == "insert":
            data[position:position] = junk
        elif edit == "replace":
            data[position : position + len(junk)] = junk
        else:
            del data[position:]
    return bytes(data)


@prop(200)
@given(_corrupted(), st.booleans())
def test_corrupted_frames_give_a_message_or_a_documented_error(data: bytes, as_str: bool) -> None:
    if as_str:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return  # a text frame is valid UTF-8 (a str cannot hold these bytes)
        decode_outcome(text)
    else:
        decode_outcome(data)


@prop(150)
@given(_json, st.booleans())
def test_json_values_get_the_predicted_outcome(value: Any, ascii_only: bool) -> None:
    # No `type` field, or one naming no message: unknown_type; not an object: invalid_message;
    # a known type: the message or invalid_message. Never invalid_json: this is JSON.
    outcome = decode_outcome(_dumps(value, ascii_only))
    if not isinstance(value, dict):
        assert outcome == ("error", "invalid_message")
    elif not isinstance(value.get("type"), str) or value["type"] not in _FIELDS:
        assert outcome == ("error", "unknown_type")
    else:
        assert outcome == ("error", "invalid_message") or not isinstance(outcome, tuple)


# Deep nesting and huge frames: a documented ProtocolError, never RecursionError/MemoryError.

_PLACES = {
    "top": "{}",
    "free-form field": '{"type":"completion","model":"m","messages":[{"role":"user","content":"Hi"}],"thinking":{"a":{}}}',
    "tool definition": '{"type":"completion","model":"m","messages":[{"role":"user","content":"Hi"}],"tools":[{"a":{}}]}',
    "content part": '{"type":"completion","model":"m","messages":[{"role":"user","content":[{"type":"text","x":{}}]}]}',
    "unknown field": '{"type":"ping","x":{}}',
    "string field": '{"type":"cancel","completionId":{}}',
}


def _nested(depth: int, opener: str, closed: bool) -> str:
    closer = {"[": "]", '{"k":': "}", '[{"k":': "}]"}[opener]
    inner = "1" if opener != "[" else ""
    return opener * depth + inner + (closer * depth if closed else "")


def _same_kind(outcome: Any, other: Any) -> bool:
    return outcome == other if isinstance(other, tuple) else type(outcome) is type(other)


# msgspec recurses once per level and raises RecursionError at the interpreter's limit
# (CPython 3.11: about 1 000 levels; newer versions bound the C stack instead); the decoder
# reports it as invalid_json. Below that limit, depth changes nothing. 500 000 levels are
# too deep for every interpreter.
_TOO_DEEP = 500_000


@prop(120)
@given(
    depth=st.integers(1, 20_000) | st.integers(900, 1_100) | st.integers(1, 200),
    opener=st.sampled_from(["[", '{"k":', '[{"k":']),
    place=st.sampled_from(sorted(_PLACES)),
    closed=st.booleans(),
)
def test_any_nesting_depth_gives_a_message_or_a_documented_error(depth: int, opener: str, place: str, closed: bool) -> None:
    outcome = decode_outcome(_PLACES[place].replace("{}", _nested(depth, opener, closed), 1))
    if not closed:
        assert outcome == ("error", "invalid_json")
        return
    shallow = decode_outcome(_PLACES[place].replace("{}", _nested(1, opener, True), 1))
    if depth <= 200:  # far below any interpreter's limit
        assert _same_kind(outcome, shallow)
    else:
        assert outcome == ("error", "invalid_json") or _same_kind(outcome, shallow)


@pytest.mark.parametrize("opener", ["[", '{"k":', '[{"k":'])
@pytest.mark.parametrize("place", sorted(_PLACES))
def test_half_a_million_levels_are_invalid_json(place: str, opener: str) -> None:
    frame = _PLACES[place].replace("{}", _nested(_TOO_DEEP, opener, True), 1)
    assert decode_outcome(frame) == ("error", "invalid_json")
    assert decode_outcome(frame.encode()) == ("error", "invalid_json")


@pytest.mark.parametrize("opener", ["[", "{", '{"a":', '{"type":"ping","x":[', '{"type":"completion","thinking":{"a":['])
def test_ten_thousand_levels_give_a_protocol_error(opener: str) -> None:
    # Unclosed: invalid_json at any depth. Closed (brackets only): invalid_json where it is
    # too deep for the interpreter, else what the same frame nested shallowly gives.
    assert decode_outcome(opener * 10_000) == ("error", "invalid_json")
    closed = opener * 10_000 + "]" * 10_000
    assert decode_outcome(closed) in (("error", "invalid_json"), decode_outcome(opener + "]"))
    assert decode_outcome(closed.encode()) in (("error", "invalid_json"), decode_outcome(opener + "]"))


_HELLO = '"messages":[{"role":"user","content":"Hi"}]'


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"type":"completion","model":"m","messages":[{"role":"user","content":"' + "x" * 8_000_000 + '"}]}', Completion),
        ("[" * 2_000_000, "invalid_json"),
        ('"' + "x" * 4_000_000, "invalid_json"),
        ("1" * 1_000_000, "invalid_json"),
        ('{"type":"completion","model":"m",' + _HELLO + ',"max_tokens":' + "9" * 100_000 + "}", "invalid_json"),
        ('{"type":"completion","model":"m",' + _HELLO + ',"thinking":{"a":' + "9" * 100_000 + "}}", "invalid_json"),
        ('{"type":"completion","model":"m",' + _HELLO + ',"temperature":1e999999}', "invalid_json"),
        ('{"type":"completion","model":"m",' + _HELLO + ',"thinking":{"a":[' + "0," * 1_000_000 + "0]}}", Completion),
        ('{"type":"ping","pad":[' + "0," * 1_000_000 + "0]}", "invalid_message"),
        ('{"type":"subscribe","channels":[' + '"x",' * 500_000 + '"x"]}', Subscribe),
        ('{"type":"ping",' + ",".join(f'"k{i}":0' for i in range(100_000)) + "}", "invalid_message"),
        ('{"type":"ping"}' + " " * 4_000_000, Ping),
        (" " * 4_000_000, "invalid_json"),
    ],
    ids=["8MB-string", "2M-brackets", "unterminated-4MB-string", "1M-digit-number", "100k-digit-int-field",
         "100k-digit-free-form", "exponent-out-of-range", "1M-element-free-form", "1M-element-unknown-field",
         "500k-channels", "100k-unknown-keys", "4MB-trailing-whitespace", "4MB-whitespace-only"],
)
def test_huge_frames(frame: str, expected: Any) -> None:
    for data in (frame, frame.encode()):
        outcome = decode_outcome(data)
        if isinstance(expected, str):
            assert outcome == ("error", expected)
        else:
            assert isinstance(outcome, expected)


# Framing: arbitrary bytes cut at arbitrary points, then closed.

BOM = b"\xef\xbb\xbf"

_tokens = st.sampled_from(
    [b"data:", b"data: ", b"data", b"event: e", b"event:", b"id: 7", b"id:\x00", b"retry: 15", b"retry: 1x", b":", b": c",
     b"\r", b"\n", b"\r\n", b"\n\n", b"\r\r", BOM, BOM[:2], b"{", b"}", b"[", b"]", b'"', b"\\", b'\\"', b",", b" ",
     b"\t", b"1", b"x", b"foo: 1", b"\xf0\x9f\x98\x8a", b"\xf0\x9f", b"\x98\x8a", b"\xff", b"\x00", b"\xe2\x80\xa8",
     b"\xc2\x85", b'{"a":"}"}', b'[{"b":[1,{}]}]']
)
arbitrary_bytes = st.lists(_tokens | st.binary(max_size=6), max_size=50).map(b"".join) | st.binary(max_size=120)
cut_points = st.lists(st.integers(0, 100_000), max_size=16)


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` in reads cut at ``cuts`` (taken modulo the length; empty reads included)."""
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def run_framing(decoder: Any, pieces: list[bytes]) -> tuple[list[Any], str | None]:
    """Feed, then close: (every item returned, then "FramingError" if one was raised)."""
    items: list[Any] = []
    try:
        for piece in pieces:
            items.extend(decoder.feed(piece))
        items.extend(decoder.close())
    except FramingError as exc:
        assert exc.code == "invalid_upstream_response"
        return items, "FramingError"
    return items, None


def reference_sse(data: bytes) -> tuple[list[Any], bool]:
    """The event stream of a whole body per WHATWG HTML §9.2.6, with the hub's EOF policy
    (a pending event is dispatched at EOF, and flagged) and ``collect_stray=True``."""
    if data.startswith(BOM):
        data = data[len(BOM) :]
    *lines, last = re.split(rb"\r\n|\r|\n", data)
    if last:
        lines.append(last)  # the last line, without its line end
    items: list[Any] = []
    buffer: list[str] = []
    event_type = ""
    last_id = retry = None
    for raw in lines:
        line = raw.decode("utf-8", "replace")
        if not line:
            if buffer:
                items.append(SSEEvent("\n".join(buffer), event_type or "message", last_id, retry))
            buffer, event_type = [], ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            buffer.append(value)
        elif name == "event":
            event_type = value
        elif name == "id":
            if "\x00" not in value:
                last_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                retry = int(value)
        else:
            items.append(StrayLine(line))
    if buffer:
        items.append(SSEEvent("\n".join(buffer), event_type or "message", last_id, retry))
    return items, bool(buffer)


@prop(400)
@given(arbitrary_bytes, cut_points)
def test_sse_matches_the_reference_model_however_cut(data: bytes, cuts: list[int]) -> None:
    decoder = SSEDecoder(collect_stray=True)
    items, error = run_framing(decoder, cut(data, cuts))
    assert error is None  # SSE has no invalid bytes: only feed() after close() raises
    assert (items, decoder.unterminated) == reference_sse(data)


def reference_ndjson(data: bytes) -> tuple[list[bytes], bool]:
    *lines, last = data.split(b"\n")
    complete = [line.rstrip(b"\r") for line in lines]
    items = [line for line in complete if line.strip()]
    last = last.rstrip(b"\r")
    if last.strip():
        items.append(last)
    return items, bool(last.strip())


@prop(300)
@given(arbitrary_bytes, cut_points)
def test_ndjson_matches_the_reference_model_however_cut(data: bytes, cuts: list[int]) -> None:
    decoder = NDJSONDecoder()
    items, error = run_framing(decoder, cut(data, cuts))
    assert error is None
    assert (items, decoder.unterminated) == reference_ndjson(data)


@prop(400)
@given(arbitrary_bytes, cut_points)
def test_json_array_elements_before_an_error_do_not_depend_on_the_cuts(data: bytes, cuts: list[int]) -> None:
    # JSONArrayDecoder: "Elements completed before the bad byte are returned first, and the
    # error is raised by the next feed or close, so the outcome does not depend on where reads
    # are split."
    whole = run_framing(JSONArrayDecoder(), [data])
    assert run_framing(JSONArrayDecoder(), cut(data, cuts)) == whole
    for element in whole[0]:
        assert element[:1] in (b"{", b"[") and element[-1:] in (b"}", b"]")


_element_text = st.text(st.sampled_from('{}[]"\\,:/ aé😊\n\t'), max_size=6)
_elements = st.lists(
    st.dictionaries(_element_text, _json, max_size=3) | st.lists(_json, max_size=3), max_size=5
)
_whitespace = st.text(st.sampled_from(" \t\r\n"), max_size=3).map(str.encode)


@st.composite
def _array_bodies(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[int], int]:
    """(body, element texts, the offset just past each element, the offset past ``]``)."""
    elements = [_dumps(element, draw(st.booleans())) for element in draw(_elements)]
    body = draw(_whitespace) + b"["
    ends: list[int] = []
    for index, element in enumerate(elements):
        body += draw(_whitespace) + (b"," + draw(_whitespace) if index else b"") + element
        ends.append(len(body))
    body += draw(_whitespace) + b"]"
    return body, elements, ends, len(body)


@prop(120)
@given(_array_bodies(), st.integers(0, 10_000), cut_points)
def test_json_array_cut_short_is_never_an_error(array: tuple[bytes, list[bytes], list[int], int], length: int, cuts: list[int]) -> None:
    # A body cut anywhere holds no bad byte: the elements complete in it, no error, and
    # `complete` only once the `]` arrived (the normalizer reports the cut).
    body, elements, ends, closed_at = array
    prefix = body[: length % (len(body) + 1)]
    decoder = JSONArrayDecoder()
    items, error = run_framing(decoder, cut(prefix, cuts))
    assert error is None
    assert items == [element for element, end in zip(elements, ends, strict=True) if end <= len(prefix)]
    assert decoder.complete == (len(prefix) >= closed_at)


@prop(80)
@given(_array_bodies(), _whitespace, st.sampled_from([b"x", b"[", b"{}", b",", b"]", b'"', b"1", b"\x00"]), cut_points)
def test_json_array_data_after_the_closing_bracket_is_an_error_after_every_element(
    array: tuple[bytes, list[bytes], list[int], int], space: bytes, garbage: bytes, cuts: list[int]
) -> None:
    body, elements, _, _ = array
    decoder = JSONArrayDecoder()
    assert run_framing(decoder, cut(body + space + garbage, cuts)) == (elements, "FramingError")
    assert decoder.complete


# Normalizers: only unified events, ending with exactly one StreamEnd or StreamFailed.

NORMALIZERS: dict[str, tuple[Callable[[], Any], list[str]]] = {
    "openai": (OpenAIChatNormalizer, ["openai_text.sse", "openai_tool_calls.sse", "openai_compat_error.sse"]),
    "anthropic": (AnthropicNormalizer, ["anthropic_text.sse", "anthropic_thinking_tool_use.sse",
                                        "anthropic_overloaded_mid_stream.sse"]),
    "gemini-sse": (lambda: GeminiNormalizer("sse"), ["gemini_sse.sse", "gemini_sse_function_call.sse",
                                                     "gemini_sse_error_mid_stream.sse"]),
    "gemini-array": (lambda: GeminiNormalizer("array"), ["gemini_array.json"]),
    "ollama": (OllamaChatNormalizer, ["ollama_chat.ndjson", "ollama_tool_call.ndjson", "ollama_error.ndjson"]),
}
_RECORDINGS = {name: [(DATA / file).read_bytes() for file in files] for name, (_, files) in NORMALIZERS.items()}
_EVENT_TYPES = (TextDelta, ReasoningDelta, ReasoningDone, RefusalDelta, ToolCall, Citation, ChoiceFinished)

# Past CPython 3.11's recursion limit; the deep-nesting test below asserts only the base
# contract, which must hold whether or not an interpreter can decode them.
_DEEP = [b"[" * 5_000, b"[" * 5_000 + b"]" * 5_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000, b'{"a":' * 5_000]
_body_tokens = _tokens | st.sampled_from(
    [b"data: [DONE]", b"data: [DONE]\n\n", b"event: message_stop\ndata: {}\n\n", b'{"done":true}\n', b"data: {oops}\n\n",
     b'data: {"choices":[]}\n\n', b'{"error":{"code":429,"message":"x"}}', b'data: {"error":"boom"}\n\n', *_DEEP,
     *(b"data: " + deep for deep in _DEEP)]
)


@st.composite
def provider_bodies(draw: st.DrawFn, recordings: list[bytes]) -> bytes:
    """Random bytes, or a recording with a few spans deleted, replaced or inserted, or cut."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.lists(_body_tokens | st.binary(max_size=8), max_size=30).map(b"".join))
    data = bytearray(draw(st.sampled_from(recordings)))
    for _ in range(draw(st.integers(0, 3))):
        position = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["delete", "insert", "replace", "cut"]))
        junk = draw(_body_tokens | st.binary(max_size=4))
        if edit == "delete":
            del data[position : position + draw(st.integers(1, 200))]
        elif edit == "insert":
            data[position:position] = junk
        elif edit == "replace":
            data[position : position + len(junk)] = junk
        else:
            del data[position:]
    return bytes(data)


def run_normalizer(factory: Callable[[], Any], pieces: list[bytes]) -> list[Any]:
    """Feed, close, then check the base contract; return the events."""
    normalizer = factory()
    events: list[Any] = []
    for piece in pieces:
        events.extend(normalizer.feed(piece))
    events.extend(normalizer.close())
    assert normalizer.feed(b"data: [DONE]\n\n") == [] and normalizer.close() == []  # nothing after the end
    assert events and isinstance(events[-1], (StreamEnd, StreamFailed)), events[-1:]
    for event in events[:-1]:
        assert isinstance(event, _EVENT_TYPES), event
        if isinstance(event, (TextDelta, RefusalDelta)):
            assert event.text  # no empty deltas
        if isinstance(event, ToolCall):
            assert event.id and isinstance(event.arguments_raw, str)
    terminal = events[-1]
    if isinstance(terminal, StreamFailed):
        assert terminal.code in NORMALIZER_CODES, terminal.code
        assert terminal.message
    return events


@pytest.mark.parametrize("name", list(NORMALIZERS))
@prop(100)
@given(data=st.data(), cuts=cut_points)
def test_normalizer_gives_only_unified_events_ending_once(name: str, data: st.DataObject, cuts: list[int]) -> None:
    factory, _ = NORMALIZERS[name]
    body = data.draw(provider_bodies(_RECORDINGS[name]), label="body")
    whole = run_normalizer(factory, [body])
    # "the output never depends on where the body was split into reads"
    assert run_normalizer(factory, cut(body, cuts)) == whole


@pytest.mark.parametrize("name", list(NORMALIZERS))
@pytest.mark.parametrize("deep", range(len(_DEEP)), ids=["open", "closed", "objects", "open-objects"])
@pytest.mark.parametrize("framing", ["bare", "sse-terminated", "sse-at-eof", "line"])
def test_normalizer_deeply_nested_item_ends_the_stream_without_an_exception(name: str, deep: int, framing: str) -> None:
    factory, _ = NORMALIZERS[name]
    body = {"bare": _DEEP[deep], "sse-terminated": b"data: " + _DEEP[deep] + b"\n\n",
            "sse-at-eof": b"data: " + _DEEP[deep], "line": _DEEP[deep] + b"\n"}[framing]
    events = run_normalizer(factory, [body])  # checks the contract
    assert run_normalizer(factory, cut(body, [1, 7, 4_000, 9_999])) == events


def test_deeply_nested_tool_arguments_are_kept_raw() -> None:
    # OpenAI tool-call arguments are JSON text assembled from fragments: nested deeper than the
    # decoder recurses, they are not valid arguments, like arguments cut by max_tokens.
    arguments = '{"a":' * _TOO_DEEP + "1" + "}" * _TOO_DEEP
    chunks = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    body = b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"
    events = run_normalizer(OpenAIChatNormalizer, [body])
    calls = [event for event in events if isinstance(event, ToolCall)]
    assert [(c.id, c.name, c.arguments, c.arguments_valid) for c in calls] == [("call_1", "f", arguments, False)]
    assert isinstance(events[-1], StreamEnd) and events[-1].finish_reason == "tool_calls"
