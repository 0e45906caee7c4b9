"""Which OpenAI Chat Completions request fields reach which provider, and how: one
declaration that the request builders (protocol/providers/*.py) enforce and
``tools/gen_docs.py`` writes into docs/PROTOCOL.md ("Request fields per provider").

Every field the hub accepts on ``POST /v1/chat/completions`` (and on the WebSocket
``completion`` message, which has the same options) is either carried to the provider in the
provider's own terms or refused with ``invalid_message`` naming the field and the provider; a
field the hub does not know is refused too (protocol/openai_compat.py). Nothing is dropped
silently (issue 14, "No silent drops").

:data:`FIELDS` maps a field to one :class:`Support` per provider kind. A builder calls
:func:`refuse_unsupported` first: it raises for every field the request sets that
:data:`FIELDS` marks ``refused`` for that provider (a field set to its default value, such
as ``n: 1`` or ``logprobs: false``, asks for nothing and passes). The builder then maps the
carried fields as the ``how`` text says. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from protocol.errors import ProviderError
from protocol.messages import Completion

__all__ = ["PROVIDER_KINDS", "FIELDS", "Support", "Image", "refuse", "refusal", "refuse_unsupported", "strict_tools",
           "json_format",
           "content_parts", "joined_text", "render_table"]

#: The provider kinds with a builder of their own, in the table's column order (the registry
#: names: ``google`` is Gemini). ``azure_openai`` sends OpenAI's body and follows ``openai``.
PROVIDER_KINDS = ("openai", "anthropic", "google", "ollama")


@dataclass(frozen=True)
class Support:
    """How one provider takes one field.

    Attributes:
        status: ``carried`` (the same name and meaning), ``mapped`` (another name or shape,
            said in ``how``) or ``refused`` (answered ``invalid_message``; ``how`` says why).
        how: the provider's field(s), or the reason for the refusal (shown in the table and,
            for a refusal, in the error message).
    """

    status: Literal["carried", "mapped", "refused"]
    how: str = ""


def _c(how: str = "") -> Support:
    return Support("carried", how)


def _m(how: str) -> Support:
    return Support("mapped", how)


def _r(why: str) -> Support:
    return Support("refused", why)


_NO_LOGPROBS = "the hub does not relay log probabilities to clients (docs/PROVIDERS.md §1.4)"

def _one_choice(api: str) -> str:
    return (f"{api} gives one choice per request; OpenAI's `n` is served by OpenAI models only "
            "(docs/PROTOCOL.md \"Choices\")")


#: Field → provider kind → support. Fields absent here are either always carried in every
#: provider's terms (``model``, ``messages``, ``max_tokens``, ``temperature``, ``tools``,
#: ``tool_choice``, ``reasoning_effort``: docs/PROVIDERS.md per provider) or unknown (refused
#: by the request decoder).
FIELDS: dict[str, dict[str, Support]] = {
    "response_format": {
        "openai": _c("`response_format` as given (`json_object`, `json_schema` with `strict`)"),
        "anthropic": _m("`json_schema`: `output_config.format: {type: json_schema, schema}` (structured "
                        "outputs); `json_object` refused: Anthropic's structured outputs need a schema"),
        "google": _m("`generationConfig.responseMimeType: application/json`; `json_schema` also "
                     "`responseSchema` (converted to Gemini's OpenAPI subset; a keyword outside it is refused "
                     "by name)"),
        "ollama": _m("`format`: `\"json\"` for `json_object`, the JSON schema itself for `json_schema`"),
    },
    "image_url content parts": {
        "openai": _c("as given"),
        "anthropic": _m("`image` blocks: `source.type: base64` (data URL) or `url` (http(s) URL)"),
        "google": _m("`inlineData` (data URL) or `fileData` (http(s) URL; MIME type from the file name)"),
        "ollama": _m("message `images` (base64, data URLs only; an http(s) URL is refused: the hub does not "
                     "fetch URLs for clients)"),
    },
    "reasoning_effort": {
        "openai": _c(),
        "anthropic": _m("`thinking: {type: enabled, budget_tokens}` (minimal/low 1024, medium 4096, high 16384)"),
        "google": _m("`generationConfig.thinkingConfig`: `includeThoughts: true`, `thinkingBudget` as for anthropic"),
        "ollama": _m("`think`: the level (`low`, `medium`, `high`) for `gpt-oss` models, which take one; `true` for "
                     "other thinking models, which have no levels"),
    },
    "tool_choice": {
        "openai": _c(),
        "anthropic": _m("`auto`, `any` (`required`), `none`, `tool` (a function)"),
        "google": _m("`toolConfig.functionCallingConfig.mode` AUTO, ANY (`required`), NONE; ANY with "
                     "`allowedFunctionNames` for a function"),
        "ollama": _m("`auto`: its default; `none`: the tools are left out; `required` and a named function "
                     "refused (Ollama cannot be made to call a tool)"),
    },
    "tools[].function.strict": {
        "openai": _c(),
        "anthropic": _m("the tool's `strict: true` (strict tool use)"),
        "google": _r("Gemini cannot guarantee that arguments follow the schema (`strict: false` passes)"),
        "ollama": _r("Ollama cannot guarantee that arguments follow the schema (`strict: false` passes)"),
    },
    "tools[].function.parameters": {
        "openai": _c(), "anthropic": _m("`input_schema`"),
        "google": _m("`parameters`: as given when within Gemini's schema subset, else converted as "
                     "`responseSchema` is (a keyword outside it is refused by name)"),
        "ollama": _c(),
    },
    "n": {
        "openai": _c("every choice is streamed back, each hub message with its `choice`, each OpenAI chunk "
                     "with its `index` (docs/PROTOCOL.md \"Choices\")"),
        "anthropic": _r(_one_choice("the Messages API")),
        "google": _r(_one_choice("the hub's Gemini stream (`candidateCount` is not mapped)")),
        "ollama": _r(_one_choice("Ollama")),
    },
    "stop": {
        "openai": _c(), "anthropic": _m("`stop_sequences`"),
        "google": _m("`generationConfig.stopSequences`"), "ollama": _m("`options.stop`"),
    },
    "seed": {
        "openai": _c(), "anthropic": _r("the Messages API has no seed"),
        "google": _m("`generationConfig.seed`"), "ollama": _m("`options.seed`"),
    },
    "top_p": {
        "openai": _c(), "anthropic": _c(),
        "google": _m("`generationConfig.topP`"), "ollama": _m("`options.top_p`"),
    },
    "presence_penalty": {
        "openai": _c(), "anthropic": _r("the Messages API has no presence penalty"),
        "google": _m("`generationConfig.presencePenalty`"), "ollama": _m("`options.presence_penalty`"),
    },
    "frequency_penalty": {
        "openai": _c(), "anthropic": _r("the Messages API has no frequency penalty"),
        "google": _m("`generationConfig.frequencyPenalty`"), "ollama": _m("`options.frequency_penalty`"),
    },
    "logprobs": {
        "openai": _r(_NO_LOGPROBS), "anthropic": _r(_NO_LOGPROBS),
        "google": _r(_NO_LOGPROBS), "ollama": _r(_NO_LOGPROBS),
    },
    "top_logprobs": {
        "openai": _r(_NO_LOGPROBS), "anthropic": _r(_NO_LOGPROBS),
        "google": _r(_NO_LOGPROBS), "ollama": _r(_NO_LOGPROBS),
    },
    "parallel_tool_calls": {
        "openai": _c(),
        "anthropic": _m("`false`: `tool_choice.disable_parallel_tool_use: true`"),
        "google": _r("Gemini cannot be told to call one tool at a time (`false` refused; `true` is its default)"),
        "ollama": _r("Ollama cannot be told to call one tool at a time (`false` refused; `true` is its default)"),
    },
    "user": {
        "openai": _c(), "anthropic": _m("`metadata.user_id`"),
        "google": _r("the Gemini API has no end-user id"), "ollama": _r("Ollama has no end-user id"),
    },
}

#: The value of each field that asks for nothing (the provider's default): not refused.
_NEUTRAL: dict[str, Any] = {"n": 1, "logprobs": False, "parallel_tool_calls": True}


def refuse(field: str, provider: str, why: str) -> ProviderError:
    """The ``invalid_message`` error for ``field`` sent to ``provider``: ``"`field` is not
    supported by <provider>: <why>"`` (HTTP 400 on ``/v1``)."""
    return ProviderError(f"`{field}` is not supported by {provider}: {why}", "invalid_message")


