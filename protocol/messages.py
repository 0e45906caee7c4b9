"""WebSocket wire messages (``/ws/stream``): msgspec Structs in tagged unions on ``"type"``.

Client → hub messages are decoded by :func:`decode_client_message` with one decoder built
once; hub → client messages are encoded once per event by :func:`encode` whatever the number
of subscribers. Field names on the wire are camelCase (``completionId``, ``finishReason``)
except the request options borrowed from the OpenAI API (``max_tokens``, ``tool_choice``),
which keep their provider spelling. docs/PROTOCOL.md describes every message with an example.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeAlias

import msgspec

from protocol.errors import ProtocolError

__all__ = [
    "ModelName",
    "ChoiceCount",
    "UnitInterval",
    "Penalty",
    "TopLogprobs",
    "EndUser",
    "ChatMessage",
    "Completion",
    "Subscribe",
    "Unsubscribe",
    "Cancel",
    "Ping",
    "Auth",
    "ClientMessage",
    "decode_client_message",
    "UsageInfo",
    "ErrorInfo",
    "Subscribed",
    "Unsubscribed",
    "ContentChunk",
    "ThinkingStatus",
    "RefusalChunk",
    "ToolCallMessage",
    "CitationMessage",
    "Completed",
    "ErrorMessage",
    "Pong",
    "Ack",
    "Authenticated",
    "RequestId",
    "request_id_of",
    "Snapshot",
    "ChoiceSnapshot",
    "Cursor",
    "CreateWorkflow",
    "SubscribeWorkflow",
    "CancelWorkflow",
    "TokenCreated",
    "WorkflowTransition",
    "AgentStarted",
    "AgentProgress",
    "FunctionExecuted",
    "AgentCompleted",
    "WorkflowCompleted",
    "WorkflowSnapshot",
    "Attempt",
    "CircuitState",
    "HubMessage",
    "encode",
    "STREAM_TYPES",
    "CHANNEL_PATTERN",
    "COMPLETION_ID_PATTERN",
    "HUB_DECODER",
]

#: Type-level subscriptions of the original design (``{"type":"subscribe","streams":[...]}``).
STREAM_TYPES = ("completion", "workflow", "agent_status", "system")

#: A completion id: 1 to 128 characters from ``[A-Za-z0-9_.:-]``.
COMPLETION_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")

#: Channel names: ``completion:<id>``, ``workflow:<id>``, ``agent:<id>`` or ``system``.
CHANNEL_PATTERN = re.compile(r"(completion|workflow|agent):[A-Za-z0-9_.:\-]{1,128}|system")


# Client → hub.


class ChatMessage(msgspec.Struct, omit_defaults=True):
    """One chat message in OpenAI's shape: ``{"role": "user", "content": "Hello"}``.

    ``content`` is a string or a list of OpenAI content parts (``{"type": "text", "text": …}``);
    ``tool_calls`` / ``tool_call_id`` / ``name`` follow the OpenAI Chat Completions API.
    """

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


#: A request id: 1 to 64 characters chosen by the client (docs/PROTOCOL.md "Request ids").
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]

#: A model name as a client gives it (``provider/model``): 1 to 256 characters. It is echoed
#: in ``completed``, ``attempts`` and errors, so its length bounds theirs (docs/PROTOCOL.md
#: "Limits").
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


#: Ranges of the OpenAI request options (OpenAI API reference, "Create chat completion"), shared
#: by :class:`Completion` and protocol/openai_compat.py's request: ``n`` 1-128, ``top_p`` 0-1,
#: penalties -2 to 2, ``top_logprobs`` 0-20; the hub bounds ``user`` to 256 characters.
ChoiceCount = Annotated[int, msgspec.Meta(ge=1, le=128)]
UnitInterval = Annotated[float, msgspec.Meta(ge=0, le=1)]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]
TopLogprobs = Annotated[int, msgspec.Meta(ge=0, le=20)]
EndUser = Annotated[str, msgspec.Meta(max_length=256)]


class _ClientMessage(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    """Base of client messages (tagged on ``type``; unknown fields are rejected).

    Attributes:
        rid: optional request id (1-64 characters) chosen by the client; the hub echoes it as
            ``rid`` on the reply this message causes (``subscribed``, ``unsubscribed``,
            ``pong``, ``ack``) or on the ``error`` answering it (docs/PROTOCOL.md "Request ids").
    """

    rid: RequestId | None = None


class Completion(_ClientMessage, tag="completion"):
    """Start a completion: ``{"type":"completion","id":"comp-123","model":"openai/gpt-4o-mini",
    "messages":[{"role":"user","content":"Hello"}]}``.

    Attributes:
        model: ``provider/model`` or a bare model name routed by prefix (docs/PROTOCOL.md).
        messages: the conversation, at least one message.
        id: the completion id (``COMPLETION_ID_PATTERN``); the hub assigns one when absent.
        max_tokens: output token limit passed to the provider.
        temperature: sampling temperature passed to the provider.
        tools: OpenAI-format tool definitions (translated per provider).
        tool_choice: ``"auto"``, ``"none"``, ``"required"`` or ``{"type":"function",...}``.
        stop: stop sequence(s).
        reasoning: OpenAI-style reasoning options, ``{"effort": "low"}`` or ``"low"``.
        thinking: Anthropic-style ``{"type": "enabled", "budget_tokens": 1024}``.
        response_format: OpenAI's ``{"type": "json_object"}`` or ``{"type": "json_schema",
            "json_schema": {"name", "schema", "strict"}}``, mapped per provider.
        n: number of choices (1-128): OpenAI (and Azure OpenAI) stream every choice, each
            hub message saying its ``choice``; other providers refuse ``n`` above 1
            (docs/PROTOCOL.md "Choices").
        seed, top_p, presence_penalty, frequency_penalty, logprobs, top_logprobs,
        parallel_tool_calls, user: OpenAI's request options of the same names.
            Each is carried in the provider's terms or refused with ``invalid_message``
            naming the field and the provider (docs/PROTOCOL.md "Request fields per provider",
            declared in protocol/request_fields.py).
        coalesce: False sends every provider delta as its own frame (no StreamBuffer).
        fallbacks: models to try in order when the primary fails before any content was
            forwarded (``["anthropic/claude-3-haiku-20240307", ...]``); tried before the
            hub's configured chain for the model.
    """

    model: ModelName
    messages: list[ChatMessage]
    id: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stop: str | list[str] | None = None
    reasoning: str | dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
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
    fallbacks: Annotated[list[Annotated[str, msgspec.Meta(max_length=256)]], msgspec.Meta(max_length=16)] = []


class Cursor(msgspec.Struct, gc=False):
    """Where a client stopped in a channel: the last ``seq`` it has and the channel's
    ``epoch`` it saw (``{"seq": 50, "epoch": "k3J9"}``)."""

    seq: int
    epoch: str


class Subscribe(_ClientMessage, tag="subscribe"):
    """Watch channels (``{"channels": ["completion:comp-123"]}``) and/or every event of some
    types (``{"streams": ["completion", "workflow", "agent_status"]}``). ``since`` resumes a
    channel after the given cursor (``{"completion:c1": {"seq": 50, "epoch": "k3J9"}}``)."""

    channels: list[str] = []
    streams: list[str] = []
    since: dict[str, Cursor] = {}


class Unsubscribe(_ClientMessage, tag="unsubscribe"):
    """Stop watching channels and/or stream types; mirrors :class:`Subscribe`."""

    channels: list[str] = []
    streams: list[str] = []


class Cancel(_ClientMessage, tag="cancel"):
    """Abort a running completion upstream at once: ``{"type":"cancel","completionId":"c1"}``."""

    completion_id: str = msgspec.field(name="completionId")


class CreateWorkflow(_ClientMessage, tag="create_workflow"):
    """Start a workflow run: ``{"type":"create_workflow","workflowId":"w1",
    "definitionName":"content_creation","input":{"topic":"..."}}`` or with an inline
    ``definition`` (docs/PROTOCOL.md "Workflows"). The sender is subscribed to ``workflow:<id>``."""

    workflow_id: str | None = msgspec.field(default=None, name="workflowId")
    definition: dict[str, Any] | None = None
    definition_name: str | None = msgspec.field(default=None, name="definitionName")
    input: dict[str, Any] = {}


class SubscribeWorkflow(_ClientMessage, tag="subscribe_workflow"):
    """Watch a workflow run (the original design's message): the same as subscribing to
    ``workflow:<id>``, with an optional ``since`` cursor."""

    workflow_id: str = msgspec.field(name="workflowId")
    since: Cursor | None = None


class CancelWorkflow(_ClientMessage, tag="cancel_workflow"):
    """Cancel a workflow run and every completion it is running."""

    workflow_id: str = msgspec.field(name="workflowId")


class Ping(_ClientMessage, tag="ping"):
    """Liveness check; answered with ``{"type": "pong"}``."""


#: The longest token an ``auth`` message may carry.
MAX_TOKEN_CHARS = 16384


class Auth(_ClientMessage, tag="auth"):
    """Present a credential (docs/PROTOCOL.md "Authentication"): ``{"type":"auth","token":"eyJ..."}``,
    the first message when the hub requires authentication and the connection brought none,
    and later again to refresh the token before it expires. Answered with ``authenticated``."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN_CHARS)]


ClientMessage: TypeAlias = (
    Completion | Subscribe | Unsubscribe | Cancel | Ping | CreateWorkflow | SubscribeWorkflow | CancelWorkflow | Auth
)

_CLIENT_DECODER = msgspec.json.Decoder(ClientMessage)
_CLIENT_TAGS = frozenset(("completion", "subscribe", "unsubscribe", "cancel", "ping", "create_workflow",
                          "subscribe_workflow", "cancel_workflow", "auth"))
_ANY_DECODER = msgspec.json.Decoder()


def decode_client_message(data: bytes | str) -> ClientMessage:
    """Decode and validate one client text frame.

    Args:
        data: the frame's payload (UTF-8 JSON).

    Returns:
        One of :data:`ClientMessage`.

    Raises:
        ProtocolError: code ``invalid_json`` (not JSON, or JSON beyond the decoder's limits:
            a number out of range, nesting deeper than it recurses), ``unknown_type`` (no
            known ``type``), or ``invalid_message`` (a field missing, of the wrong type,
            unknown, or out of range); the message names the offending field.
    """
    try:
        message = _CLIENT_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise _classify(data, exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bytes: invalid UTF-8 in a string
        raise ProtocolError(f"message is not valid JSON: {exc}", "invalid_json") from None
    except RecursionError:  # msgspec recurses per nesting level (even to skip unknown fields)
        raise _too_deep() from None
    if isinstance(message, (CreateWorkflow, SubscribeWorkflow, CancelWorkflow)):
        workflow_id = message.workflow_id
        if workflow_id is not None and not COMPLETION_ID_PATTERN.fullmatch(workflow_id):
            raise ProtocolError("`workflowId` must be 1-128 characters from A-Z a-z 0-9 _ . : -", "invalid_message")
        if isinstance(message, CreateWorkflow) and (message.definition is None) == (message.definition_name is None):
            raise ProtocolError("give exactly one of `definition` and `definitionName`", "invalid_message")
    if isinstance(message, Completion):
        if not message.messages:
            raise ProtocolError("`messages` must hold at least one message", "invalid_message")
        if message.id is not None and not COMPLETION_ID_PATTERN.fullmatch(message.id):
            raise ProtocolError(
                "`id` must be 1-128 characters from A-Z a-z 0-9 _ . : -", "invalid_message"
            )
        if not message.model:
            raise ProtocolError("`model` must not be empty", "invalid_message")
    elif isinstance(message, (Subscribe, Unsubscribe)) and not (message.channels or message.streams):
        raise ProtocolError("give `channels` and/or `streams`", "invalid_message")
    return message


def _classify(data: bytes | str, exc: msgspec.ValidationError) -> ProtocolError:
    """Tell an unknown ``type`` from an invalid field (slow path, errors only)."""
    try:
        raw = _ANY_DECODER.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as bad:
        return ProtocolError(f"message is not valid JSON: {bad}", "invalid_json")
    except RecursionError:
        return _too_deep()
    if not isinstance(raw, dict):
        return ProtocolError("a message must be a JSON object", "invalid_message")
    kind = raw.get("type")
    if kind is None:
        return ProtocolError("message has no `type` field", "unknown_type")
    if not isinstance(kind, str) or kind not in _CLIENT_TAGS:  # a list or object is unhashable
        return ProtocolError(
            f"unknown message type {kind!r}; expected one of {sorted(_CLIENT_TAGS)}", "unknown_type"
        )
    return ProtocolError(f"invalid {kind} message: {exc}", "invalid_message")


def request_id_of(data: bytes | str) -> str | None:
    """The ``rid`` of a client message that failed to decode, when it has a valid one (the
    slow path: only called to answer a bad message; None for anything else)."""
    try:
        raw = _ANY_DECODER.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    rid = raw.get("rid") if isinstance(raw, dict) else None
    return rid if isinstance(rid, str) and 1 <= len(rid) <= 64 else None


def _too_deep() -> ProtocolError:
    # JSON nested deeper than the decoder can recurse (``[`` 10 000 times fits in 20 KB). Like
    # a number out of range, a limit of the JSON parser (RFC 8259 §9), hence invalid_json.
    return ProtocolError("message is not valid JSON: nested too deeply", "invalid_json")


# Hub → client.


class UsageInfo(msgspec.Struct, rename="camel", omit_defaults=True, gc=False):
    """Token usage: ``{"promptTokens": 10, "completionTokens": 20, "totalTokens": 30}``;
    ``reasoningTokens`` when the provider reports it (included in ``completionTokens``)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    reasoning_tokens: int | None = None


class ErrorInfo(msgspec.Struct, omit_defaults=True, gc=False):
    """The ``error`` object: stable ``code``, ``message``, ``retryable``, provider ``status``,
    and ``retryAfterMs`` (how long to wait, in ms) on a ``rate_limited`` answer of the hub."""

    code: str
    message: str
    retryable: bool
    status: int | None = None
    retry_after_ms: int | None = msgspec.field(default=None, name="retryAfterMs")


class Attempt(msgspec.Struct, rename="camel", omit_defaults=True, gc=False):
    """One upstream attempt of a completion, in the order made: ``{"provider": "openai",
    "model": "gpt-4o-mini", "error": "rate_limited", "status": 429}``. The attempt that
    served the completion has no ``error``."""

    provider: str
    model: str
    error: str | None = None
    status: int | None = None


class _HubMessage(msgspec.Struct, tag_field="type", rename="camel", omit_defaults=True, gc=False):
    """Base of hub messages (tagged on ``type``; camelCase fields; None fields omitted)."""


class Subscribed(_HubMessage, tag="subscribed"):
    """Acknowledges a subscribe, or a completion start (then ``completionId`` says which id).

    Per channel: ``epochs`` (the channel instance's epoch), ``seqs`` (its latest ``seq`` when
    subscribed), ``recovered`` (true: every event after the cursor, or from seq 1, follows;
    false: a ``snapshot`` follows instead, docs/PROTOCOL.md "Resuming")."""

    channels: list[str] = []
    streams: list[str] = []
    completion_id: str | None = None
    workflow_id: str | None = None
    epochs: dict[str, str] = {}
    seqs: dict[str, int] = {}
    recovered: dict[str, bool] = {}
    rid: str | None = None


class Unsubscribed(_HubMessage, tag="unsubscribed"):
    """Acknowledges an unsubscribe."""

    channels: list[str] = []
    streams: list[str] = []
    rid: str | None = None


class ContentChunk(_HubMessage, tag="content_chunk"):
    """Answer text: ``{"type":"content_chunk","completionId":"c1","seq":4,"content":"Hel"}``.

    ``firstSeq`` appears only on a chunk the hub merged for a slow consumer (docs/PROTOCOL.md,
    "Limits"): it stands for the content chunks ``firstSeq`` to ``seq``, so the receiver's
    sequence stays gap-free.

    ``choice`` (on this and every other output message: reasoning, refusal, tool call,
    citation) is the index of the choice the message belongs to when the completion asked for
    ``n`` above 1 (docs/PROTOCOL.md "Choices"); 0, the only choice otherwise, is left out of
    the frame."""

    completion_id: str
    seq: int
    content: str
    first_seq: int | None = None
    choice: int = 0


class ThinkingStatus(_HubMessage, tag="thinking_status"):
    """Reasoning: ``status`` ``"thinking"`` with a ``content`` delta (and ``signature`` or
    opaque ``redacted`` data when the provider gives them), then ``"done"`` when it ends."""

    completion_id: str
    seq: int
    status: Literal["thinking", "done"]
    content: str = ""
    signature: str | None = None
    redacted: str | None = None
    choice: int = 0


class RefusalChunk(_HubMessage, tag="refusal"):
    """A piece of the model's refusal (OpenAI ``delta.refusal``)."""

    completion_id: str
    seq: int
    content: str
    choice: int = 0


class ToolCallMessage(_HubMessage, tag="tool_call"):
    """One complete tool call. ``arguments`` is the parsed JSON; when it did not parse it is
    the raw string and ``argumentsValid`` is false. ``serverTool`` marks a tool the provider
    ran itself (Anthropic ``server_tool_use``): clients must not execute it. ``signature`` is
    Gemini's ``thoughtSignature`` of the call, to send back with it on the next turn."""

    completion_id: str
    seq: int
    id: str
    tool: str
    arguments: Any
    arguments_valid: bool = True
    server_tool: bool = False
    signature: str | None = None
    choice: int = 0


class CitationMessage(_HubMessage, tag="citation"):
    """A citation attached to the text so far (Anthropic ``citations_delta``)."""

    completion_id: str
    seq: int
    citation: dict[str, Any]
    choice: int = 0


class Completed(_HubMessage, tag="completed"):
    """Terminal success. ``ttftMs`` is the time to first token in ms, measured by the hub
    from the upstream request to the first output (content, reasoning, refusal or tool call).
    ``finishReason`` is choice 0's; ``finishReasons`` (only for ``n`` above 1) holds every
    choice's, at its index (docs/PROTOCOL.md "Choices")."""

    completion_id: str
    seq: int
    finish_reason: str
    provider: str
    model: str
    usage: UsageInfo | None = None
    ttft_ms: float | None = None
    attempts: list[Attempt] = []
    finish_reasons: list[str] | None = None


class ErrorMessage(_HubMessage, tag="error"):
    """An error. With ``completionId`` and ``seq`` it is terminal for that completion;
    without, it answers a bad client message and the connection stays usable. ``usage`` is
    what the provider reported before failing, when it did (tokens already billed)."""

    error: ErrorInfo
    completion_id: str | None = None
    seq: int | None = None
    usage: UsageInfo | None = None
    attempts: list[Attempt] = []
    workflow_id: str | None = None
    rid: str | None = None


class Pong(_HubMessage, tag="pong"):
    """Answer to ``ping`` (``rid`` echoes the ping's, when it had one)."""

    rid: str | None = None


class Ack(_HubMessage, tag="ack"):
    """Acknowledges a ``cancel`` or ``cancel_workflow`` that carried a ``rid``: the hub has
    acted on it (the stream's own terminal ``error`` follows on its channel). Sent only when
    the message had a ``rid``, so clients that never send one see no new message."""

    rid: str


class Authenticated(_HubMessage, tag="authenticated"):
    """Accepts an ``auth`` message: ``{"type":"authenticated","subject":"alice",
    "expiresAt":1767225600000}``. ``expiresAt`` is when the token expires, in ms since the
    epoch (absent for an API key, and with ``auth.mode: none``, where the subject is
    ``anonymous``); refresh it with another ``auth`` message before then."""

    subject: str
    expires_at: int | None = None
    rid: str | None = None


class TokenCreated(_HubMessage, tag="token_created"):
    """A workflow run's token was put on its initial place, carrying the run's input."""

    workflow_id: str
    seq: int
    token_id: str
    place: str
    data: dict[str, Any]


class WorkflowTransition(_HubMessage, tag="workflow_transition"):
    """The token moved: ``transitionId`` fired from ``fromPlace`` to ``toPlace``; ``data`` is
    the token's data after it (input and the agents' results so far)."""

    workflow_id: str
    seq: int
    token_id: str
    transition_id: str
    from_place: str
    to_place: str
    data: dict[str, Any]


class AgentStarted(_HubMessage, tag="agent_started"):
    """An agent began its work for a transition; ``completionId`` is its LLM completion."""

    workflow_id: str
    seq: int
    agent_id: str
    place: str
    completion_id: str
    model: str


class AgentProgress(_HubMessage, tag="agent_progress"):
    """An agent's tokens as they stream: ``content`` (answer) or ``reasoning`` delta, and
    ``progress`` from 0 to 1 (the share of its ``maxTokens`` written, estimated at 4 characters
    a token; 1 only at ``agent_completed``)."""

    workflow_id: str
    seq: int
    agent_id: str
    progress: float
    content: str = ""
    reasoning: str = ""


class FunctionExecuted(_HubMessage, tag="function_executed"):
    """The hub ran a registered function for an agent's tool call: ``result`` is what it
    returned (JSON), or ``error`` when it failed."""

    workflow_id: str
    seq: int
    agent_id: str
    call_id: str
    name: str
    arguments: Any
    result: Any = None
    error: str | None = None


class AgentCompleted(_HubMessage, tag="agent_completed"):
    """An agent finished: ``result`` is its answer text."""

    workflow_id: str
    seq: int
    agent_id: str
    result: str
    usage: UsageInfo | None = None
    provider: str | None = None
    model: str | None = None


class WorkflowCompleted(_HubMessage, tag="workflow_completed"):
    """The token reached a final place: ``result`` is the token's data (input and every
    agent's result); ``usage`` sums the agents' usage."""

    workflow_id: str
    seq: int
    place: str
    result: dict[str, Any]
    usage: UsageInfo | None = None


class WorkflowSnapshot(_HubMessage, tag="workflow_snapshot"):
    """A workflow run's state so far, sent instead of a replay the history cannot give
    (``recovered: false``), like a completion's ``snapshot``: where the token is, its data,
    the agents' results and the partial output of the agent at work; the run's summed
    ``usage`` so far, and its ``error`` when it failed or was cancelled."""

    workflow_id: str
    channel: str
    epoch: str
    seq: int
    status: str
    place: str
    data: dict[str, Any]
    agent_id: str | None = None
    agent_content: str = ""
    usage: UsageInfo | None = None
    error: ErrorInfo | None = None


class ChoiceSnapshot(msgspec.Struct, rename="camel", omit_defaults=True, gc=False):
    """The state of one choice above 0 in a :class:`Snapshot` (``n`` above 1): ``{"choice": 1,
    "content": "...", "reasoning": "...", "toolCalls": [...], "refusal": "..."}``."""

    choice: int
    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallMessage] = []
    refusal: str = ""


class Snapshot(_HubMessage, tag="snapshot"):
    """A completion's state so far, sent instead of a replay the history cannot give
    (``recovered: false``): everything up to and including ``seq`` (never the terminal
    message; events after ``seq`` follow it). ``content`` is all the answer text, ``reasoning``
    all the reasoning text, ``toolCalls`` the ``tool_call`` messages as sent, ``refusal`` and
    ``citations`` likewise, all of choice 0. ``choices`` holds the state of each other choice
    that has output, in index order (only for ``n`` above 1, docs/PROTOCOL.md "Choices")."""

    completion_id: str
    channel: str
    epoch: str
    seq: int
    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallMessage] = []
    refusal: str = ""
    citations: list[dict[str, Any]] = []
    choices: list[ChoiceSnapshot] = []


