"""The hub's one configuration object: defaults, a preset, a YAML file, the environment.

``HubConfig`` is a flat msgspec Struct; code and tests build it with keyword arguments
(``HubConfig(port=0, idle_timeout_s=0.3)``). ``HubConfig.load`` builds it from up to five
layers, each one overriding the one before, key by key::

    defaults  <  --preset NAME (hub/presets/NAME.yaml)  <  --config FILE  <  environment  <  overrides

Overrides are keyword arguments named like the fields; ``cbhub serve`` passes its ``--host``,
``--port``, ``--log-level``, ``--loop`` and ``--workers`` flags this way. ``HubConfig.from_env`` is
``load`` without a file or preset. Only ``load`` checks values; a ``HubConfig`` built
directly is taken as given.

The file groups the fields into sections (``server``, ``http``, ``protocols``, ``buffering``,
``performance``, ``error_handling``, ``monitoring``, ``providers``, ``fallbacks``, ``limits``,
``lifecycle``). Units are in the names (``flush_interval_ms``, ``connect_s``,
``memory_budget_bytes``). Each key is declared once, in the annotation of its field::

    max_connections: Annotated[int, key(
        "limits.max_connections", "CBHUB_MAX_CONNECTIONS",
        "open client connections (WebSocket and SSE)", _POSITIVE_INT)] = 10_000

that is its path in the file, its environment variables, its description and its check, beside
its type and default; the keys of the ``providers`` section come from each provider's spec in
protocol/providers/. :data:`KEYS` is the table read from these annotations. The documentation
is rendered from it and tests compare the two::

    python -m hub.config example  > docs/hub.example.yaml   # every key, its default, a comment
    python -m hub.config env-table                          # the table in README.md

Every value is checked when the config is loaded. An unknown key, a value of the wrong type
or out of range raises :class:`ConfigError` (a ``ValueError``) whose message names the key
and where the value came from, for example::

    config error: error_handling.retries.max_attempts: expected int, got "three" [in hub.yaml]
    config error: limits.max_conections: unknown key (did you mean max_connections?) [in hub.yaml]
    config error: server.port: expected int, got 'eighty' [from CBHUB_PORT]

An environment variable that is set but empty is ignored (except ``CBHUB_DEAD_LETTER_PATH``,
where empty turns the dead-letter log off). ``fallbacks`` has no variable.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import re
import sys
import tempfile
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
import yaml

from protocol.errors import ErrorCode, HubError, ProviderError
from protocol.providers import PROVIDERS, ProviderSettings, ProviderSpec
from protocol.redaction import check_rules

__all__ = ["HubConfig", "ConfigError", "DEFAULT_BASE_URLS", "Deployment", "KEYS", "Key", "ModelEntry", "PRESETS_DIR",
           "check_models", "deployment_spec", "key", "preset_names"]

#: The public API of each provider (protocol/providers/): ``{provider name: base URL}``.
DEFAULT_BASE_URLS = {name: spec.default_base_url for name, spec in PROVIDERS.items()}

#: Where the presets live: one partial config file per preset, ``NAME.yaml``.
PRESETS_DIR = Path(__file__).with_name("presets")

LOOPS = ("asyncio", "uvloop")


class ConfigError(HubError, ValueError):
    """An invalid configuration; the message starts with ``config error:`` and names the key.

    Part of the hub's one exception tree (code ``internal_error``: never sent to a client, the
    hub does not start), and a ``ValueError`` for callers that catch that. ``str()`` is the
    message alone, as ``cbhub serve`` prints it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.INTERNAL_ERROR)

    def __str__(self) -> str:
        return self.message


def preset_names() -> list[str]:
    """The names ``--preset`` accepts, sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


# How a key is declared: a field of HubConfig annotated with key(...).

Check = Callable[[Any], "str | None"]


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}, got {_show(v)}"


def _between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}, got {_show(v)}"


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {_show(v)}"


def _rate(v: float) -> str | None:
    return None if 0 < v <= 1 else f"must be > 0 and <= 1, got {_show(v)}"


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {_show(v)}"


def _not_empty(v: str) -> str | None:
    return None if v else "must not be empty"


def _http_url(v: str) -> str | None:
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError as exc:
        return f"not a valid URL ({exc}), got {_show(v)}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL, got {_show(v)}"
    return None


def _log_level(v: str) -> str | None:
    names = logging.getLevelNamesMapping()
    if v.upper() in names:
        return None
    levels = ", ".join(n for n in names if n not in ("WARN", "FATAL"))
    return f"must be a logging level ({levels}), got {_show(v)}"


_NON_NEGATIVE = _at_least(0)
_POSITIVE_INT = _at_least(1)


@dataclass(frozen=True)
class Key:
    """One key of the config file.

    Attributes:
        path: dotted path in the YAML file (``error_handling.retries.max_attempts``).
        field: the ``HubConfig`` field it sets; filled in when :data:`KEYS` is read from the
            annotations (``""`` in what :func:`key` returns).
        env: environment variables that set it, the first one set wins.
        help: one line for the docs.
        check: ``value -> problem or None``, run on the effective value.
        secret: an API key: redacted in ``cbhub config`` and in messages.
        doc_default: the default as the docs show it, where it depends on the machine.
        example: the value docs/hub.example.yaml shows, where the default depends on the machine.
        empty_env: a variable set to the empty string is a value, not "unset".
        notes: comment lines after the key in docs/hub.example.yaml.
        more: said after ``help`` in README.md only.
    """

    path: str
    field: str = ""
    env: tuple[str, ...] = ()
    help: str = ""
    check: Check | None = None
    secret: bool = False
    doc_default: str | None = None
    example: Any = None
    empty_env: bool = False
    notes: tuple[str, ...] = ()
    more: str = ""


def key(
    path: str,
    env: str | tuple[str, ...] | None,
    help: str,
    check: Check | None = None,
    *,
    secret: bool = False,
    doc_default: str | None = None,
    example: Any = None,
    empty_env: bool = False,
    notes: tuple[str, ...] = (),
    more: str = "",
) -> Key:
    """The key of one ``HubConfig`` field, written in its annotation:
    ``port: Annotated[int, key("server.port", "CBHUB_PORT", "port to listen on", _between(0, 65535))] = 8765``.
    The field's type and default stay where mypy and msgspec read them; :data:`KEYS` collects
    these markers in field order. Arguments as in :class:`Key`; ``env`` may be one name."""
    names = (env,) if isinstance(env, str) else (env or ())
    return Key(path, "", names, help, check, secret=secret, doc_default=doc_default, example=example,
               empty_env=empty_env, notes=notes, more=more)


class ApiKeyEntry(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One entry of ``auth.api_keys`` (``cbhub keys new`` prints it): the key itself is never
    stored, only its SHA-256 digest.

    Attributes:
        name: a label for people and logs (never the key).
        sha256: the hex SHA-256 digest of the key.
        subject: who the key authenticates as (default: ``key:<name>``).
        models: allowed model patterns (``openai/*``); empty: every model.
        channels: channel patterns readable besides the subject's own (``completion:team7-*``).
        rpm, tpm, max_concurrent: this key's limits (None: ``auth.default_limits``).
        admin: may read every channel, type-level subscriptions and ``system``.
    """

    name: str
    sha256: str
    subject: str | None = None
    models: list[str] = []
    channels: list[str] = []
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    admin: bool = False


