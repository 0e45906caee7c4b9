"""``cbhub bench fanout`` and ``cbhub bench limit``: completions fanned out to subscribers.

One run of a *shape* ``SxK`` (S concurrent streams, each watched by K connections, so S*K
connections) at R tokens/s per stream (0: as fast as the upstream can write), T tokens per
stream:

- ``hub``: the mock provider (its own process) streams T stamped tokens per completion
  (``[[mock tokens=T tps=R stamp=1 gate=...]]``; paced streams start spread evenly over one
  token interval, as independent streams would be, unless ``--aligned``); the hub (its own process, ``cbhub serve``)
  reads, normalizes, optionally coalesces and fans out; load-generator processes
  (:mod:`tools.bench.loadgen`) hold the S*K connections. One connection per stream starts the
  completion, the others subscribe; all streams start together when the mock's gate opens.
- ``limit``: the same connections and the same number of events, produced and fanned out by
  the bare aiohttp reference server (:mod:`tools.bench.limit_server`), which awaits
  ``send_str`` per subscriber per frame.

Figures per run (a JSON-lines row each):

- ``delivered_events_per_s``, ``delivered_tokens_per_s``: messages / tokens received by all
  connections together, per second of wall time from the gate opening to the last terminal.
- ``latency_p50_ms``/``p99``/``p999``: per token, client receive time minus the upstream's
  send stamp (hub: mock provider write → client; limit: event made → client), in ms.
- ``cpu_us_per_event``: the server process's own CPU time (user + system, from the OS) over
  the measured window divided by delivered events, in µs. The figure to compare: on a
  2-core machine the clients saturate before a good server does.
- ``peak_rss_mb``: the server process's peak resident set size (VmHWM), in MiB.
- ``frames_per_token``: WebSocket frames received per token (below 1 with coalescing).
- ``ok``: every connection got every token in ``seq`` order without gap and its terminal
  message. The command's exit status is 1 when any run is not ok.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import os
import sys
import time
import uuid
from typing import Any

import aiohttp

from tools.bench.loadgen import Plan, WorkerResult, Workers, split
from tools.bench.procs import ServerProcess, bench_auth, start_hub, start_mock
from tools.bench.report import Reporter, percentile

__all__ = ["add_arguments", "run", "run_shape"]

COLUMNS = [
    "server", "streams", "subscribers", "rate", "coalesce", "delivered_events_per_s", "delivered_tokens_per_s",
    "latency_p50_ms", "latency_p99_ms", "latency_p999_ms", "cpu_us_per_event", "peak_rss_mb", "frames_per_token", "ok",
]


def _shape(text: str) -> tuple[int, int]:
    streams, _, subscribers = text.lower().partition("x")
    try:
        shape = int(streams), int(subscribers)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SxK such as 10x100, got {text!r}") from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError("S and K must be at least 1")
    return shape


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Options of ``fanout`` and ``limit`` (``name`` tells which)."""
    parser.add_argument("--shape", type=_shape, action="append",
                        help="SxK: S streams, K subscriber connections each (repeatable; default 10x100 and 1000x1)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per stream (default 200; --quick 20)")
    parser.add_argument("--rate", type=float, action="append",
                        help="tokens/s per stream, 0 = as fast as possible (repeatable; default 0)")
    parser.add_argument("--burst", type=int, default=1,
                        help="upstream tokens per write (mock provider burst=N; default 1: one chunk per write)")
    parser.add_argument("--aligned", action="store_true",
                        help="paced streams all start at the same instant, so their tokens arrive in bursts of S "
                             "(worst case); by default stream i starts i/S of a token interval late")
    parser.add_argument("--coalesce", choices=("off", "on", "both"), default="off",
                        help="hub content coalescing (default off)")
    parser.add_argument("--flush-interval-ms", type=float, default=25.0, help="hub coalescing flush interval")
    if name == "fanout":
        parser.add_argument("--servers", default="hub,limit", help="comma list of hub, limit (default both)")
        parser.add_argument("--nodes", type=int, action="append",
                            help="hub processes sharing the broker (repeatable; issue 13, tools/bench/cluster.py); "
                                 "with --nodes or --broker redis only the hub runs")
        parser.add_argument("--broker", choices=("memory", "redis"), action="append",
                            help="the hubs' broker (repeatable; default memory, which serves one node)")
        parser.add_argument("--redis-url", default="own",
                            help="Redis of --broker redis: 'own' (default) starts a private redis-server on a free "
                                 "port so its command counts and CPU are the run's alone; or redis://HOST:PORT/DB "
                                 "(each run uses a key prefix of its own, deleted afterwards)")
        parser.add_argument("--redis-pool", type=int, default=0,
                            help="max_connections of each hub's Redis connection pool, set in the broker URL "
                                 "(default 0: the hub's own pool size)")
        parser.add_argument("--workers", type=int, default=0,
                            help="cbhub serve --workers N on every node (needs --broker redis)")
        parser.add_argument("--repeat", type=int, default=1,
                            help="with --nodes/--broker: run every configuration N times (in rounds) and add "
                                 "one row of medians per configuration")
    parser.add_argument("--procs", type=int, default=None,
                        help="load-generator processes (default: 2 on machines with 2+ CPUs, else 1)")
    parser.add_argument("--batch", action="store_true", help="hub clients opt in to batched frames (?batch=1)")
    parser.add_argument("--auth", choices=("none", "jwt"), default="none",
                        help="hub auth.mode: jwt makes every client present an HS256 token (?token=)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="server event loop")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a run is abandoned")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (CI): 2x3 and 4x1 shapes, 20 tokens; checks only that everything arrived")


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Run every configuration of the command line; returns 0 when all runs were ok. With
    ``--nodes`` or ``--broker`` (or ``--workers``), the hubs of :mod:`tools.bench.cluster` run
    instead of the hub-vs-reference comparison."""
    if getattr(args, "nodes", None) or getattr(args, "broker", None) or getattr(args, "workers", 0):
        from tools.bench import cluster

        return cluster.run(args, reporter)
    reporter.columns = COLUMNS
    return asyncio.run(_main(args, reporter))


async def _main(args: argparse.Namespace, reporter: Reporter) -> int:
    servers = ["limit"] if args.scenario == "limit" else [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - {"hub", "limit"}
    if unknown:
        reporter.note(f"unknown server(s): {', '.join(sorted(unknown))}")
        return 2
    shapes = args.shape or ([(2, 3), (4, 1)] if args.quick else [(10, 100), (1000, 1)])
    tokens = args.tokens or (20 if args.quick else 200)
    rates = args.rate or [0.0]
    coalesce_modes = {"off": [False], "on": [True], "both": [False, True]}[args.coalesce]
    procs = args.procs or (2 if (os.cpu_count() or 1) >= 2 and not args.quick else 1)
    configs = [(shape, rate, coalesce) for shape in shapes for rate in rates for coalesce in coalesce_modes]
    failures = 0
    with reporter.progress("fanout", total=len(configs) * len(servers)) as advance:
        for server in servers:
            for (streams, subscribers), rate, coalesce in configs:
                if server == "limit" and coalesce:
                    advance()
                    continue  # the reference server does not coalesce; its coalesce=off row is the reference
                row = await run_shape(server, streams, subscribers, tokens, rate, coalesce, procs=procs,
                                      batch=args.batch, burst=args.burst, aligned=args.aligned, loop=args.loop,
                                      auth=args.auth,
                                      flush_interval_ms=args.flush_interval_ms, timeout_s=args.timeout)
                reporter.emit(row)
                failures += not row["ok"]
                advance()
    reporter.table(f"fanout: {tokens} tokens per stream, {procs} load-generator processes")
    return 1 if failures else 0


async def run_shape(server: str, streams: int, subscribers: int, tokens: int, rate: float, coalesce: bool, *,
                    procs: int = 2, batch: bool = False, burst: int = 1, aligned: bool = False,
                    loop: str = "asyncio", flush_interval_ms: float = 25.0,
                    timeout_s: float = 300.0, auth: str = "none") -> dict[str, Any]:
    """Measure one configuration in fresh server processes; returns the result row."""
    connections = streams * subscribers
    processes: list[ServerProcess] = []
    try:
        if server == "hub":
            mock = await start_mock().start()
            processes.append(mock)
            settings, token_query = bench_auth(auth)
            target = await start_hub(mock.url, loop=loop, flush_interval_ms=flush_interval_ms,
                                     grace_period_s=60, retention_s=60, **settings).start()
            processes.append(target)
            query = "&".join(part for part in ("batch=1" if batch else "", token_query) if part)
            ws_url = target.url.replace("http", "ws", 1) + "/ws/stream" + (f"?{query}" if query else "")
            gate = f"bench-{uuid.uuid4().hex[:8]}"
            prompt = (f"bench [[mock tokens={tokens} tps={rate:g} burst={burst} ttft_ms={{offset_ms}} stamp=1 "
                      f"gate={gate}]]")
        else:
            target = await ServerProcess("limit", [sys.executable, "-m", "tools.bench.limit_server", "--port", "0",
                                                   "--loop", loop]).start()
            processes.append(target)
            ws_url = target.url.replace("http", "ws", 1) + "/ws"
            prompt = ""
        stagger_ms = 1000.0 / rate if rate and not aligned else 0.0
        plans = [Plan(ws_url, server, indexes, streams, prompt, coalesce, stagger_ms=stagger_ms)
                 for indexes in split(connections, procs)]
        workers = Workers(plans)
        try:
            await workers.phase("connect")
            await workers.phase("own")
            await workers.phase("subscribe")
            rss_before = target.rss_bytes()
            measuring = asyncio.create_task(workers.phase("measure"))
            async with aiohttp.ClientSession() as session:
                if server == "hub":
                    await _wait_gate(session, mock.url, gate, streams)
                    release_url, params = f"{mock.url}/_mock/release", {"gate": gate}
                else:
                    release_url = f"{target.url}/release"
                    params = {"tokens": tokens, "rate": f"{rate:g}", "stagger_ms": f"{stagger_ms:g}"}
                mock_cpu_before = mock.cpu_s() if server == "hub" else 0.0
                cpu_before = target.cpu_s()
                system_before = target.cpu_system_s()
                started = time.monotonic_ns()
                await session.post(release_url, params=params)
            results: list[WorkerResult] = await asyncio.wait_for(measuring, timeout_s)
            cpu_used = target.cpu_s() - cpu_before
            system_used = target.cpu_system_s() - system_before
            mock_cpu = mock.cpu_s() - mock_cpu_before if server == "hub" else None
            peak = target.peak_rss_bytes()
        finally:
            await workers.close()
        row = _row(server, streams, subscribers, tokens, rate, coalesce, batch, results, started, cpu_used,
                   peak, rss_before, auth if server == "hub" else "none")
        row["upstream_cpu_s"] = round(mock_cpu, 3) if mock_cpu is not None else None
        row["burst"] = burst if server == "hub" else None
        row["cpu_system_share"] = round(system_used / cpu_used, 3) if cpu_used else None
        row["loop"] = loop
        row["aligned"] = aligned or not rate
        return row
    finally:
        for process in reversed(processes):
            await process.stop()


async def _wait_gate(session: aiohttp.ClientSession, mock_url: str, gate: str, streams: int) -> None:
    """Until all ``streams`` upstream requests wait at the mock provider's gate."""
    for _ in range(3000):
        async with session.get(f"{mock_url}/_mock/gates") as response:
            if (await response.json()).get(gate, 0) >= streams:
                return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"only some of {streams} upstream requests reached the mock provider")


