"""Google Gemini ``streamGenerateContent``: the description, the request builder, and the
normalizer (:class:`~protocol.normalizers.gemini.GeminiNormalizer`).

Request (docs/PROVIDERS.md §3.1): ``POST {base_url}/v1beta/models/{model}:streamGenerateContent
?alt=sse`` with the key in the ``x-goog-api-key`` header (never in the URL). The client's
OpenAI-shaped request is translated:

- roles become ``user`` and ``model``; ``system``/``developer`` texts become
  ``systemInstruction``;
- assistant tool calls become ``functionCall`` parts (with the ``thoughtSignature`` the hub
  sent in ``tool_call.signature``, when the client passes it back as ``signature``); tool
  results become ``functionResponse`` parts named after their call, consecutive ones in one
  ``user`` turn;
- ``max_tokens``, ``temperature``, ``stop`` and reasoning go into ``generationConfig``
  (``thinkingConfig.includeThoughts`` and a ``thinkingBudget``);
- tools become ``functionDeclarations`` (``parameters`` outside Gemini's schema subset
  converted by :func:`gemini_schema`; ``strict: true`` refused); ``tool_choice`` becomes
  ``toolConfig.functionCallingConfig`` (AUTO, ANY, NONE, or ANY with one allowed name);
- ``image_url`` parts of user messages become ``inlineData: {mimeType, data}`` (a data URL)
  or ``fileData: {mimeType, fileUri}`` (an http(s) URL, the MIME type from the file name's
  extension; another URL is refused) (Gemini API docs, "Image understanding");
- ``response_format`` becomes ``generationConfig.responseMimeType: application/json``, with
  ``responseSchema`` for a ``json_schema`` (:func:`gemini_schema`: Gemini's OpenAPI 3.0
  subset; Gemini API docs, "Structured output", and API reference ``Schema``);
- ``top_p``, ``seed``, ``presence_penalty``, ``frequency_penalty`` become ``generationConfig``
  ``topP``, ``seed``, ``presencePenalty``, ``frequencyPenalty`` (API reference,
  ``GenerationConfig``); ``user``, ``parallel_tool_calls: false``, ``logprobs`` and ``n`` above
  1 are refused (protocol/request_fields.py; docs/PROVIDERS.md §3.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from protocol.messages import ChatMessage, Completion
from protocol.normalizers.gemini import GeminiNormalizer
from protocol.providers.base import (
    THINKING_BUDGET,
    ProviderSettings,
    ProviderSpec,
    UpstreamRequest,
    effort_of,
    text_of,
    tool_call_parts,
)
from protocol.request_fields import (
    Image,
    content_parts,
    joined_text,
    json_format,
    refusal,
    refuse,
    refuse_unsupported,
    strict_tools,
)

__all__ = ["SPEC", "build_request", "gemini_schema", "GeminiNormalizer"]


#: MIME types of images by file name extension, for ``fileData`` (Gemini API docs, "Image
#: understanding": PNG, JPEG, WEBP, HEIC, HEIF; GIF is read as well).
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                ".gif": "image/gif", ".heic": "image/heic", ".heif": "image/heif"}


def _part(part: str | Image) -> dict[str, Any]:
    """A ``text``, ``inlineData`` or ``fileData`` part."""
    if isinstance(part, str):
        return {"text": part}
    if part.data is not None:
        return {"inlineData": {"mimeType": part.media_type, "data": part.data}}
    assert part.url is not None
    path = urlsplit(part.url).path.lower()
    mime = next((kind for ext, kind in _IMAGE_TYPES.items() if path.endswith(ext)), None)
    if mime is None:
        raise refuse("image_url", "google", "an http(s) image URL must end in " + ", ".join(_IMAGE_TYPES)
                     + " (fileData needs a MIME type; or send a data URL)")
    return {"fileData": {"mimeType": mime, "fileUri": part.url}}


#: JSON Schema keywords Gemini's ``Schema`` (an OpenAPI 3.0 subset) has under the same name
#: (Gemini API reference, ``Schema``).
_SCHEMA_KEYWORDS = frozenset(("format", "title", "description", "nullable", "enum", "maxItems", "minItems",
                              "minLength", "maxLength", "pattern", "minimum", "maximum", "minProperties",
                              "maxProperties", "default", "example", "propertyOrdering"))
_SCHEMA_TYPES = {"string": "STRING", "number": "NUMBER", "integer": "INTEGER", "boolean": "BOOLEAN",
                 "array": "ARRAY", "object": "OBJECT"}
_MAX_SCHEMA_DEPTH = 32
#: At most this many schema nodes are written: inlining references that share definitions can
#: multiply a small schema (each level using the next one twice doubles it), so the work is
#: bounded here rather than by the request's size.
_MAX_SCHEMA_NODES = 5000


@dataclass
class _Conversion:
    """One :func:`gemini_schema` run: the request field named in errors, nodes written."""

    field: str
    nodes: int = 0


def gemini_schema(schema: dict[str, Any], field: str = "response_format") -> dict[str, Any]:
    """A JSON Schema (what OpenAI's ``json_schema.schema`` and Pydantic give) as Gemini's
    ``responseSchema`` (Gemini API reference, ``Schema``: an OpenAPI 3.0 subset).

    - ``type`` is upper-cased (``STRING``...); ``type: [T, "null"]`` becomes ``T`` with
      ``nullable: true``; ``anyOf`` with a ``{"type": "null"}`` member likewise (one other
      member is merged in, several stay an ``anyOf``);
    - local ``$ref`` (``#/$defs/X``, ``#/definitions/X``) are inlined (a recursive one is
      refused: Gemini's schema has no references); ``const`` becomes a one-value ``enum``;
    - ``properties`` gets ``propertyOrdering`` in the schema's order (Gemini otherwise
      orders keys alphabetically); ``additionalProperties: false`` is dropped (Gemini emits
      only declared properties);
    - ``properties``, ``items``, ``required`` and the keywords of :data:`_SCHEMA_KEYWORDS` are kept;
    - at most 5000 nodes are written (references inlined can multiply a schema).

    Args:
        schema: the JSON Schema.
        field: the request field it came from, named in errors (``response_format``, or
            ``tools[].function.parameters``).

    Raises:
        ProviderError: ``invalid_message`` naming ``field`` and the first keyword that cannot
            be converted (``oneOf``, ``allOf``, ``not``, ``additionalProperties`` other than
            false, ``patternProperties``...), a type Gemini lacks, nesting deeper than 32, or
            more than 5000 nodes.
    """
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    return _convert(schema, defs, (), 0, _Conversion(field))


def _within_subset(node: Any, depth: int = 0) -> bool:
    """Whether a schema already is in Gemini's subset (then it is sent as given)."""
    if not isinstance(node, dict) or depth > _MAX_SCHEMA_DEPTH:
        return False
    for key, value in node.items():
        if key == "type":
            if not isinstance(value, str) or value.lower() not in _SCHEMA_TYPES:
                return False
        elif key == "properties":
            if not isinstance(value, dict) or not all(_within_subset(sub, depth + 1) for sub in value.values()):
                return False
        elif key == "items":
            if not _within_subset(value, depth + 1):
                return False
        elif key == "anyOf":
            if not isinstance(value, list) or not all(_within_subset(sub, depth + 1) for sub in value):
                return False
        elif key != "required" and key not in _SCHEMA_KEYWORDS:
            return False
    return True


def _parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """A function's ``parameters``: as given when already in Gemini's subset (a plain
    ``{"type": "object", "properties": ...}``), else converted by :func:`gemini_schema`
    (a Pydantic model's schema has ``additionalProperties``, ``$defs``, ``anyOf`` with null)."""
    return schema if _within_subset(schema) else gemini_schema(schema, "tools[].function.parameters")


def _convert(node: Any, defs: dict[str, Any], seen: tuple[str, ...], depth: int, run: _Conversion) -> dict[str, Any]:
    def bad(keyword: str, why: str) -> Exception:
        return refuse(run.field, "google", f"the schema keyword `{keyword}` cannot be converted to "
                      f"Gemini's Schema: {why}")

    if depth > _MAX_SCHEMA_DEPTH:
        raise bad("properties", f"nested deeper than {_MAX_SCHEMA_DEPTH}")
    run.nodes += 1
    if run.nodes > _MAX_SCHEMA_NODES:
        raise bad("$ref", f"the schema expands to more than {_MAX_SCHEMA_NODES} nodes once references are inlined")
    if not isinstance(node, dict):
        raise bad("type", "a schema must be an object")
    if "$ref" in node:
        ref = node["$ref"]
        name = ref.rsplit("/", 1)[-1] if isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/")) \
            else None
        if name is None or name not in defs:
            raise bad("$ref", f"only local references to $defs are inlined, not {ref!r}")
        if name in seen:
            raise bad("$ref", f"{name} refers to itself (Gemini's schema has no references)")
        extra = {key: value for key, value in node.items() if key != "$ref"}
        return _convert({**defs[name], **extra}, defs, (*seen, name), depth + 1, run)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("$defs", "definitions", "$schema", "strict"):
            continue
        if key == "type":
            kinds = value if isinstance(value, list) else [value]
            real = [kind for kind in kinds if kind != "null"]
            if len(real) != 1 or real[0] not in _SCHEMA_TYPES:
                raise bad("type", f"{value!r}: Gemini takes one of {', '.join(_SCHEMA_TYPES)} (or it and null)")
            out["type"] = _SCHEMA_TYPES[real[0]]
            if len(real) < len(kinds):
                out["nullable"] = True
        elif key == "properties":
            out["properties"] = {name: _convert(sub, defs, seen, depth + 1, run) for name, sub in value.items()}
            out.setdefault("propertyOrdering", list(value))
        elif key == "items":
            out["items"] = _convert(value, defs, seen, depth + 1, run)
        elif key == "required":
            out["required"] = list(value)
        elif key == "additionalProperties":
            if value is not False:
                raise bad("additionalProperties", "Gemini's schema has fixed properties only")
        elif key == "const":
            out["enum"] = [value]
            if not isinstance(value, str):
                raise bad("const", "Gemini's enum values are strings")
        elif key == "anyOf":
            members = [member for member in value if member != {"type": "null"}]
            if len(members) < len(value):
                out["nullable"] = True
            if len(members) == 1:
                merged = _convert(members[0], defs, seen, depth + 1, run)
                out.update({k: v for k, v in merged.items() if k not in out})
            else:
                out["anyOf"] = [_convert(member, defs, seen, depth + 1, run) for member in members]
        elif key in _SCHEMA_KEYWORDS:
            out[key] = value
        else:
            raise bad(key, "Gemini's schema (an OpenAPI 3.0 subset) has no such keyword")
    return out


def _contents(messages: list[ChatMessage]) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts and ``contents`` (roles ``user``/``model``)."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    for message in messages:
        parts_in = content_parts(message.content, "google", message.role)
        if message.role in ("system", "developer"):
            system.append(joined_text(parts_in))
        elif message.role == "tool":
            name = names_by_id.get(message.tool_call_id or "") or message.name or ""
            response = {"functionResponse": {"name": name, "response": {"content": text_of(message.content)}}}
            previous = contents[-1] if contents else None
            if previous and previous["role"] == "user" and "functionResponse" in previous["parts"][-1]:
                previous["parts"].append(response)
            else:
                contents.append({"role": "user", "parts": [response]})
        elif message.role == "assistant":
            parts: list[dict[str, Any]] = []
            if text_of(message.content):
                parts.append({"text": text_of(message.content)})
            for call in message.tool_calls or ():
                call_id, name, arguments = tool_call_parts(call)
                names_by_id[call_id] = name
                part: dict[str, Any] = {"functionCall": {"name": name, "args": arguments}}
                if call.get("signature"):
                    part["thoughtSignature"] = call["signature"]
                parts.append(part)
            contents.append({"role": "model", "parts": parts or [{"text": ""}]})
        elif any(isinstance(part, Image) for part in parts_in):
            contents.append({"role": "user", "parts": [_part(part) for part in parts_in]})
        else:
            contents.append({"role": "user", "parts": [{"text": joined_text(parts_in)}]})
    return system, contents


def _tool_config(choice: Any) -> dict[str, Any] | None:
    """``toolConfig`` for an OpenAI ``tool_choice``, or None to leave Gemini's default."""
    modes = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
    if isinstance(choice, str) and choice in modes:
        return {"functionCallingConfig": {"mode": modes[choice]}}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}}
    return None


