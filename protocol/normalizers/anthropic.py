"""Anthropic Messages streaming (``POST /v1/messages``, ``"stream": true``) → unified events.

Wire format (docs/PROVIDERS.md §2): SSE where every event has an ``event:`` line and a JSON ``data:``
whose ``type`` repeats the name. Real servers pad the JSON with spaces (§2.1), so every event
is parsed with msgspec, never sliced. The flow (§2.2)::

    message_start                              id, model, usage placeholder
    (content_block_start                       per block index: text | thinking |
       content_block_delta*                    redacted_thinking | tool_use | server_tool_use |
     content_block_stop)*                      *_tool_result (ignored) | unknown (ignored)
    message_delta+                             stop_reason, cumulative usage
    message_stop                               the terminal marker → StreamEnd

``ping`` and unknown event, block and delta types are ignored (AN-DOCS "Other events";
docs/PROVIDERS.md §10.8). ``event: error`` ends the stream with :class:`StreamFailed` (§2.7).

Policies (documented here because the wire format leaves them open):

- **Usage.** ``message_start.message.usage`` is a placeholder; each ``message_delta.usage`` is
  cumulative and overrides it *field by field* where it carries a field (the text recording
  repeats ``input_tokens`` there, the web-search one changes it from 2068 to 22397; the
  tool-use ones carry only ``output_tokens``). ``prompt_tokens`` is ``input_tokens +
  cache_creation_input_tokens + cache_read_input_tokens``: Anthropic's ``input_tokens`` counts
  only the uncached part of the prompt (AN-DOCS prompt caching; the llama.cpp recording reports
  ``input_tokens`` 13 with ``cache_read_input_tokens`` 24), and the hub's ``prompt_tokens``
  follows OpenAI, where the cached share is included. Every Anthropic recording has zero cache
  fields, so the golden "in" figures of EXPECTED.md hold. ``cached_tokens`` is
  ``cache_read_input_tokens`` when the field was sent; ``total = prompt + completion``.
- **Finish reasons** (§2.5): ``end_turn``, ``stop_sequence``, ``pause_turn`` → ``stop``;
  ``max_tokens``, ``model_context_window_exceeded`` → ``length``; ``tool_use`` →
  ``tool_calls``; ``refusal`` → ``content_filter``; a missing ``stop_reason`` or an unknown
  one → ``stop`` (Anthropic's reasons are ordinary ends, the raw value is kept in
  ``raw_finish_reason``). One :class:`ChoiceFinished` is emitted just before the StreamEnd.
- **Tool calls** (§2.4, §2.6): ``input_json_delta.partial_json`` fragments are concatenated per
  block index and parsed at ``content_block_stop``; only ``""`` means ``{}``. A block still open
  at ``message_delta`` / ``message_stop`` (cut by ``max_tokens``) is emitted then, with
  ``arguments_valid=False`` when its JSON does not parse. ``server_tool_use`` → ``server=True``.
  When a block got no fragment at all but its ``content_block_start`` carried a non-empty
  ``input`` object (some compatible servers), that object is used.
- **Reasoning**: ``thinking_delta`` → :class:`ReasoningDelta`; ``signature_delta`` →
  ``ReasoningDelta(text="", signature=...)``; ``redacted_thinking`` →
  ``ReasoningDelta(text="", redacted=data)`` at its start; :class:`ReasoningDone` at the
  ``content_block_stop`` of each thinking or redacted block (or when it is force-closed).
- **Errors** (§2.7, §6.2): ``error.type`` is mapped to the HTTP status it would have had
  (``overloaded_error`` → 529 ...); code ``rate_limited`` for 429, else ``provider_error``;
  ``retryable`` per :func:`protocol.errors.retryable_status`.
- **EOF**: the SSE decoder dispatches an unterminated last event (framing.py EOF policy), so a
  ``message_stop`` without its blank line still ends the stream successfully (recordings
  ``anthropic_tool_use*.sse``). A body that ends before ``message_stop``, or whose last event
  was cut mid-JSON, ends with ``stream_truncated`` carrying the usage seen so far; a last
  event that is well-formed JSON of the wrong shape is ``invalid_upstream_response``, as
  anywhere else in the body (base end-of-body rule).
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.errors import retryable_status
from protocol.events import (
    ChoiceFinished,
    Citation,
    ReasoningDelta,
    ReasoningDone,
    StreamEnd,
    StreamEvent,
    StreamFailed,
    TextDelta,
    Usage,
)
from protocol.framing import SSEDecoder, SSEEvent
from protocol.normalizers.base import Normalizer, make_tool_call

__all__ = ["AnthropicNormalizer", "FINISH_REASON_MAP", "ERROR_STATUS"]

FINISH_REASON_MAP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""``stop_reason`` (AN-SDK ``stop_reason.py``, docs/PROVIDERS.md §2.5) → hub finish reason."""

ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
"""``error.type`` → the HTTP status it has outside a stream (AN-ERR, docs/PROVIDERS.md §2.7, §6.2)."""

