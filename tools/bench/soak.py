"""``cbhub bench soak``: normal clients and attackers against one hub, over time.

What runs
---------
The mock provider (hub/testing/mock_provider.py) and the hub (``cbhub serve``) run as child
processes on 127.0.0.1, the hub with a small memory budget (``--memory-budget-mb``, default 64),
``CBHUB_HTTP_HEADER_TIMEOUT_S`` (``--header-timeout-s``, default 2: half-open sockets should be
reaped), ``CBHUB_RETENTION_S`` (``--retention-s``, default 30; 3 with ``--quick``) and
``CBHUB_GRACE_PERIOD_S`` 5. Settings the hub does not know are ignored by it.

The run lasts ``--duration`` seconds (default 600; ``--quick``: 16) in three phases of the
same clock (seconds from the start of the normal clients):

``before``  0 to 20 % of the duration: normal clients only (the baseline);
``attack``  20 % to 60 %: normal clients and the attackers;
``after``   60 % to the end: normal clients only, after every attacker closed its sockets.

**Normal clients** (``--clients``, default 20; 6 with ``--quick``), in this process: one
WebSocket each, running completions one after another (``openai/gpt-4o-mini``, ``"coalesce":
false``, ``[[mock tokens=T tps=R seed=S]]``, T = ``--tokens`` 30, R = ``--tps`` 30 tokens/s,
then a pause of ``--pause-s`` 0.5 s). Each stream is checked: ``seq`` 1, 2, 3, ... without a
gap (a merged chunk's ``firstSeq`` included), its text equal to what the mock sent
(:func:`hub.testing.mock_provider.expected_text`), one ``completed`` at the end, within 60 s.
Measured per stream: time to first token (``completion`` sent → first ``content_chunk``), total
time (→ ``completed``), and the gaps between consecutive ``content_chunk`` arrivals (the mock
paces them 1000 / R ms apart). A ``completion`` the hub refuses (an ``error`` without
``completionId``: ``hub_overloaded``, ``too_many_completions``) is counted as *refused* and
retried after 0.5 s; it is not a broken stream. A stream is counted in the phase in which it
started.

**Attackers** (one child process, so that their work does not slow the normal clients' loop),
during the attack phase only; each keeps attacking until the phase ends:

``workflow_cycle``   ``create_workflow`` whose transitions form a cycle without agents (the
                     issue's hub freezer); expected answer ``error invalid_workflow``
``workflow_loop``    ``create_workflow`` whose agents loop forever (writer ↔ editor); expected
                     end ``error workflow_limit``
``memory``           raw WebSockets with a 4 KiB receive buffer that start a completion of a
                     16 MiB answer (``tokens=256 pad=65536``) and never read; after ``hold`` s
                     the socket is drained to see what the hub did (``closed 4008``, ``closed
                     1013``, ``error hub_overloaded``, ``completed``: the hub kept it all, ...)
``half_open``        ``--half-open`` TCP connections (default 200; 20 with ``--quick``) that send
                     a request line and one header line, then nothing; one closed by the hub is
                     counted as reaped (with the seconds it took) and replaced
``subscribe_flood``  one ``subscribe`` naming 60,000 malformed channels (540 KB)
``system_flood``     one ``subscribe`` naming ``system`` 50,000 times (450 KB); both floods are
                     followed by a ``ping``: the reply bytes before the ``pong`` are counted
``failing``          completions that fail upstream (``[[mock script=500,500,500]]``, a fresh
                     ``script_id`` each): expected end ``error provider_error``
``sse_nonreader``    ``POST /v1/chat/completions`` ``stream: true`` for a 16 MiB answer from a
                     raw socket with a 4 KiB receive buffer that is not read; drained after
                     ``hold`` s (``dropped``: the hub closed it; ``done``: it sent everything)

``--attacks NAME,...`` runs only some of them (to see which one costs what); the others
report ``sent: 0``.

One more connection (``observer``) subscribes to the ``system`` channel and records every
``circuit_state`` the hub publishes (a breaker opened by the failing requests would show there
and in the normal clients' ``provider_unavailable``).

Rows (JSON lines, ``scenario: "soak"``)
---------------------------------------
One ``row: "sample"`` every ``--interval`` seconds (default 1; 0.5 with ``--quick``), read from
the operating system and from ``GET /healthz``: ``t_s`` (seconds since the start), ``phase``,
``rss_bytes`` (VmRSS of the hub process), ``fds`` (entries of /proc/PID/fd), ``client_sockets``
(TCP sockets of the hub on its own port: its clients), ``upstream_sockets`` (to the mock
provider's port: the provider connection pool), ``tasks`` (``/healthz``'s ``tasks``, the hub's
``len(asyncio.all_tasks())``; null when the hub does not report it), ``hub_connections`` and
``hub_completions`` (``/healthz``), ``held_bytes`` (``/healthz``'s ``memory.held_bytes``, the
memory governor's estimate, when reported), ``healthz_ms`` (time to answer ``/healthz``; null
when it did not answer within 2 s), ``cpu_s`` (the hub's user + system CPU seconds so far),
``streams_completed`` (normal streams completed so far).

Then one ``row: "summary"`` (keys in :data:`SUMMARY_KEYS`):

- ``phases``: per phase, ``from_s``/``to_s`` and the normal clients' ``streams_started``,
  ``streams_completed`` (exact), ``streams_broken`` and ``broken`` (by reason), ``refused``
  (by error code), ``exact`` (every stream started in the phase completed exactly),
  ``ttft_p50_ms``, ``ttft_p99_ms``, ``total_p99_ms``, ``token_gap_p50_ms``,
  ``token_gap_p99_ms``; and the hub's ``rss_max_bytes``, ``fds_max``, ``tasks_max``,
  ``healthz_max_ms``, ``healthz_failures`` (samples where ``/healthz`` did not answer in 2 s).
- ``rss_baseline_bytes`` (median of the second half of the before phase), ``rss_max_bytes``,
  ``rss_end_bytes`` (median of the last 10 % of the run), ``rss_after_slope_bytes_per_s``
  (least-squares slope of RSS over the second half of the after phase: "no growth" is about 0).
- ``fds_baseline``, ``fds_end``, ``client_sockets_baseline``, ``client_sockets_end``,
  ``upstream_sockets_baseline``, ``upstream_sockets_end``, and ``fds_excess_end``: fds at the
  end minus the baseline, not counting the provider connection pool (idle pooled connections
  to the provider close after aiohttp's 15 s keep-alive, longer than a quick run's after phase).
- ``tasks_baseline``, ``tasks_end`` (null when the hub does not report tasks).
- ``attacks``: per attacker, ``sent`` and ``answers`` (what the hub answered, counted), plus
  ``max_reply_bytes``/``max_reply_frames`` for the floods and ``opened``, ``reaped_by_hub``,
  ``reap_p50_s``, ``reap_max_s``, ``held_to_end`` for ``half_open``.
- ``circuit_states``: the ``circuit_state`` messages seen (``t_s``, ``provider``, ``state``).
- ``settings``: the run's settings; ``ok``: every normal stream of every phase completed exactly,
  every phase completed at least one, the hub's client sockets at the end equal the baseline and
  ``fds_excess_end`` is at most 2. The exit status is 1 when not ``ok``.

``--png FILE`` draws RSS, open fds and tasks over time with the attack phase shaded
(:func:`tools.bench.plot.plot_soak`; needs matplotlib). ``python -m tools.bench.soak RESULTS.jsonl
--png FILE`` draws it again from a run's JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import pathlib
import random
import socket
import statistics
import sys
import time
import uuid
from typing import Any

import aiohttp
import orjson
import psutil
from rich.markup import escape

from hub.testing.mock_provider import expected_text
from tools.bench.procs import ServerProcess, start_hub, start_mock
from tools.bench.report import Reporter, percentile

__all__ = ["add_arguments", "run", "Settings", "SUMMARY_KEYS", "PHASE_KEYS", "ATTACKS", "phase_at", "main"]

MODEL = "openai/gpt-4o-mini"
PHASES = ("before", "attack", "after")
#: The attack phase, as shares of the duration.
ATTACK_FROM, ATTACK_TO = 0.2, 0.6
#: The attackers, in the order of the summary.
ATTACKS = ("workflow_cycle", "workflow_loop", "memory", "half_open", "subscribe_flood", "system_flood",
           "failing", "sse_nonreader")
#: Keys of the summary row.
SUMMARY_KEYS = (
    "scenario", "row", "duration_s", "phases", "rss_baseline_bytes", "rss_max_bytes", "rss_end_bytes",
    "rss_after_slope_bytes_per_s", "fds_baseline", "fds_max", "fds_end", "fds_excess_end",
    "client_sockets_baseline", "client_sockets_end", "upstream_sockets_baseline", "upstream_sockets_end",
    "tasks_baseline", "tasks_max", "tasks_end", "attacks", "circuit_states", "settings", "ok",
)
#: Keys of each phase in the summary's ``phases``.
PHASE_KEYS = (
    "from_s", "to_s", "streams_started", "streams_completed", "streams_broken", "broken", "refused", "exact",
    "ttft_p50_ms", "ttft_p99_ms", "total_p99_ms", "token_gap_p50_ms", "token_gap_p99_ms",
    "rss_max_bytes", "fds_max", "tasks_max", "healthz_max_ms", "healthz_failures",
)
#: A normal stream that takes longer than this is broken (seconds).
STREAM_TIMEOUT_S = 60.0
#: How long ``/healthz`` may take before a sample counts it as not answered (seconds).
HEALTHZ_TIMEOUT_S = 2.0
#: Most extra fds (provider pool aside) the hub may hold at the end for the run to be ok.
FDS_MARGIN = 2
#: The memory attackers' answer: 256 tokens of 64 KiB each, about 16 MiB.
BIG_ANSWER = "[[mock tokens=256 pad=65536]]"
#: Receive buffer of the attackers that do not read (bytes; the kernel doubles it).
NONREADER_RCVBUF = 4096


# Command line.

def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The ``soak`` scenario's options (``name`` is the scenario name, unused)."""
    parser.add_argument("--duration", type=float, default=None,
                        help="length of the run in seconds (default 600; --quick: 16)")
    parser.add_argument("--clients", type=int, default=None, help="normal WebSocket clients (default 20; --quick: 6)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="tokens per normal completion (default 30; --quick: 10)")
    parser.add_argument("--tps", type=float, default=30.0, help="tokens per second of a normal completion (default 30)")
    parser.add_argument("--pause-s", type=float, default=0.5, help="pause between a client's completions, in s")
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds between two samples (default 1; --quick: 0.5)")
    parser.add_argument("--memory-budget-mb", type=float, default=64.0,
                        help="the hub's limits.memory_budget_bytes, in MiB (default 64)")
    parser.add_argument("--header-timeout-s", type=float, default=2.0,
                        help="the hub's http.header_timeout_s (default 2)")
    parser.add_argument("--retention-s", type=float, default=None,
                        help="the hub's lifecycle.retention_s (default 30; --quick: 3)")
    parser.add_argument("--half-open", type=int, default=None,
                        help="half-open HTTP sockets held during the attack (default 200; --quick: 20)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the hub's event loop")
    parser.add_argument("--attacks", type=_attack_list, default=list(ATTACKS),
                        help=f"comma-separated attackers to run (default all: {','.join(ATTACKS)})")
    parser.add_argument("--png", type=pathlib.Path, default=None,
                        help="also draw RSS, fds and tasks over time into this PNG (needs matplotlib)")
    parser.add_argument("--quick", action="store_true", help="a short run for the test suite (16 s)")


def _attack_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ATTACKS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown attacker(s) {', '.join(unknown)}; expected some of {', '.join(ATTACKS)}")
    return names


@dataclasses.dataclass
class Settings:
    """A run's settings (see the options; durations in seconds, sizes in bytes).

    Attributes:
        duration_s: length of the run, s.
        clients: normal WebSocket clients.
        tokens: tokens per normal completion.
        tps: tokens per second of a normal completion.
        pause_s: pause between two completions of one client, s.
        interval_s: seconds between samples.
        memory_budget_bytes: the hub's memory budget, bytes.
        header_timeout_s: the hub's request-head timeout, s.
        retention_s: the hub's retention of finished streams, s.
        half_open: half-open sockets held during the attack.
        memory_attackers: concurrent WebSocket non-readers.
        sse_attackers: concurrent SSE non-readers.
        hold_s: how long a non-reader holds its socket before draining it, s.
        flood_pause_s: pause between two floods, s.
        loop: the hub's event loop.
        attacks: the attackers that run (:data:`ATTACKS` by default).
    """

    duration_s: float = 600.0
    clients: int = 20
    tokens: int = 30
    tps: float = 30.0
    pause_s: float = 0.5
    interval_s: float = 1.0
    memory_budget_bytes: int = 64 << 20
    header_timeout_s: float = 2.0
    retention_s: float = 30.0
    half_open: int = 200
    memory_attackers: int = 3
    sse_attackers: int = 2
    hold_s: float = 4.0
    flood_pause_s: float = 2.0
    loop: str = "asyncio"
    attacks: tuple[str, ...] = ATTACKS

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """The settings of a command line (``--quick`` changes the defaults)."""
        quick = bool(args.quick)
        return cls(
            duration_s=args.duration or (16.0 if quick else 600.0),
            clients=args.clients or (6 if quick else 20),
            tokens=args.tokens or (10 if quick else 30),
            tps=args.tps,
            pause_s=args.pause_s,
            interval_s=args.interval or (0.5 if quick else 1.0),
            memory_budget_bytes=int(args.memory_budget_mb * 2**20),
            header_timeout_s=args.header_timeout_s,
            retention_s=args.retention_s if args.retention_s is not None else (3.0 if quick else 30.0),
            half_open=args.half_open if args.half_open is not None else (20 if quick else 200),
            memory_attackers=2 if quick else 3,
            sse_attackers=1 if quick else 2,
            hold_s=1.5 if quick else 4.0,
            flood_pause_s=0.5 if quick else 2.0,
            loop=args.loop,
            attacks=tuple(args.attacks),
        )


def phase_at(t_s: float, duration_s: float) -> str:
    """The phase (``before``, ``attack``, ``after``) at ``t_s`` seconds into a run of ``duration_s``."""
    if t_s < ATTACK_FROM * duration_s:
        return "before"
    if t_s < ATTACK_TO * duration_s:
        return "attack"
    return "after"


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Run the soak; returns 0 when the summary is ``ok``, else 1."""
    settings = Settings.from_args(args)
    summary = asyncio.run(_main(settings, reporter))
    if args.png is not None:
        from tools.bench.plot import plot_soak

        try:
            plot_soak(reporter.rows, args.png)
            reporter.note(f"wrote {args.png}")
        except ImportError:
            reporter.note(escape("no plot: matplotlib is not installed (pip install 'circuit-breaker-hub[plot]')"))
    return 0 if summary["ok"] else 1


# Normal clients.

@dataclasses.dataclass
class PhaseStreams:
    """What the normal clients saw of the streams that started in one phase.

    Attributes:
        started: completions acknowledged by the hub.
        completed: streams that ended with ``completed``, gap-free, with the exact text.
        broken: the others, counted by reason.
        refused: ``completion`` messages refused, by error code.
        ttft_ms: time to first token per completed stream, ms.
        total_ms: time to ``completed`` per completed stream, ms.
        gaps_ms: time between consecutive ``content_chunk`` arrivals, ms.
    """

    started: int = 0
    completed: int = 0
    broken: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    refused: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    ttft_ms: list[float] = dataclasses.field(default_factory=list)
    total_ms: list[float] = dataclasses.field(default_factory=list)
    gaps_ms: list[float] = dataclasses.field(default_factory=list)


class _Refused(Exception):
    """The hub refused a ``completion`` (an ``error`` without ``completionId``)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class _Broken(Exception):
    """A normal stream did not complete exactly."""


class NormalClients:
    """``settings.clients`` WebSocket clients running paced completions until ``stop_at``.

    Args:
        ws_url: the hub's ``/ws/stream`` URL.
        settings: the run's settings.
        started_at: ``time.monotonic()`` of the start of the run (phase clock).
    """

    def __init__(self, ws_url: str, settings: Settings, started_at: float) -> None:
        self.ws_url = ws_url
        self.settings = settings
        self.started_at = started_at
        self.stop_at = started_at + settings.duration_s
        self.phases = {phase: PhaseStreams() for phase in PHASES}
        self.disconnects = 0

    def completed(self) -> int:
        """Streams completed exactly so far, all phases."""
        return sum(stats.completed for stats in self.phases.values())

    async def run(self) -> None:
        """Run every client until the end of the run (each finishes its current stream)."""
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self._client(session, index) for index in range(self.settings.clients)))

    async def _client(self, session: aiohttp.ClientSession, index: int) -> None:
        rng = random.Random(index)
        await asyncio.sleep(rng.random() * self.settings.pause_s)  # not all in step
        number = 0
        while time.monotonic() < self.stop_at:
            try:
                async with session.ws_connect(self.ws_url, max_msg_size=0) as ws:
                    while time.monotonic() < self.stop_at:
                        number += 1
                        await self._one(ws, index, number, rng.randrange(1000))
                        await asyncio.sleep(self.settings.pause_s * (0.5 + rng.random()))
            except (aiohttp.ClientError, OSError, ConnectionError) as exc:
                self.disconnects += 1
                self.phases[self._phase()].broken[f"disconnected: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)

    def _phase(self) -> str:
        return phase_at(time.monotonic() - self.started_at, self.settings.duration_s)

    async def _one(self, ws: aiohttp.ClientWebSocketResponse, index: int, number: int, seed: int) -> None:
        """One completion, checked; raises ConnectionError when the connection broke."""
        settings = self.settings
        completion_id = f"n{index}-{number}-{uuid.uuid4().hex[:8]}"
        stats = self.phases[self._phase()]
        message = {
            "type": "completion", "id": completion_id, "model": MODEL, "coalesce": False,
            "messages": [{"role": "user", "content": f"soak [[mock tokens={settings.tokens} tps={settings.tps:g} "
                                                     f"seed={seed}]]"}],
        }
        sent = time.perf_counter()
        await ws.send_str(orjson.dumps(message).decode())
        try:
            ttft, total, gaps = await asyncio.wait_for(
                self._read(ws, completion_id, expected_text(settings.tokens, seed), sent), STREAM_TIMEOUT_S)
        except _Refused as refused:
            stats.refused[refused.code] += 1
            await asyncio.sleep(0.5)
            return
        except _Broken as broken:
            stats.started += 1
            stats.broken[str(broken)] += 1
            return
        except TimeoutError:
            stats.started += 1
            stats.broken["timeout"] += 1
            raise ConnectionError("a stream timed out") from None
        stats.started += 1
        stats.completed += 1
        stats.ttft_ms.append(ttft)
        stats.total_ms.append(total)
        stats.gaps_ms.extend(gaps)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, completion_id: str, expected: str,
                    sent: float) -> tuple[float, float, list[float]]:
        """Read one stream to its end; returns (TTFT ms, total ms, chunk gaps ms)."""
        next_seq = 1
        parts: list[str] = []
        arrivals: list[float] = []
        while True:
            msg = await ws.receive()
            now = time.perf_counter()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"{msg.type.name} during a stream")
            for line in msg.data.split("\n"):
                event = orjson.loads(line)
                kind = event.get("type")
                if event.get("completionId") != completion_id:
                    if kind == "error" and "completionId" not in event:
                        raise _Refused(event["error"]["code"])
                    continue  # subscribed (no seq), pong
                seq = event.get("seq")
                if seq is None:
                    continue  # the subscribed acknowledgement
                first = event.get("firstSeq", seq)
                if first != next_seq:
                    raise _Broken(f"seq gap: expected {next_seq}, got {first}")
                next_seq = seq + 1
                if kind == "content_chunk":
                    parts.append(event["content"])
                    arrivals.append(now)
                elif kind == "completed":
                    if "".join(parts) != expected:
                        raise _Broken("text differs from the mock's")
                    if not arrivals:
                        raise _Broken("no content")
                    gaps = [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:], strict=False)]
                    return (arrivals[0] - sent) * 1000, (now - sent) * 1000, gaps
                elif kind == "error":
                    raise _Broken(f"error {event['error']['code']}")


