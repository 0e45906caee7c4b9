"""``cbhub bench SCENARIO [options]``: the command line of the benchmark suite.

Scenarios (``cbhub bench SCENARIO --help`` for each one's options)::

    fanout       S completions x K subscribers through the hub, and the same load through the
                 bare aiohttp reference server (``limit``) in the same run
    limit        the reference server alone
    connections  N idle subscribed WebSockets: RSS per connection, accept time, one event to all
    ingest       protocol/ alone: framing + normalizer throughput per provider format
    sse          the OpenAI-compatible SSE endpoint, hub vs the LiteLLM proxy (when installed)
    resume       resume time after reconnect, replay throughput, memory per history entry
    redaction    protocol/ alone: redaction cost per streamed chunk and the hold-back latency
    soak         normal clients and attackers over time: RSS, open fds, tasks, p99 latency per phase

Every scenario takes ``--out FILE`` (JSON lines appended there instead of stdout) and
``--quiet`` (no table or progress bar).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import IO

from tools.bench.report import Reporter, conditions

__all__ = ["main", "SCENARIOS"]

# scenario name -> (module under tools.bench, one-line help)
SCENARIOS = {
    "fanout": ("fanout", "completions fanned out to subscriber connections, hub vs the reference server"),
    "limit": ("fanout", "the same fan-out by the bare aiohttp reference server alone"),
    "connections": ("connections", "idle subscribed connections: RSS per connection, accept time, broadcast"),
    "ingest": ("ingest", "framing + normalizer throughput per provider format (no network)"),
    "sse": ("sse", "OpenAI-compatible SSE endpoint: hub vs the LiteLLM proxy"),
    "resume": ("resume", "resume time after reconnect, replay throughput, memory per history entry"),
    "redaction": ("redaction", "redaction cost per streamed chunk and the hold-back latency (no network)"),
    "soak": ("soak", "normal clients and attackers over time: RSS, open fds, tasks, p99 latency per phase"),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``cbhub bench`` parser: one subcommand per scenario."""
    parser = argparse.ArgumentParser(
        prog="cbhub bench", description="benchmarks of circuit-breaker-hub (docs/BENCHMARKS.md)")
    scenarios = parser.add_subparsers(dest="scenario", required=True)
    for name, (module_name, help_text) in SCENARIOS.items():
        sub = scenarios.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--out", type=argparse.FileType("ab"), help="append JSON lines to this file instead of stdout")
        sub.add_argument("--quiet", action="store_true", help="no table and no progress bar")
        module = importlib.import_module(f"tools.bench.{module_name}")
        module.add_arguments(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one scenario; returns the exit status (0 when every measured run was sane)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    out: IO[bytes] | None = args.out
    module = importlib.import_module(f"tools.bench.{SCENARIOS[args.scenario][0]}")
    reporter = Reporter(out=out, quiet=args.quiet)
    reporter.emit(conditions())
    try:
        return module.run(args, reporter)
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    raise SystemExit(main())
