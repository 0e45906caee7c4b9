"""``cbhub``: the command line of circuit-breaker-hub.

Commands::

    cbhub serve [--host H] [--port P]       run the hub (configuration from the environment)
    cbhub demo [--live]                     mock provider + hub in one process, four providers
                                            streamed concurrently over one WebSocket
    cbhub mock-provider [--port 9100] ...   the mock LLM provider (tools/mock_provider.py)
    cbhub bench SCENARIO [...]              the benchmark suite (tools/bench, docs/BENCHMARKS.md)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbhub", description="circuit-breaker-hub: a real-time streaming hub for LLM applications")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the hub")
    serve.add_argument("--host", help="address to listen on (default CBHUB_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default CBHUB_PORT or 8765)")
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                       help="event loop: asyncio (default) or uvloop (pip install 'circuit-breaker-hub[uvloop]')")

    demo = commands.add_parser("demo", help="stream from all four provider formats over one WebSocket")
    demo.add_argument("--live", action="store_true", help="use the real providers whose keys are in the environment")
    demo.add_argument("--port", type=int, default=0, help="hub port (default: any free port)")
    demo.add_argument("--tokens", type=int, default=40, help="mock answer length in tokens")
    demo.add_argument("--tps", type=float, default=40.0, help="mock tokens per second")
    demo.add_argument("--prompt", default="Tell me, briefly, why streaming matters.")

    commands.add_parser("mock-provider", help="run the mock LLM provider", add_help=False)
    commands.add_parser("bench", help="run a benchmark scenario (cbhub bench --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cbhub`` console script. Returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["mock-provider"]:
        from tools.mock_provider import main as mock_main

        return mock_main(argv[1:])
    if argv[:1] == ["bench"]:
        from tools.bench.cli import main as bench_main

        return bench_main(argv[1:])
    args = _build_parser().parse_args(argv)
    if args.command == "serve":
        from hub.app import serve_forever
        from hub.config import HubConfig

        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        try:
            config = HubConfig.from_env(**overrides)
        except ValueError as exc:
            print(f"cbhub: {exc}", file=sys.stderr)
            return 2
        if args.loop == "uvloop":
            try:
                import uvloop
            except ImportError:
                print("cbhub: --loop uvloop needs uvloop: pip install 'circuit-breaker-hub[uvloop]'", file=sys.stderr)
                return 2
            uvloop.run(serve_forever(config))
        else:
            asyncio.run(serve_forever(config))
        return 0
    if args.command == "demo":
        from hub.demo import run_demo

        return asyncio.run(run_demo(live=args.live, port=args.port, tokens=args.tokens, tps=args.tps, prompt=args.prompt))
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
