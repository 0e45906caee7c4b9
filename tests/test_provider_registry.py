"""protocol/providers/ registry: routing, the /v1/models listing, a provider added in a test
registry, the config built from it, and the rules that keep providers units (protocol/ pure,
hub/providers.py naming no provider, every docs/PROVIDERS.md section cited exists)."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from hub.config import KEYS, HubConfig
from hub.providers import build_request
from protocol.errors import ProviderError
from protocol.messages import Completion, decode_client_message
from protocol.normalizers.openai import OpenAIChatNormalizer
from protocol.providers import (
    PROVIDERS,
    ProviderRegistry,
    ProviderSettings,
    ProviderSpec,
    UpstreamRequest,
    get,
    model_catalogue,
    resolve_model,
)

ROOT = Path(__file__).resolve().parents[1]


def completion(model: str) -> Completion:
    payload = {"type": "completion", "model": model, "messages": [{"role": "user", "content": "Hi"}]}
    message = decode_client_message(json.dumps(payload))
    assert isinstance(message, Completion)
    return message


def _echo_build(request: Completion, model: str, settings: ProviderSettings) -> UpstreamRequest:
    return UpstreamRequest(provider="echo", model=model, url=settings.base_url + "/echo", headers={},
                           body={"model": model}, make_normalizer=OpenAIChatNormalizer)


# A provider that exists only in this test: it reuses OpenAI's config fields for its settings.
ECHO = ProviderSpec(
    name="echo", title="Echo", prefixes=("echo/",), bare_prefixes=("echo-",), framing="sse",
    default_base_url="https://echo.example", build=_echo_build, make_normalizer=OpenAIChatNormalizer,
    needs_key=True, config_section="echo", api_key_field="openai_api_key", api_key_env=("ECHO_API_KEY",),
    api_key_help="", base_url_key="base_url", base_url_field="openai_base_url", base_url_env="ECHO_BASE_URL",
    base_url_help="", example_models=("echo-1", "echo-2"), demo_model="echo-1",
)


def test_registry_is_a_mapping_in_listing_order() -> None:
    assert list(PROVIDERS) == ["openai", "anthropic", "google", "ollama", "openai_responses"]
    assert "google" in PROVIDERS and "gemini" not in PROVIDERS
    assert get("ollama") is PROVIDERS["ollama"]
    with pytest.raises(KeyError, match="known: openai, anthropic, google, ollama, openai_responses"):
        get("azure")


def test_resolve_model_and_provider_of() -> None:
    assert resolve_model("anthropic/claude-x") == ("anthropic", "claude-x")
    assert PROVIDERS.provider_of("gemini-2.0-flash") == "google"
    assert PROVIDERS.provider_of("mystery") == ""
    with pytest.raises(ProviderError) as info:
        resolve_model("azure/gpt-4o")
    assert info.value.code == "model_not_found"
    assert "use openai/, anthropic/, google/, ollama/ or openai_responses/ followed" in info.value.message


def test_duplicate_names_and_prefixes_are_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        PROVIDERS.extended(PROVIDERS["openai"])
    with pytest.raises(ValueError, match="already 'openai'"):
        PROVIDERS.extended(_replace(ECHO, bare_prefixes=("gpt-",)))


def _replace(spec: ProviderSpec, **changes: Any) -> ProviderSpec:
    return dataclasses.replace(spec, **changes)


def test_model_catalogue_lists_configured_providers_in_order() -> None:
    data = model_catalogue(lambda name: name in ("openai", "ollama"))
    assert [m["id"] for m in data] == ["openai/gpt-4o-mini", "openai/gpt-4o", "openai/o4-mini", "ollama/llama3.2"]
    assert data[0] == {"id": "openai/gpt-4o-mini", "object": "model", "created": 0, "owned_by": "openai"}
    everything = model_catalogue(HubConfig(openai_api_key="k", anthropic_api_key="k", gemini_api_key="k",
                                           openai_responses_api_key="k").provider_configured)
    assert {m["owned_by"] for m in everything} == set(PROVIDERS)
    assert [m["owned_by"] for m in model_catalogue(HubConfig().provider_configured)] == ["ollama"]


def test_a_provider_added_in_a_test_registry_is_listed_and_routed() -> None:
    registry = PROVIDERS.extended(ECHO)
    assert list(registry)[-1] == "echo" and "echo" not in PROVIDERS
    data = model_catalogue(lambda name: name == "echo", registry)
    assert data == [
        {"id": "echo/echo-1", "object": "model", "created": 0, "owned_by": "echo"},
        {"id": "echo/echo-2", "object": "model", "created": 0, "owned_by": "echo"},
    ]
    assert registry.resolve_model("echo-7") == ("echo", "echo-7")
    assert registry.demo_models()["echo"] == "echo/echo-1"
    assert registry.base_urls_on("http://m:1")["echo"] == "http://m:1"
    # Routed with the hub's own settings function (HubConfig.provider_settings).
    request = build_request(completion("echo/x"), HubConfig(openai_base_url="http://local"), registry)
    assert (request.provider, request.model, request.url) == ("echo", "x", "http://local/echo")
    with pytest.raises(ProviderError) as info:
        build_request(completion("echo/x"), HubConfig(openai_base_url="https://echo.example/"), registry)
    assert info.value.code == "provider_not_configured"
    assert "ECHO_API_KEY" in info.value.message


def test_registry_build_request_maps_builder_errors_to_invalid_message() -> None:
    def broken(request: Completion, model: str, settings: ProviderSettings) -> UpstreamRequest:
        raise KeyError("name")

    registry = ProviderRegistry([_replace(ECHO, build=broken)])
    with pytest.raises(ProviderError) as info:
        registry.build_request(completion("echo/x"), lambda spec: ProviderSettings(base_url="http://x"))
    assert info.value.code == "invalid_message"
    assert "KeyError" in info.value.message


def test_config_reads_the_registry() -> None:
    fields = set(HubConfig.__struct_fields__)
    providers_keys = [key for key in KEYS if key.path.startswith("providers.")]
    expected = []
    for spec in PROVIDERS.values():
        assert spec.base_url_field in fields
        assert getattr(HubConfig(), spec.base_url_field) == spec.default_base_url
        if spec.api_key_field:
            assert spec.api_key_field in fields
            expected.append((f"providers.{spec.config_section}.api_key", spec.api_key_field, spec.api_key_env, True))
        expected.append((f"providers.{spec.config_section}.{spec.base_url_key}", spec.base_url_field,
                         (spec.base_url_env,), False))
    assert [(k.path, k.field, k.env, k.secret) for k in providers_keys] == expected
    config = HubConfig(gemini_api_key="g", gemini_base_url="http://g")
    assert config.provider_settings("google") == ProviderSettings(base_url="http://g", api_key="g")
    assert config.provider_settings(PROVIDERS["ollama"]) == ProviderSettings(base_url="http://127.0.0.1:11434")
    assert HubConfig.from_env({"OLLAMA_HOST": "gpu"}).ollama_host == "http://gpu:11434"


# The rules that keep providers units.

_IO_MODULES = {"asyncio", "aiohttp", "socket", "time", "selectors", "ssl", "websockets", "os", "subprocess"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "protocol" / "providers").glob("*.py")), ids=lambda p: p.name)
def test_provider_modules_are_pure(path: Path) -> None:
    assert not {name.split(".")[0] for name in _imports(path)} & _IO_MODULES
    assert not {name for name in _imports(path) if name.split(".")[0] in ("hub", "tools")}


def test_hub_providers_knows_no_provider_by_name() -> None:
    source = (ROOT / "hub" / "providers.py").read_text(encoding="utf-8")
    for spec in PROVIDERS.values():
        for word in {spec.name, spec.config_section, *(p.rstrip("/") for p in spec.prefixes)}:
            assert not re.search(rf"[\"']{re.escape(word)}[\"'/]", source), word
        for header in spec.request_id_headers:
            assert header not in source, header


@pytest.mark.parametrize("spec", list(PROVIDERS.values()), ids=lambda spec: spec.name)
def test_request_id_headers_come_from_the_spec(spec: ProviderSpec) -> None:
    settings = ProviderSettings(base_url="http://mock:9100", api_key="k")
    request = spec.build(completion(f"{spec.prefix}m"), "m", settings)
    assert request.request_id_headers == spec.request_id_headers


def test_config_does_not_import_hub_providers() -> None:
    assert "hub.providers" not in _imports(ROOT / "hub" / "config.py")


def test_the_product_never_imports_tools() -> None:
    offenders = []
    for path in [*(ROOT / "hub").rglob("*.py"), *(ROOT / "protocol").rglob("*.py")]:
        if any(name == "tools" or name.startswith("tools.") for name in _imports(path)):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_every_cited_providers_md_section_exists() -> None:
    doc = (ROOT / "docs" / "PROVIDERS.md").read_text(encoding="utf-8")
    anchors = set(re.findall(r'<a id="s([0-9.]+)"></a>', doc))
    cited: dict[str, set[str]] = {}
    for folder in ("hub", "protocol", "tools", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for match in re.finditer(r"PROVIDERS\.md((?:[ ,]*(?:and )?§[0-9.]*[0-9])+)", text):
                for section in re.findall(r"§([0-9.]*[0-9])", match.group(1)):
                    cited.setdefault(section, set()).add(str(path.relative_to(ROOT)))
    assert cited, "no citation found"
    missing = {section: sorted(paths) for section, paths in cited.items() if section not in anchors}
    assert missing == {}
    for spec in PROVIDERS.values():
        assert spec.docs.lstrip("§") in anchors
