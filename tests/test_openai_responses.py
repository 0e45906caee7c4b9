"""``POST /v1/responses``: the OpenAI Responses API in front of every provider, driven by the
official ``openai`` package (``responses.stream``, ``responses.create``) against a running hub
and the mock provider; the mapping of protocol/responses_compat.py checked on its own; and
fidelity: the SDK's Response from the hub equals the one it builds from OpenAI's own recorded
Responses stream (../shared/fixtures, replayed by the mock)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import openai
import pytest

from hub.app import Hub
from protocol.errors import ProtocolError
from protocol.framing import SSEDecoder
from protocol.messages import (
    Completed,
    Completion,
    ContentChunk,
    ErrorInfo,
    ErrorMessage,
    RefusalChunk,
    ThinkingStatus,
    ToolCallMessage,
    UsageInfo,
)
from protocol.responses_compat import FieldRefused, ResponseEncoder, decode_responses_request
from tests.conftest import hub_config, run_test_hub
from tests.support import SHARED_FIXTURES, requires_shared
from tools.mock_provider import TOOL_ARGUMENTS, MockProvider, expected_reasoning, expected_text

#: /v1/responses on the in-memory and the Redis broker, as /v1/chat/completions.
pytestmark = pytest.mark.brokers("memory", "redis")

#: One model per provider kind behind the hub.
MODELS = ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5", "google/gemini-2.0-flash", "ollama/llama3.2",
          "openai_responses/o4-mini"]

#: The hub completion's fields: what a Responses field may be carried as (issue 14 item 2 adds some).
COMPLETION_FIELDS = frozenset(Completion.__struct_fields__)

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture
async def hub(mock: MockProvider, broker: str) -> AsyncIterator[Hub]:
    """The hub with every provider kind, openai_responses included, pointed at the mock."""
    async with run_test_hub(hub_config(mock, openai_responses_base_url=mock.url + "/v1")) as running:
        yield running


def sdk(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="not-needed", max_retries=0)


# The SDK against every provider.


@pytest.mark.parametrize("model", MODELS)
async def test_responses_stream_text_from_every_provider(hub: Hub, model: str) -> None:
    async with sdk(hub.url) as client:
        async with client.responses.stream(model=model, input="Count [[mock tokens=12 seed=3]]",
                                           instructions="Be brief.", max_output_tokens=100) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.delta",
                 "response.output_text.done", "response.content_part.done", "response.output_item.done"):
        assert kind in kinds
    assert [item.type for item in final.output] == ["message"]
    assert final.output_text == expected_text(12, seed=3)
    assert final.status == "completed" and final.model == model and final.id.startswith("resp_comp-")
    assert final.instructions == "Be brief." and final.max_output_tokens == 100
    assert final.usage is not None and final.usage.output_tokens == 12 and final.usage.input_tokens > 0
    assert final.usage.total_tokens == final.usage.input_tokens + 12


@pytest.mark.parametrize("model", MODELS)
async def test_responses_create_not_streamed_from_every_provider(hub: Hub, model: str) -> None:
    async with sdk(hub.url) as client:
        response = await client.responses.create(model=model, input="Hi [[mock tokens=7 seed=5]]")
    assert response.object == "response" and response.status == "completed"
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == expected_text(7, seed=5)
    assert response.usage is not None and response.usage.output_tokens == 7


@pytest.mark.parametrize(("model", "upstream"), [
    ("openai/gpt-4o-mini", ("reasoning_effort", "low")),
    ("anthropic/claude-sonnet-4-5", ("thinking", {"type": "enabled", "budget_tokens": 1024})),
    ("google/gemini-2.0-flash", ("generationConfig", {"includeThoughts": True, "thinkingBudget": 1024})),
    ("ollama/llama3.2", ("think", True)),
    ("openai_responses/o4-mini", ("reasoning", {"effort": "low", "summary": "detailed"})),
])
async def test_reasoning_comes_back_as_a_reasoning_summary(hub: Hub, mock: MockProvider, model: str,
                                                           upstream: tuple[str, Any]) -> None:
    async with sdk(hub.url) as client:
        async with client.responses.stream(model=model, reasoning={"effort": "low", "summary": "detailed"},
                                           input="Think [[mock tokens=3 reasoning=5 seed=6]]") as stream:
            deltas = [event.delta async for event in stream if event.type == "response.reasoning_summary_text.delta"]
            final = await stream.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "message"]
    reasoning = final.output[0]
    assert reasoning.type == "reasoning"
    assert [part.text for part in reasoning.summary] == [expected_reasoning(5, seed=6)]
    assert "".join(deltas) == expected_reasoning(5, seed=6)
    assert final.output_text == expected_text(3, seed=6)
    assert final.reasoning is not None and final.reasoning.effort == "low"
    if model.startswith(("openai/", "openai_responses/")):  # the mock reports reasoning tokens there
        assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 5
    key, value = upstream
    body = mock.requests[-1]["body"]
    if key == "generationConfig":
        assert body[key]["thinkingConfig"] == value
    else:
        assert body[key] == value


@pytest.mark.parametrize("model", MODELS)
async def test_function_call_and_its_output_go_back(hub: Hub, mock: MockProvider, model: str) -> None:
    prompt = "Weather in Paris? [[mock tokens=2 tool=get_weather seed=8]]"
    async with sdk(hub.url) as client:
        async with client.responses.stream(model=model, input=prompt, tools=[WEATHER_TOOL],  # type: ignore[list-item]
                                           tool_choice="auto") as stream:
            fragments = [event.delta async for event in stream
                         if event.type == "response.function_call_arguments.delta"]
            final = await stream.get_final_response()
        assert [item.type for item in final.output] == ["message", "function_call"]
        call = final.output[1]
        assert call.type == "function_call" and call.name == "get_weather"
        assert msgspec.json.decode(call.arguments) == TOOL_ARGUMENTS
        assert msgspec.json.decode("".join(fragments)) == TOOL_ARGUMENTS
        # The next turn: the output items as the SDK holds them, then the function's output.
        history: list[Any] = [{"role": "user", "content": prompt}]
        history += [item.model_dump(exclude_none=True) for item in final.output]
        history.append({"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"})
        answer = await client.responses.create(model=model, input=history, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert [item.type for item in answer.output] == ["message"] and answer.output_text
    sent = msgspec.json.encode(mock.requests[-1]["body"]).decode()
    assert "18 C and sunny" in sent  # the output reached the provider
    if model.startswith(("openai/", "anthropic/", "openai_responses/")):  # these pair an output with its call by id
        assert call.call_id in sent


async def test_function_tools_and_tool_choice_reach_the_provider_in_its_terms(hub: Hub, mock: MockProvider) -> None:
    async with sdk(hub.url) as client:
        await client.responses.create(model="openai/gpt-4o-mini", input="x [[mock tokens=1]]",
                                      tools=[WEATHER_TOOL],  # type: ignore[list-item]
                                      tool_choice={"type": "function", "name": "get_weather"}, temperature=0.5)
        chat_body = mock.requests[-1]["body"]
        await client.responses.create(model="openai_responses/gpt-4o-mini", input="x [[mock tokens=1]]",
                                      tools=[WEATHER_TOOL],  # type: ignore[list-item]
                                      tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=33)
        responses_body = mock.requests[-1]["body"]
    assert chat_body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city", "parameters": WEATHER_TOOL["parameters"]}}]
    assert chat_body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat_body["temperature"] == 0.5
    assert responses_body["tools"] == [WEATHER_TOOL]
    assert responses_body["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert responses_body["max_output_tokens"] == 33 and responses_body["store"] is False


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"truncation": "auto"}, "truncation"),
    ({"extra_body": {"service_tier": "flex"}}, "service_tier"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input[0].content[0].file_id"),
    ({"text": {"format": {"type": "grammar"}}}, "text.format.type"),
])
async def test_fields_the_hub_cannot_carry_are_refused_naming_them(hub: Hub, kwargs: dict[str, Any],
                                                                   param: str) -> None:
    request: dict[str, Any] = {"model": "openai/gpt-4o-mini", "input": "x", **kwargs}
    async with sdk(hub.url) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(**request)
    body = refused.value.body
    assert refused.value.status_code == 400 and isinstance(body, dict)
    assert body["type"] == "invalid_request_error" and body["code"] == "invalid_message"
    assert body["param"] == param and f"`{param}`" in body["message"]


async def test_structured_output_is_carried_when_the_completion_can_carry_it_else_refused(hub: Hub,
                                                                                          mock: MockProvider) -> None:
    """``text.format`` json_schema: carried as the completion's ``response_format`` once the
    completion has that field (issue 14 item 2), refused by name until then."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    text = {"format": {"type": "json_schema", "name": "City", "schema": schema, "strict": True}}
    async with sdk(hub.url) as client:
        if "response_format" in COMPLETION_FIELDS:
            await client.responses.create(model="openai/gpt-4o-mini", input="x [[mock tokens=1]]", text=text)  # type: ignore[arg-type]
            assert mock.requests[-1]["body"]["response_format"]["json_schema"]["schema"] == schema
        else:
            with pytest.raises(openai.BadRequestError) as refused:
                await client.responses.create(model="openai/gpt-4o-mini", input="x", text=text)  # type: ignore[arg-type]
            assert refused.value.body["param"] == "text.format"  # type: ignore[index]


