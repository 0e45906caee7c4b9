"""The OpenAI Responses surface (``POST /v1/responses``): request mapping and event encoding, pure.

The hub answers OpenAI's Responses API whatever provider serves the model, so the ``openai``
SDK's ``client.responses.create(...)`` and ``client.responses.stream(...)`` work against
OpenAI, Anthropic, Gemini or Ollama models behind the hub. docs/PROTOCOL.md "POST
/v1/responses" is the reference for what is carried, mapped or refused; the wire format is
docs/PROVIDERS.md §1.6 (event names, ``event:`` line equal to the JSON ``type``, no
``[DONE]``, usage in the terminal event).

- :func:`decode_responses_request` reads the body into :class:`ResponsesRequest`;
  :meth:`ResponsesRequest.to_completion` maps it onto the hub's
  :class:`~protocol.messages.Completion` (OpenAI Chat-shaped messages and tools), refusing
  with :class:`FieldRefused` (``invalid_message``, naming the field) everything the
  completion cannot carry. Nothing is dropped without a word, except what PROTOCOL.md lists
  as accepted and not forwarded (``reasoning`` input items).
- :class:`ResponseEncoder` turns one completion's hub messages into the Responses events and
  keeps the Response object they build, which is the non-streamed answer.
- :func:`error_body` is OpenAI's error envelope, with ``param`` naming the refused field.

No clock, no I/O: ids and ``created_at`` come from the caller.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from protocol import front_door_fields as fields
from protocol.errors import ProtocolError
from protocol.front_door_fields import FieldRefused
from protocol.messages import (
    ChatMessage,
    Completed,
    Completion,
    ContentChunk,
    ErrorMessage,
    ModelName,
    RefusalChunk,
    ThinkingStatus,
    ToolCallMessage,
)

__all__ = [
    "ResponsesRequest",
    "FieldRefused",
    "decode_responses_request",
    "ResponseEncoder",
    "error_body",
    "KEEPALIVE",
]

_encode = msgspec.json.Encoder().encode

#: Sent when nothing happened for ``sse_keepalive_interval_s``: an SSE comment, which every
#: SSE parser (the openai SDK's included) skips (WHATWG HTML §9.2.6).
KEEPALIVE = b": keepalive\n\n"

#: Reasoning efforts the hub understands (docs/PROTOCOL.md "POST /v1/responses").
_EFFORTS = frozenset(("minimal", "low", "medium", "high"))

#: The fields of the hub's ``completion``: a Responses field is carried when its Chat
#: Completions counterpart is one of them, refused otherwise.


def _refuse(field: str, why: str) -> FieldRefused:
    return FieldRefused(field, why)


class ResponsesRequest(msgspec.Struct, forbid_unknown_fields=True):
    """An OpenAI Responses request as the hub reads it (any other field is refused by name).

    Input items, tools, ``tool_choice``, ``reasoning`` and ``text`` stay plain JSON here;
    :meth:`to_completion` checks them one by one so that a refusal names the exact place.
    """

    model: ModelName
    input: str | list[Any]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    include: list[str] | None = None
    truncation: str | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None
    stream: bool = False

    def to_completion(self) -> Completion:
        """The hub's ``completion`` for this request (the hub assigns its id).

        Returns:
            A :class:`~protocol.messages.Completion`: ``instructions`` as a first system
            message, input items as Chat messages (function calls as an assistant's
            ``tool_calls``, their outputs as ``tool`` messages), function tools in Chat form,
            ``max_output_tokens`` as ``max_tokens``, ``reasoning`` as given (``effort`` and
            ``summary``).

        Raises:
            FieldRefused: ``invalid_message`` naming the field that cannot be carried or is
                malformed.
        """
        if self.previous_response_id is not None:
            raise _refuse("previous_response_id", "cannot be carried: the hub keeps no conversation state; "
                          "send the whole conversation in `input`")
        if self.store:
            raise _refuse("store", "cannot be true: the hub stores no responses (nothing could be retrieved "
                          "later); leave it out or send false")
        if self.include:
            raise _refuse("include", f"cannot be carried ({self.include[0]!r}): the hub returns no extra output data")
        if self.truncation not in (None, "disabled"):
            raise _refuse("truncation", "cannot be carried: only `disabled` (the hub never truncates the input)")
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise _refuse("max_output_tokens", "must be at least 1")
        extra: dict[str, Any] = {}
        if self.top_p is not None:
            fields.carry(extra, "top_p", self.top_p, "top_p")
        if self.user is not None:
            fields.carry(extra, "user", self.user, "user")
        if self.metadata:
            fields.carry(extra, "metadata", self.metadata, "metadata")
        if self.parallel_tool_calls is False:
            fields.carry(extra, "parallel_tool_calls", False, "parallel_tool_calls")
        _text_options(self.text, extra)
        messages = _instructions(self.instructions) + _input(self.input)
        if not messages:
            raise _refuse("input", "must hold at least one item")
        return Completion(
            model=self.model,
            messages=messages,
            max_tokens=self.max_output_tokens,
            temperature=self.temperature,
            tools=_tools(self.tools),
            tool_choice=_tool_choice(self.tool_choice),
            reasoning=_reasoning(self.reasoning),
            **extra,
        )


_REQUEST_DECODER = msgspec.json.Decoder(ResponsesRequest)
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")


def decode_responses_request(body: bytes) -> ResponsesRequest:
    """Decode an OpenAI Responses request body.

    Raises:
        ProtocolError: ``invalid_json`` (not JSON, nested too deeply); :class:`FieldRefused`
            (``invalid_message``) for a field missing, unknown (``service_tier``,
            ``background``, ``prompt``... are refused by name) or of the wrong type.
    """
    try:
        return _REQUEST_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        unknown = _UNKNOWN_FIELD.search(text)
        if unknown:
            raise _refuse(unknown.group(1), "cannot be carried by the hub; leave it out") from None
        where = re.search(r"at `\$\.([^`\[]+)", text)
        raise FieldRefused(where.group(1) if where else "input", f"is invalid: {text}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}", "invalid_json") from None
    except RecursionError:  # msgspec gives up on JSON nested about 1000 levels deep
        raise ProtocolError("request body is nested too deeply", "invalid_json") from None


def error_body(code: str, message: str, http_status: int | None, param: str | None = None) -> bytes:
    """OpenAI's error envelope ``{"error": {"message", "type", "param", "code"}}``
    (docs/PROVIDERS.md §6.1): ``type`` ``invalid_request_error`` for a 4xx, else
    ``server_error``; ``code`` the hub's error code (protocol.errors.ErrorCode); ``param`` the
    refused field when there is one."""
    kind = "invalid_request_error" if http_status is not None and 400 <= http_status < 500 else "server_error"
    return _encode({"error": {"message": message, "type": kind, "param": param, "code": code}})


# The request, piece by piece.


def _instructions(instructions: str | None) -> list[ChatMessage]:
    return [ChatMessage(role="system", content=instructions)] if instructions else []


_MESSAGE_KEYS = frozenset(("type", "role", "content", "id", "status"))
_CALL_KEYS = frozenset(("type", "call_id", "name", "arguments", "id", "status"))
_OUTPUT_KEYS = frozenset(("type", "call_id", "output", "id", "status"))
_REASONING_KEYS = frozenset(("type", "id", "summary", "content", "encrypted_content", "status"))


def _part(part: Any, role: str, where: str) -> dict[str, Any]:
    """One content part as a Chat part (``text`` or ``image_url``)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text"):
        fields.check_keys(part, frozenset(("type", "text", "annotations", "logprobs")), where)
        if part.get("annotations"):
            raise _refuse(f"{where}.annotations", "cannot be carried (no provider takes input annotations)")
        return {"type": "text", "text": fields.text(part.get("text"), f"{where}.text")}
    if kind == "refusal" and role == "assistant":
        # An earlier answer's refusal, as the SDK holds it: its words, as assistant text.
        fields.check_keys(part, frozenset(("type", "refusal")), where)
        return {"type": "text", "text": fields.text(part.get("refusal"), f"{where}.refusal")}
    if kind == "input_image" and role == "user":
        fields.check_keys(part, frozenset(("type", "image_url", "file_id", "detail")), where)
        if part.get("file_id") is not None:
            raise _refuse(f"{where}.file_id", "cannot be carried: the hub has no file store; send `image_url` "
                          "(an https or data URL)")
        image: dict[str, Any] = {"url": fields.text(part.get("image_url"), f"{where}.image_url")}
        if part.get("detail") is not None:
            image["detail"] = fields.text(part["detail"], f"{where}.detail")
        return {"type": "image_url", "image_url": image}
    raise _refuse(f"{where}.type", f"{kind!r} cannot be carried in a {role} message "
                  "(input_text, output_text, input_image in user messages, refusal in assistant messages)")


