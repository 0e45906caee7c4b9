"""hub/config.py: the config file, presets, environment variables and their precedence; the
``cbhub serve --config/--preset`` and ``cbhub config`` commands (hub/cli.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest
import yaml

from hub import cli
from hub.config import (
    KEYS,
    ConfigError,
    HubConfig,
    Key,
    _read_keys,
    env_table_markdown,
    example_yaml,
    preset_names,
)
from hub.config import key as config_key

ROOT = Path(__file__).resolve().parent.parent
ALL_VARIABLES = sorted({name for key in KEYS for name in key.env})


def write(tmp_path: Path, text: str, name: str = "hub.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None, **kwargs: Any) -> HubConfig:
    return HubConfig.load(write(tmp_path, text), environ=environ or {}, **kwargs)


def error_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, environ, **kwargs)
    message = str(info.value)
    assert message.startswith("config error: ")
    return message


def clean_environ() -> dict[str, str]:
    """os.environ without any variable the hub reads (a developer's keys included)."""
    return {k: v for k, v in os.environ.items() if k not in ALL_VARIABLES}


# Precedence.


def test_no_layers_gives_the_defaults() -> None:
    assert HubConfig.load(environ={}) == HubConfig()


def test_precedence_default_preset_file_env_override(tmp_path: Path) -> None:
    # retention_s is set by every layer, grace_period_s by all but the override, and so on down.
    path = write(tmp_path, """
lifecycle:
  retention_s: 41
  grace_period_s: 42
  shutdown_drain_timeout_s: 43
""")
    environ = {"CBHUB_RETENTION_S": "51", "CBHUB_GRACE_PERIOD_S": "52"}
    config = HubConfig.load(path, preset="debug", environ=environ, retention_s=61.0)
    assert config.retention_s == 61.0  # override > env
    assert config.grace_period_s == 52.0  # env > file
    assert config.shutdown_drain_timeout_s == 43.0  # file > default
    assert config.log_level == "DEBUG"  # preset > default
    assert config.retry_max_attempts == 1  # preset
    assert config.history_max_events == HubConfig().history_max_events  # default

    # The file beats the preset key by key; the preset's other keys stay.
    file_over_preset = HubConfig.load(write(tmp_path, "monitoring: {log_level: warning}\n", "b.yaml"),
                                      preset="debug", environ={})
    assert file_over_preset.log_level == "WARNING"
    assert file_over_preset.grace_period_s == 2.0


def test_from_env_is_load_without_file() -> None:
    environ = {"CBHUB_PORT": "9000", "CBHUB_RETRY_MAX_ATTEMPTS": "5"}
    assert HubConfig.from_env(environ, host="0.0.0.0") == HubConfig.load(environ=environ, host="0.0.0.0")
    assert HubConfig.from_env(environ).retry_max_attempts == 5


def test_load_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CBHUB_MAX_CONNECTIONS", "77")
    assert HubConfig.load().max_connections == 77


def test_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="max_conections"):
        HubConfig.load(environ={}, max_conections=5)


# The file.


