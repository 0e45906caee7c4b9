"""Azure OpenAI: OpenAI's Chat Completions format at a per-deployment URL, with an ``api-key``
header instead of ``Authorization: Bearer`` (docs/PROVIDERS.md §1, "Azure OpenAI").

Request: ``POST {base_url}/openai/deployments/{deployment}/chat/completions?api-version={version}``
where ``base_url`` is the resource's endpoint (``https://NAME.openai.azure.com``) and
``deployment`` the name the operator gave the model deployment in Azure (the ``model`` of a
hub deployment, docs/PROTOCOL.md "Models and deployments"). The body and the streamed answer
are OpenAI's (:func:`protocol.providers.openai.build_request`,
:class:`~protocol.normalizers.openai.OpenAIChatNormalizer`), so everything the OpenAI builder
carries is carried here too.

This kind is reached only through a deployment of a named model (``models:`` in the config):
an Azure resource has no public default URL and needs an ``api-version``, which the
``provider/model`` names cannot give, so it is not in the registry's prefix routing.

Pure like all of protocol/: no asyncio, no sockets, no clock, no environment.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

import msgspec

from protocol.messages import Completion
from protocol.providers import openai
from protocol.providers.base import ProviderSettings, UpstreamRequest

__all__ = ["NAME", "deployment_url", "build_request"]

#: The provider kind's name in a deployment (``provider: azure_openai``) and in attempts.
NAME = "azure_openai"


def deployment_url(base_url: str, deployment: str, api_version: str) -> str:
    """``{base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}``,
    the deployment name percent-encoded as one path segment and the version as a query value.

    Raises:
        ValueError: an empty ``deployment`` or ``api_version``.
    """
    if not deployment or not api_version:
        raise ValueError("an Azure OpenAI deployment needs a deployment name and an api_version")
    segment = quote(deployment, safe="")
    query = urlencode({"api-version": api_version})
    return f"{base_url.rstrip('/')}/openai/deployments/{segment}/chat/completions?{query}"


def build_request(request: Completion, deployment: str, base_url: str, api_key: str | None,
                  api_version: str) -> UpstreamRequest:
    """The streaming request of ``request`` to the Azure deployment ``deployment``.

    Args:
        request: the client's completion (OpenAI-shaped messages and tools).
        deployment: the Azure deployment name (the hub deployment's ``model``).
        base_url: the resource endpoint, ``https://NAME.openai.azure.com``.
        api_key: the resource key, sent as ``api-key``; None sends no key.
        api_version: the ``api-version`` query value (``2024-10-21``).

    Returns:
        The request, ``provider`` ``azure_openai``, OpenAI's body, framing and normalizer.

    Raises:
        ValueError: an empty deployment name or api_version; what the OpenAI builder raises on
            messages it cannot translate.
    """
    url = deployment_url(base_url, deployment, api_version)
    built = openai.build_request(request, deployment, ProviderSettings(base_url=base_url, api_key=None))
    headers = dict(built.headers)
    if api_key:
        headers["api-key"] = api_key
    return msgspec.structs.replace(built, provider=NAME, url=url, headers=headers)
