"""The OpenAI-compatible surface: request parsing and response encoding, pure.

``POST /v1/chat/completions`` accepts OpenAI's request body and answers in OpenAI's Chat
Completions format whatever provider serves the model: with ``stream: true`` SSE events
``data: <chat.completion.chunk>`` ending with ``data: [DONE]`` (and, when
``stream_options.include_usage`` is true, a last chunk with ``choices: []`` and ``usage``),
as described in docs/PROVIDERS.md §1.1-§1.3 (source: openai-python ``chat_completion_chunk.py``);
with ``stream: false`` one ``chat.completion`` object.

:class:`ChunkEncoder` turns the hub's messages (protocol/messages.py) for one completion
into those bytes. It has no clock: the ``created`` timestamp (unix seconds) is passed in.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.errors import ProtocolError
from protocol.messages import (
    ChatMessage,
    ChoiceCount,
    Completed,
    Completion,
    ContentChunk,
    EndUser,
    ErrorMessage,
    ModelName,
    Penalty,
    RefusalChunk,
    ThinkingStatus,
    ToolCallMessage,
    TopLogprobs,
    UnitInterval,
)

__all__ = [
    "ChatCompletionRequest",
    "decode_chat_request",
    "ChunkEncoder",
    "error_body",
    "usage_dict",
    "completion_object",
    "DONE",
]

DONE = b"data: [DONE]\n\n"

_encode = msgspec.json.Encoder().encode


class StreamOptions(msgspec.Struct):
    """``stream_options``: only ``include_usage`` is read."""

    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The fields of an OpenAI Chat Completions request the hub reads; any other field is
    refused (:func:`decode_chat_request` names them), so nothing is dropped silently.

    ``max_completion_tokens`` is accepted as a synonym of ``max_tokens``; ``reasoning_effort``
    becomes the hub's ``reasoning`` option; ``coalesce`` is the hub's own extension. The
    options from ``response_format`` to ``user`` become the same :class:`Completion` fields;
    each provider's builder carries them in its terms or refuses them (docs/PROTOCOL.md
    "Request fields per provider", protocol/request_fields.py).
    """

    model: ModelName
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stop: str | list[str] | None = None
    reasoning_effort: str | None = None
    response_format: dict[str, Any] | None = None
    n: ChoiceCount | None = None
    seed: int | None = None
    top_p: UnitInterval | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    parallel_tool_calls: bool | None = None
    user: EndUser | None = None
    coalesce: bool = True

    def to_completion(self, completion_id: str | None = None) -> Completion:
        """The equivalent WebSocket ``completion`` message (the hub assigns an id if None)."""
        return Completion(
            model=self.model,
            messages=self.messages,
            id=completion_id,
            max_tokens=self.max_tokens if self.max_tokens is not None else self.max_completion_tokens,
            temperature=self.temperature,
            tools=self.tools,
            tool_choice=self.tool_choice,
            stop=self.stop,
            reasoning={"effort": self.reasoning_effort} if self.reasoning_effort else None,
            response_format=self.response_format,
            n=self.n,
            seed=self.seed,
            top_p=self.top_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            parallel_tool_calls=self.parallel_tool_calls,
            user=self.user,
            coalesce=self.coalesce,
        )


_REQUEST_DECODER = msgspec.json.Decoder(ChatCompletionRequest)


