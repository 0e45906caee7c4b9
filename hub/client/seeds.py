"""The SDK surface of the project's original design documents ("Client Libraries and SDKs"):
thin names over :class:`~hub.client.connection.HubClient`.

Usage, as the seed writes it::

    stream = CircuitBreakerStream(StreamConfig(ws_url="ws://127.0.0.1:8765/ws/stream"))
    await stream.connect()
    async for event in stream.create_completion_stream({
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hello!"}],
    }):
        if event.event_type == "CONTENT_CHUNK":
            print(event.content, end="", flush=True)
        elif event.event_type == "COMPLETED":
            print(f"\\nUsage: {event.usage}")

    async for event in stream.create_workflow_stream(
        "content-pipeline-123",
        on_agent_progress=lambda agent_id, progress: print(f"{agent_id}: {progress}"),
        on_state_transition=lambda from_place, to_place, data: print(f"{from_place} -> {to_place}"),
    ):
        print(f"Workflow event: {event}")

What each hub message becomes (``event_type`` is a ``StrEnum``, so it equals its name as a
string, as the seed compares it):

=====================  =====================================================================
hub message            event
=====================  =====================================================================
content_chunk          CONTENT_CHUNK, ``content`` the text
thinking_status        THINKING, ``content`` the reasoning text, ``metadata["status"]``
tool_call              TOOL_CALL, ``metadata`` ``{"id", "tool", "arguments"}``
refusal                REFUSAL, ``content`` the refusal text
citation               CITATION, ``metadata`` the citation object
snapshot               SNAPSHOT (a resume the history could not cover; the missing text
                       follows as CONTENT_CHUNK/THINKING events)
completed              COMPLETED, ``usage``, ``metadata`` ``{"finishReason", "provider",
                       "model", "ttftMs"}``; the last event
error (terminal)       ERROR, ``content`` the message, ``error`` the ``ErrorInfo``, ``usage``;
                       the last event (the seed lists ERROR as an event type, so it is yielded,
                       not raised)
token_created          TOKEN_CREATED, ``token_id``, ``place``, ``data`` the token's data
workflow_transition    TOKEN_TRANSITIONED, ``place`` the new place, ``data`` ``{"from", "to",
                       "transition_id", "token_data"}``
agent_started          AGENT_STARTED, ``agent_id``, ``place``, ``data`` ``{"completion_id",
                       "model"}``
agent_progress         AGENT_PROGRESS, ``agent_id``, ``data`` ``{"progress", "content",
                       "reasoning"}`` (``content``: this delta of the agent's text)
function_executed      FUNCTION_EXECUTED, ``agent_id``, ``data`` ``{"function_id", "name",
                       "arguments", "result", "error"}``
agent_completed        AGENT_COMPLETED, ``agent_id``, ``data`` ``{"result", "usage"}``
workflow_snapshot      SNAPSHOT, ``place``, ``agent_id`` (the agent at work), ``data``
                       ``{"status", "token_data", "agent_content"}``
workflow_completed     WORKFLOW_COMPLETED, ``place``, ``data`` ``{"result", "usage"}``; the last
error (terminal)       ERROR, ``data`` ``{"code", "message", "retryable"}``, ``error``; the last
=====================  =====================================================================

``TOOL_RESULT`` exists because the seed lists it, but a completion stream never carries one:
tool results go back to the model in the next request's ``messages``; a workflow's function
results are FUNCTION_EXECUTED events.

Every event keeps the hub message it came from as ``message``. Losing the connection for good
raises :class:`~hub.client.errors.HubConnectionError` (reconnects in between are invisible, as
with :class:`~hub.client.connection.HubClient`).
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.client.connection import HubClient
from hub.client.errors import HubStreamError, InvalidArgumentError
from hub.client.results import Reconnect
from hub.client.streams import WorkflowStream
from protocol.messages import (
    AgentCompleted,
    AgentProgress,
    AgentStarted,
    CitationMessage,
    Completed,
    ContentChunk,
    ErrorInfo,
    FunctionExecuted,
    RefusalChunk,
    Snapshot,
    ThinkingStatus,
    TokenCreated,
    ToolCallMessage,
    UsageInfo,
    WorkflowCompleted,
    WorkflowSnapshot,
    WorkflowTransition,
)

__all__ = [
    "CircuitBreakerStream",
    "StreamConfig",
    "StreamEvent",
    "WorkflowEvent",
    "CompletionEventType",
    "WorkflowEventType",
    "CompletionRequest",
]

#: A completion request as the seed passes it: ``model``, ``messages`` and the other
#: ``completion`` fields of docs/PROTOCOL.md (``max_tokens``, ``temperature``, ``tools``...),
#: optionally ``id``; an OpenAI-style ``stream`` key is accepted and ignored.
CompletionRequest = Mapping[str, Any]


class CompletionEventType(enum.StrEnum):
    """What a :class:`StreamEvent` is (the seed's ``CompletionEventType``, plus REFUSAL,
    CITATION and SNAPSHOT, which the hub also sends)."""

    CONTENT_CHUNK = "CONTENT_CHUNK"
    THINKING = "THINKING"
    TOOL_CALL = "TOOL_CALL"
    TOOL_RESULT = "TOOL_RESULT"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    REFUSAL = "REFUSAL"
    CITATION = "CITATION"
    SNAPSHOT = "SNAPSHOT"


class WorkflowEventType(enum.StrEnum):
    """What a :class:`WorkflowEvent` is (the seed's ``WorkflowEventType``, plus SNAPSHOT)."""

    TOKEN_CREATED = "TOKEN_CREATED"
    TOKEN_TRANSITIONED = "TOKEN_TRANSITIONED"
    AGENT_STARTED = "AGENT_STARTED"
    AGENT_PROGRESS = "AGENT_PROGRESS"
    AGENT_COMPLETED = "AGENT_COMPLETED"
    FUNCTION_EXECUTED = "FUNCTION_EXECUTED"
    WORKFLOW_COMPLETED = "WORKFLOW_COMPLETED"
    ERROR = "ERROR"
    SNAPSHOT = "SNAPSHOT"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class StreamEvent:
    """One event of a completion stream (the seed's ``CompletionStreamEvent``).

    Attributes:
        event_type: what it is (:class:`CompletionEventType`).
        completion_id: the completion's id.
        content: text of CONTENT_CHUNK, THINKING, REFUSAL; the error message of ERROR; else "".
        usage: token usage of COMPLETED (and of ERROR when the provider reported some).
        metadata: the other fields, by event type (module docstring).
        error: the :class:`~protocol.messages.ErrorInfo` of an ERROR event.
        timestamp: when this client received it (UTC).
        message: the hub message it came from (None for an ERROR raised by the SDK).
    """

    event_type: CompletionEventType
    completion_id: str
    content: str = ""
    usage: UsageInfo | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: ErrorInfo | None = None
    timestamp: datetime.datetime = field(default_factory=_now)
    message: Any = None


@dataclass(frozen=True)
class WorkflowEvent:
    """One event of a workflow stream (the seed's ``WorkflowStreamEvent``).

    Attributes:
        event_type: what it is (:class:`WorkflowEventType`).
        workflow_id: the run's id.
        token_id: the token's id (TOKEN_CREATED, TOKEN_TRANSITIONED).
        place: the token's place (TOKEN_CREATED, TOKEN_TRANSITIONED: the new one,
            AGENT_STARTED, SNAPSHOT, WORKFLOW_COMPLETED).
        agent_id: the agent (AGENT_*, FUNCTION_EXECUTED; SNAPSHOT: the agent at work).
        data: the event's data, by event type (module docstring).
        error: the :class:`~protocol.messages.ErrorInfo` of an ERROR event.
        timestamp: when this client received it (UTC).
        message: the hub message it came from (None for an ERROR raised by the SDK).
    """

    event_type: WorkflowEventType
    workflow_id: str
    token_id: str | None = None
    place: str | None = None
    agent_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    error: ErrorInfo | None = None
    timestamp: datetime.datetime = field(default_factory=_now)
    message: Any = None


@dataclass
class StreamConfig:
    """How :class:`CircuitBreakerStream` connects (the seed's ``StreamConfig``).

    Attributes:
        ws_url: the hub's WebSocket URL (``ws://host:port/ws/stream``).
        reconnect: reconnect and resume open streams when the connection drops.
        base_delay_s: reconnect backoff base, in seconds (full jitter).
        max_delay_s: reconnect backoff cap, in seconds.
        max_reconnect_attempts: consecutive failed attempts before giving up (None: never).
        on_reconnect: called with a :class:`~hub.client.results.Reconnect` after each
            reconnect (a function or a coroutine function).
        open_timeout_s: timeout of one connection attempt, in seconds.
        connect_options: passed to ``websockets.connect`` (``additional_headers``, ``ssl``...).
    """

    ws_url: str
    reconnect: bool = True
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    max_reconnect_attempts: int | None = 10
    on_reconnect: Callable[[Reconnect], None | Awaitable[None]] | None = None
    open_timeout_s: float = 10.0
    connect_options: dict[str, Any] = field(default_factory=dict)


def completion_event(message: Any, completion_id: str) -> StreamEvent | None:
    """The :class:`StreamEvent` of one event of a completion's :class:`HubStream` (None for a
    message it has no event for)."""
    match message:
        case ContentChunk():
            return StreamEvent(CompletionEventType.CONTENT_CHUNK, completion_id, message.content, message=message)
        case ThinkingStatus():
            return StreamEvent(CompletionEventType.THINKING, completion_id, message.content,
                               metadata={"status": message.status}, message=message)
        case ToolCallMessage():
            return StreamEvent(CompletionEventType.TOOL_CALL, completion_id, message=message,
                               metadata={"id": message.id, "tool": message.tool, "arguments": message.arguments})
        case RefusalChunk():
            return StreamEvent(CompletionEventType.REFUSAL, completion_id, message.content, message=message)
        case CitationMessage():
            return StreamEvent(CompletionEventType.CITATION, completion_id, metadata=dict(message.citation),
                               message=message)
        case Snapshot():
            return StreamEvent(CompletionEventType.SNAPSHOT, completion_id, metadata={"seq": message.seq},
                               message=message)
        case Completed():
            return StreamEvent(CompletionEventType.COMPLETED, completion_id, usage=message.usage, message=message,
                               metadata={"finishReason": message.finish_reason, "provider": message.provider,
                                         "model": message.model, "ttftMs": message.ttft_ms})
    return None


def workflow_event(message: Any, workflow_id: str) -> WorkflowEvent | None:
    """The :class:`WorkflowEvent` of one event of a :class:`WorkflowStream` (None for a
    message it has no event for)."""
    kind = WorkflowEventType
    match message:
        case TokenCreated():
            return WorkflowEvent(kind.TOKEN_CREATED, workflow_id, message.token_id, message.place,
                                 data=dict(message.data), message=message)
        case WorkflowTransition():
            return WorkflowEvent(kind.TOKEN_TRANSITIONED, workflow_id, message.token_id, message.to_place,
                                 data={"from": message.from_place, "to": message.to_place,
                                       "transition_id": message.transition_id, "token_data": message.data},
                                 message=message)
        case AgentStarted():
            return WorkflowEvent(kind.AGENT_STARTED, workflow_id, place=message.place, agent_id=message.agent_id,
                                 data={"completion_id": message.completion_id, "model": message.model},
                                 message=message)
        case AgentProgress():
            return WorkflowEvent(kind.AGENT_PROGRESS, workflow_id, agent_id=message.agent_id, message=message,
                                 data={"progress": message.progress, "content": message.content,
                                       "reasoning": message.reasoning})
        case FunctionExecuted():
            return WorkflowEvent(kind.FUNCTION_EXECUTED, workflow_id, agent_id=message.agent_id, message=message,
                                 data={"function_id": message.call_id, "name": message.name,
                                       "arguments": message.arguments, "result": message.result,
                                       "error": message.error})
        case AgentCompleted():
            return WorkflowEvent(kind.AGENT_COMPLETED, workflow_id, agent_id=message.agent_id, message=message,
                                 data={"result": message.result, "usage": message.usage})
        case WorkflowSnapshot():
            return WorkflowEvent(kind.SNAPSHOT, workflow_id, place=message.place, agent_id=message.agent_id,
                                 data={"status": message.status, "token_data": message.data,
                                       "agent_content": message.agent_content}, message=message)
        case WorkflowCompleted():
            return WorkflowEvent(kind.WORKFLOW_COMPLETED, workflow_id, place=message.place, message=message,
                                 data={"result": message.result, "usage": message.usage})
    return None


class CircuitBreakerStream:
    """The seed's client: one connection to the hub, completion and workflow streams as async
    iterators of :class:`StreamEvent` and :class:`WorkflowEvent`.

    Args:
        config: where and how to connect.

    Attributes:
        config: the :class:`StreamConfig`.
        client: the :class:`~hub.client.connection.HubClient` underneath (for everything the
            seed's surface does not show: ``cancel``, ``subscribe``, results).
    """

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.client = HubClient(config.ws_url, reconnect=config.reconnect, base_delay_s=config.base_delay_s,
                                max_delay_s=config.max_delay_s,
                                max_reconnect_attempts=config.max_reconnect_attempts,
                                on_reconnect=config.on_reconnect, open_timeout_s=config.open_timeout_s,
                                **config.connect_options)

    async def connect(self) -> CircuitBreakerStream:
        """Open the connection.

        Raises:
            HubConnectionError: the hub could not be reached.
        """
        await self.client.connect()
        return self

    async def close(self) -> None:
        """Close the connection; open streams end with :class:`HubConnectionError`."""
        await self.client.close()

    async def __aenter__(self) -> CircuitBreakerStream:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def create_completion_stream(self, request: CompletionRequest) -> AsyncIterator[StreamEvent]:
        """Start a completion and yield its events, ending with COMPLETED or ERROR.

        Args:
            request: ``model``, ``messages`` and other ``completion`` fields (optionally
                ``id``; generated when absent).

        Yields:
            :class:`StreamEvent` objects in order (module docstring).

        Raises:
            InvalidArgumentError: no ``model`` or ``messages``, or a malformed id.
            UnknownOptionError: a field the ``completion`` message does not have.
            HubConnectionError: the connection is gone for good.
        """
        fields = dict(request)
        fields.pop("stream", None)
        fields.pop("type", None)
        model, messages = fields.pop("model", None), fields.pop("messages", None)
        if not isinstance(model, str) or messages is None:
            raise InvalidArgumentError("a completion request needs 'model' and 'messages'")
        stream = self.client.completion(model=model, messages=messages, id=fields.pop("id", None), **fields)
        cid = stream.id or ""
        try:
            async for message in stream:
                event = completion_event(message, cid)
                if event is not None:
                    yield event
        except HubStreamError as exc:
            yield StreamEvent(CompletionEventType.ERROR, cid, exc.error.message, usage=exc.usage, error=exc.error,
                              metadata={"code": exc.code, "retryable": exc.retryable})
        finally:
            await stream.aclose()

    async def create_workflow_stream(
        self,
        workflow_id: str,
        on_agent_progress: Callable[[str, dict[str, Any]], Any] | None = None,
        on_state_transition: Callable[[str, str, dict[str, Any]], Any] | None = None,
        *,
        definition_name: str | None = None,
        definition: Mapping[str, Any] | None = None,
        input: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[WorkflowEvent]:
        """Watch a workflow run (``subscribe_workflow``) and yield its events, ending with
        WORKFLOW_COMPLETED or ERROR. With ``definition_name`` or ``definition``, start the run
        first (``create_workflow`` with this id), which the seed leaves to the caller.

        Args:
            workflow_id: the run's id.
            on_agent_progress: called as ``on_agent_progress(agent_id, data)`` for each
                AGENT_PROGRESS event, before it is yielded (``data``: ``progress``,
                ``content``, ``reasoning``).
            on_state_transition: called as ``on_state_transition(from_place, to_place, data)``
                for each TOKEN_TRANSITIONED event, before it is yielded.
            definition_name: start a run of this shipped definition (``content_creation``).
            definition: start a run of this inline definition.
            input: the started run's input (``{"topic": ...}``).

        Yields:
            :class:`WorkflowEvent` objects in order (module docstring).

        Raises:
            InvalidArgumentError: a malformed id, or both ``definition_name`` and
                ``definition``.
            HubConnectionError: the connection is gone for good.
        """
        stream: WorkflowStream
        if definition_name is not None or definition is not None:
            stream = self.client.workflow(definition_name, definition=definition, input=input,
                                          workflow_id=workflow_id)
        else:
            stream = self.client.subscribe_workflow(workflow_id)
        try:
            async for message in stream:
                event = workflow_event(message, workflow_id)
                if event is None:
                    continue
                if event.event_type is WorkflowEventType.AGENT_PROGRESS and on_agent_progress:
                    on_agent_progress(event.agent_id or "", event.data)
                elif event.event_type is WorkflowEventType.TOKEN_TRANSITIONED and on_state_transition:
                    on_state_transition(event.data["from"], event.data["to"], event.data)
                yield event
        except HubStreamError as exc:
            yield WorkflowEvent(WorkflowEventType.ERROR, workflow_id, error=exc.error,
                                data={"code": exc.code, "message": exc.error.message, "retryable": exc.retryable})
        finally:
            await stream.aclose()