class RedactionRule(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One entry of ``redaction.rules``: text matching ``pattern`` (a Python regular
    expression) is replaced by ``replace`` (default ``[REDACTED:<name>]``)."""

    name: str
    pattern: str
    replace: str | None = None


#: The provider kinds a deployment of a named model may have (``models[].deployments[].provider``).
DEPLOYMENT_PROVIDERS = ("openai", "openai_responses", "anthropic", "gemini", "ollama", "azure_openai")
#: ``routing.strategy``: how one deployment of a named model is chosen (hub/routing.py).
ROUTING_STRATEGIES = ("simple_shuffle", "least_busy")


class Deployment(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One deployment of a named model (docs/PROTOCOL.md "Models and deployments").

    Attributes:
        provider: the provider kind, one of :data:`DEPLOYMENT_PROVIDERS` (``openai`` is any
            OpenAI-compatible server).
        model: the upstream model id (for ``azure_openai`` the Azure deployment name).
        base_url: where the provider's API is; None: the kind's public API (required for
            ``azure_openai``).
        api_key_env: the environment variable holding the key (the key itself is never in the
            file); None: no key.
        weight: relative share of requests under ``simple_shuffle`` (> 0).
        rpm, tpm: this deployment's requests and tokens per minute (None: unlimited); one
            over its limit is skipped, not counted as a failure.
        headers: extra request headers sent to this deployment.
        api_version: the ``api-version`` query value (``azure_openai`` only, required there).
    """

    provider: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    headers: dict[str, str] = {}
    api_version: str | None = None


class ModelEntry(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One named model (an alias) of ``models:``: clients ask for ``name``; the hub picks one of
    ``deployments`` (``routing.strategy``), fails over to the others before content, then to
    ``fallbacks`` (other names, or ``provider/model`` names)."""

    name: str
    deployments: list[Deployment]
    fallbacks: list[str] = []


#: The modes of ``auth.mode``.
AUTH_MODES = ("none", "jwt", "api_key", "jwt_or_api_key")
#: The built-in redaction rules ``redaction.builtins`` may switch on.
REDACTION_BUILTINS = ("email", "phone", "credit_card", "iban", "api_key")


def _each_of(*choices: str) -> Check:
    def check(values: Any) -> str | None:
        unknown = [v for v in values if v not in choices]
        return f"unknown {unknown[0]!r}; expected any of {', '.join(choices)}" if unknown else None
    return check


def _optional_positive(value: Any) -> str | None:
    return None if value is None or value >= 1 else f"must be >= 1 or null, got {value}"


_URL_PASSWORD_PARAMETER = re.compile(r"([?&]password=)[^&#]+", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` as the hub's messages and logs show it: the password of its user part
    replaced by ``***`` (``redis://:secret@host:6379/0`` -> ``redis://:***@host:6379/0``,
    ``redis://user:secret@host/0`` -> ``redis://user:***@host/0``), a user part without a
    colon too (``redis://secret@host`` -> ``redis://***@host``: perhaps a password written
    without its colon), and a ``password=`` query parameter's value. A string that is not
    ``scheme://...`` is returned as it is; when unsure this masks more, never less."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    query = len(rest)
    for mark in "?#":
        found = rest.find(mark)
        if found != -1:
            query = min(query, found)
    at = rest.rfind("@", 0, query)  # the user part ends at the last @ before the query
    if at > 0 and not rest.startswith("/"):
        user, colon, password = rest[:at].partition(":")
        if colon and password:
            rest = f"{user}:***{rest[at:]}"
        elif not colon:
            rest = f"***{rest[at:]}"
    query = rest.find("?")
    if query != -1:
        rest = rest[:query] + _URL_PASSWORD_PARAMETER.sub(r"\1***", rest[query:])
    return f"{scheme}{separator}{rest}"


def _optional_redis_url(value: Any) -> str | None:
    if value is None:
        return None
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"not a valid URL ({exc}), got {_show(mask_url(value))}"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return f"must be a redis://, rediss:// or unix:// URL, got {_show(mask_url(value))}"
    return None


def _default_dead_letter_path() -> str:
    return os.path.join(tempfile.gettempdir(), "cbhub", "dead-letter.jsonl")


class HubConfig(msgspec.Struct, kw_only=True):
    """Everything the hub can be told. Each field is one key of the config file, declared in
    its annotation with :func:`key` (path, environment variables, check, help), in the order of
    docs/hub.example.yaml; the provider fields get theirs from protocol/providers/ (:data:`KEYS`).
    Build one with :meth:`load` to have it checked."""

    # server: where the hub listens.
    host: Annotated[str, key("server.host", "CBHUB_HOST", "address to listen on (`--host`)", _not_empty)] = (
        "127.0.0.1")
    port: Annotated[int, key("server.port", "CBHUB_PORT", "port to listen on, 0 for any free port (`--port`)",
                             _between(0, 65535))] = 8765

    # http: what a connection may take before the hub gives up on it (docs/PROTOCOL.md "Limits").
    http_header_timeout_s: Annotated[float, key(
        "http.header_timeout_s", "CBHUB_HTTP_HEADER_TIMEOUT_S",
        "a connection must send a whole request head (a WebSocket's opening handshake included) within this"
        " long of opening, or be closed", _positive)] = 10.0
    http_body_timeout_s: Annotated[float, key(
        "http.body_timeout_s", "CBHUB_HTTP_BODY_TIMEOUT_S",
        "an HTTP request body must arrive within this long of its head (408 otherwise)", _positive)] = 30.0
    http_keepalive_timeout_s: Annotated[float, key(
        "http.keepalive_timeout_s", "CBHUB_HTTP_KEEPALIVE_TIMEOUT_S",
        "an idle keep-alive HTTP connection is closed after this long", _positive)] = 75.0

    # protocols: WebSocket and server-sent events.
    max_message_bytes: Annotated[int, key(
        "protocols.websocket.max_message_bytes", "CBHUB_MAX_MESSAGE_BYTES",
        "largest client WebSocket message and HTTP request body", _POSITIVE_INT)] = 1 << 20
    ws_ping_interval_s: Annotated[float, key(
        "protocols.websocket.ping_interval_s", "CBHUB_WS_PING_INTERVAL_S",
        "how often the hub pings each WebSocket client", _NON_NEGATIVE)] = 30.0
    ws_pong_timeout_s: Annotated[float, key(
        "protocols.websocket.pong_timeout_s", "CBHUB_WS_PONG_TIMEOUT_S",
        "how long a WebSocket client has to answer a ping", _NON_NEGATIVE)] = 15.0
    sse_keepalive_interval_s: Annotated[float, key(
        "protocols.sse.keepalive_interval_s", "CBHUB_SSE_KEEPALIVE_INTERVAL_S",
        "how often an idle SSE stream gets a keepalive comment", _NON_NEGATIVE)] = 15.0

    # buffering: coalescing of text deltas and what each completion keeps.
    content_chunk_size: Annotated[int, key(
        "buffering.content_chunk_size_chars", "CBHUB_CONTENT_CHUNK_SIZE",
        "coalescing: send merged text once it reaches this many characters", _POSITIVE_INT)] = 100
    flush_interval_ms: Annotated[float, key(
        "buffering.flush_interval_ms", "CBHUB_FLUSH_INTERVAL_MS",
        "coalescing: send merged text once its oldest piece is this old", _NON_NEGATIVE)] = 25.0
    history_max_events: Annotated[int, key(
        "buffering.history_max_events", "CBHUB_HISTORY_MAX_EVENTS",
        "events kept per completion for late subscribers", _NON_NEGATIVE)] = 10_000
    completion_max_buffered_bytes: Annotated[int, key(
        "buffering.completion_max_buffered_bytes", "CBHUB_COMPLETION_MAX_BUFFERED_BYTES",
        "most payload bytes of one completion's history (resume replays it)", _POSITIVE_INT)] = 8 << 20
    history_max_age_s: Annotated[float, key(
        "buffering.history_max_age_s", "CBHUB_HISTORY_MAX_AGE_S",
        "events older than this leave a channel's history (0 = no age limit)", _NON_NEGATIVE)] = 3600.0

    # performance: the event loop and the worker processes.
    loop: Annotated[str, key(
        "performance.loop", "CBHUB_LOOP",
        "event loop: `asyncio` or `uvloop` (installed with the hub except on Windows; `--loop`)",
        _one_of(*LOOPS))] = "asyncio"
    workers: Annotated[int, key(
        "performance.workers", "CBHUB_WORKERS",
        "hub processes serving one port (SO_REUSEPORT); more than 1 needs `broker.url` (`--workers`)",
        _POSITIVE_INT,
        more="A supervisor starts them, forwards SIGTERM and SIGINT so that all drain, and restarts one that "
             "dies (docs/DEPLOY.md \"Workers\").")] = 1

    # error_handling: retries (before the first content is forwarded), timeouts, the circuit
    # breaker per provider and base URL, the dead-letter log of invalid upstream responses.
    retry_max_attempts: Annotated[int, key(
        "error_handling.retries.max_attempts", "CBHUB_RETRY_MAX_ATTEMPTS",
        "attempts per provider request, the first included (1 = no retries)", _POSITIVE_INT,
        more="Retries and fallbacks happen only before any content was forwarded to the client.")] = 3
    retry_base_delay_ms: Annotated[float, key(
        "error_handling.retries.base_delay_ms", "CBHUB_RETRY_BASE_DELAY_MS",
        "backoff before the first retry, growing exponentially", _NON_NEGATIVE)] = 250.0
    retry_max_delay_ms: Annotated[float, key(
        "error_handling.retries.max_delay_ms", "CBHUB_RETRY_MAX_DELAY_MS",
        "longest backoff between two attempts (at least `base_delay_ms`)", _NON_NEGATIVE)] = 8000.0
    retry_after_max_s: Annotated[float, key(
        "error_handling.retries.retry_after_max_s", "CBHUB_RETRY_AFTER_MAX_S",
        "longest `Retry-After` of a provider that the hub waits for", _NON_NEGATIVE)] = 30.0
    connect_timeout_s: Annotated[float, key(
        "error_handling.timeouts.connect_s", "CBHUB_CONNECT_TIMEOUT_S",
        "connecting to a provider", _NON_NEGATIVE)] = 10.0
    first_byte_timeout_s: Annotated[float, key(
        "error_handling.timeouts.first_byte_s", "CBHUB_FIRST_BYTE_TIMEOUT_S",
        "longest wait for the first byte of a provider's response body; 0 = none", _NON_NEGATIVE)] = 60.0
    idle_timeout_s: Annotated[float, key(
        "error_handling.timeouts.idle_s", "CBHUB_IDLE_TIMEOUT_S",
        "longest wait for a provider's response headers and longest gap between two reads of its body; "
        "0 = none", _NON_NEGATIVE,
        more="The headers are waited for after connecting; error bodies are included (`upstream_timeout`).")] = 120.0
    total_timeout_s: Annotated[float, key(
        "error_handling.timeouts.total_s", "CBHUB_TOTAL_TIMEOUT_S",
        "longest a whole provider request may take; 0 = none", _NON_NEGATIVE)] = 0.0
    breaker_failure_rate: Annotated[float, key(
        "error_handling.circuit_breaker.failure_rate", "CBHUB_BREAKER_FAILURE_RATE",
        "share of failed requests in the window that opens the breaker (0 < rate <= 1)", _rate,
        more="There is one breaker per provider and base URL.")] = 0.5
    breaker_window_s: Annotated[float, key(
        "error_handling.circuit_breaker.window_s", "CBHUB_BREAKER_WINDOW_S",
        "the window the failure rate is measured over", _positive)] = 60.0
    breaker_min_requests: Annotated[int, key(
        "error_handling.circuit_breaker.min_requests", "CBHUB_BREAKER_MIN_REQUESTS",
        "requests in the window before the breaker may open", _POSITIVE_INT)] = 10
    breaker_cooldown_s: Annotated[float, key(
        "error_handling.circuit_breaker.cooldown_s", "CBHUB_BREAKER_COOLDOWN_S",
        "how long an open breaker rejects requests before it lets probes through", _NON_NEGATIVE)] = 30.0
    breaker_half_open_probes: Annotated[int, key(
        "error_handling.circuit_breaker.half_open_probes", "CBHUB_BREAKER_HALF_OPEN_PROBES",
        "trial requests a half-open breaker lets through", _POSITIVE_INT)] = 1
    dead_letter_path: Annotated[str, key(
        "error_handling.dead_letter.path", "CBHUB_DEAD_LETTER_PATH",
        "JSON-lines log of invalid upstream responses; \"\" turns it off",
        more="A set but empty `CBHUB_DEAD_LETTER_PATH` turns it off too.",
        doc_default="`<temp dir>/cbhub/dead-letter.jsonl`", example="/tmp/cbhub/dead-letter.jsonl",
        empty_env=True)] = msgspec.field(default_factory=_default_dead_letter_path)
    dead_letter_max_bytes: Annotated[int, key(
        "error_handling.dead_letter.max_bytes", "CBHUB_DEAD_LETTER_MAX_BYTES",
        "size at which the dead-letter log is rotated", _POSITIVE_INT)] = 10 << 20
    dead_letter_backups: Annotated[int, key(
        "error_handling.dead_letter.backups", "CBHUB_DEAD_LETTER_BACKUPS",
        "rotated dead-letter logs kept", _NON_NEGATIVE)] = 3

    # monitoring: logging.
    log_level: Annotated[str, key(
        "monitoring.log_level", "CBHUB_LOG_LEVEL",
        "DEBUG, INFO, WARNING, ERROR or CRITICAL (`--log-level`)", _log_level)] = "INFO"

    # providers: one field per setting that a ProviderSpec (protocol/providers/) names in its
    # api_key_field and base_url_field; its key (path, variables, help, check) is in the spec.
    openai_api_key: str | None = None
    openai_base_url: str = DEFAULT_BASE_URLS["openai"]
    anthropic_api_key: str | None = None
    anthropic_base_url: str = DEFAULT_BASE_URLS["anthropic"]
    gemini_api_key: str | None = None
    gemini_base_url: str = DEFAULT_BASE_URLS["google"]
    ollama_host: str = DEFAULT_BASE_URLS["ollama"]
    openai_responses_api_key: str | None = None
    openai_responses_base_url: str = DEFAULT_BASE_URLS["openai_responses"]

    # fallbacks: model -> models to try, before the first content is forwarded.
    fallbacks: Annotated[dict[str, list[str]], key(
        "fallbacks", None, "model -> models to try in order when it fails before any content was forwarded",
        notes=("fallbacks:", "  openai/gpt-4o-mini: [anthropic/claude-3-5-haiku-latest, ollama/llama3.2]"),
    )] = msgspec.field(default_factory=dict)

    # models: named models (aliases) served by one or more deployments (hub/routing.py).
    models: Annotated[list[ModelEntry], key(
        "models", None, "named models: {name, deployments: [{provider, model, base_url, api_key_env, weight, rpm,"
        " tpm, headers, api_version}], fallbacks}",
        notes=("models:", "  - name: chat", "    deployments:",
               "      - {provider: openai, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY, weight: 3}",
               "      - {provider: openai, model: openai/gpt-4o-mini, base_url: 'https://openrouter.ai/api/v1',",
               "         api_key_env: OPENROUTER_API_KEY, rpm: 600}",
               "    fallbacks: [anthropic/claude-3-5-haiku-latest]"),
    )] = msgspec.field(default_factory=list)
    routing_strategy: Annotated[str, key(
        "routing.strategy", "CBHUB_ROUTING_STRATEGY",
        "how a named model's deployment is chosen: `simple_shuffle` (weighted random) or `least_busy` (fewest"
        " requests in flight)", _one_of(*ROUTING_STRATEGIES))] = "simple_shuffle"

    # limits: what protects the hub.
    max_connections: Annotated[int, key(
        "limits.max_connections", "CBHUB_MAX_CONNECTIONS",
        "open client connections (WebSocket and SSE)", _POSITIVE_INT)] = 10_000
    max_completions: Annotated[int, key(
        "limits.max_completions", "CBHUB_MAX_COMPLETIONS",
        "completions the hub holds at once", _POSITIVE_INT)] = 5_000
    max_completions_per_connection: Annotated[int, key(
        "limits.max_completions_per_connection", "CBHUB_MAX_COMPLETIONS_PER_CONNECTION",
        "completions one WebSocket connection may start and hold at once", _POSITIVE_INT)] = 100
    max_channels_per_message: Annotated[int, key(
        "limits.max_channels_per_message", "CBHUB_MAX_CHANNELS_PER_MESSAGE",
        "channels one subscribe may name (duplicates collapsed first)", _POSITIVE_INT)] = 100
    max_subscriptions_per_connection: Annotated[int, key(
        "limits.max_subscriptions_per_connection", "CBHUB_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        "channels one connection may watch at once", _POSITIVE_INT)] = 1000
    workflow_max_steps: Annotated[int, key(
        "limits.workflow_max_steps", "CBHUB_WORKFLOW_MAX_STEPS",
        "transitions one workflow run may fire (a definition may set a lower maxSteps)", _POSITIVE_INT)] = 100
    workflow_max_agent_calls: Annotated[int, key(
        "limits.workflow_max_agent_calls", "CBHUB_WORKFLOW_MAX_AGENT_CALLS",
        "completions one workflow run's agents may make, tool rounds included (a definition may set a lower"
        " maxAgentCalls)", _POSITIVE_INT)] = 50
    workflow_max_duration_s: Annotated[float, key(
        "limits.workflow_max_duration_s", "CBHUB_WORKFLOW_MAX_DURATION_S",
        "how long one workflow run may take (a definition may set a lower maxDurationS)", _positive)] = 600.0
    memory_budget_bytes: Annotated[int, key(
        "limits.memory_budget_bytes", "CBHUB_MEMORY_BUDGET_BYTES",
        "bytes of stream data the hub may hold in all: histories, snapshot state, outbound queues, upstream"
        " framing (past it: trim finished streams, then end the largest consumers with hub_overloaded)",
        _POSITIVE_INT)] = 1 << 30
    upstream_max_event_bytes: Annotated[int, key(
        "limits.upstream_max_event_bytes", "CBHUB_UPSTREAM_MAX_EVENT_BYTES",
        "most bytes of a provider's body the hub holds without a complete event (more ends the attempt with"
        " invalid_upstream_response)", _POSITIVE_INT)] = 16 << 20
    outbound_soft_limit_bytes: Annotated[int, key(
        "limits.outbound_soft_limit_bytes", "CBHUB_OUTBOUND_SOFT_LIMIT_BYTES",
        "soft limit of bytes queued for one client, at most the hard limit", _POSITIVE_INT)] = 1 << 20
    outbound_hard_limit_bytes: Annotated[int, key(
        "limits.outbound_hard_limit_bytes", "CBHUB_OUTBOUND_HARD_LIMIT_BYTES",
        "hard limit of bytes queued for one client", _POSITIVE_INT)] = 8 << 20

    # auth: who may connect, spend, watch and cancel (docs/PROTOCOL.md "Authentication").
    auth_mode: Annotated[str, key(
        "auth.mode", "CBHUB_AUTH_MODE",
        "`none`, `jwt`, `api_key` or `jwt_or_api_key`; `none` only on a loopback address unless"
        " `allow_anonymous`", _one_of(*AUTH_MODES))] = "none"
    auth_allow_anonymous: Annotated[bool, key(
        "auth.allow_anonymous", "CBHUB_AUTH_ALLOW_ANONYMOUS",
        "let `auth.mode: none` listen on a non-loopback address, on purpose")] = False
    auth_timeout_s: Annotated[float, key(
        "auth.timeout_s", "CBHUB_AUTH_TIMEOUT_S",
        "a WebSocket without a credential is closed 4001 after this long", _NON_NEGATIVE)] = 5.0
    auth_expiry_grace_s: Annotated[float, key(
        "auth.expiry_grace_s", "CBHUB_AUTH_EXPIRY_GRACE_S",
        "after `token_expired`, how long a WebSocket has to send a fresh token before close 4001",
        _NON_NEGATIVE)] = 10.0
    jwt_secret: Annotated[str | None, key(
        "auth.jwt.secret", "CBHUB_JWT_SECRET", "shared secret of HS256/384/512 tokens", secret=True)] = None
    jwt_public_key_file: Annotated[str | None, key(
        "auth.jwt.public_key_file", "CBHUB_JWT_PUBLIC_KEY_FILE",
        "PEM public key of RS256/ES256 tokens")] = None
    jwt_jwks: Annotated[str | None, key(
        "auth.jwt.jwks", "CBHUB_JWT_JWKS", "JWKS file path or URL (keys chosen by `kid`)")] = None
    jwt_audience: Annotated[str | None, key(
        "auth.jwt.audience", "CBHUB_JWT_AUDIENCE", "required `aud` of tokens, when set")] = None
    jwt_issuer: Annotated[str | None, key(
        "auth.jwt.issuer", "CBHUB_JWT_ISSUER", "required `iss` of tokens, when set")] = None
    jwt_leeway_s: Annotated[float, key(
        "auth.jwt.leeway_s", "CBHUB_JWT_LEEWAY_S",
        "clock skew allowed on `exp`, `nbf` and `iat`", _NON_NEGATIVE)] = 10.0
    api_keys: Annotated[list[ApiKeyEntry], key(
        "auth.api_keys", None, "API keys by SHA-256 digest, with subject and limits (`cbhub keys new` prints"
        " an entry)", notes=("api_keys:", "  - {name: backend, sha256: 9f86d08188...}"),
    )] = msgspec.field(default_factory=list)
    default_rpm: Annotated[int | None, key(
        "auth.default_limits.rpm", "CBHUB_DEFAULT_RPM",
        "completion and workflow requests per minute per subject (null: unlimited)", _optional_positive)] = None
    default_tpm: Annotated[int | None, key(
        "auth.default_limits.tpm", "CBHUB_DEFAULT_TPM",
        "prompt + completion tokens per minute per subject (null: unlimited)", _optional_positive)] = None
    default_max_concurrent: Annotated[int | None, key(
        "auth.default_limits.max_concurrent", "CBHUB_DEFAULT_MAX_CONCURRENT",
        "running completions and workflows per subject (null: unlimited)", _optional_positive)] = None
    allowed_origins: Annotated[list[str], key(
        "auth.allowed_origins", "CBHUB_ALLOWED_ORIGINS",
        "browser origins allowed on the WebSocket and `/v1` (exact, `https://*.example.com`, or `*`: any;"
        " empty: the hub's own origin; comma-separated in the variable)")] = msgspec.field(default_factory=list)
    allowed_hosts: Annotated[list[str], key(
        "auth.allowed_hosts", "CBHUB_ALLOWED_HOSTS",
        "accepted `Host` headers (empty: the listen address and localhost; comma-separated in the"
        " variable)")] = msgspec.field(default_factory=list)

    # redaction: what never leaves the hub (docs/PROTOCOL.md "Redaction").
    redaction_builtins: Annotated[list[str], key(
        "redaction.builtins", "CBHUB_REDACTION_BUILTINS",
        "built-in rules to switch on: email, phone, credit_card, iban, api_key (comma-separated in the"
        " variable)", _each_of(*REDACTION_BUILTINS))] = msgspec.field(default_factory=list)
    redaction_rules: Annotated[list[RedactionRule], key(
        "redaction.rules", None, "your own rules: {name, pattern, replace}",
        notes=("rules:", "  - {name: ticket, pattern: 'TCK-[0-9]{6}'}"),
    )] = msgspec.field(default_factory=list)
    redaction_max_match_chars: Annotated[int, key(
        "redaction.max_match_chars", "CBHUB_REDACTION_MAX_MATCH_CHARS",
        "longest match a rule may make: streamed text is held back this many characters at most",
        _POSITIVE_INT)] = 64
    redaction_requests: Annotated[bool, key(
        "redaction.requests", "CBHUB_REDACTION_REQUESTS",
        "also redact prompts before they are sent upstream")] = False

    # lifecycle: completion lifetimes and shutdown.
    grace_period_s: Annotated[float, key(
        "lifecycle.grace_period_s", "CBHUB_GRACE_PERIOD_S",
        "how long a completion runs on after its last subscriber leaves", _NON_NEGATIVE)] = 30.0
    retention_s: Annotated[float, key(
        "lifecycle.retention_s", "CBHUB_RETENTION_S",
        "how long a finished completion stays subscribable (with its history)", _NON_NEGATIVE)] = 300.0
    shutdown_drain_timeout_s: Annotated[float, key(
        "lifecycle.shutdown_drain_timeout_s", "CBHUB_SHUTDOWN_DRAIN_TIMEOUT_S",
        "on SIGINT or SIGTERM, how long running completions get to finish", _NON_NEGATIVE)] = 30.0
    shutdown_kill_after_s: Annotated[float, key(
        "lifecycle.shutdown_kill_after_s", "CBHUB_SHUTDOWN_KILL_AFTER_S",
        "with `--workers`: a worker still running this long after the drain timeout is killed (SIGKILL)",
        _NON_NEGATIVE)] = 30.0

    # broker: the channels' broker; in memory (one process) unless a Redis URL is given.
    broker_url: Annotated[str | None, key(
        "broker.url", "CBHUB_BROKER_URL",
        "Redis URL (`redis://127.0.0.1:6379/0`) of the broker several hubs share; null = the in-memory broker",
        _optional_redis_url,
        more="Setting it alone selects the Redis broker (docs/PROTOCOL.md \"Running several hubs\"); "
             "`cbhub serve` exits 2 when it cannot reach it at start.")] = None
    broker_prefix: Annotated[str, key(
        "broker.prefix", "CBHUB_BROKER_PREFIX",
        "prefix of every Redis key and PUB/SUB channel the hub uses", _not_empty)] = "cbhub:"
    broker_node_timeout_s: Annotated[float, key(
        "broker.node_timeout_s", "CBHUB_BROKER_NODE_TIMEOUT_S",
        "how long a hub node may stay silent before others end its runs with node_lost (heartbeat every 1/4 of it)",
        _positive)] = 5.0

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        preset: str | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> HubConfig:
        """Build the config from its layers: defaults < ``preset`` < the file at ``path`` <
        environment variables (``environ``, ``os.environ`` by default) < ``overrides``.

        Args:
            path: a YAML file in the schema of :data:`KEYS` (docs/hub.example.yaml).
            preset: the name of a preset in hub/presets (:func:`preset_names`).
            environ: the environment variables to read.
            overrides: field values that win over everything (``port=0``).

        Raises:
            ConfigError: an unreadable file, an unknown preset or key, a value of the wrong
                type or out of range; the message names the key and the value's source.
            TypeError: an override that is not a field.
        """
        values: dict[str, Any] = {}
        origins: dict[str, str] = {}
        if preset is not None:
            _apply(values, origins, _preset_document(preset), f"in preset {preset}")
        if path is not None:
            _apply(values, origins, _read_document(os.fspath(path)), f"in {os.fspath(path)}")
        _apply_environ(values, origins, os.environ if environ is None else environ)
        for field, value in overrides.items():
            if field not in cls.__struct_fields__:
                raise TypeError(f"HubConfig.load() got an unexpected keyword argument {field!r}")
            key = _BY_FIELD.get(field)
            values[field] = value if key is None else _convert(key, value, "override")
            origins[field] = "override"
        config = cls(**values)
        _normalize_and_check(config, origins)
        check_models(config.models, os.environ if environ is None else environ, origins.get("models"))
        return config

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> HubConfig:
        """Build a config from environment variables (``os.environ`` by default) and
        ``overrides``: :meth:`load` without a file or preset.

        Raises:
            ConfigError: a variable that does not parse or is out of range, naming the variable.
        """
        return cls.load(environ=environ, **overrides)

    def to_yaml(self, *, redact: bool = True) -> str:
        """This config as a YAML file in the schema of :data:`KEYS` (every key), which
        :meth:`load` reads back. With ``redact``, API keys are shown as ``"***"`` and
        ``broker.url`` with its password masked (:func:`mask_url`)."""
        document: dict[str, Any] = {}
        for key in KEYS:
            value = getattr(self, key.field)
            if key.secret and redact and value:
                value = "***"
            elif key.field == "broker_url" and redact and value:
                value = mask_url(value)
            elif isinstance(value, dict):
                value = {k: list(v) for k, v in value.items()}
            elif isinstance(value, list):
                value = msgspec.to_builtins(value)
            node = document
            *sections, leaf = key.path.split(".")
            for section in sections:
                node = node.setdefault(section, {})
            node[leaf] = value
        return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)

    def provider_settings(self, provider: str | ProviderSpec) -> ProviderSettings:
        """The settings of ``provider`` (a name or a spec of protocol/providers/) that its
        request builder reads: base URL and key.

        Raises:
            KeyError: an unknown provider name.
        """
        spec = PROVIDERS.spec(provider) if isinstance(provider, str) else provider
        key = getattr(self, spec.api_key_field) if spec.api_key_field else None
        return ProviderSettings(base_url=getattr(self, spec.base_url_field), api_key=key)

    def provider_configured(self, provider: str) -> bool:
        """Whether ``provider`` (a name in protocol/providers/, ``openai``, ``google``...) can
        be called: it has a key, or a base URL other than the public API's (a compatible or
        local server may need none), or needs no key at all (Ollama).

        Raises:
            KeyError: an unknown provider name.
        """
        spec = PROVIDERS.spec(provider)
        return spec.configured(self.provider_settings(spec))

    def secrets(self) -> tuple[str, ...]:
        """The configured secrets (provider API keys, the JWT secret: every key marked
        secret), for redaction."""
        values = [getattr(self, key.field) for key in KEYS if key.secret]
        # The keys of named models' deployments, from the variables they name.
        values += [os.environ.get(d.api_key_env) for entry in self.models for d in entry.deployments if d.api_key_env]
        return tuple(value for value in values if isinstance(value, str) and value)


# The table of keys, read from HubConfig's annotations.


def _provider_keys() -> dict[str, Key]:
    """The keys of the ``providers`` section by field, from the registry (protocol/providers/):
    per provider ``providers.<section>.api_key`` (when it has a key) and its base URL key."""
    keys: dict[str, Key] = {}
    for spec in PROVIDERS.values():
        section = f"providers.{spec.config_section}"
        if spec.api_key_field:
            keys[spec.api_key_field] = Key(f"{section}.api_key", spec.api_key_field, spec.api_key_env,
                                           spec.api_key_help, secret=True)
        keys[spec.base_url_field] = Key(f"{section}.{spec.base_url_key}", spec.base_url_field, (spec.base_url_env,),
                                        spec.base_url_help, _http_url)
    return keys


def _read_keys(cls: type[msgspec.Struct], provider_keys: Mapping[str, Key]) -> tuple[tuple[Key, ...], dict[str, Any]]:
    """``(keys in field order, {field: its type without the annotation})`` of ``cls``: a field's
    key is the :func:`key` in its annotation, or the registry's key for that field.

    Raises:
        TypeError: a field with no key or two, or a provider setting that names no field.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    keys: list[Key] = []
    kinds: dict[str, Any] = {}
    for name in cls.__struct_fields__:
        hint = hints[name]
        declared: list[Key] = []
        if typing.get_origin(hint) is Annotated:
            hint, *extras = typing.get_args(hint)
            declared = [extra for extra in extras if isinstance(extra, Key)]
        if name in provider_keys:
            declared.append(provider_keys[name])
        if len(declared) != 1:
            problem = "no key: annotate it with key(...)" if not declared else "more than one key"
            raise TypeError(f"{cls.__name__}.{name} has {problem}")
        keys.append(dataclasses.replace(declared[0], field=name))
        kinds[name] = hint
    missing = set(provider_keys) - set(cls.__struct_fields__)
    if missing:
        raise TypeError(f"{cls.__name__} has no field for the provider settings {', '.join(sorted(missing))}")
    return tuple(keys), kinds


#: Every key of the config file, in the order of docs/hub.example.yaml (HubConfig's fields).
KEYS: tuple[Key, ...]
KEYS, _FIELD_TYPES = _read_keys(HubConfig, _provider_keys())

_SECTION_HELP = {
    "server": "Where the hub listens.",
    "http": "Timeouts of HTTP connections: the request head (WebSocket handshakes too), the body, idle keep-alive.",
    "protocols": "The client protocols: WebSocket (/ws/stream) and server-sent events.",
    "buffering": "Coalescing of text deltas and what each completion keeps.",
    "performance": "The event loop and the worker processes.",
    "error_handling": "Retries, timeouts, the circuit breaker and the dead-letter log, per provider request.",
    "monitoring": "Logging.",
    "providers": "The LLM providers. OpenAI, Anthropic and Gemini need a key while their base URL is the\n"
                 "public default; with another base URL (a local server) none is needed. Ollama needs none.",
    "fallbacks": "Model fallbacks (no environment variable).",
    "models": "Named models, each served by deployments (docs/PROTOCOL.md \"Models and deployments\"; no variable).",
    "routing": "How one deployment of a named model is chosen.",
    "limits": "Limits that protect the hub.",
    "auth": "Who may connect, spend, watch and cancel; browser origins and Host headers.",
    "redaction": "Patterns masked in streamed text before it is stored or sent to anyone.",
    "lifecycle": "Completion lifetimes and shutdown.",
    "broker": "The broker of channels: in memory for one process, or Redis shared by several hubs.",
}

_BY_FIELD = {key.field: key for key in KEYS}


class _Dumper(yaml.SafeDumper):
    """Safe YAML output without anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _tree() -> dict[str, Any]:
    """The sections of KEYS as nested dicts, leaves being the Keys."""
    root: dict[str, Any] = {}
    for key in KEYS:
        node = root
        *sections, leaf = key.path.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = key
    return root


_TREE = _tree()


# Reading and checking.


def _show(value: Any) -> str:
    """A value as the messages quote it: YAML-ish scalars, strings in double quotes."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _fail(path: str, problem: str, where: str | None) -> ConfigError:
    return ConfigError(f"config error: {path}: {problem}" + (f" [{where}]" if where else ""))


def _convert(key: Key, value: Any, where: str, path: str | None = None) -> Any:
    """``value`` (from YAML or an override) as the type of ``key.field``, or ConfigError."""
    path = path or key.path
    kind = _FIELD_TYPES[key.field]
    shown = _show(value)
    if key.secret and isinstance(value, (int, float)):  # never echo what may be a key
        shown = "a boolean" if isinstance(value, bool) else "a number"
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _fail(path, f"expected int, got {shown}", where)
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _fail(path, f"expected a finite number, got {shown}", where)
            return float(value)
        raise _fail(path, f"expected a number, got {shown}", where)
    if kind is str:
        if isinstance(value, str):
            return value
        raise _fail(path, f"expected a string, got {shown}", where)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise _fail(path, f"expected true or false, got {shown}", where)
    if kind == (str | None):  # the API keys, optional paths
        if value is None or isinstance(value, str):
            return value
        raise _fail(path, f"expected a string or null, got {shown}", where)
    if kind == (int | None):
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise _fail(path, f"expected int or null, got {shown}", where)
    if kind == list[str]:
        if value is None:
            return []
        if isinstance(value, list) and all(isinstance(item, str) and item for item in value):
            return list(value)
        raise _fail(path, f"expected a list of strings, got {shown}", where)
    if typing.get_origin(kind) is list:  # a list of entries (auth.api_keys, redaction.rules)
        try:
            return msgspec.convert(value or [], kind)
        except msgspec.ValidationError as exc:
            raise _fail(path, f"invalid entry: {exc}", where) from None
    return _convert_fallbacks(value, path, where)


def _convert_fallbacks(value: Any, path: str, where: str) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected a mapping of model to a list of models, got {_show(value)}", where)
    result: dict[str, list[str]] = {}
    for model, chain in value.items():
        if not isinstance(model, str) or not model:
            raise _fail(path, f"expected model names as keys, got {_show(model)}", where)
        entry = f"{path}[{json.dumps(model)}]"
        if not isinstance(chain, list):
            raise _fail(entry, f"expected a list of models, got {_show(chain)}", where)
        for i, item in enumerate(chain):
            if not isinstance(item, str) or not item:
                raise _fail(f"{entry}[{i}]", f"expected a model name, got {_show(item)}", where)
        result[model] = list(chain)
    return result


def _unknown(path: str, name: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"expected one of: {', '.join(known)}"
    return _fail(path, f"unknown key ({hint})", where)


def _apply(values: dict[str, Any], origins: dict[str, str], document: Any, where: str) -> None:
    """Check a parsed YAML document against :data:`KEYS` and set the values it gives."""
    if document is None:
        return
    if not isinstance(document, Mapping):
        raise ConfigError(f"config error: expected a mapping of sections at the top, got {_show(document)} [{where}]")

    def walk(node: Mapping[Any, Any], tree: dict[str, Any], prefix: str) -> None:
        for name, value in node.items():
            name = name if isinstance(name, str) else _show(name)
            path = prefix + name
            entry = tree.get(name)
            if entry is None:
                raise _unknown(path, name, list(tree), where)
            if isinstance(entry, Key):
                values[entry.field] = _convert(entry, value, where)
                origins[entry.field] = where
            elif value is None:  # a section with every key commented out
                continue
            elif isinstance(value, Mapping):
                walk(value, entry, path + ".")
            else:
                raise _fail(path, f"expected a section (a mapping of {', '.join(entry)}), got {_show(value)}", where)

    walk(document, _TREE, "")


def _read_document(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"config error: {path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config error: {path}: not UTF-8 text ({exc.reason})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config error: {path}: invalid YAML{at}: {problem}") from None


def _preset_document(name: str) -> Any:
    names = preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"config error: unknown preset {_show(name)} ({hint}available: {', '.join(names)})")
    return _read_document(str(PRESETS_DIR / f"{name}.yaml"))


def _apply_environ(values: dict[str, Any], origins: dict[str, str], env: Mapping[str, str]) -> None:
    for key in KEYS:
        for name in key.env:
            raw = env.get(name)
            if raw is None or (raw == "" and not key.empty_env):
                continue
            kind = _FIELD_TYPES[key.field]
            if kind is int or kind is float:
                try:
                    number = kind(raw)
                except ValueError:
                    expected = "int" if kind is int else "a number"
                    raise _fail(key.path, f"expected {expected}, got {raw!r}", f"from {name}") from None
                values[key.field] = _convert(key, number, f"from {name}")
            elif kind == (int | None):
                try:
                    values[key.field] = None if raw.lower() in ("", "null", "none") else int(raw)
                except ValueError:
                    raise _fail(key.path, f"expected int or null, got {raw!r}", f"from {name}") from None
            elif kind is bool:
                if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                    raise _fail(key.path, f"expected true or false, got {raw!r}", f"from {name}")
                values[key.field] = raw.lower() in ("1", "true", "yes")
            elif kind == list[str]:
                values[key.field] = [part.strip() for part in raw.split(",") if part.strip()]
            else:
                values[key.field] = raw
            origins[key.field] = f"from {name}"
            break


def _normalize_and_check(config: HubConfig, origins: dict[str, str]) -> None:
    """Normalize base URLs given without a scheme (the Ollama host), run every check, then
    write the log level in capitals."""
    for spec in PROVIDERS.values():
        field = spec.base_url_field
        if spec.normalize_base_url is not None and "://" not in getattr(config, field):
            # Another scheme than http(s) fails the URL check below.
            try:
                setattr(config, field, spec.normalize_base_url(getattr(config, field)))
            except ValueError:
                pass  # a port that is not a number: the URL check below names the key
    for key in KEYS:
        if key.check is not None:
            problem = key.check(getattr(config, key.field))
            if problem:
                raise _fail(key.path, problem, origins.get(key.field))
    pairs = (("retry_base_delay_ms", "retry_max_delay_ms"), ("outbound_soft_limit_bytes", "outbound_hard_limit_bytes"))
    for low, high in pairs:
        if getattr(config, low) > getattr(config, high):
            low_key, high_key = _BY_FIELD[low], _BY_FIELD[high]
            raise _fail(low_key.path, f"must be <= {high_key.path} ({_show(getattr(config, high))}), "
                                      f"got {_show(getattr(config, low))}", origins.get(low) or origins.get(high))
    _check_fallbacks(config.fallbacks, origins.get("fallbacks"), frozenset(entry.name for entry in config.models))
    # Every redaction rule must fit in max_match_chars, or streamed text could leak a match.
    problem = check_rules(config.redaction_builtins, config.redaction_rules, config.redaction_max_match_chars)
    if problem:
        raise _fail("redaction.rules", problem, origins.get("redaction_rules") or origins.get("redaction_builtins"))
    config.log_level = config.log_level.upper()


def _check_fallbacks(fallbacks: dict[str, list[str]], where: str | None,
                     aliases: frozenset[str] = frozenset()) -> None:
    if not fallbacks:
        return
    for model, chain in fallbacks.items():
        entry = f"fallbacks[{json.dumps(model)}]"
        for path, name in ((entry, model), *((f"{entry}[{i}]", item) for i, item in enumerate(chain))):
            if name in aliases:  # a named model (models:)
                continue
            try:
                PROVIDERS.route(name)
            except ProviderError:
                raise _fail(path, f"no provider serves model {_show(name)} (use {PROVIDERS.prefix_hint()} "
                                  "followed by the provider's model name)", where) from None
        if model in chain:
            raise _fail(entry, "a model cannot be its own fallback", where)


def deployment_spec(deployment: Deployment) -> ProviderSpec | None:
    """The registry's spec of a deployment's provider kind (``gemini`` is the registry's
    ``google``), or None for ``azure_openai`` (protocol/providers/azure_openai.py, built on
    OpenAI's spec) and for a kind this hub's registry lacks."""
    name = "google" if deployment.provider == "gemini" else deployment.provider
    return PROVIDERS.get(name) if name != "azure_openai" else None


def check_models(models: list[ModelEntry], environ: Mapping[str, str], where: str | None = None) -> None:
    """Check ``models:`` (docs/PROTOCOL.md "Models and deployments") against the registry and
    the environment the hub starts with.

    Raises:
        ConfigError: naming the entry (``models[0].deployments[1].api_key_env``): a duplicate or
            empty name, no deployment, an unknown provider kind or one this hub lacks
            (``openai_responses`` before its module is registered), a base URL that is not
            http(s), a weight <= 0, rpm/tpm < 1, ``azure_openai`` without ``base_url`` or
            ``api_version`` (or ``api_version`` elsewhere), an ``api_key_env`` naming an unset
            variable for a kind that needs a key, a kind that needs a key at its public URL
            without ``api_key_env``, or a fallback that is neither a named model nor a
            ``provider/model`` name.
    """
    names = [entry.name for entry in models]
    seen: set[str] = set()
    for i, entry in enumerate(models):
        path = f"models[{i}]"
        if not entry.name:
            raise _fail(f"{path}.name", "must not be empty", where)
        if entry.name in seen:
            raise _fail(f"{path}.name", f"{_show(entry.name)} is named twice", where)
        seen.add(entry.name)
        if not entry.deployments:
            raise _fail(f"{path}.deployments", "must list at least one deployment", where)
        for j, deployment in enumerate(entry.deployments):
            _check_deployment(deployment, f"{path}.deployments[{j}]", environ, where)
        for j, name in enumerate(entry.fallbacks):
            at = f"{path}.fallbacks[{j}]"
            if name == entry.name:
                raise _fail(at, "a model cannot be its own fallback", where)
            if name in names:
                continue
            try:
                PROVIDERS.route(name)
            except ProviderError:
                raise _fail(at, f"{_show(name)} is neither a named model nor a provider/model name "
                                f"({PROVIDERS.prefix_hint()} followed by the provider's model name)", where) from None


def _check_deployment(deployment: Deployment, path: str, environ: Mapping[str, str], where: str | None) -> None:
    kind = deployment.provider
    if kind not in DEPLOYMENT_PROVIDERS:
        raise _fail(f"{path}.provider", f"must be one of {', '.join(DEPLOYMENT_PROVIDERS)}, got {_show(kind)}", where)
    spec = deployment_spec(deployment)
    if spec is None and kind != "azure_openai":
        raise _fail(f"{path}.provider", f"the provider kind {kind} is not available in this hub "
                                        f"(known: {', '.join(PROVIDERS)}, azure_openai)", where)
    if not deployment.model:
        raise _fail(f"{path}.model", "must not be empty", where)
    if deployment.base_url is not None:
        problem = _http_url(deployment.base_url)
        if problem:
            raise _fail(f"{path}.base_url", problem, where)
    if not (deployment.weight > 0 and math.isfinite(deployment.weight)):
        raise _fail(f"{path}.weight", f"must be > 0, got {_show(deployment.weight)}", where)
    for name in ("rpm", "tpm"):
        problem = _optional_positive(getattr(deployment, name))
        if problem:
            raise _fail(f"{path}.{name}", problem, where)
    if kind == "azure_openai":
        for name in ("base_url", "api_version"):
            if not getattr(deployment, name):
                raise _fail(f"{path}.{name}", "an azure_openai deployment needs it", where)
    elif deployment.api_version is not None:
        raise _fail(f"{path}.api_version", "is read by azure_openai deployments only", where)
    needs_key = kind == "azure_openai" or (spec is not None and spec.needs_key)
    variable = deployment.api_key_env
    if variable is not None:
        if not variable:
            raise _fail(f"{path}.api_key_env", "must name an environment variable", where)
        if needs_key and not environ.get(variable):
            raise _fail(f"{path}.api_key_env", f"the variable {variable} is not set (it must hold the key of this "
                                               "deployment)", where)
    elif spec is not None and not spec.configured(ProviderSettings(deployment.base_url or spec.default_base_url)):
        raise _fail(f"{path}.api_key_env", f"{kind} at its public API needs a key: name the variable that holds it",
                    where)
    elif kind == "azure_openai":
        raise _fail(f"{path}.api_key_env", "an azure_openai deployment needs a key: name the variable that holds it",
                    where)


# Documentation rendered from KEYS.


def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=True).strip()
    return text.removesuffix("...").strip()


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _doc_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"`{int(value)}`" if value.is_integer() else f"`{value!r}`"
    if isinstance(value, dict):
        return "none" if not value else f"`{json.dumps(value)}`"
    return f"`{value}`"


