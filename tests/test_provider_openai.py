"""protocol/providers/openai.py: the description and the pure request builder (no HubConfig,
no network). The wire rules are docs/PROVIDERS.md §1."""

from __future__ import annotations

import json
from typing import Any

from protocol.messages import Completion, decode_client_message
from protocol.providers import PROVIDERS, ProviderSettings
from protocol.providers.openai import SPEC, OpenAIChatNormalizer, build_request


def completion(**fields: Any) -> Completion:
    payload = {"type": "completion", "model": "x", "messages": [{"role": "user", "content": "Hi"}], **fields}
    message = decode_client_message(json.dumps(payload))
    assert isinstance(message, Completion)
    return message


def test_description() -> None:
    assert PROVIDERS["openai"] is SPEC
    assert (SPEC.name, SPEC.prefix, SPEC.framing) == ("openai", "openai/", "sse")
    assert SPEC.default_base_url == "https://api.openai.com/v1"
    assert (SPEC.api_key_field, SPEC.api_key_env, SPEC.base_url_field, SPEC.base_url_env) == (
        "openai_api_key", ("OPENAI_API_KEY",), "openai_base_url", "OPENAI_BASE_URL")
    assert SPEC.needs_key and SPEC.example_models and SPEC.demo_model == "gpt-4o-mini"
    assert isinstance(SPEC.make_normalizer(), OpenAIChatNormalizer)
    assert SPEC.base_url_on("http://127.0.0.1:9100/") == "http://127.0.0.1:9100/v1"


def test_configured_needs_a_key_or_another_base_url() -> None:
    assert not SPEC.configured(ProviderSettings(base_url=SPEC.default_base_url))
    assert not SPEC.configured(ProviderSettings(base_url=SPEC.default_base_url + "/"))
    assert SPEC.configured(ProviderSettings(base_url=SPEC.default_base_url, api_key="k"))
    assert SPEC.configured(ProviderSettings(base_url="http://127.0.0.1:8080/v1"))


def test_builder_is_pure_and_complete() -> None:
    settings = ProviderSettings(base_url="http://local:8080/v1/", api_key="sk-test")
    request = build_request(completion(max_tokens=10, temperature=0.5, reasoning="low"), "o3-mini", settings)
    assert request.provider == "openai" and request.model == "o3-mini" and request.framing == "sse"
    assert request.url == "http://local:8080/v1/chat/completions"
    assert request.endpoint == "http://local:8080"
    assert request.headers["Authorization"] == "Bearer sk-test"
    assert request.body == {
        "model": "o3-mini", "messages": [{"role": "user", "content": "Hi"}], "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 0.5, "max_completion_tokens": 10,
        "reasoning_effort": "low",
    }
    assert json.loads(json.dumps(request.body)) == request.body


def test_compatible_server_gets_max_tokens_and_no_auth_header() -> None:
    request = build_request(completion(max_tokens=10), "local-model", ProviderSettings(base_url="http://h/v1"))
    assert request.body["max_tokens"] == 10
    assert "Authorization" not in request.headers