async def _observe_system(ws_url: str, started_at: float, states: list[dict[str, Any]]) -> None:
    """Record the ``circuit_state`` messages of the ``system`` channel until cancelled."""
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
            await ws.send_str('{"type":"subscribe","channels":["system"]}')
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                for line in msg.data.split("\n"):
                    event = orjson.loads(line)
                    if event.get("type") == "circuit_state":
                        states.append({"t_s": round(time.monotonic() - started_at, 2), "provider": event["provider"],
                                       "state": event["state"]})
    except (aiohttp.ClientError, OSError):
        pass


# Sampling the hub.

class Sampler:
    """Reads the hub's RSS, fds, sockets, CPU and ``/healthz`` once per interval.

    Args:
        hub: the hub process.
        mock_port: the mock provider's port (to tell the provider pool's sockets apart).
    """

    def __init__(self, hub: ServerProcess, mock_port: int) -> None:
        assert hub.process is not None
        self.pid = hub.process.pid
        self.hub = hub
        self.hub_port = int(hub.url.rsplit(":", 1)[1])
        self.mock_port = mock_port
        self.ps = psutil.Process(self.pid)

    def rss_bytes(self) -> int | None:
        """VmRSS of the hub, in bytes (None when unreadable)."""
        try:
            with open(f"/proc/{self.pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def fds(self) -> int | None:
        """Open file descriptors of the hub (None when unreadable)."""
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None

    def sockets(self) -> tuple[int | None, int | None]:
        """(client sockets, provider sockets): the hub's TCP sockets on its own port (listener
        excepted) and those to the mock provider's port."""
        try:
            connections = self.ps.net_connections(kind="tcp")
        except (psutil.Error, OSError):
            return None, None
        clients = sum(1 for c in connections if c.laddr and c.laddr.port == self.hub_port
                      and c.status != psutil.CONN_LISTEN)
        upstream = sum(1 for c in connections if c.raddr and c.raddr.port == self.mock_port)
        return clients, upstream

    async def healthz(self, session: aiohttp.ClientSession) -> tuple[float | None, dict[str, Any]]:
        """(milliseconds to answer, the JSON body) of ``GET /healthz``; (None, {}) when it did
        not answer 200 within :data:`HEALTHZ_TIMEOUT_S`."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(HEALTHZ_TIMEOUT_S):
                async with session.get(self.hub.url + "/healthz") as response:
                    body = await response.json()
                    if response.status != 200 or not isinstance(body, dict):
                        return None, {}
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None, {}
        return (time.perf_counter() - started) * 1000, body

    async def sample(self, session: aiohttp.ClientSession, t_s: float, phase: str) -> dict[str, Any]:
        """One sample row (see the module docstring)."""
        rss, fds = self.rss_bytes(), self.fds()
        clients, upstream = self.sockets()
        try:
            cpu = self.hub.cpu_s()
        except psutil.Error:
            cpu = None
        healthz_ms, body = await self.healthz(session)
        memory: dict[str, Any] = body["memory"] if isinstance(body.get("memory"), dict) else {}
        return {
            "scenario": "soak", "row": "sample", "t_s": round(t_s, 2), "phase": phase, "rss_bytes": rss, "fds": fds,
            "client_sockets": clients, "upstream_sockets": upstream, "tasks": body.get("tasks"),
            "hub_connections": body.get("connections"), "hub_completions": body.get("completions"),
            "held_bytes": memory.get("held_bytes"),
            "healthz_ms": round(healthz_ms, 2) if healthz_ms is not None else None,
            "cpu_s": round(cpu, 3) if cpu is not None else None,
        }


# The attackers (a child process).

@dataclasses.dataclass
class AttackPlan:
    """What the attacker process does.

    Attributes:
        host, port: the hub's address.
        start_at, stop_at: ``time.monotonic()`` of the attack's start and end (one clock for
            every process of a Linux machine).
        settings: the run's settings.
    """

    host: str
    port: int
    start_at: float
    stop_at: float
    settings: Settings


class _Tally:
    """Counts of one attacker: messages sent and the hub's answers."""

    def __init__(self) -> None:
        self.sent = 0
        self.answers: collections.Counter[str] = collections.Counter()
        self.extra: dict[str, Any] = {}

    def report(self) -> dict[str, Any]:
        """``{"sent": n, "answers": {answer: count}, ...extra}``."""
        return {"sent": self.sent, "answers": dict(self.answers), **self.extra}


