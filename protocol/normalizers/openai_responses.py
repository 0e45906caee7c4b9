"""OpenAI Responses API streaming (``POST /v1/responses``, ``"stream": true``) → unified events.

Wire format (docs/PROVIDERS.md §1.6): ``text/event-stream`` whose events carry an ``event:``
line equal to the JSON ``type``; there is no ``[DONE]``: the stream ends after a terminal
event (``response.completed``, ``response.incomplete``, ``response.failed``) or an ``error``
event. Only the ``data`` JSON is read (its ``type`` decides), so a server that leaves out the
``event:`` line is read the same.

Event mapping (docs/PROVIDERS.md §1.6, §7):

===============================================  ==============================================
Responses event                                  unified event
===============================================  ==============================================
``response.reasoning_summary_text.delta``,       :class:`ReasoningDelta`; a summary part after
``response.reasoning_text.delta``                the first of its item starts with a blank line
                                                 (``\\n\\n``) so that parts stay paragraphs;
                                                 :class:`ReasoningDone` before the first text,
                                                 refusal or tool call after it, or at the end
                                                 of the reasoning item
``response.output_text.delta`` (non-empty)       :class:`TextDelta`
``response.refusal.delta`` (non-empty)           :class:`RefusalDelta`
``response.output_item.done`` of a               one :class:`ToolCall` (``call_id``, ``name``,
``function_call``                                ``arguments`` of the finished item; the
                                                 ``function_call_arguments.delta`` fragments
                                                 stand in when the item has none)
``response.completed``                           :class:`StreamEnd` (``stop``, ``tool_calls``
                                                 after a call), usage from ``response.usage``
``response.incomplete``                          :class:`StreamEnd` with ``length``
                                                 (``max_output_tokens``) or ``content_filter``
``response.failed``, ``error``                   :class:`StreamFailed` (terminal)
===============================================  ==============================================

Every other event (``response.created``, ``response.in_progress``, content part and annotation
events, the built-in tools' events, which the hub never asks for) is read for nothing but its
type and skipped.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.errors import retryable_status
from protocol.events import (
    ReasoningDelta,
    ReasoningDone,
    RefusalDelta,
    StreamEnd,
    StreamEvent,
    StreamFailed,
    TextDelta,
    Usage,
)
from protocol.framing import SSEDecoder, SSEEvent
from protocol.normalizers.base import Normalizer, make_tool_call

__all__ = ["OpenAIResponsesNormalizer", "ERROR_STATUS"]


# Wire schema: only the fields read (docs/PROVIDERS.md §1.6; OA-SDK src/openai/types/responses/).


class _Item(msgspec.Struct, gc=False):
    type: str = ""
    id: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None


class _InputDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class _OutputDetails(msgspec.Struct, gc=False):
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct, gc=False):
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    input_tokens_details: _InputDetails | None = None
    output_tokens_details: _OutputDetails | None = None


class _Response(msgspec.Struct, gc=False):
    id: str | None = None
    model: str | None = None
    error: Any = None
    incomplete_details: Any = None
    usage: _Usage | None = None


class _Event(msgspec.Struct, gc=False):
    type: str = ""
    delta: str | None = None
    item_id: str | None = None
    output_index: int | None = None
    summary_index: int | None = None
    arguments: str | None = None
    item: _Item | None = None
    response: _Response | None = None
    code: Any = None
    message: Any = None


_decoder = msgspec.json.Decoder(_Event)

#: HTTP-like status of an error ``code`` of ``response.failed`` / ``error`` (OA-SDK
#: ``response_error.py`` code Literal); unknown codes have none.
ERROR_STATUS = {
    "server_error": 500,
    "rate_limit_exceeded": 429,
    "invalid_prompt": 400,
    "invalid_request_error": 400,
    "insufficient_quota": 429,
    "vector_store_timeout": 504,
}

#: ``incomplete_details.reason`` → the hub's finish reason.
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


class _PendingCall:
    __slots__ = ("call_id", "name", "parts")

    def __init__(self, call_id: str | None, name: str | None) -> None:
        self.call_id = call_id
        self.name = name
        self.parts: list[str] = []


class OpenAIResponsesNormalizer(Normalizer):
    """Normalizer for one ``POST /v1/responses`` streaming response body.

    Args:
        provider: the name used in messages (``openai_responses``).

    Behaviour worth knowing:

    - Function calls are keyed by ``output_index`` (``item_id`` when absent) from their
      ``response.output_item.added``; the call is emitted once, complete, at its
      ``response.output_item.done`` (arguments parsed once, §10.6). A stream that fails or is
      cut emits no pending call.
    - Usage (``response.usage`` of the terminal event): ``input_tokens`` → prompt,
      ``output_tokens`` → completion, ``output_tokens_details.reasoning_tokens`` →
      ``reasoning_tokens``, ``input_tokens_details.cached_tokens`` → ``cached_tokens``.
    - ``response.failed`` and ``error``: ``StreamFailed`` with the error's ``message``,
      ``provider_type`` its ``code``, ``status`` from :data:`ERROR_STATUS` (``rate_limited``
      for 429, else ``provider_error``), retryable per the status.
    - EOF before a terminal event is ``stream_truncated`` with the usage seen so far (base
      contract).
    """

    provider = "openai_responses"

    def __init__(self, provider: str = "openai_responses") -> None:
        super().__init__()
        self.provider = provider
        self._sse = SSEDecoder()
        self._calls: dict[int | str, _PendingCall] = {}
        self._had_calls = False
        self._reasoning_open = False
        self._summary_seen: set[tuple[str | None, int]] = set()  # (item id, summary index)
        self._items_seen: set[str | None] = set()  # reasoning items that had a summary part
        self._call_count = 0
        self._usage: Usage | None = None

    def _items(self, chunk: bytes) -> list[Any]:
        return self._sse.feed(chunk)

    def _last_items(self) -> list[Any]:
        return self._sse.close()

    def _usage_so_far(self) -> Usage | None:
        return self._usage

    def _on_item(self, sse: SSEEvent, out: list[StreamEvent]) -> bool:
        data = sse.data
        if not data or data.isspace():
            return False
        event = _decoder.decode(data)
        kind = event.type
        if kind == "response.output_text.delta":
            if event.delta:
                self._end_reasoning(out)
                out.append(TextDelta(event.delta))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            self._reasoning(event, out)
        elif kind == "response.refusal.delta":
            if event.delta:
                self._end_reasoning(out)
                out.append(RefusalDelta(event.delta))
        elif kind == "response.output_item.added":
            item = event.item
            if item is not None and item.type == "function_call":
                self._calls[self._key(event, item)] = _PendingCall(item.call_id, item.name)
        elif kind == "response.function_call_arguments.delta":
            call = self._calls.get(self._key(event, None))
            if call is not None and event.delta:
                call.parts.append(event.delta)
        elif kind == "response.output_item.done":
            self._item_done(event, out)
        elif kind in ("response.completed", "response.incomplete"):
            self._end(event, out)
            return True
        elif kind == "response.failed":
            response = event.response
            error = response.error if response is not None else None
            if response is not None and response.usage is not None:
                self._usage = _convert_usage(response.usage)
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            out.append(self._failed(code, message))
            return True
        elif kind == "error":
            out.append(self._failed(event.code, event.message))
            return True
        return False

    @staticmethod
    def _key(event: _Event, item: _Item | None) -> int | str:
        if event.output_index is not None:
            return event.output_index
        return (item.id if item is not None else event.item_id) or ""

    def _reasoning(self, event: _Event, out: list[StreamEvent]) -> None:
        if not event.delta:
            return
        part = (event.item_id, event.summary_index or 0)
        if part not in self._summary_seen:
            # A new summary part: parts after the first of an item are separate paragraphs.
            self._summary_seen.add(part)
            if event.item_id in self._items_seen:
                out.append(ReasoningDelta("\n\n"))
            self._items_seen.add(event.item_id)
        out.append(ReasoningDelta(event.delta))
        self._reasoning_open = True

    def _end_reasoning(self, out: list[StreamEvent]) -> None:
        if self._reasoning_open:
            self._reasoning_open = False
            out.append(ReasoningDone())

    def _item_done(self, event: _Event, out: list[StreamEvent]) -> None:
        item = event.item
        if item is None:
            return
        if item.type == "reasoning":
            self._end_reasoning(out)
            return
        if item.type != "function_call":
            return
        self._end_reasoning(out)
        pending = self._calls.pop(self._key(event, item), None)
        arguments = item.arguments
        if arguments is None:
            arguments = "".join(pending.parts) if pending is not None else ""
        call_id = item.call_id or (pending.call_id if pending is not None else None)
        name = item.name or (pending.name if pending is not None else None) or ""
        out.append(make_tool_call(call_id, name, arguments, fallback_index=self._call_count))
        self._call_count += 1
        self._had_calls = True

    def _end(self, event: _Event, out: list[StreamEvent]) -> None:
        self._end_reasoning(out)
        response = event.response
        if response is not None and response.usage is not None:
            self._usage = _convert_usage(response.usage)
        raw: str | None = "completed"
        reason = "tool_calls" if self._had_calls else "stop"
        if event.type == "response.incomplete":
            details = response.incomplete_details if response is not None else None
            raw = details.get("reason") if isinstance(details, dict) else None
            reason = _INCOMPLETE.get(raw or "", "length")
        out.append(StreamEnd(finish_reason=reason, usage=self._usage, raw_finish_reason=raw,
                             model=response.model if response is not None else None,
                             response_id=response.id if response is not None else None))

    def _failed(self, code: Any, message: Any) -> StreamFailed:
        code_text = code if isinstance(code, str) and code else None
        status = ERROR_STATUS.get(code_text or "")
        if not isinstance(message, str) or not message:
            message = f"{self.provider} reported an error" + (f" ({code_text})" if code_text else "")
        return StreamFailed(code="rate_limited" if status == 429 else "provider_error", message=message,
                            status=status, retryable=retryable_status(status), provider_type=code_text,
                            usage=self._usage)


def _convert_usage(usage: _Usage) -> Usage:
    """Responses ``usage`` (docs/PROVIDERS.md §1.6) → :class:`Usage`."""
    prompt = usage.input_tokens or 0
    completion = usage.output_tokens or 0
    details = usage.output_tokens_details
    cached = usage.input_tokens_details
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=usage.total_tokens or prompt + completion,
                 reasoning_tokens=details.reasoning_tokens if details is not None else None,
                 cached_tokens=cached.cached_tokens if cached is not None else None)
