"""Google Gemini ``streamGenerateContent`` → unified events.

Two framings of the same chunks (docs/PROVIDERS.md §3.1), chosen by the URL that was called:

- ``framing="sse"`` (``?alt=sse``, what the google-genai SDK sends): ``data: <JSON>`` events,
  CRLF line ends, no terminal sentinel. A mid-stream error is written *unframed*, as
  pretty-printed JSON lines without ``data:`` (§3.4): the SSE decoder hands those over as
  :class:`~protocol.framing.StrayLine` items; they are brace-counted back into one JSON text
  (as GG-SDK ``_api_client.py`` does).
- ``framing="array"`` (default ``alt=json``): one JSON array flushed element by element; an
  error body is a bare ``{"error": {...}}`` object, or an array element of that shape.

Each chunk is a full ``GenerateContentResponse`` (§3.2). Per candidate (``index``, the
``choice`` of the events), each part becomes:

- ``{"text", "thought": true}`` → :class:`ReasoningDelta`;
- ``{"text"}`` → :class:`TextDelta` (empty text skipped), preceded by :class:`ReasoningDone`
  when reasoning was open;
- ``{"functionCall": {"name", "args"}}`` → one complete :class:`ToolCall` (``args`` is an
  object; Gemini sends no id, so ``call_<n>`` is synthesized, n counting the calls of the
  response from 0; a ``functionCall.id``, as Vertex may send, is kept), preceded by
  :class:`ReasoningDone` when reasoning was open.

Policies (the wire format leaves these open):

- **Thought signatures.** A ``thoughtSignature`` on a ``functionCall`` part goes on
  :attr:`ToolCall.signature` (Gemini wants it sent back on that same part). Anywhere else (on a
  thought part, on an answer text part, on an empty text part at the end) it becomes a
  ``ReasoningDelta(text="", signature=...)`` (merged into the thought delta when on a thought
  part). A signature-only delta opens a reasoning run like any other: it is followed by
  :class:`ReasoningDone` before the next answer text or tool call, or before the terminal
  event. So every run of ReasoningDelta is closed by one ReasoningDone on success, as with
  Anthropic where ``signature_delta`` precedes the thinking block's stop.
- **Finish reasons** (§3.3; GG-SDK ``types.py`` FinishReason): ``STOP`` → ``stop``, or
  ``tool_calls`` when the candidate's last output was a function call (§3.3: Gemini never
  says otherwise); ``MAX_TOKENS`` → ``length``; ``SAFETY``, ``RECITATION``, ``BLOCKLIST``,
  ``PROHIBITED_CONTENT``, ``SPII``, ``IMAGE_SAFETY``, ``IMAGE_PROHIBITED_CONTENT``,
  ``IMAGE_RECITATION`` → ``content_filter``; everything else (``MALFORMED_FUNCTION_CALL``,
  ``OTHER``, ``LANGUAGE``, ``UNEXPECTED_TOOL_CALL``, ``TOO_MANY_TOOL_CALLS``, ``NO_IMAGE``,
  ``IMAGE_OTHER``, ``FINISH_REASON_UNSPECIFIED`` and unknown strings) → ``error``: the
  response ended, but not with a usable answer (the Firebase SDK test data files an unknown
  finish enum under "failure"). The raw value is kept in ``raw_finish_reason``.
- **Prompt blocked**: ``promptFeedback.blockReason`` (a chunk without candidates, §3.4) ends
  the response *successfully* with ``finish_reason="content_filter"`` and the block reason as
  ``raw_finish_reason``, like an output blocked by ``finishReason: SAFETY`` and like OpenAI's
  ``content_filter``: content filtering is a finish reason in the hub, never a StreamFailed.
- **Usage**: ``usageMetadata`` is cumulative, the last one wins (§3.2, §10.5):
  ``prompt = promptTokenCount``, ``completion = candidatesTokenCount + thoughtsTokenCount``,
  ``reasoning = thoughtsTokenCount`` (None when absent), ``cached = cachedContentTokenCount``
  (None when absent), ``total = totalTokenCount`` (the sum when absent).
- **Terminal marker** (§6.5): SSE: EOF when every candidate's latest chunk carried a
  ``finishReason`` (a chunk that adds content without one reopens it), or after a
  ``blockReason``; else ``stream_truncated``. Array: the closing ``]`` (or the end of a bare
  object) with the same condition, else ``stream_truncated`` at once; EOF before the ``]`` is
  ``stream_truncated`` too (the array framing never hands over a pending element). A last SSE
  event (or unframed JSON) that does not parse at EOF follows the base end-of-body rule: cut
  mid-JSON → ``stream_truncated``, well-formed JSON of the wrong shape →
  ``invalid_upstream_response``.
- **In-band errors** ``{"error": {"code", "message", "status"}}`` (§3.4, §6.3), whether
  unframed, in a ``data:`` event, an array element or a bare object: :class:`StreamFailed`
  with ``status = code``, ``provider_type = status``, code ``rate_limited`` for 429 else
  ``provider_error``, ``retryable`` per :func:`protocol.errors.retryable_status` (so 499
  ``CANCELLED``, a cancellation on the server side, is not retried automatically). Unframed
  JSON that is not an error is treated as one more chunk (GG-SDK does the same); unframed
  JSON whose braces are still open at EOF means the body was cut: ``stream_truncated``.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from protocol.errors import retryable_status
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
from protocol.framing import JSONArrayDecoder, SSEDecoder, SSEEvent, StrayLine
from protocol.normalizers.base import Normalizer, make_tool_call

__all__ = ["GeminiNormalizer", "map_finish_reason"]

_CONTENT_FILTER_REASONS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)


def map_finish_reason(raw: str, tool_last: bool = False) -> str:
    """Map a Gemini ``finishReason`` to the hub vocabulary (module docstring, docs/PROVIDERS.md §3.3).

    Args:
        raw: the provider's ``finishReason`` string.
        tool_last: the candidate's last output was a ``functionCall`` part.
    """
    if raw == "STOP":
        return "tool_calls" if tool_last else "stop"
    if raw == "MAX_TOKENS":
        return "length"
    if raw in _CONTENT_FILTER_REASONS:
        return "content_filter"
    return "error"


# Wire schemas: only the fields the hub reads (GG-SDK types.py names, camelCase on the wire).


class _FunctionCall(msgspec.Struct, gc=False):
    name: str = ""
    args: Any = None
    id: str | None = None


class _Part(msgspec.Struct, rename="camel", gc=False):
    text: str | None = None
    thought: bool = False
    thought_signature: str | None = None
    function_call: _FunctionCall | None = None


class _Content(msgspec.Struct, gc=False):
    parts: list[_Part] = []


class _Candidate(msgspec.Struct, rename="camel", gc=False):
    content: _Content | None = None
    finish_reason: str | None = None
    index: int = 0


class _PromptFeedback(msgspec.Struct, rename="camel", gc=False):
    block_reason: str | None = None


class _UsageMetadata(msgspec.Struct, rename="camel", gc=False):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int | None = None
    total_token_count: int | None = None
    cached_content_token_count: int | None = None


class _Error(msgspec.Struct, gc=False):
    code: int | None = None
    message: str = ""
    status: str | None = None


class _Response(msgspec.Struct, rename="camel", gc=False):
    candidates: list[_Candidate] = []
    prompt_feedback: _PromptFeedback | None = None
    usage_metadata: _UsageMetadata | None = None
    model_version: str | None = None
    response_id: str | None = None
    error: _Error | None = None


_response_decoder = msgspec.json.Decoder(_Response)
_JSON_SPECIAL = re.compile(r'[{}"\\]')
_ARRAY_END = object()
"""The item appended after the last element once the array's closing ``]`` was read."""


