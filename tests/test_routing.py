"""Named models and deployments (issue 14 item 1, hub/routing.py): two mock providers on two
ports behind one alias, balanced by weight, failing over before content to the other
deployment and then to the alias's fallback, least_busy, per-deployment rpm, /v1/models, the
openai SDK calling an alias, and the config checks of ``models:``."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from hub.app import Hub, run_hub
from hub.config import ConfigError, Deployment, HubConfig, ModelEntry
from hub.routing import Router
from protocol.messages import Completed, Completion
from tests.conftest import hub_config
from tools.mock_provider import MockProvider, expected_text


@pytest.fixture
async def mocks() -> AsyncIterator[tuple[MockProvider, MockProvider]]:
    """Two mock providers on two ports: two deployments' servers."""
    async with MockProvider(port=0, tokens=4) as first, MockProvider(port=0, tokens=4) as second:
        yield first, second


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (a deployment that cannot be reached)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def openai_at(url: str, model: str = "mock-model", **extra: Any) -> Deployment:
    return Deployment(provider="openai", model=model, base_url=url, **extra)


def config_with(mock: MockProvider, models: list[ModelEntry], **overrides: Any) -> HubConfig:
    values: dict[str, Any] = {"retry_max_attempts": 1, "models": models}
    values.update(overrides)
    return hub_config(mock, **values)


def sdk(hub: Hub) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="not-needed", max_retries=0)


async def ask(client: openai.AsyncOpenAI, model: str, content: str = "hi [[mock tokens=4 seed=3]]") -> Any:
    return await client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}])


async def attempts_of(client: Any, model: str, content: str = "hi [[mock tokens=4 seed=3]]") -> list[dict[str, Any]]:
    """One completion over the WebSocket (``client`` from ws_factory) and its ``attempts``."""
    cid = f"r-{random.getrandbits(64):x}"
    await client.send({"type": "completion", "id": cid, "model": model, "coalesce": False,
                       "messages": [{"role": "user", "content": content}]})
    last = (await client.until_terminal(cid))[-1]
    assert isinstance(last, Completed), last
    return [{"provider": a.provider, "model": a.model, "error": a.error} for a in last.attempts]


async def test_two_deployments_are_balanced_by_weight(mocks: tuple[MockProvider, MockProvider]) -> None:
    heavy, light = mocks
    models = [ModelEntry("chat", [openai_at(heavy.url + "/v1", weight=3.0), openai_at(light.url + "/v1", weight=1.0)])]
    async with run_hub(config_with(heavy, models)) as hub:
        client = sdk(hub)
        for _ in range(10):  # batches of 20 at once
            answers = await asyncio.gather(*(ask(client, "chat") for _ in range(20)))
            assert all(a.choices[0].message.content == expected_text(4, seed=3) for a in answers)
            assert all(a.model == "chat" for a in answers)
        await client.close()
    counts = heavy.stats["requests"], light.stats["requests"]
    # 200 requests at 3:1: each gets some, the heavier more (P(heavy <= light) < 1e-12).
    assert sum(counts) == 200
    assert counts[0] > 0 and counts[1] > 0
    assert counts[0] > counts[1], counts


def test_simple_shuffle_puts_each_deployment_first_by_its_weight() -> None:
    config = HubConfig(models=[ModelEntry("chat", [openai_at("http://a/v1", weight=1.0),
                                                   openai_at("http://b/v1", weight=4.0)])])
    router = Router(config, environ={}, rng=random.Random(5))
    firsts = [router.order("chat")[0].label for _ in range(5000)]
    share = firsts.count("chat[1]") / len(firsts)
    assert 0.75 < share < 0.85  # 4 / (1 + 4) = 0.8; seeded, so fixed


async def test_a_failing_deployment_fails_over_to_the_other_before_content(
        mocks: tuple[MockProvider, MockProvider], ws_factory: Any) -> None:
    good, _ = mocks
    # The unreachable one is heavy: tried first (almost surely; every run must still be served).
    models = [ModelEntry("chat", [Deployment(provider="openai", model="dead", base_url=closed_port_url(), weight=1e6),
                                  openai_at(good.url + "/v1", weight=1e-6)])]
    async with run_hub(config_with(good, models)) as hub:
        client = await ws_factory(hub)
        runs = [await attempts_of(client, "chat") for _ in range(5)]
    assert good.stats["requests"] == 5
    first = runs[0]
    assert first[0]["model"] == "dead" and first[0]["error"] == "upstream_unreachable"
    assert first[-1] == {"provider": "openai", "model": "mock-model", "error": None}
    # Later runs: the dead deployment failed again or its breaker had opened; either way served.
    assert all(run[-1]["error"] is None and run[0]["error"] in ("upstream_unreachable", "provider_unavailable")
               for run in runs)


