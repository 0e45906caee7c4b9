"""OpenAI Chat Completions streaming (and OpenAI-compatible servers) → unified events.

Wire format (docs/PROVIDERS.md §1): ``text/event-stream`` whose events are bare ``data: <chunk JSON>``
lines, ended by ``data: [DONE]``. Each chunk is a ``ChatCompletionChunk`` (§1.2)::

    {"id", "model", "choices": [{"index", "delta": {...}, "finish_reason"}], "usage"?, "error"?}

The same parser serves OpenAI-compatible servers (§1.5): DeepSeek (``reasoning_content``, usage
on the finish chunk), OpenRouter (``reasoning``, keep-alive comments, an ``error`` object next
to normal fields), Ollama ``/v1`` and llama.cpp ``llama-server`` (``reasoning``, complete tool
calls in one delta). Pass ``provider=`` so messages and errors name the real server.

Event mapping (docs/PROVIDERS.md §7):

==========================================  ===============================================
chunk field                                 unified event
==========================================  ===============================================
``delta.reasoning_content`` / ``.reasoning``  :class:`ReasoningDelta`, then
                                            :class:`ReasoningDone` before the first content,
                                            refusal, tool call or finish that follows
``delta.content`` (non-empty)               :class:`TextDelta`
``delta.refusal`` (non-empty)               :class:`RefusalDelta`
``delta.tool_calls[]`` fragments            one :class:`ToolCall` per ``(choice, index)``,
                                            at the choice's ``finish_reason`` or at ``[DONE]``
``choices[].finish_reason``                 :class:`ChoiceFinished` (once per choice)
top-level truthy ``error``                  :class:`StreamFailed` (terminal)
``data: [DONE]``                            :class:`StreamEnd` (terminal)
==========================================  ===============================================

Only the fields used are declared in the msgspec Structs below, so everything else
(``obfuscation``, ``logprobs``, ``system_fingerprint``, OpenRouter's ``reasoning_details`` and
``provider``, llama.cpp's ``timings``...) is skipped by the decoder without being built.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.errors import retryable_status
from protocol.events import (
    ChoiceFinished,
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

__all__ = ["OpenAIChatNormalizer", "map_finish_reason"]


# Wire schema: only the fields the normalizer reads (docs/PROVIDERS.md §1.2, OA-SDK
# chat_completion_chunk.py). Every field is optional: compatible servers omit many of them.


class _Function(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct, gc=False):
    index: int | None = None  # required by OpenAI; position in the list when a server omits it
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning_content: str | None = None  # DeepSeek (docs/PROVIDERS.md §1.5)
    reasoning: str | None = None  # OpenRouter, Ollama /v1, llama.cpp (docs/PROVIDERS.md §1.5)
    refusal: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None
    function_call: _Function | None = None  # deprecated single-function form (docs/PROVIDERS.md §1.2)


class _Choice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _CompletionDetails(msgspec.Struct, gc=False):
    reasoning_tokens: int | None = None


class _PromptDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    completion_tokens_details: _CompletionDetails | None = None
    prompt_tokens_details: _PromptDetails | None = None


class _Chunk(msgspec.Struct, gc=False):
    id: str | None = None
    model: str | None = None
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    # Any: OA-SDK's test is Python truthiness of data["error"] (docs/PROVIDERS.md §1.1), whatever
    # its shape (an object from OpenAI/OpenRouter/Ollama /v1, sometimes a bare string).
    error: Any = None


_decoder = msgspec.json.Decoder(_Chunk)

# docs/PROVIDERS.md §1.2: finish_reason Literal of OA-SDK ``Choice``; ``function_call`` is the
# deprecated spelling of a tool call. ``error`` is not an OpenAI value; it is kept as is
# because the hub vocabulary has it (protocol.events.FINISH_REASONS).
_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "error": "error",
}

_DEFAULT_ERROR_MESSAGE = "An error occurred during streaming"  # OA-SDK _streaming.py


def map_finish_reason(raw: str | None, had_tool_calls: bool) -> str:
    """Map an OpenAI ``finish_reason`` to the hub vocabulary (protocol.events.FINISH_REASONS).

    Args:
        raw: the provider's value (``stop``, ``length``, ``tool_calls``, ``content_filter``,
            ``function_call``; docs/PROVIDERS.md §1.2), or None when the provider gave none.
        had_tool_calls: whether the choice produced at least one tool call.

    Returns:
        The mapped reason. A choice that produced tool calls and says ``stop`` (or nothing)
        reports ``tool_calls`` (protocol.events module rule). An unknown value maps to
        ``stop``; the raw value stays available in ``ChoiceFinished.raw``.
    """
    reason = _FINISH_REASONS.get(raw, "stop") if raw is not None else "stop"
    if had_tool_calls and reason == "stop":
        return "tool_calls"
    return reason


class _PendingCall:
    """A tool call whose argument fragments are still arriving (docs/PROVIDERS.md §1.3 rule 3)."""

    __slots__ = ("id", "name", "parts")

    def __init__(self, call_id: str | None, name: str | None) -> None:
        self.id = call_id
        self.name = name
        self.parts: list[str] = []


class _ChoiceState:
    """Per-choice state: open reasoning run, pending tool calls, finish."""

    __slots__ = ("reasoning_open", "calls", "had_tool_calls", "finish_raw", "finished")

    def __init__(self) -> None:
        self.reasoning_open = False
        self.calls: dict[int | str, _PendingCall] = {}
        self.had_tool_calls = False
        self.finish_raw: str | None = None
        self.finished = False

    def end_reasoning(self, index: int, out: list[StreamEvent]) -> None:
        """Close an open reasoning run with :class:`ReasoningDone` (before what follows it)."""
        if self.reasoning_open:
            self.reasoning_open = False
            out.append(ReasoningDone(index))


class OpenAIChatNormalizer(Normalizer):
    """Normalizer for one ``POST /v1/chat/completions`` streaming response body.

    Args:
        provider: the name used in events and messages: ``openai`` by default, or the name
            of an OpenAI-compatible server (``deepseek``, ``openrouter``, ``llamacpp``...).

    Behaviour worth knowing (docs/PROVIDERS.md):

    - Tool calls are assembled per ``(choices[].index, tool_calls[].index)``; ``id`` and
      ``function.name`` come from the first fragment that carries them; argument fragments are
      concatenated and parsed once (§1.3 rules 3-4, §10.6). A call is emitted when its choice
      reports a ``finish_reason``, or at ``[DONE]`` for a choice that never did. A body that
      ends in an error or is truncated emits no pending tool call: it may be incomplete.
    - ``finish_reason`` is reported once per choice (OpenRouter repeats it, §1.5).
    - Usage: the last non-null ``usage`` wins, whether it came on the ``choices: []`` chunk
      (§1.3 rule 7) or on the finish chunk (DeepSeek, §1.5). ``completion_tokens_details.
      reasoning_tokens`` → ``reasoning_tokens``; ``prompt_tokens_details.cached_tokens`` →
      ``cached_tokens``. A missing ``total_tokens`` is computed as prompt + completion.
    - Reasoning: ``reasoning_content`` is preferred over ``reasoning`` when a server sends
      both in one delta, so the same text is never emitted twice.
    - An in-band ``error`` (§1.1, §6.1; OpenRouter puts it next to normal fields, §1.5)
      ends the stream with ``StreamFailed``: ``status`` from an integer (or all-digit string)
      ``error.code`` in 100..599; ``code`` ``rate_limited`` for 429, else ``provider_error``;
      ``retryable`` per :func:`protocol.errors.retryable_status`; ``provider_type`` from
      ``error.type`` (else a non-numeric ``error.code``); the usage seen so far is attached.
    - ``data: [DONE]`` is the only success marker (§1.1); ``StreamEnd.finish_reason`` is
      choice 0's (``stop``, or ``tool_calls`` after tool calls, with ``raw_finish_reason``
      None when the server never sent one). At EOF without ``[DONE]`` the stream is truncated
      (base contract), even when every choice already reported a finish reason; the
      ``StreamFailed`` carries the usage seen so far. An event left pending at EOF that does
      not parse follows the base end-of-body rule: a cut (``[DONE``, ``{"id``) is
      ``stream_truncated``, well-formed JSON of the wrong shape ``invalid_upstream_response``.
    """

    provider = "openai"

    def __init__(self, provider: str = "openai") -> None:
        super().__init__()
        self.provider = provider
        self._sse = SSEDecoder()
        self._choices: dict[int, _ChoiceState] = {}
        self._usage: Usage | None = None
        self._model: str | None = None
        self._response_id: str | None = None
        self._call_count = 0  # tool calls emitted so far, for synthesized ids

    # Normalizer hooks (the loop, error and EOF handling are the base's).

    def _items(self, chunk: bytes) -> list[Any]:
        return self._sse.feed(chunk)

    def _last_items(self) -> list[Any]:
        return self._sse.close()

    def _usage_so_far(self) -> Usage | None:
        return self._usage

    # Per-event processing (the hot path).

    def _on_item(self, event: SSEEvent, out: list[StreamEvent]) -> bool:
        """Handle one SSE event's ``data``; return True once a terminal event was appended."""
        data = event.data
        if data.startswith("[DONE]"):  # OA-SDK tests startswith (docs/PROVIDERS.md §1.1)
            self._end(out)
            return True
        if not data or data.isspace():
            return False
        chunk = _decoder.decode(data)
        if self._response_id is None:
            self._response_id = chunk.id
        if self._model is None:
            self._model = chunk.model
        if chunk.usage is not None:
            self._usage = _convert_usage(chunk.usage)
        if chunk.error:
            out.append(self._failed(chunk.error))
            return True
        if chunk.choices:
            for choice in chunk.choices:
                self._on_choice(choice, out)
        return False

    def _on_choice(self, choice: _Choice, out: list[StreamEvent]) -> None:
        index = choice.index
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _ChoiceState()
        delta = choice.delta
        if delta is not None:
            reasoning = delta.reasoning_content or delta.reasoning
            if reasoning:
                out.append(ReasoningDelta(reasoning, choice=index))
                state.reasoning_open = True
            if state.reasoning_open and (
                delta.content or delta.refusal or delta.tool_calls or delta.function_call is not None
            ):
                state.end_reasoning(index, out)  # before the content, refusal or call it precedes
            if delta.content:
                out.append(TextDelta(delta.content, index))
            if delta.refusal:
                out.append(RefusalDelta(delta.refusal, index))
            if delta.tool_calls:
                for position, fragment in enumerate(delta.tool_calls):
                    key = fragment.index if fragment.index is not None else position
                    function = fragment.function
                    self._add_fragment(
                        state,
                        key,
                        fragment.id,
                        function.name if function is not None else None,
                        function.arguments if function is not None else None,
                    )
            if delta.function_call is not None:
                function = delta.function_call
                self._add_fragment(state, "function_call", None, function.name, function.arguments)
        if choice.finish_reason is not None and not state.finished:
            state.finished = True
            state.finish_raw = choice.finish_reason
            state.end_reasoning(index, out)
            self._flush_calls(state, index, out)
            reason = map_finish_reason(choice.finish_reason, state.had_tool_calls)
            out.append(ChoiceFinished(reason, choice.finish_reason, index))

    # Helpers.

    @staticmethod
    def _add_fragment(
        state: _ChoiceState,
        key: int | str,
        call_id: str | None,
        name: str | None,
        arguments: str | None,
    ) -> None:
        call = state.calls.get(key)
        if call is None:
            call = state.calls[key] = _PendingCall(call_id, name)
        else:
            if call.id is None:
                call.id = call_id
            if not call.name:
                call.name = name
        if arguments:
            call.parts.append(arguments)

    def _flush_calls(self, state: _ChoiceState, index: int, out: list[StreamEvent]) -> None:
        if not state.calls:
            return
        for call in state.calls.values():
            out.append(
                make_tool_call(
                    call.id,
                    call.name or "",
                    "".join(call.parts),
                    fallback_index=self._call_count,
                    choice=index,
                )
            )
            self._call_count += 1
        state.calls.clear()
        state.had_tool_calls = True

    def _end(self, out: list[StreamEvent]) -> None:
        """``[DONE]``: close what is open, emit pending calls, then :class:`StreamEnd`."""
        for index, state in self._choices.items():
            state.end_reasoning(index, out)
            self._flush_calls(state, index, out)
        first = self._choices.get(0)
        raw = first.finish_raw if first is not None else None
        had_tool_calls = first.had_tool_calls if first is not None else False
        out.append(
            StreamEnd(
                finish_reason=map_finish_reason(raw, had_tool_calls),
                usage=self._usage,
                raw_finish_reason=raw,
                model=self._model,
                response_id=self._response_id,
            )
        )

    def _failed(self, error: Any) -> StreamFailed:
        """Build the :class:`StreamFailed` for a truthy top-level ``error`` (docs/PROVIDERS.md §1.1)."""
        message: Any = None
        code: Any = None
        provider_type: Any = None
        if isinstance(error, dict):
            message = error.get("message")
            code = error.get("code")
            provider_type = error.get("type")
        elif isinstance(error, str):
            message = error
        status: int | None = None
        if isinstance(code, int) and not isinstance(code, bool):
            status = code
        elif isinstance(code, str):
            stripped = code.strip()
            if stripped.isascii() and stripped.isdigit():
                status = int(stripped)
            elif provider_type is None and stripped:
                provider_type = code
        if status is not None and not 100 <= status <= 599:
            status = None
        if message is None or message == "":
            message = _DEFAULT_ERROR_MESSAGE
        elif not isinstance(message, str):
            message = msgspec.json.encode(message).decode()
        return StreamFailed(
            code="rate_limited" if status == 429 else "provider_error",
            message=message,
            status=status,
            retryable=retryable_status(status),
            provider_type=provider_type if isinstance(provider_type, str) else None,
            usage=self._usage,
        )


def _convert_usage(usage: _Usage) -> Usage:
    """``CompletionUsage`` (docs/PROVIDERS.md §1.2) → :class:`Usage`."""
    prompt = usage.prompt_tokens or 0
    completion = usage.completion_tokens or 0
    details = usage.completion_tokens_details
    prompt_details = usage.prompt_tokens_details
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=usage.total_tokens or prompt + completion,
        reasoning_tokens=details.reasoning_tokens if details is not None else None,
        cached_tokens=prompt_details.cached_tokens if prompt_details is not None else None,
    )
