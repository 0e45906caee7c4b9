"""Tests for hub/providers.py request building (no network), hub/config.py and
protocol/errors.py ``redact``.

Only ``resolve_model`` and ``build_request`` are exercised: each provider's URL, auth and
version headers are checked against docs/PROVIDERS.md §1.1 (OpenAI), §2.1 (Anthropic), §3.1
(Gemini) and §4.1 (Ollama).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hub.config import DEFAULT_BASE_URLS, HubConfig
from hub.providers import PROVIDERS, UpstreamRequest, build_request, resolve_model
from protocol.errors import HubError, ProviderError, redact
from protocol.messages import Completion, decode_client_message
from protocol.normalizers.anthropic import AnthropicNormalizer
from protocol.normalizers.gemini import GeminiNormalizer
from protocol.normalizers.ollama import OllamaChatNormalizer
from protocol.normalizers.openai import OpenAIChatNormalizer

OPENAI_KEY = "sk-proj-test0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-api03-test0123456789abcdef"
GEMINI_KEY = "AIzaSyTest0123456789abcdefghijklmnopq"

KEYED = HubConfig(openai_api_key=OPENAI_KEY, anthropic_api_key=ANTHROPIC_KEY, gemini_api_key=GEMINI_KEY)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def completion(model: str, messages: list[dict[str, Any]] | None = None, **options: Any) -> Completion:
    """A client ``completion`` message, through the real decoder (so it is a valid one)."""
    payload = {"type": "completion", "model": model, "messages": messages or [{"role": "user", "content": "Hi"}]}
    payload.update(options)
    message = decode_client_message(json.dumps(payload))
    assert isinstance(message, Completion)
    return message


def build(model: str, messages: list[dict[str, Any]] | None = None, *, config: HubConfig = KEYED,
          **options: Any) -> UpstreamRequest:
    return build_request(completion(model, messages, **options), config)


def roundtrips_as_json(request: UpstreamRequest) -> None:
    """The body is what will be sent: it must be plain JSON."""
    assert json.loads(json.dumps(request.body)) == request.body


# Routing.


@pytest.mark.parametrize(
    ("model", "provider", "upstream"),
    [
        ("openai/gpt-4o-mini", "openai", "gpt-4o-mini"),
        ("openai/my-finetune", "openai", "my-finetune"),
        ("anthropic/claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
        ("google/gemini-2.5-flash", "google", "gemini-2.5-flash"),
        ("gemini/gemini-2.0-flash", "google", "gemini-2.0-flash"),
        ("ollama/llama3.2:1b", "ollama", "llama3.2:1b"),
        ("ollama/library/qwen3:8b", "ollama", "library/qwen3:8b"),
        ("gpt-4o", "openai", "gpt-4o"),
        ("o1-mini", "openai", "o1-mini"),
        ("o3", "openai", "o3"),
        ("o4-mini", "openai", "o4-mini"),
        ("chatgpt-4o-latest", "openai", "chatgpt-4o-latest"),
        ("claude-3-5-haiku", "anthropic", "claude-3-5-haiku"),
        ("gemini-2.0-flash", "google", "gemini-2.0-flash"),
    ],
)
def test_resolve_model(model: str, provider: str, upstream: str) -> None:
    assert resolve_model(model) == (provider, upstream)
    assert provider in PROVIDERS


@pytest.mark.parametrize(
    "model", ["llama3", "mistral-large", "gpt4", "claude", "Gemini-2.0-flash", "azure/gpt-4o", "openai/",
              "anthropic/", "google/", "gemini/", "ollama/", ""]
)
def test_unknown_model_is_model_not_found(model: str) -> None:
    with pytest.raises(ProviderError) as info:
        resolve_model(model)
    assert info.value.code == "model_not_found"
    assert info.value.status == 404
    assert info.value.retryable is False


def test_build_request_of_unknown_model_is_model_not_found() -> None:
    with pytest.raises(ProviderError) as info:
        build("mystery-model")
    assert info.value.code == "model_not_found"
    assert "mystery-model" in info.value.message


# OpenAI (docs/PROVIDERS.md §1.1).


def test_openai_request() -> None:
    request = build("openai/gpt-4o-mini", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                    max_tokens=64, temperature=0.3, stop=["END"], tools=[WEATHER_TOOL], tool_choice="auto")
    assert request.provider == "openai"
    assert request.model == "gpt-4o-mini"
    assert request.url == "https://api.openai.com/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
        "temperature": 0.3,
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "stop": ["END"],
    }
    assert isinstance(request.make_normalizer(), OpenAIChatNormalizer)
    roundtrips_as_json(request)


def test_openai_minimal_body_and_reasoning_effort() -> None:
    assert build("gpt-4o").body == {
        "model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}],
        "stream": True, "stream_options": {"include_usage": True},
    }
    assert build("o3", reasoning={"effort": "high"}).body["reasoning_effort"] == "high"
    assert build("o4-mini", reasoning="low").body["reasoning_effort"] == "low"


def test_openai_keeps_tool_messages_in_openai_shape() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert build("gpt-4o", messages).body["messages"] == messages


def test_openai_custom_base_url_without_key() -> None:
    config = HubConfig(openai_base_url="http://127.0.0.1:8080/v1/")
    request = build("openai/local-model", config=config)
    assert request.url == "http://127.0.0.1:8080/v1/chat/completions"
    assert "Authorization" not in request.headers


# Anthropic (docs/PROVIDERS.md §2.1).


def test_anthropic_request_headers_and_url() -> None:
    request = build("anthropic/claude-sonnet-4-5")
    assert request.provider == "anthropic"
    assert request.url == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == ANTHROPIC_KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers
    assert isinstance(request.make_normalizer(), AnthropicNormalizer)


def test_anthropic_moves_system_messages_and_defaults_max_tokens() -> None:
    request = build("claude-3-5-haiku", [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": [{"type": "text", "text": "Ça va ?"}]},
    ])
    assert request.body["system"] == "Be brief.\n\nAnswer in French."
    assert request.body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Ça va ?"},
    ]
    assert request.body["max_tokens"] == 1024
    assert request.body["stream"] is True
    assert request.body["model"] == "claude-3-5-haiku"
    roundtrips_as_json(request)


def test_anthropic_options() -> None:
    body = build("claude-3-5-haiku", max_tokens=200, temperature=0.7, stop="END").body
    assert body["max_tokens"] == 200
    assert body["temperature"] == 0.7
    assert body["stop_sequences"] == ["END"]
    assert "system" not in body
    assert "tools" not in body and "tool_choice" not in body


def test_anthropic_converts_openai_tools_to_input_schema() -> None:
    server_tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    body = build("claude-3-5-haiku", tools=[WEATHER_TOOL, {"type": "function", "function": {"name": "now"}},
                                            server_tool]).body
    assert body["tools"] == [
        {"name": "get_weather", "description": "Current weather for a city",
         "input_schema": WEATHER_TOOL["function"]["parameters"]},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
        server_tool,  # already Anthropic-shaped: kept as is
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
        ({"type": "any"}, {"type": "any"}),
    ],
)
def test_anthropic_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    assert build("claude-3-5-haiku", tools=[WEATHER_TOOL], tool_choice=choice).body["tool_choice"] == expected


def test_anthropic_without_tool_choice_sends_none() -> None:
    assert "tool_choice" not in build("claude-3-5-haiku", tools=[WEATHER_TOOL]).body


def test_anthropic_tool_round_trip_messages() -> None:
    call = {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    body = build("claude-3-5-haiku", [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
    ]).body
    assert body["messages"] == [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]


def test_anthropic_thinking_passed_through() -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    body = build("claude-sonnet-4-5", thinking=thinking, max_tokens=8000).body
    assert body["thinking"] == thinking
    assert body["max_tokens"] == 8000


@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high"])
def test_anthropic_thinking_from_effort_fits_under_default_max_tokens(effort: str) -> None:
    # Anthropic rejects a request whose thinking.budget_tokens is not below max_tokens (and
    # below 1024): with no max_tokens from the client, the default must leave room.
    body = build("claude-sonnet-4-5", reasoning={"effort": effort}).body
    assert body["thinking"]["type"] == "enabled"
    assert body["thinking"]["budget_tokens"] >= 1024
    assert body["max_tokens"] > body["thinking"]["budget_tokens"]


def test_anthropic_explicit_thinking_fits_under_default_max_tokens() -> None:
    body = build("claude-sonnet-4-5", thinking={"type": "enabled", "budget_tokens": 4096}).body
    assert body["max_tokens"] > 4096


# Gemini (docs/PROVIDERS.md §3.1).


def test_gemini_request() -> None:
    request = build("gemini-2.0-flash", [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]},
    ], max_tokens=100, temperature=0.4, stop="END")
    assert request.provider == "google"
    assert request.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    )
    assert request.headers["x-goog-api-key"] == GEMINI_KEY
    assert GEMINI_KEY not in request.url  # the key travels in the header, never in the URL
    assert "Authorization" not in request.headers
    assert request.body == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello"}]},
            {"role": "user", "parts": [{"text": "Again"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"maxOutputTokens": 100, "temperature": 0.4, "stopSequences": ["END"]},
    }
    assert isinstance(request.make_normalizer(), GeminiNormalizer)
    roundtrips_as_json(request)


def test_gemini_prefixes_and_minimal_body() -> None:
    for model in ("google/gemini-2.5-flash", "gemini/gemini-2.5-flash"):
        request = build(model)
        assert request.model == "gemini-2.5-flash"
        assert request.url.endswith("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
        assert request.body == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


def test_gemini_thinking_and_tools() -> None:
    body = build("gemini-2.5-flash", reasoning="medium", tools=[WEATHER_TOOL]).body
    assert body["generationConfig"] == {"thinkingConfig": {"includeThoughts": True, "thinkingBudget": 4096}}
    assert body["tools"] == [{"functionDeclarations": [{
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": WEATHER_TOOL["function"]["parameters"],
    }]}]


def test_gemini_custom_base_url_without_key() -> None:
    request = build("google/gemini-2.0-flash", config=HubConfig(gemini_base_url="http://127.0.0.1:9000/"))
    assert request.url == "http://127.0.0.1:9000/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    assert "x-goog-api-key" not in request.headers


# Ollama (docs/PROVIDERS.md §4.1).


def test_ollama_request() -> None:
    request = build("ollama/llama3.2:1b", [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ], max_tokens=50, temperature=0.1, stop="END", tools=[WEATHER_TOOL], config=HubConfig())
    assert request.provider == "ollama"
    assert request.url == "http://127.0.0.1:11434/api/chat"
    assert request.headers == {"Content-Type": "application/json"}
    assert request.body == {
        "model": "llama3.2:1b",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "options": {"num_predict": 50, "temperature": 0.1, "stop": ["END"]},
        "tools": [WEATHER_TOOL],
    }
    assert isinstance(request.make_normalizer(), OllamaChatNormalizer)
    roundtrips_as_json(request)


def test_ollama_minimal_body_think_and_host() -> None:
    config = HubConfig(ollama_host="http://gpu-box:11434/")
    request = build("ollama/qwen3", config=config)
    assert request.url == "http://gpu-box:11434/api/chat"
    assert request.body == {"model": "qwen3", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    assert build("ollama/qwen3", reasoning="high", config=config).body["think"] is True


def test_ollama_tool_calls_arguments_become_objects() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    body = build("ollama/llama3.2", [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ], config=HubConfig()).body
    assert body["messages"][1] == {
        "role": "assistant", "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    }
    assert body["messages"][2]["role"] == "tool"


def test_tool_call_arguments_already_parsed_are_accepted() -> None:
    # The hub's own tool_call messages carry parsed arguments; a client may echo them back.
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "tool_calls": [call]}]
    ollama = build("ollama/llama3.2", messages, config=HubConfig()).body["messages"][1]
    anthropic = build("claude-3-5-haiku", messages).body["messages"][1]
    assert ollama["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert anthropic["content"][0]["input"] == {"city": "Paris"}


BAD_INPUTS = {
    # The raw arguments of a tool call cut by max_tokens (argumentsValid: false), echoed back.
    "truncated-arguments": dict(messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Par'}}
        ]},
    ]),
    "content-part-text-not-a-string": dict(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
    "tool-without-name": dict(tools=[{"type": "function", "function": {"description": "no name"}}]),
}


@pytest.mark.parametrize("model", ["claude-3-5-haiku", "gemini-2.0-flash", "ollama/llama3.2"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_unusable_client_input_is_a_provider_error_not_a_crash(model: str, case: str) -> None:
    # CompletionRun.start (hub/completions.py) catches only ProviderError from build_request:
    # any other exception escapes the WebSocket handler and leaves the run never finished.
    options = dict(BAD_INPUTS[case])
    messages = options.pop("messages", None)
    try:
        request = build(model, messages, **options)
    except ProviderError as exc:
        assert exc.code == "invalid_message"
        assert exc.retryable is False
    else:  # a provider that does not use the field may ignore it
        roundtrips_as_json(request)


# Keys.


@pytest.mark.parametrize(
    ("model", "variable"),
    [("openai/gpt-4o", "OPENAI_API_KEY"), ("claude-3-5-haiku", "ANTHROPIC_API_KEY"),
     ("gemini-2.0-flash", "GEMINI_API_KEY")],
)
@pytest.mark.parametrize("trailing_slash", [False, True])
def test_public_api_without_key_is_provider_not_configured(model: str, variable: str, trailing_slash: bool) -> None:
    provider, _ = resolve_model(model)
    config = HubConfig()
    if trailing_slash:
        field = {"openai": "openai_base_url", "anthropic": "anthropic_base_url", "google": "gemini_base_url"}[provider]
        setattr(config, field, DEFAULT_BASE_URLS[provider] + "/")
    with pytest.raises(ProviderError) as info:
        build(model, config=config)
    assert info.value.code == "provider_not_configured"
    assert variable in info.value.message


def test_ollama_needs_no_key() -> None:
    assert build("ollama/llama3.2", config=HubConfig()).provider == "ollama"


def test_custom_base_urls_work_without_keys() -> None:
    config = HubConfig(openai_base_url="http://localhost:8080/v1", anthropic_base_url="http://localhost:8081",
                       gemini_base_url="http://localhost:8082")
    assert build("gpt-4o", config=config).url == "http://localhost:8080/v1/chat/completions"
    anthropic = build("claude-3-5-haiku", config=config)
    assert anthropic.url == "http://localhost:8081/v1/messages"
    assert "x-api-key" not in anthropic.headers
    assert anthropic.headers["anthropic-version"] == "2023-06-01"
    assert build("gemini-2.0-flash", config=config).url.startswith("http://localhost:8082/v1beta/models/")


def test_keys_never_reach_the_body() -> None:
    for model in ("gpt-4o", "claude-3-5-haiku", "gemini-2.0-flash"):
        text = json.dumps(build(model).body)
        for key in (OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY):
            assert key not in text


# hub/config.py.


def test_from_env_defaults() -> None:
    config = HubConfig.from_env({})
    assert config == HubConfig()
    assert (config.host, config.port, config.content_chunk_size, config.flush_interval_ms) == ("127.0.0.1", 8765, 100, 25.0)
    assert config.openai_base_url == DEFAULT_BASE_URLS["openai"]
    assert config.ollama_host == "http://127.0.0.1:11434"
    assert config.secrets() == ()


def test_from_env_reads_every_variable() -> None:
    config = HubConfig.from_env({
        "CBHUB_HOST": "0.0.0.0",
        "CBHUB_PORT": "9000",
        "CBHUB_CONTENT_CHUNK_SIZE": "64",
        "CBHUB_FLUSH_INTERVAL_MS": "12.5",
        "CBHUB_CONNECT_TIMEOUT_S": "3",
        "CBHUB_IDLE_TIMEOUT_S": "45.5",
        "CBHUB_GRACE_PERIOD_S": "7",
        "CBHUB_RETENTION_S": "60",
        "CBHUB_HISTORY_MAX_EVENTS": "500",
        "CBHUB_MAX_MESSAGE_BYTES": "65536",
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": "http://localhost:8080/v1",
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": "http://localhost:8081",
        "GEMINI_API_KEY": GEMINI_KEY,
        "GEMINI_BASE_URL": "http://localhost:8082",
        "OLLAMA_HOST": "https://ollama.example.com",
        "UNRELATED": "ignored",
    })
    assert config == HubConfig(
        host="0.0.0.0", port=9000, content_chunk_size=64, flush_interval_ms=12.5, connect_timeout_s=3.0,
        idle_timeout_s=45.5, grace_period_s=7.0, retention_s=60.0, history_max_events=500,
        max_message_bytes=65536, openai_api_key=OPENAI_KEY, openai_base_url="http://localhost:8080/v1",
        anthropic_api_key=ANTHROPIC_KEY, anthropic_base_url="http://localhost:8081", gemini_api_key=GEMINI_KEY,
        gemini_base_url="http://localhost:8082", ollama_host="https://ollama.example.com",
    )
    assert isinstance(config.port, int) and isinstance(config.flush_interval_ms, float)
    assert config.secrets() == (OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY)


def test_google_api_key_is_a_fallback_for_gemini_api_key() -> None:
    assert HubConfig.from_env({"GOOGLE_API_KEY": "g-key"}).gemini_api_key == "g-key"
    assert HubConfig.from_env({"GOOGLE_API_KEY": "g-key", "GEMINI_API_KEY": "gem-key"}).gemini_api_key == "gem-key"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("gpu-box:11434", "http://gpu-box:11434"), ("127.0.0.1:11500", "http://127.0.0.1:11500"),
     ("http://gpu-box:11434", "http://gpu-box:11434"), ("https://ollama.com", "https://ollama.com")],
)
def test_ollama_host_gets_a_scheme(value: str, expected: str) -> None:
    config = HubConfig.from_env({"OLLAMA_HOST": value})
    assert config.ollama_host == expected
    assert build("ollama/llama3.2", config=config).url == expected + "/api/chat"


def test_empty_variables_are_ignored() -> None:
    assert HubConfig.from_env({"CBHUB_PORT": "", "OPENAI_API_KEY": "", "OLLAMA_HOST": ""}) == HubConfig()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CBHUB_PORT", "eighty"), ("CBHUB_PORT", "80.5"), ("CBHUB_CONTENT_CHUNK_SIZE", "1e3"),
     ("CBHUB_FLUSH_INTERVAL_MS", "fast"), ("CBHUB_IDLE_TIMEOUT_S", "2m"), ("CBHUB_HISTORY_MAX_EVENTS", "10k"),
     ("CBHUB_MAX_MESSAGE_BYTES", "1MB"), ("CBHUB_GRACE_PERIOD_S", "x"), ("CBHUB_RETENTION_S", "5 min"),
     ("CBHUB_CONNECT_TIMEOUT_S", "-")],
)
def test_bad_number_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError) as info:
        HubConfig.from_env({variable: value})
    assert variable in str(info.value)
    assert repr(value) in str(info.value)


def test_from_env_overrides_win() -> None:
    config = HubConfig.from_env({"CBHUB_PORT": "9000"}, port=0, ollama_host="localhost:1")
    assert config.port == 0
    assert config.ollama_host == "http://localhost:1"


# protocol/errors.py redact.


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-AbCdEfGh1234567890_-xyz",  # OpenAI project key
        "sk-AbCdEfGh12345678",  # OpenAI legacy key
        "sk-ant-api03-AbCdEf_GhIj-1234567890",  # Anthropic
        "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",  # Google
    ],
)
def test_redact_known_key_shapes(secret: str) -> None:
    text = f'401: {{"error": {{"message": "Incorrect API key provided: {secret}."}}}}'
    redacted = redact(text)
    assert secret not in redacted
    assert "[REDACTED]" in redacted
    assert redacted.startswith('401: {"error": {"message": "Incorrect API key provided: ')


def test_redact_bearer_token() -> None:
    redacted = redact("sent Authorization: Bearer abc.def-ghi_jkl0123 and failed")
    assert "abc.def-ghi_jkl0123" not in redacted
    assert redacted.endswith(" and failed")


def test_redact_key_query_parameter() -> None:
    url = "https://generativelanguage.googleapis.com/v1beta/models/m:streamGenerateContent?alt=sse&key=shortkey1"
    assert redact(f"cannot connect to {url}") == (
        "cannot connect to https://generativelanguage.googleapis.com/v1beta/models/m:streamGenerateContent"
        "?alt=sse&key=[REDACTED]"
    )
    assert redact("GET /x?key=abc&alt=sse") == "GET /x?key=[REDACTED]&alt=sse"


def test_redact_exact_configured_secrets_whatever_their_shape() -> None:
    secrets = ("local-token", "", "p@ss w0rd")
    redacted = redact("proxy said: local-token / p@ss w0rd / local-token", secrets)
    assert redacted == "proxy said: [REDACTED] / [REDACTED] / [REDACTED]"


def test_redact_leaves_ordinary_text_alone() -> None:
    for text in ("model not found: gpt-4o", "rate limit exceeded, retry in 2s", "monkey=1&keys=2", "AIza too short"):
        assert redact(text) == text


def test_config_secrets_feed_redact() -> None:
    config = HubConfig.from_env({"OPENAI_API_KEY": "custom-openai", "GOOGLE_API_KEY": "custom-google"})
    message = "upstream echoed custom-openai and custom-google"
    assert redact(message, config.secrets()) == "upstream echoed [REDACTED] and [REDACTED]"


def test_provider_errors_are_hub_errors() -> None:
    with pytest.raises(HubError):
        resolve_model("nope")


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("0.0.0.0", "http://0.0.0.0:11434"),
        ("gpu-box", "http://gpu-box:11434"),
        ("gpu-box:8080", "http://gpu-box:8080"),
        ("https://ollama.com", "https://ollama.com"),
    ],
)
def test_ollama_host_defaults_like_ollama(value: str, url: str) -> None:
    assert HubConfig.from_env({"OLLAMA_HOST": value}).ollama_host == url


def test_redact_leaves_ordinary_words_containing_key_prefixes() -> None:
    text = "disk-quota-exceeded for task-sk-runner; key sk-proj-abcdefgh12345 rejected"
    assert redact(text) == "disk-quota-exceeded for task-sk-runner; key [REDACTED] rejected"


_TOOL_HISTORY = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
         "signature": "sig-a"},
        {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
    ]},
    {"role": "tool", "tool_call_id": "call_a", "content": "18 C"},
    {"role": "tool", "tool_call_id": "call_b", "content": "24 C"},
]


def _completion_with(messages: list[dict[str, Any]], **options: Any) -> Completion:
    message = decode_client_message(json.dumps({"type": "completion", "model": "x", "messages": messages, **options}))
    assert isinstance(message, Completion)
    return message


def test_gemini_gets_tool_calls_and_results_of_earlier_turns() -> None:
    request = _completion_with(_TOOL_HISTORY)
    request.model = "google/gemini-2.5-flash"
    contents = build_request(request, HubConfig(gemini_api_key="k")).body["contents"]
    assert contents[1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "sig-a"},
        {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
    ]}
    assert contents[2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"content": "18 C"}}},
        {"functionResponse": {"name": "get_weather", "response": {"content": "24 C"}}},
    ]}
    assert len(contents) == 3


@pytest.mark.parametrize(
    ("choice", "config"),
    [("auto", {"mode": "AUTO"}), ("required", {"mode": "ANY"}), ("none", {"mode": "NONE"}),
     ({"type": "function", "function": {"name": "get_weather"}}, {"mode": "ANY", "allowedFunctionNames": ["get_weather"]})],
)
def test_gemini_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    request = _completion_with([{"role": "user", "content": "x"}], tool_choice=choice,
                               tools=[{"type": "function", "function": {"name": "get_weather"}}])
    request.model = "google/gemini-2.5-flash"
    assert build_request(request, HubConfig(gemini_api_key="k")).body["toolConfig"] == {"functionCallingConfig": config}


def test_anthropic_gets_all_results_of_a_turn_in_one_user_message() -> None:
    request = _completion_with(_TOOL_HISTORY)
    request.model = "anthropic/claude-3-5-haiku-latest"
    messages = build_request(request, HubConfig(anthropic_api_key="k")).body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert [(b["tool_use_id"], b["content"]) for b in messages[2]["content"]] == [("call_a", "18 C"), ("call_b", "24 C")]
    assert [b["input"] for b in messages[1]["content"]] == [{"city": "Paris"}, {"city": "Rome"}]
