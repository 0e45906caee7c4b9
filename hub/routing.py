"""Named models and their deployments: which upstream requests a completion tries, in order
(docs/PROTOCOL.md "Models and deployments").

A client's model name is either a named model of ``models:`` (an alias) or today's
``provider/model`` name. :meth:`Router.targets` turns the request's model, its request
fallbacks and the configured ``fallbacks:`` chain into :class:`Target` values, each already
built for its provider:

- an alias becomes its deployments, ordered by ``routing.strategy`` (``simple_shuffle``: a
  weighted random order, each deployment first with probability weight / sum of weights, by
  Efraimidis and Spirakis' "Weighted random sampling with a reservoir", 2006: key u^(1/w),
  largest first; ``least_busy``: fewest requests in flight on this hub first, ties in random
  order), then the alias's ``fallbacks`` (aliases expanded the same way, once each);
- a deployment over its ``rpm`` (attempts started in the last 60 s) or ``tpm`` (tokens its
  finished requests reported in the last 60 s) is skipped: a target carrying a
  ``rate_limited`` error, which the completion records as an attempt and never counts against
  a circuit breaker;
- a ``provider/model`` name is built as before (:func:`hub.providers.build_request`).

Each target names its circuit breaker: a deployment's is its own (``provider`` and
``base URL#model``), so two ``openai`` deployments at different base URLs (OpenAI and
OpenRouter) or with different models never share one; a ``provider/model`` name keeps the
breaker of its provider's endpoint.

Keys come from the environment variable each deployment names (``api_key_env``), read once
when the router is made (hub start); hub/config.py checked them at load. Counts (in flight,
rpm, tpm) are this process's: with several workers or nodes each keeps its own.
"""

from __future__ import annotations

import collections
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgspec

from hub.config import Deployment, HubConfig, ModelEntry, deployment_spec
from hub.providers import build_request
from protocol.errors import ErrorCode, HubError, ProviderError
from protocol.messages import Completion
from protocol.providers import PROVIDERS, ProviderRegistry, ProviderSettings, UpstreamRequest, azure_openai

__all__ = ["DeploymentState", "Router", "Target", "WINDOW_S"]

#: The window of ``rpm`` and ``tpm``, in seconds.
WINDOW_S = 60.0