def decode_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode an OpenAI Chat Completions request body.

    A field :class:`ChatCompletionRequest` does not declare is refused, all such fields named
    at once (an OpenAI SDK sends only the fields it is given; ``extra_body`` keys land here).
    Values out of range (``n`` above 128, ``top_p`` above 1...: the ranges of
    protocol/messages.py) are refused naming the field.

    Raises:
        ProtocolError: ``invalid_json`` or ``invalid_message`` (naming the field).
    """
    try:
        request = _REQUEST_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        unknown = _unknown_fields(body)
        if unknown:
            names = ", ".join(f"`{name}`" for name in unknown)
            raise ProtocolError(
                f"unknown field{'s' if len(unknown) > 1 else ''} {names}: the hub refuses fields it cannot carry "
                "(docs/PROTOCOL.md \"Request fields per provider\")", "invalid_message") from None
        raise ProtocolError(f"invalid chat completion request: {exc}", "invalid_message") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # invalid UTF-8 in a string
        raise ProtocolError(f"request body is not valid JSON: {exc}", "invalid_json") from None
    except RecursionError:  # msgspec gives up on JSON nested about 1000 levels deep
        raise ProtocolError("request body is nested too deeply", "invalid_json") from None
    if not request.messages:
        raise ProtocolError("`messages` must hold at least one message", "invalid_message")
    return request


_KNOWN_FIELDS = frozenset(ChatCompletionRequest.__struct_fields__)
_ANY_DECODER = msgspec.json.Decoder()


def _unknown_fields(body: bytes) -> list[str]:
    """The top-level keys of ``body`` the request does not declare (slow path, errors only)."""
    try:
        raw = _ANY_DECODER.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return []
    if not isinstance(raw, dict):
        return []
    return sorted(str(key) for key in raw if key not in _KNOWN_FIELDS)[:16]


def error_body(code: str, message: str, status: int | None = None) -> bytes:
    """OpenAI's error envelope ``{"error": {"message", "type", "param", "code"}}`` (docs/PROVIDERS.md §6.1)."""
    kind = "invalid_request_error" if status is not None and 400 <= status < 500 else "api_error"
    return _encode({"error": {"message": message, "type": kind, "param": None, "code": code}})


