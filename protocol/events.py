"""Unified stream events: what every provider normalizer emits, whatever the wire format.

These are internal (provider → hub) events, small frozen Structs named with nouns, in the
style of h11's ``_events.py``. The hub turns them into wire messages (protocol/messages.py).

A normalizer's output for one upstream response is::

    (TextDelta | ReasoningDelta | ReasoningDone | RefusalDelta | ToolCall | Citation
     | ChoiceFinished)*  then exactly one of  StreamEnd | StreamFailed

``choice`` is the OpenAI ``choices[].index`` (0 for every other provider and for n=1).

Finish reasons use one vocabulary (:data:`FINISH_REASONS`): ``stop``, ``length``,
``tool_calls``, ``content_filter``, ``error``. An answer whose last output is a tool call
reports ``tool_calls`` even when the provider says stop (Gemini ``STOP``, Ollama ``stop``;
docs/PROVIDERS.md §3.3, §4.1).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec

__all__ = [
    "FINISH_REASONS",
    "Usage",
    "TextDelta",
    "ReasoningDelta",
    "ReasoningDone",
    "RefusalDelta",
    "ToolCall",
    "Citation",
    "ChoiceFinished",
    "StreamEnd",
    "StreamFailed",
    "StreamEvent",
]

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "error")


class Usage(msgspec.Struct, frozen=True, gc=False):
    """Token counts of one response.

    ``completion_tokens`` counts every output token including reasoning (Gemini: candidates +
    thoughts); ``reasoning_tokens`` is the reasoning share when the provider reports it.
    ``cached_tokens`` is the cached share of the prompt when reported.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None


class TextDelta(msgspec.Struct, frozen=True, gc=False):
    """A piece of answer text (never empty)."""

    text: str
    choice: int = 0


class ReasoningDelta(msgspec.Struct, frozen=True, gc=False):
    """A piece of reasoning ("thinking") text, or a signature, or an opaque redacted block.

    ``text`` may be empty when the event only carries ``signature`` (Anthropic
    ``signature_delta``, Gemini ``thoughtSignature``) or ``redacted`` (Anthropic
    ``redacted_thinking.data``, opaque base64 that must be kept for round-trips).
    """

    text: str
    signature: str | None = None
    redacted: str | None = None
    choice: int = 0


class ReasoningDone(msgspec.Struct, frozen=True, gc=False):
    """The current run of reasoning has ended (the answer or a tool call follows)."""

    choice: int = 0


class RefusalDelta(msgspec.Struct, frozen=True, gc=False):
    """A piece of a refusal message (OpenAI ``delta.refusal``)."""

    text: str
    choice: int = 0


class ToolCall(msgspec.Struct, frozen=True, gc=False):
    """One complete tool call, emitted once, when its arguments are complete.

    Attributes:
        id: provider id (``call_…``, ``toolu_…``), or a synthesized ``call_<n>`` when the
            provider gives none (Gemini, older Ollama).
        name: function name.
        arguments: the parsed JSON value when ``arguments_valid``, else the raw string.
        arguments_raw: the argument JSON text as assembled from the fragments.
        arguments_valid: False when ``arguments_raw`` is not valid JSON (e.g. cut by
            max_tokens, docs/PROVIDERS.md §2.6).
        server: True for a tool the provider ran itself (Anthropic ``server_tool_use``).
        signature: Gemini ``thoughtSignature`` attached to a functionCall part, if any.
    """

    id: str
    name: str
    arguments: Any
    arguments_raw: str
    arguments_valid: bool = True
    server: bool = False
    signature: str | None = None
    choice: int = 0


class Citation(msgspec.Struct, frozen=True, gc=False):
    """A citation attached to the current text (Anthropic ``citations_delta.citation``)."""

    citation: dict[str, Any]
    choice: int = 0


class ChoiceFinished(msgspec.Struct, frozen=True, gc=False):
    """The provider reported a finish reason for one choice.

    ``reason`` is mapped to :data:`FINISH_REASONS`; ``raw`` is the provider's own value.
    """

    reason: str
    raw: str | None = None
    choice: int = 0


class StreamEnd(msgspec.Struct, frozen=True, gc=False):
    """Terminal success: the provider's terminal marker was seen.

    ``finish_reason`` is choice 0's mapped reason; ``usage`` is the last reported value
    (None when the provider reported none).
    """

    finish_reason: str
    usage: Usage | None = None
    raw_finish_reason: str | None = None
    model: str | None = None
    response_id: str | None = None


class StreamFailed(msgspec.Struct, frozen=True, gc=False):
    """Terminal failure detected in the body: an in-band error after HTTP 200, a truncated
    body (no terminal marker before EOF), or an unparseable body.

    Attributes:
        code: hub error code (``provider_error``, ``rate_limited``, ``stream_truncated``,
            ``invalid_upstream_response``, ``content_filter``...).
        message: text from the provider (or ours), not yet redacted.
        status: HTTP-equivalent status (Anthropic ``overloaded_error`` → 529, Gemini error
            ``code``, OpenRouter ``error.code``), None when unknown.
        retryable: whether a new request may succeed.
        provider_type: the provider's own error type string (``overloaded_error``,
            ``RESOURCE_EXHAUSTED``...), when given.
        usage: the usage reported before the failure, if any.
    """

    code: str
    message: str
    status: int | None = None
    retryable: bool = False
    provider_type: str | None = None
    usage: Usage | None = None


#: Any event a normalizer emits.
StreamEvent: TypeAlias = (
    TextDelta
    | ReasoningDelta
    | ReasoningDone
    | RefusalDelta
    | ToolCall
    | Citation
    | ChoiceFinished
    | StreamEnd
    | StreamFailed
)
