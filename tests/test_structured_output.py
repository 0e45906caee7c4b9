"""Structured output (issue 14, "No silent drops"): the openai SDK's
``chat.completions.parse(response_format=Model)`` through the hub for every provider kind, the
provider-specific fields the mock received, the JSON-schema conversion for Gemini, and the
refusals (docs/PROTOCOL.md "Request fields per provider")."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from hub.testing.mock_provider import _check_request, example_for_schema
from protocol.errors import ProviderError
from protocol.messages import ChatMessage, Completion
from protocol.providers import gemini
from protocol.providers.base import ProviderSettings

MODELS = {"openai": "openai/gpt-4o-mini", "anthropic": "anthropic/claude-sonnet-4-5",
          "google": "google/gemini-2.5-flash", "ollama": "ollama/llama3.2"}


class Mayor(BaseModel):
    name: str
    terms: int


class City(BaseModel):
    name: str
    population: int
    area_km2: float
    tags: list[str]
    capital: bool
    mayor: Mayor | None


EXPECTED = City(name="mock", population=1, area_km2=1.5, tags=["mock"], capital=True,
                mayor=Mayor(name="mock", terms=1))


def sdk(hub: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="not-needed", max_retries=0)


def _walk(node: Any) -> list[str]:
    """Every key anywhere in a JSON value."""
    if isinstance(node, dict):
        return [*node, *(key for value in node.values() for key in _walk(value))]
    if isinstance(node, list):
        return [key for value in node for key in _walk(value)]
    return []


@pytest.mark.parametrize("kind", list(MODELS))
async def test_parse_pydantic_model_through_every_provider(hub: Any, mock: Any, kind: str) -> None:
    client = sdk(hub)
    completion = await client.chat.completions.parse(
        model=MODELS[kind], messages=[{"role": "user", "content": "A city, as JSON."}], response_format=City)
    await client.close()
    assert completion.choices[0].message.parsed == EXPECTED
    body = mock.requests[-1]["body"]
    if kind == "openai":
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "City"
        assert fmt["json_schema"]["strict"] is True
        assert set(fmt["json_schema"]["schema"]["properties"]) == set(City.model_fields)
    elif kind == "anthropic":
        fmt = body["output_config"]["format"]
        assert fmt["type"] == "json_schema"
        assert set(fmt["schema"]["properties"]) == set(City.model_fields)
        assert "response_format" not in body
    elif kind == "google":
        generation = body["generationConfig"]
        assert generation["responseMimeType"] == "application/json"
        schema = generation["responseSchema"]
        assert schema["type"] == "OBJECT" and schema["propertyOrdering"] == list(City.model_fields)
        assert schema["properties"]["mayor"]["nullable"] is True
        assert schema["properties"]["mayor"]["properties"]["terms"] == {"type": "INTEGER", "title": "Terms"}
        assert schema["properties"]["tags"]["items"] == {"type": "STRING"}
        assert not {"$ref", "$defs", "additionalProperties"} & set(_walk(schema))
    else:
        assert body["format"]["type"] == "object"
        assert set(body["format"]["properties"]) == set(City.model_fields)


@pytest.mark.parametrize("stream", [True, False])
async def test_parse_streamed_and_not_on_gemini(hub: Any, stream: bool) -> None:
    client = sdk(hub)
    if stream:
        async with client.chat.completions.stream(model=MODELS["google"], response_format=City,
                                                  messages=[{"role": "user", "content": "A city"}]) as events:
            final = await events.get_final_completion()
    else:
        final = await client.chat.completions.parse(model=MODELS["google"], response_format=City,
                                                    messages=[{"role": "user", "content": "A city"}])
    await client.close()
    assert final.choices[0].message.parsed == EXPECTED


@pytest.mark.parametrize("kind", ["openai", "google", "ollama"])
async def test_json_object_mode(hub: Any, mock: Any, kind: str) -> None:
    client = sdk(hub)
    answer = await client.chat.completions.create(
        model=MODELS[kind], messages=[{"role": "user", "content": "JSON please"}],
        response_format={"type": "json_object"})
    await client.close()
    assert answer.choices[0].message.content == '{"mock": "json"}'
    body = mock.requests[-1]["body"]
    if kind == "openai":
        assert body["response_format"] == {"type": "json_object"}
    elif kind == "google":
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        assert "responseSchema" not in body["generationConfig"]
    else:
        assert body["format"] == "json"


async def test_json_object_is_refused_by_anthropic_naming_field_and_provider(hub: Any, mock: Any) -> None:
    client = sdk(hub)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=MODELS["anthropic"], messages=[{"role": "user", "content": "JSON"}],
            response_format={"type": "json_object"})
    await client.close()
    message = caught.value.body["message"]  # type: ignore[index]
    assert "`response_format`" in message and "anthropic" in message and "schema" in message
    assert caught.value.body["code"] == "invalid_message"  # type: ignore[index]
    assert mock.requests == []  # refused before any upstream request


async def test_a_schema_keyword_gemini_lacks_is_refused_by_name(hub: Any, mock: Any) -> None:
    client = sdk(hub)
    schema = {"type": "object", "properties": {"x": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=MODELS["google"], messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "X", "schema": schema}})
    await client.close()
    message = caught.value.body["message"]  # type: ignore[index]
    assert "`oneOf`" in message and "google" in message and "`response_format`" in message
    assert mock.requests == []


def test_gemini_schema_conversion_rules() -> None:
    converted = gemini.gemini_schema({
        "type": "object", "additionalProperties": False, "required": ["a"],
        "properties": {"a": {"type": ["string", "null"], "enum": ["x", "y"]},
                       "b": {"const": "only"},
                       "c": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                       "d": {"$ref": "#/$defs/D"}},
        "$defs": {"D": {"type": "array", "items": {"type": "number"}, "minItems": 2}}})
    assert converted == {
        "type": "OBJECT", "required": ["a"], "propertyOrdering": ["a", "b", "c", "d"],
        "properties": {"a": {"type": "STRING", "nullable": True, "enum": ["x", "y"]},
                       "b": {"enum": ["only"]},
                       "c": {"anyOf": [{"type": "INTEGER"}, {"type": "STRING"}]},
                       "d": {"type": "ARRAY", "items": {"type": "NUMBER"}, "minItems": 2}}}


@pytest.mark.parametrize(("schema", "keyword"), [
    ({"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}},
      "$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}}, "$ref"),
    ({"type": "object", "additionalProperties": {"type": "string"}}, "additionalProperties"),
    ({"allOf": [{"type": "string"}]}, "allOf"),
    ({"type": ["string", "integer"]}, "type"),
    ({"type": "string", "not": {"enum": ["x"]}}, "not"),
    ({"$ref": "https://example.com/schema.json"}, "$ref"),
])
def test_gemini_schema_refusals_name_the_keyword(schema: dict[str, Any], keyword: str) -> None:
    with pytest.raises(ProviderError) as caught:
        gemini.gemini_schema(schema)
    assert caught.value.code == "invalid_message"
    assert f"`{keyword}`" in str(caught.value) and "google" in str(caught.value)


def test_the_mock_refuses_what_the_real_apis_would() -> None:
    """The mock's checks catch a builder that sends a field under the wrong name or shape."""
    bad = [
        ("gemini", {"contents": [], "generationConfig": {"responseSchema": {"type": "OBJECT"}}}),
        ("gemini", {"contents": [], "generationConfig": {"responseMimeType": "application/json",
                                                         "responseSchema": {"type": "OBJECT",
                                                                            "additionalProperties": False}}}),
        ("gemini", {"contents": [], "generationConfig": {"top_p": 0.5}}),
        ("anthropic", {"model": "m", "messages": [], "max_tokens": 5, "response_format": {"type": "json_object"}}),
        ("anthropic", {"model": "m", "messages": [], "max_tokens": 5, "output_config": {"format": {"type": "json"}}}),
        ("anthropic", {"model": "m", "messages": [], "max_tokens": 5, "seed": 1}),
        ("openai", {"model": "m", "messages": [], "response_format": {"type": "json_schema",
                                                                       "json_schema": {"schema": {}}}}),
        ("ollama", {"model": "m", "messages": [{"role": "user", "content": "x", "images": ["not base64!"]}]}),
    ]
    for kind, body in bad:
        with pytest.raises(ValueError):
            _check_request(kind, body)
    assert _check_request("ollama", {"model": "m", "format": {"type": "integer"}}) == "1"