def _message(item: dict[str, Any], where: str) -> ChatMessage:
    fields.check_keys(item, _MESSAGE_KEYS, where)
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise _refuse(f"{where}.role", "must be user, assistant, system or developer")
    content = item.get("content")
    if isinstance(content, str):
        return ChatMessage(role=role, content=content)
    if not isinstance(content, list):
        raise _refuse(f"{where}.content", "must be a string or a list of content parts")
    parts = [_part(part, role, f"{where}.content[{index}]") for index, part in enumerate(content)]
    if role != "user" or all(part["type"] == "text" for part in parts):
        return ChatMessage(role=role, content="".join(part["text"] for part in parts))
    return ChatMessage(role=role, content=parts)


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    fields.check_keys(item, _CALL_KEYS, where)
    return {"id": fields.text(item.get("call_id"), f"{where}.call_id"), "type": "function",
            "function": {"name": fields.text(item.get("name"), f"{where}.name"),
                         "arguments": fields.text(item.get("arguments", "{}"), f"{where}.arguments")}}


def _function_output(item: dict[str, Any], where: str) -> ChatMessage:
    fields.check_keys(item, _OUTPUT_KEYS, where)
    call_id = fields.text(item.get("call_id"), f"{where}.call_id")
    output = item.get("output")
    if isinstance(output, list):
        texts = []
        for index, part in enumerate(output):
            inner = f"{where}.output[{index}]"
            if not isinstance(part, dict) or part.get("type") != "input_text":
                raise _refuse(f"{inner}.type", "must be input_text (a function's output carries text only)")
            texts.append(fields.text(part.get("text"), f"{inner}.text"))
        output = "".join(texts)
    return ChatMessage(role="tool", content=fields.text(output, f"{where}.output"), tool_call_id=call_id)


