"""protocol/providers/gemini.py: the description and the pure request builder (no HubConfig,
no network). The wire rules are docs/PROVIDERS.md §3."""

from __future__ import annotations

import json
from typing import Any

from protocol.messages import Completion, decode_client_message
from protocol.providers import PROVIDERS, ProviderSettings, resolve_model
from protocol.providers.gemini import SPEC, GeminiNormalizer, build_request


def completion(messages: list[dict[str, Any]], **fields: Any) -> Completion:
    payload = {"type": "completion", "model": "x", "messages": messages, **fields}
    message = decode_client_message(json.dumps(payload))
    assert isinstance(message, Completion)
    return message


def test_description() -> None:
    assert PROVIDERS["google"] is SPEC
    assert SPEC.prefixes == ("google/", "gemini/") and SPEC.bare_prefixes == ("gemini-",)
    assert resolve_model("gemini/gemini-2.5-pro") == ("google", "gemini-2.5-pro")
    assert SPEC.default_base_url == "https://generativelanguage.googleapis.com"
    assert SPEC.api_key_env == ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    assert (SPEC.config_section, SPEC.api_key_field, SPEC.base_url_field) == ("google", "gemini_api_key",
                                                                               "gemini_base_url")
    assert isinstance(SPEC.make_normalizer(), GeminiNormalizer)


def test_builder_puts_the_key_in_a_header_and_quotes_the_model() -> None:
    settings = ProviderSettings(base_url="https://g.example/", api_key="AIza-key")
    request = build_request(completion([{"role": "developer", "content": "Short."},
                                        {"role": "user", "content": "Hi"}], max_tokens=5, stop="END"),
                            "tuned/model a", settings)
    assert request.url == "https://g.example/v1beta/models/tuned%2Fmodel%20a:streamGenerateContent?alt=sse"
    assert request.headers == {"Content-Type": "application/json", "x-goog-api-key": "AIza-key"}
    assert "AIza-key" not in request.url
    assert request.body == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "systemInstruction": {"parts": [{"text": "Short."}]},
        "generationConfig": {"maxOutputTokens": 5, "stopSequences": ["END"]},
    }
    assert request.framing == "sse"
