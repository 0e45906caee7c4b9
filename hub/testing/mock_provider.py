"""A mock LLM provider that speaks the four wire formats the hub reads, on one port.

Tests, the demo and benchmarks point the hub at this server instead of a real provider. Every
byte is written here, following docs/PROVIDERS.md (§1 OpenAI, §2 Anthropic, §3 Gemini,
§4 Ollama, §6 error bodies, §9 byte excerpts).

Endpoints
---------
Provider endpoints (counted in ``/_mock/stats`` and logged in ``/_mock/requests``):

``POST /v1/chat/completions``
    OpenAI Chat Completions. ``"stream": true`` answers ``text/event-stream``: ``data: {chunk}``
    events; the first chunk's delta is ``{"role":"assistant","content":""}``, then one chunk per
    token (``delta.content``; reasoning in ``delta.reasoning_content``), tool-call argument
    fragments keyed by ``index`` (id and name on the first), a finish chunk (``delta: {}``,
    ``finish_reason`` ``stop`` or ``tool_calls``), a usage chunk with ``"choices": []`` when
    ``stream_options.include_usage`` is true, then ``data: [DONE]``. Otherwise one
    ``chat.completion`` JSON object. With ``n`` above 1 every choice is streamed, interleaved:
    each step writes one chunk per choice (``index`` 0 to n-1); choice 0 is the answer above,
    choice k writes :func:`expected_choice_text` (text only), and each choice ends with its own
    finish chunk (OpenAI API reference, "Create chat completion" ``n``).
``POST /v1/responses``
    OpenAI Responses API. ``"stream": true`` answers named events (``event:`` equal to the
    JSON ``type``): ``response.created``, ``response.in_progress``, a ``reasoning`` item
    (``reasoning_summary_text.delta``), a ``message`` item (``output_text.delta``), a
    ``function_call`` item (``function_call_arguments.delta``), each opened by
    ``output_item.added`` and closed by its ``.done`` events, then ``response.completed`` with
    the output and usage; no ``[DONE]``. Otherwise one Response object.
``GET /v1/models``
    OpenAI model list (one model, ``mock-model``).
``POST /v1/messages``
    Anthropic Messages. ``"stream": true`` answers ``event: <type>`` / ``data: {json}`` events:
    ``message_start``, per block ``content_block_start`` / ``content_block_delta`` /
    ``content_block_stop`` (a ``ping`` after the first block start), ``message_delta``
    (``stop_reason``, cumulative ``usage``), ``message_stop``. Otherwise one ``message`` object.
``POST /v1beta/models/{model}:streamGenerateContent``
    Gemini. With ``?alt=sse``: ``data: {GenerateContentResponse}`` events ended by CRLF CRLF.
    Without it: one JSON array flushed element by element, ``[{…}\\n,\\r\\n{…}\\n]``, each
    element pretty-printed. ``usageMetadata`` is cumulative on every chunk; the last chunk has
    an empty text part and ``finishReason: "STOP"``.
``POST /v1beta/models/{model}:generateContent``
    Gemini, not streamed: one ``GenerateContentResponse``.
``POST /api/chat``
    Ollama, ``application/x-ndjson``: one line per token (``message.content``; reasoning in
    ``message.thinking``), a ``done: true`` line with ``done_reason``, ``prompt_eval_count``,
    ``eval_count`` and durations in nanoseconds. ``"stream": false`` answers one object
    (streaming is Ollama's default).

Observability endpoints (not counted, not logged):

``GET /_mock/stats``
    ``{"requests": n, "completed": n, "disconnected": n, "active": n}``. ``requests`` counts
    provider requests since the last reset; each ends as ``completed`` (the mock wrote all it
    meant to, including error answers and deliberate truncations) or ``disconnected`` (the
    client closed the connection first); ``active`` are in flight now. Requests that started
    before a reset are not counted when they end.
``GET /_mock/requests``
    The last 100 provider requests, oldest first:
    ``[{"method", "path", "query": {...}, "headers": {lower-case name: value}, "body": <JSON,
    or the raw text when the body is not JSON, or null when empty>}]``.
``POST /_mock/reset``
    Clears the statistics and the request log, and closes every gate.
``POST /_mock/release?gate=NAME``
    Opens gate NAME: requests waiting at it (``gate=NAME`` directive) start streaming, and
    later ones pass at once until the next reset. Answers ``{"gate": NAME, "released": n}``
    with the number of requests that were waiting.
``GET /_mock/gates``
    ``{NAME: waiting requests}`` for every gate that is still closed.

Request checks and structured output
------------------------------------
The OpenAI, Anthropic, Gemini and Ollama endpoints check a request as the real API would and
answer HTTP 400 in the provider's error shape to what it would refuse (:func:`_check_request`):
top-level fields the API does not know (Ollama ignores them, as Ollama does), Gemini
``generationConfig`` fields and ``responseSchema`` or function ``parameters`` keywords outside
its ``Schema`` subset,
malformed image blocks (Anthropic ``image`` sources, Gemini ``inlineData``/``fileData``,
Ollama ``images``; base64 data must decode). A request that asks for structured output in its
provider's terms (OpenAI ``response_format``, Anthropic ``output_config.format``, Gemini
``responseMimeType``/``responseSchema``, Ollama ``format``) is answered, streamed, with the
JSON text of :func:`example_for_schema` for its schema (``{"mock": "json"}`` without one),
8 characters a token, instead of words. ``GET /_mock/requests`` shows what was received.

Directive grammar
-----------------
Behaviour per request is set by a directive anywhere in the raw request body, normally in a
message text (the hub forwards messages unchanged, so this works through it)::

    directive := "[[mock" ( WS key "=" value )* WS? "]]"
    value     := one or more characters other than whitespace and "]"

When several directives appear, their keys are merged in body order, later ones winning. An
unknown key or a bad value is answered with HTTP 400 in the provider's error shape. Keys, all
optional (defaults from the server's options):

``tokens=N``          answer length in tokens (default: server option, 20). One token is one
                      word plus a space, see :func:`expected_text`.
``tps=X``             tokens per second; 0 (default) = as fast as possible.
``ttft_ms=X``         delay before the first token, in ms (default 0).
``reasoning=N``       N reasoning tokens (:func:`expected_reasoning`) before the answer, in the
                      provider's reasoning format: OpenAI ``delta.reasoning_content``; Anthropic
                      a ``thinking`` block with ``thinking_delta`` then a ``signature_delta``;
                      Gemini ``thought: true`` parts, then a ``thoughtSignature`` (on the
                      functionCall part with ``tool``, else on the final empty text part);
                      Ollama ``message.thinking``.
``tool=NAME``         (ignored once the request carries a tool's result, as a model then answers)
                      end with one call to tool NAME with arguments ``{"city": "Paris"}``:
                      OpenAI argument fragments over several chunks (``finish_reason``
                      ``tool_calls``); Anthropic a ``tool_use`` block with ``input_json_delta``
                      fragments (``stop_reason`` ``tool_use``); Gemini a ``functionCall`` part;
                      Ollama ``message.tool_calls``. Tool call ids are derived from ``seed``.
``status=CODE``       answer HTTP CODE (400-599) at once with the provider's error body
                      (docs/PROVIDERS.md §6). With ``replay``, the file is the body instead.
``retry_after=S``     with ``status``: add a ``retry-after: S`` header (seconds).
``retry_after_ms=X``  with ``status``: add a ``retry-after-ms: X`` header (milliseconds, as
                      OpenAI's and Anthropic's APIs send).
``script=S1,S2,...``  per-request scripted faults: the k-th request carrying the same script
                      (and ``script_id``) does step k; after the last step, ``ok``. Steps:
                      ``ok`` (answer as the rest of the directive says), an HTTP status
                      400-599 (the provider's error body, with ``retry_after``/``retry_after_ms``
                      headers when given), ``drop`` (close the connection without answering),
                      ``stall`` (answer nothing until the client gives up), ``garbage`` (HTTP
                      200 with ``text/html`` and an HTML body instead of a stream). Lets a test
                      see a hub retry: ``[[mock script=503,429,ok]]``. ``GET /_mock/scripts``
                      shows the counters; ``POST /_mock/reset`` clears them.
``script_id=NAME``    separates the counters of requests that share a script text.
``pad=N``             every answer token is its word, N dots, then the space (default 0): large
                      answers from few tokens, e.g. ``tokens=50 pad=65536`` streams 3.2 MB in 50
                      chunks. :func:`expected_text` takes the same ``pad``.
``error_after=N``     after N tokens (reasoning and answer tokens, in the order sent), an in-band
                      error: OpenAI a chunk with a top-level ``error`` (then ``[DONE]``, as
                      OpenRouter does); Anthropic ``event: error`` ``overloaded_error``; Gemini an
                      unframed pretty-printed ``{"error": …}`` (SSE) or an ``{"error": …}`` array
                      element; Ollama an ``{"error": "…"}`` line. Not streamed: after the time N
                      tokens take, an HTTP error (500; Anthropic 529; Gemini 503).
``truncate_after=N``  after N tokens close the connection without the terminal marker (and
                      without the end of the chunked body). With ``replay``: after N pieces.
                      Not streamed: close without answering. N larger than the stream's token
                      count means "after the last token" (for ``error_after`` too).
``replay=FILE``       write FILE byte for byte instead of generating: FILE is relative to the
                      server's replay directory (or the working directory when there is none)
                      or absolute. The bytes are split into pieces of 1-64 bytes at random
                      boundaries (seeded by ``seed``), paced by ``tps`` (one piece per token)
                      after ``ttft_ms``. The content type is the endpoint's (``application/json``
                      with ``status``).
``seed=N``            seed of the generated words, tool ids, signatures and replay pieces
                      (default 0).
``stamp=1``           every answer token is ``@<ns> `` instead of a word, where ``<ns>`` is
                      ``time.monotonic_ns()`` (Linux: CLOCK_MONOTONIC, one clock for every
                      process of the machine) read just before the chunk is written. A client
                      of the hub subtracts it from its own receive time: the latency the hub
                      adds, measured end to end (``cbhub bench``). :data:`STAMP_PATTERN` finds
                      the stamps in coalesced text.
``burst=N``           streamed answers: write N tokens per write (one pacing step per write,
                      so ``tps`` counts writes of N tokens); default 1. A fast provider's
                      chunks often share a TCP segment; this makes the hub read several
                      chunks per read, as it then does.
``gate=NAME``         streamed answers: send the status line and headers, then wait until
                      ``POST /_mock/release?gate=NAME``; the pace (``ttft_ms``, ``tps``) counts
                      from the release. Lets a benchmark start many streams at one instant.

Example, in an OpenAI message: ``"Hello [[mock tokens=5 tps=50 tool=get_weather]]"``.

Usage reported by every format: prompt tokens = the number of whitespace-separated words in the
request's message texts (OpenAI ``messages``; Anthropic ``system`` and ``messages``; Gemini
``systemInstruction`` and ``contents``; Ollama ``messages``), directive included; completion
tokens = ``tokens`` + ``reasoning``; total = the sum.

Use it in-process::

    async with MockProvider(tokens=20) as mock:
        url = mock.url + "/v1/chat/completions"
        ...
        assert mock.stats["completed"] == 1

or as a program: ``cbhub mock-provider --port 9100`` (see :func:`main`). A hub points all its
providers at it with ``HubConfig(**mock.hub_overrides())`` (or the variables of
:meth:`MockProvider.hub_environment`), read from the provider registry.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import dataclasses
import functools
import hashlib
import json
import math
import pathlib
import random
import re
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
from aiohttp import web

from protocol.providers import PROVIDERS

__all__ = [
    "WORDS",
    "TOOL_ARGUMENTS",
    "Directive",
    "DirectiveError",
    "MockProvider",
    "build_parser",
    "example_for_schema",
    "expected_choice_text",
    "expected_reasoning",
    "expected_text",
    "main",
]

# Generated text. A few words carry what a hub must pass through untouched: multi-byte UTF-8,
# characters JSON escapes, and U+2028, which str.splitlines() would split (docs/PROVIDERS.md §10.10).
WORDS: tuple[str, ...] = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "stream", "token",
    "hub", "circuit", "breaker", "river", "signal", "packet", "window", "buffer", "latency",
    "answer", "model", "prompt", "cloud", "Paris", "light", "north", "echo", "delta", "orbit",
    "pixel", "ember", "harbor", "meadow", "quartz", "velvet", "cobalt", "lantern", "summit",
    "tundra", "willow", "zephyr", "anchor", "beacon", "cipher", "drift", "falcon", "glacier",
    "horizon", "island", "kernel", "lotus", "marble", "nectar", "opal", "prism",
    "café", "naïve", "Zürich", "東京", "🙂", "“curly”", '"quoted"', "back\\slash",
    "line\u2028sep",
)  # fmt: skip

TOOL_ARGUMENTS: dict[str, Any] = {"city": "Paris"}
"""The arguments of the tool call that the ``tool`` directive produces."""

_TOOL_ARGUMENTS_JSON = json.dumps(TOOL_ARGUMENTS)  # '{"city": "Paris"}'
_TOOL_FRAGMENT_CHARS = 5  # OpenAI / Anthropic argument fragments: '{"cit', 'y": "', ...
_REPLAY_PIECE_MAX = 64
_LOG_SIZE = 100
_MODELS = ("mock-model",)


def _words(kind: str, count: int, seed: int, pad: int = 0) -> list[str]:
    rng = random.Random(f"{kind}:{seed}")  # str seeds hash with SHA-512: stable across runs
    tail = "." * pad + " "
    return [rng.choice(WORDS) + tail for _ in range(count)]


def expected_text(tokens: int, seed: int = 0, pad: int = 0) -> str:
    """The answer text the mock streams for ``tokens=tokens seed=seed pad=pad``.

    Args:
        tokens: number of tokens; each token is one word from :data:`WORDS`, ``pad`` dots,
            then one space.
        seed: the directive's ``seed``.
        pad: the directive's ``pad``.

    Returns:
        The concatenation of all content deltas, e.g. ``"harbor café quick "`` for 3 tokens.
    """
    return "".join(_words("text", tokens, seed, pad))


def expected_choice_text(choice: int, tokens: int, seed: int = 0, pad: int = 0) -> str:
    """The text the mock streams for choice ``choice`` of an OpenAI request with ``n`` above 1:
    :func:`expected_text` for choice 0, another word sequence of the same shape for each other
    choice (``tokens`` words, one per step of choice 0's answer)."""
    return "".join(_choice_words(choice, tokens, seed, pad))


def _choice_words(choice: int, count: int, seed: int, pad: int = 0) -> list[str]:
    return _words("text" if choice == 0 else f"text.{choice}", count, seed, pad)


def expected_reasoning(tokens: int, seed: int = 0) -> str:
    """The reasoning text the mock streams for ``reasoning=tokens seed=seed``.

    Same shape as :func:`expected_text` (a word and a space per token), a different sequence.
    """
    return "".join(_words("reasoning", tokens, seed))


def _signature(seed: int) -> str:
    """An opaque base64 reasoning signature (Anthropic ``signature_delta``, Gemini
    ``thoughtSignature``), stable per seed."""
    return base64.b64encode(hashlib.sha256(f"mock-signature:{seed}".encode()).digest() * 4).decode()


def _tool_id(seed: int) -> str:
    return hashlib.sha256(f"mock-tool:{seed}".encode()).hexdigest()[:24]


def _fragments(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# Directives.


class DirectiveError(ValueError):
    """A ``[[mock …]]`` directive with an unknown key or an invalid value."""


_SCRIPT_WORDS = ("ok", "drop", "stall", "garbage")


def _script_steps(value: str) -> tuple[str, ...]:
    steps = tuple(step.strip() for step in value.split(",") if step.strip())
    for step in steps:
        if step not in _SCRIPT_WORDS and not (step.isdigit() and 400 <= int(step) <= 599):
            raise ValueError(f"script step {step!r} is not one of {', '.join(_SCRIPT_WORDS)} or 400-599")
    return steps


_DIRECTIVE = re.compile(r"\[\[mock(?=[\s\]])([^\]]*)\]\]")


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError("must be a finite number >= 0")
    return number


def _error_status(value: str) -> int:
    number = int(value)
    if not 400 <= number <= 599:
        raise ValueError("must be an HTTP error status, 400-599")
    return number


_DIRECTIVE_KEYS: dict[str, Callable[[str], Any]] = {
    "tokens": _non_negative_int,
    "tps": _non_negative_float,
    "ttft_ms": _non_negative_float,
    "reasoning": _non_negative_int,
    "tool": str,
    "status": _error_status,
    "retry_after": _non_negative_float,
    "error_after": _non_negative_int,
    "truncate_after": _non_negative_int,
    "replay": lambda value: value.replace("\\/", "/"),  # some JSON encoders escape "/"
    "seed": int,
    "stamp": lambda value: bool(int(value)),
    "gate": str,
    "burst": lambda value: max(1, int(value)),
    "retry_after_ms": _non_negative_float,
    "script": lambda value: _script_steps(value),
    "script_id": str,
    "pad": _non_negative_int,
}

STAMP_PATTERN = re.compile(r"@(\d+) ")
"""Finds the ``stamp=1`` send times (group 1, ``time.monotonic_ns()``) in received text."""


@dataclasses.dataclass(frozen=True)
class Directive:
    """What one request asks the mock to do (see the module docstring for each key).

    Attributes:
        tokens: answer tokens.
        tps: tokens per second; 0 means as fast as possible.
        ttft_ms: delay before the first token, in milliseconds.
        reasoning: reasoning tokens sent before the answer.
        tool: name of the tool to call at the end, or None.
        status: HTTP error status to answer at once, or None.
        retry_after: ``retry-after`` header value in seconds for ``status`` answers, or None.
        error_after: tokens before an in-band error, or None.
        truncate_after: tokens before the connection is closed, or None.
        replay: file whose bytes to send instead of generating, or None.
        seed: seed of words, ids, signatures and replay pieces.
        stamp: answer tokens carry their send time instead of words.
        gate: name of the gate a streamed answer waits at, or None.
        burst: tokens per write of a streamed answer.
        retry_after_ms: ``retry-after-ms`` header value for ``status`` answers, or None.
        script: scripted steps per request (see the module docstring), or None.
        script_id: name separating script counters, or None.
        pad: dots after each answer word (large answers from few tokens: memory tests).
    """

    tokens: int = 20
    tps: float = 0.0
    ttft_ms: float = 0.0
    reasoning: int = 0
    tool: str | None = None
    status: int | None = None
    retry_after: float | None = None
    error_after: int | None = None
    truncate_after: int | None = None
    replay: str | None = None
    seed: int = 0
    stamp: bool = False
    gate: str | None = None
    burst: int = 1
    retry_after_ms: float | None = None
    script: tuple[str, ...] | None = None
    script_id: str | None = None
    pad: int = 0

    @classmethod
    def parse(cls, body: bytes | str, defaults: Directive | None = None) -> Directive:
        """Find the ``[[mock …]]`` directives in a raw request body.

        Args:
            body: the raw request body (searched as text; it is not parsed as JSON).
            defaults: values for keys no directive sets (the server's options).

        Raises:
            DirectiveError: an unknown key, a missing ``=``, or a value of the wrong kind.
        """
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        values: dict[str, Any] = {}
        for match in _DIRECTIVE.finditer(text):
            for item in match.group(1).split():
                key, eq, raw = item.partition("=")
                if not eq or key not in _DIRECTIVE_KEYS:
                    raise DirectiveError(
                        f"bad mock directive item {item!r}; keys: {', '.join(_DIRECTIVE_KEYS)}"
                    )
                try:
                    values[key] = _DIRECTIVE_KEYS[key](raw)
                except ValueError as exc:
                    raise DirectiveError(f"bad value in mock directive {item!r}: {exc}") from None
        return dataclasses.replace(defaults or cls(), **values)

    def cut(self) -> tuple[str, int] | None:
        """The earlier of ``error_after`` and ``truncate_after``: ``("error"|"truncate", N)``,
        N clamped to the tokens this directive generates."""
        cuts = [
            (n, kind)
            for kind, n in (("error", self.error_after), ("truncate", self.truncate_after))
            if n is not None
        ]
        if not cuts:
            return None
        n, kind = min(cuts)
        return kind, min(n, self.reasoning + self.tokens)


# Request inspection.


def _count_words(value: Any) -> int:
    """Whitespace-separated words in a message text: a string, a list of parts with ``text``
    (OpenAI, Anthropic, Gemini parts) or an object with ``parts`` (Gemini content)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(item) for item in value)
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            return len(value["text"].split())
        if "parts" in value:
            return _count_words(value["parts"])
    return 0


def _prompt_tokens(body: dict[str, Any], roots: tuple[str, ...]) -> int:
    """Words in the message texts under the request body's ``roots`` keys."""
    total = 0
    for root in roots:
        value = body.get(root)
        if root in ("messages", "input") and isinstance(value, list):
            value = [message.get("content") for message in value if isinstance(message, dict)]
        total += _count_words(value)
    return total


@dataclasses.dataclass
class _Context:
    """Everything a format needs to write one response."""

    directive: Directive
    model: str
    prompt_tokens: int
    stream: bool = True
    include_usage: bool = False  # OpenAI stream_options.include_usage
    sse: bool = True  # Gemini: alt=sse, else the JSON array
    answer: str | None = None  # structured output: this JSON text instead of words (_check_request)
    choices: int = 1  # OpenAI `n`: the choices streamed, interleaved
    started_ns: int = dataclasses.field(default_factory=time.monotonic_ns)



# Wire formats. One instance writes one response; methods are called in stream order.


class _Format:
    """Bytes of one provider's response. Subclasses write the wire format.

    Stream order: :meth:`head`, :meth:`reasoning` per reasoning token, :meth:`reasoning_done`,
    :meth:`text` per answer token, :meth:`tool` pieces, then :meth:`finish` (or :meth:`error`
    instead, at a cut).
    """

    roots: tuple[str, ...] = ("messages",)
    stream_type = "text/event-stream"
    json_type = "application/json"
    midstream_status = 500  # the HTTP status of error_after when not streamed

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        self.content_type = self.stream_type if ctx.stream else self.json_type
        self.reasoning_sent = 0
        self.text_sent = 0
        self.first_token_ns: int | None = None

    def _count(self, reasoning: bool) -> None:
        if self.first_token_ns is None:
            self.first_token_ns = time.monotonic_ns()
        if reasoning:
            self.reasoning_sent += 1
        else:
            self.text_sent += 1

    @property
    def output_tokens(self) -> int:
        """Reasoning and answer tokens written so far (the completion tokens of usage)."""
        return self.reasoning_sent + self.text_sent

    def head(self) -> bytes:
        return b""

    def reasoning(self, word: str) -> bytes:
        raise NotImplementedError

    def reasoning_done(self) -> bytes:
        return b""

    def text(self, word: str) -> bytes:
        raise NotImplementedError

    def tool(self, name: str) -> list[bytes]:
        raise NotImplementedError

    def finish(self) -> bytes:
        raise NotImplementedError

    def error(self) -> bytes:
        raise NotImplementedError

    def complete(self) -> bytes:
        """The whole answer as one non-streamed JSON body (the caller has set the token
        counters to the full answer)."""
        raise NotImplementedError

    @classmethod
    def error_body(cls, status: int, message: str) -> bytes:
        """The provider's HTTP error body for ``status`` (docs/PROVIDERS.md §6)."""
        raise NotImplementedError

    def _error_message(self) -> str:
        return f"mock error after {self.output_tokens} tokens"


class _OpenAI(_Format):
    """OpenAI Chat Completions (docs/PROVIDERS.md §1)."""

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.id = "chatcmpl-mock" + uuid.uuid4().hex[:20]
        self.created = int(time.time())
        self.tool_name: str | None = None
        d = ctx.directive
        # n > 1: the words of choices 1..n-1, one per answer step of choice 0.
        self.other_words = [_choice_words(k, d.tokens, d.seed, d.pad) for k in range(1, ctx.choices)]
        self.other_sent = 0  # tokens written for choices above 0 (usage counts every choice)

    def _chunk(self, choices: list[Any], **extra: Any) -> bytes:
        obj = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.ctx.model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
            **extra,
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self._chunk(
            [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        )

    def _others(self, make: Callable[[int], dict[str, Any]], finish_reason: str | None = None) -> bytes:
        """One chunk per choice above 0 (n > 1), its delta from ``make(choice)``."""
        return b"".join(
            self._chunk([{"index": k, "delta": make(k), "logprobs": None, "finish_reason": finish_reason}])
            for k in range(1, self.ctx.choices))

    def _usage(self) -> dict[str, Any]:
        prompt, completion = self.ctx.prompt_tokens, self.output_tokens + self.other_sent
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_sent},
        }

    def head(self) -> bytes:
        role = {"role": "assistant", "content": ""}
        return self._delta(role) + self._others(lambda k: role)

    def reasoning(self, word: str) -> bytes:
        self._count(True)
        return self._delta({"reasoning_content": word})

    def text(self, word: str) -> bytes:
        step = self.text_sent
        self._count(False)
        out = self._delta({"content": word})
        if self.other_words:
            words = [other[step] if step < len(other) else word for other in self.other_words]
            self.other_sent += len(words)
            out += self._others(lambda k: {"content": words[k - 1]})
        return out

    def tool(self, name: str) -> list[bytes]:
        self.tool_name = name
        first = {
            "index": 0,
            "id": "call_" + _tool_id(self.ctx.directive.seed),
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        pieces = [self._delta({"tool_calls": [first]})]
        for fragment in _fragments(_TOOL_ARGUMENTS_JSON, _TOOL_FRAGMENT_CHARS):
            call = {"index": 0, "function": {"arguments": fragment}}
            pieces.append(self._delta({"tool_calls": [call]}))
        return pieces

    def finish(self) -> bytes:
        out = self._delta({}, "tool_calls" if self.tool_name else "stop") + self._others(lambda k: {}, "stop")
        if self.ctx.include_usage:
            out += self._chunk([], usage=self._usage())
        return out + b"data: [DONE]\n\n"

    def error(self) -> bytes:
        # OpenRouter's recorded shape: an error object next to normal chunk fields, then
        # [DONE] (docs/PROVIDERS.md §1.5). An integer code gives the hub an HTTP-like status.
        error = {"message": self._error_message(), "type": "server_error", "param": None, "code": 500}
        return self._chunk([], error=error) + b"data: [DONE]\n\n"

    def complete(self) -> bytes:
        d = self.ctx.directive
        self.other_sent = sum(len(words) for words in self.other_words)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": expected_text(d.tokens, d.seed, d.pad) if d.tokens or not d.tool else None,
            "refusal": None,
        }
        if d.reasoning:
            message["reasoning_content"] = expected_reasoning(d.reasoning, d.seed)
        if d.tool:
            message["tool_calls"] = [
                {
                    "id": "call_" + _tool_id(d.seed),
                    "type": "function",
                    "function": {"name": d.tool, "arguments": _TOOL_ARGUMENTS_JSON},
                }
            ]
        obj = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.ctx.model,
            "system_fingerprint": "fp_mock",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if d.tool else "stop",
                }
            ] + [
                {
                    "index": k,
                    "message": {"role": "assistant", "content": "".join(words), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                for k, words in enumerate(self.other_words, 1)
            ],
            "usage": self._usage(),
        }
        return orjson.dumps(obj)

    _ERRORS = {
        401: ("invalid_request_error", "invalid_api_key"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }

    @classmethod
    def error_body(cls, status: int, message: str) -> bytes:
        default = ("invalid_request_error", None) if status < 500 else ("server_error", None)
        kind, code = cls._ERRORS.get(status, default)
        return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


class _Anthropic(_Format):
    """Anthropic Messages (docs/PROVIDERS.md §2)."""

    roots = ("system", "messages")
    stream_type = "text/event-stream; charset=utf-8"
    midstream_status = 529

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.id = "msg_mock" + uuid.uuid4().hex[:20]
        self.index = -1
        self.block: str | None = None  # type of the open content block
        self.pinged = False
        self.stop_reason = "end_turn"

    @staticmethod
    def _event(obj: dict[str, Any]) -> bytes:
        kind: str = obj["type"]
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

    def _open(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.block = block["type"]
        out += self._event({"type": "content_block_start", "index": self.index, "content_block": block})
        if not self.pinged:
            self.pinged = True
            out += b'event: ping\ndata: {"type": "ping"}\n\n'
        return out

    def _close(self) -> bytes:
        if self.block is None:
            return b""
        self.block = None
        return self._event({"type": "content_block_stop", "index": self.index})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._event({"type": "content_block_delta", "index": self.index, "delta": delta})

    def head(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.ctx.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.ctx.prompt_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
            },
        }
        return self._event({"type": "message_start", "message": message})

    def reasoning(self, word: str) -> bytes:
        self._count(True)
        out = b""
        if self.block != "thinking":
            out = self._open({"type": "thinking", "thinking": "", "signature": ""})
        return out + self._delta({"type": "thinking_delta", "thinking": word})

    def reasoning_done(self) -> bytes:
        signature = {"type": "signature_delta", "signature": _signature(self.ctx.directive.seed)}
        return self._delta(signature) + self._close()

    def text(self, word: str) -> bytes:
        self._count(False)
        out = b"" if self.block == "text" else self._open({"type": "text", "text": ""})
        return out + self._delta({"type": "text_delta", "text": word})

    def tool(self, name: str) -> list[bytes]:
        self.stop_reason = "tool_use"
        block = {"type": "tool_use", "id": "toolu_" + _tool_id(self.ctx.directive.seed), "name": name, "input": {}}
        pieces = [self._open(block) + self._delta({"type": "input_json_delta", "partial_json": ""})]
        for fragment in _fragments(_TOOL_ARGUMENTS_JSON, _TOOL_FRAGMENT_CHARS):
            pieces.append(self._delta({"type": "input_json_delta", "partial_json": fragment}))
        return pieces

    def finish(self) -> bytes:
        usage = {"input_tokens": self.ctx.prompt_tokens, "output_tokens": self.output_tokens}
        delta = {"stop_reason": self.stop_reason, "stop_sequence": None}
        return (
            self._close()
            + self._event({"type": "message_delta", "delta": delta, "usage": usage})
            + self._event({"type": "message_stop"})
        )

    def error(self) -> bytes:
        # docs/PROVIDERS.md §2.7: the stream then ends, with no message_stop.
        return self._event({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})

    def complete(self) -> bytes:
        d = self.ctx.directive
        content: list[dict[str, Any]] = []
        if d.reasoning:
            content.append(
                {
                    "type": "thinking",
                    "thinking": expected_reasoning(d.reasoning, d.seed),
                    "signature": _signature(d.seed),
                }
            )
        if d.tokens:
            content.append({"type": "text", "text": expected_text(d.tokens, d.seed, d.pad)})
        if d.tool:
            tool_id = "toolu_" + _tool_id(d.seed)
            content.append({"type": "tool_use", "id": tool_id, "name": d.tool, "input": TOOL_ARGUMENTS})
        obj = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.ctx.model,
            "content": content,
            "stop_reason": "tool_use" if d.tool else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.ctx.prompt_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": self.output_tokens,
            },
        }
        return orjson.dumps(obj)

    _ERRORS = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        409: "conflict_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        504: "timeout_error",
        529: "overloaded_error",
    }

    @classmethod
    def error_body(cls, status: int, message: str) -> bytes:
        kind = cls._ERRORS.get(status, "invalid_request_error" if status < 500 else "api_error")
        request_id = "req_mock" + uuid.uuid4().hex[:20]
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id})


