"""Choices (issue 14 item 2, ``n``; docs/PROTOCOL.md "Choices"): an OpenAI model asked for
``n: 2`` streams both choices back, through the real openai SDK (streamed: each chunk's
``index``; not streamed: one ``choices`` entry per choice) and on the WebSocket (``choice`` on
every output message, 0 left out of the frame; ``finishReasons`` on ``completed``; the
snapshot keeps each choice's text). Other providers refuse ``n`` above 1 naming the field
and the provider. The mock provider streams choice k's words interleaved with choice 0's
(hub/testing/mock_provider.py ``expected_choice_text``)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import openai
import pytest

from hub.config import RedactionRule
from protocol.messages import (
    ChatMessage,
    Completed,
    Completion,
    ContentChunk,
    Snapshot,
    Subscribed,
    ToolCallMessage,
)
from protocol.openai_compat import ChunkEncoder, completion_object
from protocol.providers import azure_openai
from tests.conftest import hub_config, run_test_hub
from tools.mock_provider import expected_choice_text, expected_text

OPENAI = "openai/gpt-4o-mini"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def sdk(hub: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="not-needed", max_retries=0)


async def test_streamed_n_2_gives_each_choice_its_index_and_its_own_text(hub: Any, mock: Any) -> None:
    client = sdk(hub)
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    indexes: list[int] = []
    try:
        stream = await client.chat.completions.create(
            model=OPENAI, n=2, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Hi [[mock tokens=12]]"}])
        async for chunk in stream:
            for choice in chunk.choices:
                indexes.append(choice.index)
                texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
                if choice.finish_reason is not None:
                    finish[choice.index] = choice.finish_reason
    finally:
        await client.close()
    assert mock.requests[-1]["body"]["n"] == 2
    assert set(indexes) == {0, 1}
    assert texts == {0: expected_text(12), 1: expected_choice_text(1, 12)}
    assert texts[0] != texts[1]
    assert finish == {0: "stop", 1: "stop"}


async def test_not_streamed_n_2_gives_two_choices_with_text_and_finish_reason(hub: Any, mock: Any) -> None:
    client = sdk(hub)
    try:
        answer = await client.chat.completions.create(
            model=OPENAI, n=2, messages=[{"role": "user", "content": "Hi [[mock tokens=7 tool=get_weather]]"}],
            tools=TOOLS)
    finally:
        await client.close()
    assert [choice.index for choice in answer.choices] == [0, 1]
    first, second = answer.choices
    assert first.message.content == expected_text(7) and first.finish_reason == "tool_calls"
    [call] = first.message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"Paris"}'
    assert second.message.content == expected_choice_text(1, 7) and second.finish_reason == "stop"
    assert second.message.tool_calls is None


async def test_n_of_three_streams_three_choices(hub: Any) -> None:
    client = sdk(hub)
    texts: dict[int, str] = {}
    try:
        stream = await client.chat.completions.create(
            model=OPENAI, n=3, stream=True, messages=[{"role": "user", "content": "[[mock tokens=5]]"}])
        async for chunk in stream:
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    finally:
        await client.close()
    assert texts == {k: expected_choice_text(k, 5) for k in range(3)}


async def _start(client: Any, cid: str, directive: str, **options: Any) -> Subscribed:
    await client.send({"type": "completion", "id": cid, "model": OPENAI, "n": 2,
                       "messages": [{"role": "user", "content": directive}], **options})
    ack = await client.recv()
    assert isinstance(ack, Subscribed)
    return ack


def _texts(messages: list[Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    for message in messages:
        if isinstance(message, ContentChunk):
            out[message.choice] = out.get(message.choice, "") + message.content
    return out


async def test_websocket_messages_carry_the_choice_and_completed_every_finish_reason(hub: Any,
                                                                                      ws_connect: Any) -> None:
    client = await ws_connect()
    await _start(client, "c1", "[[mock tokens=9 tool=get_weather]]", coalesce=False)
    messages = await client.until_terminal("c1")
    frames = [msgspec.json.decode(frame) for frame in client.frames[1:]]
    chunks = [frame for frame in frames if frame["type"] == "content_chunk"]
    assert {frame.get("choice") for frame in chunks} == {None, 1}  # choice 0 is left out of the frame
    assert all("choice" not in frame or frame["choice"] == 1 for frame in frames)
    assert _texts(messages) == {0: expected_text(9), 1: expected_choice_text(1, 9)}
    [call] = [m for m in messages if isinstance(m, ToolCallMessage)]
    assert call.choice == 0 and call.tool == "get_weather"
    end = messages[-1]
    assert isinstance(end, Completed) and end.finish_reason == "tool_calls"
    assert end.finish_reasons == ["tool_calls", "stop"]
    assert frames[-1]["finishReasons"] == ["tool_calls", "stop"]


async def test_one_choice_frames_are_unchanged(hub: Any, ws_connect: Any) -> None:
    client = await ws_connect()
    await client.send({"type": "completion", "id": "one", "model": OPENAI,
                       "messages": [{"role": "user", "content": "[[mock tokens=4]]"}]})
    await client.recv()
    await client.until_terminal("one")
    assert not any('"choice"' in frame or "finishReasons" in frame for frame in client.frames)


async def test_the_snapshot_keeps_each_choices_text(mock: Any, ws_factory: Any) -> None:
    async with run_test_hub(hub_config(mock, history_max_events=5)) as hub:
        client = await ws_factory(hub)
        await _start(client, "s1", "[[mock tokens=20]]", coalesce=False)
        everything = await client.until_terminal("s1")
        late = await ws_factory(hub)
        await late.send({"type": "subscribe", "channels": ["completion:s1"]})
        ack = await late.recv()
        assert isinstance(ack, Subscribed) and ack.recovered == {"completion:s1": False}
        snapshot = await late.recv()
        rest = await late.until_terminal("s1")
    assert isinstance(snapshot, Snapshot) and snapshot.seq == everything[-2].seq and rest == everything[-1:]
    assert snapshot.content == expected_text(20)
    assert [(c.choice, c.content) for c in snapshot.choices] == [(1, expected_choice_text(1, 20))]
    assert _texts(everything) == {0: snapshot.content, 1: snapshot.choices[0].content}


async def test_resume_after_a_cursor_replays_both_choices(hub: Any, ws_connect: Any) -> None:
    client = await ws_connect()
    ack = await _start(client, "r1", "[[mock tokens=16 tps=400]]", coalesce=False)
    head = [await client.recv() for _ in range(7)]
    again = await ws_connect()
    await again.send({"type": "subscribe", "channels": ["completion:r1"],
                      "since": {"completion:r1": {"seq": head[-1].seq, "epoch": ack.epochs["completion:r1"]}}})
    resumed = await again.recv()
    assert isinstance(resumed, Subscribed) and resumed.recovered == {"completion:r1": True}
    rest = await again.until_terminal("r1")
    assert rest[0].seq == head[-1].seq + 1
    assert {m.choice for m in head + rest if isinstance(m, ContentChunk)} == {0, 1}
    assert _texts(head + rest) == {0: expected_text(16), 1: expected_choice_text(1, 16)}
    assert _texts(head + await client.until_terminal("r1")) == _texts(head + rest)


async def test_redaction_follows_each_choice_across_its_chunks(mock: Any, ws_factory: Any) -> None:
    # A rule that matches two consecutive words of choice 1: its chunks are interleaved with
    # choice 0's, so only a redactor per choice sees the two words side by side.
    words = re.findall(r"[^ ]+ ", expected_choice_text(1, 12))
    secret = words[3] + words[4]
    rule = RedactionRule("pair", re.escape(secret))
    async with run_test_hub(hub_config(mock, redaction_rules=[rule])) as hub:
        client = await ws_factory(hub)
        await _start(client, "p1", "[[mock tokens=12]]", coalesce=False)
        messages = await client.until_terminal("p1")
    texts = _texts(messages)
    assert secret not in texts[1] and "[REDACTED:pair]" in texts[1]
    assert texts == {k: expected_choice_text(k, 12).replace(secret, "[REDACTED:pair]") for k in (0, 1)}


@pytest.mark.parametrize("model", ["anthropic/claude-sonnet-4-5", "google/gemini-2.5-flash", "ollama/llama3.2"])
async def test_n_above_one_is_refused_elsewhere_naming_n_and_the_provider(hub: Any, mock: Any, model: str) -> None:
    kind = model.partition("/")[0]
    client = sdk(hub)
    try:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(
                    model=model, n=2, stream=stream, messages=[{"role": "user", "content": "Hi"}])
            body = caught.value.body
            assert isinstance(body, dict) and body["code"] == "invalid_message"
            assert "`n`" in body["message"] and kind in body["message"] and "one choice" in body["message"]
    finally:
        await client.close()
    assert mock.requests == []


def test_chunk_encoder_gives_each_choice_its_index_role_and_finish_chunk() -> None:
    encoder = ChunkEncoder("chatcmpl-x", "m", 1)
    raw = b"".join(encoder.encode(message) for message in (
        ContentChunk("c", 1, "a"), ContentChunk("c", 2, "b", None, 1),
        ToolCallMessage("c", 3, "call_1", "f", {}, choice=1),
        Completed("c", 4, "stop", "openai", "m", finish_reasons=["stop", "tool_calls"])))
    chunks = [msgspec.json.decode(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
    seen = [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks]
    role = {"role": "assistant", "content": ""}
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert seen == [(0, role, None), (0, {"content": "a"}, None), (1, role, None), (1, {"content": "b"}, None),
                    (1, {"tool_calls": [call]}, None), (0, {}, "stop"), (1, {}, "tool_calls")]


def test_completion_object_of_a_choice_without_output_has_an_empty_message() -> None:
    answer = completion_object("id", "m", 1, [ContentChunk("c", 1, "x", None, 1),
                                              Completed("c", 2, "length", "openai", "m",
                                                        finish_reasons=["length", "stop"])])
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in answer["choices"]] == [
        (0, "", "length"), (1, "x", "stop")]


def test_an_azure_deployment_sends_n_as_openai_does() -> None:
    request = Completion(model="x", messages=[ChatMessage("user", "hi")], n=3)
    built = azure_openai.build_request(request, "prod", "https://res.openai.azure.com", "k", "2024-10-21")
    assert built.body["n"] == 3
