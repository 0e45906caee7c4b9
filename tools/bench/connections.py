"""``cbhub bench connections``: many idle subscribed WebSockets on one hub.

For each N (``--counts``, default 1000, 5000, 10000): a fresh hub and mock provider; load
generators open N connections (at most 200 handshakes in flight per process); connection 0
starts one completion (held at the mock provider's gate) and the other N-1 subscribe to
it. Then the gate opens and the completion's single token goes to all N.

Figures per N: ``accept_s`` (wall time to open the N connections), ``rss_per_connection_kb``
((hub RSS with N connections subscribed − RSS before the first connection) / N, in KiB),
``broadcast_last_ms`` (mock provider's send of the token → the last of the N connections
receives it, in ms) and ``broadcast_p50_ms``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import os
import uuid
from typing import Any

import aiohttp

from tools.bench.fanout import _wait_gate
from tools.bench.loadgen import Plan, Workers, split
from tools.bench.procs import bench_auth, start_hub, start_mock
from tools.bench.report import Reporter, percentile

__all__ = ["add_arguments", "run"]

COLUMNS = ["connections", "auth", "accept_s", "handshakes_per_s", "rss_before_mb", "rss_after_mb",
           "rss_per_connection_kb", "broadcast_p50_ms", "broadcast_last_ms", "ok"]


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Options of ``connections``."""
    parser.add_argument("--counts", default=None, help="comma list of N (default 1000,5000,10000; --quick 200)")
    parser.add_argument("--procs", type=int, default=None, help="load-generator processes (default 2)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="hub event loop")
    parser.add_argument("--quick", action="store_true", help="one small run (N=200)")
    parser.add_argument("--auth", choices=("none", "jwt"), default="none",
                        help="hub auth.mode: jwt makes every connection present an HS256 token (?token=)")


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Measure each N; returns 0 when every connection received the broadcast."""
    reporter.columns = COLUMNS
    return asyncio.run(_main(args, reporter))


async def _main(args: argparse.Namespace, reporter: Reporter) -> int:
    counts = [int(n) for n in (args.counts or ("200" if args.quick else "1000,5000,10000")).split(",")]
    procs = args.procs or (2 if (os.cpu_count() or 1) >= 2 else 1)
    failures = 0
    with reporter.progress("connections", total=len(counts)) as advance:
        for count in counts:
            row = await _measure(count, procs, args.loop, args.auth)
            reporter.emit(row)
            failures += not row["ok"]
            advance()
    reporter.table(f"connections: idle subscribed WebSockets, {procs} load-generator processes")
    return 1 if failures else 0


async def _measure(count: int, procs: int, loop: str, auth: str = "none") -> dict[str, Any]:
    settings, token_query = bench_auth(auth)
    async with start_mock() as mock, start_hub(mock.url, loop=loop, grace_period_s=60, **settings) as hub:
        gate = f"conn-{uuid.uuid4().hex[:8]}"
        prompt = f"[[mock tokens=1 stamp=1 gate={gate}]]"
        ws_url = hub.url.replace("http", "ws", 1) + "/ws/stream" + (f"?{token_query}" if token_query else "")
        await asyncio.sleep(0.2)  # let the hub settle before the baseline
        rss_before = hub.rss_bytes()
        workers = Workers([Plan(ws_url, "hub", indexes, 1, prompt) for indexes in split(count, procs)])
        try:
            await workers.phase("connect")
            await workers.phase("own")
            await workers.phase("subscribe")
            rss_after = hub.rss_bytes()
            measuring = asyncio.create_task(workers.phase("measure"))
            async with aiohttp.ClientSession() as session:
                await _wait_gate(session, mock.url, gate, 1)
                await session.post(f"{mock.url}/_mock/release", params={"gate": gate})
            results = await asyncio.wait_for(measuring, 120)
        finally:
            await workers.close()
    latencies = array.array("q")
    for result in results:
        latencies.frombytes(result.latencies_ns)
    ordered = sorted(latencies)
    accept_s = max(result.connect_s for result in results) if results else None
    ok = len(ordered) == count and not any(r.errors or r.gaps for r in results)
    return {
        "scenario": "connections",
        "connections": count,
        "auth": auth,
        "handshakes_per_s": round(count / accept_s, 1) if accept_s else None,
        "accept_s": round(accept_s, 3) if accept_s is not None else None,
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1),
        "rss_per_connection_kb": round((rss_after - rss_before) / count / 1024, 2),
        "broadcast_p50_ms": round(percentile(ordered, 0.5) / 1e6, 3) if ordered else None,
        "broadcast_last_ms": round(ordered[-1] / 1e6, 3) if ordered else None,
        "ok": ok,
    }