def refusal(field: str, provider: str) -> ProviderError:
    """:func:`refuse` with the reason :data:`FIELDS` declares for ``field`` and ``provider``
    (for the fields a builder checks itself, inside ``tools`` or ``messages``)."""
    return refuse(field, provider, FIELDS[field][provider].how)


def strict_tools(request: Completion) -> bool:
    """Whether any tool of ``request`` asks for ``function.strict: true``."""
    return any(isinstance(tool.get("function"), dict) and tool["function"].get("strict") is True
               for tool in request.tools or ())


def refuse_unsupported(request: Completion, provider: str) -> None:
    """Raise for the first field ``request`` sets that :data:`FIELDS` refuses for ``provider``.

    Args:
        request: the client's completion.
        provider: a name of :data:`PROVIDER_KINDS`.

    Raises:
        ProviderError: ``invalid_message`` naming the field and the provider (:func:`refuse`).
    """
    for field, per_provider in FIELDS.items():
        support = per_provider.get(provider)
        if support is None or support.status != "refused" or not hasattr(request, field):
            continue
        value = getattr(request, field)
        if value is None or (field in _NEUTRAL and value == _NEUTRAL[field]):
            continue
        raise refuse(field, provider, support.how)


def render_table() -> str:
    """The Markdown table of :data:`FIELDS`: one row per field, one column per provider kind,
    each cell ``carried``, ``mapped: how`` or ``refused: why``."""
    lines = ["| field | " + " | ".join(PROVIDER_KINDS) + " |", "|---" * (len(PROVIDER_KINDS) + 1) + "|"]
    for field, per_provider in FIELDS.items():
        cells = []
        for kind in PROVIDER_KINDS:
            support = per_provider[kind]
            cells.append(support.status + (f": {support.how}" if support.how else ""))
        name = f"`{field}`" if " " not in field else f"`{field.split(' ')[0]}` {field.split(' ', 1)[1]}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def json_format(request: Completion, provider: str) -> tuple[bool, dict[str, Any] | None] | None:
    """What ``response_format`` asks of a provider that does not take OpenAI's object as is:
    None (no format, or ``{"type": "text"}``), ``(True, None)`` for ``json_object``, or
    ``(True, schema)`` for ``json_schema`` (``json_schema.schema``; a ``json_schema`` without a
    schema is ``(True, None)``, JSON of any shape). Source: OpenAI API reference, "Create chat
    completion", ``response_format``.

    Raises:
        ProviderError: ``invalid_message``: another ``type``, or a ``schema`` that is not an
            object (:func:`refuse`, naming ``response_format`` and ``provider``).
    """
    fmt = request.response_format
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is not None and not isinstance(schema, dict):
            raise refuse("response_format", provider, "`json_schema.schema` must be a JSON object")
        return True, schema
    raise refuse("response_format", provider, f"unknown type {kind!r}; expected text, json_object or json_schema")


