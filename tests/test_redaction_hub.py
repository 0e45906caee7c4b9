"""Redaction through the hub over real sockets (docs/PROTOCOL.md "Redaction"): the mock provider
replays tests/data/redaction_split.sse, whose email, IBAN, phone number (in reasoning) and tool
call arguments are split across provider chunks; the client never sees a raw value, nor does
a resume's snapshot; prompts reach the provider unaltered unless redaction.requests is on."""

from __future__ import annotations

from typing import Any

import aiohttp

from hub.app import run_hub
from hub.config import RedactionRule
from protocol.messages import Completed, ContentChunk, Snapshot, Subscribed, ThinkingStatus, ToolCallMessage
from tests.conftest import hub_config

OPENAI = "openai/gpt-4o-mini"
RAW = ("john.doe", "jane.roe", "4111 1111", "DE89", "7946", "TCK-")
BUILTINS = ["email", "phone", "credit_card", "iban", "api_key"]


async def run_one(client: Any, cid: str, prompt: str) -> list[Any]:
    await client.send({"type": "completion", "id": cid, "model": OPENAI, "coalesce": False,
                       "messages": [{"role": "user", "content": prompt}]})
    ack = await client.recv()
    assert isinstance(ack, Subscribed)
    return await client.until_terminal(cid)


async def test_a_value_split_across_chunks_never_reaches_the_client_nor_the_snapshot(mock, ws_factory):
    async with run_hub(hub_config(mock, redaction_builtins=BUILTINS)) as hub:
        client = await ws_factory(hub)
        messages = await run_one(client, "r1", "[[mock replay=redaction_split.sse]]")
        assert isinstance(messages[-1], Completed)
        content = "".join(m.content for m in messages if isinstance(m, ContentChunk))
        assert content == "Sure, write to [REDACTED:email] or pay to [REDACTED:iban]. Bye!"
        reasoning = "".join(m.content or "" for m in messages if isinstance(m, ThinkingStatus))
        assert reasoning == "Let me think: call [REDACTED:phone] first."
        [call] = [m for m in messages if isinstance(m, ToolCallMessage)]
        assert call.arguments == {"to": "[REDACTED:email]", "note": "card [REDACTED:credit_card]"}
        kinds = [type(m).__name__ for m in messages]
        assert kinds.index("ToolCallMessage") > max(i for i, k in enumerate(kinds) if k == "ContentChunk")
        late = await ws_factory(hub)
        await late.send({"type": "subscribe", "channels": ["completion:r1"],
                         "since": {"completion:r1": {"seq": 1, "epoch": "not-this-one"}}})
        assert isinstance(await late.recv(), Subscribed)
        snapshot = await late.recv()
        assert isinstance(snapshot, Snapshot)
        assert snapshot.content == content and snapshot.reasoning == reasoning
        assert snapshot.tool_calls[0].arguments == call.arguments
        for frame in client.frames + late.frames:
            assert not any(raw in frame for raw in RAW), frame


async def test_without_rules_the_text_is_untouched(hub, ws_connect):
    client = await ws_connect()
    messages = await run_one(client, "r2", "[[mock replay=redaction_split.sse]]")
    content = "".join(m.content for m in messages if isinstance(m, ContentChunk))
    assert content == "Sure, write to john.doe@example.com or pay to DE89 3704 0044 0532 0130 00. Bye!"


async def prompts_seen(mock: Any, requests_on: bool, ws_factory: Any) -> str:
    config = hub_config(mock, redaction_rules=[RedactionRule("ticket", "TCK-[0-9]{6}")],
                        redaction_requests=requests_on)
    async with run_hub(config) as hub, aiohttp.ClientSession() as session:
        async with session.post(mock.url + "/_mock/reset"):
            pass
        client = await ws_factory(hub)
        await run_one(client, "r3", "about TCK-123456 [[mock tokens=2]]")
        async with session.get(mock.url + "/_mock/requests") as response:
            requests = await response.json()
    return str(requests[-1]["body"]["messages"])


async def test_prompts_are_masked_upstream_only_with_redaction_requests(mock, ws_factory):
    assert "TCK-123456" in await prompts_seen(mock, False, ws_factory)
    seen = await prompts_seen(mock, True, ws_factory)
    assert "TCK-123456" not in seen and "[REDACTED:ticket]" in seen


async def test_the_openai_compatible_api_gets_masked_text_too(mock):
    import json

    async with run_hub(hub_config(mock, redaction_builtins=BUILTINS)) as hub, aiohttp.ClientSession() as session:
        body = {"model": OPENAI, "messages": [{"role": "user", "content": "[[mock replay=redaction_split.sse]]"}]}
        async with session.post(hub.url + "/v1/chat/completions", json=body) as response:
            whole = await response.text()
        async with session.post(hub.url + "/v1/chat/completions", json={**body, "stream": True}) as response:
            streamed = await response.text()
    for text in (whole, streamed):
        assert not any(raw in text for raw in RAW), text
    message = json.loads(whole)["choices"][0]["message"]
    assert message["content"] == "Sure, write to [REDACTED:email] or pay to [REDACTED:iban]. Bye!"
    assert "[REDACTED:email]" in streamed