def _input(value: str | list[Any]) -> list[ChatMessage]:
    """``input`` as Chat messages: a string is one user message; items in order, an
    assistant's text and the function calls right after it joined into one assistant message."""
    if isinstance(value, str):
        return [ChatMessage(role="user", content=value)] if value else []
    out: list[ChatMessage] = []
    for index, item in enumerate(value):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise _refuse(where, "must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            call = _function_call(item, where)
            last = out[-1] if out else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or []), call]
                if last.content == "":
                    last.content = None
            else:
                out.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
        elif kind == "function_call_output":
            out.append(_function_output(item, where))
        elif kind == "reasoning":
            # Earlier reasoning: accepted and not forwarded (the hub's messages have no place
            # for it; docs/PROTOCOL.md "POST /v1/responses").
            fields.check_keys(item, _REASONING_KEYS, where)
        else:
            raise _refuse(f"{where}.type", f"{kind!r} cannot be carried "
                          "(message, function_call, function_call_output, reasoning)")
    return out


_FUNCTION_KEYS = frozenset(("type", "name", "description", "parameters", "strict"))


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Function tools in Chat form; built-in tools (``web_search``, ``file_search``...) are
    refused: they run on OpenAI's side only."""
    if not tools:
        return None
    converted = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise _refuse(where, "must be an object")
        kind = tool.get("type")
        if kind != "function":
            raise _refuse(f"{where}.type", f"{kind!r} cannot be carried: the hub passes function tools only; "
                          "built-in tools (web_search, file_search, code_interpreter, computer_use, mcp, "
                          "image_generation...) run on OpenAI's side")
        fields.check_keys(tool, _FUNCTION_KEYS, where)
        function: dict[str, Any] = {"name": fields.text(tool.get("name"), f"{where}.name")}
        if tool.get("description") is not None:
            function["description"] = fields.text(tool["description"], f"{where}.description")
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _refuse(f"{where}.parameters", "must be a JSON schema object")
        function["parameters"] = parameters if parameters is not None else {"type": "object", "properties": {}}
        if tool.get("strict") is not None:
            function["strict"] = bool(tool["strict"])
        converted.append({"type": "function", "function": function})
    return converted