@dataclass(frozen=True)
class Image:
    """An OpenAI ``image_url`` part, read: either inline data (a ``data:`` URL: ``media_type``
    and base64 ``data``) or a remote ``url`` (``http``/``https``), never both."""

    url: str | None = None
    media_type: str | None = None
    data: str | None = None


#: ``data:<media type>[;parameters];base64,<data>`` (RFC 2397); only base64 data is accepted.
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)((?:;[\w.+-]+=[\w.+-]+)*);base64,(.*)", re.S)


def _image(part: dict[str, Any], provider: str) -> Image:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise refuse("image_url", provider, "an `image_url` part needs `image_url.url`")
    match = _DATA_URL.fullmatch(url)
    if match:
        return Image(media_type=match.group(1).lower(), data=match.group(3))
    if url.startswith("data:"):
        raise refuse("image_url", provider, "a data URL must be base64 (data:<type>;base64,<data>)")
    if url.lower().startswith(("http://", "https://")):
        return Image(url=url)
    raise refuse("image_url", provider, "the URL must be a base64 data URL or an http(s) URL")


def content_parts(content: Any, provider: str, role: str) -> list[str | Image]:
    """The parts of an OpenAI message ``content`` as text strings and :class:`Image` values, in
    order, for a provider that does not take OpenAI's parts as they are.

    Args:
        content: None, a string, or a list of OpenAI content parts.
        provider: the provider's registry name (for messages).
        role: the message's role; images are accepted in ``user`` messages only.

    Raises:
        ProviderError: ``invalid_message``: a part type other than ``text``, ``image_url``
            and (in an assistant message, carried as its text) ``refusal`` (``input_audio``,
            ``file``...), an image outside a user message, or an image URL
            that is neither base64 data nor http(s) (:func:`refuse`, naming the field).
    """
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    out: list[str | Image] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            out.append(str(part.get("text", "")))
        elif kind == "refusal" and role == "assistant":  # an earlier answer's refusal, as history
            out.append(str(part.get("refusal", "")))
        elif kind == "image_url":
            if role != "user":
                raise refuse("image_url", provider, f"images are accepted in user messages only, not in {role} ones")
            out.append(_image(part, provider))
        else:
            raise refuse(f"{kind}" if isinstance(kind, str) else "content", provider,
                         "the hub carries text and image_url content parts only (and an assistant's refusal)")
    return out


def joined_text(parts: list[str | Image]) -> str:
    """The text parts of :func:`content_parts`, joined (images left out by the caller's choice)."""
    return "".join(part for part in parts if isinstance(part, str))
