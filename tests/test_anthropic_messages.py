"""``POST /v1/messages``: the Anthropic Messages API in front of every provider, driven by the
official ``anthropic`` package (``messages.stream``, ``messages.create``) against a running hub
and the mock provider; the mapping of protocol/anthropic_compat.py checked on its own; and
fidelity: the SDK's message from the hub equals the one it builds from Anthropic's own
recorded stream (../shared/fixtures, replayed by the mock)."""

from __future__ import annotations

from typing import Any

import aiohttp
import anthropic
import msgspec
import pytest

from hub.app import run_hub
from hub.auth import api_key_digest
from hub.config import ApiKeyEntry
from protocol.anthropic_compat import MessageEncoder, decode_messages_request, effort_of_budget
from protocol.errors import ProtocolError
from protocol.framing import SSEDecoder
from protocol.messages import Completed, Completion, ContentChunk, ThinkingStatus, ToolCallMessage, UsageInfo
from tests.conftest import hub_config
from tests.support import SHARED_FIXTURES, requires_shared
from tools.mock_provider import TOOL_ARGUMENTS, expected_reasoning, expected_text

#: /v1/messages on the in-memory and the Redis broker (tests/conftest.py), as /v1/chat/completions.
pytestmark = pytest.mark.brokers("memory", "redis")

#: Models behind the hub, one per provider kind the issue names (OpenAI, Gemini, Ollama), and
#: Anthropic itself.
MODELS = ["openai/gpt-4o-mini", "google/gemini-2.0-flash", "ollama/llama3.2", "anthropic/claude-sonnet-4-5"]

WEATHER_TOOL = {"name": "get_weather", "description": "Weather of a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def sdk(hub: Any, api_key: str = "not-needed") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=hub.url, api_key=api_key, max_retries=0)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# The SDK against every provider.


@pytest.mark.parametrize("model", MODELS)
async def test_messages_stream_text_from_every_provider(hub: Any, model: str) -> None:
    async with sdk(hub) as client:
        async with client.messages.stream(model=model, max_tokens=100,
                                          messages=user("Count [[mock tokens=12 seed=3]]")) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds and "message_delta" in kinds
    assert [block.type for block in final.content] == ["text"]
    assert final.content[0].text == expected_text(12, seed=3)
    assert final.stop_reason == "end_turn" and final.stop_sequence is None
    assert final.usage.output_tokens == 12 and final.usage.input_tokens > 0
    assert final.model == model and final.role == "assistant"
    assert final.id.startswith("msg_comp-")


@pytest.mark.parametrize("model", MODELS)
async def test_messages_create_not_streamed_from_every_provider(hub: Any, model: str) -> None:
    async with sdk(hub) as client:
        message = await client.messages.create(model=model, max_tokens=50, system="Be brief.",
                                               messages=user("Hi [[mock tokens=7 seed=5]]"))
    assert message.type == "message"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == expected_text(7, seed=5)
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 7


@pytest.mark.parametrize(("model", "upstream"), [
    ("openai/gpt-4o-mini", ("reasoning_effort", "low")),
    ("google/gemini-2.0-flash", ("generationConfig", {"thinkingConfig": {"includeThoughts": True, "thinkingBudget": 1024}})),
    ("ollama/llama3.2", ("think", True)),
    ("anthropic/claude-sonnet-4-5", ("thinking", {"type": "enabled", "budget_tokens": 1024})),
])
async def test_thinking_comes_back_as_a_thinking_block(hub: Any, mock: Any, model: str, upstream: tuple[str, Any]) -> None:
    async with sdk(hub) as client:
        async with client.messages.stream(
            model=model, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024},
            messages=user("Think [[mock tokens=3 reasoning=5 seed=6]]"),
        ) as stream:
            deltas = [event.delta.type async for event in stream if event.type == "content_block_delta"]
            final = await stream.get_final_message()
    blocks = [block.type for block in final.content]
    if model.startswith("google/"):
        # Gemini signs its thoughts on the last (empty) part, after the answer: the signature
        # comes as a thinking block of its own, with no text.
        assert blocks == ["thinking", "text", "thinking"]
        assert final.content[2].thinking == "" and final.content[2].signature
    else:
        assert blocks == ["thinking", "text"]
    assert final.content[0].thinking == expected_reasoning(5, seed=6)
    assert final.content[1].text == expected_text(3, seed=6)
    assert "thinking_delta" in deltas and "text_delta" in deltas
    if model.startswith("anthropic/"):  # the mock signs Anthropic thinking: the signature comes through
        assert "signature_delta" in deltas and final.content[0].signature
    key, value = upstream
    body = mock.requests[-1]["body"]
    if key == "generationConfig":
        assert body[key]["thinkingConfig"] == value["thinkingConfig"]
    else:
        assert body[key] == value