async def test_errors_before_and_during_the_stream(hub: Hub) -> None:
    async with sdk(hub.url) as client:
        with pytest.raises(openai.NotFoundError) as not_found:
            await client.responses.create(model="nobody/none", input="x")
        assert not_found.value.body["code"] == "model_not_found"  # type: ignore[index]
        with pytest.raises(openai.RateLimitError):
            async with client.responses.stream(model="openai/gpt-4o-mini", input="x [[mock status=429]]") as stream:
                await stream.get_final_response()
        async with client.responses.stream(model="google/gemini-2.0-flash",
                                           input="x [[mock tokens=10 error_after=2 seed=1]]") as stream:
            events = [event async for event in stream]
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == expected_text(2, seed=1)
    assert [event.type for event in events][-2:] == ["error", "response.failed"]
    error, failed = events[-2:]
    assert error.type == "error" and error.code == "provider_error" and error.message
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error is not None and failed.response.error.code == "server_error"


async def test_the_wire_format_and_the_channel_a_websocket_client_can_watch(hub: Hub, ws_connect: Any) -> None:
    body = {"model": "ollama/llama3.2", "stream": True, "input": "Hi [[mock tokens=4 seed=2]]"}
    async with aiohttp.ClientSession() as session:
        async with session.post(hub.url + "/v1/responses", json=body) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            decoder = SSEDecoder()
            events = []
            async for piece in response.content.iter_any():
                events.extend(decoder.feed(piece))
            events.extend(decoder.close())
    assert not decoder.unterminated
    payloads = [msgspec.json.decode(event.data) for event in events]
    assert all(payload["type"] == event.event for payload, event in zip(payloads, events, strict=True))
    assert [payload["sequence_number"] for payload in payloads] == list(range(len(payloads)))
    assert payloads[-1]["type"] == "response.completed" and b"[DONE]" not in b"".join(e.data.encode() for e in events)
    completion_id = payloads[0]["response"]["id"].removeprefix("resp_")
    client = await ws_connect()
    await client.send({"type": "subscribe", "channels": [f"completion:{completion_id}"]})
    replayed = await client.until_terminal(completion_id)
    assert "".join(m.content for m in replayed if isinstance(m, ContentChunk)) == expected_text(4, seed=2)
    assert isinstance(replayed[-1], Completed) and replayed[-1].provider == "ollama"


