"""``cbhub bench redaction``: the cost of redaction (docs/PROTOCOL.md "Redaction").

protocol/ alone, no network, one thread: a model answer (the mock provider's words, with an
email, a phone number, a card number and a key sprinkled in every ~40 words) is fed to a
:class:`protocol.redaction.StreamRedactor` chunk by chunk, as hub/completions.py does per
streamed field, for four rule sets: ``none`` (redaction off: the hub does not call the
redactor at all; the row times the loop alone), ``builtins`` (the five built-ins), ``user5``
(five user rules) and ``builtins+user5``. Rows: µs per chunk (``us_per_chunk``: the feed alone,
the loop's own cost subtracted), MB/s of text, and the hold-back latency: the characters held
after each chunk (mean and max, at most ``max_match_chars``) and how many chunks later a
character is released on average (``delay_chunks_mean``). Chunk sizes: ``token`` (one word
per chunk, as with ``coalesce: false``) and ``64`` characters (coalesced).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from hub.config import RedactionRule
from hub.testing.mock_provider import expected_text
from protocol.redaction import BUILTINS, Redactor, compile_redactor
from tools.bench.report import Reporter

__all__ = ["add_arguments", "run", "make_text", "measure"]

_COLUMNS = ["rules", "chunks", "chunk_chars", "us_per_chunk", "mb_per_s", "held_chars_mean", "held_chars_max",
            "delay_chunks_mean", "masked"]

USER_RULES = [
    RedactionRule("ticket", r"\bTCK-[0-9]{6}\b"),
    RedactionRule("employee", r"\bEMP[0-9]{5}\b"),
    RedactionRule("project", r"\bproject (?:falcon|osprey|heron)\b", "[project]"),
    RedactionRule("ipv4", r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b"),
    RedactionRule("order", r"\bORD-[A-Z]{2}-[0-9]{4,8}\b"),
]

RULE_SETS: dict[str, tuple[list[str], list[RedactionRule]]] = {
    "none": ([], []),
    "builtins": (list(BUILTINS), []),
    "user5": ([], USER_RULES),
    "builtins+user5": (list(BUILTINS), USER_RULES),
}

_SPRINKLE = ["write to jane.roe@example.org", "call +44 20 7946 0958", "card 4111 1111 1111 1111",
             "key sk-proj-abcdefghijklmnopqrstuvwxyz012345", "ticket TCK-123456 from 10.0.0.12"]


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The ``redaction`` scenario's options (``name`` is unused)."""
    parser.add_argument("--tokens", type=int, default=4000, help="words in the answer (default 4000)")
    parser.add_argument("--max-match-chars", type=int, default=64, help="redaction.max_match_chars (default 64)")
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum wall time per row (default 1.0)")


def make_text(tokens: int) -> str:
    """The answer: the mock's words with a value to mask every ~40 words."""
    words = expected_text(tokens).split(" ")
    for index in range(20, len(words), 40):
        words[index] = _SPRINKLE[(index // 40) % len(_SPRINKLE)]
    return " ".join(words)


def chunks_of(text: str, size: str) -> list[str]:
    """``token``: one word (with its space) per chunk; a number: fixed-size chunks."""
    if size == "token":
        return [word + " " for word in text.split(" ")]
    n = int(size)
    return [text[i:i + n] for i in range(0, len(text), n)]


def _time(redactor: Redactor | None, chunks: list[str], seconds: float) -> tuple[float, int]:
    """Seconds per pass over ``chunks`` (at least ``seconds`` of passes), and the passes."""
    passes = 0
    start = time.perf_counter()
    while True:
        if redactor is None:
            for chunk in chunks:
                _identity(chunk)
        else:
            stream = redactor.stream()
            feed = stream.feed
            for chunk in chunks:
                feed(chunk)
            stream.flush()
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / passes, passes


def _identity(chunk: str) -> str:
    return chunk


def measure(redactor: Redactor | None, chunks: list[str], seconds: float) -> dict[str, Any]:
    """One row's figures (module docstring)."""
    loop_s, _ = _time(None, chunks, seconds / 4)
    per_pass, passes = _time(redactor, chunks, seconds) if redactor is not None else (loop_s, 0)
    chars = sum(map(len, chunks))
    row: dict[str, Any] = {"chunks": len(chunks), "chunk_chars": round(chars / len(chunks), 1), "passes": passes,
                           "us_per_chunk": round(max(0.0, per_pass - loop_s) / len(chunks) * 1e6, 3)
                           if redactor is not None else 0.0}
    row["mb_per_s"] = round(chars / per_pass / 1e6, 1) if redactor is not None and per_pass > loop_s else None
    if redactor is None:
        row.update(held_chars_mean=0.0, held_chars_max=0, delay_chunks_mean=0.0, masked=0)
        return row
    stream = redactor.stream()
    held: list[int] = []
    consumed: list[int] = []  # input characters released after each chunk
    total = 0
    out: list[str] = []
    for chunk in chunks:
        out.append(stream.feed(chunk))
        total += len(chunk)
        held.append(stream.pending)
        consumed.append(total - stream.pending)
    out.append(stream.flush())
    consumed[-1] = total
    delays = 0
    arrival_end = 0
    release = 0
    for index, chunk in enumerate(chunks):
        for position in range(arrival_end, arrival_end + len(chunk)):
            while consumed[release] <= position:
                release += 1
            delays += release - index
        arrival_end += len(chunk)
    text = "".join(out)
    row.update(held_chars_mean=round(sum(held) / len(held), 1), held_chars_max=max(held),
               delay_chunks_mean=round(delays / chars, 2), masked=text.count("[REDACTED"))
    return row


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Measure every rule set at both chunk sizes; 0 when the streamed output always equals
    the whole-text redaction, else 1."""
    text = make_text(args.tokens)
    reporter.columns = _COLUMNS
    status = 0
    with reporter.progress("redaction", total=2 * len(RULE_SETS)) as advance:
        for size in ("token", "64"):
            chunks = chunks_of(text, size)
            for name, (builtins, rules) in RULE_SETS.items():
                redactor = compile_redactor(builtins, rules, args.max_match_chars) if builtins or rules else None
                row: dict[str, Any] = {"scenario": "redaction", "rules": name, "size": size,
                                       "max_match_chars": args.max_match_chars}
                row.update(measure(redactor, chunks, args.seconds))
                if redactor is not None:
                    stream = redactor.stream()
                    streamed = "".join(stream.feed(c) for c in chunks) + stream.flush()
                    row["check"] = "ok" if streamed == redactor.redact("".join(chunks)) else "differs"
                    if row["check"] != "ok":
                        status = 1
                reporter.emit(row)
                advance(1)
    reporter.table(f"redaction: StreamRedactor.feed per chunk, {args.tokens} words, max_match_chars "
                   f"{args.max_match_chars}, one thread")
    return status
