"""The hub's one configuration object, read from the environment.

Units are in the names (``flush_interval_ms``, ``connect_timeout_s``). A config file may come
later (DESIGN.md decision 8); every field already has its environment variable:

=============================  ==============================  =========================================
field                          environment variable            default
=============================  ==============================  =========================================
host, port                     CBHUB_HOST, CBHUB_PORT          127.0.0.1, 8765
content_chunk_size (chars)     CBHUB_CONTENT_CHUNK_SIZE        100
flush_interval_ms              CBHUB_FLUSH_INTERVAL_MS         25
connect_timeout_s              CBHUB_CONNECT_TIMEOUT_S         10
idle_timeout_s                 CBHUB_IDLE_TIMEOUT_S            120 (max gap between upstream reads; 0 = none)
grace_period_s                 CBHUB_GRACE_PERIOD_S            30 (run on with no subscriber)
retention_s                    CBHUB_RETENTION_S               300 (keep a finished completion)
history_max_events             CBHUB_HISTORY_MAX_EVENTS        10000 (per completion)
max_message_bytes              CBHUB_MAX_MESSAGE_BYTES         1048576 (client frame)
openai_api_key / base_url      OPENAI_API_KEY, OPENAI_BASE_URL https://api.openai.com/v1
anthropic_api_key / base_url   ANTHROPIC_API_KEY,              https://api.anthropic.com
                               ANTHROPIC_BASE_URL
gemini_api_key / base_url      GEMINI_API_KEY or               https://generativelanguage.googleapis.com
                               GOOGLE_API_KEY, GEMINI_BASE_URL
ollama_host                    OLLAMA_HOST                     http://127.0.0.1:11434
=============================  ==============================  =========================================
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from urllib.parse import urlsplit

import msgspec

__all__ = ["HubConfig", "DEFAULT_BASE_URLS"]

DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "google": "https://generativelanguage.googleapis.com",
    "ollama": "http://127.0.0.1:11434",
}


def _ollama_url(host: str) -> str:
    """``OLLAMA_HOST`` as Ollama reads it: a URL is used as given; a bare ``host`` or
    ``host:port`` gets ``http://`` and, without a port, Ollama's default port 11434."""
    if host.startswith(("http://", "https://")):
        return host
    url = "http://" + host
    return url if urlsplit(url).port is not None else url.rstrip("/") + ":11434"


