"""The contract every provider normalizer follows, and the pieces they share.

A normalizer turns one upstream response body (bytes, in arbitrary slices) into unified
events (protocol/events.py)::

    normalizer = OpenAIChatNormalizer()
    for chunk in body_chunks:
        events.extend(normalizer.feed(chunk))
    events.extend(normalizer.close())     # at EOF

Rules every normalizer keeps:

- The last event is exactly one :class:`~protocol.events.StreamEnd` (the provider's terminal
  marker was parsed) or :class:`~protocol.events.StreamFailed` (in-band error, truncation,
  unparseable body). After it, ``feed`` and ``close`` return ``[]``.
- ``close()`` without a terminal marker yields ``StreamFailed(code="stream_truncated")``:
  a body cut short is an error, never a success (formats.md §6.5, §10.4).
- No empty text deltas; reasoning signatures and redacted blocks are kept.
- Tool calls are emitted once, complete; ids are synthesized (``call_<n>``) when missing.
- Garbage (unparseable JSON where a chunk should be) becomes
  ``StreamFailed(code="invalid_upstream_response")``, never an exception.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.errors import FramingError
from protocol.events import StreamEnd, StreamEvent, StreamFailed, ToolCall, Usage

__all__ = ["Normalizer", "make_tool_call", "parse_tool_arguments", "truncated"]

_json_decoder = msgspec.json.Decoder()


class Normalizer:
    """Base class: one instance per upstream response.

    Subclasses implement :meth:`_feed` and :meth:`_close`; the base enforces "nothing after
    the terminal event" and turns parse errors that escape a subclass into ``StreamFailed``.
    That fallback replaces every event of the read that failed, so subclasses should catch
    errors per chunk themselves and keep the events completed before the bad one.

    Attributes:
        provider: provider name for messages (``openai``, ``anthropic``, ``google``, ``ollama``).
        done: True once the terminal event was emitted.
    """

    provider = "unknown"

    def __init__(self) -> None:
        self.done = False

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """Parse the next slice of the body; return the unified events it completed."""
        if self.done:
            return []
        try:
            events = self._feed(chunk)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, FramingError) as exc:
            events = [self._invalid(exc)]
        return self._check_terminal(events)

    def close(self) -> list[StreamEvent]:
        """End of body: flush pending state; emits ``stream_truncated`` if unterminated."""
        if self.done:
            return []
        try:
            events = self._close()
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, FramingError) as exc:
            events = [self._invalid(exc)]
        events = self._check_terminal(events)
        if not self.done:
            events.append(truncated(self.provider))
            self.done = True
        return events

    # For subclasses.

    def _feed(self, chunk: bytes) -> list[StreamEvent]:
        raise NotImplementedError

    def _close(self) -> list[StreamEvent]:
        raise NotImplementedError

    def _invalid(self, exc: Exception) -> StreamFailed:
        return StreamFailed(
            code="invalid_upstream_response",
            message=f"{self.provider} sent a body that could not be parsed: {exc}",
            retryable=False,
        )

    def _check_terminal(self, events: list[StreamEvent]) -> list[StreamEvent]:
        """Cut everything after the first terminal event and set :attr:`done`."""
        for index, event in enumerate(events):
            if isinstance(event, (StreamEnd, StreamFailed)):
                self.done = True
                return events[: index + 1]
        return events


def truncated(provider: str, usage: Usage | None = None) -> StreamFailed:
    """The event for a body that ended before the provider's terminal marker.

    Args:
        provider: provider name for the message.
        usage: the usage reported before the body ended, if any.
    """
    return StreamFailed(
        code="stream_truncated",
        message=f"the {provider} stream ended before its terminal marker",
        retryable=True,
        usage=usage,
    )


def parse_tool_arguments(raw: str | Any) -> tuple[Any, str, bool]:
    """Parse assembled tool-call arguments.

    Args:
        raw: the concatenated argument fragments (a JSON text), or an already-parsed value
            (Gemini and Ollama send arguments as a JSON object).

    Returns:
        ``(arguments, arguments_raw, valid)``: the parsed value (``{}`` for an empty string,
        as a no-argument Anthropic tool sends only ``""``, formats.md §2.4), or the raw string
        when it is not valid JSON; the raw JSON text; whether it parsed.
    """
    if not isinstance(raw, str):
        return raw, msgspec.json.encode(raw).decode(), True
    if not raw.strip():
        return {}, raw, True
    try:
        return _json_decoder.decode(raw), raw, True
    except msgspec.DecodeError:
        return raw, raw, False


def make_tool_call(
    call_id: str | None,
    name: str,
    raw_arguments: str | Any,
    *,
    fallback_index: int,
    server: bool = False,
    signature: str | None = None,
    choice: int = 0,
) -> ToolCall:
    """Build a :class:`ToolCall`, parsing the arguments and synthesizing a missing id."""
    arguments, arguments_raw, valid = parse_tool_arguments(raw_arguments)
    return ToolCall(
        id=call_id or f"call_{fallback_index}",
        name=name,
        arguments=arguments,
        arguments_raw=arguments_raw,
        arguments_valid=valid,
        server=server,
        signature=signature,
        choice=choice,
    )
