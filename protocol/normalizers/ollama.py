"""Ollama native ``POST /api/chat`` (NDJSON) → unified events.

Wire format (docs/PROVIDERS.md §4.1; OL ``api/types.go`` ``ChatResponse``): one JSON object per line::

    {"model", "created_at", "message": {"role", "content", "thinking"?, "tool_calls"?},
     "done": false}
    ...
    {"model", ..., "message": {"content": ""}, "done": true, "done_reason": "stop",
     "prompt_eval_count": 16, "eval_count": 22, "total_duration": <ns>, ...}

or, for an error before or during output, a line ``{"error": "<message>"}`` (docs/PROVIDERS.md §4.1,
§6.4). A non-streamed response (``"stream": false``) is one such object with ``done: true``
and is handled as a one-line stream; so is an HTTP error body.

Event mapping (docs/PROVIDERS.md §7):

=============================  ===========================================================
line field                     unified event
=============================  ===========================================================
``message.thinking``           :class:`ReasoningDelta`; :class:`ReasoningDone` when content,
                               a tool call or ``done`` follows (no explicit marker exists)
``message.content`` non-empty  :class:`TextDelta`
``message.tool_calls[]``       one :class:`ToolCall` each, in order, as soon as the line
                               arrives (calls are complete; ``arguments`` is a JSON object)
``done: true``                 :class:`ChoiceFinished` then :class:`StreamEnd` (terminal)
``error``                      :class:`StreamFailed` ``provider_error`` (terminal)
=============================  ===========================================================

Lines are decoded with a Struct naming only these fields; durations, ``created_at``,
``logprobs`` and the rest are skipped by the decoder.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.events import (
    ChoiceFinished,
    ReasoningDelta,
    ReasoningDone,
    StreamEnd,
    StreamEvent,
    StreamFailed,
    TextDelta,
    Usage,
)
from protocol.framing import NDJSONDecoder
from protocol.normalizers.base import Normalizer, make_tool_call

__all__ = ["OllamaChatNormalizer"]


# Wire schema: only the fields read (OL api/types.go ChatResponse, Message, ToolCall).


class _Function(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: Any = None  # a JSON object on the wire (docs/PROVIDERS.md §4.1); any value accepted


class _ToolCall(msgspec.Struct, gc=False):
    id: str | None = None  # present in current servers, absent in older ones (docs/PROVIDERS.md §4.1)
    function: _Function | None = None


class _Message(msgspec.Struct, gc=False):
    content: str | None = None
    thinking: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Line(msgspec.Struct, gc=False):
    model: str | None = None
    message: _Message | None = None
    done: bool | None = None
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    error: Any = None  # a string on the native API; an object is tolerated (``message`` read)


_decoder = msgspec.json.Decoder(_Line)

# docs/PROVIDERS.md §4.1: done_reason "stop", "length" (OL llm/server.go DoneReason.String), and
# "load"/"unload" for model load/unload requests (no output: a plain stop).
_DONE_REASONS = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}


class OllamaChatNormalizer(Normalizer):
    """Normalizer for one Ollama ``/api/chat`` response body (streamed or not).

    Args:
        provider: the name used in events and messages (``ollama`` by default; e.g.
            ``ollama-cloud`` for https://ollama.com, which serves the same NDJSON).

    Behaviour worth knowing (docs/PROVIDERS.md):

    - Terminal success is the ``done: true`` line (§4.1, §6.5); EOF before it is truncation
      (base contract), without usage (Ollama reports it only on the ``done`` line). The
      framing returns a last line that lacks its ``\\n``; if it does not parse, the base
      end-of-body rule applies: cut mid-JSON → ``stream_truncated``, well-formed JSON of the
      wrong shape → ``invalid_upstream_response``.
    - Finish: ``done_reason`` mapped (``stop``, ``length``; missing or unknown → ``stop``);
      an answer with tool calls whose reason maps to ``stop`` reports ``tool_calls``: Ollama
      never says ``tool_calls`` itself (§4.1, §10.6). :class:`ChoiceFinished` carries the raw
      value, :class:`StreamEnd` repeats the mapped one.
    - Usage (§10.5): only on the ``done`` line, ``Usage(prompt_tokens=prompt_eval_count,
      completion_tokens=eval_count, total_tokens=their sum)``; a missing count (Ollama omits
      zero values) counts as 0; None when both are missing.
    - Tool calls without ``id`` get ``call_<n>``, ``n`` counting the calls of this response
      from 0 (§10.6). ``arguments`` null or missing becomes ``{}``; a string is parsed as
      JSON text (:func:`protocol.normalizers.base.parse_tool_arguments`).
    - ``{"error": ...}``: :class:`StreamFailed` with code ``provider_error`` and no status
      (the body carries none; an HTTP error status is the caller's to report), not retryable.
    """

    provider = "ollama"

    def __init__(self, provider: str = "ollama") -> None:
        super().__init__()
        self.provider = provider
        self._lines = NDJSONDecoder()
        self._reasoning_open = False
        self._call_count = 0
        self._model: str | None = None

    # Normalizer hooks (the loop, error and EOF handling are the base's; there is no usage
    # before the done line, so a truncation carries none).

    def _items(self, chunk: bytes) -> list[bytes]:
        return self._lines.feed(chunk)

    def _last_items(self) -> list[bytes]:
        return self._lines.close()

    # Per-line processing (the hot path).

    def _on_item(self, line: bytes, out: list[StreamEvent]) -> bool:
        """Handle one NDJSON line; return True once a terminal event was appended."""
        obj = _decoder.decode(line)
        if obj.error:
            out.append(_failed(obj.error))
            return True
        if self._model is None:
            self._model = obj.model
        message = obj.message
        if message is not None:
            if message.thinking:
                out.append(ReasoningDelta(message.thinking))
                self._reasoning_open = True
            if self._reasoning_open and (message.content or message.tool_calls):
                self._end_reasoning(out)  # before the content or call it precedes
            if message.content:
                out.append(TextDelta(message.content))
            if message.tool_calls:
                for call in message.tool_calls:
                    function = call.function
                    name = function.name if function is not None else None
                    arguments = function.arguments if function is not None else None
                    out.append(
                        make_tool_call(
                            call.id,
                            name or "",
                            {} if arguments is None else arguments,
                            fallback_index=self._call_count,
                        )
                    )
                    self._call_count += 1
        if obj.done:
            self._end(obj, out)
            return True
        return False

    def _end_reasoning(self, out: list[StreamEvent]) -> None:
        """Close an open reasoning run with :class:`ReasoningDone`."""
        if self._reasoning_open:
            self._reasoning_open = False
            out.append(ReasoningDone())

    def _end(self, obj: _Line, out: list[StreamEvent]) -> None:
        """The ``done: true`` line: close reasoning, report finish and usage."""
        self._end_reasoning(out)
        raw = obj.done_reason
        reason = _DONE_REASONS.get(raw, "stop") if raw is not None else "stop"
        if reason == "stop" and self._call_count:
            reason = "tool_calls"
        out.append(ChoiceFinished(reason, raw))
        usage = None
        if obj.prompt_eval_count is not None or obj.eval_count is not None:
            prompt = obj.prompt_eval_count or 0
            completion = obj.eval_count or 0
            usage = Usage(
                prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
            )
        out.append(
            StreamEnd(finish_reason=reason, usage=usage, raw_finish_reason=raw, model=self._model)
        )


def _failed(error: Any) -> StreamFailed:
    """``{"error": "<message>"}`` (docs/PROVIDERS.md §4.1, §6.4) → :class:`StreamFailed`."""
    if isinstance(error, dict):
        message = error.get("message")
    else:
        message = error
    if not isinstance(message, str) or not message:
        message = msgspec.json.encode(error).decode()
    return StreamFailed(code="provider_error", message=message, retryable=False)
