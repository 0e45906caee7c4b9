"""``cbhub``: the command line of circuit-breaker-hub.

Commands::

    cbhub serve [--config FILE] [--preset NAME] [--host H] [--port P] [--log-level L] [--loop L]
                [--workers N]               run the hub; configuration: defaults < preset < file
                                            < environment < these flags (hub/config.py); N > 1:
                                            N processes on one port sharing the Redis broker
                                            (hub/workers.py, docs/DEPLOY.md)
    cbhub config [--config FILE] [--preset NAME]
                                            check the configuration and print it as YAML
    cbhub keys new --name NAME [--subject S] [--models P ...] [--channels P ...] [--rpm N]
                   [--tpm N] [--max-concurrent N] [--admin]
                                            a new API key: the key alone on the first line,
                                            then its auth.api_keys entry (SHA-256 only)
    cbhub demo [--live]                     mock provider + hub in one process, four providers
                                            streamed concurrently over one WebSocket
    cbhub demo workflow [--live] [--topic T] [--model M]
                                            the content_creation workflow in one process: every
                                            agent's tokens live, then a summary
    cbhub chat [--url URL] [--model M] [--token T] [PROMPT]
                                            one completion from a running hub through the Python
                                            SDK (hub/client.py): tokens as they arrive, then TTFT
                                            and tokens/s; the prompt from stdin when not given
    cbhub mock-provider [--port 9100] ...   the mock LLM provider (hub/testing/mock_provider.py)
    cbhub --version                         the installed version (importlib.metadata)
    cbhub bench SCENARIO [...]              the benchmark suite (tools/bench, docs/BENCHMARKS.md),
                                            found through the ``cbhub.commands`` entry point

More commands come from installed packages: an entry point ``NAME = module:main`` in the group
``cbhub.commands`` (:data:`COMMAND_GROUP`) makes ``cbhub NAME ARGS...`` call ``main(ARGS)``
and exit with what it returns. This is how the checkout's dev tooling (tools/bench) plugs in
without the product importing it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from hub.config import HubConfig

__all__ = ["main", "COMMAND_GROUP", "package_version", "plugin_command"]

#: The entry point group of commands that installed packages add to ``cbhub``.
COMMAND_GROUP = "cbhub.commands"

_BUILTIN = ("serve", "config", "keys", "demo", "chat", "mock-provider")

#: Plugin commands ``cbhub`` names in its help, with where they usually come from.
_KNOWN_PLUGINS = {"bench": "the benchmark suite in tools/bench of a source checkout (pip install -e '.[bench]')"}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cbhub", description="circuit-breaker-hub: a real-time streaming hub for LLM applications")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                        help="print the installed package's version and exit")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the hub")
    _add_config_arguments(serve)
    serve.add_argument("--host", help="address to listen on (overrides server.host; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (overrides server.port; default 8765)")
    serve.add_argument("--log-level", help="DEBUG, INFO, ... (overrides monitoring.log_level; default INFO)")
    serve.add_argument("--loop", choices=("asyncio", "uvloop"),
                       help="event loop (overrides performance.loop; default asyncio); uvloop needs "
                            "pip install 'circuit-breaker-hub[uvloop]'")
    serve.add_argument("--workers", type=_positive, metavar="N",
                       help="hub processes on the one port (SO_REUSEPORT), sharing the Redis broker, which "
                            "broker.url must name when N > 1 (overrides performance.workers; default 1); a "
                            "supervisor forwards SIGTERM/SIGINT so that all drain")

    config = commands.add_parser("config", help="check the configuration and print it as YAML (API keys hidden)")
    _add_config_arguments(config)

    keys = commands.add_parser("keys", help="API keys for auth.mode api_key (cbhub keys new --name NAME)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    new_key = key_commands.add_parser(
        "new", help="make a new API key",
        description="Print a new random API key alone on the first line (give it to the client; it is not "
                    "shown again), then the YAML entry to add under auth.api_keys, which stores only the key's "
                    "SHA-256 digest with its subject and limits.")
    new_key.add_argument("--name", required=True, help="a label for the key (logs show it, never the key)")
    new_key.add_argument("--subject", help="who the key authenticates as (default key:NAME)")
    new_key.add_argument("--models", nargs="+", metavar="PATTERN",
                         help="allowed models, e.g. 'openai/*' (default: all)")
    new_key.add_argument("--channels", nargs="+", metavar="PATTERN",
                         help="channels readable besides its own runs, e.g. 'completion:team7-*'")
    new_key.add_argument("--rpm", type=_positive, help="requests per minute (default: auth.default_limits.rpm)")
    new_key.add_argument("--tpm", type=_positive, help="tokens per minute (default: auth.default_limits.tpm)")
    new_key.add_argument("--max-concurrent", type=_positive,
                         help="running completions and workflows (default: auth.default_limits.max_concurrent)")
    new_key.add_argument("--admin", action="store_true", help="may read every channel, type-level and system")

    demo = commands.add_parser(
        "demo", help="stream from all four provider formats over one WebSocket; `demo workflow`: a workflow run",
        description="cbhub demo: one completion per provider format, streamed at once over one WebSocket. "
                    "cbhub demo workflow: the content_creation workflow (researcher, writer, editor), every "
                    "agent's tokens as they arrive, then a summary.")
    demo.add_argument("which", nargs="?", choices=("providers", "workflow"), default="providers",
                      help="providers (default) or workflow")
    demo.add_argument("--live", action="store_true", help="use the real providers whose keys are in the environment")
    demo.add_argument("--port", type=int, default=0, help="hub port (default: any free port)")
    demo.add_argument("--tokens", type=int, default=40, help="mock answer length in tokens (default 40)")
    demo.add_argument("--tps", type=float, help="mock tokens per second (default 40; demo workflow: 60)")
    demo.add_argument("--prompt", help="the prompt (default: 'Tell me, briefly, why streaming matters.')")
    demo.add_argument("--topic", help="demo workflow: the article's topic (default 'tides'; against the mock a "
                                      "[[mock tokens=N tps=X]] directive is added unless it has one)")
    demo.add_argument("--audience", help="demo workflow: the article's audience (default 'curious readers')")
    demo.add_argument("--model", help="demo workflow: the model of every agent (e.g. openai/smollm2 with "
                                      "tools/real_llm.sh); default: the definition's models")

    chat = commands.add_parser(
        "chat", help="stream one completion from a running hub (the Python SDK, hub/client.py)",
        description="Send PROMPT (or stdin) to a running hub and print the answer as it streams. "
                    "stdout gets the answer text; stderr gets the reasoning (dimmed on a terminal, "
                    "else prefixed 'thinking:'), tool calls, and a last line with the time to first "
                    "token and tokens/s. Exit status 1 on a hub error or when the hub cannot be reached.")
    chat.add_argument("prompt", nargs="?", help="the user message; read from stdin when absent or '-'")
    chat.add_argument("--url", default="ws://127.0.0.1:8765/ws/stream", help="the hub's WebSocket URL")
    chat.add_argument("--token", help="a JWT or API key, for a hub whose auth.mode is set (default: the variable "
                                      "CBHUB_TOKEN)")
    chat.add_argument("--model", default="openai/gpt-4o-mini", help="provider/model (default openai/gpt-4o-mini)")
    chat.add_argument("--system", help="a system message before the prompt")
    chat.add_argument("--max-tokens", type=int, help="output token limit")
    chat.add_argument("--temperature", type=float, help="sampling temperature")
    chat.add_argument("--reasoning", metavar="EFFORT", help="reasoning effort: minimal, low, medium or high")

    commands.add_parser("mock-provider", help="run the mock LLM provider", add_help=False)
    commands.add_parser("bench", help="run a benchmark scenario (cbhub bench --help)", add_help=False)
    return parser


def package_version() -> str:
    """The installed version of the ``circuit-breaker-hub`` distribution (importlib.metadata,
    i.e. pyproject.toml's ``version`` when it was installed), or ``unknown (not installed)``
    when the code runs without being installed (no ``pip install -e .``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("circuit-breaker-hub")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def plugin_command(name: str) -> Callable[[list[str]], int] | None:
    """The ``main(argv) -> exit status`` of the installed command ``name`` in the entry point
    group :data:`COMMAND_GROUP`, or None when no installed package provides it or its module
    cannot be imported (the tools/ folder of a checkout is absent)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=COMMAND_GROUP, name=name):
        try:
            loaded = entry.load()
        except ImportError:
            return None
        return cast("Callable[[list[str]], int]", loaded)
    return None


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file (every key: docs/hub.example.yaml)")
    parser.add_argument("--preset", metavar="NAME",
                        help="high_performance, high_efficiency or debug (hub/presets); the file overrides it")


def _load_config(args: argparse.Namespace, **overrides: object) -> HubConfig | None:
    """The effective config, or None after printing the config error to stderr."""
    from hub.config import ConfigError, HubConfig

    try:
        return HubConfig.load(args.config, args.preset, None, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        print(f"cbhub: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cbhub`` console script. Returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["mock-provider"]:
        from hub.testing.mock_provider import main as mock_main

        return mock_main(argv[1:])
    if argv[:1] and argv[0] not in _BUILTIN and not argv[0].startswith("-"):
        command = plugin_command(argv[0])
        if command is not None:
            return command(argv[1:])
        if argv[0] in _KNOWN_PLUGINS:
            print(f"cbhub {argv[0]}: not installed (no {COMMAND_GROUP!r} entry point named {argv[0]!r}, or its "
                  f"module is missing); it is {_KNOWN_PLUGINS[argv[0]]}", file=sys.stderr)
            return 2
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
    if args.command == "keys":
        return _new_key(args)
    if args.command == "serve":
        config = _load_config(args, host=args.host, port=args.port, log_level=args.log_level, loop=args.loop,
                              workers=args.workers)
        if config is None:
            return 2
        from hub.workers import serve_one, supervise, workers_refusal

        refusal = _auth_refusal(config) or workers_refusal(config)
        if refusal is not None:
            print(f"cbhub: {refusal}", file=sys.stderr)
            return 2
        if config.loop == "uvloop":
            try:
                import uvloop  # noqa: F401  (each process runs it: hub/workers.py)
            except ImportError:
                print("cbhub: the uvloop event loop (performance.loop, --loop) needs uvloop: "
                      "pip install 'circuit-breaker-hub[uvloop]'", file=sys.stderr)
                return 2
        from hub.logsafe import install_secret_filter

        install_secret_filter(config.secrets())  # every log record masked (docs/PROTOCOL.md "Redaction")
        logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from hub.app import CannotListen

        try:
            return supervise(config) if config.workers > 1 else serve_one(config)
        except CannotListen as exc:  # a taken port, a host that is not this machine's: one line, no traceback
            print(f"cbhub: {exc}", file=sys.stderr)
            return 2
    if args.command == "demo":
        if args.which == "workflow":
            if args.prompt is not None:
                print("cbhub demo workflow: --prompt is for the providers demo; give --topic", file=sys.stderr)
                return 2
            from hub.demo import run_workflow_demo

            options = {key: value for key, value in (("topic", args.topic), ("audience", args.audience),
                                                     ("tps", args.tps)) if value is not None}
            try:
                return asyncio.run(run_workflow_demo(live=args.live, port=args.port, tokens=args.tokens,
                                                     model=args.model, **options))
            except KeyboardInterrupt:
                return 130
        if args.topic is not None or args.audience is not None or args.model is not None:
            print("cbhub demo: --topic, --audience and --model are for `cbhub demo workflow`", file=sys.stderr)
            return 2
        from hub.demo import run_demo

        return asyncio.run(run_demo(live=args.live, port=args.port, tokens=args.tokens,
                                    tps=40.0 if args.tps is None else args.tps,
                                    prompt=args.prompt or "Tell me, briefly, why streaming matters."))
    if args.command == "chat":
        prompt = args.prompt if args.prompt not in (None, "-") else sys.stdin.read()
        if not prompt.strip():
            print("cbhub chat: no prompt (give it as an argument or on stdin)", file=sys.stderr)
            return 2
        try:
            return asyncio.run(_chat(args, prompt))
        except KeyboardInterrupt:
            return 130
    return 2


def _auth_refusal(config: HubConfig) -> str | None:
    """Why ``cbhub serve`` must not start with this ``auth`` section, or None: ``auth.mode:
    none`` on an address other hosts reach (not loopback) without ``auth.allow_anonymous``,
    or a JWT/API key setting that cannot work."""
    from hub.auth import Authenticator, is_loopback_host
    from hub.config import ConfigError

    if config.auth_mode == "none" and not config.auth_allow_anonymous and not is_loopback_host(config.host):
        return (f"refusing to listen on {config.host!r} without authentication: auth.mode is none, so anyone "
                "who reaches the port spends the hub's provider keys. Set auth.mode (jwt, api_key or "
                "jwt_or_api_key; CBHUB_AUTH_MODE), listen on 127.0.0.1, or set auth.allow_anonymous: true "
                "on purpose")
    try:
        Authenticator(config)
    except ConfigError as exc:
        return str(exc)
    return None


def _new_key(args: argparse.Namespace) -> int:
    """``cbhub keys new``: the key on the first line, then its ``auth.api_keys`` entry."""
    import secrets

    import yaml

    from hub.auth import api_key_digest

    key = "cbk-" + secrets.token_urlsafe(32)
    entry: dict[str, object] = {"name": args.name, "sha256": api_key_digest(key)}
    optional = {"subject": args.subject, "models": args.models, "channels": args.channels, "rpm": args.rpm,
                "tpm": args.tpm, "max_concurrent": args.max_concurrent, "admin": args.admin or None}
    entry.update({field: value for field, value in optional.items() if value is not None})
    print(key)
    print(f"# the entry of key {args.name!r} under auth.api_keys (only its SHA-256 digest is stored; the key "
          "above is not shown again):")
    sys.stdout.write(yaml.safe_dump([entry], sort_keys=False, default_flow_style=None))
    return 0


async def _chat(args: argparse.Namespace, prompt: str) -> int:
    """``cbhub chat``: one completion through :class:`hub.client.HubClient`.

    The statistics line: TTFT is measured here, from sending the request to the first token
    (answer, reasoning, refusal or tool call) in ms, with the hub's own upstream TTFT beside it;
    tokens/s is the usage's completion tokens (reasoning included) divided by the time from
    the first token to ``completed``."""
    import os

    from hub.client import HubClient, HubClientError, HubStreamError, Reconnect
    from protocol.messages import ContentChunk, RefusalChunk, ThinkingStatus, ToolCallMessage

    err = sys.stderr
    dim = err.isatty() and not os.environ.get("NO_COLOR")
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = [*system, {"role": "user", "content": prompt}]
    options = {"max_tokens": args.max_tokens, "temperature": args.temperature, "reasoning": args.reasoning}

    def reconnected(info: Reconnect) -> None:
        err.write(f"\n[reconnected after close {info.close_code} in {info.downtime_s * 1000:.0f} ms; resuming]\n")

    wrote_text = thinking = False
    try:
        token = args.token or os.environ.get("CBHUB_TOKEN") or None
        async with HubClient(args.url, on_reconnect=reconnected, token=token) as client:
            stream = client.completion(model=args.model, messages=messages, **options)
            try:
                async for event in stream:
                    if isinstance(event, ThinkingStatus):
                        if event.content:
                            if not thinking:
                                err.write("\x1b[2m" if dim else "thinking: ")
                                thinking = True
                            err.write(event.content)
                            err.flush()
                        continue
                    if thinking:
                        err.write("\x1b[0m\n" if dim else "\n")
                        thinking = False
                    if isinstance(event, (ContentChunk, RefusalChunk)):
                        sys.stdout.write(event.content)
                        sys.stdout.flush()
                        wrote_text = True
                    elif isinstance(event, ToolCallMessage):
                        err.write(f"tool call {event.id}: {event.tool}({event.arguments})\n")
            except asyncio.CancelledError:  # Ctrl-C: stop the completion upstream too
                if stream.id is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.cancel(stream.id), 1.0)
                raise
    except HubStreamError as exc:
        if thinking:
            err.write("\x1b[0m\n" if dim else "\n")
        if wrote_text:
            sys.stdout.write("\n")
        status = f" (HTTP {exc.error.status})" if exc.error.status else ""
        print(f"cbhub chat: {exc.code}{status}: {exc.error.message}", file=err)
        return 1
    except HubClientError as exc:
        print(f"cbhub chat: {exc}", file=err)
        return 1
    if thinking:
        err.write("\x1b[0m\n" if dim else "\n")
    if wrote_text:
        sys.stdout.write("\n")
        sys.stdout.flush()
    result = stream.result
    assert result is not None
    parts = [f"TTFT {result.client_ttft_ms:.1f} ms" if result.client_ttft_ms is not None else "TTFT n/a (no token)"]
    if result.ttft_ms is not None:
        parts[0] += f" (hub upstream {result.ttft_ms:.1f} ms)"
    if result.tokens_per_s is not None and result.usage is not None:
        parts.append(f"{result.tokens_per_s:.1f} tokens/s ({result.usage.completion_tokens} completion tokens "
                     f"from usage / {result.generation_s:.3f} s from first token to completed)")
    else:
        parts.append("tokens/s n/a (no usage reported)")
    parts.append(f"{result.provider}/{result.model}, finish {result.finish_reason}")
    print(" · ".join(parts), file=err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
