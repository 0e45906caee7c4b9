"""``cbhub``: the command line of circuit-breaker-hub.

Commands::

    cbhub serve [--config FILE] [--preset NAME] [--host H] [--port P] [--log-level L] [--loop L]
                                            run the hub; configuration: defaults < preset < file
                                            < environment < these flags (hub/config.py)
    cbhub config [--config FILE] [--preset NAME]
                                            check the configuration and print it as YAML
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hub.config import HubConfig

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbhub", description="circuit-breaker-hub: a real-time streaming hub for LLM applications")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the hub")
    _add_config_arguments(serve)
    serve.add_argument("--host", help="address to listen on (overrides server.host; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (overrides server.port; default 8765)")
    serve.add_argument("--log-level", help="DEBUG, INFO, ... (overrides monitoring.log_level; default INFO)")
    serve.add_argument("--loop", choices=("asyncio", "uvloop"),
                       help="event loop (overrides performance.loop; default asyncio); uvloop needs "
                            "pip install 'circuit-breaker-hub[uvloop]'")

    config = commands.add_parser("config", help="check the configuration and print it as YAML (API keys hidden)")
    _add_config_arguments(config)

    demo = commands.add_parser("demo", help="stream from all four provider formats over one WebSocket")
    demo.add_argument("--live", action="store_true", help="use the real providers whose keys are in the environment")
    demo.add_argument("--port", type=int, default=0, help="hub port (default: any free port)")
    demo.add_argument("--tokens", type=int, default=40, help="mock answer length in tokens")
    demo.add_argument("--tps", type=float, default=40.0, help="mock tokens per second")
    demo.add_argument("--prompt", default="Tell me, briefly, why streaming matters.")

    commands.add_parser("mock-provider", help="run the mock LLM provider", add_help=False)
    commands.add_parser("bench", help="run a benchmark scenario (cbhub bench --help)", add_help=False)
    return parser


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file (every key: docs/hub.example.yaml)")
    parser.add_argument("--preset", metavar="NAME",
                        help="high_performance, high_efficiency or debug (hub/presets); the file overrides it")


def _load_config(args: argparse.Namespace, **overrides: object) -> HubConfig | None:
    """The effective config, or None after printing the config error to stderr."""
    from hub.config import ConfigError, HubConfig

    try:
        return HubConfig.load(args.config, args.preset, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        print(f"cbhub: {exc}", file=sys.stderr)
        return None


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
    if args.command == "config":
        config = _load_config(args)
        if config is None:
            return 2
        layers = ["defaults", *([f"preset {args.preset}"] if args.preset else []),
                  *([args.config] if args.config else []), "environment"]
        print(f"# effective configuration of circuit-breaker-hub: {' < '.join(layers)}; API keys shown as ***")
        sys.stdout.write(config.to_yaml())
        return 0
    if args.command == "serve":
        config = _load_config(args, host=args.host, port=args.port, log_level=args.log_level, loop=args.loop)
        if config is None:
            return 2
        if config.loop == "uvloop":
            try:
                import uvloop
            except ImportError:
                print("cbhub: the uvloop event loop (performance.loop, --loop) needs uvloop: "
                      "pip install 'circuit-breaker-hub[uvloop]'", file=sys.stderr)
                return 2
        from hub.app import serve_forever

        logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if config.loop == "uvloop":
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
