"""``cbhub bench sse``: the hub's SSE endpoints (Chat Completions, Anthropic Messages, OpenAI
Responses), and Chat Completions against the LiteLLM proxy.

What is measured
----------------
Up to four targets stream the same answers from the same mock provider
(hub/testing/mock_provider.py) at the mock's maximum speed (directive ``[[mock tokens=N tps=0]]``):

``mock-direct``     the mock's own ``POST /v1/chat/completions``: the baseline, no server between
``hub``             ``cbhub serve``, model ``openai/mock-model``, default settings: it coalesces
                    tokens into fewer SSE events (25 ms / 100 characters, the first token
                    released at once). One row per front door picked by ``--endpoint`` (``chat``
                    ``POST /v1/chat/completions``, ``messages`` ``POST /v1/messages``,
                    ``responses`` ``POST /v1/responses``; repeatable, or ``all``, the default)
``hub-nocoalesce``  the same hub's ``/v1/chat/completions`` with the request field ``"coalesce":
                    false``: one SSE event per upstream chunk, the like-for-like comparison with
                    a proxy that passes chunks through (``--coalesce on|off|both`` picks the hub
                    rows, default both; the other endpoints have no such field, so ``off`` is
                    for ``chat`` only)
``litellm``         the LiteLLM proxy (``litellm[proxy]==1.106.2``), model ``mock-model`` routed as
                    an OpenAI-compatible model to the mock's ``/v1`` (see *The LiteLLM proxy*)

The mock, the hub and the LiteLLM proxy each run as their own child process on 127.0.0.1; this
process is the client (load generator): an aiohttp ClientSession that POSTs
``{"model": …, "stream": true, "messages": [{"role": "user", "content": "bench [[mock
tokens=N tps=0]]"}]}`` and reads the SSE body up to ``data: [DONE]``. ``/v1/messages`` gets the
same body plus ``max_tokens`` (2N + 16, which the hub passes on and the mock does not count), and
the stream is read up to ``message_stop``; ``/v1/responses`` gets ``{"model": …, "stream": true,
"input": "bench [[mock tokens=N tps=0]]"}`` and is read up to ``response.completed``. Whatever the
front door, the hub sends the mock the same Chat Completions request, so the rows differ only by
the front door's request parsing and event encoding (docs/PROTOCOL.md "POST /v1/messages" and
"POST /v1/responses").

For each concurrency level C of ``--concurrency`` (default ``1,100``) and each server: one
warm-up round of C streams of 10 tokens (fills the connection pools of client and server; not
measured), then ``--repeat`` rounds (default 3) of C concurrent streams of N tokens each
(``--tokens``; default 2000 for one stream and 20000 / C for C streams, e.g. 200 each for 100).

Counting: the mock sends each token as one SSE chunk. Through the hub (coalescing) several
tokens arrive in one SSE event, so chunks are counted by text: every stream's concatenated text
(Chat Completions ``choices[].delta.content``; Messages ``content_block_delta`` events whose
delta is a ``text_delta``; Responses ``response.output_text.delta``) must equal the text the mock
sent (:func:`hub.testing.mock_provider.expected_text`), i.e. exactly N upstream chunks, and must
end with the endpoint's end (``data: [DONE]``, ``message_stop``, ``response.completed``), with
no in-band error; otherwise the row gets ``ok: false`` and the exit status is 1. ``events``
counts the SSE events with text that the client actually received.

Row keys (``scenario: "sse"``), units in the names:

- ``server``; ``endpoint``: the path measured (``/v1/chat/completions`` for ``mock-direct``,
  ``litellm`` and ``hub-nocoalesce``).
- ``streams``, ``tokens_per_stream``, ``repeats``.
- ``chunks``: upstream content chunks received over all measured repeats, counted by text
  (must be ``streams × tokens_per_stream × repeats``); ``events``: content SSE events received.
- ``chunks_per_s``: content chunks received per second of wall time, all streams together
  (round start to the last stream's end), median over the repeats. ``events_per_s``: the same
  for SSE events.
- ``ttft_p50_ms``, ``ttft_p99_ms``: time to first token per stream, from just before the request
  is sent to the first SSE event with non-empty text, over streams × repeats.
- ``added_ttft_p50_ms``, ``added_ttft_p99_ms``: the server's TTFT percentile minus
  ``mock-direct``'s (Chat Completions straight from the mock) at the same concurrency,
  measured in the same run; the same baseline for every endpoint.
- ``server_cpu_s_per_1k_chunks``: user + system CPU seconds the server process used (psutil,
  before/after the measured repeats; for LiteLLM with its child processes, if any) per 1000
  chunks; for ``mock-direct`` it is the mock's. ``client_cpu_s_per_1k_chunks``: the same for this
  (client) process: when the client is near one full core, the client is the bottleneck.
- ``ratio_vs_litellm`` (hub ``/v1/chat/completions`` rows, when LiteLLM ran): hub
  ``chunks_per_s`` / LiteLLM's. LiteLLM is measured on ``/v1/chat/completions`` only.
- ``ok``, ``failed_streams``, ``error`` (the first failure), ``note``.

``mock-direct`` is what the mock and this client manage alone, not a strict ceiling: the client
parses every SSE event, and through the coalescing hub it gets about 16 times fewer, so on a
small machine, where the client, the server and the mock share the cores, the ``hub`` row can
beat ``mock-direct``. The wall-time figures move with whatever else the machine runs (from one
run to the next by up to 2x on a shared 2-core machine); the CPU figures per 1000 chunks are
steadier.

The target (issue): hub ``chunks_per_s`` at least 10x LiteLLM's at 1 and at 100 streams, and
a lower added TTFT. A line on the terminal says how this run compares.

The LiteLLM proxy
-----------------
Optional: when no ``litellm`` executable is found (``--litellm PATH``, else ``litellm`` on
PATH), or it fails to start, a note says why, a ``litellm`` row with ``note: "skipped: …"`` is
written, and the hub is measured alone. Install it in its own venv, so that its many
dependencies stay away from the hub's::

    python -m venv ~/litellm && ~/litellm/bin/pip install 'litellm[proxy]==1.106.2'
    cbhub bench sse --litellm ~/litellm/bin/litellm

It is started as ``litellm --config CONFIG --host 127.0.0.1 --port PORT --num_workers 1`` (a
free port picked here; uvicorn with uvloop, LiteLLM's default on Linux) with this config in a
temporary directory::

    model_list:
      - model_name: mock-model
        litellm_params:
          model: openai/mock-model
          api_base: http://127.0.0.1:MOCK_PORT/v1
          api_key: bench-key

and, in its environment, ``LITELLM_MASTER_KEY=sk-bench`` (clients send ``Authorization: Bearer
sk-bench``), ``LITELLM_LOCAL_MODEL_COST_MAP=True`` and the other ``LITELLM_LOCAL_*=True``
switches (no fetch from GitHub at startup), ``LITELLM_LOG=ERROR`` (no per-request access log),
``LITELLM_DONT_SHOW_FEEDBACK_BOX=true``, ``NO_PROXY=127.0.0.1,localhost``; no ``DATABASE_URL``
(no database: no spend logs, no key checks against a database). It is ready when ``GET
/health/readiness`` answers 200 (``--litellm-startup-timeout``, default 120 s; it took 5 to 9 s on
a 2-core machine). Its output goes to ``litellm.log`` in that directory, whose
tail is shown if it fails to start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
from rich.markup import escape

from hub.testing.mock_provider import expected_text
from tools.bench.procs import ServerProcess, start_hub, start_mock
from tools.bench.report import Reporter, percentile

__all__ = ["add_arguments", "run", "LiteLLMProcess", "Target", "StreamResult", "stream_once"]

LITELLM_VERSION = "1.106.2"
LITELLM_INSTALL = (
    "install it in its own venv: python -m venv ~/litellm && "
    f"~/litellm/bin/pip install 'litellm[proxy]=={LITELLM_VERSION}', then pass --litellm ~/litellm/bin/litellm"
)
LITELLM_KEY = "sk-bench"
MOCK_MODEL = "mock-model"
WARMUP_TOKENS = 10

# The hub's front doors (``--endpoint``): name -> path, and what ends a complete answer.
ENDPOINTS = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}
END_MARK = {"chat": "data: [DONE]", "messages": "message_stop", "responses": "response.completed"}

# The terminal table (every key goes to the JSON lines).
COLUMNS = [
    "server", "endpoint", "streams", "tokens_per_stream", "chunks", "events", "chunks_per_s", "ttft_p50_ms",
    "ttft_p99_ms", "added_ttft_p50_ms", "added_ttft_p99_ms", "server_cpu_s_per_1k_chunks", "ratio_vs_litellm", "note",
]


# Command line.

def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The ``sse`` scenario's options (``name`` is the scenario name, unused)."""
    parser.add_argument("--litellm", metavar="PATH", default=None,
                        help=f"the LiteLLM proxy executable (default: `litellm` on PATH; skipped when absent); "
                             f"{LITELLM_INSTALL}")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 100],
                        help="comma-separated numbers of concurrent streams (default 1,100)")
    parser.add_argument("--tokens", type=_int_list, default=None,
                        help="tokens per stream: one value for every concurrency, or one per --concurrency "
                             "value (default 2000 for 1 stream, 20000/C for C streams; --quick: 200, 2000/C)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="measured rounds per configuration; the row holds the median (default 3; --quick: 1)")
    parser.add_argument("--coalesce", choices=("on", "off", "both"), default="both",
                        help="hub rows: default coalescing (on), \"coalesce\": false (off), or both (default); "
                             "off applies to /v1/chat/completions only (the other endpoints have no such field)")
    parser.add_argument("--endpoint", action="append", choices=(*ENDPOINTS, "all"), default=None,
                        help="the hub's front door(s) to measure: chat (/v1/chat/completions), messages "
                             "(/v1/messages), responses (/v1/responses), or all; repeatable (default all)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="per-stream timeout in seconds (default 120)")
    parser.add_argument("--litellm-startup-timeout", type=float, default=120.0,
                        help="how long to wait for the LiteLLM proxy to be ready, in seconds (default 120)")
    parser.add_argument("--quick", action="store_true", help="short answers and one repeat, for development")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers of at least 1, got {text!r}")
    return values


def _endpoints_for(option: list[str] | None) -> list[str]:
    """The endpoints ``--endpoint`` asks for, in the order of :data:`ENDPOINTS`, each once (all when none)."""
    if not option or "all" in option:
        return list(ENDPOINTS)
    return [name for name in ENDPOINTS if name in option]


def _tokens_for(concurrency: list[int], tokens: list[int] | None, quick: bool) -> list[int]:
    """Tokens per stream for each concurrency level (see ``--tokens``)."""
    if tokens is None:
        total = 2000 if quick else 20000
        single = 200 if quick else 2000
        return [single if c == 1 else max(10, total // c) for c in concurrency]
    if len(tokens) == 1:
        return tokens * len(concurrency)
    if len(tokens) != len(concurrency):
        raise ValueError(f"--tokens has {len(tokens)} values for {len(concurrency)} --concurrency values")
    return tokens


# The client.

@dataclass
class StreamResult:
    """One streamed completion as the client saw it.

    Attributes:
        ttft_s: seconds from just before the request to the first non-empty ``delta.content``.
        duration_s: seconds from just before the request to ``[DONE]`` (or the end of the body).
        text: the concatenated ``delta.content``.
        events: SSE events that carried non-empty content.
        done: ``data: [DONE]`` was received.
        error: why the stream failed (HTTP status, in-band error, exception), or None.
    """

    ttft_s: float | None = None
    duration_s: float = 0.0
    text: str = ""
    events: int = 0
    done: bool = False
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Target:
    """A server under test, as the client addresses it.

    Attributes:
        name: the row's ``server``.
        url: the full URL of the endpoint.
        model: the request's ``model``.
        process: the server process whose CPU is accounted.
        headers: extra request headers (``Authorization``).
        extra: extra request body fields (``{"coalesce": false}``).
        endpoint: which API the URL speaks, a key of :data:`ENDPOINTS` (``chat``, ``messages``,
            ``responses``): it decides the request body and how the stream is read.
    """

    name: str
    url: str
    model: str
    process: ServerProcess
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    endpoint: str = "chat"


def request_body(target: Target, tokens: int) -> bytes:
    """The JSON request body asking ``target`` for one streamed answer of ``tokens`` mock tokens.

    The prompt is the same on every endpoint (``bench [[mock tokens=N tps=0]]``, one user
    message), so the upstream request the mock receives is the same whatever the front door.
    ``/v1/messages`` needs ``max_tokens`` (docs/PROTOCOL.md "POST /v1/messages"); it is set above
    N so that it never cuts the answer (the mock does not count it anyway).
    """
    prompt = f"bench [[mock tokens={tokens} tps=0]]"
    body: dict[str, Any]
    if target.endpoint == "messages":
        body = {"model": target.model, "stream": True, "max_tokens": 2 * tokens + 16,
                "messages": [{"role": "user", "content": prompt}]}
    elif target.endpoint == "responses":
        body = {"model": target.model, "stream": True, "input": prompt}
    else:
        body = {"model": target.model, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    return orjson.dumps({**body, **target.extra})


def _read_event(endpoint: str, event: dict[str, Any]) -> tuple[str | None, bool, str | None]:
    """One parsed SSE ``data:`` object of ``endpoint``'s stream: (text it adds, whether it is the
    end of a complete answer, an error it reports).

    - ``chat`` (Chat Completions, docs/PROTOCOL.md "POST /v1/chat/completions"): the text is
      ``choices[].delta.content``; the end is ``data: [DONE]``, read by the caller.
    - ``messages`` (docs/PROTOCOL.md "POST /v1/messages"): the text is a ``content_block_delta``
      whose delta is a ``text_delta``; the end is ``message_stop``; ``error`` is an error.
    - ``responses`` (docs/PROTOCOL.md "POST /v1/responses"): the text is
      ``response.output_text.delta``; the end is ``response.completed``; ``error``,
      ``response.failed`` and ``response.incomplete`` are errors.
    """
    if endpoint == "chat":
        if "error" in event:
            return None, False, f"in-band error: {orjson.dumps(event['error']).decode()[:200]}"
        content = None
        for choice in event.get("choices") or ():
            content = (choice.get("delta") or {}).get("content") or content
        return content, False, None
    kind = event.get("type")
    if endpoint == "messages":
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            return (delta.get("text") if delta.get("type") == "text_delta" else None), False, None
        if kind == "message_stop":
            return None, True, None
        if kind == "error":
            return None, False, f"in-band error: {orjson.dumps(event.get('error')).decode()[:200]}"
        return None, False, None
    if kind == "response.output_text.delta":
        return event.get("delta"), False, None
    if kind == "response.completed":
        return None, True, None
    if kind in ("error", "response.failed", "response.incomplete"):
        return None, False, f"in-band {kind}: {orjson.dumps(event).decode()[:200]}"
    return None, False, None


async def stream_once(session: aiohttp.ClientSession, target: Target, tokens: int, timeout_s: float) -> StreamResult:
    """Stream one answer of ``tokens`` tokens from ``target``'s endpoint and read it to the end.

    The body is read as SSE lines: ``event:``, ``id:``, comments and blank lines are skipped,
    every ``data:`` line is parsed as JSON and read by :func:`_read_event` (Chat Completions'
    ``data: [DONE]`` ends a chat stream). Never raises for a failed stream: the failure is in
    :attr:`StreamResult.error`.
    """
    body = request_body(target, tokens)
    headers = {"Content-Type": "application/json", **target.headers}
    endpoint = target.endpoint
    result = StreamResult()
    parts: list[str] = []
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(target.url, data=body, headers=headers) as response:
                result.headers = {key.lower(): value for key, value in response.headers.items()
                                  if key.lower().startswith("x-litellm-version")}
                if response.status != 200:
                    result.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                    return result
                pending = b""
                async for data in response.content.iter_any():
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()
                    now = time.perf_counter()
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue  # blank line, comment, event:, id:
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            result.done = True
                            result.duration_s = now - start
                            continue
                        content, end, error = _read_event(endpoint, orjson.loads(payload))
                        if error is not None:
                            result.error = result.error or error
                        if end:
                            result.done = True
                            result.duration_s = now - start
                        if content:
                            if result.ttft_s is None:
                                result.ttft_s = now - start
                            parts.append(content)
                            result.events += 1
    except TimeoutError:
        result.error = f"timed out after {timeout_s} s"
    except (aiohttp.ClientError, orjson.JSONDecodeError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.text = "".join(parts)
    if not result.done:
        result.duration_s = time.perf_counter() - start
        result.error = result.error or f"the body ended without {END_MARK[endpoint]}"
    return result


async def _round(session: aiohttp.ClientSession, target: Target, streams: int, tokens: int,
                 timeout_s: float) -> tuple[float, list[StreamResult]]:
    """C concurrent streams started together; returns (wall seconds until the last ended, results)."""
    start = time.perf_counter()
    results = await asyncio.gather(*(stream_once(session, target, tokens, timeout_s) for _ in range(streams)))
    return time.perf_counter() - start, results


def _check(result: StreamResult, expected: str) -> str | None:
    """Why a stream is not a complete, exact answer; None when it is."""
    if result.error:
        return result.error
    if result.text != expected:
        return f"text differs from the mock's: {len(result.text)} characters received, {len(expected)} sent"
    return None


@dataclass
class Measurement:
    """The measured repeats of one (server, concurrency) configuration."""

    rates: list[float] = field(default_factory=list)
    event_rates: list[float] = field(default_factory=list)
    ttfts_ms: list[float] = field(default_factory=list)
    chunks: int = 0
    events: int = 0
    failed: int = 0
    first_error: str | None = None
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


async def measure(session: aiohttp.ClientSession, target: Target, streams: int, tokens: int, repeat: int,
                  timeout_s: float, advance: Any) -> Measurement:
    """Warm-up round, then ``repeat`` measured rounds of ``streams`` × ``tokens``."""
    m = Measurement()
    expected = expected_text(tokens)
    _, warmup = await _round(session, target, streams, WARMUP_TOKENS, timeout_s)
    advance()
    warm_expected = expected_text(WARMUP_TOKENS)
    for result in warmup:
        m.headers.update(result.headers)
        problem = _check(result, warm_expected)
        if problem:
            m.failed += 1
            m.first_error = m.first_error or f"warm-up: {problem}"
    me = psutil.Process()
    server_before, client_before = target.process.cpu_s(), _cpu(me)
    for _ in range(repeat):
        wall, results = await _round(session, target, streams, tokens, timeout_s)
        advance()
        round_chunks = 0
        round_events = 0
        for result in results:
            problem = _check(result, expected)
            if problem:
                m.failed += 1
                m.first_error = m.first_error or problem
            # Chunks counted by text: one mock token is one word plus one space.
            round_chunks += tokens if problem is None else result.text.count(" ")
            round_events += result.events
            if result.ttft_s is not None:
                m.ttfts_ms.append(result.ttft_s * 1000)
        m.chunks += round_chunks
        m.events += round_events
        m.rates.append(round_chunks / wall)
        m.event_rates.append(round_events / wall)
    m.server_cpu_s = target.process.cpu_s() - server_before
    m.client_cpu_s = _cpu(me) - client_before
    return m


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


# The LiteLLM proxy.

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def litellm_config(mock_url: str) -> str:
    """The LiteLLM proxy config: one model, ``mock-model``, served by the mock as OpenAI."""
    return (
        "model_list:\n"
        f"  - model_name: {MOCK_MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MOCK_MODEL}\n"
        f"      api_base: {mock_url}/v1\n"
        "      api_key: bench-key\n"
    )


def litellm_env() -> dict[str, str]:
    """Environment of the LiteLLM proxy: master key, offline, quiet, no database."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "DIRECT_URL", "PYTHONPATH", "PYTHONHOME")}
    env.update({
        "LITELLM_MASTER_KEY": LITELLM_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no model cost map fetch from GitHub
        "LITELLM_LOCAL_BLOG_POSTS": "True",
        "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
        "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
        "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
        "LITELLM_LOG": "ERROR",  # also uvicorn's log level: no access log line per request
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    return env


class LiteLLMProcess(ServerProcess):
    """The LiteLLM proxy as a child process (it does not print our ``listening on`` line:
    readiness is polled at ``GET /health/readiness`` instead).

    Args:
        executable: path of the ``litellm`` program.
        mock_url: the mock provider's base URL.
        startup_timeout_s: how long to wait until it is ready, in seconds.
    """

    def __init__(self, executable: str, mock_url: str, startup_timeout_s: float = 120.0) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="cbhub-bench-litellm-")
        self.directory = Path(self._dir.name)
        config = self.directory / "config.yaml"
        config.write_text(litellm_config(mock_url))
        self.log_path = self.directory / "litellm.log"
        port = _free_port()
        argv = [executable, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        super().__init__("litellm", argv, startup_timeout_s=startup_timeout_s)
        self.env = litellm_env()
        self.url = f"http://127.0.0.1:{port}"
        self.startup_s: float | None = None

    async def start(self) -> LiteLLMProcess:
        """Start the proxy and wait until ``/health/readiness`` answers 200.

        Raises:
            RuntimeError: it exited, or was not ready in time (the message ends with its log's tail).
        """
        started = time.perf_counter()
        # A local file opened once before the child starts (the child keeps its own descriptor).
        with open(self.log_path, "wb") as log:  # noqa: ASYNC230
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        self.startup_s = time.perf_counter() - started
        self._ps = psutil.Process(self.process.pid)
        return self

    async def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                try:
                    async with session.get(self.url + "/health/readiness") as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                try:
                    status = await asyncio.wait_for(self.process.wait(), 0.25)
                except TimeoutError:
                    status = None
                if status is not None:
                    raise RuntimeError(f"litellm exited with status {status} before it was ready; {self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"litellm was not ready after {self.startup_timeout_s:.0f} s; {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        """The last lines of the proxy's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return "no log"
        return "last lines of its log:\n  " + "\n  ".join(text) if text else "its log is empty"

    def cpu_s(self) -> float:
        """User + system CPU seconds of the proxy and of its child processes, if any."""
        total = super().cpu_s()
        assert self._ps is not None
        for child in self._ps.children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    async def stop(self) -> None:
        """SIGTERM to its process group (then SIGKILL after 5 s); removes the temporary directory."""
        process = self.process
        if process is not None and process.returncode is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                async with asyncio.timeout(5.0):
                    await process.wait()
            except TimeoutError:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await process.wait()
        self._dir.cleanup()


def find_litellm(option: str | None) -> tuple[str | None, str]:
    """The ``litellm`` executable to run, or None and why not (a short reason)."""
    if option is not None:
        path = os.path.expanduser(option)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path, ""
        return None, f"--litellm {option}: no such executable"
    found = shutil.which("litellm")
    if found:
        return found, ""
    return None, "no `litellm` on PATH and no --litellm"


# The run.

def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Run the scenario: start mock, hub and (when found) LiteLLM, measure, print the table.

    Returns the exit status: 0 when every stream of every measured server was complete and
    exact, 1 otherwise, 2 for bad options.
    """
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    try:
        tokens = _tokens_for(args.concurrency, args.tokens, args.quick)
    except ValueError as exc:
        print(f"cbhub bench sse: {exc}", file=sys.stderr)
        return 2
    if args.coalesce == "off" and "chat" not in _endpoints_for(args.endpoint):
        print("cbhub bench sse: --coalesce off measures /v1/chat/completions only (the other endpoints have no "
              "\"coalesce\" field); add --endpoint chat", file=sys.stderr)
        return 2
    if repeat < 1 or args.timeout <= 0:
        print("cbhub bench sse: --repeat must be at least 1 and --timeout above 0", file=sys.stderr)
        return 2
    reporter.columns = COLUMNS
    status = asyncio.run(_main(args, reporter, list(zip(args.concurrency, tokens, strict=True)), repeat))
    reporter.table("sse: the hub's SSE endpoints, streams at the mock's maximum speed (medians)")
    _summary(reporter)
    return status


async def _main(args: argparse.Namespace, reporter: Reporter, levels: list[tuple[int, int]], repeat: int) -> int:
    executable, why_not = find_litellm(args.litellm)
    async with start_mock() as mock:
        hub = start_hub(mock.url)
        litellm = LiteLLMProcess(executable, mock.url, args.litellm_startup_timeout) if executable else None
        try:
            if litellm is not None:
                reporter.note(f"starting the LiteLLM proxy ({escape(executable)}) …")
            outcomes = await asyncio.gather(hub.start(), *([litellm.start()] if litellm else []),
                                            return_exceptions=True)
            if isinstance(outcomes[0], BaseException):
                raise outcomes[0]
            if litellm is not None and isinstance(outcomes[1], BaseException):
                reporter.note(f"[yellow]the LiteLLM proxy did not start:[/yellow] {escape(str(outcomes[1]))}")
                why_not = "it did not start"
                litellm = None
            if litellm is not None:
                reporter.note(f"LiteLLM proxy ready after {litellm.startup_s:.1f} s at {litellm.url}")
            else:
                reporter.note(f"[yellow]litellm skipped:[/yellow] {escape(why_not)}; {escape(LITELLM_INSTALL)}")
                reporter.emit({"scenario": "sse", "server": "litellm", "note": f"skipped: {why_not}"})
            targets = [Target("mock-direct", f"{mock.url}/v1/chat/completions", MOCK_MODEL, mock,
                              headers={"Authorization": "Bearer bench-key"})]
            if litellm is not None:
                targets.append(Target("litellm", f"{litellm.url}/v1/chat/completions", MOCK_MODEL, litellm,
                                      headers={"Authorization": f"Bearer {LITELLM_KEY}"}))
            for endpoint in _endpoints_for(args.endpoint):
                url = hub.url + ENDPOINTS[endpoint]
                if args.coalesce in ("on", "both"):
                    targets.append(Target("hub", url, f"openai/{MOCK_MODEL}", hub, endpoint=endpoint))
                if args.coalesce in ("off", "both") and endpoint == "chat":
                    targets.append(Target("hub-nocoalesce", url, f"openai/{MOCK_MODEL}", hub,
                                          extra={"coalesce": False}, endpoint=endpoint))
            return await _measure_all(args, reporter, targets, levels, repeat)
        finally:
            await hub.stop()
            if litellm is not None:
                await litellm.stop()


async def _measure_all(args: argparse.Namespace, reporter: Reporter, targets: list[Target],
                       levels: list[tuple[int, int]], repeat: int) -> int:
    status = 0
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        with reporter.progress("sse", total=len(levels) * len(targets) * (repeat + 1)) as advance:
            for streams, tokens in levels:
                baseline: dict[str, Any] | None = None
                litellm_row: dict[str, Any] | None = None
                for target in targets:
                    m = await measure(session, target, streams, tokens, repeat, args.timeout, advance)
                    row = _row(target, streams, tokens, repeat, m)
                    if target.name == "mock-direct":
                        baseline = row
                    elif baseline is not None:
                        for key in ("p50", "p99"):
                            mine, base = row[f"ttft_{key}_ms"], baseline[f"ttft_{key}_ms"]
                            row[f"added_ttft_{key}_ms"] = None if mine is None or base is None else mine - base
                    if target.name == "litellm":
                        litellm_row = row
                        version = m.headers.get("x-litellm-version")
                        row["peer_version"] = version
                        if version and version != LITELLM_VERSION:
                            row["note"] = f"litellm {version}, not {LITELLM_VERSION}"
                    elif (target.name.startswith("hub") and target.endpoint == "chat" and litellm_row is not None
                          and litellm_row["chunks_per_s"]):
                        row["ratio_vs_litellm"] = row["chunks_per_s"] / litellm_row["chunks_per_s"]
                    if not row["ok"]:
                        status = 1
                        where = f"{target.name} {ENDPOINTS[target.endpoint]}, {streams} stream(s)"
                        reporter.note(f"[red]{where}: {m.failed} failed stream(s):[/red] "
                                      f"{escape(str(m.first_error))}")
                    reporter.emit(row)
    return status


def _row(target: Target, streams: int, tokens: int, repeat: int, m: Measurement) -> dict[str, Any]:
    ttfts = sorted(m.ttfts_ms)
    per_1k = m.chunks / 1000
    return {
        "scenario": "sse",
        "server": target.name,
        "endpoint": ENDPOINTS[target.endpoint],
        "streams": streams,
        "tokens_per_stream": tokens,
        "repeats": repeat,
        "chunks": m.chunks,
        "events": m.events,
        "chunks_per_s": statistics.median(m.rates),
        "events_per_s": statistics.median(m.event_rates),
        "ttft_p50_ms": percentile(ttfts, 0.50),
        "ttft_p99_ms": percentile(ttfts, 0.99),
        "added_ttft_p50_ms": None,
        "added_ttft_p99_ms": None,
        "server_cpu_s_per_1k_chunks": m.server_cpu_s / per_1k if per_1k else None,
        "client_cpu_s_per_1k_chunks": m.client_cpu_s / per_1k if per_1k else None,
        "ratio_vs_litellm": None,
        "ok": m.failed == 0,
        "failed_streams": m.failed,
        "error": m.first_error,
        "note": None,
    }


def _summary(reporter: Reporter) -> None:
    """One terminal line per concurrency level: the hub against the target (10x, lower TTFT)."""
    rows = [row for row in reporter.rows if row.get("scenario") == "sse" and "streams" in row]
    for streams in dict.fromkeys(row["streams"] for row in rows):
        level = {row["server"]: row for row in rows
                 if row["streams"] == streams and row.get("endpoint") == ENDPOINTS["chat"]}
        peer = level.get("litellm")
        if peer is None:
            continue
        for name in ("hub", "hub-nocoalesce"):
            hub = level.get(name)
            if hub is None or hub.get("ratio_vs_litellm") is None:
                continue
            ratio = hub["ratio_vs_litellm"]
            hub_ttft, peer_ttft = hub.get("added_ttft_p50_ms"), peer.get("added_ttft_p50_ms")
            ttft_ok = hub_ttft is not None and peer_ttft is not None and hub_ttft < peer_ttft
            verdict = "meets" if ratio >= 10 and ttft_ok else "misses"
            reporter.note(
                f"{streams} stream(s), {name}: {ratio:.1f}x LiteLLM's chunks/s, added TTFT p50 "
                f"{_ms(hub_ttft)} vs {_ms(peer_ttft)} ms: {verdict} the target (>= 10x, lower added TTFT)"
            )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
