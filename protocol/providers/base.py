"""What a provider is, as data: :class:`ProviderSpec`, the settings its request builder reads
(:class:`ProviderSettings`), the request it builds (:class:`UpstreamRequest`), and the small
translation helpers the builders share.

Everything here is pure: no asyncio, no sockets, no clock, no environment. A builder is a
function ``(Completion, upstream_model, ProviderSettings) -> UpstreamRequest``; the hub's HTTP
layer (hub/providers.py) sends the request and feeds the body to ``make_normalizer()``.
The wire rules each builder follows are in docs/PROVIDERS.md, one section per provider.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from protocol.messages import Completion
from protocol.normalizers.base import Normalizer

__all__ = [
    "Framing",
    "ProviderSettings",
    "ProviderSpec",
    "RequestBuilder",
    "UpstreamRequest",
    "THINKING_BUDGET",
    "effort_of",
    "text_of",
    "tool_call_parts",
]

#: How a streamed answer is framed: server-sent events or one JSON document per line.
Framing = Literal["sse", "ndjson"]


class UpstreamRequest(msgspec.Struct, kw_only=True):
    """One HTTP request to a provider: where, with which headers, which JSON body, and how
    its response body is parsed.

    Attributes:
        provider: the provider's registry name (``openai``, ``google``...), used in messages,
            the circuit breaker's key and the dead-letter log.
        model: the upstream model name (without the ``provider/`` prefix).
        url: the full URL of the POST, query included.
        headers: request headers, auth included (never logged unredacted).
        body: the JSON body, plain JSON values only.
        make_normalizer: builds a fresh normalizer for the response body.
        framing: ``sse`` or ``ndjson``: which content types a streamed answer may have.
        request_id_headers: response headers that carry the provider's id of the request
            (:attr:`ProviderSpec.request_id_headers`), the first present wins.
    """

    provider: str
    model: str
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    make_normalizer: Callable[[], Normalizer]
    framing: Framing = "sse"
    request_id_headers: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        """``scheme://host:port`` of :attr:`url`: the circuit breaker's key with the provider."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def stream_framing(self) -> str:
        """:attr:`framing` (kept for callers that read the older name)."""
        return self.framing


@dataclass(frozen=True)
class ProviderSettings:
    """The operator's settings a request builder reads for one provider.

    Attributes:
        base_url: where the provider's API is (no trailing-slash requirement: builders strip it).
        api_key: the key, or None when none is set (a local or compatible server may need none).
    """

    base_url: str
    api_key: str | None = None


#: ``(client request, upstream model, settings) -> request``. May raise KeyError, TypeError,
#: ValueError or AttributeError on client input it cannot translate; the registry turns those
#: into ``invalid_message``.
RequestBuilder = Callable[[Completion, str, ProviderSettings], UpstreamRequest]