async def test_then_to_the_fallback_alias(mocks: tuple[MockProvider, MockProvider], ws_factory: Any) -> None:
    backup, _ = mocks
    models = [
        ModelEntry("chat", [Deployment(provider="openai", model="dead-1", base_url=closed_port_url()),
                            Deployment(provider="openai", model="dead-2", base_url=closed_port_url())],
                   fallbacks=["backup"]),
        ModelEntry("backup", [openai_at(backup.url + "/v1", model="backup-model")]),
    ]
    async with run_hub(config_with(backup, models)) as hub:
        attempts = await attempts_of(await ws_factory(hub), "chat")
        sdk_client = sdk(hub)
        answer = await ask(sdk_client, "chat")
        await sdk_client.close()
    assert sorted(a["model"] for a in attempts[:2]) == ["dead-1", "dead-2"]
    assert [a["error"] for a in attempts[:2]] == ["upstream_unreachable"] * 2
    assert attempts[2] == {"provider": "openai", "model": "backup-model", "error": None}
    assert answer.choices[0].message.content == expected_text(4, seed=3)
    assert [r["body"]["model"] for r in backup.requests] == ["backup-model", "backup-model"]


async def test_least_busy_picks_the_idle_deployment(mocks: tuple[MockProvider, MockProvider]) -> None:
    first, second = mocks
    models = [ModelEntry("chat", [openai_at(first.url + "/v1"), openai_at(second.url + "/v1")])]
    async with run_hub(config_with(first, models, routing_strategy="least_busy")) as hub:
        client = sdk(hub)
        for round_ in range(4):
            held = asyncio.create_task(ask(client, "chat", f"[[mock tokens=2 gate=g{round_}]]"))
            async with aiohttp.ClientSession() as session:
                while True:  # until the held request waits at one of the mocks
                    waiting = []
                    for mock in mocks:
                        async with session.get(mock.url + "/_mock/gates") as response:
                            waiting.append((await response.json()).get(f"g{round_}", 0))
                    if sum(waiting) == 1:
                        break
                    await asyncio.sleep(0.01)
                busy = waiting.index(1)
                before = [m.stats["requests"] for m in mocks]
                for _ in range(3):  # the idle one, each time (the busy one still holds one)
                    await ask(client, "chat")
                after = [m.stats["requests"] for m in mocks]
                assert after[busy] == before[busy]
                assert after[1 - busy] == before[1 - busy] + 3
                async with session.post(mocks[busy].url + f"/_mock/release?gate=g{round_}") as response:
                    assert (await response.json())["released"] == 1
            assert (await held).choices[0].message.content == expected_text(2)
        await client.close()


async def test_a_deployment_over_its_rpm_is_skipped_not_failed(mocks: tuple[MockProvider, MockProvider],
                                                                ws_factory: Any) -> None:
    limited, other = mocks
    models = [ModelEntry("chat", [openai_at(limited.url + "/v1", model="limited", weight=1e6, rpm=2),
                                  openai_at(other.url + "/v1", model="other", weight=1e-6)])]
    async with run_hub(config_with(limited, models)) as hub:
        client = await ws_factory(hub)
        runs = [await attempts_of(client, "chat") for _ in range(4)]
        breaker = hub.completions.breakers.get("openai", limited.url + "/v1#limited")
        assert breaker.stats(asyncio.get_running_loop().time()) == (0.0, 2)  # two served, no failure
    assert limited.stats["requests"] == 2 and other.stats["requests"] == 2
    assert runs[2][0] == {"provider": "openai", "model": "limited", "error": "rate_limited"}
    assert runs[2][1] == {"provider": "openai", "model": "other", "error": None}


