"""The Anthropic Messages surface (``POST /v1/messages``): request mapping and event encoding, pure.

The hub answers Anthropic's Messages API whatever provider serves the model, so the
``anthropic`` SDK (``messages.create``, ``messages.stream``) works against OpenAI, Gemini or
Ollama models behind the hub. docs/PROTOCOL.md "/v1/messages" is the reference for what is
carried, mapped or refused; the wire format is docs/PROVIDERS.md §2 (events §2.2, blocks §2.3,
deltas §2.4, stop reasons §2.5, errors §2.7 and §6.2).

- :func:`decode_messages_request` reads the request body into :class:`MessagesRequest`;
  :meth:`MessagesRequest.to_completion` maps it onto the hub's
  :class:`~protocol.messages.Completion` (OpenAI-shaped messages and tools), refusing with
  :class:`~protocol.errors.ProtocolError` ``invalid_message`` every field the completion
  cannot carry, naming it. Nothing is dropped without a word, except what PROTOCOL.md lists
  as accepted and not forwarded (``cache_control`` hints, earlier ``thinking`` blocks).
- :class:`MessageEncoder` turns one completion's hub messages into Anthropic's SSE events
  (``message_start``, ``content_block_start`` / ``content_block_delta`` /
  ``content_block_stop``, ``message_delta``, ``message_stop``, ``ping``, ``error``) and keeps
  the message they build, which is the non-streamed answer (:meth:`MessageEncoder.message`).
- :func:`error_body` is Anthropic's error envelope for a hub error code.

No clock, no I/O: ids come from the caller.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol import front_door_fields as fields
from protocol.errors import ProtocolError
from protocol.front_door_fields import FieldRefused
from protocol.messages import (
    ChatMessage,
    CitationMessage,
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
    "MessagesRequest",
    "decode_messages_request",
    "MessageEncoder",
    "error_body",
    "error_type_of",
    "STOP_REASONS",
    "effort_of_budget",
]

_encode = msgspec.json.Encoder().encode

#: The hub's finish reason → Anthropic ``stop_reason`` (docs/PROVIDERS.md §2.5). The hub keeps
#: no trace of which stop sequence ended a stream (its finish reason is ``stop``), so
#: ``stop_sequence`` is never sent; anything unknown is ``end_turn``.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}

#: Anthropic's error ``type`` by HTTP status (docs/PROVIDERS.md §6.2).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_of(http_status: int | None) -> str:
    """Anthropic's error ``type`` for an HTTP status: the documented one, else
    ``invalid_request_error`` for another 4xx and ``api_error`` for anything else."""
    if http_status is not None and http_status in _ERROR_TYPES:
        return _ERROR_TYPES[http_status]
    return "invalid_request_error" if http_status is not None and 400 <= http_status < 500 else "api_error"


def error_body(code: str, message: str, http_status: int | None) -> bytes:
    """Anthropic's error envelope ``{"type": "error", "error": {"type", "message", "code"}}``
    (docs/PROVIDERS.md §6.2); ``code`` is the hub's error code (protocol.errors.ErrorCode), an
    addition the SDK keeps in ``APIStatusError.body``."""
    return _encode({"type": "error", "error": {"type": error_type_of(http_status), "message": message,
                                               "code": code}})


def effort_of_budget(budget_tokens: int) -> str:
    """The OpenAI ``reasoning_effort`` sent for an Anthropic thinking budget (in tokens):
    ``low`` up to 1024, ``medium`` up to 4096, ``high`` above: the inverse of
    protocol.providers.base.THINKING_BUDGET."""
    if budget_tokens <= 1024:
        return "low"
    return "medium" if budget_tokens <= 4096 else "high"


# The request.


class MessagesRequest(msgspec.Struct, forbid_unknown_fields=True):
    """An Anthropic Messages request as the hub reads it (any other field is refused).

    Content blocks, tools and ``tool_choice`` stay plain JSON here; :meth:`to_completion`
    checks them block by block so that a refusal can name the exact place.
    """

    model: ModelName
    max_tokens: int
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    stream: bool = False

    def to_completion(self) -> Completion:
        """The hub's ``completion`` for this request (the hub assigns its id).

        Returns:
            A :class:`~protocol.messages.Completion` with OpenAI-shaped ``messages`` and
            ``tools``; ``thinking`` is kept as given and also becomes a ``reasoning`` effort
            (:func:`effort_of_budget`) for providers that only take an effort.

        Raises:
            ProtocolError: ``invalid_message`` naming the field that cannot be carried or is
                malformed.
        """
        if self.max_tokens < 1:
            raise _refuse("max_tokens", "must be at least 1")
        extra: dict[str, Any] = {}
        if self.top_k is not None:
            raise _refuse("top_k", "cannot be carried: the hub's completion request has no top_k (OpenAI has none); "
                          "leave it out")
        if self.top_p is not None:
            fields.carry(extra, "top_p", self.top_p, "top_p")
        if self.metadata:
            unknown = sorted(set(self.metadata) - {"user_id"})
            if unknown:
                raise _refuse(f"metadata.{unknown[0]}", "is not a field of metadata")
            if self.metadata.get("user_id") is not None:
                fields.carry(extra, "user", self.metadata["user_id"], "metadata.user_id")
        tools, tool_choice = _tools(self.tools, self.tool_choice, extra)
        thinking, reasoning = _thinking(self.thinking)
        messages = _system(self.system) + _messages(self.messages)
        if not messages:
            raise _refuse("messages", "must hold at least one message")
        return Completion(
            model=self.model,
            messages=messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            tools=tools,
            tool_choice=tool_choice,
            stop=list(self.stop_sequences) if self.stop_sequences else None,
            thinking=thinking,
            reasoning=reasoning,
            **extra,
        )


_REQUEST_DECODER = msgspec.json.Decoder(MessagesRequest)

#: The fields of the hub's ``completion`` message: an Anthropic field is carried when its
#: OpenAI counterpart is one of them, refused otherwise.


def decode_messages_request(body: bytes) -> MessagesRequest:
    """Decode an Anthropic Messages request body.

    Raises:
        ProtocolError: ``invalid_json`` (not JSON, nested too deeply) or ``invalid_message``
            (a field missing, unknown, or of the wrong type; the message names it).
    """
    try:
        return _REQUEST_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid messages request: {exc}", "invalid_message") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}", "invalid_json") from None
    except RecursionError:  # msgspec gives up on JSON nested about 1000 levels deep
        raise ProtocolError("request body is nested too deeply", "invalid_json") from None


def _refuse(field: str, why: str) -> FieldRefused:
    return FieldRefused(field, why)


def _system(system: str | list[dict[str, Any]] | None) -> list[ChatMessage]:
    """``system`` as one system message (text blocks as OpenAI text parts, in order)."""
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [ChatMessage(role="system", content=system)]
    parts = []
    for index, block in enumerate(system):
        where = f"system[{index}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _refuse(f"{where}.type", "must be text")
        fields.check_keys(block, _TEXT_KEYS, where)
        _citations_absent(block, where)
        parts.append({"type": "text", "text": fields.text(block.get("text"), f"{where}.text")})
    return [ChatMessage(role="system", content=parts)] if parts else []


#: Keys accepted per block type. ``cache_control`` is a caching hint without effect on the
#: answer: accepted and not forwarded (docs/PROTOCOL.md "/v1/messages").
_TEXT_KEYS = frozenset(("type", "text", "cache_control", "citations"))
_IMAGE_KEYS = frozenset(("type", "source", "cache_control"))
_TOOL_USE_KEYS = frozenset(("type", "id", "name", "input", "cache_control", "caller"))
_TOOL_RESULT_KEYS = frozenset(("type", "tool_use_id", "content", "is_error", "cache_control"))
_THINKING_KEYS = frozenset(("type", "thinking", "signature"))
_REDACTED_KEYS = frozenset(("type", "data"))


def _citations_absent(block: dict[str, Any], where: str) -> None:
    if block.get("citations"):
        raise _refuse(f"{where}.citations", "cannot be carried (no provider behind the hub takes input citations)")


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An Anthropic image block as an OpenAI ``image_url`` part (a data URL for base64)."""
    fields.check_keys(block, _IMAGE_KEYS, where)
    source = block.get("source")
    if not isinstance(source, dict):
        raise _refuse(f"{where}.source", "must be an object")
    kind = source.get("type")
    if kind == "base64":
        fields.check_keys(source, frozenset(("type", "media_type", "data")), f"{where}.source")
        media = fields.text(source.get("media_type"), f"{where}.source.media_type")
        data = fields.text(source.get("data"), f"{where}.source.data")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        fields.check_keys(source, frozenset(("type", "url")), f"{where}.source")
        return {"type": "image_url", "image_url": {"url": fields.text(source.get("url"), f"{where}.source.url")}}
    raise _refuse(f"{where}.source.type", "must be base64 or url")