def test_every_section_and_key(tmp_path: Path) -> None:
    config = load_text(tmp_path, """
server: {host: 0.0.0.0, port: 9001}
protocols:
  websocket: {max_message_bytes: 2048, ping_interval_s: 5, pong_timeout_s: 2.5}
  sse: {keepalive_interval_s: 3}
buffering: {content_chunk_size_chars: 64, flush_interval_ms: 12.5, history_max_events: 0,
            completion_max_buffered_bytes: 4096}
performance: {loop: uvloop}
error_handling:
  retries: {max_attempts: 4, base_delay_ms: 100, max_delay_ms: 1000, retry_after_max_s: 5}
  timeouts: {connect_s: 1, first_byte_s: 2, idle_s: 3, total_s: 4}
  circuit_breaker: {failure_rate: 1, window_s: 10, min_requests: 3, cooldown_s: 7, half_open_probes: 2}
  dead_letter: {path: "", max_bytes: 1000, backups: 0}
monitoring: {log_level: error}
providers:
  openai: {api_key: sk-file, base_url: "http://localhost:8080/v1"}
  anthropic: {api_key: null, base_url: "http://localhost:8081"}
  google: {api_key: g-file, base_url: "https://gemini.example.com"}
  ollama: {host: "gpu-box"}
fallbacks:
  openai/gpt-4o: [anthropic/claude-3-5-haiku-latest, ollama/llama3.2]
limits: {max_connections: 10, max_completions: 20, max_completions_per_connection: 3,
         memory_budget_bytes: 100000, outbound_soft_limit_bytes: 500, outbound_hard_limit_bytes: 500}
lifecycle: {grace_period_s: 1, retention_s: 2, shutdown_drain_timeout_s: 3}
""")
    assert config == HubConfig(
        host="0.0.0.0", port=9001, max_message_bytes=2048, ws_ping_interval_s=5.0, ws_pong_timeout_s=2.5,
        sse_keepalive_interval_s=3.0, content_chunk_size=64, flush_interval_ms=12.5, history_max_events=0,
        completion_max_buffered_bytes=4096, loop="uvloop", retry_max_attempts=4, retry_base_delay_ms=100.0,
        retry_max_delay_ms=1000.0, retry_after_max_s=5.0, connect_timeout_s=1.0, first_byte_timeout_s=2.0,
        idle_timeout_s=3.0, total_timeout_s=4.0, breaker_failure_rate=1.0, breaker_window_s=10.0,
        breaker_min_requests=3, breaker_cooldown_s=7.0, breaker_half_open_probes=2, dead_letter_path="",
        dead_letter_max_bytes=1000, dead_letter_backups=0, log_level="ERROR", openai_api_key="sk-file",
        openai_base_url="http://localhost:8080/v1", anthropic_api_key=None, anthropic_base_url="http://localhost:8081",
        gemini_api_key="g-file", gemini_base_url="https://gemini.example.com", ollama_host="http://gpu-box:11434",
        fallbacks={"openai/gpt-4o": ["anthropic/claude-3-5-haiku-latest", "ollama/llama3.2"]},
        max_connections=10, max_completions=20, max_completions_per_connection=3, memory_budget_bytes=100000,
        outbound_soft_limit_bytes=500, outbound_hard_limit_bytes=500, grace_period_s=1.0, retention_s=2.0,
        shutdown_drain_timeout_s=3.0,
    )
    assert isinstance(config.flush_interval_ms, float) and isinstance(config.ws_ping_interval_s, float)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "buffering:\nlimits:\n", "fallbacks:\n"])
def test_empty_file_and_empty_sections(tmp_path: Path, text: str) -> None:
    assert load_text(tmp_path, text) == HubConfig()


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    message = error_of(tmp_path, "limits:\n  max_conections: 5\n")
    assert message.startswith("config error: limits.max_conections: unknown key (did you mean max_connections?)")
    assert "hub.yaml" in message
    assert "did you mean buffering?" in error_of(tmp_path, "bufering:\n  flush_interval_ms: 5\n")
    assert "error_handling.timeouts.idle: unknown key (did you mean idle_s?)" in error_of(
        tmp_path, "error_handling:\n  timeouts:\n    idle: 5\n")