# The mapping and the encoder on their own (protocol/responses_compat.py).


def _completion(**request: Any) -> Any:
    body = {"model": "openai/gpt-4o-mini", **request}
    return decode_responses_request(msgspec.json.encode(body)).to_completion()


def test_request_mapping_of_items_tools_and_options() -> None:
    completion = _completion(
        instructions="Be brief.", max_output_tokens=50, temperature=0.2,
        reasoning={"effort": "high", "summary": "auto"},
        tools=[WEATHER_TOOL], tool_choice="required",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Look: "},
                                         {"type": "input_image", "image_url": "data:image/png;base64,AAAA",
                                          "detail": "low"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hm"}]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "18 C"},
        ])
    messages = [msgspec.to_builtins(message) for message in completion.messages]
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Look: "},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                                         "detail": "low"}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "content": "18 C", "tool_call_id": "call_1"},
    ]
    assert completion.max_tokens == 50 and completion.temperature == 0.2
    assert completion.reasoning == {"effort": "high", "summary": "auto"}
    assert completion.tool_choice == "required"
    assert completion.tools == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city", "parameters": WEATHER_TOOL["parameters"]}}]
    assert _completion(input="hi").messages[0].content == "hi"
    refused_before = _completion(input=[{"type": "message", "role": "assistant", "content": [
        {"type": "refusal", "refusal": "I can't."}]}, {"role": "user", "content": "Why?"}])
    assert [(m.role, m.content) for m in refused_before.messages] == [("assistant", "I can't."), ("user", "Why?")]
    assert _completion(input="x", reasoning={"effort": "none"}).reasoning is None


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"input": "x", "top_p": 0.5}, "top_p"),
    ({"input": "x", "user": "u-1"}, "user"),
    ({"input": "x", "metadata": {"k": "v"}}, "metadata"),
    ({"input": "x", "parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"input": "x", "text": {"format": {"type": "json_object"}}}, "text.format"),
])
def test_a_field_with_a_completion_counterpart_is_carried_when_the_completion_has_it(
        request_fields: dict[str, Any], field: str) -> None:
    name = {"text.format": "response_format"}.get(field, field)
    if name in COMPLETION_FIELDS:
        assert getattr(_completion(**request_fields), name) is not None
    else:
        with pytest.raises(FieldRefused) as refused:
            _completion(**request_fields)
        assert refused.value.param == field and f"`{field}`" in refused.value.message


