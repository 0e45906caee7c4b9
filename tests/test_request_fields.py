"""No silent drops (issue 14 item 2): each OpenAI Chat Completions request field is carried to
each provider in its own terms (asserted on the request the mock provider received) or refused
with HTTP 400 ``invalid_message`` naming the field and the provider, through the hub with the
real openai SDK; the same fields on the WebSocket ``completion`` message; unknown fields; the
generated table in docs/PROTOCOL.md (protocol/request_fields.py)."""

from __future__ import annotations

import base64
from typing import Any

import openai
import pytest

from protocol.messages import Completed, ErrorMessage
from protocol.request_fields import FIELDS, PROVIDER_KINDS, render_table
from tests.test_structured_output import City
from tools.gen_docs import PROTOCOL_PATH, ROOT

MODELS = {"openai": "openai/gpt-4o-mini", "anthropic": "anthropic/claude-sonnet-4-5",
          "google": "google/gemini-2.5-flash", "ollama": "ollama/llama3.2"}

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(24))).decode()
DATA_URL = f"data:image/png;base64,{PNG}"
HTTP_URL = "https://images.example.com/cat.jpg"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def sdk(hub: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="not-needed", max_retries=0)


async def _create(hub: Any, kind: str, content: Any = "Hi [[mock tokens=2]]", **options: Any) -> Any:
    client = sdk(hub)
    try:
        return await client.chat.completions.create(
            model=MODELS[kind], messages=[{"role": "user", "content": content}], **options)
    finally:
        await client.close()


async def _refused(hub: Any, kind: str, field: str, **options: Any) -> str:
    """The 400 message of a request the hub refuses; it names ``field`` and the provider."""
    with pytest.raises(openai.BadRequestError) as caught:
        await _create(hub, kind, **options)
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "invalid_message"
    message = str(body["message"])
    assert f"`{field}`" in message and kind in message, message
    return message


# Sampling options: carried (asserted on the received request) or refused.

#: Where each provider's API takes the options (docs/PROTOCOL.md "Request fields per provider").
SAMPLING = {"stop": ["END"], "seed": 7, "top_p": 0.5, "presence_penalty": 0.25, "frequency_penalty": -0.5}
RECEIVED: dict[str, dict[str, tuple[str, ...]]] = {
    "openai": {field: (field,) for field in SAMPLING},
    "anthropic": {"stop": ("stop_sequences",), "top_p": ("top_p",)},
    "google": {"stop": ("generationConfig", "stopSequences"), "seed": ("generationConfig", "seed"),
               "top_p": ("generationConfig", "topP"), "presence_penalty": ("generationConfig", "presencePenalty"),
               "frequency_penalty": ("generationConfig", "frequencyPenalty")},
    "ollama": {"stop": ("options", "stop"), "seed": ("options", "seed"), "top_p": ("options", "top_p"),
               "presence_penalty": ("options", "presence_penalty"),
               "frequency_penalty": ("options", "frequency_penalty")},
}