def build_request(request: Completion, model: str, settings: ProviderSettings) -> UpstreamRequest:
    """The streaming ``streamGenerateContent`` request (SSE framing) for ``request``.

    Args:
        request: the client's ``completion`` message.
        model: the upstream model name (``gemini-2.5-flash``), quoted into the URL path.
        settings: base URL (without ``/v1beta``) and optional key.

    Raises:
        KeyError, TypeError, ValueError, AttributeError: client input that cannot be
            translated (a tool without a name, tool call arguments that are not JSON).
        ProviderError: ``invalid_message`` naming a field Gemini cannot take (the module
            docstring's list; a schema keyword outside Gemini's subset, :func:`gemini_schema`).
    """
    refuse_unsupported(request, "google")
    system, contents = _contents(request.messages)
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    generation: dict[str, Any] = {}
    if request.max_tokens is not None:
        generation["maxOutputTokens"] = request.max_tokens
    if request.temperature is not None:
        generation["temperature"] = request.temperature
    if request.stop is not None:
        generation["stopSequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    for field, name in (("top_p", "topP"), ("seed", "seed"), ("presence_penalty", "presencePenalty"),
                        ("frequency_penalty", "frequencyPenalty")):
        value = getattr(request, field)
        if value is not None:
            generation[name] = value
    wanted = json_format(request, "google")
    if wanted is not None:
        generation["responseMimeType"] = "application/json"
        if wanted[1] is not None:
            generation["responseSchema"] = gemini_schema(wanted[1])
    effort = effort_of(request)
    if effort or request.thinking is not None:
        thinking: dict[str, Any] = {"includeThoughts": True}
        budget = (request.thinking or {}).get("budget_tokens") or THINKING_BUDGET.get(effort or "")
        if budget:
            thinking["thinkingBudget"] = budget
        generation["thinkingConfig"] = thinking
    if generation:
        body["generationConfig"] = generation
    if request.tools:
        if strict_tools(request):
            raise refusal("tools[].function.strict", "google")
        declarations = []
        for tool in request.tools:
            function = tool.get("function", tool)
            declaration = {"name": function["name"]}
            if function.get("description"):
                declaration["description"] = function["description"]
            if function.get("parameters"):
                declaration["parameters"] = _parameters(function["parameters"])
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
        tool_config = _tool_config(request.tool_choice)
        if tool_config:
            body["toolConfig"] = tool_config
    headers = {"Content-Type": "application/json"}
    if settings.api_key:
        headers["x-goog-api-key"] = settings.api_key
    url = f"{settings.base_url.rstrip('/')}/v1beta/models/{quote(model, safe='')}:streamGenerateContent?alt=sse"
    return SPEC.request(model, url, headers, body)


SPEC = ProviderSpec(
    name="google",
    title="Google Gemini",
    prefixes=("google/", "gemini/"),
    bare_prefixes=("gemini-",),
    framing="sse",
    default_base_url="https://generativelanguage.googleapis.com",
    build=build_request,
    make_normalizer=GeminiNormalizer,
    needs_key=True,
    config_section="google",
    api_key_field="gemini_api_key",
    api_key_env=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    api_key_help="sent as `x-goog-api-key`",
    base_url_key="base_url",
    base_url_field="gemini_base_url",
    base_url_env="GEMINI_BASE_URL",
    base_url_help="Gemini API",
    example_models=("gemini-2.5-flash", "gemini-2.5-pro"),
    demo_model="gemini-2.0-flash",
    docs="§3",
    request_id_headers=("x-goog-request-id",),
)