class CircuitState(_HubMessage, tag="circuit_state"):
    """A provider's circuit breaker changed state; published on the ``system`` channel:
    ``{"type":"circuit_state","seq":3,"provider":"openai","baseUrl":"https://api.openai.com/v1",
    "state":"open","previous":"closed","failureRate":0.6,"requests":10}``. ``state`` is
    ``closed`` (requests flow), ``open`` (requests fail over at once) or ``half_open``
    (probe requests test the provider)."""

    seq: int
    provider: str
    base_url: str
    state: str
    previous: str
    failure_rate: float | None = None
    requests: int | None = None


HubMessage: TypeAlias = (
    Subscribed
    | Unsubscribed
    | ContentChunk
    | ThinkingStatus
    | RefusalChunk
    | ToolCallMessage
    | CitationMessage
    | Completed
    | ErrorMessage
    | Pong
    | Ack
    | Authenticated
    | CircuitState
    | Snapshot
    | TokenCreated
    | WorkflowTransition
    | AgentStarted
    | AgentProgress
    | FunctionExecuted
    | AgentCompleted
    | WorkflowCompleted
    | WorkflowSnapshot
)

_ENCODER = msgspec.json.Encoder()
encode = _ENCODER.encode
"""Encode a hub message to its JSON frame payload (``bytes``, UTF-8)."""

HUB_DECODER = msgspec.json.Decoder(HubMessage)
"""Decoder for hub messages (the Python SDK and tests)."""