def _at(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        body = body[key]
    return body


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("field", list(SAMPLING))
async def test_sampling_option_carried_or_refused(hub: Any, mock: Any, kind: str, field: str) -> None:
    path = RECEIVED[kind].get(field)
    if path is None:
        assert FIELDS[field][kind].status == "refused"
        await _refused(hub, kind, field, **{field: SAMPLING[field]})
        assert mock.requests == []
        return
    answer = await _create(hub, kind, **{field: SAMPLING[field]})
    assert answer.choices[0].message.content
    assert _at(mock.requests[-1]["body"], path) == SAMPLING[field]
    assert FIELDS[field][kind].status in ("carried", "mapped")


@pytest.mark.parametrize("kind", list(MODELS))
async def test_stop_as_one_string_becomes_the_providers_list(hub: Any, mock: Any, kind: str) -> None:
    await _create(hub, kind, stop="END")
    received = _at(mock.requests[-1]["body"], RECEIVED[kind]["stop"])
    assert received == ("END" if kind == "openai" else ["END"])


# n, logprobs, user, parallel_tool_calls.


@pytest.mark.parametrize("kind", [kind for kind in MODELS if kind != "openai"])
async def test_n_above_one_is_refused_naming_n_and_the_provider(hub: Any, mock: Any, kind: str) -> None:
    message = await _refused(hub, kind, "n", n=2)
    assert "one choice" in message
    await _refused(hub, kind, "n", n=2, stream=True)
    assert mock.requests == []


async def test_n_is_carried_to_openai(hub: Any, mock: Any) -> None:
    answer = await _create(hub, "openai", n=2)  # tests/test_choices.py checks each choice
    assert [choice.index for choice in answer.choices] == [0, 1]
    assert mock.requests[-1]["body"]["n"] == 2
    assert FIELDS["n"]["openai"].status == "carried"


@pytest.mark.parametrize("kind", list(MODELS))
async def test_n_of_one_asks_for_nothing_and_passes(hub: Any, mock: Any, kind: str) -> None:
    answer = await _create(hub, kind, n=1)
    assert [choice.index for choice in answer.choices] == [0]
    # OpenAI gets it as given (its own field, its default); the others have no such field.
    assert mock.requests[-1]["body"].get("n") == (1 if kind == "openai" else None)


@pytest.mark.parametrize("kind", list(MODELS))
async def test_logprobs_are_refused_everywhere(hub: Any, mock: Any, kind: str) -> None:
    await _refused(hub, kind, "logprobs", logprobs=True)
    await _refused(hub, kind, "top_logprobs", top_logprobs=3)
    answer = await _create(hub, kind, logprobs=False)  # the default asks for nothing
    assert answer.choices[0].logprobs is None


async def test_user_is_carried_or_mapped_or_refused(hub: Any, mock: Any) -> None:
    await _create(hub, "openai", user="alice")
    assert mock.requests[-1]["body"]["user"] == "alice"
    await _create(hub, "anthropic", user="alice")
    assert mock.requests[-1]["body"]["metadata"] == {"user_id": "alice"}
    for kind in ("google", "ollama"):
        await _refused(hub, kind, "user", user="alice")


async def test_parallel_tool_calls(hub: Any, mock: Any) -> None:
    await _create(hub, "openai", tools=TOOLS, parallel_tool_calls=False)
    assert mock.requests[-1]["body"]["parallel_tool_calls"] is False
    await _create(hub, "anthropic", tools=TOOLS, parallel_tool_calls=False)
    assert mock.requests[-1]["body"]["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    await _create(hub, "anthropic", tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert mock.requests[-1]["body"]["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    for kind in ("google", "ollama"):
        await _refused(hub, kind, "parallel_tool_calls", tools=TOOLS, parallel_tool_calls=False)
        await _create(hub, kind, tools=TOOLS, parallel_tool_calls=True)  # their default


# Images.

IMAGE_CONTENT = [{"type": "text", "text": "What is this? [[mock tokens=2]]"},
                 {"type": "image_url", "image_url": {"url": DATA_URL, "detail": "low"}},
                 {"type": "image_url", "image_url": {"url": HTTP_URL}}]


async def test_images_reach_openai_as_given(hub: Any, mock: Any) -> None:
    await _create(hub, "openai", content=IMAGE_CONTENT)
    assert mock.requests[-1]["body"]["messages"][0]["content"] == IMAGE_CONTENT


async def test_images_become_anthropic_image_blocks(hub: Any, mock: Any) -> None:
    await _create(hub, "anthropic", content=IMAGE_CONTENT)
    assert mock.requests[-1]["body"]["messages"][0]["content"] == [
        {"type": "text", "text": "What is this? [[mock tokens=2]]"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": HTTP_URL}},
    ]


async def test_images_become_gemini_inline_and_file_data(hub: Any, mock: Any) -> None:
    await _create(hub, "google", content=IMAGE_CONTENT)
    assert mock.requests[-1]["body"]["contents"][0]["parts"] == [
        {"text": "What is this? [[mock tokens=2]]"},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": HTTP_URL}},
    ]
    message = await _refused(hub, "google", "image_url", content=[
        {"type": "image_url", "image_url": {"url": "https://example.com/picture"}}])
    assert "MIME type" in message


async def test_images_become_ollama_images_and_an_http_url_is_refused(hub: Any, mock: Any) -> None:
    await _create(hub, "ollama", content=IMAGE_CONTENT[:2])
    received = mock.requests[-1]["body"]["messages"][0]
    assert received["images"] == [PNG]
    assert received["content"] == "What is this? [[mock tokens=2]]"
    message = await _refused(hub, "ollama", "image_url", content=IMAGE_CONTENT)
    assert "does not fetch URLs" in message
    assert len(mock.requests) == 1


@pytest.mark.parametrize("kind", ["anthropic", "google", "ollama"])
async def test_other_content_parts_are_refused_by_name(hub: Any, mock: Any, kind: str) -> None:
    audio = [{"type": "input_audio", "input_audio": {"data": PNG, "format": "wav"}}]
    await _refused(hub, kind, "input_audio", content=audio)
    await _refused(hub, kind, "image_url", content=[{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}])
    assert mock.requests == []


# Unknown fields, the WebSocket message, the table.


async def test_unknown_fields_are_refused_all_named(hub: Any, mock: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await _create(hub, "openai", extra_body={"top_k": 3, "logit_bias": {"1": 2}})
    message = caught.value.body["message"]  # type: ignore[index]
    assert "`logit_bias`" in message and "`top_k`" in message
    assert mock.requests == []


async def test_out_of_range_values_are_refused_naming_the_field(hub: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await _create(hub, "openai", top_p=1.5)
    assert "top_p" in caught.value.body["message"]  # type: ignore[index]


async def test_websocket_completion_carries_the_same_fields(ws_connect: Any, mock: Any) -> None:
    client = await ws_connect()
    await client.send({"type": "completion", "id": "rf-1", "model": MODELS["ollama"],
                       "messages": [{"role": "user", "content": "Hi [[mock tokens=2]]"}],
                       "seed": 11, "top_p": 0.25, "response_format": {"type": "json_object"}})
    messages = await client.until_terminal("rf-1")
    assert isinstance(messages[-1], Completed)
    body = mock.requests[-1]["body"]
    assert body["options"]["seed"] == 11 and body["options"]["top_p"] == 0.25 and body["format"] == "json"
    await client.send({"type": "completion", "id": "rf-2", "model": MODELS["anthropic"],
                       "messages": [{"role": "user", "content": "Hi"}], "seed": 11})
    messages = await client.until_terminal("rf-2")
    error = messages[-1]
    assert isinstance(error, ErrorMessage) and error.error.code == "invalid_message"
    assert "`seed`" in error.error.message and "anthropic" in error.error.message


def test_every_field_has_every_provider_and_the_docs_show_the_table() -> None:
    for field, per_provider in FIELDS.items():
        assert set(per_provider) == set(PROVIDER_KINDS), field
        for support in per_provider.values():
            assert support.status in ("carried", "mapped", "refused")
            assert support.status == "carried" or support.how, field
    assert render_table() in (ROOT / PROTOCOL_PATH).read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", ["openai", "google"])
async def test_reasoning_tokens_in_usage(hub: Any, kind: str) -> None:
    answer = await _create(hub, kind, content="Think [[mock tokens=3 reasoning=4]]", reasoning_effort="low")
    assert answer.usage is not None and answer.usage.completion_tokens_details is not None
    assert answer.usage.completion_tokens_details.reasoning_tokens == 4


# Tools: strict, parameters in Gemini's subset; an assistant's refusal part as history.


def _city_tool(strict: bool) -> dict[str, Any]:
    return openai.pydantic_function_tool(City) if strict else {
        "type": "function", "function": {"name": "City", "parameters": City.model_json_schema()}}


async def test_strict_tools_carried_to_openai_and_anthropic(hub: Any, mock: Any) -> None:
    await _create(hub, "openai", tools=[_city_tool(strict=True)])
    assert mock.requests[-1]["body"]["tools"][0]["function"]["strict"] is True
    await _create(hub, "anthropic", tools=[_city_tool(strict=True)])
    tool = mock.requests[-1]["body"]["tools"][0]
    assert tool["strict"] is True and tool["name"] == "City" and tool["input_schema"]["type"] == "object"


@pytest.mark.parametrize("kind", ["google", "ollama"])
async def test_strict_tools_refused_where_the_provider_cannot_guarantee_them(hub: Any, mock: Any, kind: str) -> None:
    await _refused(hub, kind, "tools[].function.strict", tools=[_city_tool(strict=True)])
    assert mock.requests == []


async def test_gemini_tool_parameters_outside_its_subset_are_converted(hub: Any, mock: Any) -> None:
    await _create(hub, "google", tools=[_city_tool(strict=False)])  # $defs, anyOf-null: the mock refuses those
    parameters = mock.requests[-1]["body"]["tools"][0]["functionDeclarations"][0]["parameters"]
    assert parameters["type"] == "OBJECT" and parameters["properties"]["mayor"]["nullable"] is True
    await _create(hub, "google", tools=TOOLS)  # already in the subset: as given
    assert mock.requests[-1]["body"]["tools"][0]["functionDeclarations"][0]["parameters"] == {"type": "object"}
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "patternProperties": {}}}}
    message = await _refused(hub, "google", "tools[].function.parameters", tools=[bad])
    assert "`patternProperties`" in message


async def test_an_assistant_refusal_part_in_history_is_carried_as_text(hub: Any, mock: Any) -> None:
    client = sdk(hub)
    await client.chat.completions.create(model=MODELS["anthropic"], messages=[
        {"role": "user", "content": "Do it"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
        {"role": "user", "content": "Fine [[mock tokens=2]]"}])
    await client.close()
    assert mock.requests[-1]["body"]["messages"][1] == {"role": "assistant", "content": "I can't."}


async def test_tool_choice_on_ollama(hub: Any, mock: Any) -> None:
    await _create(hub, "ollama", tools=TOOLS, tool_choice="auto")
    assert mock.requests[-1]["body"]["tools"] == TOOLS
    await _create(hub, "ollama", tools=TOOLS, tool_choice="none")
    assert "tools" not in mock.requests[-1]["body"]
    await _refused(hub, "ollama", "tool_choice", tools=TOOLS, tool_choice="required")
    await _refused(hub, "ollama", "tool_choice", tools=TOOLS,
                   tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert len(mock.requests) == 2


@pytest.mark.parametrize(("model", "effort", "think"), [
    ("ollama/gpt-oss:20b", "high", "high"), ("ollama/gpt-oss:120b", "low", "low"),
    ("ollama/gpt-oss:20b", "minimal", True), ("ollama/qwen3", "high", True)])
async def test_reasoning_effort_on_ollama(hub: Any, mock: Any, model: str, effort: str, think: Any) -> None:
    client = sdk(hub)
    await client.chat.completions.create(model=model, reasoning_effort=effort,  # type: ignore[arg-type]
                                         messages=[{"role": "user", "content": "Hi [[mock tokens=2]]"}])
    await client.close()
    assert mock.requests[-1]["body"]["think"] == think