_KNOWN_EVENTS = frozenset(
    {
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "error",
    }
)
_KNOWN_BLOCKS = frozenset({"text", "thinking", "redacted_thinking", "tool_use", "server_tool_use"})
_KNOWN_DELTAS = frozenset(
    {"text_delta", "thinking_delta", "signature_delta", "input_json_delta", "citations_delta"}
)


# Wire schemas: only the fields the hub reads (msgspec skips the others while parsing).


class _Usage(msgspec.Struct, gc=False):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Message(msgspec.Struct, gc=False):
    id: str | None = None
    model: str | None = None
    usage: _Usage | None = None


class _Block(msgspec.Struct, gc=False):
    """``content_block_start.content_block`` (every block type in one flat schema)."""

    type: str = ""
    text: str = ""  # text
    thinking: str = ""  # thinking
    signature: str = ""  # thinking
    data: str = ""  # redacted_thinking
    id: str | None = None  # tool_use, server_tool_use
    name: str = ""
    input: Any = None


class _Delta(msgspec.Struct, gc=False):
    """``content_block_delta.delta`` and ``message_delta.delta`` in one flat schema."""

    type: str = ""
    text: str = ""  # text_delta
    thinking: str = ""  # thinking_delta
    signature: str = ""  # signature_delta
    partial_json: str = ""  # input_json_delta
    citation: dict[str, Any] | None = None  # citations_delta
    stop_reason: str | None = None  # message_delta


class _Error(msgspec.Struct, gc=False):
    type: str = ""
    message: str = ""


class _Event(msgspec.Struct, gc=False):
    type: str
    index: int = 0
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _Error | None = None


class _Typed(msgspec.Struct, gc=False):
    type: str = ""


class _Probe(msgspec.Struct, gc=False):
    """Just the type tags: used to tell an unknown (ignored) shape from a malformed one."""

    type: str = ""
    content_block: _Typed | None = None
    delta: _Typed | None = None


_event_decoder = msgspec.json.Decoder(_Event)
_probe_decoder = msgspec.json.Decoder(_Probe)


class _OpenBlock:
    """A thinking or tool block between its start and its stop."""

    __slots__ = ("kind", "id", "name", "fragments", "start_input")

    def __init__(self, kind: str, block: _Block) -> None:
        self.kind = kind  # "thinking", "tool_use" or "server_tool_use"
        self.id = block.id
        self.name = block.name
        self.fragments: list[str] = []
        self.start_input = block.input