class ChunkEncoder:
    """Encodes one completion's hub messages as OpenAI ``chat.completion.chunk`` SSE events.

    Args:
        response_id: the ``id`` of every chunk (``chatcmpl-…``).
        model: the ``model`` of every chunk (as the client asked for it).
        created: unix time in seconds, the same on every chunk.
        include_usage: send the ``choices: []`` usage chunk before ``[DONE]``.

    Reasoning deltas travel as ``delta.reasoning_content`` (the DeepSeek spelling, read by
    most OpenAI-compatible clients); refusals as ``delta.refusal``; tool calls as one delta
    each with ``index``, ``id``, ``type`` and the complete ``function.arguments``.

    Choices (``n`` above 1, docs/PROTOCOL.md "Choices"): each chunk holds one choice, whose
    ``choices[0].index`` is the hub message's ``choice``; a choice's first chunk has
    ``delta.role``, its tool calls are numbered from 0, and ``completed`` becomes one finish
    chunk per choice (``finishReasons``) before the usage chunk, as OpenAI streams them
    (docs/PROVIDERS.md §1.2).
    """

    def __init__(self, response_id: str, model: str, created: int, *, include_usage: bool = False) -> None:
        self.response_id = response_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self._started: set[int] = set()  # choices whose role chunk was sent
        self._tool_index: dict[int, int] = {}  # choice → its next tool call index
        # Built once: every chunk shares this prefix.
        self._head = (
            b'data: {"id":' + _encode(response_id) + b',"object":"chat.completion.chunk","created":'
            + str(created).encode() + b',"model":' + _encode(model)
        )

    def encode(self, message: Any) -> bytes:
        """The SSE bytes for one hub message (possibly several events, possibly none)."""
        out = b""
        if not self._started:
            out = self._start(0)
        choice = getattr(message, "choice", 0)
        if choice not in self._started:
            out += self._start(choice)
        if isinstance(message, ContentChunk):
            return out + self._chunk({"content": message.content}, choice=choice)
        if isinstance(message, ThinkingStatus):
            if message.content:
                out += self._chunk({"reasoning_content": message.content}, choice=choice)
            return out
        if isinstance(message, RefusalChunk):
            return out + self._chunk({"refusal": message.content}, choice=choice)
        if isinstance(message, ToolCallMessage):
            arguments = message.arguments if isinstance(message.arguments, str) else _encode(message.arguments).decode()
            index = self._tool_index.get(choice, 0)
            call = {"index": index, "id": message.id, "type": "function",
                    "function": {"name": message.tool, "arguments": arguments}}
            self._tool_index[choice] = index + 1
            return out + self._chunk({"tool_calls": [call]}, choice=choice)
        if isinstance(message, Completed):
            for index, reason in enumerate(message.finish_reasons or [message.finish_reason]):
                if index not in self._started:
                    out += self._start(index)  # a choice with no output still has its role
                out += self._chunk({}, finish_reason=reason, choice=index)
            if self.include_usage and message.usage is not None:
                out += self._head + b',"choices":[],"usage":' + _encode(usage_dict(message.usage)) + b"}\n\n"
            return out + DONE
        if isinstance(message, ErrorMessage):
            error = message.error
            return out + b"data: " + error_body(error.code, error.message, error.status) + b"\n\n" + DONE
        return out  # citations have no place in OpenAI's chunk format

    def _start(self, choice: int) -> bytes:
        """The first chunk of ``choice``: ``delta.role``."""
        self._started.add(choice)
        return self._chunk({"role": "assistant", "content": ""}, choice=choice)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, choice: int = 0) -> bytes:
        body = {"index": choice, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._head + b',"choices":[' + _encode(body) + b"]}\n\n"


def usage_dict(usage: Any) -> dict[str, Any]:
    """OpenAI's ``usage`` object from the hub's :class:`~protocol.messages.UsageInfo`."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.reasoning_tokens is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


def completion_object(
    response_id: str, model: str, created: int, messages: list[Any]
) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` object from all hub messages of one completion.

    The last message must be ``completed``; an ``error`` should be answered with
    :func:`error_body` instead. With ``n`` above 1 (``completed`` has ``finishReasons``)
    ``choices`` holds one entry per choice, in index order, each from the messages of its
    ``choice`` (docs/PROTOCOL.md "Choices"; OpenAI API reference, "The chat completion object").
    """
    outputs: dict[int, _Output] = {}
    reasons = ["stop"]
    usage = None
    for message in messages:
        if isinstance(message, Completed):
            reasons = message.finish_reasons or [message.finish_reason]
            usage = message.usage
            continue
        if not isinstance(message, (ContentChunk, ThinkingStatus, RefusalChunk, ToolCallMessage)):
            continue
        output = outputs.get(message.choice)
        if output is None:
            output = outputs[message.choice] = _Output()
        if isinstance(message, ContentChunk):
            output.text.append(message.content)
        elif isinstance(message, ThinkingStatus):
            output.reasoning.append(message.content)
        elif isinstance(message, RefusalChunk):
            output.refusal.append(message.content)
        else:
            arguments = message.arguments if isinstance(message.arguments, str) else _encode(message.arguments).decode()
            output.tool_calls.append({"id": message.id, "type": "function",
                                      "function": {"name": message.tool, "arguments": arguments}})
    choices = [{"index": index, "message": outputs.get(index, _Output()).message(), "logprobs": None,
                "finish_reason": reason} for index, reason in enumerate(reasons)]
    result: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        result["usage"] = usage_dict(usage)
    return result


class _Output:
    """The messages of one choice, gathered for :func:`completion_object`."""

    __slots__ = ("text", "reasoning", "refusal", "tool_calls")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []

    def message(self) -> dict[str, Any]:
        """The choice's ``message``: ``role``, ``content`` (None when it only called tools),
        ``reasoning_content`` when it reasoned, ``refusal``, ``tool_calls`` when it called any."""
        text, tool_calls = self.text, self.tool_calls
        body: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not tool_calls else None}
        if self.reasoning:
            body["reasoning_content"] = "".join(self.reasoning)
        body["refusal"] = "".join(self.refusal) if self.refusal else None
        if tool_calls:
            body["tool_calls"] = tool_calls
        return body