class HubConfig(msgspec.Struct, kw_only=True):
    """Everything the hub can be told. See the module docstring for variables and defaults."""

    host: str = "127.0.0.1"
    port: int = 8765
    content_chunk_size: int = 100
    flush_interval_ms: float = 25.0
    connect_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0
    grace_period_s: float = 30.0
    retention_s: float = 300.0
    history_max_events: int = 10_000
    max_message_bytes: int = 1 << 20
    openai_api_key: str | None = None
    openai_base_url: str = DEFAULT_BASE_URLS["openai"]
    anthropic_api_key: str | None = None
    anthropic_base_url: str = DEFAULT_BASE_URLS["anthropic"]
    gemini_api_key: str | None = None
    gemini_base_url: str = DEFAULT_BASE_URLS["google"]
    ollama_host: str = DEFAULT_BASE_URLS["ollama"]
    # Retries and fallbacks (before the first content is forwarded).
    retry_max_attempts: int = 3
    retry_base_delay_ms: float = 250.0
    retry_max_delay_ms: float = 8000.0
    retry_after_max_s: float = 30.0
    fallbacks: dict[str, list[str]] = msgspec.field(default_factory=dict)
    # Timeouts beyond connect/idle: first body byte after the request, whole request (0 = none).
    first_byte_timeout_s: float = 60.0
    total_timeout_s: float = 0.0
    # Circuit breaker per provider and base URL.
    breaker_failure_rate: float = 0.5
    breaker_window_s: float = 60.0
    breaker_min_requests: int = 10
    breaker_cooldown_s: float = 30.0
    breaker_half_open_probes: int = 1
    # Dead-letter log of invalid upstream responses ("" = off).
    dead_letter_path: str = msgspec.field(default_factory=lambda: os.path.join(tempfile.gettempdir(), "cbhub", "dead-letter.jsonl"))
    dead_letter_max_bytes: int = 10 << 20
    dead_letter_backups: int = 3
    # Limits.
    max_connections: int = 10_000
    max_completions: int = 5_000
    max_completions_per_connection: int = 100
    completion_max_buffered_bytes: int = 8 << 20
    memory_budget_bytes: int = 1 << 30
    outbound_soft_limit_bytes: int = 1 << 20
    outbound_hard_limit_bytes: int = 8 << 20
    # Keepalive and shutdown.
    ws_ping_interval_s: float = 30.0
    ws_pong_timeout_s: float = 15.0
    sse_keepalive_interval_s: float = 15.0
    shutdown_drain_timeout_s: float = 30.0
    # Monitoring and performance.
    log_level: str = "INFO"
    loop: str = "asyncio"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> HubConfig:
        """Build a config from environment variables (``os.environ`` by default).

        Raises:
            ValueError: a numeric variable that does not parse, naming the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}

        def number(name: str, field: str, kind: type) -> None:
            raw = env.get(name)
            if raw:
                try:
                    values[field] = kind(raw)
                except ValueError:
                    raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None

        number("CBHUB_PORT", "port", int)
        number("CBHUB_CONTENT_CHUNK_SIZE", "content_chunk_size", int)
        number("CBHUB_FLUSH_INTERVAL_MS", "flush_interval_ms", float)
        number("CBHUB_CONNECT_TIMEOUT_S", "connect_timeout_s", float)
        number("CBHUB_IDLE_TIMEOUT_S", "idle_timeout_s", float)
        number("CBHUB_GRACE_PERIOD_S", "grace_period_s", float)
        number("CBHUB_RETENTION_S", "retention_s", float)
        number("CBHUB_HISTORY_MAX_EVENTS", "history_max_events", int)
        number("CBHUB_MAX_MESSAGE_BYTES", "max_message_bytes", int)
        text_vars = {
            "CBHUB_HOST": "host",
            "OPENAI_API_KEY": "openai_api_key",
            "OPENAI_BASE_URL": "openai_base_url",
            "ANTHROPIC_API_KEY": "anthropic_api_key",
            "ANTHROPIC_BASE_URL": "anthropic_base_url",
            "GEMINI_BASE_URL": "gemini_base_url",
            "OLLAMA_HOST": "ollama_host",
        }
        for name, field in text_vars.items():
            if env.get(name):
                values[field] = env[name]
        gemini_key = env.get("GEMINI_API_KEY") or env.get("GOOGLE_API_KEY")
        if gemini_key:
            values["gemini_api_key"] = gemini_key
        values.update(overrides)
        config = cls(**values)  # type: ignore[arg-type]
        config.ollama_host = _ollama_url(config.ollama_host)
        return config

    def provider_configured(self, provider: str) -> bool:
        """Whether ``provider`` (``openai``, ``anthropic``, ``google``, ``ollama``) can be
        called: it has a key, or a base URL other than the public API's (a compatible or local
        server may need none). Ollama needs no key, so it always counts."""
        key, base = {
            "openai": (self.openai_api_key, self.openai_base_url),
            "anthropic": (self.anthropic_api_key, self.anthropic_base_url),
            "google": (self.gemini_api_key, self.gemini_base_url),
            "ollama": ("", self.ollama_host),
        }[provider]
        return provider == "ollama" or bool(key) or base.rstrip("/") != DEFAULT_BASE_URLS[provider]

    def secrets(self) -> tuple[str, ...]:
        """The configured API keys, for redaction."""
        return tuple(k for k in (self.openai_api_key, self.anthropic_api_key, self.gemini_api_key) if k)