@pytest.mark.parametrize("model", MODELS)
async def test_tool_use_accumulates_input_json_and_the_result_goes_back(hub: Any, mock: Any, model: str) -> None:
    async with sdk(hub) as client:
        async with client.messages.stream(
            model=model, max_tokens=200, tools=[WEATHER_TOOL], tool_choice={"type": "auto"},
            messages=user("Weather in Paris? [[mock tokens=2 tool=get_weather seed=8]]"),
        ) as stream:
            json_deltas = [event.delta.partial_json async for event in stream
                           if event.type == "content_block_delta" and event.delta.type == "input_json_delta"]
            final = await stream.get_final_message()
        assert final.stop_reason == "tool_use"
        assert [block.type for block in final.content] == ["text", "tool_use"]
        call = final.content[1]
        assert call.name == "get_weather" and call.input == TOOL_ARGUMENTS
        assert msgspec.json.decode("".join(json_deltas)) == TOOL_ARGUMENTS
        # The next turn: the assistant's content as the SDK holds it, then the tool's result.
        answer = await client.messages.create(
            model=model, max_tokens=200, tools=[WEATHER_TOOL],
            messages=[*user("Weather in Paris? [[mock tokens=2 tool=get_weather seed=8]]"),
                      {"role": "assistant", "content": final.content},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                    "content": "18 C and sunny"}]}],
        )
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"
    sent = msgspec.json.encode(mock.requests[-1]["body"]).decode()
    assert "18 C and sunny" in sent  # the result reached the provider
    if model.startswith(("openai/", "anthropic/")):  # these two pair a result with its call by id
        assert call.id in sent


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "ollama/llama3.2"])
async def test_messages_create_with_thinking_and_a_tool_call(hub: Any, model: str) -> None:
    async with sdk(hub) as client:
        message = await client.messages.create(
            model=model, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 5000}, tools=[WEATHER_TOOL],
            messages=user("Weather? [[mock tokens=2 reasoning=3 tool=get_weather seed=7]]"))
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[0].thinking == expected_reasoning(3, seed=7)
    assert message.content[1].text == expected_text(2, seed=7)
    assert (message.content[2].name, message.content[2].input) == ("get_weather", TOOL_ARGUMENTS)
    assert message.stop_reason == "tool_use"


async def test_fields_the_hub_cannot_carry_are_refused_naming_them(hub: Any) -> None:
    async with sdk(hub) as client:
        with pytest.raises(anthropic.BadRequestError) as top_k:
            await client.messages.create(model="openai/gpt-4o-mini", max_tokens=10, messages=user("x"),
                                         extra_body={"top_k": 5})
        with pytest.raises(anthropic.BadRequestError) as server_tool:
            await client.messages.create(
                model="openai/gpt-4o-mini", max_tokens=10, messages=user("x"),
                tools=[{"type": "web_search_20250305", "name": "web_search"}])
        with pytest.raises(anthropic.BadRequestError) as unknown:
            await client.messages.create(model="openai/gpt-4o-mini", max_tokens=10, messages=user("x"),
                                         extra_body={"service_tier": "auto"})
    for refusal, field in ((top_k, "top_k"), (server_tool, "tools[0].type"), (unknown, "service_tier")):
        body = refusal.value.body
        assert refusal.value.status_code == 400
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert f"`{field}`" in body["error"]["message"]
        assert body["error"]["code"] == "invalid_message"