def _tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise _refuse("tool_choice", "must be auto, none, required or {\"type\": \"function\", \"name\"}")
        return choice
    if choice.get("type") != "function":
        raise _refuse("tool_choice.type", f"{choice.get('type')!r} cannot be carried (function only)")
    fields.check_keys(choice, frozenset(("type", "name")), "tool_choice")
    return {"type": "function", "function": {"name": fields.text(choice.get("name"), "tool_choice.name")}}


def _reasoning(reasoning: dict[str, Any] | None) -> dict[str, Any] | None:
    """``reasoning`` as the completion's option: ``effort`` (every provider reads it: OpenAI
    as is, the others as a thinking budget) and ``summary`` (the openai_responses upstream
    reads it; other providers stream their reasoning as it comes)."""
    if not reasoning:
        return None
    fields.check_keys(reasoning, frozenset(("effort", "summary", "generate_summary")), "reasoning")
    effort = reasoning.get("effort")
    summary = reasoning.get("summary", reasoning.get("generate_summary"))
    if summary is not None and summary not in ("auto", "concise", "detailed"):
        raise _refuse("reasoning.summary", "must be auto, concise or detailed")
    if effort is None or effort == "none":
        if summary is not None and effort is None:
            return {"effort": "medium", "summary": summary}  # OpenAI's default effort
        return None
    if effort not in _EFFORTS:
        raise _refuse("reasoning.effort", "must be none, minimal, low, medium or high")
    out: dict[str, Any] = {"effort": effort}
    if summary is not None:
        out["summary"] = summary
    return out


def _text_options(text: dict[str, Any] | None, extra: dict[str, Any]) -> None:
    """``text.format``: ``text`` needs nothing; ``json_object`` / ``json_schema`` are carried
    as the completion's ``response_format`` (Chat form) when it has one, else refused."""
    if not text:
        return
    fields.check_keys(text, frozenset(("format", "verbosity")), "text")
    if text.get("verbosity") is not None:
        fields.carry(extra, "verbosity", text["verbosity"], "text.verbosity")
    fmt = text.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise _refuse("text.format", "must be an object")
    kind = fmt.get("type")
    if kind == "text":
        fields.check_keys(fmt, frozenset(("type",)), "text.format")
        return
    if kind == "json_object":
        fields.check_keys(fmt, frozenset(("type",)), "text.format")
        fields.carry(extra, "response_format", {"type": "json_object"}, "text.format")
        return
    if kind == "json_schema":
        fields.check_keys(fmt, frozenset(("type", "name", "schema", "strict", "description")), "text.format")
        schema: dict[str, Any] = {"name": fields.text(fmt.get("name"), "text.format.name"), "schema": fmt.get("schema")}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        fields.carry(extra, "response_format", {"type": "json_schema", "json_schema": schema}, "text.format")
        return
    raise _refuse("text.format.type", "must be text, json_object or json_schema")


# The answer.

#: The hub's error code → the Responses ``error.code`` of ``response.failed`` (OA-SDK
#: ``response_error.py`` Literal).
_FAILED_CODES = {"rate_limited": "rate_limit_exceeded", "invalid_message": "invalid_prompt"}


