"""Tests for protocol/buffer.py: StreamBuffer, the coalescing decision as pure logic.

The clock is an argument (``now_ms``), so every test states the time it runs at; nothing
sleeps. Times below are in ms on an arbitrary monotonic clock starting at ``T0``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.buffer import StreamBuffer
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
    Usage,
)

T0 = 1_000.0


def push_all(buffer: StreamBuffer, events: list[Any], now_ms: float = T0) -> list[Any]:
    out: list[Any] = []
    for event in events:
        out.extend(buffer.push(event, now_ms))
    return out


# Size-triggered release.


def test_text_deltas_merge_until_chunk_size_then_release_at_once() -> None:
    buffer = StreamBuffer(chunk_size=10, flush_interval_ms=25)
    assert buffer.push(TextDelta("abcd"), T0) == []
    assert buffer.push(TextDelta("efgh"), T0 + 1) == []
    assert buffer.pending_chars == 8
    assert buffer.push(TextDelta("ij"), T0 + 2) == [TextDelta("abcdefghij")]
    assert buffer.pending_chars == 0
    assert buffer.deadline_ms is None


def test_a_delta_crossing_chunk_size_is_released_whole_not_split() -> None:
    buffer = StreamBuffer(chunk_size=5, flush_interval_ms=25)
    assert buffer.push(TextDelta("abc"), T0) == []
    assert buffer.push(TextDelta("defghij"), T0) == [TextDelta("abcdefghij")]


def test_a_single_delta_of_chunk_size_is_released_immediately() -> None:
    buffer = StreamBuffer(chunk_size=4, flush_interval_ms=25)
    assert buffer.push(TextDelta("abcd"), T0) == [TextDelta("abcd")]
    assert buffer.flush() == []


def test_chunk_size_counts_characters_not_bytes() -> None:
    buffer = StreamBuffer(chunk_size=3, flush_interval_ms=25)
    assert buffer.push(TextDelta("é€"), T0) == []  # 2 characters, 5 UTF-8 bytes
    assert buffer.pending_chars == 2
    assert buffer.push(TextDelta("😀"), T0) == [TextDelta("é€😀")]


def test_after_a_size_release_the_next_delta_starts_a_new_chunk() -> None:
    buffer = StreamBuffer(chunk_size=4, flush_interval_ms=25)
    assert push_all(buffer, [TextDelta("ab"), TextDelta("cd"), TextDelta("ef")]) == [TextDelta("abcd")]
    assert buffer.pending_chars == 2
    assert buffer.flush() == [TextDelta("ef")]


# Time-triggered release.


def test_poll_releases_only_at_or_after_the_deadline() -> None:
    buffer = StreamBuffer(chunk_size=100, flush_interval_ms=25)
    assert buffer.deadline_ms is None
    assert buffer.poll(T0) == []  # nothing buffered
    buffer.push(TextDelta("Hel"), T0)
    assert buffer.deadline_ms == T0 + 25
    buffer.push(TextDelta("lo"), T0 + 20)
    assert buffer.deadline_ms == T0 + 25  # set by the first buffered delta, not moved
    assert buffer.poll(T0 + 10) == []
    assert buffer.poll(T0 + 24.999) == []
    assert buffer.poll(T0 + 25) == [TextDelta("Hello")]
    assert buffer.deadline_ms is None
    assert buffer.poll(T0 + 100) == []  # released once


def test_poll_late_releases_everything_buffered() -> None:
    buffer = StreamBuffer(chunk_size=100, flush_interval_ms=25)
    buffer.push(ReasoningDelta("think"), T0)
    buffer.push(ReasoningDelta("ing"), T0 + 5)
    assert buffer.poll(T0 + 500) == [ReasoningDelta("thinking")]


def test_deadline_restarts_with_the_next_delta_after_a_release() -> None:
    buffer = StreamBuffer(chunk_size=100, flush_interval_ms=25)
    buffer.push(TextDelta("a"), T0)
    assert buffer.poll(T0 + 25) == [TextDelta("a")]
    buffer.push(TextDelta("b"), T0 + 40)
    assert buffer.deadline_ms == T0 + 65
    assert buffer.poll(T0 + 50) == []
    assert buffer.poll(T0 + 65) == [TextDelta("b")]


def test_flush_releases_now_and_empties() -> None:
    buffer = StreamBuffer(chunk_size=100, flush_interval_ms=25)
    buffer.push(RefusalDelta("I can"), T0)
    buffer.push(RefusalDelta("not"), T0)
    assert buffer.flush() == [RefusalDelta("I cannot")]
    assert buffer.flush() == []
    assert buffer.pending_chars == 0
    assert buffer.deadline_ms is None


# Kind changes keep order.


def test_kind_change_releases_previous_kind_first() -> None:
    buffer = StreamBuffer(chunk_size=100, flush_interval_ms=25)
    out = push_all(
        buffer,
        [TextDelta("A"), TextDelta("B"), ReasoningDelta("r1"), ReasoningDelta("r2"), TextDelta("C"), TextDelta("D")],
    )
    assert out == [TextDelta("AB"), ReasoningDelta("r1r2")]
    assert buffer.flush() == [TextDelta("CD")]


def test_kind_change_restarts_the_deadline() -> None:
    buffer = StreamBuffer(chunk_size=100, flush_interval_ms=25)
    buffer.push(TextDelta("A"), T0)
    assert buffer.push(ReasoningDelta("r"), T0 + 10) == [TextDelta("A")]
    assert buffer.deadline_ms == T0 + 35
    assert buffer.poll(T0 + 25) == []
    assert buffer.poll(T0 + 35) == [ReasoningDelta("r")]


def test_refusal_is_its_own_kind() -> None:
    buffer = StreamBuffer(chunk_size=100, flush_interval_ms=25)
    out = push_all(buffer, [TextDelta("x"), RefusalDelta("no"), RefusalDelta("pe")])
    assert out == [TextDelta("x")]
    assert buffer.flush() == [RefusalDelta("nope")]


def test_choice_change_releases_previous_choice() -> None:
    buffer = StreamBuffer(chunk_size=100, flush_interval_ms=25)
    out = push_all(buffer, [TextDelta("a", choice=0), TextDelta("b", choice=0), TextDelta("c", choice=1)])
    assert out == [TextDelta("ab", choice=0)]
    assert buffer.flush() == [TextDelta("c", choice=1)]


# Non-mergeable events pass through after pending text.

TOOL_CALL = ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris"}, arguments_raw='{"city":"Paris"}')
PASS_THROUGH = [
    TOOL_CALL,
    StreamEnd(finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)),
    StreamFailed(code="provider_error", message="overloaded", status=529, retryable=True),
    ReasoningDone(),
    Citation(citation={"type": "char_location", "cited_text": "x"}),
    ChoiceFinished(reason="stop", raw="stop"),
]


@pytest.mark.parametrize("event", PASS_THROUGH, ids=lambda e: type(e).__name__)
def test_other_events_release_pending_text_then_pass_through(event: Any) -> None:
    buffer = StreamBuffer(chunk_size=100, flush_interval_ms=25)
    assert push_all(buffer, [TextDelta("Hel"), TextDelta("lo")]) == []
    assert buffer.push(event, T0 + 1) == [TextDelta("Hello"), event]
    assert buffer.pending_chars == 0
    assert buffer.deadline_ms is None


@pytest.mark.parametrize("event", PASS_THROUGH, ids=lambda e: type(e).__name__)
def test_other_events_pass_through_alone_when_nothing_is_pending(event: Any) -> None:
    buffer = StreamBuffer(chunk_size=100, flush_interval_ms=25)
    assert buffer.push(event, T0) == [event]


def test_reasoning_then_done_then_answer() -> None:
    buffer = StreamBuffer(chunk_size=100, flush_interval_ms=25)
    out = push_all(buffer, [ReasoningDelta("hm"), ReasoningDelta("m"), ReasoningDone(), TextDelta("Yes"),
                            StreamEnd(finish_reason="stop")])
    assert out == [ReasoningDelta("hmm"), ReasoningDone(), TextDelta("Yes"), StreamEnd(finish_reason="stop")]


@pytest.mark.parametrize(
    "special",
    [ReasoningDelta("", signature="EqQBsig"), ReasoningDelta("tail", signature="EqQBsig"),
     ReasoningDelta("", redacted="b64opaque")],
    ids=["signature-only", "text-and-signature", "redacted"],
)
def test_reasoning_delta_with_signature_or_redacted_is_not_merged(special: ReasoningDelta) -> None:
    buffer = StreamBuffer(chunk_size=100, flush_interval_ms=25)
    out = push_all(buffer, [ReasoningDelta("thin"), ReasoningDelta("king"), special, ReasoningDelta("more")])
    assert out == [ReasoningDelta("thinking"), special]
    assert buffer.flush() == [ReasoningDelta("more")]


def test_disabled_buffer_passes_everything_through() -> None:
    buffer = StreamBuffer(chunk_size=1, flush_interval_ms=0, enabled=False)
    events = [TextDelta("a"), TextDelta("b"), ReasoningDelta("r"), RefusalDelta("x"), TOOL_CALL,
              ReasoningDelta("", signature="s"), StreamEnd(finish_reason="stop")]
    for event in events:
        assert buffer.push(event, T0) == [event]
    assert buffer.pending_chars == 0
    assert buffer.deadline_ms is None
    assert buffer.poll(T0 + 1_000) == []
    assert buffer.flush() == []


def test_defaults() -> None:
    buffer = StreamBuffer()
    assert (buffer.chunk_size, buffer.flush_interval_ms, buffer.enabled) == (100, 25.0, True)
    assert buffer.push(TextDelta("x" * 99), T0) == []
    assert buffer.push(TextDelta("y"), T0) == [TextDelta("x" * 99 + "y")]


# Property: coalescing never changes the text nor the order of kinds.

KINDS = {"text": TextDelta, "reasoning": ReasoningDelta, "refusal": RefusalDelta}

steps = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from(sorted(KINDS)), st.text(min_size=1, max_size=12)),
        st.tuples(st.just("poll"), st.just(""), st.just("")),
    ),
    max_size=40,
)


def runs(events: list[Any]) -> list[tuple[type, str]]:
    """Collapse consecutive events of one kind into ``(kind, concatenated text)``."""
    out: list[tuple[type, str]] = []
    for event in events:
        if out and out[-1][0] is type(event):
            out[-1] = (type(event), out[-1][1] + event.text)
        else:
            out.append((type(event), event.text))
    return out


@settings(max_examples=200, deadline=None)
@given(
    steps,
    st.lists(st.floats(min_value=0, max_value=60, allow_nan=False), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=30),
    st.floats(min_value=0, max_value=50, allow_nan=False),
)
def test_coalescing_preserves_text_and_kind_order(
    script: list[tuple[str, str, str]], gaps: list[float], chunk_size: int, flush_interval_ms: float
) -> None:
    buffer = StreamBuffer(chunk_size=chunk_size, flush_interval_ms=flush_interval_ms)
    now = T0
    sent: list[Any] = []
    released: list[Any] = []
    for i, (action, kind, text) in enumerate(script):
        now += gaps[i % len(gaps)]
        if action == "push":
            event = KINDS[kind](text)
            sent.append(event)
            released.extend(buffer.push(event, now))
        else:
            deadline = buffer.deadline_ms
            polled = buffer.poll(now)
            released.extend(polled)
            # poll releases exactly when the deadline has come.
            assert bool(polled) == (deadline is not None and now >= deadline)
        # Never more than chunk_size - 1 characters are held after a push or poll.
        assert buffer.pending_chars < chunk_size
    released.extend(buffer.flush())
    assert runs(released) == runs(sent)
    assert all(event.text for event in released)
    assert all(isinstance(event, tuple(KINDS.values())) for event in released)
    assert buffer.pending_chars == 0


def test_release_first_sends_the_first_delta_at_once_then_coalesces() -> None:
    buffer = StreamBuffer(chunk_size=100, flush_interval_ms=25.0, release_first=True)
    first = TextDelta("Hel")
    assert buffer.push(first, now_ms=0.0) == [first]
    assert buffer.deadline_ms is None
    assert buffer.push(TextDelta("lo"), now_ms=1.0) == []
    assert buffer.push(TextDelta(" world"), now_ms=2.0) == []
    assert buffer.deadline_ms == 26.0
    assert buffer.poll(now_ms=26.0) == [TextDelta("lo world")]


def test_release_first_applies_to_reasoning_too_and_only_once() -> None:
    buffer = StreamBuffer(release_first=True)
    thought = ReasoningDelta("hmm")
    assert buffer.push(thought, now_ms=0.0) == [thought]
    assert buffer.push(TextDelta("A"), now_ms=1.0) == []  # not the first delta any more
    assert buffer.flush() == [TextDelta("A")]