def test_unknown_key_without_a_close_one_lists_the_keys(tmp_path: Path) -> None:
    message = error_of(tmp_path, "server:\n  zzz: 1\n")
    assert "server.zzz: unknown key (expected one of: host, port)" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("error_handling:\n  retries:\n    max_attempts: three\n",
         'error_handling.retries.max_attempts: expected int, got "three"'),
        ("server:\n  port: 80.5\n", "server.port: expected int, got 80.5"),
        ("server:\n  port: true\n", "server.port: expected int, got true"),
        ("buffering:\n  flush_interval_ms: fast\n", 'buffering.flush_interval_ms: expected a number, got "fast"'),
        ("buffering:\n  flush_interval_ms: .inf\n", "buffering.flush_interval_ms: expected a finite number, got inf"),
        ("server:\n  host: 127\n", "server.host: expected a string, got 127"),
        ("monitoring:\n  log_level: null\n", "monitoring.log_level: expected a string, got null"),
        ("providers:\n  openai:\n    api_key: [a]\n", "providers.openai.api_key: expected a string or null, got a list"),
        ("providers:\n  openai:\n    api_key: 12345678\n",
         "providers.openai.api_key: expected a string or null, got a number"),
        ("server: 8765\n", "server: expected a section (a mapping of host, port), got 8765"),
        ("protocols:\n  websocket: 5\n", "protocols.websocket: expected a section"),
        ("fallbacks: [openai/gpt-4o]\n", "fallbacks: expected a mapping of model to a list of models, got a list"),
        ("fallbacks:\n  openai/gpt-4o: ollama/llama3.2\n",
         'fallbacks["openai/gpt-4o"]: expected a list of models, got "ollama/llama3.2"'),
        ("fallbacks:\n  openai/gpt-4o: [ollama/llama3.2, 3]\n",
         'fallbacks["openai/gpt-4o"][1]: expected a model name, got 3'),
    ],
)
def test_wrong_type_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(tmp_path, text)


def test_secret_values_are_not_echoed(tmp_path: Path) -> None:
    assert "12345678" not in error_of(tmp_path, "providers:\n  google:\n    api_key: 12345678\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server:\n  port: 70000\n", "server.port: must be between 0 and 65535, got 70000"),
        ("server:\n  host: ''\n", "server.host: must not be empty"),
        ("error_handling:\n  timeouts:\n    idle_s: -1\n", "error_handling.timeouts.idle_s: must be >= 0, got -1.0"),
        ("error_handling:\n  timeouts:\n    connect_s: -0.5\n", "error_handling.timeouts.connect_s: must be >= 0"),
        ("lifecycle:\n  grace_period_s: -1\n", "lifecycle.grace_period_s: must be >= 0"),
        ("protocols:\n  sse:\n    keepalive_interval_s: -1\n", "protocols.sse.keepalive_interval_s: must be >= 0"),
        ("error_handling:\n  circuit_breaker:\n    failure_rate: 0\n",
         "error_handling.circuit_breaker.failure_rate: must be > 0 and <= 1, got 0.0"),
        ("error_handling:\n  circuit_breaker:\n    failure_rate: 1.5\n",
         "error_handling.circuit_breaker.failure_rate: must be > 0 and <= 1, got 1.5"),
        ("error_handling:\n  retries:\n    max_attempts: 0\n", "error_handling.retries.max_attempts: must be >= 1, got 0"),
        ("error_handling:\n  retries:\n    base_delay_ms: 500\n    max_delay_ms: 100\n",
         "error_handling.retries.base_delay_ms: must be <= error_handling.retries.max_delay_ms (100.0), got 500.0"),
        ("limits:\n  outbound_soft_limit_bytes: 9000\n  outbound_hard_limit_bytes: 8000\n",
         "limits.outbound_soft_limit_bytes: must be <= limits.outbound_hard_limit_bytes (8000), got 9000"),
        ("limits:\n  max_connections: 0\n", "limits.max_connections: must be >= 1, got 0"),
        ("buffering:\n  content_chunk_size_chars: 0\n", "buffering.content_chunk_size_chars: must be >= 1, got 0"),
        ("performance:\n  loop: trio\n", 'performance.loop: must be one of asyncio, uvloop, got "trio"'),
        ("monitoring:\n  log_level: verbose\n", 'monitoring.log_level: must be a logging level'),
        ("providers:\n  openai:\n    base_url: api.openai.com/v1\n",
         'providers.openai.base_url: must be an http:// or https:// URL, got "api.openai.com/v1"'),
        ("providers:\n  ollama:\n    host: 'gpu-box:port'\n", "providers.ollama.host:"),
        ("fallbacks:\n  openai/gpt-4o: [opneai/gpt-4o-mini]\n",
         'fallbacks["openai/gpt-4o"][0]: no provider serves model "opneai/gpt-4o-mini"'),
        ("fallbacks:\n  mistral-large: [openai/gpt-4o]\n", 'fallbacks["mistral-large"]: no provider serves model'),
        ("fallbacks:\n  openai/gpt-4o: [openai/gpt-4o]\n",
         'fallbacks["openai/gpt-4o"]: a model cannot be its own fallback'),
    ],
)
def test_range_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(tmp_path, text)
    assert expected in message
    assert message.endswith(f"[in {tmp_path / 'hub.yaml'}]")


