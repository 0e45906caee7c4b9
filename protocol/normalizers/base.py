"""The contract every provider normalizer follows, and the loop and pieces they share.

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
- ``close()`` without a terminal marker yields ``StreamFailed(code="stream_truncated")``
  carrying the usage reported so far: a body cut short is an error, never a success
  (docs/PROVIDERS.md §6.5, §10.4). Gemini SSE, which has no marker, is the one exception (its
  module docstring).
- No empty text deltas; reasoning signatures and redacted blocks are kept.
- Tool calls are emitted once, complete; ids are synthesized (``call_<n>``) when missing.
- Garbage (an item that does not parse as the chunk it should be, or bytes the framing
  cannot accept) becomes ``StreamFailed(code="invalid_upstream_response")``, never an
  exception. The events completed before the bad item, in the same read, are kept, so the
  output never depends on where the body was split into reads.
- End of body (docs/PROVIDERS.md §10.9): the framing layer hands over an item left pending at EOF
  (an SSE event without its blank line, an NDJSON line without its line end). If it does not
  parse, it is a *cut* when its text is not well-formed JSON at all (``{"a``, ``[``, a cut
  ``[DONE``), reported as ``stream_truncated``; and *garbage* when it is well-formed JSON of
  the wrong shape, reported as ``invalid_upstream_response``. msgspec may report a cut as a
  ``ValidationError`` (``[`` is "expected object"), so the test is well-formedness, not the
  exception type.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.errors import FramingError
from protocol.events import StreamEvent, StreamFailed, ToolCall, Usage
from protocol.framing import SSEEvent

__all__ = ["Normalizer", "make_tool_call", "parse_tool_arguments", "truncated"]

_json_decoder = msgspec.json.Decoder()

# What a bad item raises: msgspec errors (DecodeError, and ValidationError, its subclass, are
# ValueErrors), the framing's own errors, and RecursionError, which msgspec raises for JSON
# nested deeper than it recurses (``[`` 5 000 times is a 5 KB item). Anything else is a bug
# and propagates.
_UNPARSEABLE = (msgspec.DecodeError, ValueError, FramingError, RecursionError)


class Normalizer:
    """Base class: one instance per upstream response. Runs the loop every format shares.

    :meth:`feed` passes each item the framing completed in the slice (an SSE event, an NDJSON
    line, a JSON-array element) to :meth:`_on_item`, and stops at the first one that reports
    the terminal event. A parse error raised while handling an item ends the stream with
    ``invalid_upstream_response`` after the events completed before it. :meth:`close` does
    the same with the items the framing still held at EOF, except that an item failing there
    is judged by the module's end-of-body rule (a cut → ``stream_truncated``, garbage →
    ``invalid_upstream_response``); when no terminal event came, :meth:`_eof` decides.

    A subclass supplies:

    - :meth:`_items` and :meth:`_last_items`: its framer's ``feed(chunk)`` and ``close()``.
    - :meth:`_on_item`: handle one item, appending unified events to ``out``; return True
      once it appended the terminal event (and nothing after it). It may raise a parse error
      (msgspec, ``ValueError``, :class:`~protocol.errors.FramingError`). This is the hot path:
      the base does nothing else per item.
    - :meth:`_usage_so_far`: the usage reported so far, carried by ``stream_truncated``.
    - :meth:`_eof`: what EOF without a terminal event means; by default ``stream_truncated``.
    - :meth:`_item_text`, only for items other than :class:`~protocol.framing.SSEEvent` and
      raw lines or elements: the JSON text an item carried, for the end-of-body rule.

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
        out: list[StreamEvent] = []
        on_item = self._on_item
        try:
            for item in self._items(chunk):
                if on_item(item, out):
                    self.done = True
                    break
        except _UNPARSEABLE as exc:
            # Kept: the events this read completed before the bad item, so that the output
            # does not depend on read boundaries.
            out.append(self._invalid(exc))
            self.done = True
        return out

    def close(self) -> list[StreamEvent]:
        """End of body: handle what the framing still held; without a terminal, :meth:`_eof`."""
        if self.done:
            return []
        self.done = True
        try:
            items = self._last_items()
        except _UNPARSEABLE as exc:  # an error the framing found after its last items
            return [self._invalid(exc)]
        out: list[StreamEvent] = []
        for item in items:
            try:
                if self._on_item(item, out):
                    return out
            except _UNPARSEABLE as exc:
                # An item left pending at EOF (module docstring): a cut if its text is not
                # even well-formed JSON, garbage if it is JSON of the wrong shape.
                if _is_json(self._item_text(item)):
                    out.append(self._invalid(exc))
                else:
                    out.append(self._truncated())
                return out
        self._eof(out)
        return out

    # For subclasses.

    def _items(self, chunk: bytes) -> list[Any]:
        """The items the framing completed with ``chunk`` (the framer's ``feed``)."""
        raise NotImplementedError

    def _last_items(self) -> list[Any]:
        """The items the framing still held at EOF (the framer's ``close``)."""
        raise NotImplementedError

    def _on_item(self, item: Any, out: list[StreamEvent]) -> bool:
        """Handle one item; return True once the terminal event was appended to ``out``."""
        raise NotImplementedError

    def _usage_so_far(self) -> Usage | None:
        """The usage reported so far (attached to ``stream_truncated``)."""
        return None

    def _eof(self, out: list[StreamEvent]) -> None:
        """EOF came without a terminal event: append the one that ends the stream."""
        out.append(self._truncated())

    def _item_text(self, item: Any) -> str | bytes:
        """The JSON text ``item`` carried (an SSE event's data, or the line or element)."""
        return item.data if type(item) is SSEEvent else item

    def _truncated(self) -> StreamFailed:
        return truncated(self.provider, self._usage_so_far())

    def _invalid(self, exc: Exception) -> StreamFailed:
        return StreamFailed(
            code="invalid_upstream_response",
            message=f"{self.provider} sent a body that could not be parsed: {exc}",
            retryable=False,
        )


def _is_json(text: str | bytes) -> bool:
    """True if ``text`` is one well-formed JSON value (used only at EOF, off the hot path).

    Also True for text nested too deeply to decode: no provider chunk nests that deep, so it
    is garbage whether or not it was cut, as it is when it is not the last item.
    """
    try:
        _json_decoder.decode(text)
    except msgspec.DecodeError:
        return False
    except RecursionError:
        return True
    return True


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
        as a no-argument Anthropic tool sends only ``""``, docs/PROVIDERS.md §2.4), or the raw string
        when it is not valid JSON (or nests too deeply to decode); the raw JSON text; whether
        it parsed.
    """
    if not isinstance(raw, str):
        return raw, msgspec.json.encode(raw).decode(), True
    if not raw.strip():
        return {}, raw, True
    try:
        return _json_decoder.decode(raw), raw, True
    except (msgspec.DecodeError, RecursionError):
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