class AnthropicNormalizer(Normalizer):
    """Normalizer for one Anthropic Messages stream (see the module docstring for policies).

    Feed it the raw SSE body in any slicing; it emits :class:`TextDelta`,
    :class:`ReasoningDelta` / :class:`ReasoningDone`, :class:`ToolCall` (complete, once),
    :class:`Citation`, then :class:`ChoiceFinished` + :class:`StreamEnd`, or
    :class:`StreamFailed`.
    """

    provider = "anthropic"

    def __init__(self) -> None:
        super().__init__()
        self._sse = SSEDecoder()
        self._blocks: dict[int, _OpenBlock] = {}
        self._stop_reason: str | None = None
        self._model: str | None = None
        self._response_id: str | None = None
        self._has_usage = False
        self._input = 0
        self._output = 0
        self._cache_creation = 0
        self._cache_read: int | None = None

    # Normalizer hooks (the loop, error and EOF handling are the base's).

    def _items(self, chunk: bytes) -> list[Any]:
        return self._sse.feed(chunk)

    def _last_items(self) -> list[Any]:
        return self._sse.close()

    # Event handling (the hot path).

    def _on_item(self, event: SSEEvent, out: list[StreamEvent]) -> bool:
        """Handle one SSE event; return True once a terminal event was appended."""
        name = event.event
        if name != "message" and name not in _KNOWN_EVENTS:
            return False  # ping, and event types added after this code was written
        data = event.data
        try:
            ev = _event_decoder.decode(data)
        except msgspec.ValidationError:
            if self._is_unknown_shape(data):
                return False
            raise
        kind = ev.type
        if kind == "content_block_delta":
            delta = ev.delta
            if delta is not None:
                self._on_delta(ev.index, delta, out)
        elif kind == "content_block_start":
            if ev.content_block is not None:
                self._on_block_start(ev.index, ev.content_block, out)
        elif kind == "content_block_stop":
            block = self._blocks.pop(ev.index, None)
            if block is not None:
                self._close_block(ev.index, block, out)
        elif kind == "message_start":
            message = ev.message
            if message is not None:
                self._model = message.model
                self._response_id = message.id
                if message.usage is not None:
                    self._merge_usage(message.usage)
        elif kind == "message_delta":
            if ev.delta is not None and ev.delta.stop_reason is not None:
                self._stop_reason = ev.delta.stop_reason
            if ev.usage is not None:
                self._merge_usage(ev.usage)
            self._close_open_blocks(out)
        elif kind == "message_stop":
            self._close_open_blocks(out)
            raw = self._stop_reason
            reason = FINISH_REASON_MAP.get(raw, "stop") if raw is not None else "stop"
            out.append(ChoiceFinished(reason, raw))
            out.append(
                StreamEnd(
                    finish_reason=reason,
                    usage=self._usage_so_far(),
                    raw_finish_reason=raw,
                    model=self._model,
                    response_id=self._response_id,
                )
            )
            return True
        elif kind == "error":
            out.append(self._failed(ev.error or _Error()))
            return True
        # "ping" and unknown types in an unnamed event: ignored.
        return False

    def _on_delta(self, index: int, delta: _Delta, out: list[StreamEvent]) -> None:
        kind = delta.type
        if kind == "text_delta":
            if delta.text:
                out.append(TextDelta(delta.text))
        elif kind == "input_json_delta":
            block = self._blocks.get(index)
            if block is not None and block.kind != "thinking":
                block.fragments.append(delta.partial_json)
        elif kind == "thinking_delta":
            if delta.thinking:  # real streams send an empty one before the signature
                out.append(ReasoningDelta(delta.thinking))
        elif kind == "signature_delta":
            if delta.signature:
                out.append(ReasoningDelta("", signature=delta.signature))
        elif kind == "citations_delta":
            if delta.citation is not None:
                out.append(Citation(delta.citation))
        # Unknown delta types: ignored (docs/PROVIDERS.md §10.8).

    def _on_block_start(self, index: int, block: _Block, out: list[StreamEvent]) -> None:
        kind = block.type
        if kind == "text":
            if block.text:
                out.append(TextDelta(block.text))
        elif kind == "thinking":
            self._blocks[index] = _OpenBlock("thinking", block)
            if block.thinking:
                out.append(ReasoningDelta(block.thinking))
            if block.signature:
                out.append(ReasoningDelta("", signature=block.signature))
        elif kind == "redacted_thinking":
            self._blocks[index] = _OpenBlock("thinking", block)
            out.append(ReasoningDelta("", redacted=block.data))
        elif kind == "tool_use" or kind == "server_tool_use":
            self._blocks[index] = _OpenBlock(kind, block)
        # Result blocks (web_search_tool_result...) and unknown blocks: ignored.

    def _close_block(self, index: int, block: _OpenBlock, out: list[StreamEvent]) -> None:
        if block.kind == "thinking":
            out.append(ReasoningDone())
            return
        raw: Any = "".join(block.fragments)
        if not raw and isinstance(block.start_input, dict) and block.start_input:
            raw = block.start_input  # complete input sent in content_block_start
        out.append(
            make_tool_call(
                block.id,
                block.name,
                raw,
                fallback_index=index,
                server=block.kind == "server_tool_use",
            )
        )

    def _close_open_blocks(self, out: list[StreamEvent]) -> None:
        """Close blocks that never got their ``content_block_stop`` (docs/PROVIDERS.md §2.6)."""
        if self._blocks:
            for index in sorted(self._blocks):
                self._close_block(index, self._blocks[index], out)
            self._blocks.clear()

    # Usage and errors.

    def _merge_usage(self, usage: _Usage) -> None:
        self._has_usage = True
        if usage.input_tokens is not None:
            self._input = usage.input_tokens
        if usage.output_tokens is not None:
            self._output = usage.output_tokens
        if usage.cache_creation_input_tokens is not None:
            self._cache_creation = usage.cache_creation_input_tokens
        if usage.cache_read_input_tokens is not None:
            self._cache_read = usage.cache_read_input_tokens

    def _usage_so_far(self) -> Usage | None:
        if not self._has_usage:
            return None
        prompt = self._input + self._cache_creation + (self._cache_read or 0)
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=self._output,
            total_tokens=prompt + self._output,
            cached_tokens=self._cache_read,
        )

    def _failed(self, error: _Error) -> StreamFailed:
        status = ERROR_STATUS.get(error.type)
        return StreamFailed(
            code="rate_limited" if status == 429 else "provider_error",
            message=error.message or f"anthropic stream error {error.type or '(no type)'}",
            status=status,
            retryable=retryable_status(status),
            provider_type=error.type or None,
            usage=self._usage_so_far(),
        )

    @staticmethod
    def _is_unknown_shape(data: str) -> bool:
        """True when an event that failed the schema is of a type this code ignores anyway
        (an unknown event, block or delta type whose fields clash with ours)."""
        probe = _probe_decoder.decode(data)  # raises on non-objects: then it is garbage
        if probe.type not in _KNOWN_EVENTS:
            return True
        if probe.type == "content_block_start":
            return probe.content_block is not None and probe.content_block.type not in _KNOWN_BLOCKS
        if probe.type == "content_block_delta":
            return probe.delta is not None and probe.delta.type not in _KNOWN_DELTAS
        return False