def _tool_result(block: dict[str, Any], where: str) -> ChatMessage:
    fields.check_keys(block, _TOOL_RESULT_KEYS, where)
    if block.get("is_error"):
        raise _refuse(f"{where}.is_error", "cannot be carried (tool messages have no error flag); "
                      "say so in the result's text")
    tool_use_id = fields.text(block.get("tool_use_id"), f"{where}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        parts = []
        for index, part in enumerate(content):
            inner = f"{where}.content[{index}]"
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _refuse(f"{inner}.type", "must be text (a tool result carries text only)")
            fields.check_keys(part, _TEXT_KEYS, inner)
            _citations_absent(part, inner)
            parts.append({"type": "text", "text": fields.text(part.get("text"), f"{inner}.text")})
        return ChatMessage(role="tool", content=parts, tool_call_id=tool_use_id)
    return ChatMessage(role="tool", content=fields.text(content, f"{where}.content"), tool_call_id=tool_use_id)


def _user(content: list[Any], where: str) -> list[ChatMessage]:
    """A user turn's blocks: ``tool_result`` blocks become tool messages, text and images
    user messages, in block order."""
    out: list[ChatMessage] = []
    parts: list[dict[str, Any]] = []

    def flush() -> None:
        if parts:
            only_text = len(parts) == 1 and parts[0]["type"] == "text"
            out.append(ChatMessage(role="user", content=parts[0]["text"] if only_text else list(parts)))
            parts.clear()

    for index, block in enumerate(content):
        inner = f"{where}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            fields.check_keys(block, _TEXT_KEYS, inner)
            _citations_absent(block, inner)
            parts.append({"type": "text", "text": fields.text(block.get("text"), f"{inner}.text")})
        elif kind == "image":
            parts.append(_image_part(block, inner))
        elif kind == "tool_result":
            flush()
            out.append(_tool_result(block, inner))
        else:
            raise _refuse(f"{inner}.type", f"{kind!r} cannot be carried in a user turn (text, image, tool_result)")
    flush()
    return out


def _assistant(content: list[Any], where: str) -> ChatMessage:
    """An assistant turn: text joined, ``tool_use`` blocks as OpenAI tool calls; ``thinking``
    and ``redacted_thinking`` blocks are accepted and not forwarded (the hub's messages have
    no place for them, docs/PROTOCOL.md "/v1/messages")."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        inner = f"{where}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            fields.check_keys(block, _TEXT_KEYS, inner)
            _citations_absent(block, inner)
            texts.append(fields.text(block.get("text"), f"{inner}.text"))
        elif kind == "tool_use":
            fields.check_keys(block, _TOOL_USE_KEYS, inner)
            caller = block.get("caller")
            if caller is not None and caller != {"type": "direct"}:
                raise _refuse(f"{inner}.caller", "cannot be carried (only direct tool calls)")
            arguments = block.get("input", {})
            if not isinstance(arguments, dict):
                raise _refuse(f"{inner}.input", "must be an object")
            calls.append({"id": fields.text(block.get("id"), f"{inner}.id"), "type": "function",
                          "function": {"name": fields.text(block.get("name"), f"{inner}.name"),
                                       "arguments": _encode(arguments).decode()}})
        elif kind == "thinking":
            fields.check_keys(block, _THINKING_KEYS, inner)
        elif kind == "redacted_thinking":
            fields.check_keys(block, _REDACTED_KEYS, inner)
        else:
            raise _refuse(f"{inner}.type", f"{kind!r} cannot be carried in an assistant turn "
                          "(text, tool_use, thinking, redacted_thinking)")
    return ChatMessage(role="assistant", content="".join(texts) if texts or not calls else None,
                       tool_calls=calls or None)


def _messages(messages: list[dict[str, Any]]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _refuse(where, "must be an object")
        fields.check_keys(message, frozenset(("role", "content")), where)
        role = message.get("role")
        content = message.get("content")
        if role not in ("user", "assistant"):
            raise _refuse(f"{where}.role", "must be user or assistant")
        if isinstance(content, str):
            out.append(ChatMessage(role=role, content=content))
        elif isinstance(content, list):
            if role == "user":
                out.extend(_user(content, where))
            else:
                out.append(_assistant(content, where))
        else:
            raise _refuse(f"{where}.content", "must be a string or a list of content blocks")
    return out


def _tools(tools: list[dict[str, Any]] | None, choice: dict[str, Any] | None,
           extra: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str | dict[str, Any] | None]:
    """Client tools as OpenAI function tools, and ``tool_choice`` in OpenAI's terms."""
    converted = None
    if tools:
        converted = []
        for index, tool in enumerate(tools):
            where = f"tools[{index}]"
            if not isinstance(tool, dict):
                raise _refuse(where, "must be an object")
            if tool.get("type", "custom") != "custom":
                raise _refuse(f"{where}.type", f"{tool.get('type')!r} cannot be carried: only client tools "
                              "(name, description, input_schema); server tools run on Anthropic only")
            fields.check_keys(tool, frozenset(("type", "name", "description", "input_schema", "cache_control")), where)
            function: dict[str, Any] = {"name": fields.text(tool.get("name"), f"{where}.name")}
            if tool.get("description") is not None:
                function["description"] = fields.text(tool.get("description"), f"{where}.description")
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                raise _refuse(f"{where}.input_schema", "must be a JSON schema object")
            function["parameters"] = schema
            converted.append({"type": "function", "function": function})
    if choice is None:
        return converted, None
    fields.check_keys(choice, frozenset(("type", "name", "disable_parallel_tool_use")), "tool_choice")
    if choice.get("disable_parallel_tool_use"):
        fields.carry(extra, "parallel_tool_calls", False, "tool_choice.disable_parallel_tool_use")
    kind = choice.get("type")
    if kind == "auto":
        return converted, "auto"
    if kind == "any":
        return converted, "required"
    if kind == "none":
        return converted, "none"
    if kind == "tool":
        name = fields.text(choice.get("name"), "tool_choice.name")
        return converted, {"type": "function", "function": {"name": name}}
    raise _refuse("tool_choice.type", "must be auto, any, tool or none")


def _thinking(thinking: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(thinking, reasoning)`` of the completion: Anthropic's ``thinking`` as given (Anthropic,
    Gemini, Ollama read it) and the effort its budget stands for (OpenAI reads that)."""
    if thinking is None:
        return None, None
    fields.check_keys(thinking, frozenset(("type", "budget_tokens")), "thinking")
    kind = thinking.get("type")
    if kind == "disabled":
        return None, None
    if kind != "enabled":
        raise _refuse("thinking.type", "must be enabled or disabled")
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise _refuse("thinking.budget_tokens", "must be a positive integer")
    return {"type": "enabled", "budget_tokens": budget}, {"effort": effort_of_budget(budget)}


# The answer.


def _event(kind: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind + b"\ndata: " + _encode(payload) + b"\n\n"


PING = b'event: ping\ndata: {"type":"ping"}\n\n'


class MessageEncoder:
    """Encodes one completion's hub messages as Anthropic Messages SSE events and keeps the
    message they describe.

    Args:
        message_id: the message's ``id`` (``msg_<completion id>``).
        model: the ``model`` reported (as the client asked for it).

    The events follow docs/PROVIDERS.md §2.2: :meth:`start` gives ``message_start`` and a
    ``ping``; then each block is ``content_block_start``, its deltas, ``content_block_stop``:
    reasoning is a ``thinking`` block (``thinking_delta``, then ``signature_delta`` when the
    provider signed it; reasoning after a signature opens a new block), redacted reasoning a
    ``redacted_thinking`` block, text a ``text`` block (``text_delta``; a citation a
    ``citations_delta`` on it), refusal text a ``text`` block too (and ``stop_reason``
    ``refusal``), each tool call a ``tool_use`` block (``server_tool_use`` for a tool the
    provider ran) with its complete arguments in one ``input_json_delta``. ``completed`` closes
    the open block and gives ``message_delta`` (``stop_reason`` by :data:`STOP_REASONS`,
    cumulative ``usage``) and ``message_stop``; an ``error`` gives ``event: error`` (§2.7).
    Gemini's tool-call signatures have no place in the format and are not sent.
    """

    def __init__(self, message_id: str, model: str) -> None:
        self.message_id = message_id
        self.model = model
        self.content: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0}
        self._open: str | None = None  # type of the open block, None when none
        self._signed = False  # the open thinking block has its signature
        self._refused = False

    def start(self) -> bytes:
        """``message_start`` (empty content, usage 0/0 until the end) and one ``ping``."""
        return _event(b"message_start", {"type": "message_start", "message": self._message_head()}) + PING

    def message(self) -> dict[str, Any]:
        """The Message object built so far: the non-streamed answer once ``completed`` was encoded."""
        head = self._message_head()
        head["content"] = self.content
        head["stop_reason"] = self.stop_reason
        head["usage"] = self.usage
        return head

    def _message_head(self) -> dict[str, Any]:
        return {"id": self.message_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": dict(self.usage)}

    def encode(self, message: Any) -> bytes:
        """The SSE bytes for one hub message (possibly several events, possibly none)."""
        if isinstance(message, ContentChunk):
            return self._text(message.content)
        if isinstance(message, ThinkingStatus):
            return self._thinking(message)
        if isinstance(message, RefusalChunk):
            self._refused = True
            return self._text(message.content)
        if isinstance(message, ToolCallMessage):
            return self._tool(message)
        if isinstance(message, CitationMessage):
            out = self._open_block("text", {"type": "text", "text": "", "citations": []})
            block = self.content[-1]
            block.setdefault("citations", []).append(message.citation)
            return out + self._delta({"type": "citations_delta", "citation": message.citation})
        if isinstance(message, Completed):
            return self._completed(message)
        if isinstance(message, ErrorMessage):
            error = message.error
            payload = msgspec.json.decode(error_body(error.code, error.message, error.status))
            return _event(b"error", payload)  # as Anthropic: the open block is not closed (§2.7)
        return b""

    # Blocks.

    def _open_block(self, kind: str, block: dict[str, Any]) -> bytes:
        """Open a block of ``kind`` unless one is open (then nothing)."""
        if self._open == kind:
            return b""
        out = self._close()
        self.content.append(block)
        self._open = kind
        self._signed = False
        start = {"type": "content_block_start", "index": len(self.content) - 1, "content_block": dict(block)}
        return out + _event(b"content_block_start", start)

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event(b"content_block_stop", {"type": "content_block_stop", "index": len(self.content) - 1})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event(b"content_block_delta", {"type": "content_block_delta", "index": len(self.content) - 1,
                                               "delta": delta})

    def _text(self, text: str) -> bytes:
        if not text:
            return b""
        out = self._open_block("text", {"type": "text", "text": ""})
        self.content[-1]["text"] += text
        return out + self._delta({"type": "text_delta", "text": text})

    def _thinking(self, message: ThinkingStatus) -> bytes:
        if message.status == "done":
            return self._close() if self._open in ("thinking", "redacted_thinking") else b""
        out = b""
        if message.redacted is not None:
            out += self._open_block("redacted_thinking", {"type": "redacted_thinking", "data": message.redacted})
            out += self._close()
        if message.content:
            if self._open == "thinking" and self._signed:
                out += self._close()  # a signature ends its block: what follows is a new one
            out += self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self.content[-1]["thinking"] += message.content
            out += self._delta({"type": "thinking_delta", "thinking": message.content})
        if message.signature is not None:
            out += self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self.content[-1]["signature"] = message.signature
            self._signed = True
            out += self._delta({"type": "signature_delta", "signature": message.signature})
        return out

    def _tool(self, message: ToolCallMessage) -> bytes:
        raw = message.arguments if isinstance(message.arguments, str) else _encode(message.arguments).decode()
        kind = "server_tool_use" if message.server_tool else "tool_use"
        out = self._close()
        out += self._open_block(kind, {"type": kind, "id": message.id, "name": message.tool, "input": {}})
        self.content[-1]["input"] = message.arguments if isinstance(message.arguments, dict) else raw
        out += self._delta({"type": "input_json_delta", "partial_json": raw})
        return out + self._close()

    def _completed(self, message: Completed) -> bytes:
        out = self._close()
        self.stop_reason = "refusal" if self._refused else STOP_REASONS.get(message.finish_reason, "end_turn")
        if message.usage is not None:
            self.usage = {"input_tokens": message.usage.prompt_tokens,
                          "output_tokens": message.usage.completion_tokens}
        delta = {"type": "message_delta", "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                 "usage": dict(self.usage)}
        return out + _event(b"message_delta", delta) + _event(b"message_stop", {"type": "message_stop"})
