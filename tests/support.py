"""Shared helpers for the tests: where the recordings are, how to split bodies, and one
summary shape that normalizer tests and end-to-end tests both compare against.

The summary of a stream (``summarize``) and a transcript's ``.expected.json`` sidecar in
tests/data use the same keys::

    {"text": str, "reasoning": str, "refusal": str, "signatures": [str], "redacted": int,
     "tool_calls": [{"id": str, "name": str, "arguments": Any, "valid": bool}],
     "citations": int, "finish_reason": str | None,
     "usage": {"prompt_tokens": int, "completion_tokens": int, "total_tokens": int,
               "reasoning_tokens": int | None} | None,
     "error": {"code": str, "status": int | None} | None}
"""

from __future__ import annotations

import itertools
import pathlib
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec
import pytest

from protocol.events import (
    Citation,
    ReasoningDelta,
    RefusalDelta,
    StreamEnd,
    StreamEvent,
    StreamFailed,
    TextDelta,
    ToolCall,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"

requires_shared = pytest.mark.skipif(
    not SHARED_FIXTURES.is_dir(),
    reason=f"recorded provider streams not found at {SHARED_FIXTURES} (CI has ../shared beside the checkout)",
)


def shared_fixture(name: str) -> bytes:
    """Bytes of a recording in ../shared/fixtures (call only under ``requires_shared``)."""
    return (SHARED_FIXTURES / name).read_bytes()


def splits(data: bytes, *, exhaustive_limit: int = 4096, random_count: int = 200, seed: int = 7) -> Iterator[list[bytes]]:
    """Ways to cut ``data`` into reads: whole, one byte at a time, every 2-way split point
    (for bodies up to ``exhaustive_limit`` bytes), then ``random_count`` random multi-way splits.
    """
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    if len(data) <= exhaustive_limit:
        for i in range(1, len(data)):
            yield [data[:i], data[i:]]
    rng = random.Random(seed)
    for _ in range(random_count):
        cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(1, 40)))) if len(data) > 1 else []
        bounds = [0, *cuts, len(data)]
        yield [data[a:b] for a, b in itertools.pairwise(bounds)]


def run_normalizer(factory: Callable[[], Any], pieces: Iterable[bytes]) -> list[StreamEvent]:
    """Feed ``pieces`` to a fresh normalizer from ``factory`` and close it; return all events."""
    normalizer = factory()
    events: list[StreamEvent] = []
    for piece in pieces:
        events.extend(normalizer.feed(piece))
    events.extend(normalizer.close())
    return events


def summarize(events: Iterable[StreamEvent], choice: int = 0) -> dict[str, Any]:
    """Accumulate unified events of one choice into the summary shape (module docstring)."""
    text: list[str] = []
    reasoning: list[str] = []
    refusal: list[str] = []
    signatures: list[str] = []
    redacted = 0
    citations = 0
    tool_calls: list[dict[str, Any]] = []
    finish_reason = None
    usage = None
    error = None
    for event in events:
        if getattr(event, "choice", 0) != choice:
            continue
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
            if event.signature:
                signatures.append(event.signature)
            if event.redacted:
                redacted += 1
        elif isinstance(event, RefusalDelta):
            refusal.append(event.text)
        elif isinstance(event, Citation):
            citations += 1
        elif isinstance(event, ToolCall):
            tool_calls.append(
                {"id": event.id, "name": event.name, "arguments": event.arguments, "valid": event.arguments_valid}
            )
        elif isinstance(event, StreamEnd):
            finish_reason = event.finish_reason
            usage = _usage(event.usage)
        elif isinstance(event, StreamFailed):
            finish_reason = "error"
            usage = _usage(event.usage)
            error = {"code": event.code, "status": event.status}
    return {
        "text": "".join(text),
        "reasoning": "".join(reasoning),
        "refusal": "".join(refusal),
        "signatures": signatures,
        "redacted": redacted,
        "tool_calls": tool_calls,
        "citations": citations,
        "finish_reason": finish_reason,
        "usage": usage,
        "error": error,
    }


def _usage(usage: Any) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


def load_expected(transcript: pathlib.Path) -> dict[str, Any]:
    """The ``<transcript>.expected.json`` sidecar of a transcript in tests/data."""
    sidecar = transcript.with_name(transcript.name + ".expected.json")
    return msgspec.json.decode(sidecar.read_bytes())