class _Gemini(_Format):
    """Gemini ``streamGenerateContent`` / ``generateContent`` (docs/PROVIDERS.md §3)."""

    roots = ("systemInstruction", "contents")
    json_type = "application/json; charset=UTF-8"
    midstream_status = 503

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        if not ctx.sse:
            self.content_type = self.json_type  # the JSON array (docs/PROVIDERS.md §3.1)
        self.response_id = uuid.uuid4().hex[:23]
        self.elements = 0  # array elements written (JSON array framing)
        self.signature_pending = False

    def _usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": self.ctx.prompt_tokens}
        if self.text_sent:
            usage["candidatesTokenCount"] = self.text_sent
        usage["totalTokenCount"] = self.ctx.prompt_tokens + self.text_sent + self.reasoning_sent
        if self.reasoning_sent:
            usage["thoughtsTokenCount"] = self.reasoning_sent
        return usage

    def _response(self, parts: list[dict[str, Any]], finish: bool = False) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish:
            candidate["finishReason"] = "STOP"
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": self._usage(),
            "modelVersion": self.ctx.model,
            "responseId": self.response_id,
        }

    def _element(self, obj: dict[str, Any]) -> bytes:
        """Frame one response: an SSE event (CRLF, Gemini's ``", "`` spacing) or the next
        pretty-printed array element (docs/PROVIDERS.md §9)."""
        if self.ctx.sse:
            text = json.dumps(obj, ensure_ascii=False, separators=(",", ": "))
            return b"data: " + text.encode() + b"\r\n\r\n"
        return self._array_prefix() + json.dumps(obj, ensure_ascii=False, indent=2).encode() + b"\n"

    def _array_prefix(self) -> bytes:
        self.elements += 1
        return b"[" if self.elements == 1 else b",\r\n"

    def _with_signature(self, part: dict[str, Any]) -> dict[str, Any]:
        if self.signature_pending:
            self.signature_pending = False
            part["thoughtSignature"] = _signature(self.ctx.directive.seed)
        return part

    def reasoning(self, word: str) -> bytes:
        self._count(True)
        return self._element(self._response([{"text": word, "thought": True}]))

    def reasoning_done(self) -> bytes:
        self.signature_pending = True
        return b""

    def text(self, word: str) -> bytes:
        self._count(False)
        return self._element(self._response([{"text": word}]))

    def tool(self, name: str) -> list[bytes]:
        part = self._with_signature({"functionCall": {"name": name, "args": TOOL_ARGUMENTS}})
        return [self._element(self._response([part]))]

    def finish(self) -> bytes:
        out = self._element(self._response([self._with_signature({"text": ""})], finish=True))
        return out if self.ctx.sse else out + b"]"

    def error(self) -> bytes:
        error = self.error_body(503, "The model is overloaded. Please try again later.")
        if self.ctx.sse:
            return error + b"\n"  # unframed, no "data:" (docs/PROVIDERS.md §3.4)
        return self._array_prefix() + error + b"\n]"  # an array element (docs/PROVIDERS.md §7)

    def complete(self) -> bytes:
        d = self.ctx.directive
        parts: list[dict[str, Any]] = []
        if d.reasoning:
            parts.append({"text": expected_reasoning(d.reasoning, d.seed), "thought": True})
            self.signature_pending = True
        if d.tool:
            parts.append(self._with_signature({"functionCall": {"name": d.tool, "args": TOOL_ARGUMENTS}}))
        if d.tokens or not parts or self.signature_pending:
            parts.append(self._with_signature({"text": expected_text(d.tokens, d.seed, d.pad)}))
        return json.dumps(self._response(parts, finish=True), ensure_ascii=False, indent=2).encode()

    _STATUSES = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        409: "ABORTED",
        429: "RESOURCE_EXHAUSTED",
        499: "CANCELLED",
        500: "INTERNAL",
        501: "UNIMPLEMENTED",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }

    @classmethod
    def error_body(cls, status: int, message: str) -> bytes:
        rpc_status = cls._STATUSES.get(status, "FAILED_PRECONDITION" if status < 500 else "UNKNOWN")
        error = {"error": {"code": status, "message": message, "status": rpc_status}}
        return json.dumps(error, indent=2).encode()