def test_bad_bodies_are_refused() -> None:
    with pytest.raises(ProtocolError) as not_json:
        decode_responses_request(b"{")
    assert not_json.value.code == "invalid_json"
    with pytest.raises(FieldRefused) as no_input:
        decode_responses_request(b'{"model": "openai/gpt-4o-mini"}')
    assert "input" in no_input.value.message
    for bad, param in ((dict(input=[]), "input"), (dict(input="x", max_output_tokens=0), "max_output_tokens"),
                       (dict(input="x", reasoning={"effort": "huge"}), "reasoning.effort"),
                       (dict(input=[{"role": "tool", "content": "x"}]), "input[0].role"),
                       (dict(input="x", tool_choice={"type": "web_search"}), "tool_choice.type")):
        with pytest.raises(FieldRefused) as refused:
            _completion(**bad)
        assert refused.value.param == param


def test_encoder_items_events_and_the_response_it_keeps() -> None:
    request = decode_responses_request(b'{"model": "m", "input": "x", "stream": true}')
    encoder = ResponseEncoder("resp_c1", 1700000000, request)
    data = encoder.start()
    for message in (ThinkingStatus("c1", 1, "thinking", "Let me "), ThinkingStatus("c1", 2, "thinking", "see."),
                    ThinkingStatus("c1", 3, "done"), ContentChunk("c1", 4, "Hello"), ContentChunk("c1", 5, " there"),
                    RefusalChunk("c1", 6, "No."),
                    ToolCallMessage("c1", 7, "call_9", "lookup", {"q": 1}),
                    Completed("c1", 8, "length", "openai", "m", UsageInfo(3, 4, 7, 2))):
        data += encoder.encode(message)
    decoder = SSEDecoder()
    events = decoder.feed(data) + decoder.close()
    kinds = [event.event for event in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta"]
    assert kinds[-1] == "response.incomplete"
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 3
    assert kinds.count("response.content_part.added") == 2  # output_text, then refusal
    response = encoder.response()
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"] == [
        {"type": "reasoning", "id": "rs_c1_0", "summary": [{"type": "summary_text", "text": "Let me see."}],
         "status": "completed"},
        {"type": "message", "id": "msg_c1_1", "status": "completed", "role": "assistant", "content": [
            {"type": "output_text", "text": "Hello there", "annotations": []}, {"type": "refusal", "refusal": "No."}]},
        {"type": "function_call", "id": "fc_c1_2", "call_id": "call_9", "name": "lookup", "arguments": '{"q":1}',
         "status": "completed"},
    ]
    assert response["usage"]["output_tokens_details"] == {"reasoning_tokens": 2}
    failing = ResponseEncoder("resp_c2", 0, request)
    failing.start()
    out = failing.encode(ErrorMessage(ErrorInfo("rate_limited", "slow down", True, 429), "c2", 1))
    names = [event.event for event in SSEDecoder().feed(out)]
    assert names == ["error", "response.failed"]
    assert failing.response()["error"] == {"code": "rate_limit_exceeded", "message": "slow down"}