def test_log_level_is_case_insensitive_and_stored_in_capitals(tmp_path: Path) -> None:
    assert load_text(tmp_path, "monitoring:\n  log_level: debug\n").log_level == "DEBUG"
    assert HubConfig.load(environ={}, log_level="warning").log_level == "WARNING"


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config error: .*missing\.yaml: cannot read it"):
        HubConfig.load(str(tmp_path / "missing.yaml"), environ={})
    assert re.search(r"hub\.yaml: invalid YAML at line \d+, column \d+", error_of(tmp_path, "server:\n  port: [1\n"))
    assert "expected a mapping of sections at the top, got a list" in error_of(tmp_path, "- server\n")


# Environment variables.


def test_every_key_but_the_lists_of_entries_has_a_variable_and_names_are_unique() -> None:
    names = [name for key in KEYS for name in key.env]
    assert len(names) == len(set(names))
    assert [key.path for key in KEYS if not key.env] == ["fallbacks", "models", "auth.api_keys", "redaction.rules"]
    fields = {f.name for f in msgspec.structs.fields(HubConfig)}
    assert {key.field for key in KEYS} == fields and len(KEYS) == len(fields)


class _Declared(msgspec.Struct, kw_only=True):
    size: Annotated[int, config_key("limits.size", "X_SIZE", "a size")] = 1
    url: str = "http://x"


def test_keys_are_read_from_the_annotations_and_each_field_has_exactly_one() -> None:
    assert KEYS[0] == Key("server.host", "host", ("CBHUB_HOST",), "address to listen on (`--host`)",
                          KEYS[0].check)
    url = Key("providers.x.base_url", "url", ("X_URL",), "where")
    keys, kinds = _read_keys(_Declared, {"url": url})
    assert keys == (Key("limits.size", "size", ("X_SIZE",), "a size"), url) and kinds == {"size": int, "url": str}
    with pytest.raises(TypeError, match=r"_Declared.url has no key: annotate it with key\(...\)"):
        _read_keys(_Declared, {})
    with pytest.raises(TypeError, match="_Declared.size has more than one key"):
        _read_keys(_Declared, {"size": url, "url": url})
    with pytest.raises(TypeError, match="no field for the provider settings other_url"):
        _read_keys(_Declared, {"url": url, "other_url": url})


def test_new_variables_are_cbhub_and_the_field_name() -> None:
    environ = {
        "CBHUB_RETRY_MAX_ATTEMPTS": "7", "CBHUB_RETRY_BASE_DELAY_MS": "10", "CBHUB_RETRY_MAX_DELAY_MS": "20",
        "CBHUB_RETRY_AFTER_MAX_S": "3", "CBHUB_FIRST_BYTE_TIMEOUT_S": "4", "CBHUB_TOTAL_TIMEOUT_S": "5",
        "CBHUB_BREAKER_FAILURE_RATE": "0.25", "CBHUB_BREAKER_WINDOW_S": "6", "CBHUB_BREAKER_MIN_REQUESTS": "8",
        "CBHUB_BREAKER_COOLDOWN_S": "9", "CBHUB_BREAKER_HALF_OPEN_PROBES": "2",
        "CBHUB_DEAD_LETTER_PATH": "/var/log/dl.jsonl", "CBHUB_DEAD_LETTER_MAX_BYTES": "1000",
        "CBHUB_DEAD_LETTER_BACKUPS": "0", "CBHUB_MAX_CONNECTIONS": "11", "CBHUB_MAX_COMPLETIONS": "12",
        "CBHUB_MAX_COMPLETIONS_PER_CONNECTION": "13", "CBHUB_COMPLETION_MAX_BUFFERED_BYTES": "14",
        "CBHUB_MEMORY_BUDGET_BYTES": "15", "CBHUB_OUTBOUND_SOFT_LIMIT_BYTES": "16",
        "CBHUB_OUTBOUND_HARD_LIMIT_BYTES": "17", "CBHUB_WS_PING_INTERVAL_S": "18", "CBHUB_WS_PONG_TIMEOUT_S": "19",
        "CBHUB_SSE_KEEPALIVE_INTERVAL_S": "20", "CBHUB_SHUTDOWN_DRAIN_TIMEOUT_S": "21", "CBHUB_LOG_LEVEL": "debug",
        "CBHUB_LOOP": "uvloop",
    }
    config = HubConfig.load(environ=environ)
    for name, raw in environ.items():
        field = name.removeprefix("CBHUB_").lower()
        value = getattr(config, field)
        assert str(value) == raw.upper() if field == "log_level" else value == type(value)(raw), name


