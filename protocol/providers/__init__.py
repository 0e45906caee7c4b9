"""LLM providers as units: one module per provider kind, a registry that lists them.

Each module (:mod:`~protocol.providers.openai`, :mod:`~protocol.providers.anthropic`,
:mod:`~protocol.providers.gemini`, :mod:`~protocol.providers.ollama`) holds its
:class:`ProviderSpec` (name, model prefixes, framing, default and example models, key and
base-URL settings), its pure request builder, and its normalizer (imported from
protocol/normalizers/). :data:`PROVIDERS` is the registry that config (hub/config.py),
routing (hub/providers.py ``build_request``), ``GET /v1/models`` (:func:`model_catalogue`),
the demo and the mock provider read.

Adding a provider: write ``protocol/providers/<name>.py`` with a ``SPEC`` and its builder (and
its normalizer when the wire format is new), add it to :data:`PROVIDERS` below, and test it.
The wire rules of each provider are in docs/PROVIDERS.md.

Pure like all of protocol/: no asyncio, no sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol.messages import Completion
from protocol.providers import anthropic, gemini, ollama, openai, openai_responses
from protocol.providers.base import Framing, ProviderSettings, ProviderSpec, RequestBuilder, UpstreamRequest
from protocol.providers.registry import ProviderRegistry

__all__ = [
    "PROVIDERS",
    "Framing",
    "ProviderRegistry",
    "ProviderSettings",
    "ProviderSpec",
    "RequestBuilder",
    "UpstreamRequest",
    "build_request",
    "get",
    "model_catalogue",
    "resolve_model",
]

#: The providers the hub serves, in the order listings show them.
PROVIDERS = ProviderRegistry([openai.SPEC, anthropic.SPEC, gemini.SPEC, ollama.SPEC, openai_responses.SPEC])


def get(name: str) -> ProviderSpec:
    """The provider called ``name`` in :data:`PROVIDERS`.

    Raises:
        KeyError: no such provider.
    """
    return PROVIDERS.spec(name)


def resolve_model(model: str) -> tuple[str, str]:
    """``(provider name, upstream model)`` for a client model name, from :data:`PROVIDERS`.

    Raises:
        ProviderError: ``model_not_found``.
    """
    return PROVIDERS.resolve_model(model)


def build_request(request: Completion, settings_of: Callable[[ProviderSpec], ProviderSettings]) -> UpstreamRequest:
    """:meth:`ProviderRegistry.build_request` on :data:`PROVIDERS`.

    Raises:
        ProviderError: ``model_not_found``, ``provider_not_configured`` or ``invalid_message``.
    """
    return PROVIDERS.build_request(request, settings_of)


def model_catalogue(
    configured: Callable[[str], bool], registry: ProviderRegistry | None = None
) -> list[dict[str, Any]]:
    """The ``data`` list of ``GET /v1/models`` (:meth:`ProviderRegistry.model_catalogue`).

    Args:
        configured: whether a provider (by name) can be called, e.g.
            ``hub.config.provider_configured``.
        registry: the providers to list; :data:`PROVIDERS` by default.
    """
    return (PROVIDERS if registry is None else registry).model_catalogue(configured)