# Fidelity: the same upstream stream, from OpenAI itself and through the hub.

FIDELITY = ["openai_responses_text.sse", "openai_responses_function_call.sse"]


def _comparable(response: Any) -> dict[str, Any]:
    """What must be equal: the output items' text, tool and reasoning fields, the status and
    the token counts. Not compared: ids of the response and its items (the hub's derive from
    its completion id), ``model`` (the hub reports the name the client asked for), the
    echoed request fields, ``created_at``, the spacing of a call's arguments (their JSON value
    is compared)."""
    items = []
    for item in response.output:
        if item.type == "message":
            items.append({"type": "message", "role": item.role, "status": item.status,
                          "content": [part.model_dump(exclude_none=True) for part in item.content]})
        elif item.type == "function_call":
            # The JSON value: the hub carries a call's parsed arguments and writes them compactly,
            # so a provider's spacing ('{"city": "Paris"}') does not survive (the value does).
            items.append({"type": "function_call", "call_id": item.call_id, "name": item.name,
                          "arguments": msgspec.json.decode(item.arguments), "status": item.status})
        else:
            items.append({"type": item.type, "summary": [part.text for part in item.summary]})
    usage = response.usage
    return {"status": response.status, "output": items, "output_text": response.output_text,
            "usage": (usage.input_tokens, usage.output_tokens, usage.total_tokens,
                      usage.output_tokens_details.reasoning_tokens)}


@requires_shared
@pytest.mark.parametrize("fixture", FIDELITY)
async def test_the_sdk_builds_the_same_response_from_the_hub_as_from_openai(hub: Hub, mock: MockProvider,
                                                                           fixture: str) -> None:
    prompt = f"[[mock replay={SHARED_FIXTURES / fixture} seed=4]]"
    async with sdk(mock.url) as direct:  # OpenAI itself: the mock serves the recording's bytes
        async with direct.responses.stream(model="gpt-4o-2024-08-06", input=prompt) as stream:
            expected = await stream.get_final_response()
    async with sdk(hub.url) as client:
        async with client.responses.stream(model="openai_responses/gpt-4o-2024-08-06", input=prompt) as stream:
            through_hub = await stream.get_final_response()
    assert _comparable(through_hub) == _comparable(expected)
    assert expected.output  # the recording did produce a response


async def test_reasoning_text_and_a_call_from_a_responses_upstream_come_out_as_sent(hub: Hub, mock: MockProvider) -> None:
    """No recording has reasoning summaries: the mock's Responses stream (a reasoning item, a
    message, a function call) read by the SDK straight from the mock and through the hub
    gives the same Response on the compared fields."""
    prompt = "Go [[mock tokens=6 reasoning=4 tool=get_weather seed=11]]"
    async with sdk(mock.url) as direct:
        async with direct.responses.stream(model="o4-mini", input=prompt, tools=[WEATHER_TOOL]) as stream:  # type: ignore[list-item]
            expected = await stream.get_final_response()
    async with sdk(hub.url) as client:
        async with client.responses.stream(model="openai_responses/o4-mini", input=prompt,
                                           tools=[WEATHER_TOOL]) as stream:  # type: ignore[list-item]
            through_hub = await stream.get_final_response()
    assert [item.type for item in expected.output] == ["reasoning", "message", "function_call"]
    assert _comparable(through_hub) == _comparable(expected)