def test_empty_variables_are_ignored_but_an_empty_dead_letter_path_turns_it_off() -> None:
    assert HubConfig.load(environ={"CBHUB_RETRY_MAX_ATTEMPTS": "", "CBHUB_LOOP": ""}) == HubConfig()
    assert HubConfig.load(environ={"CBHUB_DEAD_LETTER_PATH": ""}).dead_letter_path == ""


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CBHUB_PORT", "eighty", "server.port: expected int, got 'eighty' [from CBHUB_PORT]"),
        ("CBHUB_RETRY_MAX_ATTEMPTS", "2.5", "error_handling.retries.max_attempts: expected int, got '2.5'"),
        ("CBHUB_BREAKER_FAILURE_RATE", "2", "failure_rate: must be > 0 and <= 1, got 2.0 [from CBHUB_BREAKER_FAILURE_RATE]"),
        ("CBHUB_IDLE_TIMEOUT_S", "-3", "error_handling.timeouts.idle_s: must be >= 0, got -3.0 [from CBHUB_IDLE_TIMEOUT_S]"),
        ("CBHUB_IDLE_TIMEOUT_S", "nan", "error_handling.timeouts.idle_s: expected a finite number"),
        ("CBHUB_LOOP", "trio", 'performance.loop: must be one of asyncio, uvloop, got "trio" [from CBHUB_LOOP]'),
        ("OLLAMA_HOST", "ftp://x", "providers.ollama.host: must be an http:// or https:// URL"),
    ],
)
def test_bad_variable_names_key_and_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        HubConfig.load(environ={variable: value})
    assert expected in str(info.value)


def test_soft_limit_above_a_hard_limit_from_another_layer(tmp_path: Path) -> None:
    message = error_of(tmp_path, "limits:\n  outbound_soft_limit_bytes: 100\n",
                       environ={"CBHUB_OUTBOUND_HARD_LIMIT_BYTES": "50"})
    assert "limits.outbound_soft_limit_bytes: must be <= limits.outbound_hard_limit_bytes (50), got 100" in message


# Presets.


def test_the_three_presets_ship() -> None:
    assert preset_names() == ["debug", "high_efficiency", "high_performance"]
    for name in preset_names():
        text = (ROOT / "hub" / "presets" / f"{name}.yaml").read_text(encoding="utf-8")
        assert text.startswith(f"# Preset {name}: ")


def changed(config: HubConfig) -> dict[str, Any]:
    defaults = HubConfig()
    return {f: getattr(config, f) for f in config.__struct_fields__ if getattr(config, f) != getattr(defaults, f)}


def test_high_performance_preset() -> None:
    config = HubConfig.load(preset="high_performance", environ={})
    assert changed(config).keys() == {"flush_interval_ms", "content_chunk_size", "loop",
                                      "outbound_soft_limit_bytes", "outbound_hard_limit_bytes"}
    assert (config.flush_interval_ms, config.content_chunk_size, config.loop) == (10.0, 32, "uvloop")
    assert config.outbound_soft_limit_bytes > HubConfig().outbound_soft_limit_bytes
    assert config.outbound_hard_limit_bytes > HubConfig().outbound_hard_limit_bytes