@dataclass(frozen=True)
class ProviderSpec:
    """One provider kind: everything the hub needs to know about it, in one value.

    Attributes:
        name: registry name and the ``name/`` model prefix (``openai``, ``google``).
        title: human name for docs and messages (``Google Gemini``).
        prefixes: model prefixes that route here and are stripped (``("google/", "gemini/")``);
            the first is the one shown in messages and listings.
        bare_prefixes: prefixes of model names that route here without a ``provider/`` prefix
            and are kept (``("claude-",)``).
        framing: ``sse`` or ``ndjson``.
        default_base_url: the public API's base URL.
        build: the pure request builder.
        make_normalizer: the response body parser.
        needs_key: whether the public API needs a key (a different base URL never does).
        config_section: the section under ``providers:`` in the config file (``google``).
        api_key_field: the HubConfig field of the key; None when the provider has no key.
        api_key_env: environment variables of the key, the first one set wins.
        api_key_help: one line for the docs: how the key is sent.
        base_url_key: the key name in the config section (``base_url`` or ``host``).
        base_url_field: the HubConfig field of the base URL.
        base_url_env: the environment variable of the base URL.
        base_url_help: one line for the docs.
        normalize_base_url: rewrites a configured value without a scheme into a URL (Ollama's
            ``host:port`` habit); raises ValueError on a value it cannot read. None: taken as given.
        example_models: model names listed by ``GET /v1/models`` (without the prefix).
        demo_model: the model ``cbhub demo`` streams from (without the prefix).
        server_path: where this provider's base URL points under the root of a server that
            serves every format (the mock provider): ``/v1`` for OpenAI, ``""`` for the rest.
        docs: the section of docs/PROVIDERS.md that holds its wire rules (``§1``).
        request_id_headers: response headers in which the provider names its id of the
            request (``request-id``), the first present wins; the hub writes it to the
            dead-letter log. Builders copy it into :attr:`UpstreamRequest.request_id_headers`.
    """

    name: str
    title: str
    prefixes: tuple[str, ...]
    bare_prefixes: tuple[str, ...]
    framing: Framing
    default_base_url: str
    build: RequestBuilder
    make_normalizer: Callable[[], Normalizer]
    needs_key: bool
    config_section: str
    api_key_field: str | None
    api_key_env: tuple[str, ...]
    api_key_help: str
    base_url_key: str
    base_url_field: str
    base_url_env: str
    base_url_help: str
    normalize_base_url: Callable[[str], str] | None = None
    example_models: tuple[str, ...] = ()
    demo_model: str = ""
    server_path: str = ""
    docs: str = ""
    request_id_headers: tuple[str, ...] = ()

    @property
    def prefix(self) -> str:
        """The prefix shown to users (``openai/``)."""
        return self.prefixes[0]

    def request(self, model: str, url: str, headers: dict[str, str], body: dict[str, Any]) -> UpstreamRequest:
        """The :class:`UpstreamRequest` a builder made (``url``, ``headers``, ``body`` for the
        upstream ``model``), with what this provider always sets: its name, framing,
        normalizer and request-id headers."""
        return UpstreamRequest(provider=self.name, model=model, url=url, headers=headers, body=body,
                               make_normalizer=self.make_normalizer, framing=self.framing,
                               request_id_headers=self.request_id_headers)

    def configured(self, settings: ProviderSettings) -> bool:
        """Whether the provider can be called with ``settings``: it needs no key, has one,
        or its base URL is not the public API's (a compatible or local server may need none)."""
        if not self.needs_key or settings.api_key:
            return True
        return settings.base_url.rstrip("/") != self.default_base_url.rstrip("/")

    def not_configured_hint(self) -> str:
        """What to set, for the ``provider_not_configured`` message."""
        variable = self.api_key_env[0] if self.api_key_env else self.base_url_env
        return f"set {variable} (or a base URL for a compatible server)"

    def base_url_on(self, server_root: str) -> str:
        """This provider's base URL on a server that serves every format at ``server_root``
        (``http://127.0.0.1:9100`` → ``http://127.0.0.1:9100/v1`` for OpenAI)."""
        return server_root.rstrip("/") + self.server_path


# Helpers shared by the builders.

#: Thinking budget in tokens for a reasoning effort, where a provider wants a number.
THINKING_BUDGET = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}


def text_of(content: Any) -> str:
    """Plain text of an OpenAI message ``content`` (None, a string, or a list of parts whose
    ``text`` entries are joined; other parts are skipped)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def tool_call_parts(call: dict[str, Any]) -> tuple[str, str, Any]:
    """``(id, name, arguments)`` of an OpenAI-format tool call, arguments as a JSON value
    (OpenAI sends them as a JSON string; a client may also give the object itself).

    Raises:
        ValueError: arguments that are a string but not JSON (reported as ``invalid_message``).
    """
    function = call.get("function", {})
    arguments = function.get("arguments") or "{}"
    parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    return call.get("id", ""), function.get("name", ""), parsed


def effort_of(request: Completion) -> str | None:
    """The reasoning effort a client asked for (``reasoning: "high"`` or
    ``reasoning: {"effort": "high"}``), or None."""
    reasoning = request.reasoning
    if isinstance(reasoning, str):
        return reasoning
    if isinstance(reasoning, dict):
        effort = reasoning.get("effort")
        return str(effort) if effort else None
    return None