def test_example_for_schema_follows_refs_and_nullables() -> None:
    assert example_for_schema(City.model_json_schema()) == EXPECTED.model_dump()


def test_websocket_completion_carries_response_format_to_the_builder() -> None:
    """The WebSocket ``completion`` message has the same field; the builder reads it."""
    request = Completion(model="ollama/llama3.2", messages=[ChatMessage(role="user", content="x")],
                         response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": {
                             "type": "object"}}})
    from protocol.providers import ollama
    built = ollama.build_request(request, "llama3.2", ProviderSettings(base_url="http://h:1"))
    assert built.body["format"] == {"type": "object"}


def test_gemini_schema_conversion_work_is_bounded() -> None:
    """Each definition uses the next twice: over 2**14 nodes once inlined, refused at 5000."""
    defs = {f"D{i}": {"type": "object", "properties": {"a": {"$ref": f"#/$defs/D{i + 1}"},
                                                      "b": {"$ref": f"#/$defs/D{i + 1}"}}} for i in range(14)}
    defs["D14"] = {"type": "string"}
    with pytest.raises(ProviderError) as caught:
        gemini.gemini_schema({"$ref": "#/$defs/D0", "$defs": defs})
    assert "5000 nodes" in str(caught.value)


def test_the_mocks_example_is_bounded_work() -> None:
    defs = {f"D{i}": {"type": "object", "properties": {"a": {"$ref": f"#/$defs/D{i + 1}"},
                                                      "b": {"$ref": f"#/$defs/D{i + 1}"}}} for i in range(30)}
    example = example_for_schema({"$ref": "#/$defs/D0", "$defs": defs})  # 2**30 leaves unbounded
    assert isinstance(example, dict) and len(json.dumps(example)) < 200_000
    assert len(example_for_schema({"type": "array", "items": {"type": "integer"}, "minItems": 10**9})) == 100