def test_high_efficiency_preset() -> None:
    config = HubConfig.load(preset="high_efficiency", environ={})
    defaults = HubConfig()
    assert (config.flush_interval_ms, config.content_chunk_size) == (50.0, 400)
    assert config.history_max_events < defaults.history_max_events
    assert config.memory_budget_bytes < defaults.memory_budget_bytes
    assert config.completion_max_buffered_bytes < defaults.completion_max_buffered_bytes
    assert config.outbound_hard_limit_bytes < defaults.outbound_hard_limit_bytes


def test_debug_preset() -> None:
    config = HubConfig.load(preset="debug", environ={})
    defaults = HubConfig()
    assert config.log_level == "DEBUG"
    assert config.retry_max_attempts == 1
    assert config.dead_letter_path  # on
    assert config.grace_period_s < defaults.grace_period_s and config.retention_s < defaults.retention_s


def test_unknown_preset_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as info:
        HubConfig.load(preset="fastest", environ={})
    assert str(info.value) == ('config error: unknown preset "fastest" '
                               "(available: debug, high_efficiency, high_performance)")
    with pytest.raises(ConfigError, match="did you mean debug"):
        HubConfig.load(preset="debg", environ={})


# Documentation rendered from the table.


def test_example_file_is_the_rendered_table_and_loads_to_the_defaults() -> None:
    path = ROOT / "docs" / "hub.example.yaml"
    assert path.read_text(encoding="utf-8") == example_yaml(), "regenerate: python -m hub.config example"
    config = HubConfig.load(str(path), environ={})
    assert msgspec.structs.replace(config, dead_letter_path=HubConfig().dead_letter_path) == HubConfig()
    document = yaml.safe_load(example_yaml())
    for key in KEYS:  # every key is in the example
        node: Any = document
        for part in key.path.split("."):
            node = node[part]


def test_readme_has_the_rendered_variable_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert env_table_markdown() in readme, "regenerate: python -m hub.config env-table"


def test_readme_example_file_loads(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Configuration"):readme.index("### Model names")]
    snippet = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert snippet is not None
    config = load_text(tmp_path, snippet.group(1))
    assert config.port == 9000 and config.retry_max_attempts == 5 and config.fallbacks


# The command line.


def run_cbhub(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], cwd=cwd, env=clean_environ(),
                          capture_output=True, text=True, timeout=60)


