"""``cbhub bench ingest``: protocol/ alone, no network: framing + normalizer throughput.

What is measured
----------------
For each provider format, one real streamed response body of ``--tokens`` answer tokens is
fetched once from the mock provider (hub/testing/mock_provider.py, run in-process; the fetch is
setup and is not timed), using the request the hub itself builds (hub.providers.build_request).
Then, with no network, no event loop and a single thread, the body is fed through the same
normalizer object the hub constructs for that provider (its framing decoder included) in
pieces, ``feed()`` per piece and ``close()`` at the end, again and again with a new normalizer
each time, until at least ``--seconds`` of wall time have passed. Every event produced is
counted, and the count per body must be the same on every pass.

Formats (``--formats``): ``openai`` (SSE), ``anthropic`` (SSE), ``gemini-sse`` (``?alt=sse``,
what the hub calls), ``gemini-array`` (the JSON array without ``alt``: same normalizer with
``framing="array"``; the hub does not call it today, measured for comparison) and ``ollama``
(NDJSON).

Two read patterns per format (the ``reads`` column):

- ``4096B`` (``--read-bytes``): fixed slices, what a socket read gives for an upstream that
  writes faster than the hub reads.
- ``per-chunk``: one piece per provider chunk (an SSE event with its blank line, a JSON-array
  element, an NDJSON line), what a paced upstream gives: one read per token.

Before timing, each (format, reads) pair is checked once: the framing must find the number of
provider chunks counted independently here, the concatenated text deltas must equal what the
mock sent (:func:`hub.testing.mock_provider.expected_text`), and the last event must be
``StreamEnd`` with ``finish_reason="stop"``. A failed check skips that row's timing and makes
the exit status 1, so the benchmark cannot silently measure a broken path.

Units (rows with ``scenario: "ingest"``): ``body_bytes`` bytes of one body;
``provider_chunks`` provider chunks in one body; ``pieces`` ``feed()`` calls per body;
``events_out`` unified events per body; ``bytes_per_s`` and ``chunks_per_s`` body bytes and
provider chunks per second of wall time (time.perf_counter), i.e. per core, as the loop is
single-threaded; ``us_per_chunk`` microseconds of wall time per provider chunk;
``chunks_per_cpu_s`` provider chunks per second of this process's CPU time
(time.process_time); ``cpu_wall_ratio`` CPU time / wall time (below 1 when the machine was
busy with something else and the wall figures are pessimistic). The garbage collector stays
enabled, as in the hub.

Encoding rows (``scenario: "encode"``): the cost of encoding one typical hub frame, a
:class:`~protocol.messages.ContentChunk` with a 4-character token, by the hub's
:func:`protocol.messages.encode` (msgspec, on the Struct) against ``orjson.dumps`` of the
equivalent dict, and other msgspec entry points; with and without building the message
object first (the hub builds one per event). ``ns_per_event`` is the mean over every call,
``ns_per_event_best`` the best batch (timeit's advice for micro-benchmarks; gc disabled
inside a batch, as timeit does); ``cpu_wall_ratio`` as above; ``event_bytes`` the frame
length; ``identical_bytes`` whether the encoder's output is byte for byte the hub's frame
(``equivalent_json``: same JSON value after parsing, which is also checked; a mismatch makes
the exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import time
import timeit
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import orjson

from hub.config import HubConfig
from hub.providers import build_request
from hub.testing.mock_provider import MockProvider, expected_text
from protocol.events import StreamEnd, StreamFailed, TextDelta
from protocol.framing import JSONArrayDecoder, NDJSONDecoder, SSEDecoder
from protocol.messages import ChatMessage, Completion, ContentChunk, encode
from protocol.normalizers.base import Normalizer
from protocol.normalizers.gemini import GeminiNormalizer
from tools.bench.report import Reporter

__all__ = [
    "FORMATS",
    "Body",
    "add_arguments",
    "run",
    "fetch_bodies",
    "count_provider_chunks",
    "split_fixed",
    "split_per_chunk",
    "check_body",
    "measure_ingest",
    "measure_encoders",
]

#: The formats, in table order.
FORMATS = ("openai", "anthropic", "gemini-sse", "gemini-array", "ollama")

#: The framing of each format: ``sse``, ``array`` or ``ndjson``.
_FRAMING = {"openai": "sse", "anthropic": "sse", "gemini-sse": "sse", "gemini-array": "array", "ollama": "ndjson"}

#: The hub model name whose request is sent for each format (the mock ignores the model).
_MODEL = {
    "openai": "openai/mock-model",
    "anthropic": "anthropic/mock-model",
    "gemini-sse": "google/mock-model",
    "gemini-array": "google/mock-model",
    "ollama": "ollama/mock-model",
}

_SEED = 7
_QUICK_SECONDS = 0.3

# One SSE event with its terminating blank line (LF LF, or CRLF CRLF as Gemini writes).
_SSE_EVENT = re.compile(rb".*?(?:\r\n\r\n|\n\n)", re.DOTALL)
# Between two pretty-printed JSON-array elements the mock writes "}\n,\r\n{"; json.dumps
# never leaves a raw CR or LF inside a string, so this cannot match inside an element.
_ARRAY_SEPARATOR = re.compile(rb"(?=,\r\n)")

# The terminal tables (every key goes to the JSON lines; these fit an 80-column terminal).
_INGEST_COLUMNS = ["format", "reads", "provider_chunks", "bytes_per_s", "chunks_per_s", "us_per_chunk", "check"]
_ENCODE_COLUMNS = ["encoder", "builds_message", "ns_per_event", "ns_per_event_best", "identical_bytes"]


@dataclass
class Body:
    """One streamed response body and how the hub parses it.

    Attributes:
        format: one of :data:`FORMATS`.
        data: the whole body as received (bytes).
        provider_chunks: the provider chunks in it (SSE events with data, array elements or
            NDJSON lines), counted by :func:`count_provider_chunks`.
        make_normalizer: builds the normalizer the hub uses for this format (no arguments).
        url: the URL it was fetched from (for the record).
    """

    format: str
    data: bytes
    provider_chunks: int
    make_normalizer: Callable[[], Normalizer]
    url: str


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The ``ingest`` scenario's options (``name`` is the scenario name, unused)."""
    parser.add_argument("--tokens", type=int, default=2000,
                        help="answer tokens in each provider body (default 2000)")
    parser.add_argument("--read-bytes", type=int, default=4096,
                        help="size of the fixed socket-like reads, in bytes (default 4096)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="minimum wall time per measured row, in seconds (default 2.0; 0.3 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help=f"short runs ({_QUICK_SECONDS} s per row) for development")
    parser.add_argument("--formats", type=_format_list, default=list(FORMATS),
                        help="comma-separated formats to measure (default: " + ",".join(FORMATS) + ")")


def _format_list(text: str) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in names if item not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
    return names


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Run the scenario: fetch the bodies, check them, time them, time the encoders.

    Emits one ``ingest`` row per (format, reads) and one ``encode`` row per encoder, prints
    the tables, and returns the exit status: 0 when every check passed, else 1.
    """
    seconds = args.seconds if args.seconds is not None else (_QUICK_SECONDS if args.quick else 2.0)
    if args.tokens < 1 or args.read_bytes < 1 or seconds <= 0:
        reporter.note("--tokens and --read-bytes must be at least 1, --seconds above 0")
        return 2
    bodies = asyncio.run(fetch_bodies(args.formats, args.tokens, _SEED))
    expected = expected_text(args.tokens, _SEED)
    status = 0
    reporter.columns = _INGEST_COLUMNS
    ingest_rows: list[dict[str, Any]] = []
    encode_rows: list[dict[str, Any]] = []
    with reporter.progress("ingest", total=2 * len(bodies) + len(_ENCODERS)) as advance:
        for body in bodies:
            for reads, pieces in ((f"{args.read_bytes}B", split_fixed(body.data, args.read_bytes)),
                                  ("per-chunk", split_per_chunk(body.format, body.data))):
                row: dict[str, Any] = {
                    "scenario": "ingest", "format": body.format, "reads": reads, "pieces": len(pieces),
                    "body_bytes": len(body.data), "provider_chunks": body.provider_chunks,
                    "tokens": args.tokens,
                }
                problem, events_per_body = check_body(body, pieces, expected)
                row["events_out"] = events_per_body
                if problem is None:
                    row.update(measure_ingest(body.make_normalizer, pieces, seconds, len(body.data),
                                              body.provider_chunks, events_per_body))
                    if row.pop("events_total_ok"):
                        row["check"] = "ok"
                    else:
                        problem = "the event count per body changed between passes"
                if problem is not None:
                    row["check"] = problem
                    reporter.note(f"[red]ingest {body.format} {reads}: check failed: {problem}[/red]")
                    status = 1
                reporter.emit(row)
                ingest_rows.append(row)
                advance(1)
        for row in measure_encoders(seconds, advance):
            if not (row["identical_bytes"] or row["equivalent_json"]):
                reporter.note(f"[red]encode {row['encoder']}: output differs from the hub's frame[/red]")
                status = 1
            reporter.emit(row)
            encode_rows.append(row)
    _table(reporter, ingest_rows, _INGEST_COLUMNS,
           f"ingest: framing + normalizer, {args.tokens} tokens per body, single thread (per core)")
    _table(reporter, encode_rows, _ENCODE_COLUMNS, "encode: one content_chunk frame (ns per event)")
    return status


def _table(reporter: Reporter, rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    """Print ``rows`` as their own table (Reporter.table prints all rows with one column set)."""
    all_rows, all_columns = reporter.rows, reporter.columns
    reporter.rows, reporter.columns = rows, columns
    try:
        reporter.table(title)
    finally:
        reporter.rows, reporter.columns = all_rows, all_columns


# Inputs.


async def fetch_bodies(formats: Sequence[str], tokens: int, seed: int = 0) -> list[Body]:
    """Fetch one streamed body per format from an in-process mock provider (setup, not timed).

    Args:
        formats: names from :data:`FORMATS`.
        tokens: answer tokens per body (the mock directive ``tokens=``).
        seed: the mock's word seed (the text is :func:`hub.testing.mock_provider.expected_text`).

    Returns:
        One :class:`Body` per format, in the order given.

    Raises:
        RuntimeError: the mock answered with a status other than 200.
    """
    bodies: list[Body] = []
    async with MockProvider(tokens=tokens, seed=seed) as mock:
        config = HubConfig(port=0, **mock.hub_overrides())
        async with aiohttp.ClientSession() as session:
            for name in formats:
                text = f"Tell me a story. [[mock tokens={tokens} seed={seed}]]"
                completion = Completion(model=_MODEL[name], messages=[ChatMessage(role="user", content=text)])
                upstream = build_request(completion, config)
                url, make_normalizer = upstream.url, upstream.make_normalizer
                if name == "gemini-array":
                    url = url.replace("?alt=sse", "")
                    make_normalizer = functools.partial(GeminiNormalizer, framing="array")
                async with session.post(url, data=msgspec.json.encode(upstream.body),
                                        headers=upstream.headers) as response:
                    data = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"mock answered {response.status} for {name}: {data[:200]!r}")
                bodies.append(Body(name, data, count_provider_chunks(name, data), make_normalizer, url))
    return bodies


def count_provider_chunks(format_name: str, data: bytes) -> int:
    """The provider chunks in a body, counted without protocol/ (json and re only).

    SSE: events with at least one ``data`` line (OpenAI's ``[DONE]`` and Anthropic's ``ping``
    included); JSON array: elements; NDJSON: non-blank lines.
    """
    framing = _FRAMING[format_name]
    if framing == "array":
        return len(json.loads(data))
    if framing == "ndjson":
        return sum(1 for line in data.split(b"\n") if line.strip())
    return sum(
        1 for piece in split_per_chunk(format_name, data)
        if any(line == b"data" or line.startswith(b"data:") for line in piece.splitlines())
    )


def split_fixed(data: bytes, size: int) -> list[bytes]:
    """``data`` cut into slices of ``size`` bytes (the last one shorter), like socket reads."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def split_per_chunk(format_name: str, data: bytes) -> list[bytes]:
    """``data`` cut into one piece per provider chunk, as a paced upstream delivers it.

    SSE: each event with its blank line; JSON array: each element with the separator before
    it (the closing ``]`` stays with the last element, as the mock writes it); NDJSON: each
    line with its LF. Concatenating the pieces gives ``data`` back.
    """
    framing = _FRAMING[format_name]
    if framing == "ndjson":
        pieces = data.splitlines(keepends=True)
    elif framing == "array":
        cuts = [m.start() for m in _ARRAY_SEPARATOR.finditer(data)]
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    else:
        pieces = [m.group() for m in _SSE_EVENT.finditer(data)]
        rest = len(b"".join(pieces))
        if rest < len(data):
            pieces.append(data[rest:])
    assert b"".join(pieces) == data
    return [piece for piece in pieces if piece]


# Correctness check (not timed).


def _framing_items(format_name: str, pieces: list[bytes]) -> int:
    """The items protocol/framing.py finds in the pieces (SSE events, elements or lines)."""
    framing = _FRAMING[format_name]
    decoder: Any = SSEDecoder() if framing == "sse" else JSONArrayDecoder() if framing == "array" else NDJSONDecoder()
    items = [item for piece in pieces for item in decoder.feed(piece)] + decoder.close()
    return len(items)


def check_body(body: Body, pieces: list[bytes], expected: str) -> tuple[str | None, int]:
    """Parse the pieces once through the hub's normalizer and check the result.

    Args:
        body: the body and its normalizer factory.
        pieces: the body cut into reads (they must join back into ``body.data``).
        expected: the answer text the mock sent.

    Returns:
        ``(problem, events)``: None when the framing found ``body.provider_chunks`` items, the
        text deltas join into ``expected`` and the stream ended with ``StreamEnd(stop)``, else
        a description of the first problem; and the number of events produced per body.
    """
    if b"".join(pieces) != body.data:
        return "the pieces do not join back into the body", 0
    items = _framing_items(body.format, pieces)
    if items != body.provider_chunks:
        return f"the framing found {items} items, {body.provider_chunks} provider chunks counted", 0
    normalizer = body.make_normalizer()
    events = [event for piece in pieces for event in normalizer.feed(piece)] + normalizer.close()
    failed = [event for event in events if isinstance(event, StreamFailed)]
    if failed:
        return f"{failed[0].code}: {failed[0].message}", len(events)
    if not events or not isinstance(events[-1], StreamEnd) or events[-1].finish_reason != "stop":
        return f"the last event is {events[-1] if events else None!r}, not StreamEnd(stop)", len(events)
    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    if text != expected:
        return f"text differs from the mock's ({len(text)} chars, {len(expected)} expected)", len(events)
    return None, len(events)


# Timing.


def measure_ingest(make_normalizer: Callable[[], Normalizer], pieces: list[bytes], seconds: float,
                   body_bytes: int, provider_chunks: int, events_per_body: int) -> dict[str, Any]:
    """Feed ``pieces`` through a new normalizer per pass until ``seconds`` of wall time passed.

    Args:
        make_normalizer: the hub's normalizer factory for the format.
        pieces: the body cut into reads.
        seconds: minimum wall time, in seconds (at least one pass is made).
        body_bytes: bytes in one body.
        provider_chunks: provider chunks in one body.
        events_per_body: the events one pass must produce (from :func:`check_body`).

    Returns:
        Row fields: ``passes``, ``wall_s``, ``cpu_s`` (seconds), ``bytes_per_s``,
        ``chunks_per_s`` (per second of wall time), ``us_per_chunk`` (microseconds of wall
        time), ``chunks_per_cpu_s`` (per second of CPU time), ``cpu_wall_ratio``, and
        ``events_total_ok`` (every pass produced ``events_per_body`` events).
    """
    passes = 0
    events = 0
    perf_counter = time.perf_counter
    wall0, cpu0 = perf_counter(), time.process_time()
    deadline = wall0 + seconds
    while True:
        normalizer = make_normalizer()
        feed = normalizer.feed
        for piece in pieces:
            events += len(feed(piece))
        events += len(normalizer.close())
        passes += 1
        if perf_counter() >= deadline:
            break
    wall, cpu = perf_counter() - wall0, time.process_time() - cpu0
    chunks = provider_chunks * passes
    return {
        "passes": passes,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "bytes_per_s": body_bytes * passes / wall,
        "chunks_per_s": chunks / wall,
        "us_per_chunk": wall * 1e6 / chunks,
        "chunks_per_cpu_s": chunks / cpu if cpu > 0 else None,
        "cpu_wall_ratio": round(cpu / wall, 3),
        "events_total_ok": events == events_per_body * passes,
    }


_COMPLETION_ID = "comp-1a2b3c4d-17"
_SEQ = 17
_TOKEN = "the "

# name -> (timeit statement, builds the message object in the timed statement)
_ENCODERS = {
    "hub encode (msgspec)": ("encode(message)", False),
    "msgspec Encoder.encode": ("encoder_encode(message)", False),
    "msgspec.json.encode": ("msgspec_encode(message)", False),
    "orjson.dumps(dict)": ("orjson_dumps(as_dict)", False),
    "Struct + hub encode": (
        "encode(ContentChunk(completion_id=cid, seq=seq, content=token))", True),
    "dict + orjson.dumps": (
        "orjson_dumps({'type': 'content_chunk', 'completionId': cid, 'seq': seq, 'content': token})", True),
}


def measure_encoders(seconds: float, advance: Callable[..., Any] = lambda amount=1: None) -> Iterator[dict[str, Any]]:
    """Time the encoding of one typical ``content_chunk`` frame by each encoder.

    Args:
        seconds: minimum wall time per encoder, in seconds.
        advance: progress callback, called once per encoder.

    Yields:
        One ``encode`` row per encoder, as soon as it is measured: ``ns_per_event`` (mean,
        nanoseconds per call), ``ns_per_event_best`` (best batch), ``calls``, ``event_bytes``,
        ``cpu_wall_ratio`` (CPU time / wall time; below 1 when the machine was busy),
        ``identical_bytes`` and ``equivalent_json`` (compared with the hub's ``encode`` of the
        same message).
    """
    message = ContentChunk(completion_id=_COMPLETION_ID, seq=_SEQ, content=_TOKEN)
    as_dict = {"type": "content_chunk", "completionId": _COMPLETION_ID, "seq": _SEQ, "content": _TOKEN}
    namespace = {
        "encode": encode,
        "encoder_encode": msgspec.json.Encoder().encode,
        "msgspec_encode": msgspec.json.encode,
        "orjson_dumps": orjson.dumps,
        "ContentChunk": ContentChunk,
        "message": message,
        "as_dict": as_dict,
        "cid": _COMPLETION_ID,
        "seq": _SEQ,
        "token": _TOKEN,
    }
    reference = encode(message)
    for name, (statement, builds) in _ENCODERS.items():
        output = eval(statement, dict(namespace))  # our own constant statements
        timer = timeit.Timer(statement, globals=dict(namespace))
        # Calls per batch: batches of about a tenth of `seconds` (at most 50 ms), so that
        # there are many batches and a meaningful best one.
        probe = 1000
        number = max(100, int(probe * min(0.05, seconds / 10) / max(timer.timeit(probe), 1e-9)))
        batches: list[float] = []
        started, cpu_started = time.perf_counter(), time.process_time()
        while not batches or time.perf_counter() - started < seconds:
            batches.append(timer.timeit(number))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        calls = number * len(batches)
        advance(1)
        yield {
            "scenario": "encode",
            "encoder": name,
            "builds_message": builds,
            "event_bytes": len(output),
            "ns_per_event": sum(batches) * 1e9 / calls,
            "ns_per_event_best": min(batches) * 1e9 / number,
            "calls": calls,
            "cpu_wall_ratio": round(cpu / wall, 3),
            "identical_bytes": output == reference,
            "equivalent_json": json.loads(output) == json.loads(reference),
        }