async def test_deployments_have_their_own_breakers(mocks: tuple[MockProvider, MockProvider], ws_factory: Any) -> None:
    first, second = mocks
    models = [ModelEntry("chat", [openai_at(first.url + "/v1", weight=1e6), openai_at(second.url + "/v1")])]
    async with run_hub(config_with(first, models)) as hub:
        await attempts_of(await ws_factory(hub), "chat")
        keys = set(hub.completions.breakers.breakers)
    # Same provider kind, two base URLs: two breakers (OpenAI and OpenRouter would not share one).
    assert ("openai", first.url + "/v1#mock-model") in keys
    assert ("openai", first.url) not in keys


async def test_v1_models_lists_the_aliases(mocks: tuple[MockProvider, MockProvider]) -> None:
    mock, _ = mocks
    models = [ModelEntry("chat", [openai_at(mock.url + "/v1")]), ModelEntry("fast", [openai_at(mock.url + "/v1")])]
    async with run_hub(config_with(mock, models)) as hub:
        client = sdk(hub)
        listed = [m.id for m in (await client.models.list()).data]
        one = await client.models.retrieve("chat")
        routed = await client.models.retrieve("openai/some-model")
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("nope")
        await client.close()
    assert listed[:2] == ["chat", "fast"]
    assert "openai/gpt-4o-mini" in listed  # today's listing follows
    assert (one.id, one.owned_by) == ("chat", "cbhub")
    assert (routed.id, routed.owned_by) == ("openai/some-model", "openai")


async def test_provider_model_names_keep_working_beside_aliases(mocks: tuple[MockProvider, MockProvider]) -> None:
    mock, _ = mocks
    async with run_hub(config_with(mock, [ModelEntry("chat", [openai_at(mock.url + "/v1")])])) as hub:
        client = sdk(hub)
        answer = await ask(client, "openai/gpt-4o-mini")
        await client.close()
    assert answer.choices[0].message.content == expected_text(4, seed=3)
    assert mock.requests[-1]["body"]["model"] == "gpt-4o-mini"


def test_router_expands_each_name_once() -> None:
    config = HubConfig(models=[ModelEntry("a", [openai_at("http://a/v1")], fallbacks=["b"]),
                               ModelEntry("b", [openai_at("http://b/v1")], fallbacks=["a", "openai/gpt-4o"])],
                       openai_api_key="sk-test")
    targets = Router(config, environ={}).targets(Completion(model="a", messages=[{"role": "user", "content": "x"}],
                                                            fallbacks=["b"]))
    assert [(t.name, getattr(t.upstream, "url", None)) for t in targets] == [
        ("a", "http://a/v1/chat/completions"), ("b", "http://b/v1/chat/completions"),
        ("openai/gpt-4o", "https://api.openai.com/v1/chat/completions")]


# The config of models: checked at load.


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> HubConfig:
    path = tmp_path / "hub.yaml"
    path.write_text(text)
    return HubConfig.load(str(path), environ=environ or {})


_GOOD = """
routing: {strategy: least_busy}
models:
  - name: chat
    deployments:
      - {provider: openai, model: gpt-4o-mini, api_key_env: MY_OPENAI_KEY, weight: 3, rpm: 100}
      - {provider: openai, model: openai/gpt-4o-mini, base_url: 'https://openrouter.ai/api/v1',
         api_key_env: MY_ROUTER_KEY, headers: {X-Title: hub}}
      - {provider: gemini, model: gemini-2.0-flash, api_key_env: MY_GEMINI_KEY}
      - {provider: ollama, model: llama3.2, base_url: 'http://127.0.0.1:11434'}
    fallbacks: [backup, anthropic/claude-3-5-haiku-latest]
  - name: backup
    deployments:
      - {provider: azure_openai, model: my-gpt4o, base_url: 'https://x.openai.azure.com',
         api_version: '2024-10-21', api_key_env: MY_AZURE_KEY}
fallbacks:
  openai/gpt-4o: [chat]
"""


def test_models_config_loads(tmp_path: Path) -> None:
    keys = {"MY_OPENAI_KEY": "sk-1", "MY_ROUTER_KEY": "sk-or-2", "MY_GEMINI_KEY": "g-3", "MY_AZURE_KEY": "az-4"}
    config = load(tmp_path, _GOOD, keys)
    assert config.routing_strategy == "least_busy"
    assert [m.name for m in config.models] == ["chat", "backup"]
    assert config.models[0].deployments[1].headers == {"X-Title": "hub"}
    assert "sk-or-2" not in config.to_yaml()  # the file names variables, never keys
    assert HubConfig.load(tmp_path / "hub.yaml", environ=keys).models == config.models