class ResponseEncoder:
    """Encodes one completion's hub messages as Responses API events and keeps the Response
    object they describe.

    Args:
        response_id: the Response ``id`` (``resp_<completion id>``); item ids derive from it.
        created_at: unix seconds.
        request: the request, echoed in the Response as OpenAI does (``model`` as the client
            asked, ``instructions``, ``tools``, ``tool_choice``, ``reasoning``, ``text``...).

    The events follow docs/PROVIDERS.md §1.6, each with ``sequence_number`` from 0:
    :meth:`start` gives ``response.created`` and ``response.in_progress``; each output item is
    ``response.output_item.added`` ... ``response.output_item.done``: reasoning a
    ``reasoning`` item with one summary part (``reasoning_summary_part.added``,
    ``reasoning_summary_text.delta`` / ``.done``, ``reasoning_summary_part.done``), text and
    refusals a ``message`` item (``content_part.added``, ``output_text.delta`` / ``.done`` or
    ``refusal.delta`` / ``.done``, ``content_part.done``), each tool call a ``function_call``
    item with its complete arguments in one ``function_call_arguments.delta`` and ``.done``.
    ``completed`` closes the open item and gives ``response.completed`` (``response.incomplete``
    with ``incomplete_details.reason`` ``max_output_tokens`` / ``content_filter`` for the
    finish reasons ``length`` / ``content_filter``) with usage; an ``error`` gives an
    ``error`` event then ``response.failed``. Reasoning signatures, redacted reasoning,
    citations and calls of tools the provider ran itself have no place here and are not sent.
    """

    def __init__(self, response_id: str, created_at: int, request: ResponsesRequest) -> None:
        self.response_id = response_id
        self.created_at = created_at
        self.request = request
        self.output: list[dict[str, Any]] = []
        self.status = "in_progress"
        self.error: dict[str, Any] | None = None
        self.incomplete: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self._sequence = 0
        self._open: dict[str, Any] | None = None  # the open output item
        self._part: str | None = None  # type of the open content part of a message item

    # The Response object.

    def response(self) -> dict[str, Any]:
        """The Response object built so far: the non-streamed answer once ``completed`` was encoded."""
        request = self.request
        reasoning = request.reasoning or {}
        return {
            "id": self.response_id, "object": "response", "created_at": self.created_at, "status": self.status,
            "error": self.error, "incomplete_details": self.incomplete, "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens, "model": request.model,
            "output": self.output if self.status != "in_progress" else [],
            "parallel_tool_calls": request.parallel_tool_calls is not False, "previous_response_id": None,
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "store": False, "temperature": request.temperature, "text": request.text or {"format": {"type": "text"}},
            "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
            "tools": request.tools or [], "top_p": request.top_p, "truncation": "disabled", "usage": self.usage,
            "user": request.user, "metadata": request.metadata or {},
        }

    # Events.

    def _event(self, payload: dict[str, Any]) -> bytes:
        payload["sequence_number"] = self._sequence
        self._sequence += 1
        kind: str = payload["type"]
        return b"event: " + kind.encode() + b"\ndata: " + _encode(payload) + b"\n\n"

    def start(self) -> bytes:
        """``response.created`` and ``response.in_progress`` (empty output, no usage)."""
        return (self._event({"type": "response.created", "response": self.response()})
                + self._event({"type": "response.in_progress", "response": self.response()}))

    def encode(self, message: Any) -> bytes:
        """The SSE bytes for one hub message (possibly several events, possibly none)."""
        if isinstance(message, ContentChunk):
            return self._content("output_text", message.content)
        if isinstance(message, RefusalChunk):
            return self._content("refusal", message.content)
        if isinstance(message, ThinkingStatus):
            return self._reasoning(message)
        if isinstance(message, ToolCallMessage):
            return self._tool(message)
        if isinstance(message, Completed):
            return self._completed(message)
        if isinstance(message, ErrorMessage):
            return self._failed(message)
        return b""  # citations have no place in the Responses events the hub sends

    # Items.

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self.output) - 1}

    def _open_item(self, item: dict[str, Any], announced: dict[str, Any]) -> bytes:
        out = self._close_item()
        self.output.append(item)
        self._open = item
        return out + self._event({"type": "response.output_item.added", "output_index": len(self.output) - 1,
                                  "item": announced})

    def _close_part(self) -> bytes:
        item = self._open
        if item is None or self._part is None:
            return b""
        kind, self._part = self._part, None
        index = len(item["content"]) - 1
        part = item["content"][index]
        where = {**self._where(), "content_index": index}
        if kind == "output_text":
            done = self._event({"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []})
        else:
            done = self._event({"type": "response.refusal.done", **where, "refusal": part["refusal"]})
        return done + self._event({"type": "response.content_part.done", **where, "part": dict(part)})

    def _close_item(self) -> bytes:
        item = self._open
        if item is None:
            return b""
        out = self._close_part()
        if item["type"] == "reasoning":
            where = {**self._where(), "summary_index": 0}
            summary = item["summary"][0]
            out += self._event({"type": "response.reasoning_summary_text.done", **where, "text": summary["text"]})
            out += self._event({"type": "response.reasoning_summary_part.done", **where, "part": dict(summary)})
        item["status"] = "completed"
        self._open = None
        return out + self._event({"type": "response.output_item.done", "output_index": len(self.output) - 1,
                                  "item": item})

    def _content(self, kind: str, text: str) -> bytes:
        if not text:
            return b""
        out = b""
        if self._open is None or self._open["type"] != "message":
            item_id = f"msg_{self.response_id.removeprefix('resp_')}_{len(self.output)}"
            new: dict[str, Any] = {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant",
                                   "content": []}
            out += self._open_item(new, {**new, "content": []})
        item = self._open
        assert item is not None
        if self._part != kind:
            out += self._close_part()
            part: dict[str, Any] = ({"type": "output_text", "text": "", "annotations": []} if kind == "output_text"
                                    else {"type": "refusal", "refusal": ""})
            item["content"].append(part)
            self._part = kind
            out += self._event({"type": "response.content_part.added", **self._where(),
                                "content_index": len(item["content"]) - 1, "part": dict(part)})
        part = item["content"][-1]
        where = {**self._where(), "content_index": len(item["content"]) - 1}
        if kind == "output_text":
            part["text"] += text
            return out + self._event({"type": "response.output_text.delta", **where, "delta": text, "logprobs": []})
        part["refusal"] += text
        return out + self._event({"type": "response.refusal.delta", **where, "delta": text})

    def _reasoning(self, message: ThinkingStatus) -> bytes:
        if message.status == "done":
            return self._close_item() if self._open is not None and self._open["type"] == "reasoning" else b""
        if not message.content:
            return b""  # a signature or redacted block alone has no place in a summary
        out = b""
        if self._open is None or self._open["type"] != "reasoning":
            item_id = f"rs_{self.response_id.removeprefix('resp_')}_{len(self.output)}"
            summary = {"type": "summary_text", "text": ""}
            reasoning: dict[str, Any] = {"type": "reasoning", "id": item_id, "summary": [summary],
                                         "status": "in_progress"}
            out += self._open_item(reasoning, {**reasoning, "summary": []})
            out += self._event({"type": "response.reasoning_summary_part.added", **self._where(),
                                "summary_index": 0, "part": dict(summary)})
        assert self._open is not None
        self._open["summary"][0]["text"] += message.content
        return out + self._event({"type": "response.reasoning_summary_text.delta", **self._where(),
                                  "summary_index": 0, "delta": message.content})

    def _tool(self, message: ToolCallMessage) -> bytes:
        if message.server_tool:
            return b""  # the provider ran it: nothing for the client to call
        raw = message.arguments if isinstance(message.arguments, str) else _encode(message.arguments).decode()
        item_id = f"fc_{self.response_id.removeprefix('resp_')}_{len(self.output)}"
        call: dict[str, Any] = {"type": "function_call", "id": item_id, "call_id": message.id,
                                "name": message.tool, "arguments": raw, "status": "in_progress"}
        out = self._open_item(call, {**call, "arguments": ""})
        where = self._where()
        out += self._event({"type": "response.function_call_arguments.delta", **where, "delta": raw})
        out += self._event({"type": "response.function_call_arguments.done", **where, "arguments": raw})
        return out + self._close_item()

    def _completed(self, message: Completed) -> bytes:
        out = self._close_item()
        usage = message.usage
        if usage is not None:
            self.usage = {"input_tokens": usage.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens": usage.completion_tokens,
                          "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
                          "total_tokens": usage.total_tokens}
        reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(message.finish_reason)
        if reason is None:
            self.status = "completed"
            return out + self._event({"type": "response.completed", "response": self.response()})
        self.status = "incomplete"
        self.incomplete = {"reason": reason}
        return out + self._event({"type": "response.incomplete", "response": self.response()})

    def _failed(self, message: ErrorMessage) -> bytes:
        error = message.error
        out = self._event({"type": "error", "code": error.code, "message": error.message, "param": None})
        self.status = "failed"
        self.error = {"code": _FAILED_CODES.get(error.code, "server_error"), "message": error.message}
        return out + self._event({"type": "response.failed", "response": self.response()})
