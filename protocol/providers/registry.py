"""The registry: the one place that lists providers and answers every question asked of the
list (which provider serves a model name, which models ``GET /v1/models`` shows, how a
request is built for the configured settings).

Pure: the caller supplies the settings (:class:`~protocol.providers.base.ProviderSettings`)
and the "is it configured" answer as functions, so no environment or config object is read
here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from protocol.errors import ProviderError
from protocol.messages import Completion
from protocol.providers.base import ProviderSettings, ProviderSpec, UpstreamRequest

__all__ = ["ProviderRegistry"]

#: Exceptions a builder raises on client input it cannot translate (free-form dicts).
_TRANSLATION_ERRORS = (KeyError, TypeError, ValueError, AttributeError)


class ProviderRegistry(Mapping[str, ProviderSpec]):
    """An ordered, read-only mapping of provider name to :class:`ProviderSpec`.

    Routing (:meth:`route`): a ``provider/`` prefix of any provider first (stripped; an empty
    rest is not a model), then the bare prefixes (kept: ``claude-3-5-haiku`` goes to
    Anthropic as is), in registry order. Anything else is ``model_not_found``.

    Args:
        specs: the providers, in the order listings show them.

    Raises:
        ValueError: two specs with one name, or one prefix claimed twice.
    """

    def __init__(self, specs: Iterable[ProviderSpec]) -> None:
        self._specs: dict[str, ProviderSpec] = {}
        prefixes: dict[str, str] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"provider {spec.name!r} is registered twice")
            for prefix in (*spec.prefixes, *spec.bare_prefixes):
                if prefix in prefixes:
                    raise ValueError(f"prefix {prefix!r} of {spec.name!r} is already {prefixes[prefix]!r}'s")
                prefixes[prefix] = spec.name
            self._specs[spec.name] = spec

    # Mapping.

    def __getitem__(self, name: str) -> ProviderSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"ProviderRegistry({list(self._specs)!r})"

    # Building other registries.

    def extended(self, *specs: ProviderSpec) -> ProviderRegistry:
        """A new registry with these providers added after the existing ones (tests, plugins).

        Raises:
            ValueError: a name or prefix that is already taken.
        """
        return ProviderRegistry([*self._specs.values(), *specs])

    # Routing.

    def spec(self, name: str) -> ProviderSpec:
        """The provider called ``name``.

        Raises:
            KeyError: no such provider; the message lists the known ones.
        """
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"no provider {name!r}; known: {', '.join(self._specs)}") from None

    def prefix_hint(self) -> str:
        """``openai/, anthropic/, google/ or ollama/``: the prefixes, for messages."""
        shown = [spec.prefix for spec in self._specs.values()]
        return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]

    def route(self, model: str) -> tuple[ProviderSpec, str]:
        """``(spec, upstream model)`` for a client model name.

        Raises:
            ProviderError: code ``model_not_found`` (HTTP status 404, not retryable) when no
                provider serves the name.
        """
        for spec in self._specs.values():
            for prefix in spec.prefixes:
                if model.startswith(prefix) and len(model) > len(prefix):
                    return spec, model[len(prefix):]
        for spec in self._specs.values():
            if spec.bare_prefixes and model.startswith(spec.bare_prefixes):
                return spec, model
        raise ProviderError(
            f"no provider serves model {model!r}; use {self.prefix_hint()} followed by the provider's model name",
            "model_not_found",
            status=404,
        )

    def resolve_model(self, model: str) -> tuple[str, str]:
        """``(provider name, upstream model)`` for a client model name (:meth:`route`).

        Raises:
            ProviderError: ``model_not_found``.
        """
        spec, upstream = self.route(model)
        return spec.name, upstream

    def provider_of(self, model: str) -> str:
        """The name of the provider that serves ``model``, or ``""`` when none does."""
        try:
            return self.route(model)[0].name
        except ProviderError:
            return ""

    # Requests.

    def build_request(
        self, request: Completion, settings_of: Callable[[ProviderSpec], ProviderSettings]
    ) -> UpstreamRequest:
        """The upstream request for a client ``completion``.

        Args:
            request: the client's message; ``request.model`` picks the provider.
            settings_of: the operator's settings of a provider (base URL, key).

        Raises:
            ProviderError: ``model_not_found`` (no provider for the name),
                ``provider_not_configured`` (the provider's public API needs a key and none
                is set; a custom base URL, such as a local server, may be used without one),
                or ``invalid_message`` (messages or tools that cannot be translated for the
                provider, e.g. tool call arguments that are not JSON, a tool without a name).
        """
        spec, model = self.route(request.model)
        settings = settings_of(spec)
        if not spec.configured(settings):
            raise ProviderError(f"{spec.name} is not configured: {spec.not_configured_hint()}",
                                "provider_not_configured")
        try:
            return spec.build(request, model, settings)
        except _TRANSLATION_ERRORS as exc:
            raise ProviderError(
                f"the messages or tools cannot be translated for {spec.name}: {type(exc).__name__}: {exc}",
                "invalid_message",
            ) from None

    # Listings.

    def model_catalogue(self, configured: Callable[[str], bool]) -> list[dict[str, Any]]:
        """The ``data`` of OpenAI's ``GET /v1/models`` answer: each configured provider's
        example models as ``{"id": "<name>/<model>", "object": "model", "created": 0,
        "owned_by": "<name>"}``, in registry order.

        Args:
            configured: whether a provider (by name) can be called.
        """
        return [
            {"id": f"{spec.name}/{model}", "object": "model", "created": 0, "owned_by": spec.name}
            for spec in self._specs.values()
            if configured(spec.name)
            for model in spec.example_models
        ]

    def demo_models(self) -> dict[str, str]:
        """``{provider: "<name>/<demo model>"}`` for every provider that has a demo model."""
        return {spec.name: f"{spec.name}/{spec.demo_model}" for spec in self._specs.values() if spec.demo_model}

    def base_urls_on(self, server_root: str) -> dict[str, str]:
        """``{provider: base URL}`` pointing every provider at one server that serves all the
        formats at ``server_root`` (the mock provider)."""
        return {spec.name: spec.base_url_on(server_root) for spec in self._specs.values()}