def _rfc3339_ns(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


class _Ollama(_Format):
    """Ollama ``/api/chat`` (docs/PROVIDERS.md §4.1)."""

    stream_type = "application/x-ndjson"
    json_type = "application/json; charset=utf-8"

    def _object(self, message: dict[str, Any], done: bool = False) -> dict[str, Any]:
        return {
            "model": self.ctx.model,
            "created_at": _rfc3339_ns(time.time_ns()),
            "message": {"role": "assistant", **message},
            "done": done,
        }

    def _line(self, message: dict[str, Any]) -> bytes:
        return orjson.dumps(self._object(message)) + b"\n"

    def _final(self, message: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic_ns()
        first = self.first_token_ns or now
        obj = self._object(message, done=True)
        obj.update(
            done_reason="stop",  # tool calls end with "stop" too (docs/PROVIDERS.md §4.1)
            total_duration=now - self.ctx.started_ns,
            prompt_eval_count=self.ctx.prompt_tokens,
            prompt_eval_duration=first - self.ctx.started_ns,
            eval_count=self.output_tokens,
            eval_duration=now - first,
        )
        return obj

    def reasoning(self, word: str) -> bytes:
        self._count(True)
        return self._line({"content": "", "thinking": word})

    def text(self, word: str) -> bytes:
        self._count(False)
        return self._line({"content": word})

    def _tool_calls(self, name: str) -> list[dict[str, Any]]:
        function = {"index": 0, "name": name, "arguments": TOOL_ARGUMENTS}
        return [{"id": "call_" + _tool_id(self.ctx.directive.seed)[:8], "function": function}]

    def tool(self, name: str) -> list[bytes]:
        return [self._line({"content": "", "tool_calls": self._tool_calls(name)})]

    def finish(self) -> bytes:
        return orjson.dumps(self._final({"content": ""})) + b"\n"

    def error(self) -> bytes:
        return orjson.dumps({"error": self._error_message()}) + b"\n"

    def complete(self) -> bytes:
        d = self.ctx.directive
        message: dict[str, Any] = {"content": expected_text(d.tokens, d.seed, d.pad)}
        if d.reasoning:
            message["thinking"] = expected_reasoning(d.reasoning, d.seed)
        if d.tool:
            message["tool_calls"] = self._tool_calls(d.tool)
        return orjson.dumps(self._final(message))

    @classmethod
    def error_body(cls, status: int, message: str) -> bytes:
        return orjson.dumps({"error": message})


class _OpenAIResponses(_OpenAI):
    """OpenAI Responses API ``POST /v1/responses`` (docs/PROVIDERS.md §1.6): named events
    (``event:`` equal to the JSON ``type``, a ``sequence_number`` on each), no ``[DONE]``.
    Reasoning is a ``reasoning`` item with one summary part (``reasoning_summary_text.delta``),
    text a ``message`` item with one ``output_text`` part, the tool call a ``function_call``
    item with ``function_call_arguments.delta`` fragments; ``response.completed`` carries the
    whole output and usage (``output_tokens_details.reasoning_tokens``). Errors: OpenAI's
    body (inherited); in-band an ``error`` event (``server_error``). Not streamed: one Response.
    """

    roots = ("instructions", "input")

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.id = "resp_mock" + uuid.uuid4().hex[:20]
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open_item: dict[str, Any] | None = None

    def _event(self, obj: dict[str, Any]) -> bytes:
        obj["sequence_number"] = self.sequence
        self.sequence += 1
        return b"event: " + str(obj["type"]).encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

    def _response(self, status: str, usage: bool = False) -> dict[str, Any]:
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status, "error": None,
            "incomplete_details": None, "instructions": None, "max_output_tokens": None, "model": self.ctx.model,
            "output": self.output if status != "in_progress" else [], "parallel_tool_calls": True,
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": False,
            "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
            "top_p": 1.0, "truncation": "disabled", "usage": self._responses_usage() if usage else None,
            "user": None, "metadata": {},
        }

    def _responses_usage(self) -> dict[str, Any]:
        prompt, completion = self.ctx.prompt_tokens, self.output_tokens
        return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": self.reasoning_sent},
                "total_tokens": prompt + completion}

    def _open_item(self, item: dict[str, Any]) -> bytes:
        out = self._close_item()
        self.open_item = item
        self.output.append(item)
        return out + self._event({"type": "response.output_item.added", "output_index": len(self.output) - 1,
                                  "item": {**item, "status": "in_progress", **_EMPTY_OF[item["type"]]}})

    def _close_item(self) -> bytes:
        item = self.open_item
        if item is None:
            return b""
        self.open_item = None
        index = len(self.output) - 1
        out = b""
        if item["type"] == "message":
            text = item["content"][0]["text"]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            out += self._event({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
            out += self._event({"type": "response.content_part.done", **where, "part": item["content"][0]})
        elif item["type"] == "reasoning":
            text = item["summary"][0]["text"]
            where = {"item_id": item["id"], "output_index": index, "summary_index": 0}
            out += self._event({"type": "response.reasoning_summary_text.done", **where, "text": text})
            out += self._event({"type": "response.reasoning_summary_part.done", **where, "part": item["summary"][0]})
        elif item["type"] == "function_call":
            out += self._event({"type": "response.function_call_arguments.done", "item_id": item["id"],
                                "output_index": index, "arguments": item["arguments"]})
        item["status"] = "completed"
        return out + self._event({"type": "response.output_item.done", "output_index": index, "item": item})

    def head(self) -> bytes:
        return (self._event({"type": "response.created", "response": self._response("in_progress")})
                + self._event({"type": "response.in_progress", "response": self._response("in_progress")}))

    def reasoning(self, word: str) -> bytes:
        self._count(True)
        out = b""
        if self.open_item is None or self.open_item["type"] != "reasoning":
            out = self._open_item({"type": "reasoning", "id": "rs_mock" + uuid.uuid4().hex[:20],
                                   "summary": [{"type": "summary_text", "text": ""}]})
            out += self._event({"type": "response.reasoning_summary_part.added", "item_id": self.output[-1]["id"],
                                "output_index": len(self.output) - 1, "summary_index": 0,
                                "part": {"type": "summary_text", "text": ""}})
        self.output[-1]["summary"][0]["text"] += word
        return out + self._event({"type": "response.reasoning_summary_text.delta", "item_id": self.output[-1]["id"],
                                  "output_index": len(self.output) - 1, "summary_index": 0, "delta": word})

    def reasoning_done(self) -> bytes:
        return self._close_item()

    def text(self, word: str) -> bytes:
        self._count(False)
        out = b""
        if self.open_item is None or self.open_item["type"] != "message":
            part = {"type": "output_text", "text": "", "annotations": []}
            out = self._open_item({"type": "message", "id": "msg_mock" + uuid.uuid4().hex[:20], "role": "assistant",
                                   "content": [dict(part)]})
            out += self._event({"type": "response.content_part.added", "item_id": self.output[-1]["id"],
                                "output_index": len(self.output) - 1, "content_index": 0, "part": part})
        self.output[-1]["content"][0]["text"] += word
        return out + self._event({"type": "response.output_text.delta", "item_id": self.output[-1]["id"],
                                  "output_index": len(self.output) - 1, "content_index": 0, "delta": word,
                                  "logprobs": []})

    def tool(self, name: str) -> list[bytes]:
        self.tool_name = name
        item = {"type": "function_call", "id": "fc_mock" + uuid.uuid4().hex[:20],
                "call_id": "call_" + _tool_id(self.ctx.directive.seed), "name": name, "arguments": ""}
        pieces = [self._open_item(item)]
        for fragment in _fragments(_TOOL_ARGUMENTS_JSON, _TOOL_FRAGMENT_CHARS):
            item["arguments"] += fragment
            pieces.append(self._event({"type": "response.function_call_arguments.delta", "item_id": item["id"],
                                       "output_index": len(self.output) - 1, "delta": fragment}))
        return pieces

    def finish(self) -> bytes:
        return self._close_item() + self._event({"type": "response.completed",
                                                 "response": self._response("completed", usage=True)})

    def error(self) -> bytes:
        return self._event({"type": "error", "code": "server_error", "message": self._error_message(), "param": None})

    def complete(self) -> bytes:
        d = self.ctx.directive
        if d.reasoning:
            self.output.append({"type": "reasoning", "id": "rs_mock" + uuid.uuid4().hex[:20], "status": "completed",
                                "summary": [{"type": "summary_text", "text": expected_reasoning(d.reasoning, d.seed)}]})
        if d.tokens or not d.tool:
            self.output.append({"type": "message", "id": "msg_mock" + uuid.uuid4().hex[:20], "role": "assistant",
                                "status": "completed", "content": [{"type": "output_text", "annotations": [],
                                                                    "text": expected_text(d.tokens, d.seed, d.pad)}]})
        if d.tool:
            self.output.append({"type": "function_call", "id": "fc_mock" + uuid.uuid4().hex[:20], "status": "completed",
                                "call_id": "call_" + _tool_id(d.seed), "name": d.tool,
                                "arguments": _TOOL_ARGUMENTS_JSON})
        return orjson.dumps(self._response("completed", usage=True))


#: What an output item holds when ``response.output_item.added`` announces it (empty).
_EMPTY_OF: dict[str, dict[str, Any]] = {
    "message": {"content": []},
    "reasoning": {"summary": []},
    "function_call": {"arguments": ""},
}


# The server.


class _Pacer:
    """Absolute schedule of paced writes: piece ``i`` at ``start + ttft + i / tps``."""

    def __init__(self, start: float, directive: Directive) -> None:
        self._next = start + directive.ttft_ms / 1000
        self._interval = 1 / directive.tps if directive.tps else 0.0

    async def wait(self) -> None:
        delay = self._next - asyncio.get_running_loop().time()
        await asyncio.sleep(max(delay, 0))  # sleep(0) still lets other requests run
        self._next += self._interval


#: The formats whose requests :func:`_check_request` checks, by its ``kind`` name.
_CHECKED: dict[type[_Format], str] = {_OpenAI: "openai", _Anthropic: "anthropic", _Gemini: "gemini",
                                      _Ollama: "ollama"}


@dataclasses.dataclass
class _Call:
    """Bookkeeping of one provider request."""

    epoch: int  # MockProvider.reset() generation it started in
    started: float  # loop time
    raw: bytes  # request body
    body: Any  # the body as JSON (see _decode_body)
    outcome: str = "completed"  # or "disconnected"


class MockProvider:
    """The mock provider server (endpoints and directives: see the module docstring).

    Use as ``async with MockProvider(...) as mock:`` or call :meth:`start` / :meth:`stop`.

    Args:
        host: interface to listen on.
        port: TCP port; 0 picks a free one (read :attr:`port` after start).
        replay_dir: directory that relative ``replay=FILE`` names are resolved against
            (default: the working directory).
        tokens: default answer length in tokens.
        tps: default tokens per second (0 = as fast as possible).
        ttft_ms: default delay before the first token, in milliseconds.
        seed: default seed.
        shutdown_timeout_s: how long :meth:`stop` lets in-flight responses finish.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        replay_dir: str | pathlib.Path | None = None,
        tokens: int = 20,
        tps: float = 0.0,
        ttft_ms: float = 0.0,
        seed: int = 0,
        shutdown_timeout_s: float = 0.5,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.replay_dir = pathlib.Path(replay_dir) if replay_dir is not None else None
        self.defaults = Directive(tokens=tokens, tps=tps, ttft_ms=ttft_ms, seed=seed)
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._counts = {"requests": 0, "completed": 0, "disconnected": 0}
        self._active = 0
        self._epoch = 0
        self._log: collections.deque[dict[str, Any]] = collections.deque(maxlen=_LOG_SIZE)
        self._stopping = False
        self._gates: dict[str, asyncio.Event] = {}
        self._scripts: collections.Counter[str] = collections.Counter()
        self._waiting: collections.Counter[str] = collections.Counter()
        self.app = self._make_app()

    # Lifecycle.

    async def start(self) -> None:
        """Bind and serve."""
        # handler_cancellation: a client that closes its connection cancels the handler at
        # once, which is how ``disconnected`` is counted within one token interval.
        runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout_s,
            access_log=None,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        self._stopping = False

    async def stop(self) -> None:
        """Stop listening; in-flight responses get ``shutdown_timeout_s``, then are cancelled."""
        if self._runner is not None:
            self._stopping = True
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MockProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # Introspection.

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("MockProvider is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def base_urls(self) -> dict[str, str]:
        """``{provider: base URL}`` that points every provider of the registry
        (protocol/providers/) at this server: ``{"openai": "<url>/v1", "anthropic": "<url>", ...}``."""
        return PROVIDERS.base_urls_on(self.url)

    def hub_overrides(self) -> dict[str, Any]:
        """HubConfig field values that point every provider of a hub at this server:
        ``HubConfig(port=0, **mock.hub_overrides())`` (``{"openai_base_url": "<url>/v1", ...}``)."""
        return {PROVIDERS[name].base_url_field: url for name, url in self.base_urls().items()}

    def hub_environment(self) -> dict[str, str]:
        """The same as environment variables for a hub process (``{"OPENAI_BASE_URL": ...}``)."""
        return {PROVIDERS[name].base_url_env: url for name, url in self.base_urls().items()}

    @property
    def stats(self) -> dict[str, int]:
        """``{"requests", "completed", "disconnected", "active"}`` (see ``/_mock/stats``)."""
        return {**self._counts, "active": self._active}

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The last 100 provider requests, oldest first (see ``/_mock/requests``)."""
        return list(self._log)

    def reset(self) -> None:
        """Clear the statistics and the request log (in-flight requests are not counted)."""
        self._counts = dict.fromkeys(self._counts, 0)
        self._epoch += 1
        self._log.clear()
        for gate in self._gates.values():
            gate.set()  # nobody stays stuck behind a gate of an earlier run
        self._gates = {}
        self._waiting.clear()
        self._scripts.clear()

    def release(self, gate: str) -> int:
        """Open ``gate``; returns how many requests were waiting at it."""
        waiting = self._waiting.pop(gate, 0)
        self._gates.setdefault(gate, asyncio.Event()).set()
        return waiting

    async def _pass_gate(self, gate: str) -> None:
        event = self._gates.setdefault(gate, asyncio.Event())
        if event.is_set():
            return
        self._waiting[gate] += 1
        try:
            await event.wait()
        finally:
            if self._waiting.get(gate):
                self._waiting[gate] -= 1

    # Routing.

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._provider(self._openai))
        app.router.add_get("/v1/models", self._provider(self._models))
        app.router.add_post("/v1/messages", self._provider(self._anthropic))
        app.router.add_post("/v1beta/models/{target}", self._provider(self._gemini))
        app.router.add_post("/api/chat", self._provider(self._ollama))
        app.router.add_post("/v1/responses", self._provider(self._openai_responses))
        app.router.add_get("/_mock/stats", self._get_stats)
        app.router.add_get("/_mock/requests", self._get_requests)
        app.router.add_post("/_mock/reset", self._post_reset)
        app.router.add_post("/_mock/release", self._post_release)
        app.router.add_get("/_mock/gates", self._get_gates)
        app.router.add_get("/_mock/scripts", self._get_scripts)
        return app

    def _provider(
        self, handler: Callable[[web.Request, _Call], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Wrap a provider handler: log the request, count it and how it ended."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            call = _Call(self._epoch, asyncio.get_running_loop().time(), raw, _decode_body(raw))
            self._log.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "query": dict(request.query),
                    "headers": {name.lower(): value for name, value in request.headers.items()},
                    "body": call.body,
                }
            )
            self._counts["requests"] += 1
            self._active += 1
            try:
                return await handler(request, call)
            except asyncio.CancelledError:
                call.outcome = "disconnected"
                raise
            finally:
                self._active -= 1
                if call.epoch == self._epoch and not self._stopping:
                    self._counts[call.outcome] += 1

        return wrapped

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    async def _get_requests(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.requests), content_type="application/json")

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(self.stats)

    async def _post_release(self, request: web.Request) -> web.Response:
        gate = request.query.get("gate")
        if not gate:
            return web.json_response({"error": "missing ?gate=NAME"}, status=400)
        return web.json_response({"gate": gate, "released": self.release(gate)})

    async def _get_scripts(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self._scripts))

    def _script_step(self, directive: Directive) -> str:
        """This request's step of its script (``ok`` after the last one)."""
        assert directive.script is not None
        key = directive.script_id or ",".join(directive.script)
        index = self._scripts[key]
        self._scripts[key] += 1
        return directive.script[index] if index < len(directive.script) else "ok"

    async def _get_gates(self, request: web.Request) -> web.Response:
        closed = {name: self._waiting.get(name, 0) for name, event in self._gates.items() if not event.is_set()}
        return web.json_response(closed)

    # Provider handlers: the request's options, then _generate.

    async def _models(self, request: web.Request, call: _Call) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "mock-provider"} for m in _MODELS]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")

    async def _openai(self, request: web.Request, call: _Call) -> web.StreamResponse:
        def options(body: dict[str, Any]) -> dict[str, Any]:
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
            n = body.get("n")
            choices = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1
            return {"stream": bool(body.get("stream")), "include_usage": include_usage, "choices": choices}

        return await self._generate(request, call, _OpenAI, options)

    async def _anthropic(self, request: web.Request, call: _Call) -> web.StreamResponse:
        headers = {"request-id": "req_mock" + uuid.uuid4().hex[:20]}
        return await self._generate(
            request, call, _Anthropic, lambda body: {"stream": bool(body.get("stream"))}, headers
        )

    async def _gemini(self, request: web.Request, call: _Call) -> web.StreamResponse:
        model, _, action = request.match_info["target"].rpartition(":")
        if action not in ("streamGenerateContent", "generateContent") or not model:
            return _error_response(_Gemini, 404, f"unknown Gemini method {action!r}")
        options = {
            "stream": action == "streamGenerateContent",
            "sse": request.query.get("alt") == "sse",
            "model": model,
        }
        return await self._generate(request, call, _Gemini, lambda body: options)

    async def _ollama(self, request: web.Request, call: _Call) -> web.StreamResponse:
        # Streaming is Ollama's default (docs/PROVIDERS.md §4.1).
        return await self._generate(request, call, _Ollama, lambda body: {"stream": body.get("stream") is not False})

    async def _openai_responses(self, request: web.Request, call: _Call) -> web.StreamResponse:
        return await self._generate(request, call, _OpenAIResponses, lambda body: {"stream": bool(body.get("stream"))})

    async def _generate(
        self,
        request: web.Request,
        call: _Call,
        fmt_class: type[_Format],
        options: Callable[[dict[str, Any]], dict[str, Any]],
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        """The common path: directive, then status / replay / stream / one JSON body."""
        try:
            directive = Directive.parse(call.raw, self.defaults)
        except DirectiveError as exc:
            return _error_response(fmt_class, 400, str(exc))
        body = call.body if call.body is not None else {}
        if not isinstance(body, dict):
            return _error_response(fmt_class, 400, "request body must be a JSON object")
        context = {"model": str(body.get("model") or _MODELS[0]), **options(body)}
        check = _CHECKED.get(fmt_class)
        if check is not None:
            try:
                context["answer"] = _check_request(check, body)
            except DirectiveError as exc:
                return _error_response(fmt_class, 400, str(exc))
        if directive.tool is not None and _has_tool_result(body):
            # Like a real model: once the conversation carries a tool's result, it answers.
            directive = dataclasses.replace(directive, tool=None)
        fmt = fmt_class(_Context(directive, prompt_tokens=_prompt_tokens(body, fmt_class.roots), **context))
        status = directive.status
        if directive.script is not None:
            step = self._script_step(directive)
            if step == "drop":
                _close_transport(request)
                return web.Response()
            if step == "stall":
                # aiohttp has no event for "the peer closed the connection": poll the transport.
                while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                return web.Response()
            if step == "garbage":
                return web.Response(status=200, body=b"<html><body>502 Bad Gateway</body></html>\n",
                                    content_type="text/html")
            if step != "ok":
                status = int(step)
        if directive.replay is not None:
            return await self._replay(request, call, fmt, headers)
        if status is not None:
            message = f"mock status {status}"
            return _error_response(fmt_class, status, message, directive.retry_after, directive.retry_after_ms)
        if fmt.ctx.stream:
            return await self._stream(request, call, fmt, headers)
        return await self._complete(request, call, fmt, headers)

    async def _complete(
        self, request: web.Request, call: _Call, fmt: _Format, headers: dict[str, str] | None
    ) -> web.StreamResponse:
        d = fmt.ctx.directive
        cut = d.cut()
        tokens = cut[1] if cut else d.reasoning + d.tokens
        delay = d.ttft_ms / 1000 + (tokens / d.tps if d.tps else 0.0)
        await asyncio.sleep(delay)
        if cut and cut[0] == "truncate":
            _close_transport(request)
            return web.Response()
        if cut:
            return _error_response(type(fmt), fmt.midstream_status, f"mock error after {cut[1]} tokens")
        fmt.reasoning_sent, fmt.text_sent = d.reasoning, d.tokens
        return web.Response(body=fmt.complete(), headers={"Content-Type": fmt.content_type, **(headers or {})})

    async def _stream(
        self, request: web.Request, call: _Call, fmt: _Format, headers: dict[str, str] | None
    ) -> web.StreamResponse:
        d = fmt.ctx.directive
        response = web.StreamResponse(headers={"Content-Type": fmt.content_type, **(headers or {})})
        await response.prepare(request)
        started = call.started
        if d.gate is not None:
            await self._pass_gate(d.gate)
            started = asyncio.get_running_loop().time()
        pacer = _Pacer(started, d)
        cut = d.cut()
        sent = 0
        response_buffer: list[bytes] = []
        try:
            await _write(request, response, fmt.head())
            in_burst = 0
            for kind, produce in _script(fmt, d):
                if cut is not None and kind != "marker" and sent == cut[1]:
                    break
                if kind != "marker" and in_burst == 0:
                    await pacer.wait()
                data = produce()
                if kind == "token" and d.burst > 1:
                    # Up to `burst` tokens go out in one write (one TCP segment, usually).
                    in_burst = (in_burst + 1) % d.burst
                    if in_burst:
                        response_buffer.append(data)
                        sent += 1
                        continue
                if response_buffer:
                    data = b"".join(response_buffer) + data
                    response_buffer.clear()
                await _write(request, response, data)
                if kind == "token":
                    sent += 1
            else:
                if response_buffer:
                    await _write(request, response, b"".join(response_buffer))
                if cut is None:
                    await _write(request, response, fmt.finish())
                    return response
            # error_after / truncate_after (a cut past the last token lands here too).
            if response_buffer:
                await _write(request, response, b"".join(response_buffer))
            if cut[0] == "error":
                await _write(request, response, fmt.error())
            else:
                _close_transport(request)
        except ConnectionResetError:
            call.outcome = "disconnected"
        return response

    async def _replay(
        self, request: web.Request, call: _Call, fmt: _Format, headers: dict[str, str] | None
    ) -> web.StreamResponse:
        d = fmt.ctx.directive
        assert d.replay is not None
        path = pathlib.Path(d.replay)
        if not path.is_absolute():
            path = (self.replay_dir or pathlib.Path.cwd()) / path
        try:
            data = path.read_bytes()
        except OSError as exc:
            return _error_response(type(fmt), 400, f"mock replay file unreadable: {exc}")
        content_type = "application/json" if d.status is not None else fmt.content_type
        extra = dict(headers or {})
        if d.retry_after is not None and d.status is not None:
            extra["retry-after"] = _format_seconds(d.retry_after)
        response = web.StreamResponse(status=d.status or 200, headers={"Content-Type": content_type, **extra})
        await response.prepare(request)
        pacer = _Pacer(call.started, d)
        try:
            for count, piece in enumerate(_pieces(data, d.seed)):
                if d.truncate_after is not None and count == d.truncate_after:
                    _close_transport(request)
                    return response
                await pacer.wait()
                await _write(request, response, piece)
        except ConnectionResetError:
            call.outcome = "disconnected"
        return response


def _script(fmt: _Format, d: Directive) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """The stream after its head, as ``(kind, produce)`` steps in order. ``kind`` is
    ``token`` (paced, counted by cuts), ``tool`` (paced) or ``marker`` (written at once).
    Bytes are produced only when a step is written, so timestamps and usage are current."""
    for word in _words("reasoning", d.reasoning, d.seed):
        yield "token", functools.partial(fmt.reasoning, word)
    if d.reasoning:
        yield "marker", fmt.reasoning_done
    if d.stamp:
        for _ in range(d.tokens):
            yield "token", lambda: fmt.text(f"@{time.monotonic_ns()} ")
    elif fmt.ctx.answer is not None:  # structured output: the JSON text, 8 characters a token
        for fragment in _fragments(fmt.ctx.answer, 8):
            yield "token", functools.partial(fmt.text, fragment)
    else:
        for word in _words("text", d.tokens, d.seed, d.pad):
            yield "token", functools.partial(fmt.text, word)
    if d.tool:
        # Built when the generator gets here, i.e. after the last token was written.
        for piece in fmt.tool(d.tool):
            yield "tool", _constant(piece)


def _constant(data: bytes) -> Callable[[], bytes]:
    """A step that writes ``data`` as it is."""
    return lambda: data


def _pieces(data: bytes, seed: int) -> Iterator[bytes]:
    """``data`` cut at random boundaries into pieces of 1 to 64 bytes (seeded)."""
    rng = random.Random(f"replay:{seed}")
    position = 0
    while position < len(data):
        size = rng.randint(1, _REPLAY_PIECE_MAX)
        yield data[position : position + size]
        position += size


async def _write(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
    """Write one piece; raise ConnectionResetError if the client has gone (checked before each
    write, so a closed connection is noticed at the next piece even without cancellation)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client closed the connection")
    if data:
        await response.write(data)


def _close_transport(request: web.Request) -> None:
    """Close the connection after flushing what was written: the client sees a body that ends
    without the provider's terminal marker and without the chunked terminator."""
    transport = request.transport
    if transport is not None:
        transport.close()


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def _error_response(
    fmt: type[_Format], status: int, message: str, retry_after: float | None = None,
    retry_after_ms: float | None = None,
) -> web.Response:
    headers = {"retry-after": _format_seconds(retry_after)} if retry_after is not None else {}
    if retry_after_ms is not None:
        headers["retry-after-ms"] = _format_seconds(retry_after_ms)
    body = fmt.error_body(status, message)
    return web.Response(status=status, body=body, headers=headers, content_type="application/json")


def _has_tool_result(body: dict[str, Any]) -> bool:
    """Whether a request carries a tool's result: an OpenAI or Ollama ``role: tool`` message,
    an Anthropic ``tool_result`` block, a Gemini ``functionResponse`` part."""
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        if message.get("role") == "tool":
            return True
        content = message.get("content")
        if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
            return True
    input_items = body.get("input")
    if isinstance(input_items, list) and any(
        isinstance(item, dict) and item.get("type") == "function_call_output" for item in input_items
    ):
        return True  # a Responses API function_call_output item
    for content in body.get("contents") or []:
        parts = content.get("parts") if isinstance(content, dict) else None
        if isinstance(parts, list) and any(isinstance(p, dict) and "functionResponse" in p for p in parts):
            return True
    return False


# What each provider accepts: the mock refuses what the real API would (HTTP 400 in the
# provider's error shape), so a test through the hub sees a field sent under the wrong name.

#: Top-level request fields each provider's API knows (OpenAI API reference "Create chat
#: completion"; Anthropic API reference "Messages"; Gemini API reference
#: ``models.streamGenerateContent``). Real OpenAI, Anthropic and Gemini answer 400 to others.
_KNOWN_FIELDS: dict[str, frozenset[str]] = {
    "openai": frozenset((
        "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
        "top_p", "n", "stop", "seed", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs",
        "logit_bias", "user", "tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort",
        "metadata", "store", "service_tier", "modalities", "audio", "prediction", "web_search_options",
        "functions", "function_call", "verbosity", "prompt_cache_key", "safety_identifier")),
    "anthropic": frozenset((
        "model", "messages", "max_tokens", "system", "stream", "temperature", "top_p", "top_k", "stop_sequences",
        "tools", "tool_choice", "thinking", "metadata", "output_config", "service_tier", "container",
        "mcp_servers", "context_management")),
    "gemini": frozenset((
        "contents", "systemInstruction", "system_instruction", "tools", "toolConfig", "tool_config",
        "generationConfig", "generation_config", "safetySettings", "safety_settings", "cachedContent",
        "cached_content")),
}
#: Gemini ``GenerationConfig`` fields (API reference ``GenerationConfig``).
_GEMINI_GENERATION = frozenset((
    "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities",
    "candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty",
    "frequencyPenalty", "responseLogprobs", "logprobs", "thinkingConfig", "mediaResolution", "speechConfig"))
#: Gemini ``Schema`` fields (API reference ``Schema``: an OpenAPI 3.0 subset).
_GEMINI_SCHEMA = frozenset((
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf",
    "propertyOrdering", "default", "items", "minimum", "maximum"))
_MAX_EXAMPLE_DEPTH = 32
_MAX_EXAMPLE_NODES = 5000


def example_for_schema(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0,
                       budget: list[int] | None = None) -> Any:
    """A JSON value valid for ``schema`` (JSON Schema, or Gemini's upper-case ``Schema``),
    the same every time: what the mock answers when a request asks for structured output.

    Objects get every property; arrays ``max(1, minItems)`` items (at most 100); strings ``"mock"`` (or
    the first ``enum`` value); integers 1; numbers 1.5; booleans true. Local ``$ref`` are
    followed; ``anyOf``/``oneOf`` take the first member that is not ``null``. Bounded: past
    32 levels or 5000 nodes (references that share definitions multiply a schema) the rest is
    null.
    """
    if budget is None:
        budget = [_MAX_EXAMPLE_NODES]
    budget[0] -= 1
    if not isinstance(schema, dict) or depth > _MAX_EXAMPLE_DEPTH or budget[0] < 0:
        return None
    if defs is None:
        defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    if isinstance(schema.get("$ref"), str):
        return example_for_schema(defs.get(schema["$ref"].rsplit("/", 1)[-1]), defs, depth + 1, budget)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        members = [m for m in schema.get(key) or () if not (isinstance(m, dict) and m.get("type") == "null")]
        if members:
            return example_for_schema(members[0], defs, depth + 1, budget)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = str(kind).lower()
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: example_for_schema(sub, defs, depth + 1, budget) for name, sub in properties.items()}
    if kind == "array":
        count = min(max(1, int(schema.get("minItems", 1))), 100)  # a huge minItems would be huge work
        return [example_for_schema(schema.get("items"), defs, depth + 1, budget)] * count
    return {"string": "mock", "integer": 1, "number": 1.5, "boolean": True}.get(kind)


def _unknown(kind: str, body: dict[str, Any]) -> None:
    unknown = sorted(key for key in body if key not in _KNOWN_FIELDS[kind])
    if unknown:
        raise DirectiveError(f"Unrecognized request argument supplied: {', '.join(unknown)}")


def _gemini_schema_keys(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise DirectiveError(f"Invalid value at '{where}': a Schema must be an object")
    for key, value in schema.items():
        if key not in _GEMINI_SCHEMA:
            raise DirectiveError(f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\'')
        if key == "properties":
            for name, sub in value.items():
                _gemini_schema_keys(sub, f"{where}.properties[{name}]")
        elif key == "items":
            _gemini_schema_keys(value, f"{where}.items")
        elif key == "anyOf":
            for sub in value:
                _gemini_schema_keys(sub, f"{where}.anyOf")


def _checked_image_data(data: Any, where: str) -> None:
    try:
        base64.b64decode(str(data), validate=True)
    except (ValueError, TypeError):
        raise DirectiveError(f"{where}: image data is not base64") from None


def _check_request(kind: str, body: dict[str, Any]) -> str | None:
    """Check a provider request as the real API would and return the structured-output
    answer it asks for (the JSON text of :func:`example_for_schema`), or None for plain text.

    ``kind`` is ``openai``, ``anthropic``, ``gemini`` or ``ollama``. Checked: top-level fields
    (:data:`_KNOWN_FIELDS`; Ollama ignores unknown ones, as Ollama does), Gemini's
    ``generationConfig`` fields, ``responseSchema`` and function ``parameters`` keywords (and
    that a ``responseSchema``
    comes with ``responseMimeType: application/json``), the shape of image blocks and parts
    (Anthropic ``image`` sources, Gemini ``inlineData``/``fileData``, Ollama ``images``: base64),
    and the structured-output fields: OpenAI ``response_format`` (a ``json_schema`` needs a
    ``name``), Anthropic ``output_config.format`` (``type: json_schema`` with a ``schema``),
    Gemini ``responseMimeType``/``responseSchema``, Ollama ``format`` (``"json"`` or a schema).

    Raises:
        DirectiveError: what the real API would refuse (answered HTTP 400).
    """
    if kind == "openai":
        _unknown(kind, body)
        fmt = body.get("response_format")
        if not isinstance(fmt, dict) or fmt.get("type") == "text":
            return None
        if fmt.get("type") == "json_object":
            return json.dumps({"mock": "json"})
        spec = fmt.get("json_schema")
        if fmt.get("type") != "json_schema" or not isinstance(spec, dict) or not spec.get("name"):
            raise DirectiveError("Missing required parameter: 'response_format.json_schema.name'")
        return json.dumps(example_for_schema(spec.get("schema", {})))
    if kind == "anthropic":
        _unknown(kind, body)
        for message in body.get("messages") or ():
            for block in message.get("content") if isinstance(message.get("content"), list) else ():
                if block.get("type") != "image":
                    continue
                source = block.get("source") or {}
                if source.get("type") == "base64" and source.get("media_type"):
                    _checked_image_data(source.get("data"), "messages.content.source.data")
                elif not (source.get("type") == "url" and source.get("url")):
                    raise DirectiveError("messages.content.source: expected a base64 or url image source")
        fmt = (body.get("output_config") or {}).get("format")
        if fmt is None:
            return None
        if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise DirectiveError("output_config.format: expected {type: json_schema, schema: {...}}")
        return json.dumps(example_for_schema(fmt["schema"]))
    if kind == "gemini":
        _unknown(kind, body)
        generation = body.get("generationConfig") or {}
        for key in generation:
            if key not in _GEMINI_GENERATION:
                raise DirectiveError(f'Invalid JSON payload received. Unknown name "{key}" at \'generation_config\'')
        for content in body.get("contents") or ():
            for part in content.get("parts") or ():
                if "inlineData" in part:
                    if not part["inlineData"].get("mimeType"):
                        raise DirectiveError("inlineData.mimeType is required")
                    _checked_image_data(part["inlineData"].get("data"), "inlineData.data")
                if "fileData" in part and not (part["fileData"].get("mimeType") and part["fileData"].get("fileUri")):
                    raise DirectiveError("fileData needs mimeType and fileUri")
        for tool in body.get("tools") or ():
            for declaration in tool.get("functionDeclarations") or ():
                if "parameters" in declaration:
                    _gemini_schema_keys(declaration["parameters"], "tools.function_declarations.parameters")
        schema = generation.get("responseSchema")
        mime = generation.get("responseMimeType")
        if schema is not None:
            if mime != "application/json":
                raise DirectiveError("responseSchema needs responseMimeType application/json")
            _gemini_schema_keys(schema, "generation_config.response_schema")
            return json.dumps(example_for_schema(schema))
        return json.dumps({"mock": "json"}) if mime == "application/json" else None
    for message in body.get("messages") or ():
        for image in message.get("images") or ():
            _checked_image_data(image, "messages.images")
    fmt = body.get("format")
    if fmt is None:
        return None
    if fmt == "json":
        return json.dumps({"mock": "json"})
    if not isinstance(fmt, dict):
        raise DirectiveError(f"invalid format: {fmt!r}")
    return json.dumps(example_for_schema(fmt))


def _decode_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


# Command line.


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``cbhub mock-provider`` command line (defaults: 127.0.0.1:9100, 20 tokens, no pacing)."""
    parser = argparse.ArgumentParser(
        prog="cbhub mock-provider",
        description="Mock LLM provider speaking OpenAI, Anthropic, Gemini and Ollama streaming "
        "formats on one port. Per-request behaviour: [[mock key=value ...]] in a message.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default %(default)s)")
    parser.add_argument(
        "--port", type=_non_negative(int), default=9100, help="TCP port (default %(default)s; 0 = any free)"
    )
    parser.add_argument("--replay-dir", type=pathlib.Path, default=None,
                        help="directory for relative replay=FILE names (default: working directory)")
    parser.add_argument(
        "--tokens", type=_non_negative(int), default=20, help="default answer tokens (default %(default)s)"
    )
    parser.add_argument("--tps", type=_non_negative(float), default=0.0,
                        help="default tokens per second, 0 = as fast as possible (default %(default)s)")
    parser.add_argument("--ttft-ms", type=_non_negative(float), default=0.0,
                        help="default delay before the first token in ms (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default seed (default %(default)s)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="event loop (uvloop: less CPU per written chunk, for benchmarks)")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with MockProvider(
            args.host,
            args.port,
            replay_dir=args.replay_dir,
            tokens=args.tokens,
            tps=args.tps,
            ttft_ms=args.ttft_ms,
            seed=args.seed,
        ) as mock:
            print(f"mock provider listening on {mock.url}", flush=True)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    """Run the mock provider until SIGINT or SIGTERM.

    Args:
        argv: command-line arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 after a signal, 1 when the server could not start (e.g. the port
        is in use).
    """
    args = build_parser().parse_args(argv)
    try:
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(_serve(args))
        else:
            asyncio.run(_serve(args))
    except OSError as exc:
        print(f"mock-provider: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