def _cycle_definition() -> dict[str, Any]:
    """Transitions a -> b -> a without an agent; the final place cannot be reached."""
    return {"places": ["a", "b", "z"], "initialPlace": "a", "finalPlaces": ["z"],
            "transitions": [{"id": "ab", "from": "a", "to": "b"}, {"id": "ba", "from": "b", "to": "a"}]}


def _loop_definition() -> dict[str, Any]:
    """writer -> editor -> writer ... forever: the way out is never taken."""
    return {
        "places": ["draft", "review", "done"], "initialPlace": "draft", "finalPlaces": ["done"],
        "agents": [{"id": "writer", "model": MODEL, "prompt": "write [[mock tokens=2]]"},
                   {"id": "editor", "model": MODEL, "prompt": "edit [[mock tokens=2]]"}],
        "transitions": [
            {"id": "write", "from": "draft", "to": "review", "agent": "writer"},
            {"id": "accept", "from": "review", "to": "done", "condition": {"path": "input.never", "op": "exists"}},
            {"id": "redo", "from": "review", "to": "draft", "agent": "editor"},
        ],
    }


def _answer(event: dict[str, Any]) -> str:
    """A short name of a hub message: ``error <code>`` or its type."""
    if event.get("type") == "error":
        error = event.get("error") or {}
        return f"error {error.get('code')}"
    return str(event.get("type"))


