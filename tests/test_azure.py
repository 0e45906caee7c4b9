"""Azure OpenAI deployments (issue 14 item 1): the deployment URL with ``api-version``, the
``api-key`` header instead of ``Authorization: Bearer``, OpenAI's body and stream.

Azure's path (``/openai/deployments/{name}/chat/completions``) is not one the mock provider
serves, so a small Azure-shaped front records what the hub sends and passes the body on to
the mock's ``/v1/chat/completions``, streaming its answer back unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from hub.app import run_hub
from hub.config import Deployment, HubConfig, ModelEntry
from protocol.messages import Completion
from protocol.providers import azure_openai
from tests.conftest import hub_config
from tools.mock_provider import MockProvider, expected_text


class AzureFront:
    """An Azure-shaped server on a free port: records each request (path, query, headers,
    body) and forwards the body to ``mock``'s OpenAI endpoint."""

    def __init__(self, mock: MockProvider) -> None:
        self.mock = mock
        self.seen: list[dict[str, Any]] = []
        self.url = ""
        app = web.Application()
        app.router.add_post("/openai/deployments/{name}/chat/completions", self._chat)
        self._runner = web.AppRunner(app)

    async def __aenter__(self) -> AzureFront:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append({"path": request.path, "query": dict(request.query),
                          "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body})
        async with aiohttp.ClientSession() as session:
            async with session.post(self.mock.url + "/v1/chat/completions", data=body,
                                    headers={"Content-Type": "application/json"}) as upstream:
                response = web.StreamResponse(status=upstream.status,
                                              headers={"Content-Type": upstream.headers["Content-Type"]})
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response


@pytest.fixture
async def front(mock: MockProvider) -> AsyncIterator[AzureFront]:
    async with AzureFront(mock) as server:
        yield server


def test_deployment_url_and_header() -> None:
    request = Completion(model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    built = azure_openai.build_request(request, "my gpt/4o", "https://res.openai.azure.com/", "az-key", "2024-10-21")
    assert built.url == ("https://res.openai.azure.com/openai/deployments/my%20gpt%2F4o/chat/completions"
                         "?api-version=2024-10-21")
    assert built.headers["api-key"] == "az-key" and "Authorization" not in built.headers
    assert built.provider == "azure_openai"
    assert built.body["stream"] is True and built.body["max_tokens"] == 5
    with pytest.raises(ValueError, match="api_version"):
        azure_openai.deployment_url("https://res.openai.azure.com", "d", "")


async def test_an_azure_deployment_gets_its_url_version_and_api_key(
        mock: MockProvider, front: AzureFront, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBHUB_TEST_AZURE_KEY", "az-secret-123")
    models = [ModelEntry("azure-chat", [Deployment(provider="azure_openai", model="prod-gpt4o", base_url=front.url,
                                                   api_version="2024-10-21", api_key_env="CBHUB_TEST_AZURE_KEY",
                                                   headers={"x-ms-client-request-id": "abc"})])]
    config: HubConfig = hub_config(mock, models=models, retry_max_attempts=1)
    async with run_hub(config) as hub:
        assert "az-secret-123" in hub.config.secrets()  # redacted wherever the hub writes text
        client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="not-needed", max_retries=0)
        stream = await client.chat.completions.create(
            model="azure-chat", messages=[{"role": "user", "content": "hi [[mock tokens=6 seed=4]]"}], stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        await client.close()
    assert text == expected_text(6, seed=4)
    [seen] = front.seen
    assert seen["path"] == "/openai/deployments/prod-gpt4o/chat/completions"
    assert seen["query"] == {"api-version": "2024-10-21"}
    assert seen["headers"]["api-key"] == "az-secret-123"
    assert "authorization" not in seen["headers"]
    assert seen["headers"]["x-ms-client-request-id"] == "abc"
