"""``cbhub demo``: four providers' wire formats streamed at once over ONE WebSocket.

Without ``--live`` it starts the mock provider (hub/testing/mock_provider.py) and the hub in this
process, points the hub's four provider base URLs at the mock, and sends one completion per
provider (OpenAI SSE, Anthropic SSE, Gemini SSE, Ollama NDJSON) over a single ``websockets``
connection. Tokens are printed as they arrive, then per provider: time to first token (ms,
as measured by this client from sending the request), content chunks received, characters,
and total time (ms).

With ``--live`` the hub uses the real providers whose keys are in the environment
(``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY``) or whose base URL points at a
compatible server (``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``, ``OLLAMA_HOST``).

``cbhub demo workflow`` (:func:`run_workflow_demo`) runs the shipped ``content_creation``
workflow (hub/workflow_defs) the same way, through the Python SDK (hub/client.py): a
researcher, a writer and an editor work in turn on one token; each agent's tokens are printed
as they arrive under a header naming it, with its function calls and the token's transitions,
then a summary of every agent turn, the usage and the time. Against the mock, the topic
carries a ``[[mock tokens=N tps=X]]`` directive (the prompt templates copy it into the
researcher's and the writer's prompts; the editor's prompt holds only the draft, so the mock
is started with the same length and pace as its defaults), and the n-th agent's prompt
(researcher 1, writer 2, editor 3) ends with ``[[mock seed=n]]`` so that each agent writes its
own text (``hub.testing.mock_provider.expected_text(N, seed=n)``). ``--live`` uses the real providers
like ``cbhub demo --live``; ``--model`` gives every agent one model (``openai/smollm2`` with
``eval "$(tools/real_llm.sh start)"``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import msgspec
import websockets

from hub.app import run_hub
from hub.config import HubConfig
from protocol.messages import HUB_DECODER, Completed, ContentChunk, ErrorMessage, Subscribed, ThinkingStatus
from protocol.providers import PROVIDERS

__all__ = ["run_demo", "run_workflow_demo", "DEMO_MODELS"]

#: One model per wire format; the mock answers any name.
#: ``{provider: "provider/model"}``, from the provider registry (protocol/providers/).
DEMO_MODELS = PROVIDERS.demo_models()

_PALETTE = ("32", "33", "34", "35", "36", "31")
_COLORS = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(PROVIDERS)}


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
    # A provider that needs no key (Ollama) always counts as configured, so in a live demo it
    # is used only when its base URL variable (OLLAMA_HOST) names a server.
    return [p for p in DEMO_MODELS if config.provider_configured(p)
            and (PROVIDERS[p].needs_key or os.environ.get(PROVIDERS[p].base_url_env))]


def _setup_hint() -> str:
    """``OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY or OPENAI_BASE_URL``: what makes a
    provider configured, from the registry."""
    keys = [spec.api_key_env[0] for spec in PROVIDERS.values() if spec.api_key_env]
    return ", ".join(keys) + f" or {PROVIDERS['openai'].base_url_env}" if keys else "a base URL"


async def run_demo(*, live: bool = False, port: int = 0, tokens: int = 40, tps: float = 40.0,
                   prompt: str = "Tell me, briefly, why streaming matters.") -> int:
    """Run the demo; returns the exit status (0 when every stream completed)."""
    async with contextlib.AsyncExitStack() as stack:
        if live:
            config = HubConfig.from_env(port=port)
            providers = _live_providers(config)
            if not providers:
                print(f"cbhub demo --live: no provider configured; set {_setup_hint()} (see README.md)",
                      file=sys.stderr)
                return 2
            models = {p: os.environ.get("CBHUB_DEMO_MODEL_" + p.upper(), DEMO_MODELS[p]) for p in providers}
            text = prompt
        else:
            from hub.testing.mock_provider import MockProvider

            mock = await stack.enter_async_context(MockProvider(port=0, tokens=tokens, tps=tps, ttft_ms=120))
            config = HubConfig(port=port, **mock.hub_overrides())
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
                owner = ids.get(getattr(message, "completion_id", None) or "")
                if owner is None:
                    print(f"\n{message}")
                    continue
                entry = stats[owner]
                now = time.perf_counter()
                if isinstance(message, ContentChunk):
                    if entry.first_at is None:
                        entry.first_at = now
                    entry.chunks += 1
                    entry.chars += len(message.content)
                    entry.text.append(message.content)
                    view.show(owner, message.content)
                elif isinstance(message, ThinkingStatus):
                    if entry.first_at is None:
                        entry.first_at = now
                    entry.reasoning_chars += len(message.content)
                elif isinstance(message, Completed):
                    entry.done_at = now
                    entry.finish = message.finish_reason
                    usage = message.usage
                    if usage:
                        entry.usage = f"{usage.prompt_tokens}/{usage.completion_tokens}/{usage.total_tokens}"
                    pending.discard(message.completion_id)
                elif isinstance(message, ErrorMessage):
                    entry.done_at = now
                    entry.error = f"{message.error.code}: {message.error.message}"
                    pending.discard(message.completion_id or "")
                if not pending:
                    break
        view.close()
        print()
        header = (f"{'provider':<10} {'model':<36} {'TTFT ms':>8} {'chunks':>7} {'chars':>6} {'total ms':>9}  "
                  "finish / usage (p/c/t)")
        print(header)
        print("-" * len(header))
        failures = 0
        for provider, entry in stats.items():
            ttft = f"{(entry.first_at - entry.sent_at) * 1000:.1f}" if entry.first_at else "-"
            total = f"{(entry.done_at - entry.sent_at) * 1000:.1f}" if entry.done_at else "-"
            outcome = entry.error or f"{entry.finish} / {entry.usage or 'no usage'}"
            failures += bool(entry.error)
            print(f"{provider:<10} {models[provider]:<36} {ttft:>8} {entry.chunks:>7} {entry.chars:>6} {total:>9}  "
                  f"{outcome}")
        return 1 if failures else 0


# cbhub demo workflow.

_AGENT_COLORS = ("36", "33", "35", "32", "34")


def _content_creation(model: str | None, seeds: bool) -> dict[str, Any]:
    """The shipped content_creation definition; every agent's model set to ``model`` (its
    fallbacks dropped: they name the original models) when given; with ``seeds``, the n-th
    agent's prompt (from 1) ends with a ``[[mock seed=n]]`` directive."""
    import yaml

    from hub.workflows import DEFINITIONS_DIR

    definition: dict[str, Any] = yaml.safe_load((DEFINITIONS_DIR / "content_creation.yaml").read_text(encoding="utf-8"))
    for n, agent in enumerate(definition["agents"], 1):
        if model:
            agent["model"] = model
            agent.pop("fallbacks", None)
        if seeds:
            agent["prompt"] += f" [[mock seed={n}]]"
    return definition