class _Choice:
    """Per-candidate state."""

    __slots__ = ("reasoning", "tool_last", "finish")

    def __init__(self) -> None:
        self.reasoning = False  # a reasoning run is open (needs a ReasoningDone)
        self.tool_last = False  # the last output was a function call
        self.finish: str | None = None  # finishReason of this candidate's latest chunk


class GeminiNormalizer(Normalizer):
    """Normalizer for one Gemini ``streamGenerateContent`` response body.

    Args:
        framing: ``"sse"`` for ``?alt=sse`` (the default), ``"array"`` for the JSON array of
            the default ``alt=json``.

    Emits :class:`TextDelta`, :class:`ReasoningDelta` / :class:`ReasoningDone`,
    :class:`ToolCall`, then one :class:`ChoiceFinished` per candidate and :class:`StreamEnd`,
    or :class:`StreamFailed` (see the module docstring for the policies).
    """

    provider = "google"

    def __init__(self, framing: str = "sse") -> None:
        super().__init__()
        if framing == "sse":
            self._sse: SSEDecoder | None = SSEDecoder(collect_stray=True)
            self._array: JSONArrayDecoder | None = None
        elif framing == "array":
            self._sse = None
            self._array = JSONArrayDecoder()
        else:
            raise ValueError(f"unknown Gemini framing {framing!r} (expected 'sse' or 'array')")
        self._choices: dict[int, _Choice] = {}
        self._calls = 0
        self._usage_meta: _UsageMetadata | None = None
        self._block_reason: str | None = None
        self._model: str | None = None
        self._response_id: str | None = None
        # Unframed JSON being collected from StrayLine items (SSE only).
        self._stray: list[str] = []
        self._stray_depth = 0

    # Normalizer hooks (the loop, error and EOF handling are the base's). Items: SSEEvent and
    # StrayLine (SSE), or an element's bytes then _ARRAY_END (array).

    def _items(self, chunk: bytes) -> list[Any]:
        if self._sse is not None:
            return self._sse.feed(chunk)
        assert self._array is not None
        elements: list[Any] = self._array.feed(chunk)
        if self._array.complete:
            elements.append(_ARRAY_END)
        return elements

    def _last_items(self) -> list[Any]:
        if self._sse is not None:
            return self._sse.close()
        assert self._array is not None
        return self._array.close()  # [] (the array is not complete), or raises FramingError

    def _on_item(self, item: Any, out: list[StreamEvent]) -> bool:
        """Handle one framing item; return True once a terminal event was appended."""
        kind = type(item)
        if kind is SSEEvent:
            return self._on_chunk(_response_decoder.decode(item.data), out)
        if kind is bytes:  # an array element
            return self._on_chunk(_response_decoder.decode(item), out)
        if kind is StrayLine:
            return self._on_stray(item.text, out)
        return self._finish(out)  # _ARRAY_END

    def _eof(self, out: list[StreamEvent]) -> None:
        if self._array is not None or self._stray:
            # Array: no closing "]" (it would have finished the stream). SSE: unframed JSON
            # cut short.
            out.append(self._truncated())
        else:
            self._finish(out)  # SSE has no terminal marker: EOF decides

    def _item_text(self, item: Any) -> str | bytes:
        if type(item) is StrayLine:
            return "\n".join(self._stray)  # the unframed JSON that failed (kept by _on_stray)
        return super()._item_text(item)

    # Unframed JSON.

    def _on_stray(self, line: str, out: list[StreamEvent]) -> bool:
        """Collect unframed JSON lines until their braces balance (docs/PROVIDERS.md §3.4).

        A JSON string cannot span lines (a raw line break is invalid inside one), so only the
        brace depth carries from one line to the next. Returns True once a terminal event was
        appended.
        """
        if not self._stray and not line.lstrip().startswith("{"):
            return False  # a stray line that starts no JSON: ignored, as the SSE spec does
        self._stray.append(line)
        depth = self._stray_depth
        in_string = False
        pos = 0
        while True:
            match = _JSON_SPECIAL.search(line, pos)
            if match is None:
                break
            c = match.group()
            pos = match.end()
            if in_string:
                if c == "\\":
                    pos += 1  # skip the escaped character
                elif c == '"':
                    in_string = False
            elif c == '"':
                in_string = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    self._stray[-1] = line[:pos]  # anything after the object is dropped
                    # Decoded before the lines are dropped: if it fails, _item_text needs them.
                    response = _response_decoder.decode("\n".join(self._stray))
                    self._stray = []
                    self._stray_depth = 0
                    return self._on_chunk(response, out)
        self._stray_depth = depth
        return False

    # Chunks.

    def _on_chunk(self, response: _Response, out: list[StreamEvent]) -> bool:
        """Handle one ``GenerateContentResponse``; True when it was an error (terminal)."""
        if response.error is not None:
            out.append(self._failed(response.error))
            return True
        if response.usage_metadata is not None:
            self._usage_meta = response.usage_metadata
        if response.model_version is not None:
            self._model = response.model_version
        if response.response_id is not None:
            self._response_id = response.response_id
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            self._block_reason = feedback.block_reason
        for candidate in response.candidates:
            index = candidate.index
            choice = self._choices.get(index)
            if choice is None:
                choice = self._choices[index] = _Choice()
            if candidate.content is not None:
                for part in candidate.content.parts:
                    self._on_part(part, index, choice, out)
            choice.finish = candidate.finish_reason
        return False

    def _on_part(self, part: _Part, index: int, choice: _Choice, out: list[StreamEvent]) -> None:
        call = part.function_call
        if call is not None:
            if choice.reasoning:
                out.append(ReasoningDone(index))
                choice.reasoning = False
            out.append(
                make_tool_call(
                    call.id,
                    call.name,
                    call.args if call.args is not None else {},
                    fallback_index=self._calls,
                    signature=part.thought_signature,
                    choice=index,
                )
            )
            self._calls += 1
            choice.tool_last = True
            return
        text = part.text
        signature = part.thought_signature
        if part.thought:
            if text or signature:
                out.append(ReasoningDelta(text or "", signature=signature, choice=index))
                choice.reasoning = True
            return
        if signature:
            out.append(ReasoningDelta("", signature=signature, choice=index))
            choice.reasoning = True
        if text:
            if choice.reasoning:
                out.append(ReasoningDone(index))
                choice.reasoning = False
            out.append(TextDelta(text, index))
            choice.tool_last = False

    # Terminal events.

    def _finish(self, out: list[StreamEvent]) -> bool:
        """The body ended (EOF, or the array's ``]``): success if the response finished.

        Always appends the terminal event (so returns True).
        """
        if self._block_reason is not None:
            for index in sorted(self._choices):
                if self._choices[index].reasoning:
                    out.append(ReasoningDone(index))
            out.append(ChoiceFinished("content_filter", self._block_reason))
            out.append(self._end("content_filter", self._block_reason))
            return True
        choices = self._choices
        if not choices or any(choice.finish is None for choice in choices.values()):
            out.append(self._truncated())
            return True
        first: tuple[str, str] | None = None
        for index in sorted(choices):
            choice = choices[index]
            raw = choice.finish
            assert raw is not None
            reason = map_finish_reason(raw, choice.tool_last)
            if choice.reasoning:
                out.append(ReasoningDone(index))
            out.append(ChoiceFinished(reason, raw, index))
            if first is None or index == 0:
                first = (reason, raw)
        assert first is not None
        out.append(self._end(*first))
        return True

    def _end(self, reason: str, raw: str) -> StreamEnd:
        return StreamEnd(
            finish_reason=reason,
            usage=self._usage_so_far(),
            raw_finish_reason=raw,
            model=self._model,
            response_id=self._response_id,
        )

    def _failed(self, error: _Error) -> StreamFailed:
        status = error.code
        return StreamFailed(
            code="rate_limited" if status == 429 else "provider_error",
            message=error.message or f"gemini stream error {error.status or status}",
            status=status,
            retryable=retryable_status(status),
            provider_type=error.status,
            usage=self._usage_so_far(),
        )

    def _usage_so_far(self) -> Usage | None:
        meta = self._usage_meta
        if meta is None:
            return None
        thoughts = meta.thoughts_token_count
        completion = meta.candidates_token_count + (thoughts or 0)
        total = meta.total_token_count
        if total is None:
            total = meta.prompt_token_count + completion
        return Usage(
            prompt_tokens=meta.prompt_token_count,
            completion_tokens=completion,
            total_tokens=total,
            reasoning_tokens=thoughts,
            cached_tokens=meta.cached_content_token_count,
        )