def _row(server: str, streams: int, subscribers: int, tokens: int, rate: float, coalesce: bool, batch: bool,
         results: list[WorkerResult], started_ns: int, cpu_used_s: float, peak_rss: int | None,
         rss_before: int, auth: str = "none") -> dict[str, Any]:
    latencies = array.array("q")
    for result in results:
        latencies.frombytes(result.latencies_ns)
    ordered = sorted(latencies)
    ends = [r.last_receive_ns for r in results if r.last_receive_ns is not None]
    wall_s = (max(ends) - started_ns) / 1e9 if ends else None
    events = sum(r.events for r in results)
    delivered_tokens = sum(r.tokens for r in results)
    frames = sum(r.frames for r in results)
    errors = [e for r in results for e in r.errors]
    gaps = sum(r.gaps for r in results)
    terminals = sum(r.terminals for r in results)
    connections = streams * subscribers
    expected_tokens = connections * tokens
    ok = not errors and not gaps and terminals == connections and delivered_tokens == expected_tokens

    def ms(fraction: float) -> float | None:
        value = percentile(ordered, fraction)
        return None if value is None else round(value / 1e6, 3)

    return {
        "scenario": "fanout",
        "server": server,
        "streams": streams,
        "subscribers": subscribers,
        "connections": connections,
        "tokens_per_stream": tokens,
        "rate": rate or "max",
        "coalesce": coalesce,
        "batch": batch,
        "auth": auth,
        "events_delivered": events,
        "tokens_delivered": delivered_tokens,
        "tokens_expected": expected_tokens,
        "wall_s": round(wall_s, 3) if wall_s else None,
        "delivered_events_per_s": round(events / wall_s, 1) if wall_s else None,
        "delivered_tokens_per_s": round(delivered_tokens / wall_s, 1) if wall_s else None,
        "latency_p50_ms": ms(0.50),
        "latency_p99_ms": ms(0.99),
        "latency_p999_ms": ms(0.999),
        "cpu_s": round(cpu_used_s, 3),
        "client_cpu_s": round(sum(r.cpu_s for r in results), 3),
        "cpu_us_per_event": round(cpu_used_s / events * 1e6, 3) if events else None,
        "rss_before_mb": round(rss_before / 2**20, 1),
        "peak_rss_mb": round(peak_rss / 2**20, 1) if peak_rss else None,
        "frames_per_token": round(frames / delivered_tokens, 3) if delivered_tokens else None,
        "ok": ok,
        "errors": errors[:5],
        "gaps": gaps,
    }