def test_serve_with_a_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "limits:\n  max_conections: 5\n", "bad.yaml")
    done = subprocess.run([sys.executable, "-m", "hub.cli", "serve", "--config", path, "--port", "0"],
                          cwd=ROOT, env=clean_environ(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == (f"cbhub: config error: limits.max_conections: unknown key "
                           f"(did you mean max_connections?) [in {path}]\n")
    assert done.stdout == ""


def test_config_command_output_round_trips(tmp_path: Path) -> None:
    done = run_cbhub("config", "--preset", "debug", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# effective configuration")
    path = write(tmp_path, done.stdout, "effective.yaml")
    assert HubConfig.load(path, environ={}) == HubConfig.load(preset="debug", environ=clean_environ())
    assert HubConfig.load(path, environ={}).log_level == "DEBUG"


@pytest.fixture
def no_hub_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_config_command_redacts_api_keys(no_hub_variables: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    no_hub_variables.setenv("OPENAI_API_KEY", "sk-test-secret-123456")
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert "sk-test-secret-123456" not in out
    document = yaml.safe_load(out)
    assert document["providers"]["openai"]["api_key"] == "***"
    assert document["providers"]["anthropic"]["api_key"] is None


def test_config_command_bad_preset_exits_2(no_hub_variables: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "--preset", "nope"]) == 2
    assert capsys.readouterr().err.startswith('cbhub: config error: unknown preset "nope" (available: ')


def test_serve_flags_override_file_and_preset(no_hub_variables: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import hub.app

    seen: list[HubConfig] = []

    async def fake_serve_forever(config: HubConfig) -> None:
        seen.append(config)

    no_hub_variables.setattr(hub.app, "serve_forever", fake_serve_forever)
    no_hub_variables.setattr(cli.logging, "basicConfig", lambda **kwargs: None)
    path = write(tmp_path, "server:\n  port: 9100\nmonitoring:\n  log_level: INFO\n")
    # The preset sets log_level and loop; the file sets log_level back; the flags win over both.
    assert cli.main(["serve", "--preset", "high_performance", "--config", path, "--loop", "asyncio"]) == 0
    assert cli.main(["serve", "--preset", "debug", "--port", "0", "--log-level", "warning"]) == 0
    assert cli.main(["serve", "--preset", "debug"]) == 0
    by_file, by_flags, by_preset = seen
    assert (by_file.port, by_file.log_level, by_file.loop, by_file.flush_interval_ms) == (9100, "INFO", "asyncio", 10.0)
    assert (by_flags.port, by_flags.log_level) == (0, "WARNING")
    assert by_preset.log_level == "DEBUG"


def test_to_yaml_round_trips_every_field(tmp_path: Path) -> None:
    chain = ["anthropic/claude-3-5-haiku-latest", "ollama/llama3.2"]
    config = HubConfig.load(
        environ={}, openai_api_key="sk-a", gemini_api_key="g", dead_letter_path="", port=1, flush_interval_ms=0.5,
        fallbacks={"openai/gpt-4o": chain, "openai/gpt-4o-mini": chain},  # one list twice: no YAML aliases
    )
    text = config.to_yaml(redact=False)
    assert "&id" not in text
    assert HubConfig.load(write(tmp_path, text), environ={}) == config
    redacted = HubConfig.load(write(tmp_path, config.to_yaml(), "redacted.yaml"), environ={})
    assert (redacted.openai_api_key, redacted.gemini_api_key, redacted.anthropic_api_key) == ("***", "***", None)


def test_the_auth_and_redaction_sections(tmp_path: Path) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text("""
auth:
  mode: jwt_or_api_key
  jwt: {secret: s3cret-value, audience: hub}
  api_keys:
    - {name: backend, sha256: 9f86d081, models: ["openai/*"], rpm: 3, admin: true}
  default_limits: {tpm: 1000}
  allowed_origins: ["https://app.example.com", "https://*.example.org"]
redaction:
  builtins: [email, credit_card]
  rules:
    - {name: ticket, pattern: "TCK-[0-9]{6}"}
""", encoding="utf-8")
    config = HubConfig.load(path, environ={"CBHUB_ALLOWED_HOSTS": "hub.example.com, localhost",
                                           "CBHUB_DEFAULT_RPM": "60", "CBHUB_AUTH_ALLOW_ANONYMOUS": "yes"})
    assert config.auth_mode == "jwt_or_api_key" and config.jwt_audience == "hub"
    [entry] = config.api_keys
    assert (entry.name, entry.models, entry.rpm, entry.admin, entry.tpm) == ("backend", ["openai/*"], 3, True, None)
    assert (config.default_rpm, config.default_tpm, config.default_max_concurrent) == (60, 1000, None)
    assert config.allowed_hosts == ["hub.example.com", "localhost"] and config.auth_allow_anonymous is True
    assert config.redaction_builtins == ["email", "credit_card"] and config.redaction_rules[0].name == "ticket"
    assert "s3cret-value" in config.secrets()
    shown = config.to_yaml()
    assert "s3cret-value" not in shown and HubConfig.load(_write(tmp_path, shown)).api_keys == config.api_keys


@pytest.mark.parametrize(("text", "message"), [
    ("auth:\n  mode: magic\n", "auth.mode: must be one of none, jwt, api_key, jwt_or_api_key"),
    ("auth:\n  allow_anonymous: 1\n", "auth.allow_anonymous: expected true or false, got 1"),
    ("auth:\n  api_keys: [{name: x}]\n", "auth.api_keys: invalid entry"),
    ("auth:\n  default_limits: {rpm: 0}\n", "auth.default_limits.rpm: must be >= 1 or null, got 0"),
    ("redaction:\n  builtins: [email, ssn]\n", "redaction.builtins: unknown 'ssn'"),
])
def test_auth_and_redaction_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        HubConfig.load(_write(tmp_path, text))
    assert message in str(error.value)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "more.yaml"
    path.write_text(text, encoding="utf-8")
    return path
