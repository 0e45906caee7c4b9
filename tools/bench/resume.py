"""``cbhub bench resume``: what resuming costs.

Measured against a hub and mock provider in their own processes (127.0.0.1), with one client
in this process (the websockets package, as the Python SDK uses):

- ``resume_ms``: a client reading a long paced completion drops its connection at a random
  point, opens a new one and sends ``subscribe`` with ``since``. The figure is the time from
  starting the new connection to the first resumed message, in ms. p50/p99 over
  ``--trials`` resumes. The client also checks that the resumed stream continues at
  cursor + 1.
- ``replay_msgs_per_s``: messages per second a new subscriber receives when it replays a
  finished completion's whole history (``--history`` events) at once.
- ``bytes_per_history_entry``: the hub process's RSS growth per retained history event,
  measured by retaining ``--retained`` finished completions of ``--history`` events each
  (payload, message object and the shared WebSocket frame), in bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import msgspec
import websockets

from protocol.messages import HUB_DECODER, Completed, Subscribed
from tools.bench.procs import start_hub, start_mock
from tools.bench.report import Reporter, percentile

__all__ = ["add_arguments", "run"]

COLUMNS = ["measure", "value", "unit", "detail"]


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Options of ``resume``."""
    parser.add_argument("--trials", type=int, default=50, help="resumes to time (default 50)")
    parser.add_argument("--history", type=int, default=5000, help="events per completion for replay and memory")
    parser.add_argument("--retained", type=int, default=20, help="finished completions retained for the memory figure")
    parser.add_argument("--quick", action="store_true", help="small numbers (CI smoke)")


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Measure; returns 0 when every resumed stream continued at cursor + 1 and every replay
    was complete."""
    reporter.columns = COLUMNS
    if args.quick:
        args.trials, args.history, args.retained = 5, 300, 3
    return asyncio.run(_main(args, reporter))


def _send(ws: Any, message: dict[str, Any]) -> Any:
    return ws.send(msgspec.json.encode(message).decode())


async def _complete(url: str, cid: str, directive: str) -> tuple[str, list[Any]]:
    """Run one completion to its end; returns (epoch, messages)."""
    async with websockets.connect(url, compression=None, max_size=None) as ws:
        await _send(ws, {"type": "completion", "id": cid, "model": "openai/gpt-4o-mini", "coalesce": False,
                         "messages": [{"role": "user", "content": directive}]})
        ack = HUB_DECODER.decode(await ws.recv())
        assert isinstance(ack, Subscribed)
        messages = []
        while True:
            message = HUB_DECODER.decode(await ws.recv())
            messages.append(message)
            if isinstance(message, Completed) or getattr(message, "error", None) is not None:
                return ack.epochs[f"completion:{cid}"], messages


async def _main(args: argparse.Namespace, reporter: Reporter) -> int:
    failures = 0
    rng = random.Random(3)
    async with start_mock() as mock, start_hub(mock.url, retention_s=3600, history_max_events=10 * args.history) as hub:
        url = hub.url.replace("http", "ws", 1) + "/ws/stream"
        # Resume latency.
        tokens = 2000
        waits: list[float] = []
        async with websockets.connect(url, compression=None) as starter:
            await _send(starter, {"type": "completion", "id": "resume", "model": "openai/gpt-4o-mini",
                                  "coalesce": False,
                                  "messages": [{"role": "user", "content": f"[[mock tokens={tokens} tps=400]]"}]})
            ack = HUB_DECODER.decode(await starter.recv())
            epoch = ack.epochs["completion:resume"]
        # The starter has left; the completion runs on (grace period) for the resuming clients.
        if True:
            cursor = 0
            with reporter.progress("resume", total=args.trials) as advance:
                for _ in range(args.trials):
                    async with websockets.connect(url, compression=None) as ws:
                        await _send(ws, {"type": "subscribe", "channels": ["completion:resume"],
                                         "since": {"completion:resume": {"seq": cursor, "epoch": epoch}}})
                        HUB_DECODER.decode(await ws.recv())  # subscribed
                        for _ in range(rng.randint(1, 10)):
                            message = HUB_DECODER.decode(await ws.recv())
                            failures += message.seq != cursor + 1
                            cursor = message.seq
                    if cursor >= tokens:
                        break
                    started = time.perf_counter()
                    async with websockets.connect(url, compression=None) as ws:
                        await _send(ws, {"type": "subscribe", "channels": ["completion:resume"],
                                         "since": {"completion:resume": {"seq": cursor, "epoch": epoch}}})
                        ack = HUB_DECODER.decode(await ws.recv())
                        first = HUB_DECODER.decode(await ws.recv())
                        waits.append((time.perf_counter() - started) * 1000)
                        failures += (not ack.recovered["completion:resume"]) or first.seq != cursor + 1
                        cursor = first.seq
                    advance()
        ordered = sorted(waits)
        reporter.emit({"scenario": "resume", "measure": "resume_ms_p50", "value": round(percentile(ordered, 0.5), 3),
                       "unit": "ms",
                       "detail": f"new connection + subscribe(since) to the first resumed message, "
                                 f"{len(waits)} trials"})
        reporter.emit({"scenario": "resume", "measure": "resume_ms_p99", "value": round(percentile(ordered, 0.99), 3),
                       "unit": "ms", "detail": "same"})
        # Replay throughput and memory per history entry.
        rss_before = hub.rss_bytes()
        for n in range(args.retained):
            await _complete(url, f"kept-{n}", f"[[mock tokens={args.history} seed={n}]]")
        rss_after = hub.rss_bytes()
        entries = args.retained * (args.history + 1)
        async with websockets.connect(url, compression=None, max_size=None, max_queue=None) as ws:
            started = time.perf_counter()
            await _send(ws, {"type": "subscribe", "channels": ["completion:kept-0"]})
            HUB_DECODER.decode(await ws.recv())
            count = 0
            while True:
                message = HUB_DECODER.decode(await ws.recv())
                count += 1
                failures += message.seq != count
                if isinstance(message, Completed):
                    break
            elapsed = time.perf_counter() - started
        failures += count != args.history + 1
        reporter.emit({"scenario": "resume", "measure": "replay_msgs_per_s", "value": round(count / elapsed, 1),
                       "unit": "msgs/s",
                       "detail": f"one subscriber replays a finished {count}-message history (client-bound)"})
        reporter.emit({"scenario": "resume", "measure": "bytes_per_history_entry",
                       "value": round((rss_after - rss_before) / entries, 1), "unit": "bytes",
                       "detail": f"hub RSS growth over {entries} retained events (payload ~70 B each)"})
    reporter.table("resume")
    if failures:
        reporter.note(f"{failures} resumed or replayed streams did not continue exactly where they should")
    return 1 if failures else 0
