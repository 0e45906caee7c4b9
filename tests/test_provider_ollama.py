"""protocol/providers/ollama.py: the description, the host rule and the pure request builder
(no HubConfig, no network). The wire rules are docs/PROVIDERS.md §4."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol.messages import Completion, decode_client_message
from protocol.providers import PROVIDERS, ProviderSettings
from protocol.providers.ollama import SPEC, OllamaChatNormalizer, build_request, host_url


def completion(messages: list[dict[str, Any]], **fields: Any) -> Completion:
    payload = {"type": "completion", "model": "x", "messages": messages, **fields}
    message = decode_client_message(json.dumps(payload))
    assert isinstance(message, Completion)
    return message


def test_description() -> None:
    assert PROVIDERS["ollama"] is SPEC
    assert (SPEC.prefixes, SPEC.bare_prefixes, SPEC.framing) == (("ollama/",), (), "ndjson")
    assert not SPEC.needs_key and SPEC.api_key_field is None and SPEC.api_key_env == ()
    assert (SPEC.base_url_key, SPEC.base_url_field, SPEC.base_url_env) == ("host", "ollama_host", "OLLAMA_HOST")
    assert SPEC.normalize_base_url is host_url
    assert SPEC.configured(ProviderSettings(base_url=SPEC.default_base_url))
    assert isinstance(SPEC.make_normalizer(), OllamaChatNormalizer)


@pytest.mark.parametrize(("host", "url"), [("gpu", "http://gpu:11434"), ("gpu:1", "http://gpu:1"),
                                           ("https://o.example", "https://o.example")])
def test_host_url(host: str, url: str) -> None:
    assert host_url(host) == url


def test_host_url_with_a_bad_port_raises() -> None:
    with pytest.raises(ValueError):
        host_url("gpu:port")


def test_builder() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    request = build_request(completion([{"role": "assistant", "tool_calls": [call]}], max_tokens=3, reasoning="low"),
                            "qwen3", ProviderSettings(base_url="http://gpu:11434/", api_key="ignored"))
    assert request.url == "http://gpu:11434/api/chat"
    assert request.headers == {"Content-Type": "application/json"}
    assert request.framing == "ndjson" and request.stream_framing == "ndjson"
    assert request.body == {
        "model": "qwen3", "stream": True, "options": {"num_predict": 3}, "think": True,
        "messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}],
    }
