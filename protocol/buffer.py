"""StreamBuffer: the coalescing decision of one stream, as pure logic (the time is passed in).

Providers send a delta per token; a browser does not need a frame per token. The buffer
merges consecutive deltas of the same kind (answer text, reasoning text, refusal text) and
releases them when the merged text reaches ``chunk_size`` characters or when the oldest
buffered delta has waited ``flush_interval_ms``. Everything else (tool calls, citations, the
end of reasoning, the terminal event, and reasoning deltas that carry a signature or redacted
data) first releases what is pending, then goes out at once, so order is kept and the
concatenated text is never changed.

With ``release_first=True`` (the hub's setting) the first delta of a stream is released at
once, never held: time to first token is what users feel most, and one extra frame per stream
is cheap. Coalescing starts with the second delta.

The hub owns the timer: after each :meth:`StreamBuffer.push` it reads
:attr:`StreamBuffer.deadline_ms` and arranges to call :meth:`StreamBuffer.poll` then.
"""

from __future__ import annotations

from protocol.events import ReasoningDelta, RefusalDelta, StreamEvent, TextDelta

__all__ = ["StreamBuffer"]

_MERGEABLE = (TextDelta, ReasoningDelta, RefusalDelta)


class StreamBuffer:
    """Coalesces the deltas of one stream.

    Args:
        chunk_size: release once the buffered text reaches this many characters (default 100).
        flush_interval_ms: release once the oldest buffered delta is this old, in ms (25).
        enabled: False passes every event through unchanged (``"coalesce": false``).
        release_first: release the stream's first text, reasoning or refusal delta at once.
    """

    __slots__ = ("chunk_size", "flush_interval_ms", "enabled", "_kind", "_parts", "_size", "_deadline", "_choice",
                 "_first_sent")

    def __init__(
        self,
        chunk_size: int = 100,
        flush_interval_ms: float = 25.0,
        *,
        enabled: bool = True,
        release_first: bool = False,
    ) -> None:
        self.chunk_size = chunk_size
        self.flush_interval_ms = flush_interval_ms
        self.enabled = enabled
        self._kind: type | None = None
        self._choice = 0
        self._parts: list[str] = []
        self._size = 0
        self._deadline: float | None = None
        self._first_sent = not release_first

    @property
    def deadline_ms(self) -> float | None:
        """When :meth:`poll` must be called (same clock as ``now_ms``), or None if empty."""
        return self._deadline

    @property
    def pending_chars(self) -> int:
        """Characters buffered and not yet released."""
        return self._size

    def push(self, event: StreamEvent, now_ms: float) -> list[StreamEvent]:
        """Add one event; return the events to send now, in order.

        Args:
            event: the next unified event of the stream.
            now_ms: the current time in ms (any monotonic clock, the same on every call).
        """
        if not self.enabled:
            return [event]
        kind = type(event)
        if kind in _MERGEABLE and not (
            kind is ReasoningDelta and (event.signature or event.redacted)  # type: ignore[union-attr]
        ):
            if not self._first_sent:
                self._first_sent = True
                return [event]  # release_first: the first token goes out at once (TTFT)
            out: list[StreamEvent] = []
            if self._kind is not kind or self._choice != event.choice:  # type: ignore[union-attr]
                self._release(out)
                self._kind = kind
                self._choice = event.choice  # type: ignore[union-attr]
                self._deadline = now_ms + self.flush_interval_ms
            text = event.text  # type: ignore[union-attr]
            self._parts.append(text)
            self._size += len(text)
            if self._size >= self.chunk_size:
                self._release(out)
            return out
        out = []
        self._release(out)
        out.append(event)
        return out

    def poll(self, now_ms: float) -> list[StreamEvent]:
        """Release the buffered text if its deadline has passed; else return ``[]``."""
        if self._deadline is None or now_ms < self._deadline:
            return []
        out: list[StreamEvent] = []
        self._release(out)
        return out

    def flush(self) -> list[StreamEvent]:
        """Release whatever is buffered, now."""
        out: list[StreamEvent] = []
        self._release(out)
        return out

    def _release(self, out: list[StreamEvent]) -> None:
        kind = self._kind
        if kind is None:
            return
        text = self._parts[0] if len(self._parts) == 1 else "".join(self._parts)
        out.append(kind(text=text, choice=self._choice))
        self._kind = None
        self._parts = []
        self._size = 0
        self._deadline = None
