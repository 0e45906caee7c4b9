"""protocol/providers/anthropic.py: the description and the pure request builder (no
HubConfig, no network). The wire rules are docs/PROVIDERS.md §2."""

from __future__ import annotations

import json
from typing import Any

from protocol.messages import Completion, decode_client_message
from protocol.providers import PROVIDERS, ProviderSettings
from protocol.providers.anthropic import SPEC, AnthropicNormalizer, build_request


def completion(messages: list[dict[str, Any]], **fields: Any) -> Completion:
    payload = {"type": "completion", "model": "x", "messages": messages, **fields}
    message = decode_client_message(json.dumps(payload))
    assert isinstance(message, Completion)
    return message


def test_description() -> None:
    assert PROVIDERS["anthropic"] is SPEC
    assert (SPEC.prefixes, SPEC.bare_prefixes, SPEC.framing) == (("anthropic/",), ("claude-",), "sse")
    assert SPEC.default_base_url == "https://api.anthropic.com"
    assert (SPEC.api_key_field, SPEC.api_key_env, SPEC.base_url_env) == (
        "anthropic_api_key", ("ANTHROPIC_API_KEY",), "ANTHROPIC_BASE_URL")
    assert SPEC.needs_key and SPEC.server_path == ""
    assert isinstance(SPEC.make_normalizer(), AnthropicNormalizer)
    assert "claude-3-5-haiku-latest" in SPEC.example_models


def test_builder_translates_system_tools_and_thinking() -> None:
    settings = ProviderSettings(base_url="http://mock:9100/", api_key="ak")
    request = build_request(completion(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tools=[{"type": "function", "function": {"name": "now"}}], tool_choice="required", reasoning="medium",
    ), "claude-sonnet-4-5", settings)
    assert request.url == "http://mock:9100/v1/messages"
    assert request.headers["x-api-key"] == "ak"
    assert request.headers["anthropic-version"] == "2023-06-01"
    body = request.body
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert body["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    assert body["tool_choice"] == {"type": "any"}
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert body["max_tokens"] == 4096 + 1024


def test_no_key_no_header() -> None:
    request = build_request(completion([{"role": "user", "content": "Hi"}]), "claude-x",
                            ProviderSettings(base_url="http://local"))
    assert "x-api-key" not in request.headers
    assert request.body["max_tokens"] == 1024
