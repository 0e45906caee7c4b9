"""Real tokens from a real local model through the hub (llama.cpp's llama-server serving
SmolLM2-135M-Instruct, set up by ``tools/real_llm.sh start``).

llama-server speaks both OpenAI's ``/v1/chat/completions`` and Anthropic's ``/v1/messages``,
so one local server checks both wire formats against a real producer, not our own mock.

These tests are marked ``real_llm``. They skip when no server answers at
``CBHUB_REAL_LLM_URL`` (default ``http://127.0.0.1:18081``), unless
``CBHUB_REQUIRE_REAL_LLM=1`` is set, as .ci/run sets it: then a missing server fails.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from hub.app import Hub, run_hub
from hub.config import HubConfig
from protocol.messages import Completed, ContentChunk
from tests.conftest import WSClient

pytestmark = pytest.mark.real_llm

REAL_LLM_URL = os.environ.get("CBHUB_REAL_LLM_URL", "http://127.0.0.1:18081").rstrip("/")
MODEL = os.environ.get("CBHUB_REAL_LLM_MODEL", "smollm2")


async def _server_ready() -> bool:
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(REAL_LLM_URL + "/health", timeout=aiohttp.ClientTimeout(total=3)) as response:
                return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


@pytest.fixture
async def real_hub() -> AsyncIterator[Hub]:
    if not await _server_ready():
        message = f"no llama-server answers at {REAL_LLM_URL}; run `tools/real_llm.sh start`"
        if os.environ.get("CBHUB_REQUIRE_REAL_LLM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    config = HubConfig(port=0, openai_base_url=REAL_LLM_URL + "/v1", anthropic_base_url=REAL_LLM_URL)
    async with run_hub(config) as hub:
        yield hub


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_real_model_streams_over_websocket(real_hub: Hub, ws_factory, provider: str) -> None:
    client: WSClient = await ws_factory(real_hub)
    await client.send({
        "type": "completion", "id": f"real-{provider}", "model": f"{provider}/{MODEL}", "max_tokens": 32,
        "coalesce": False, "messages": [{"role": "user", "content": "Name three colours."}],
    })
    messages = await client.until_terminal(f"real-{provider}")
    completed = messages[-1]
    assert isinstance(completed, Completed), completed
    chunks = [m for m in messages if isinstance(m, ContentChunk)]
    text = "".join(m.content for m in chunks)
    assert text.strip(), "the model produced no text"
    assert len(chunks) > 1, "tokens should arrive one by one, not in one piece"
    assert completed.finish_reason in ("stop", "length")
    assert completed.provider == provider
    assert completed.usage is not None
    assert 0 < completed.usage.completion_tokens <= 32
    assert completed.usage.total_tokens >= completed.usage.completion_tokens
    assert completed.ttft_ms is not None and completed.ttft_ms > 0
    assert [m.seq for m in messages] == list(range(1, len(messages) + 1))


async def test_real_model_streams_to_the_openai_sdk(real_hub: Hub) -> None:
    client = openai.AsyncOpenAI(base_url=real_hub.url + "/v1", api_key="not-needed", max_retries=0)
    stream = await client.chat.completions.create(
        model=f"anthropic/{MODEL}",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=32,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    await client.close()
    assert text.strip()
    assert finish in ("stop", "length")
    assert usage is not None and 0 < usage.completion_tokens <= 32