async def test_errors_before_and_during_the_stream(hub: Any) -> None:
    async with sdk(hub) as client:
        with pytest.raises(anthropic.NotFoundError) as not_found:
            await client.messages.create(model="nobody/none", max_tokens=10, messages=user("x"))
        assert not_found.value.body["error"] == {
            "type": "not_found_error", "message": not_found.value.body["error"]["message"], "code": "model_not_found"}
        with pytest.raises(anthropic.RateLimitError):
            async with client.messages.stream(model="openai/gpt-4o-mini", max_tokens=10,
                                              messages=user("x [[mock status=429]]")) as stream:
                await stream.get_final_message()
        text = ""
        with pytest.raises(anthropic.APIStatusError) as mid_stream:
            async with client.messages.stream(model="google/gemini-2.0-flash", max_tokens=10,
                                              messages=user("x [[mock tokens=10 error_after=2 seed=1]]")) as stream:
                async for chunk in stream.text_stream:
                    text += chunk
    assert text == expected_text(2, seed=1)
    assert mid_stream.value.body["type"] == "error" and mid_stream.value.body["error"]["code"] == "provider_error"


async def test_the_wire_format_and_the_channel_a_websocket_client_can_watch(hub: Any, ws_connect: Any) -> None:
    body = {"model": "ollama/llama3.2", "max_tokens": 20, "stream": True,
            "messages": user("Hi [[mock tokens=4 seed=2]]")}
    async with aiohttp.ClientSession() as session:
        async with session.post(hub.url + "/v1/messages", json=body) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            decoder = SSEDecoder()
            events = []
            async for piece in response.content.iter_any():
                events.extend(decoder.feed(piece))
            events.extend(decoder.close())
    assert not decoder.unterminated
    names = [event.event for event in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    payloads = [msgspec.json.decode(event.data) for event in events]
    assert all(payload["type"] == name for payload, name in zip(payloads, names, strict=True))
    completion_id = payloads[0]["message"]["id"].removeprefix("msg_")
    client = await ws_connect()
    await client.send({"type": "subscribe", "channels": [f"completion:{completion_id}"]})
    replayed = await client.until_terminal(completion_id)
    assert "".join(m.content for m in replayed if isinstance(m, ContentChunk)) == expected_text(4, seed=2)
    assert isinstance(replayed[-1], Completed) and replayed[-1].provider == "ollama"


async def test_x_api_key_and_bearer_are_both_accepted(mock: Any) -> None:
    key = "sk-hub-anthropic-test-key"
    entry = ApiKeyEntry(name="sdk", sha256=api_key_digest(key), subject="sdk-user")
    async with run_hub(hub_config(mock, auth_mode="api_key", api_keys=[entry])) as hub:
        async with sdk(hub, api_key=key) as client:  # sends x-api-key
            message = await client.messages.create(model="openai/gpt-4o-mini", max_tokens=10,
                                                   messages=user("[[mock tokens=2]]"))
            assert message.content[0].text == expected_text(2)
        async with anthropic.AsyncAnthropic(base_url=hub.url, auth_token=key, max_retries=0) as client:  # Bearer
            message = await client.messages.create(model="openai/gpt-4o-mini", max_tokens=10,
                                                   messages=user("[[mock tokens=2]]"))
            assert message.content[0].text == expected_text(2)
        async with sdk(hub, api_key="sk-wrong") as client:
            with pytest.raises(anthropic.AuthenticationError) as refused:
                await client.messages.create(model="openai/gpt-4o-mini", max_tokens=10, messages=user("x"))
    assert refused.value.body["error"]["type"] == "authentication_error"
    assert refused.value.body["error"]["code"] == "invalid_token"


# The mapping on its own (protocol/anthropic_compat.py).


def _completion(**request: Any) -> Any:
    body = {"model": "openai/gpt-4o-mini", "max_tokens": 10, **request}
    return decode_messages_request(msgspec.json.encode(body)).to_completion()


def test_request_mapping_of_blocks_tools_and_options() -> None:
    completion = _completion(
        system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "kind.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Look:"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                                         {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "c2ln"},
                                              {"type": "text", "text": "Checking."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18 C"}]},
                                         {"type": "text", "text": "And tomorrow?"}]},
        ],
        tools=[WEATHER_TOOL], tool_choice={"type": "tool", "name": "get_weather"},
        stop_sequences=["END"], temperature=0.5, thinking={"type": "enabled", "budget_tokens": 3000},
    )
    messages = [msgspec.to_builtins(message) for message in completion.messages]
    assert messages == [
        {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "kind."}]},
        {"role": "user", "content": [{"type": "text", "text": "Look:"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "content": [{"type": "text", "text": "18 C"}], "tool_call_id": "toolu_1"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert completion.tools == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city", "parameters": WEATHER_TOOL["input_schema"]}}]
    assert completion.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert (completion.stop, completion.temperature, completion.max_tokens) == (["END"], 0.5, 10)
    assert completion.thinking == {"type": "enabled", "budget_tokens": 3000}
    assert completion.reasoning == {"effort": "medium"}
    assert [_completion(messages=user("x"), tool_choice={"type": kind}).tool_choice
            for kind in ("auto", "any", "none")] == ["auto", "required", "none"]
    assert [effort_of_budget(budget) for budget in (1024, 1025, 4096, 4097)] == ["low", "medium", "medium", "high"]
    assert _completion(messages=user("x"), thinking={"type": "disabled"}).thinking is None


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"top_k": 3}, "top_k"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": True}]}]},
     "messages[0].content[0].is_error"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                 "content": [{"type": "image", "source": {}}]}]}]},
     "messages[0].content[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "citations": [{"type": "char_location"}]}]}]},
     "messages[0].content[0].citations"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"tools": [{"name": "t", "input_schema": {}, "strict": True}]}, "tools[0].strict"),
    ({"thinking": {"type": "adaptive"}}, "thinking.type"),
    ({"metadata": {"tags": ["a"]}}, "metadata.tags"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"),
])
def test_what_cannot_be_carried_is_refused_by_name(request_fields: dict[str, Any], field: str) -> None:
    body = {"model": "openai/gpt-4o-mini", "max_tokens": 10, "messages": user("x"), **request_fields}
    with pytest.raises(ProtocolError) as refused:
        decode_messages_request(msgspec.json.encode(body)).to_completion()
    assert refused.value.code == "invalid_message"
    assert f"`{field}`" in refused.value.message