class _WorkflowView:
    """Prints a workflow's events as they arrive: a header per agent turn, its tokens inline,
    its function calls, the token's transitions (colours and dimmed reasoning on a terminal)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty() and not os.environ.get("NO_COLOR")
        self.colors: dict[str, str] = {}
        self.open_line = False  # the last write left the cursor mid-line
        self.thinking = False
        self.agent: str | None = None

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.tty else text

    def _color(self, agent_id: str) -> str:
        return self.colors.setdefault(agent_id, _AGENT_COLORS[len(self.colors) % len(_AGENT_COLORS)])

    def _line(self, text: str = "") -> None:
        self._end_thinking()
        if self.open_line:
            self.out.write("\n")
            self.open_line = False
        self.out.write(text + "\n")
        self.out.flush()

    def _end_thinking(self) -> None:
        if self.thinking:
            self.out.write("\x1b[0m\n")
            self.thinking = False
            self.open_line = False

    def header(self, agent_id: str, detail: str) -> None:
        self.agent = agent_id
        self._line()
        self._line(self._paint(f"── {agent_id} ", f"1;{self._color(agent_id)}") + self._paint(detail, "2"))

    def tokens(self, agent_id: str, content: str, reasoning: str) -> None:
        if agent_id != self.agent:  # its turn began while the client was away
            self.header(agent_id, "(at work when the client resumed)")
        if reasoning and self.tty:
            if not self.thinking:
                if self.open_line:
                    self.out.write("\n")
                self.out.write("\x1b[2m")
                self.thinking = True
            self.out.write(reasoning)
            self.open_line = True
        if content:
            self._end_thinking()
            self.out.write(content)
            self.open_line = not content.endswith("\n")
        self.out.flush()

    def note(self, text: str, code: str = "2") -> None:
        self._line(self._paint(text, code))


def _usage_text(usage: Any) -> str:
    return f"{usage.prompt_tokens}/{usage.completion_tokens}/{usage.total_tokens}" if usage is not None else "-"


async def run_workflow_demo(*, live: bool = False, port: int = 0, topic: str = "tides",
                            audience: str = "curious readers", tokens: int = 40, tps: float = 60.0,
                            model: str | None = None, out: TextIO | None = None) -> int:
    """Run ``content_creation`` and print it live (module docstring); returns the exit status:
    0 when the run completed, 1 when it failed, 2 when a live agent's provider is not set up."""
    from hub.client import HubClient, HubClientError, HubStreamError, Reconnect
    from protocol.messages import (
        AgentCompleted,
        AgentProgress,
        AgentStarted,
        FunctionExecuted,
        TokenCreated,
        WorkflowCompleted,
        WorkflowSnapshot,
        WorkflowTransition,
    )

    out = out or sys.stdout
    err = sys.stderr
    definition = _content_creation(model, seeds=not live)
    async with contextlib.AsyncExitStack() as stack:
        if live:
            config = HubConfig.from_env(port=port)
            served = {agent["model"]: PROVIDERS.provider_of(agent["model"]) for agent in definition["agents"]}
            missing = sorted(model for model, provider in served.items()
                             if provider and not config.provider_configured(provider))
            if missing:
                print(f"cbhub demo workflow --live: no provider configured for {', '.join(missing)}; set "
                      f"{_setup_hint()}, or give every agent "
                      "one model with --model (openai/smollm2 after `eval \"$(tools/real_llm.sh start)\"`; "
                      "see README.md)", file=err)
                return 2
            run_topic = topic
        else:
            from hub.testing.mock_provider import MockProvider

            mock = await stack.enter_async_context(MockProvider(port=0, tokens=tokens, tps=tps, ttft_ms=80))
            config = HubConfig(port=port, **mock.hub_overrides())
            run_topic = topic if "[[mock" in topic else f"{topic} [[mock tokens={tokens} tps={tps:g}]]"
            print(f"mock provider on {mock.url}", file=out)
        hub = await stack.enter_async_context(run_hub(config))
        ws_url = hub.url.replace("http", "ws", 1) + "/ws/stream"
        print(f"hub on {hub.url}; workflow {definition['name']} over one WebSocket to {ws_url} (Python SDK)", file=out)
        view = _WorkflowView(out)

        def reconnected(info: Reconnect) -> None:
            view.note(f"[reconnected after close {info.close_code} in {info.downtime_s * 1000:.0f} ms; resuming]", "33")

        started = time.perf_counter()
        began: dict[str, float] = {}  # agent id -> when its turn's agent_started was printed
        try:
            client = await stack.enter_async_context(HubClient(ws_url, on_reconnect=reconnected))
            stream = client.workflow(definition=definition, input={"topic": run_topic, "audience": audience})
            async for event in stream:
                cls = event.__class__
                if cls is AgentProgress:
                    view.tokens(event.agent_id, event.content, event.reasoning)
                elif cls is AgentStarted:
                    began[event.agent_id] = time.perf_counter()
                    view.header(event.agent_id, f"{event.model} · at {event.place} · completion {event.completion_id}")
                elif cls is FunctionExecuted:
                    outcome = f"error: {event.error}" if event.error is not None else repr(event.result)
                    view.note(f"  ƒ {event.name}({event.arguments!r}) → {outcome}", "36")
                elif cls is AgentCompleted:
                    by = f", served by {event.provider}/{event.model}" if event.provider else ""
                    took = time.perf_counter() - began.pop(event.agent_id, started)
                    view.note(f"✓ {event.agent_id} done: {len(event.result)} chars, usage (p/c/t) "
                              f"{_usage_text(event.usage)}{by}, {took:.2f} s")
                elif cls is WorkflowTransition:
                    view.note(f"→ {event.transition_id}: {event.from_place} → {event.to_place}", "1")
                elif cls is TokenCreated:
                    view.note(f"token {event.token_id} at {event.place}; input {event.data.get('input')!r}")
                elif cls is WorkflowSnapshot:
                    view.note(f"[resumed from a snapshot: token at {event.place}"
                              + (f", {event.agent_id} at work]" if event.agent_id else "]"), "33")
                elif cls is WorkflowCompleted:
                    view.note(f"workflow {event.workflow_id} completed at {event.place}", "1;32")
        except HubStreamError as exc:
            view.note(f"workflow failed: {exc.code}: {exc.error.message}", "1;31")
            return 1
        except HubClientError as exc:
            view.note(f"cbhub demo workflow: {exc}", "1;31")
            return 1
        elapsed = time.perf_counter() - started
    result = stream.result
    print(file=out)
    header = (f"{'agent':<11} {'model':<36} {'place':<11} {'TTFT ms':>8} {'chars':>6} {'time ms':>8}  "
              "usage (p/c/t)  answer")
    print(header, file=out)
    print("-" * len(header), file=out)
    for turn in result.agents:
        ttft = f"{turn.ttft_s * 1000:.1f}" if turn.ttft_s is not None else "-"
        duration = f"{turn.duration_s * 1000:.1f}" if turn.duration_s is not None else "-"
        answer = (turn.result or "").replace("\n", " ").replace("\u2028", " ").strip()
        answer = answer if len(answer) <= 40 else answer[:39] + "…"
        print(f"{turn.agent_id:<11} {turn.model or '?':<36} {turn.place or '?':<11} {ttft:>8} {len(turn.text):>6} "
              f"{duration:>8}  {_usage_text(turn.usage):<13}  {answer}", file=out)
    path = " → ".join(t.transition_id for t in result.transitions)
    functions = sum(len(turn.functions) for turn in result.agents)
    print(f"\n{len(result.agents)} agent turns, {functions} function calls; path {path}; "
          f"usage (p/c/t) {_usage_text(result.usage)}; {elapsed:.2f} s", file=out)
    return 0