def example_yaml() -> str:
    """docs/hub.example.yaml: every key with its default and a comment."""
    defaults = HubConfig()
    lines = [
        "# circuit-breaker-hub configuration: every key, with its default.",
        "#",
        "#   cbhub serve --config hub.yaml [--preset high_performance|high_efficiency|debug]",
        "#   cbhub config --config hub.yaml      # check it and print the effective configuration",
        "#",
        "# Precedence, key by key: defaults < --preset < this file < environment variables",
        "# < --host/--port/--log-level/--loop/--workers. A file only needs the keys it changes.",
        "# The comment after a value names its environment variable. Units are in the key names.",
        "#",
        "# Generated from the table in hub/config.py: python -m hub.config example",
    ]
    printed: list[str] = []
    for key in KEYS:
        *sections, leaf = key.path.split(".")
        common = 0
        while common < min(len(sections), len(printed)) and sections[common] == printed[common]:
            common += 1
        for depth in range(common, len(sections)):
            if depth == 0:
                lines.append("")
                lines.extend(f"# {line}" for line in _SECTION_HELP[sections[0]].splitlines())
            lines.append("  " * depth + sections[depth] + ":")
        printed = sections
        indent = "  " * len(sections)
        value = key.example if key.example is not None else getattr(defaults, key.field)
        note = key.help.replace("`", "")
        if key.doc_default:
            note += f"; default {key.doc_default.replace('`', '')}"
        elif key.field.endswith("_bytes"):
            note += f" ({_size(value)})"
        if not sections:
            lines.append("")
            lines.append(f"# {_SECTION_HELP[leaf]}")
        lines.append(f"{indent}# {note}")
        env = f"  # {' or '.join(key.env)}" if key.env else ""
        lines.append(f"{indent}{leaf}: {_yaml_scalar(value)}{env}")
        lines.extend(f"{indent}# {note_line}" for note_line in key.notes)
    return "\n".join(lines) + "\n"


def env_table_markdown() -> str:
    """The table of environment variables in README.md."""
    defaults = HubConfig()
    rows = ["| variable | key in the file | default | meaning |", "|---|---|---|---|"]
    for key in KEYS:
        if not key.env:
            continue
        names = f"`{key.env[0]}`" + "".join(f" (or `{name}`)" for name in key.env[1:])
        value = getattr(defaults, key.field)
        default = key.doc_default or _doc_value(value)
        if key.field.endswith("_bytes"):
            default += f" ({_size(value)})"
        meaning = f"{key.help}. {key.more}" if key.more else key.help
        rows.append(f"| {names} | `{key.path}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    what = sys.argv[1:] or ["example"]
    if what == ["example"]:
        sys.stdout.write(example_yaml())
    elif what == ["env-table"]:
        sys.stdout.write(env_table_markdown())
    else:
        sys.exit("usage: python -m hub.config example|env-table")