@pytest.mark.parametrize(("request_fields", "field", "carried_as"), [
    ({"top_p": 0.5}, "top_p", ("top_p", 0.5)),
    ({"metadata": {"user_id": "u-1"}}, "metadata.user_id", ("user", "u-1")),
    ({"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}, "tool_choice.disable_parallel_tool_use",
     ("parallel_tool_calls", False)),
])
def test_a_field_with_an_openai_counterpart_is_carried_when_the_completion_has_it(
        request_fields: dict[str, Any], field: str, carried_as: tuple[str, Any]) -> None:
    """Carried as the completion's field of that name when protocol/messages.py's Completion
    has one (issue 14 item 2 adds them), refused by name while it has not."""
    body = {"model": "openai/gpt-4o-mini", "max_tokens": 10, "messages": user("x"), **request_fields}
    name, value = carried_as
    request = decode_messages_request(msgspec.json.encode(body))
    if name in Completion.__struct_fields__:
        assert getattr(request.to_completion(), name) == value
    else:
        with pytest.raises(ProtocolError) as refused:
            request.to_completion()
        assert f"`{field}`" in refused.value.message and f"no `{name}`" in refused.value.message


def test_a_body_without_max_tokens_or_not_json_is_refused() -> None:
    with pytest.raises(ProtocolError) as missing:
        decode_messages_request(b'{"model":"m","messages":[]}')
    assert "max_tokens" in missing.value.message and missing.value.code == "invalid_message"
    with pytest.raises(ProtocolError) as broken:
        decode_messages_request(b'{"model":')
    assert broken.value.code == "invalid_json"


def test_encoder_blocks_signatures_and_the_message_it_keeps() -> None:
    encoder = MessageEncoder("msg_c1", "openai/gpt-4o-mini")
    data = encoder.start()
    for message in (ThinkingStatus("c1", 1, "thinking", "a "), ThinkingStatus("c1", 2, "thinking", "", "sig1"),
                    ThinkingStatus("c1", 3, "thinking", "b "), ThinkingStatus("c1", 4, "done"),
                    ContentChunk("c1", 5, "Hi"), ToolCallMessage("c1", 6, "call_1", "f", {"x": 1}),
                    ContentChunk("c1", 7, "!"),
                    Completed("c1", 8, "length", "openai", "gpt-4o-mini", UsageInfo(3, 9, 12))):
        data += encoder.encode(message)
    decoder = SSEDecoder()
    events = [(event.event, msgspec.json.decode(event.data)) for event in decoder.feed(data)]
    assert not decoder.unterminated
    starts = [payload["content_block"]["type"] for name, payload in events if name == "content_block_start"]
    assert starts == ["thinking", "thinking", "text", "tool_use", "text"]  # reasoning after a signature: new block
    assert sum(name == "content_block_stop" for name, _ in events) == 5
    assert encoder.message() == {
        "id": "msg_c1", "type": "message", "role": "assistant", "model": "openai/gpt-4o-mini",
        "content": [{"type": "thinking", "thinking": "a ", "signature": "sig1"},
                    {"type": "thinking", "thinking": "b ", "signature": ""},
                    {"type": "text", "text": "Hi"},
                    {"type": "tool_use", "id": "call_1", "name": "f", "input": {"x": 1}},
                    {"type": "text", "text": "!"}],
        "stop_reason": "max_tokens", "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 9},
    }
    assert events[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                             "usage": {"input_tokens": 3, "output_tokens": 9}}


# Fidelity: the same upstream stream, from Anthropic itself and through the hub.

FIDELITY = ["anthropic_text.sse", "anthropic_thinking.sse", "anthropic_tool_use.sse",
            "anthropic_redacted_thinking.sse", "anthropic_tool_use_max_tokens.sse"]


def _comparable(message: Any) -> dict[str, Any]:
    """What must be equal: the content blocks, the stop reason and sequence, the token counts.
    Not compared: ``id`` (the hub's is ``msg_<completion id>``), ``model`` (the hub reports the
    name the client asked for) and the usage details the hub does not carry (cache counters,
    service tier)."""
    return {"role": message.role, "type": message.type, "stop_reason": message.stop_reason,
            "stop_sequence": message.stop_sequence,
            "content": [block.model_dump(exclude_none=True) for block in message.content],
            "usage": (message.usage.input_tokens, message.usage.output_tokens)}


@requires_shared
@pytest.mark.parametrize("fixture", FIDELITY)
async def test_the_sdk_builds_the_same_message_from_the_hub_as_from_anthropic(hub: Any, mock: Any, fixture: str) -> None:
    prompt = user(f"[[mock replay={SHARED_FIXTURES / fixture} seed=4]]")
    # Anthropic itself: the mock serves the recording's bytes at its /v1/messages.
    async with anthropic.AsyncAnthropic(base_url=mock.url, api_key="k", max_retries=0) as direct:
        async with direct.messages.stream(model="claude-sonnet-4-5", max_tokens=2048, messages=prompt) as stream:
            expected = await stream.get_final_message()
    async with sdk(hub) as client:
        async with client.messages.stream(model="anthropic/claude-sonnet-4-5", max_tokens=2048, messages=prompt) as stream:
            through_hub = await stream.get_final_message()
    assert _comparable(through_hub) == _comparable(expected)
    assert expected.content  # the recording did produce a message


async def test_ping_keeps_a_waiting_stream_alive_and_the_sdk_reads_through_it(mock: Any) -> None:
    """No answer yet (the mock holds its stream at a gate): the headers, ``message_start`` and
    ``ping`` go out after ``sse_keepalive_interval_s``, then one ``ping`` per interval; once
    the gate opens the answer follows in the same stream."""
    async with run_hub(hub_config(mock, sse_keepalive_interval_s=0.05)) as hub:
        body = {"model": "openai/gpt-4o-mini", "max_tokens": 20, "stream": True,
                "messages": user("Hi [[mock tokens=3 seed=9 gate=msgs-ping]]")}
        async with aiohttp.ClientSession() as session, session.post(hub.url + "/v1/messages", json=body) as response:
            assert response.status == 200
            decoder = SSEDecoder()
            events: list[Any] = []
            while [event.event for event in events].count("ping") < 3:  # message_start's ping and two keepalives
                events.extend(decoder.feed(await response.content.readany()))
            assert [event.event for event in events][:3] == ["message_start", "ping", "ping"]
            mock.release("msgs-ping")
            async for piece in response.content.iter_any():
                events.extend(decoder.feed(piece))
        names = [event.event for event in events]
        assert names[-1] == "message_stop" and "content_block_start" in names
        deltas = [msgspec.json.decode(event.data)["delta"]["text"] for event in events if event.event == "content_block_delta"]
        assert "".join(deltas) == expected_text(3, seed=9)
        async with sdk(hub) as client:  # the SDK reads through pings (the gate stays open now)
            async with client.messages.stream(model="openai/gpt-4o-mini", max_tokens=20,
                                              messages=user("Hi [[mock tokens=3 seed=9 gate=msgs-ping]]")) as stream:
                assert (await stream.get_final_message()).content[0].text == expected_text(3, seed=9)


@requires_shared
async def test_anthropic_s_recorded_error_event_reaches_the_sdk_with_its_type_and_message(mock: Any) -> None:
    """The documented ``overloaded_error`` event (anthropic_error.sse): straight from Anthropic
    the SDK raises it from a 200 stream; through the hub, where it is the first event, the
    hub answers it before the stream, HTTP 529 (the status Anthropic gives overloaded_error):
    the same error type and message either way."""
    prompt = user(f"[[mock replay={SHARED_FIXTURES / 'anthropic_error.sse'}]]")
    raised = []
    async with run_hub(hub_config(mock, retry_max_attempts=1)) as hub:
        for base_url, model in ((mock.url, "claude-sonnet-4-5"), (hub.url, "anthropic/claude-sonnet-4-5")):
            async with anthropic.AsyncAnthropic(base_url=base_url, api_key="k", max_retries=0) as client:
                with pytest.raises(anthropic.APIStatusError) as error:
                    async with client.messages.stream(model=model, max_tokens=10, messages=prompt) as stream:
                        await stream.get_final_message()
            raised.append(error.value)
    direct, through_hub = raised
    assert (direct.status_code, through_hub.status_code) == (200, 529)
    assert isinstance(through_hub, anthropic.OverloadedError)
    assert {key: through_hub.body["error"][key] for key in ("type", "message")} == direct.body["error"] == {
        "type": "overloaded_error", "message": "Overloaded"}