class _Attack:
    """The attacker process's attacks, each a loop until ``plan.stop_at``."""

    def __init__(self, plan: AttackPlan) -> None:
        self.plan = plan
        self.ws_url = f"ws://{plan.host}:{plan.port}/ws/stream"
        self.tallies = {name: _Tally() for name in ATTACKS}

    def left(self) -> float:
        """Seconds until the end of the attack (negative after it)."""
        return self.plan.stop_at - time.monotonic()

    async def run(self) -> dict[str, Any]:
        await asyncio.sleep(max(0.0, self.plan.start_at - time.monotonic()))
        settings = self.plan.settings
        async with aiohttp.ClientSession() as session:
            on = set(settings.attacks)
            loops = []
            if on & {"workflow_cycle", "workflow_loop"}:
                loops.append(self._workflows(session))
            if on & {"subscribe_flood", "system_flood"}:
                loops.append(self._floods(session))
            if "failing" in on:
                loops.append(self._failing(session))
            loops += [self._memory() for _ in range(settings.memory_attackers if "memory" in on else 0)]
            loops += [self._sse() for _ in range(settings.sse_attackers if "sse_nonreader" in on else 0)]
            loops += [self._half_open(n) for n in range(settings.half_open if "half_open" in on else 0)]
            tasks = [asyncio.create_task(self._guard(loop)) for loop in loops]
            await asyncio.wait(tasks, timeout=max(0.0, self.left()) + 2.0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        reaps = sorted(self.tallies["half_open"].extra.pop("reap_s", []))
        half_open = self.tallies["half_open"].extra
        half_open["reap_p50_s"] = percentile(reaps, 0.5)
        half_open["reap_max_s"] = reaps[-1] if reaps else None
        return {name: tally.report() for name, tally in self.tallies.items()}

    async def _guard(self, loop: Any) -> None:
        try:
            await loop
        except asyncio.CancelledError:
            pass

    async def _ws_loop(self, session: aiohttp.ClientSession, name: str, body: Any) -> None:
        """Run ``body(ws)`` on a WebSocket until the end of the attack, reconnecting after a failure."""
        while self.left() > 0:
            try:
                async with session.ws_connect(self.ws_url, max_msg_size=0) as ws:
                    while self.left() > 0:
                        await body(ws)
            except (aiohttp.ClientError, OSError, ConnectionError, TimeoutError) as exc:
                self.tallies[name].answers[f"connection lost: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)

    async def _until(self, ws: aiohttp.ClientWebSocketResponse, done: Any, timeout_s: float) -> dict[str, Any]:
        """Read messages until ``done(event)``; returns that event."""
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"{msg.type.name} ({ws.close_code})")
                for line in msg.data.split("\n"):
                    event: dict[str, Any] = orjson.loads(line)
                    if done(event):
                        return event

    async def _workflows(self, session: aiohttp.ClientSession) -> None:
        cycle, loop = self.tallies["workflow_cycle"], self.tallies["workflow_loop"]
        on = set(self.plan.settings.attacks)

        async def body(ws: aiohttp.ClientWebSocketResponse) -> None:
            if "workflow_cycle" in on:
                rid = uuid.uuid4().hex[:12]
                await ws.send_str(orjson.dumps({"type": "create_workflow", "definition": _cycle_definition(),
                                                "input": {}, "rid": rid}).decode())
                cycle.sent += 1
                event = await self._until(ws, lambda e: e.get("rid") == rid, 30)
                cycle.answers[_answer(event)] += 1
            if "workflow_loop" not in on:
                await asyncio.sleep(min(1.0, max(0.0, self.left())))
                return
            workflow_id = f"loop-{uuid.uuid4().hex[:12]}"
            await ws.send_str(orjson.dumps({"type": "create_workflow", "workflowId": workflow_id,
                                            "definition": _loop_definition(), "input": {}}).decode())
            loop.sent += 1
            event = await self._until(
                ws, lambda e: (e.get("workflowId") == workflow_id and e.get("type") in ("error", "workflow_completed"))
                or (e.get("type") == "error" and "workflowId" not in e and "completionId" not in e), 120)
            loop.answers[_answer(event)] += 1
            await asyncio.sleep(min(1.0, max(0.0, self.left())))

        await self._ws_loop(session, "workflow_loop", body)

    async def _floods(self, session: aiohttp.ClientSession) -> None:
        floods = [(name, channels) for name, channels in (("subscribe_flood", [f"b{n:05d}" for n in range(60_000)]),
                                                          ("system_flood", ["system"] * 50_000))
                  if name in self.plan.settings.attacks]
        turn = 0

        async def body(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal turn
            name, channels = floods[turn % len(floods)]
            turn += 1
            tally = self.tallies[name]
            rid = uuid.uuid4().hex[:12]
            await ws.send_str(orjson.dumps({"type": "subscribe", "channels": channels}).decode())
            await ws.send_str(orjson.dumps({"type": "ping", "rid": rid}).decode())
            tally.sent += 1
            replies, frames = 0, 0
            async with asyncio.timeout(60):
                while True:
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        raise ConnectionError(f"{msg.type.name} ({ws.close_code})")
                    if f'"rid":"{rid}"' in msg.data and '"pong"' in msg.data:
                        break
                    replies += len(msg.data.encode())
                    frames += 1
                    codes = {_answer(orjson.loads(line)) for line in msg.data.split("\n")}
                    for code in codes:
                        tally.answers[code] += 1
            tally.extra["max_reply_bytes"] = max(tally.extra.get("max_reply_bytes", 0), replies)
            tally.extra["max_reply_frames"] = max(tally.extra.get("max_reply_frames", 0), frames)
            await asyncio.sleep(min(self.plan.settings.flood_pause_s, max(0.0, self.left())))

        await self._ws_loop(session, "subscribe_flood", body)

    async def _failing(self, session: aiohttp.ClientSession) -> None:
        tally = self.tallies["failing"]

        async def body(ws: aiohttp.ClientWebSocketResponse) -> None:
            completion_id = f"fail-{uuid.uuid4().hex[:12]}"
            await ws.send_str(orjson.dumps({
                "type": "completion", "id": completion_id, "model": MODEL,
                "messages": [{"role": "user", "content": f"fail [[mock script=500,500,500 "
                                                         f"script_id={completion_id}]]"}],
            }).decode())
            tally.sent += 1
            event = await self._until(
                ws, lambda e: (e.get("completionId") == completion_id and e.get("type") in ("error", "completed"))
                or (e.get("type") == "error" and "completionId" not in e), 60)
            tally.answers[_answer(event)] += 1
            await asyncio.sleep(min(0.5, max(0.0, self.left())))

        await self._ws_loop(session, "failing", body)

    async def _open_raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to the hub with a small receive buffer (a client that reads slowly)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NONREADER_RCVBUF)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (self.plan.host, self.plan.port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def _memory(self) -> None:
        """WebSocket clients that start a 16 MiB answer and do not read it."""
        tally = self.tallies["memory"]
        while self.left() > 0:
            writer: asyncio.StreamWriter | None = None
            try:
                reader, writer = await self._open_raw()
                key = base64.b64encode(os.urandom(16)).decode()
                writer.write((f"GET /ws/stream HTTP/1.1\r\nHost: {self.plan.host}:{self.plan.port}\r\n"
                              f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n").encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                if b" 101 " not in head.split(b"\r\n", 1)[0]:
                    tally.answers[f"handshake {head.split(b' ', 2)[1].decode(errors='replace')}"] += 1
                    await asyncio.sleep(0.5)
                    continue
                message = {"type": "completion", "id": f"mem-{uuid.uuid4().hex[:12]}", "model": MODEL,
                           "messages": [{"role": "user", "content": f"big {BIG_ANSWER}"}]}
                writer.write(_ws_frame(orjson.dumps(message)))
                tally.sent += 1
                await asyncio.sleep(max(0.0, min(self.plan.settings.hold_s, self.left())))
                tally.answers[await _drain_ws(reader, min(5.0, max(0.5, self.left() + 1.0)))] += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
                tally.answers[f"exception {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
            finally:
                if writer is not None:
                    writer.transport.abort()

    async def _sse(self) -> None:
        """SSE clients of ``/v1/chat/completions`` that ask for a 16 MiB answer and do not read it."""
        tally = self.tallies["sse_nonreader"]
        body = orjson.dumps({"model": MODEL, "stream": True,
                             "messages": [{"role": "user", "content": f"big {BIG_ANSWER}"}]})
        while self.left() > 0:
            writer: asyncio.StreamWriter | None = None
            try:
                reader, writer = await self._open_raw()
                writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.plan.host}:{self.plan.port}\r\n"
                              f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
                tally.sent += 1
                await asyncio.sleep(max(0.0, min(self.plan.settings.hold_s, self.left())))
                tally.answers[await _drain_sse(reader, min(5.0, max(0.5, self.left() + 1.0)))] += 1
            except (OSError, TimeoutError) as exc:
                tally.answers[f"exception {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
            finally:
                if writer is not None:
                    writer.transport.abort()

    async def _half_open(self, index: int) -> None:
        """A connection that sends a request line and one header line, then nothing; replaced
        when the hub closes it."""
        tally = self.tallies["half_open"]
        extra = tally.extra
        for key in ("opened", "reaped_by_hub", "held_to_end"):
            extra.setdefault(key, 0)
        reaps: list[float] = extra.setdefault("reap_s", [])
        await asyncio.sleep(index * 0.005)  # not 200 SYNs in one instant
        while self.left() > 0:
            writer: asyncio.StreamWriter | None = None
            sent = time.monotonic()
            try:
                reader, writer = await asyncio.open_connection(self.plan.host, self.plan.port)
                writer.write(f"GET /healthz HTTP/1.1\r\nHost: {self.plan.host}:{self.plan.port}\r\n".encode())
                sent = time.monotonic()
                extra["opened"] += 1
                tally.sent += 1
                try:
                    data = await asyncio.wait_for(reader.read(65536), max(0.01, self.left()))
                except TimeoutError:
                    extra["held_to_end"] += 1
                    tally.answers["held to the end"] += 1
                    return
                reaps.append(round(time.monotonic() - sent, 3))
                extra["reaped_by_hub"] += 1
                status = data.split(b" ", 2)[1].decode(errors="replace") if data.startswith(b"HTTP/") else None
                tally.answers[f"answered {status}" if status else "closed"] += 1
                await asyncio.sleep(0.2)
            except (ConnectionError, OSError) as exc:
                if writer is not None:
                    reaps.append(round(time.monotonic() - sent, 3))
                    extra["reaped_by_hub"] += 1
                    tally.answers["reset"] += 1
                else:
                    tally.answers[f"connect failed: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
            finally:
                if writer is not None:
                    writer.transport.abort()


def _ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client WebSocket frame (RFC 6455 §5.2) carrying ``payload``."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    mask = os.urandom(4)
    keystream = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(size, "big")
    return header + mask + masked


async def _drain_ws(reader: asyncio.StreamReader, timeout_s: float) -> str:
    """Read a non-reader's WebSocket to its end: what the hub did with it.

    Returns ``closed <code>`` (a close frame), ``error <code>`` (the stream's terminal error),
    ``completed`` (the whole answer was held for it), ``eof`` (the connection ended without a
    close frame) or ``open`` (still streaming after ``timeout_s`` seconds)."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                head = await reader.readexactly(2)
                opcode, size = head[0] & 0x0F, head[1] & 0x7F
                if size == 126:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                elif size == 127:
                    size = int.from_bytes(await reader.readexactly(8), "big")
                payload = await reader.readexactly(size)
                if opcode == 8:
                    code = int.from_bytes(payload[:2], "big") if size >= 2 else None
                    return f"closed {code}"
                if opcode == 1 and size < 4096 and payload.startswith(b'{"type":"error"'):
                    return _answer(orjson.loads(payload.split(b"\n", 1)[0]))
                if opcode == 1 and payload.startswith(b'{"type":"completed"'):
                    return "completed"
    except TimeoutError:
        return "open"
    except (asyncio.IncompleteReadError, OSError):
        return "eof"


async def _drain_sse(reader: asyncio.StreamReader, timeout_s: float) -> str:
    """Read a non-reader's SSE response to its end: ``done`` (``data: [DONE]``: the hub sent the
    whole answer), ``dropped`` (the connection ended before it), ``HTTP <status>`` (not 200)
    or ``open`` (still streaming after ``timeout_s`` seconds)."""
    tail = b""
    status = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    break
                if status is None:
                    status = data.split(b" ", 2)[1].decode(errors="replace")
                tail = (tail + data)[-64:]
                if b"data: [DONE]" in tail:
                    return "done"
    except TimeoutError:
        return f"HTTP {status}" if status not in (None, "200") else "open"
    except OSError:  # reset
        pass
    if status not in (None, "200"):
        return f"HTTP {status}"
    return "dropped"


def _attack_entry(plan: AttackPlan, pipe: multiprocessing.connection.Connection) -> None:
    """The attacker process: run the attacks, send their tallies to the parent."""
    try:
        result: tuple[str, Any] = ("ok", asyncio.run(_Attack(plan).run()))
    except Exception as exc:  # reported to the parent, which records it
        result = ("error", f"{type(exc).__name__}: {exc}")
    pipe.send(result)


# The run.

async def _main(settings: Settings, reporter: Reporter) -> dict[str, Any]:
    mock = await start_mock().start()
    hub: ServerProcess | None = None
    try:
        hub = await start_hub(
            mock.url, loop=settings.loop, memory_budget_bytes=settings.memory_budget_bytes,
            http_header_timeout_s=settings.header_timeout_s, retention_s=settings.retention_s,
            grace_period_s=5).start()
        return await _soak(settings, reporter, mock, hub)
    finally:
        if hub is not None:
            await hub.stop()
        await mock.stop()


async def _soak(settings: Settings, reporter: Reporter, mock: ServerProcess, hub: ServerProcess) -> dict[str, Any]:
    host, port = hub.url.removeprefix("http://").rsplit(":", 1)
    ws_url = f"ws://{host}:{port}/ws/stream"
    sampler = Sampler(hub, int(mock.url.rsplit(":", 1)[1]))
    started_at = time.monotonic()
    duration = settings.duration_s
    plan = AttackPlan(host, int(port), started_at + ATTACK_FROM * duration, started_at + ATTACK_TO * duration,
                      settings)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    attacker = context.Process(target=_attack_entry, args=(plan, child), daemon=True)
    attacker.start()
    child.close()
    states: list[dict[str, Any]] = []
    observer = asyncio.create_task(_observe_system(ws_url, started_at, states))
    clients = NormalClients(ws_url, settings, started_at)
    running = asyncio.create_task(clients.run())
    samples: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(force_close=True)
    with reporter.progress("soak", total=round(duration)) as advance:
        async with aiohttp.ClientSession(connector=connector) as session:
            tick = 0
            while True:
                t_s = time.monotonic() - started_at
                if t_s >= duration:
                    break
                row = await sampler.sample(session, t_s, phase_at(t_s, duration))
                row["streams_completed"] = clients.completed()
                reporter.emit(row)
                samples.append(row)
                tick += 1
                await asyncio.sleep(max(0.0, started_at + tick * settings.interval_s - time.monotonic()))
                advance(settings.interval_s)
    try:
        await asyncio.wait_for(running, STREAM_TIMEOUT_S)
    except TimeoutError:
        reporter.note("some normal clients did not finish their last stream")
    observer.cancel()
    await asyncio.gather(observer, return_exceptions=True)
    loop = asyncio.get_running_loop()
    status, attacks = await loop.run_in_executor(None, _receive, parent, 60.0)
    attacker.join(timeout=5)
    if attacker.is_alive():
        attacker.kill()
    if status != "ok":
        reporter.note(f"the attacker process failed: {attacks}")
        attacks = {"error": attacks}
    summary = summarize(settings, samples, clients, attacks, states)
    reporter.emit(summary)
    _notes(reporter, summary)
    return summary


def _receive(pipe: multiprocessing.connection.Connection, timeout_s: float) -> tuple[str, Any]:
    try:
        if not pipe.poll(timeout_s):
            return "error", f"no result within {timeout_s} s"
        status, payload = pipe.recv()
        return str(status), payload
    except (EOFError, OSError):
        return "error", "the attacker process died"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(x, y)`` points; None with fewer than 2 distinct x."""
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


def _ms(values: list[float], fraction: float) -> float | None:
    value = percentile(sorted(values), fraction)
    return round(value, 2) if value is not None else None


def summarize(settings: Settings, samples: list[dict[str, Any]], clients: NormalClients,
              attacks: dict[str, Any], states: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary row of a run (keys: :data:`SUMMARY_KEYS`; see the module docstring)."""
    duration = settings.duration_s
    bounds = {"before": (0.0, ATTACK_FROM * duration), "attack": (ATTACK_FROM * duration, ATTACK_TO * duration),
              "after": (ATTACK_TO * duration, duration)}

    def values(key: str, rows: list[dict[str, Any]]) -> list[Any]:
        return [row[key] for row in rows if row.get(key) is not None]

    def biggest(key: str, rows: list[dict[str, Any]]) -> Any:
        found = values(key, rows)
        return max(found) if found else None

    phases: dict[str, dict[str, Any]] = {}
    for phase in PHASES:
        stats = clients.phases[phase]
        rows = [row for row in samples if row["phase"] == phase]
        broken = sum(stats.broken.values())
        phases[phase] = {
            "from_s": bounds[phase][0], "to_s": bounds[phase][1],
            "streams_started": stats.started, "streams_completed": stats.completed, "streams_broken": broken,
            "broken": dict(stats.broken), "refused": dict(stats.refused),
            "exact": broken == 0 and stats.completed == stats.started,
            "ttft_p50_ms": _ms(stats.ttft_ms, 0.5), "ttft_p99_ms": _ms(stats.ttft_ms, 0.99),
            "total_p99_ms": _ms(stats.total_ms, 0.99),
            "token_gap_p50_ms": _ms(stats.gaps_ms, 0.5), "token_gap_p99_ms": _ms(stats.gaps_ms, 0.99),
            "rss_max_bytes": biggest("rss_bytes", rows), "fds_max": biggest("fds", rows),
            "tasks_max": biggest("tasks", rows), "healthz_max_ms": biggest("healthz_ms", rows),
            "healthz_failures": sum(1 for row in rows if row["healthz_ms"] is None),
        }
    before_from, before_to = bounds["before"]
    baseline = [row for row in samples if (before_from + before_to) / 2 <= row["t_s"] < before_to]
    baseline = baseline or [row for row in samples if row["phase"] == "before"]
    end = [row for row in samples if row["t_s"] >= 0.9 * duration] or samples[-1:]
    after_from, _ = bounds["after"]
    late_after = [row for row in samples if row["t_s"] >= (after_from + duration) / 2 and row.get("rss_bytes")]

    def base(key: str, rows: list[dict[str, Any]]) -> Any:
        middle = _median(values(key, rows))
        return round(middle) if middle is not None else None

    fds_base, fds_end = base("fds", baseline), base("fds", end)
    up_base, up_end = base("upstream_sockets", baseline), base("upstream_sockets", end)
    excess = None
    if None not in (fds_base, fds_end, up_base, up_end):
        excess = (fds_end - up_end) - (fds_base - up_base)
    slope = _slope([(row["t_s"], row["rss_bytes"]) for row in late_after])
    client_base, client_end = base("client_sockets", baseline), base("client_sockets", end)
    ok = (all(phases[phase]["exact"] and phases[phase]["streams_completed"] > 0 for phase in PHASES)
          and client_base is not None and client_base == client_end and excess is not None and excess <= FDS_MARGIN)
    return {
        "scenario": "soak", "row": "summary", "duration_s": duration, "phases": phases,
        "rss_baseline_bytes": base("rss_bytes", baseline), "rss_max_bytes": biggest("rss_bytes", samples),
        "rss_end_bytes": base("rss_bytes", end),
        "rss_after_slope_bytes_per_s": round(slope, 1) if slope is not None else None,
        "fds_baseline": fds_base, "fds_max": biggest("fds", samples), "fds_end": fds_end, "fds_excess_end": excess,
        "client_sockets_baseline": client_base, "client_sockets_end": client_end,
        "upstream_sockets_baseline": up_base, "upstream_sockets_end": up_end,
        "tasks_baseline": base("tasks", baseline), "tasks_max": biggest("tasks", samples),
        "tasks_end": base("tasks", end),
        "attacks": attacks, "circuit_states": states,
        "settings": dataclasses.asdict(settings), "ok": ok,
    }


def _notes(reporter: Reporter, summary: dict[str, Any]) -> None:
    """The summary in a few lines on the terminal."""
    mib = 2**20
    for phase, stats in summary["phases"].items():
        reporter.note(
            f"{phase:>6}: {stats['streams_completed']}/{stats['streams_started']} streams exact, "
            f"refused {stats['refused'] or 0}, broken {stats['broken'] or 0}; TTFT p50/p99 "
            f"{stats['ttft_p50_ms']}/{stats['ttft_p99_ms']} ms, token gap p99 {stats['token_gap_p99_ms']} ms; "
            f"RSS max {(stats['rss_max_bytes'] or 0) / mib:.1f} MiB, fds max {stats['fds_max']}, "
            f"tasks max {stats['tasks_max']}, /healthz max {stats['healthz_max_ms']} ms")
    reporter.note(
        f"RSS baseline {(summary['rss_baseline_bytes'] or 0) / mib:.1f} MiB, max "
        f"{(summary['rss_max_bytes'] or 0) / mib:.1f}, end {(summary['rss_end_bytes'] or 0) / mib:.1f} "
        f"(slope late in the after phase {summary['rss_after_slope_bytes_per_s']} B/s); fds baseline "
        f"{summary['fds_baseline']}, end {summary['fds_end']} (excess without the provider pool "
        f"{summary['fds_excess_end']}); tasks baseline {summary['tasks_baseline']}, end {summary['tasks_end']}")
    for name, tally in summary["attacks"].items():
        reporter.note(f"{name}: {tally}")
    reporter.note(f"ok: {summary['ok']}")


# Drawing a saved run again.

def main(argv: list[str] | None = None) -> int:
    """``python -m tools.bench.soak RESULTS.jsonl --png FILE``: draw a saved run's samples."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.soak")
    parser.add_argument("results", type=pathlib.Path)
    parser.add_argument("--png", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    from tools.bench.plot import plot_soak

    rows = [orjson.loads(line) for line in args.results.read_bytes().splitlines() if line.strip()]
    if not plot_soak(rows, args.png):
        print("no soak samples to draw", file=sys.stderr)
        return 1
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