async def test_a_waiting_stream_gets_keepalive_comments_and_the_sdk_reads_through_them(mock: MockProvider) -> None:
    """No answer yet (the mock holds its stream at a gate): the headers, ``response.created``
    and ``response.in_progress`` go out after ``sse_keepalive_interval_s``, then one
    ``: keepalive`` comment per interval; once the gate opens the answer follows."""
    config = hub_config(mock, openai_responses_base_url=mock.url + "/v1", sse_keepalive_interval_s=0.05)
    async with run_test_hub(config) as hub:
        body = {"model": "openai/gpt-4o-mini", "stream": True, "input": "Hi [[mock tokens=3 seed=9 gate=resp-ka]]"}
        async with aiohttp.ClientSession() as session, session.post(hub.url + "/v1/responses", json=body) as response:
            assert response.status == 200
            raw = b""
            while raw.count(b": keepalive\n\n") < 2:
                raw += await response.content.readany()
            assert raw.startswith(b"event: response.created\n")
            assert b"event: response.in_progress\n" in raw and b"response.output_text.delta" not in raw
            mock.release("resp-ka")
            raw += await response.content.read()
        events = SSEDecoder().feed(raw)
        assert events[-1].event == "response.completed"
        deltas = [msgspec.json.decode(e.data)["delta"] for e in events if e.event == "response.output_text.delta"]
        assert "".join(deltas) == expected_text(3, seed=9)
        async with sdk(hub.url) as client:  # the SDK reads through comments (the gate stays open now)
            async with client.responses.stream(model="openai/gpt-4o-mini", input=body["input"]) as stream:
                assert (await stream.get_final_response()).output_text == expected_text(3, seed=9)


async def test_the_sdk_s_api_key_is_the_credential(mock: MockProvider) -> None:
    from hub.auth import api_key_digest
    from hub.config import ApiKeyEntry

    key = "sk-hub-responses-test-key"
    entry = ApiKeyEntry(name="sdk", sha256=api_key_digest(key), subject="sdk-user")
    async with run_test_hub(hub_config(mock, auth_mode="api_key", api_keys=[entry])) as hub:
        async with openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key=key, max_retries=0) as client:
            response = await client.responses.create(model="openai/gpt-4o-mini", input="[[mock tokens=2]]")
            assert response.output_text == expected_text(2)
        async with openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="sk-wrong", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError) as refused:
                await client.responses.create(model="openai/gpt-4o-mini", input="x")
    assert refused.value.body["code"] == "invalid_token"  # type: ignore[index]
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.skipif("response_format" not in COMPLETION_FIELDS, reason="the completion carries no response_format yet")
async def test_options_reach_a_responses_upstream_in_its_own_terms(hub: Hub, mock: MockProvider) -> None:
    """Through the hub and back into the Responses API: ``text.format`` (via the completion's
    ``response_format``), ``top_p``, ``user`` and ``parallel_tool_calls`` arrive as the client
    wrote them."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    text_format = {"type": "json_schema", "name": "City", "schema": schema, "strict": True}
    async with sdk(hub.url) as client:
        await client.responses.create(model="openai_responses/o4-mini", input="x [[mock tokens=1]]",
                                      text={"format": text_format}, top_p=0.5, user="u-7",  # type: ignore[arg-type]
                                      parallel_tool_calls=False, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    body = mock.requests[-1]["body"]
    assert mock.requests[-1]["path"] == "/v1/responses"
    assert body["text"] == {"format": text_format}
    assert (body["top_p"], body["user"], body["parallel_tool_calls"]) == (0.5, "u-7", False)
