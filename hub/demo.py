"""``cbhub demo``: four providers' wire formats streamed at once over ONE WebSocket.

Without ``--live`` it starts the mock provider (tools/mock_provider.py) and the hub in this
process, points the hub's four provider base URLs at the mock, and sends one completion per
provider (OpenAI SSE, Anthropic SSE, Gemini SSE, Ollama NDJSON) over a single ``websockets``
connection. Tokens are printed as they arrive, then per provider: time to first token (ms,
as measured by this client from sending the request), content chunks received, characters,
and total time (ms).

With ``--live`` the hub uses the real providers whose keys are in the environment
(``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY``) or whose base URL points at a
compatible server (``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``, ``OLLAMA_HOST``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field

import msgspec
import websockets

from hub.app import run_hub
from hub.config import HubConfig
from protocol.messages import HUB_DECODER, Completed, ContentChunk, ErrorMessage, Subscribed, ThinkingStatus

__all__ = ["run_demo", "DEMO_MODELS"]

#: One model per wire format; the mock answers any name.
DEMO_MODELS = {
    "openai": "openai/gpt-4o-mini",
    "anthropic": "anthropic/claude-3-5-haiku-latest",
    "google": "google/gemini-2.0-flash",
    "ollama": "ollama/llama3.2",
}

_COLORS = {"openai": "32", "anthropic": "33", "google": "34", "ollama": "35"}


@dataclass
class _Stats:
    sent_at: float = 0.0
    first_at: float | None = None
    done_at: float | None = None
    chunks: int = 0
    chars: int = 0
    reasoning_chars: int = 0
    finish: str = ""
    usage: str = ""
    error: str = ""
    text: list[str] = field(default_factory=list)


class _TokenView:
    """Prints tokens as they arrive: on a terminal, one live line per provider (the tail of
    its text, redrawn in place); otherwise one labelled line per received chunk."""

    def __init__(self, providers: list[str], width: int = 100) -> None:
        self.providers = providers
        self.tty = sys.stdout.isatty()
        self.width = width
        self.tails = {p: "" for p in providers}
        if self.tty:
            sys.stdout.write("\n" * len(providers))

    def show(self, provider: str, text: str) -> None:
        if not self.tty:
            print(f"[{provider}] {text!r}", flush=True)
            return
        flat = text.replace("\n", " ").replace("\u2028", " ")
        self.tails[provider] = (self.tails[provider] + flat)[-(self.width - 12):]
        lines = [f"\x1b[{_COLORS[p]}m{p:>9}\x1b[0m | {self.tails[p]}\x1b[K" for p in self.providers]
        sys.stdout.write(f"\x1b[{len(self.providers)}F" + "\n".join(lines) + "\n")
        sys.stdout.flush()

    def close(self) -> None:
        sys.stdout.flush()


def _live_providers(config: HubConfig) -> list[str]:
    # Ollama needs no key, so in a live demo it is used only when OLLAMA_HOST names a server.
    return [p for p in DEMO_MODELS if config.provider_configured(p) and (p != "ollama" or os.environ.get("OLLAMA_HOST"))]


async def run_demo(*, live: bool = False, port: int = 0, tokens: int = 40, tps: float = 40.0,
                   prompt: str = "Tell me, briefly, why streaming matters.") -> int:
    """Run the demo; returns the exit status (0 when every stream completed)."""
    async with contextlib.AsyncExitStack() as stack:
        if live:
            config = HubConfig.from_env(port=port)
            providers = _live_providers(config)
            if not providers:
                print("cbhub demo --live: no provider configured; set OPENAI_API_KEY, ANTHROPIC_API_KEY, "
                      "GEMINI_API_KEY or OPENAI_BASE_URL (see README.md)", file=sys.stderr)
                return 2
            models = {p: os.environ.get("CBHUB_DEMO_MODEL_" + p.upper(), DEMO_MODELS[p]) for p in providers}
            text = prompt
        else:
            from tools.mock_provider import MockProvider

            mock = await stack.enter_async_context(MockProvider(port=0, tokens=tokens, tps=tps, ttft_ms=120))
            config = HubConfig(
                port=port,
                openai_base_url=mock.url + "/v1",
                anthropic_base_url=mock.url,
                gemini_base_url=mock.url,
                ollama_host=mock.url,
            )
            models = dict(DEMO_MODELS)
            text = f"{prompt} [[mock tokens={tokens} tps={tps:g} ttft_ms=120]]"
            print(f"mock provider on {mock.url}")
        hub = await stack.enter_async_context(run_hub(config))
        ws_url = hub.url.replace("http", "ws", 1) + "/ws/stream"
        print(f"hub on {hub.url}; one WebSocket to {ws_url}\n")
        stats = {provider: _Stats() for provider in models}
        ids = {f"demo-{provider}": provider for provider in models}
        view = _TokenView(list(models))
        async with websockets.connect(ws_url, compression=None) as ws:
            for completion_id, provider in ids.items():
                stats[provider].sent_at = time.perf_counter()
                await ws.send(msgspec.json.encode({
                    "type": "completion", "id": completion_id, "model": models[provider],
                    "messages": [{"role": "user", "content": text}], "max_tokens": 200,
                }).decode())
            pending = set(ids)
            async for frame in ws:
                message = HUB_DECODER.decode(frame)
                if isinstance(message, Subscribed):
                    continue
                provider = ids.get(getattr(message, "completion_id", None) or "")
                if provider is None:
                    print(f"\n{message}")
                    continue
                entry = stats[provider]
                now = time.perf_counter()
                if isinstance(message, ContentChunk):
                    if entry.first_at is None:
                        entry.first_at = now
                    entry.chunks += 1
                    entry.chars += len(message.content)
                    entry.text.append(message.content)
                    view.show(provider, message.content)
                elif isinstance(message, ThinkingStatus):
                    if entry.first_at is None:
                        entry.first_at = now
                    entry.reasoning_chars += len(message.content)
                elif isinstance(message, Completed):
                    entry.done_at = now
                    entry.finish = message.finish_reason
                    if message.usage:
                        entry.usage = f"{message.usage.prompt_tokens}/{message.usage.completion_tokens}/{message.usage.total_tokens}"
                    pending.discard(message.completion_id)
                elif isinstance(message, ErrorMessage):
                    entry.done_at = now
                    entry.error = f"{message.error.code}: {message.error.message}"
                    pending.discard(message.completion_id or "")
                if not pending:
                    break
        view.close()
        print()
        header = f"{'provider':<10} {'model':<36} {'TTFT ms':>8} {'chunks':>7} {'chars':>6} {'total ms':>9}  finish / usage (p/c/t)"
        print(header)
        print("-" * len(header))
        failures = 0
        for provider, entry in stats.items():
            ttft = f"{(entry.first_at - entry.sent_at) * 1000:.1f}" if entry.first_at else "-"
            total = f"{(entry.done_at - entry.sent_at) * 1000:.1f}" if entry.done_at else "-"
            outcome = entry.error or f"{entry.finish} / {entry.usage or 'no usage'}"
            failures += bool(entry.error)
            print(f"{provider:<10} {models[provider]:<36} {ttft:>8} {entry.chunks:>7} {entry.chars:>6} {total:>9}  {outcome}")
        return 1 if failures else 0