class DeploymentState:
    """One deployment of a named model and what this hub counts of it.

    Attributes:
        alias: the named model's name.
        deployment: its configuration.
        api_key: the key read from ``api_key_env`` (None: none).
        in_flight: attempts under way now.
        label: ``alias[index]``, for messages.
    """

    def __init__(self, alias: str, index: int, deployment: Deployment, api_key: str | None) -> None:
        self.alias = alias
        self.deployment = deployment
        self.api_key = api_key
        self.label = f"{alias}[{index}]"
        self.in_flight = 0
        self._starts: collections.deque[float] = collections.deque()  # attempt start times
        self._tokens: collections.deque[tuple[float, int]] = collections.deque()  # (end time, tokens)
        self._token_sum = 0

    def _trim(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self._starts and self._starts[0] <= horizon:
            self._starts.popleft()
        while self._tokens and self._tokens[0][0] <= horizon:
            self._token_sum -= self._tokens.popleft()[1]

    def over_limit(self, now: float) -> str | None:
        """Which limit (``rpm`` or ``tpm``) the deployment has reached at ``now`` (seconds of
        the router's clock), or None."""
        self._trim(now)
        limits = self.deployment
        if limits.rpm is not None and len(self._starts) >= limits.rpm:
            return "rpm"
        if limits.tpm is not None and self._token_sum >= limits.tpm:
            return "tpm"
        return None

    def started(self, now: float) -> None:
        """An attempt was sent to this deployment at ``now``."""
        self.in_flight += 1
        self._starts.append(now)

    def ended(self, now: float, tokens: int | None) -> None:
        """The attempt ended at ``now``, its usage being ``tokens`` (prompt + completion;
        None: none reported)."""
        self.in_flight = max(0, self.in_flight - 1)
        if tokens:
            self._tokens.append((now, tokens))
            self._token_sum += tokens

    @property
    def breaker_endpoint(self) -> str:
        """The second half of its breaker's key: ``base URL#model``."""
        return f"{self.base_url.rstrip('/')}#{self.deployment.model}"

    @property
    def base_url(self) -> str:
        """Its base URL, or its kind's public API when none is set."""
        if self.deployment.base_url:
            return self.deployment.base_url
        spec = deployment_spec(self.deployment)
        return spec.default_base_url if spec is not None else ""


@dataclass
class Target:
    """One candidate upstream request of a completion, in the order to try.

    Attributes:
        name: what the client (or a fallback chain) named: an alias or ``provider/model``.
        upstream: the built request, or the error that keeps it from being tried (not
            configured, untranslatable, over a deployment's limit).
        breaker: ``(provider, endpoint)``: the key of its circuit breaker.
        deployment: the deployment it goes to (None for a ``provider/model`` name).
    """

    name: str
    upstream: UpstreamRequest | HubError
    breaker: tuple[str, str] = ("", "")
    deployment: DeploymentState | None = field(default=None, compare=False)


class Router:
    """The named models of a config and the choice among their deployments.

    Args:
        config: ``models``, ``routing_strategy``, ``fallbacks`` and the provider settings.
        environ: where ``api_key_env`` variables are read (``os.environ`` by default).
        rng: the random source of ``simple_shuffle`` and of ``least_busy``'s ties.
        clock: seconds, for ``rpm``/``tpm`` windows (``time.monotonic`` by default).
        registry: the provider registry of ``provider/model`` names and deployment kinds.
    """

    def __init__(self, config: HubConfig, environ: Mapping[str, str] | None = None,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic,
                 registry: ProviderRegistry = PROVIDERS) -> None:
        env = os.environ if environ is None else environ
        self.config = config
        self.registry = registry
        self.rng = rng or random.Random()
        self.clock = clock
        self.aliases: dict[str, ModelEntry] = {entry.name: entry for entry in config.models}
        self.deployments: dict[str, list[DeploymentState]] = {
            entry.name: [DeploymentState(entry.name, i, d, env.get(d.api_key_env) if d.api_key_env else None)
                         for i, d in enumerate(entry.deployments)]
            for entry in config.models
        }

    def catalogue(self) -> list[dict[str, object]]:
        """The named models as OpenAI's model objects: ``{"id": name, "object": "model",
        "created": 0, "owned_by": "cbhub"}``, in config order."""
        return [{"id": name, "object": "model", "created": 0, "owned_by": "cbhub"} for name in self.aliases]

    def targets(self, request: Completion) -> list[Target]:
        """The upstream requests to try for ``request``, in order: the model (an alias's
        deployments, then its fallbacks), then the request's fallbacks, then the configured
        ``fallbacks:`` chain of the model; each name expanded once."""
        names = [request.model, *request.fallbacks, *self.config.fallbacks.get(request.model, [])]
        targets: list[Target] = []
        seen: set[str] = set()
        for name in names:
            self._expand(request, name, targets, seen)
        return targets

    def _expand(self, request: Completion, name: str, targets: list[Target], seen: set[str]) -> None:
        if name in seen:
            return
        seen.add(name)
        entry = self.aliases.get(name)
        if entry is None:
            targets.append(self._plain(request, name))
            return
        now = self.clock()
        for state in self.order(name):
            limit = state.over_limit(now)
            if limit is not None:
                skipped = ProviderError(f"{state.label} ({state.deployment.provider} {state.deployment.model}) is at "
                                        f"its {limit} limit; skipped", ErrorCode.RATE_LIMITED, retryable=True,
                                        status=429)
                targets.append(Target(name, skipped, deployment=state))
                continue
            targets.append(self._deployment_target(request, name, state))
        for fallback in entry.fallbacks:
            self._expand(request, fallback, targets, seen)

    def order(self, alias: str) -> list[DeploymentState]:
        """The deployments of ``alias`` in the order to try them now (``routing.strategy``)."""
        states = self.deployments[alias]
        rng = self.rng
        if self.config.routing_strategy == "least_busy":
            keyed = [(state.in_flight, rng.random(), i) for i, state in enumerate(states)]
        else:
            # u ** (1 / w), largest first: the first is deployment i with probability w_i / sum(w).
            keyed = [(-(rng.random() ** (1.0 / state.deployment.weight)), 0.0, i) for i, state in enumerate(states)]
        return [states[i] for _, _, i in sorted(keyed)]

    def _plain(self, request: Completion, name: str) -> Target:
        """Today's ``provider/model`` name (hub/providers.py ``build_request``)."""
        named = request if name == request.model else msgspec.structs.replace(request, model=name)
        try:
            upstream = build_request(named, self.config, self.registry)
        except HubError as exc:
            return Target(name, exc)
        return Target(name, upstream, (upstream.provider, upstream.endpoint))

    def _deployment_target(self, request: Completion, name: str, state: DeploymentState) -> Target:
        deployment = state.deployment
        try:
            upstream = self._build(request, state)
        except HubError as exc:
            return Target(name, exc, deployment=state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            error = ProviderError(f"the messages or tools cannot be translated for {deployment.provider}: "
                                  f"{type(exc).__name__}: {exc}", ErrorCode.INVALID_MESSAGE)
            return Target(name, error, deployment=state)
        if deployment.headers:
            upstream = msgspec.structs.replace(upstream, headers={**upstream.headers, **deployment.headers})
        return Target(name, upstream, (upstream.provider, state.breaker_endpoint), state)

    def _build(self, request: Completion, state: DeploymentState) -> UpstreamRequest:
        """The request of one deployment: Azure's own URL and header, else its kind's builder
        reached through the registry with the deployment's base URL and key.

        Raises:
            HubError: ``provider_not_configured`` (a kind this registry lacks, or a public API
                without a key).
            KeyError, TypeError, ValueError, AttributeError: messages or tools the builder
                cannot translate (the caller reports ``invalid_message``).
        """
        deployment = state.deployment
        if deployment.provider == azure_openai.NAME:
            return azure_openai.build_request(request, deployment.model, state.base_url, state.api_key,
                                              deployment.api_version or "")
        spec = deployment_spec(deployment)
        if spec is None or spec.name not in self.registry:
            raise ProviderError(f"the provider kind {deployment.provider} is not available in this hub",
                                ErrorCode.PROVIDER_NOT_CONFIGURED)
        settings = ProviderSettings(base_url=state.base_url, api_key=state.api_key)
        if not spec.configured(settings):
            raise ProviderError(f"{state.label} ({spec.name} at its public API) has no key: set the variable its "
                                "api_key_env names", ErrorCode.PROVIDER_NOT_CONFIGURED)
        return spec.build(request, deployment.model, settings)