@pytest.mark.parametrize(("text", "message"), [
    (_GOOD, r"models\[0\]\.deployments\[0\]\.api_key_env: the variable MY_OPENAI_KEY is not set"),
    ("models: [{name: a, deployments: [{provider: openia, model: m}]}]",
     r"models\[0\]\.deployments\[0\]\.provider: must be one of openai, openai_responses, anthropic"),
    ("models: [{name: a, deployments: [{provider: openai, model: m}]}]",
     r"models\[0\]\.deployments\[0\]\.api_key_env: openai at its public API needs a key"),
    ("models: [{name: a, deployments: [{provider: azure_openai, model: m, base_url: 'https://x', api_key_env: K}]}]",
     r"models\[0\]\.deployments\[0\]\.api_version: an azure_openai deployment needs it"),
    ("models: [{name: a, deployments: []}]", r"models\[0\]\.deployments: must list at least one deployment"),
    ("models: [{name: a, deployments: [{provider: ollama, model: m}]}, {name: a, deployments: [{provider: ollama,"
     " model: m}]}]", r"models\[1\]\.name: \"a\" is named twice"),
    ("models: [{name: a, deployments: [{provider: ollama, model: m, weight: 0}]}]",
     r"models\[0\]\.deployments\[0\]\.weight: must be > 0"),
    ("models: [{name: a, deployments: [{provider: ollama, model: m}], fallbacks: [nowhere]}]",
     r"models\[0\]\.fallbacks\[0\]: \"nowhere\" is neither a named model nor a provider/model name"),
    ("models: [{name: a, deployments: [{provider: openai, model: m, api_key: sk-in-the-file}]}]",
     r"models: invalid entry: Object contains unknown field `api_key`"),
    ("routing: {strategy: round_robin}", r"routing\.strategy: must be one of simple_shuffle, least_busy"),
])
def test_models_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text, {"K": "k"})


def test_a_provider_kind_missing_from_the_registry_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hub.config as config_module
    from protocol.providers import PROVIDERS, ProviderRegistry

    without = ProviderRegistry(spec for name, spec in PROVIDERS.items() if name != "openai_responses")
    monkeypatch.setattr(config_module, "PROVIDERS", without)
    with pytest.raises(ConfigError, match=r"provider: the provider kind openai_responses is not available in this hub"):
        load(tmp_path, "models: [{name: a, deployments: [{provider: openai_responses, model: m,"
                       " base_url: 'http://127.0.0.1:1/v1'}]}]")


def test_cbhub_serve_exits_2_on_an_unset_key_variable(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "hub.yaml"
    path.write_text("models: [{name: a, deployments: [{provider: anthropic, model: m, api_key_env: CBHUB_TEST_UNSET}]}]")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--config", str(path), "--port", "0"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "CBHUB_TEST_UNSET is not set" in result.stderr
    assert "Traceback" not in result.stderr


async def test_deployments_of_other_kinds_are_reached_with_their_own_wire_format(
        mocks: tuple[MockProvider, MockProvider]) -> None:
    mock, _ = mocks
    kinds = {"openai_responses": "/v1", "anthropic": "", "gemini": "", "ollama": ""}
    models = [ModelEntry(kind, [Deployment(provider=kind, model=f"{kind}-model", base_url=mock.url + path)])
              for kind, path in kinds.items()]
    async with run_hub(config_with(mock, models)) as hub:
        client = sdk(hub)
        answers = [await ask(client, kind) for kind in kinds]
        await client.close()
    assert [a.choices[0].message.content for a in answers] == [expected_text(4, seed=3)] * 4
    paths = [r["path"] for r in mock.requests]
    assert paths[0] == "/v1/responses" and paths[1] == "/v1/messages" and paths[3] == "/api/chat"
    assert paths[2].startswith("/v1beta/models/gemini-model:streamGenerateContent")


async def test_every_deployment_at_its_limit_is_a_429(mocks: tuple[MockProvider, MockProvider]) -> None:
    mock, _ = mocks
    models = [ModelEntry("chat", [openai_at(mock.url + "/v1", rpm=1)])]
    async with run_hub(config_with(mock, models)) as hub:
        client = sdk(hub)
        await ask(client, "chat")
        with pytest.raises(openai.RateLimitError, match="rpm limit"):
            await ask(client, "chat")
        await client.close()
    assert mock.stats["requests"] == 1
