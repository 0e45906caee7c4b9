"""The Python SDK of circuit-breaker-hub: :class:`HubClient`, over one ``websockets`` connection.

Usage::

    from hub.client import HubClient
    from protocol.messages import ContentChunk

    async with HubClient("ws://127.0.0.1:8765/ws/stream") as client:
        stream = client.completion(model="openai/gpt-4o-mini",
                                   messages=[{"role": "user", "content": "Hello"}])
        async for event in stream:
            if isinstance(event, ContentChunk):
                print(event.content, end="", flush=True)
        print(stream.result.usage)

**One connection, many streams.** A client holds one WebSocket to ``/ws/stream``. One reader
task decodes every hub message (``protocol.messages.HUB_DECODER``) and hands it to the stream
it belongs to: :meth:`HubClient.completion` and :meth:`HubClient.subscribe` return a
:class:`HubStream`, an async iterator of that channel's events with its own queue. Any number
of streams run at once. Answers that belong to no stream (``subscribed``, ``unsubscribed``,
``pong``, an ``error`` without ``seq``) are matched to the request they answer by order: the
hub handles a connection's messages one at a time and answers them in that order
(docs/PROTOCOL.md "Transport").

**What a stream yields.** The protocol Structs of ``protocol.messages``, in ``seq`` order:
``ContentChunk``, ``ThinkingStatus``, ``RefusalChunk``, ``ToolCallMessage``,
``CitationMessage``, then ``Completed`` as the last event. ``CircuitState`` on the ``system``
channel. The ``subscribed`` acknowledgement is **not** yielded (it is transport, not stream
content: :meth:`HubStream.start` waits for it). A terminal ``error`` is not yielded either: the
iterator raises :class:`HubStreamError` in its place. :attr:`HubStream.result` accumulates a
completion's :class:`CompletionResult` as events arrive and is complete once ``Completed`` was
yielded (or the error raised).

**Reconnect and resume.** When the connection drops (no close frame: 1006), the hub closes it
as a slow consumer (4008), restarts (1012), or closes it for any other reason except the
codes in :data:`FATAL_CLOSE_CODES`, the client reconnects with exponential backoff and full
jitter (attempt *n*, from 0, waits uniform ``[0, min(max_delay_s, base_delay_s * 2**n)]``
seconds; :func:`hub.resilience.backoff_delay_s`) and resumes every open stream: it
subscribes again with ``since`` = the last ``seq`` and the channel's ``epoch`` it has, and the
hub replays what it missed (docs/PROTOCOL.md "Resuming"). Events it already has are dropped
by ``seq``, so the caller sees every event once, in order; ``on_reconnect`` is the only sign.

When the hub's history cannot cover the gap, it answers ``recovered: false`` and sends one
``snapshot`` instead. The stream then yields, in this order:

1. the :class:`~protocol.messages.Snapshot` itself (so callers can see that it happened);
2. synthetic events carrying only what this stream had not delivered yet, all with the
   snapshot's ``seq``: a ``ThinkingStatus`` with the missing reasoning suffix, a
   ``ContentChunk`` with the missing answer suffix (``firstSeq`` = the first missed ``seq``,
   as for a chunk the hub merged), a ``RefusalChunk`` with the missing refusal suffix, then the
   missed ``ToolCallMessage`` objects as the hub sent them and a ``CitationMessage`` per
   missed citation. Each is left out when nothing of its kind was missed.

So a caller that concatenates ``ContentChunk.content`` (or ``ThinkingStatus.content``) still
ends with the exact full text and never sees a piece twice, and :attr:`HubStream.result` is
exact. (Reasoning signatures and ``status: "done"`` markers inside the gap are not in a
snapshot and are not synthesized.) Should the snapshot not extend what the stream already
delivered (the channel is another instance of that name: another epoch with other text), the
stream fails with :class:`HubStreamError` code ``resume_failed`` rather than yield text that
contradicts what was yielded.

A completion request whose acknowledgement was lost with the connection is sent again: the
hub either starts it (the first request never arrived) or answers ``duplicate_id`` (it did),
and then the client subscribes to it. For that, :meth:`HubClient.completion` generates the
completion id (``py-<32 hex>``) when none is given, so it is known before the hub answers.
(A caller-chosen id that another client also uses would be joined, not duplicated.)

Against a hub without resumable channels (its acknowledgement has no ``epochs``), the client
resubscribes without ``since``, the hub replays the channel's history, and events already
delivered are dropped by ``seq``; a gap larger than that history is not detected there.

**Workflows.** :meth:`HubClient.workflow` starts a run of a workflow definition
(``create_workflow``; hub/workflows.py, docs/PROTOCOL.md "Workflows") and
:meth:`HubClient.subscribe_workflow` watches one; both return a :class:`WorkflowStream` of the
``workflow:<id>`` channel: ``TokenCreated``, then per agent turn ``AgentStarted``,
``AgentProgress`` (its tokens), ``FunctionExecuted`` (its tool calls), ``AgentCompleted``,
and the ``WorkflowTransition`` objects as the token moves, ending with ``WorkflowCompleted``
(a terminal ``error`` raises :class:`HubStreamError`, with ``workflow_id``).
:attr:`WorkflowStream.result` is a :class:`WorkflowResult`: the token's place and data, each
agent turn (:class:`AgentRun`: its text, function calls, answer, usage) and the run's usage.
:meth:`HubClient.cancel_workflow` cancels a run. A ``create_workflow`` whose acknowledgement
was lost is sent again like a ``completion`` (hence the generated id, ``py-wf-<32 hex>``), and
reconnects resume the stream with ``since`` like a completion's. When the hub answers
``recovered: false`` with a ``workflow_snapshot`` (the token's place and data, the agent at
work and its text so far), the stream yields, all with the snapshot's ``seq``:

1. the :class:`~protocol.messages.WorkflowSnapshot` itself;
2. for the agent turn this stream was following (started, not completed): when the
   snapshot's agent at work is that agent at the same place and its text continues what was
   yielded, one ``AgentProgress`` with only the missing suffix. Otherwise that turn ended
   while the client was away: when the run went on (status ``running`` or ``completed``, so
   the turn succeeded) and the agent's answer in the snapshot's ``data.results`` continues
   the yielded text, an ``AgentProgress`` with the missing suffix and an ``AgentCompleted``
   with that answer (no usage, provider or model: the snapshot has none); else nothing. The
   turn is marked :attr:`AgentRun.ended_unseen` either way;
3. when another turn is at work (it started while the client was away), an ``AgentProgress``
   with all of its text so far (no ``AgentStarted``: the snapshot has neither its completion
   id nor its model; the snapshot's ``agentId`` names it, and a new :class:`AgentRun` with
   ``completion_id`` None stands for it in the result);
4. when the snapshot shows the run ended (its ``seq`` is then the run's last and nothing
   follows it): a ``WorkflowCompleted`` with the snapshot's place and data and no usage, or
   :class:`HubStreamError` code ``cancelled`` (status ``cancelled``) or ``workflow_failed``
   (a code of this client: status ``failed``; the snapshot does not say why).

So a caller that concatenates each agent turn's ``AgentProgress.content`` never sees a piece
twice, and the turns it followed end with their exact text; agent turns and transitions that
began and ended entirely while the client was away are not replayed (their answers are in
``WorkflowSnapshot.data`` and :attr:`WorkflowResult.data`), and :attr:`WorkflowResult.usage`
is None when the end was seen only in a snapshot. (A snapshot cannot tell two turns of the
same agent at the same place apart, nor which turn of an agent that ran twice while the
client was away wrote its latest answer; the checks above only guarantee that nothing yielded
is contradicted.) A snapshot of another instance of the channel (another epoch, after this
stream delivered events) fails the stream with ``resume_failed``.

The events of an agent's channel ``agent:<workflowId>.<agentId>`` repeat those of
``workflow:<workflowId>`` with their own ``seq`` and nothing in them names the channel, so one
client does not watch both (starting the second of the two streams raises ValueError); such a
plain channel stream never ends by itself.

**Errors.** :class:`HubStreamError` (a terminal ``error`` of a stream, a rejected ``completion``
or ``subscribe``, or a stream that could not be resumed), :class:`HubRequestError` (a rejected
``cancel``), :class:`HubConnectionError` (no connection, reconnect disabled or given up, or the
client closed); all are :class:`HubClientError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import msgspec
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from hub.resilience import backoff_delay_s
from protocol.messages import (
    CHANNEL_PATTERN,
    COMPLETION_ID_PATTERN,
    HUB_DECODER,
    Attempt,
    ChatMessage,
    CircuitState,
    AgentCompleted,
    AgentProgress,
    AgentStarted,
    CitationMessage,
    Completed,
    Completion,
    ContentChunk,
    ErrorInfo,
    ErrorMessage,
    FunctionExecuted,
    Pong,
    RefusalChunk,
    Snapshot,
    Subscribed,
    ThinkingStatus,
    TokenCreated,
    ToolCallMessage,
    Unsubscribed,
    UsageInfo,
    WorkflowCompleted,
    WorkflowSnapshot,
    WorkflowTransition,
)

__all__ = [
    "HubClient",
    "HubStream",
    "WorkflowStream",
    "CompletionResult",
    "WorkflowResult",
    "AgentRun",
    "Reconnect",
    "HubClientError",
    "HubRequestError",
    "HubStreamError",
    "HubConnectionError",
    "FATAL_CLOSE_CODES",
]

log = logging.getLogger("cbhub.client")

#: Close codes after which the client does not reconnect: the same request would fail the
#: same way (1002 protocol error, 1003 unsupported data, 1007 invalid UTF-8, 1009 a client
#: message over the hub's ``max_message_bytes``). Every other code, and a connection dropped
#: without a close frame (1006), is followed by a reconnect.
FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1009})

_OPTIONS = frozenset(Completion.__struct_fields__) - {"model", "messages", "id"}
_OUTPUT = (ContentChunk, ThinkingStatus, RefusalChunk, ToolCallMessage)
_ANSWERS = (Subscribed, Unsubscribed, Pong)
_SNAPSHOTS = (Snapshot, WorkflowSnapshot)
_AGENT_EVENTS = (AgentStarted, AgentProgress, FunctionExecuted, AgentCompleted)
_CONNECT_ERRORS = (OSError, InvalidHandshake, TimeoutError, asyncio.TimeoutError)
_PING = '{"type":"ping"}'
_END = object()  # queue item: the stream ended normally


def _encode(message: Mapping[str, Any]) -> str:
    return msgspec.json.encode(message).decode()


# Errors.


class HubClientError(Exception):
    """Base of every error :mod:`hub.client` raises."""


class HubRequestError(HubClientError):
    """The hub answered a request with an ``error`` (docs/PROTOCOL.md "Error codes").

    Attributes:
        error: the hub's :class:`~protocol.messages.ErrorInfo`.
        code: ``error.code``, stable (``cancelled``, ``provider_error``, ``duplicate_id``...).
        retryable: ``error.retryable``: whether the same request may succeed later.
    """

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error

    @property
    def code(self) -> str:
        return self.error.code

    @property
    def retryable(self) -> bool:
        return self.error.retryable


class HubStreamError(HubRequestError):
    """A stream ended with an ``error``: the terminal ``error`` of a completion, a rejected
    ``completion`` or ``subscribe`` (``duplicate_id``, ``too_many_completions``,
    ``unknown_channel``...), or a stream that could not be resumed (the hub's
    ``unknown_channel`` when the channel is gone; ``resume_failed`` or ``stream_gap``, codes of
    this client, when what the hub sent on resume cannot continue what was delivered).

    Attributes:
        completion_id: the completion's id (None for a non-completion channel).
        workflow_id: the workflow run's id, for a :class:`WorkflowStream` (else None).
        usage: what the provider reported before failing (tokens billed), when it did; for a
            workflow, the usage of all its agents so far.
        result: the stream's :class:`CompletionResult` (or :class:`WorkflowResult`) so far
            (``result.error`` is set).
    """

    def __init__(self, error: ErrorInfo, completion_id: str | None = None, *,
                 usage: UsageInfo | None = None, result: CompletionResult | WorkflowResult | None = None,
                 workflow_id: str | None = None) -> None:
        super().__init__(error)
        self.completion_id = completion_id
        self.workflow_id = workflow_id
        self.usage = usage
        self.result = result


class HubConnectionError(HubClientError):
    """No usable connection: the first connect failed, the connection closed with
    reconnecting disabled or with a code in :data:`FATAL_CLOSE_CODES`, reconnecting gave up
    after ``max_reconnect_attempts``, or the client was closed.

    Attributes:
        close_code: the WebSocket close code of the lost connection (1006: dropped without a
            close frame), or None.
    """

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class _Lost(Exception):
    """Internal: the connection a request was sent on is gone (the request is sent again on
    the next one)."""


# Results.


@dataclass
class CompletionResult:
    """A completion as accumulated from its events (complete after ``completed``).

    Attributes:
        text: the answer text (all ``content_chunk`` contents, in order).
        reasoning: the reasoning text (all ``thinking_status`` contents).
        tool_calls: the ``tool_call`` messages, in order.
        usage: token usage from ``completed`` (or from the ``error``, when the provider
            reported some before failing).
        finish_reason: ``stop``, ``length``, ``tool_calls``, ``content_filter`` or ``error``
            (docs/PROTOCOL.md ``completed``); None until completed, and after an error.
        provider: the provider that served it (``openai``, ``anthropic``, ``google``, ``ollama``).
        model: the model the provider reported.
        ttft_ms: time to first token measured by the hub, from its first upstream request to
            the first output, in ms (``completed.ttftMs``).
        completion_id: the completion's id.
        refusal: the refusal text, if the model refused.
        citations: the citation objects, in order.
        attempts: the upstream attempts, as ``completed`` / ``error`` list them.
        error: the terminal error, when the completion failed.
        done: True once ``completed`` or the terminal ``error`` arrived.
        client_ttft_ms: time to first token measured by this client, from sending the
            ``completion`` request to receiving the first output event (text, reasoning,
            refusal or tool call), in ms; None for a stream this client did not start.
        generation_s: seconds from that first output event to the terminal message.
        duration_s: seconds from sending the request (or subscribing) to the terminal message.
    """

    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallMessage] = field(default_factory=list)
    usage: UsageInfo | None = None
    finish_reason: str | None = None
    provider: str | None = None
    model: str | None = None
    ttft_ms: float | None = None
    completion_id: str = ""
    refusal: str = ""
    citations: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    error: ErrorInfo | None = None
    done: bool = False
    client_ttft_ms: float | None = None
    generation_s: float | None = None
    duration_s: float | None = None

    @property
    def tokens_per_s(self) -> float | None:
        """Completion tokens (``usage.completionTokens``, reasoning included) per second of
        :attr:`generation_s`; None without usage or timing."""
        if self.usage is None or not self.generation_s:
            return None
        return self.usage.completion_tokens / self.generation_s


@dataclass
class AgentRun:
    """One turn of an agent in a workflow run, as accumulated from its events (an agent that
    runs twice, like content_creation's writer, has two).

    Attributes:
        agent_id: the agent's id in the definition.
        place: the token's place while it worked (``agent_started.place``).
        completion_id: its LLM completion (``agent_started.completionId``); None when it
            started while the client was away (it is known from a ``workflow_snapshot``).
        model: the model the definition gave it (``provider/model``; None, as above).
        text: its answer text as streamed (``agent_progress`` contents, in order); when the
            agent called tools, the text of every round.
        reasoning: its reasoning text (``agent_progress`` reasoning).
        progress: the latest ``agent_progress.progress`` (1.0 once completed).
        functions: the ``function_executed`` events of its tool calls, in order.
        result: its answer (``agent_completed.result``: the last round's text); None until
            it completed.
        usage: token usage of its last round (``agent_completed.usage``).
        provider: the provider that served it.
        served_model: the model the provider reported.
        done: it completed, or it ended while the client was away (then see
            :attr:`ended_unseen`), or the run ended.
        ended_unseen: it ended while the client was away: its end is known only from a
            ``workflow_snapshot``.
        started_at, first_output_at, ended_at: this client's ``time.perf_counter()`` when its
            ``agent_started``, first ``agent_progress`` and ``agent_completed`` arrived.
    """

    agent_id: str
    place: str | None = None
    completion_id: str | None = None
    model: str | None = None
    text: str = ""
    reasoning: str = ""
    progress: float = 0.0
    functions: list[FunctionExecuted] = field(default_factory=list)
    result: str | None = None
    usage: UsageInfo | None = None
    provider: str | None = None
    served_model: str | None = None
    done: bool = False
    ended_unseen: bool = False
    started_at: float | None = None
    first_output_at: float | None = None
    ended_at: float | None = None

    @property
    def duration_s(self) -> float | None:
        """Seconds from its ``agent_started`` to its ``agent_completed`` as this client saw
        them; None unless it saw both."""
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    @property
    def ttft_s(self) -> float | None:
        """Seconds from its ``agent_started`` to its first ``agent_progress``, as this client
        saw them; None unless it saw both."""
        if self.started_at is None or self.first_output_at is None:
            return None
        return self.first_output_at - self.started_at


@dataclass
class WorkflowResult:
    """A workflow run as accumulated from its events (complete after ``workflow_completed``).

    Attributes:
        workflow_id: the run's id.
        status: ``running``, then ``completed``, ``failed`` or ``cancelled`` (an ``error`` with
            code ``cancelled``; any other code is ``failed``).
        place: where the token is (``token_created.place``, ``workflow_transition.toPlace``,
            ``workflow_completed.place``, or a snapshot's place).
        data: the token's data, ``{"input": {...}, "results": {agentId: answer}}``: from
            ``token_created`` and each ``workflow_transition``, an agent's answer added at its
            ``agent_completed``, and the final data of ``workflow_completed.result``.
        agents: one :class:`AgentRun` per agent turn, in the order they started.
        transitions: the ``workflow_transition`` events, in order.
        usage: the run's total token usage from ``workflow_completed`` (or the terminal
            ``error``); while running, the sum of the ``agent_completed`` usages received.
            None when unknown (a run whose end was seen only in a snapshot).
        error: the terminal error, when the run failed or was cancelled.
        done: True once ``workflow_completed`` or the terminal ``error`` arrived.
        snapshots: ``workflow_snapshot`` messages applied (resumes the history could not cover).
        duration_s: seconds from sending the request (or subscribing) to the terminal message.
    """

    workflow_id: str = ""
    status: str = "running"
    place: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    agents: list[AgentRun] = field(default_factory=list)
    transitions: list[WorkflowTransition] = field(default_factory=list)
    usage: UsageInfo | None = None
    error: ErrorInfo | None = None
    done: bool = False
    snapshots: int = 0
    duration_s: float | None = None

    @property
    def results(self) -> dict[str, str]:
        """Every agent's latest answer so far, by agent id (``data["results"]``)."""
        results = self.data.get("results")
        return results if isinstance(results, dict) else {}

    @property
    def current(self) -> AgentRun | None:
        """The agent turn at work (started, not done), or None."""
        if self.agents and not self.agents[-1].done:
            return self.agents[-1]
        return None

    @property
    def current_agent(self) -> str | None:
        """The id of the agent at work, or None."""
        current = self.current
        return current.agent_id if current is not None else None


def _token_data(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a token's data that the result may update (``results``) without changing the
    event it came from."""
    copy = dict(data)
    if isinstance(copy.get("results"), dict):
        copy["results"] = dict(copy["results"])
    return copy


def _add_usage(total: UsageInfo | None, usage: UsageInfo | None) -> UsageInfo | None:
    if usage is None:
        return total
    if total is None:
        return usage
    return UsageInfo(total.prompt_tokens + usage.prompt_tokens, total.completion_tokens + usage.completion_tokens,
                     total.total_tokens + usage.total_tokens,
                     (total.reasoning_tokens or 0) + (usage.reasoning_tokens or 0) or None)


@dataclass(frozen=True)
class Reconnect:
    """What ``on_reconnect`` receives after the client reconnected and asked the hub to
    resume its streams.

    Attributes:
        attempts: connection attempts this reconnect took (1: the first succeeded).
        close_code: close code of the lost connection (1006: dropped without a close frame).
        close_reason: its close reason ("" when none).
        downtime_s: seconds from losing the connection to the new one being open.
        channels: the channels of the streams being resumed.
    """

    attempts: int
    close_code: int
    close_reason: str
    downtime_s: float
    channels: tuple[str, ...]


# Requests awaiting an answer, in the order sent.


class _Entry:
    """A request waiting for its answer; the default one takes any single answer."""

    __slots__ = ()

    def feed(self, message: Any) -> bool:
        """Take one answer; True when the request is answered completely."""
        return True

    def lost(self) -> None:
        """The connection closed before the answer."""


class _Waiter(_Entry):
    """Requests a caller awaits (``ping``; ``cancel`` followed by a ``ping``, since a
    successful cancel has no answer of its own): resolves :attr:`future` with the final
    answer, keeping an ``error`` that came before it in :attr:`error`, or with ``_Lost``."""

    __slots__ = ("future", "error")

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.error: ErrorInfo | None = None

    def feed(self, message: Any) -> bool:
        if isinstance(message, ErrorMessage):
            self.error = message.error
            return False
        if not self.future.done():
            self.future.set_result(message)
        return True

    def lost(self) -> None:
        if not self.future.done():
            self.future.set_result(_Lost)


class _StreamEntry(_Entry):
    """The answer to a stream's ``completion`` or ``subscribe``."""

    __slots__ = ("stream", "kind", "conn")

    def __init__(self, stream: HubStream, kind: str, conn: _Connection) -> None:
        self.stream = stream
        self.kind = kind  # "start", "restart" (the completion sent again) or "subscribe"
        self.conn = conn

    def feed(self, message: Any) -> bool:
        self.stream._on_answer(self.kind, message, self.conn)
        return True


class _Connection:
    """One WebSocket of the client and the requests it has sent that await answers."""

    def __init__(self, ws: Any, number: int) -> None:
        self.ws = ws
        self.number = number
        self.pending: deque[_Entry] = deque()
        self.hub_channels: set[str] = set()  # channels the hub has this connection subscribed to
        self.lock = asyncio.Lock()
        self.received = False
        self.lost = False
        self.reader: asyncio.Task[None] | None = None
        self.close_code = 1006
        self.close_reason = ""

    async def send(self, messages: list[str], entries: list[_Entry]) -> None:
        """Send ``messages`` in order, queueing ``entries`` for their answers.

        Raises:
            _Lost: the connection is gone (the messages may or may not have left).
        """
        # Shielded: a caller cancelled halfway must not leave an entry whose message was
        # never sent, which would pair every later answer with the wrong request.
        await asyncio.shield(self._send(messages, entries))

    async def _send(self, messages: list[str], entries: list[_Entry]) -> None:
        async with self.lock:
            if self.lost:
                raise _Lost
            self.pending.extend(entries)
            try:
                for message in messages:
                    await self.ws.send(message)
            except ConnectionClosed:
                raise _Lost from None

    def fail_pending(self) -> None:
        self.lost = True
        pending, self.pending = self.pending, deque()
        for entry in pending:
            entry.lost()


# Streams.


class HubStream:
    """The events of one channel, as an async iterator (see the module docstring for what it
    yields, and how reconnects and snapshots look).

    Created by :meth:`HubClient.completion` (which sends the ``completion`` request) or
    :meth:`HubClient.subscribe`. Nothing is sent until the first ``__anext__``, or
    :meth:`start`. Iteration ends after ``Completed``, raises :class:`HubStreamError` on a
    terminal ``error`` and :class:`HubConnectionError` when the connection is gone for good.
    Events are queued as they arrive whether or not the caller iterates (the queue is not
    bounded). Leaving the ``async for`` early does not unsubscribe: call :meth:`aclose`, or use
    ``async with``.

    Attributes:
        channel: the channel name (``completion:<id>``, ``system``).
        id: the completion id, or None for a channel that is not a completion's (a
            :class:`WorkflowStream`: the workflow id).
        result: the :class:`CompletionResult` so far (None for a channel that is neither a
            completion's nor a workflow's; a :class:`WorkflowResult` for a workflow's).
        epoch: the channel instance's epoch, once the hub sent it.
        seq: the ``seq`` of the latest event delivered (0: none yet).
    """

    def __init__(self, client: HubClient, channel: str, completion_id: str | None, request: str | None) -> None:
        self.channel = channel
        self.id = completion_id
        self.result: CompletionResult | None = CompletionResult(completion_id=completion_id) if completion_id else None
        self.epoch: str | None = None
        self.seq = 0
        self._client = client
        self._request = request  # the completion message, sent until the hub acknowledges it
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._acked = False
        self._ack_event = asyncio.Event()
        self._error: BaseException | None = None
        self._started = False
        self._done = False  # nothing more will be delivered
        self._exhausted = False  # the iterator has ended
        self._sent_on = 0  # number of the connection the request was last sent on
        self._sends = 0
        self._resumable = False  # the hub gave this channel an epoch: it supports `since`
        self._sent_at: float | None = None
        self._first_output_at: float | None = None

    # The caller's side.

    def __aiter__(self) -> HubStream:
        return self

    async def __anext__(self) -> Any:
        if self._exhausted:
            raise StopAsyncIteration
        try:
            if not self._started:
                await self.start()
            item = await self._queue.get()
        except HubClientError:
            self._exhausted = True
            raise
        if item is _END:
            self._exhausted = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._exhausted = True
            raise item
        return item

    async def start(self) -> HubStream:
        """Send the request (once) and wait until the hub has acknowledged it.

        Returns:
            This stream.

        Raises:
            HubStreamError: the hub rejected it (for example ``duplicate_id``,
                ``too_many_completions``, ``shutting_down``, ``unknown_channel``).
            HubConnectionError: no connection, and none will come.
            ValueError: another open stream of this client watches the same channel.
        """
        if not self._started:
            client = self._client
            client._register(self)
            self._started = True
            try:
                conn = await client._connection()
            except HubConnectionError as exc:
                self._fail(exc)
                raise
            with contextlib.suppress(_Lost):  # the next connection sends it (resume)
                await client._ensure_sent(self, conn)
        await self._ack_event.wait()
        if self._error is not None and not self._acked:
            raise self._error
        return self

    async def collect(self) -> CompletionResult | None:
        """Iterate to the end and return :attr:`result`.

        Raises:
            HubStreamError, HubConnectionError: as iterating does.
        """
        async for _ in self:
            pass
        return self.result

    async def aclose(self) -> None:
        """Stop the stream: the iterator ends, later events are dropped, and the hub is asked
        to unsubscribe this connection (a running completion is **not** cancelled: it runs on
        for other subscribers, or for the hub's grace period; use :meth:`HubClient.cancel`)."""
        if self._done and self._exhausted:
            return
        was_done = self._done
        self._finish()
        self._exhausted = True
        if not was_done and self._started:
            await self._client._leave(self.channel)

    async def __aenter__(self) -> HubStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # The reader's side (called by the client's reader task; never awaits).

    def _on_answer(self, kind: str, message: Any, conn: _Connection) -> None:
        if self._done:
            return
        if isinstance(message, Subscribed):
            self._on_ack(message)
        elif isinstance(message, ErrorMessage):
            error = message.error
            if kind == "restart" and error.code == "duplicate_id":
                # The first request did reach the hub before the connection dropped: the
                # completion exists, so watch it instead of starting it.
                self._acked = True
                self._sent_on = 0
                self._client._spawn(self._client._ensure_sent_quietly(self, conn))
                return
            if kind == "subscribe" and self._sends > 1:
                error = ErrorInfo(error.code, f"could not resume {self.channel}: {error.message}",
                                  error.retryable, error.status)
            self._fail(self._error_of(error))
        else:
            log.debug("unexpected answer to %s of %s: %r", kind, self.channel, message)

    def _on_ack(self, ack: Subscribed) -> None:
        self._acked = True
        epoch = ack.epochs.get(self.channel)
        if epoch is not None:
            self._resumable = True
            if self.epoch is None:
                self.epoch = epoch
            elif epoch != self.epoch and self.result is None:
                self.epoch = epoch
                self.seq = 0  # another instance of the channel: its seq starts again
            # Another instance of a completion channel: the hub says recovered: false and
            # sends a snapshot, which decides (_on_snapshot).
        self._ack_event.set()

    def _on_message(self, message: Any) -> None:
        """One event of this stream's channel."""
        if self._done:
            return
        if message.__class__ in _SNAPSHOTS:
            self._on_snapshot(message)
            return
        seq = getattr(message, "seq", None)
        if seq is not None:
            if seq <= self.seq:
                return  # already delivered (replayed on resume)
            first = getattr(message, "first_seq", None) or seq
            if first > self.seq + 1 and self._resumable and self.result is not None:
                self._fail(self._error_of(ErrorInfo(
                    "stream_gap", f"events {self.seq + 1} to {first - 1} of {self.channel} never arrived", True,
                )))
                return
            self.seq = seq
        self._deliver(message)

    def _error_of(self, error: ErrorInfo, usage: UsageInfo | None = None) -> HubStreamError:
        """The :class:`HubStreamError` this stream raises for ``error``."""
        return HubStreamError(error, self.id, usage=usage, result=self.result)

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        result = self.result
        if result is None or snapshot.__class__ is not Snapshot:
            return
        if snapshot.epoch == self.epoch and snapshot.seq <= self.seq:
            self._queue.put_nowait(snapshot)  # it holds nothing this stream lacks
            return
        content, reasoning, refusal = snapshot.content, snapshot.reasoning, snapshot.refusal
        calls, citations = snapshot.tool_calls, snapshot.citations
        if not (content.startswith(result.text) and reasoning.startswith(result.reasoning)
                and refusal.startswith(result.refusal) and len(calls) >= len(result.tool_calls)
                and [c.id for c in calls[:len(result.tool_calls)]] == [c.id for c in result.tool_calls]
                and len(citations) >= len(result.citations)):
            self._fail(self._error_of(ErrorInfo(
                "resume_failed", f"the snapshot of {self.channel} (epoch {snapshot.epoch}) does not continue "
                f"what this stream delivered (epoch {self.epoch})", False,
            )))
            return
        first = self.seq + 1
        seq = snapshot.seq
        self.epoch = snapshot.epoch
        self.seq = seq
        self._queue.put_nowait(snapshot)
        cid = snapshot.completion_id
        if len(reasoning) > len(result.reasoning):
            self._deliver(ThinkingStatus(cid, seq, "thinking", content=reasoning[len(result.reasoning):]))
        if len(content) > len(result.text):
            self._deliver(ContentChunk(cid, seq, content[len(result.text):], first if first < seq else None))
        if len(refusal) > len(result.refusal):
            self._deliver(RefusalChunk(cid, seq, refusal[len(result.refusal):]))
        for call in calls[len(result.tool_calls):]:
            self._deliver(call)
        for citation in citations[len(result.citations):]:
            self._deliver(CitationMessage(cid, seq, citation))

    def _deliver(self, message: Any) -> None:
        result = self.result
        if result is not None:
            cls = message.__class__
            if cls in _OUTPUT and self._first_output_at is None:
                self._first_output_at = time.perf_counter()
                if self._request is not None and self._sent_at is not None:
                    result.client_ttft_ms = (self._first_output_at - self._sent_at) * 1000.0
            if cls is ContentChunk:
                result.text += message.content
            elif cls is ThinkingStatus:
                result.reasoning += message.content
            elif cls is RefusalChunk:
                result.refusal += message.content
            elif cls is ToolCallMessage:
                result.tool_calls.append(message)
            elif cls is CitationMessage:
                result.citations.append(message.citation)
            elif cls is Completed:
                result.finish_reason = message.finish_reason
                result.provider = message.provider
                result.model = message.model
                result.usage = message.usage
                result.ttft_ms = message.ttft_ms
                result.attempts = list(message.attempts)
                self._end_timing()
                self._queue.put_nowait(message)
                self._finish()
                return
            elif cls is ErrorMessage:
                result.error = message.error
                result.usage = message.usage
                result.attempts = list(message.attempts)
                self._end_timing()
                self._fail(self._error_of(message.error, message.usage))
                return
        self._queue.put_nowait(message)

    def _end_timing(self) -> None:
        result = self.result
        assert result is not None
        now = time.perf_counter()
        result.done = True
        if self._first_output_at is not None:
            result.generation_s = now - self._first_output_at
        if self._sent_at is not None:
            result.duration_s = now - self._sent_at

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._queue.put_nowait(_END)
            self._ack_event.set()
            self._client._unregister(self)

    def _fail(self, error: BaseException) -> None:
        if self._done:
            return
        self._error = error
        self._done = True
        self._queue.put_nowait(error)
        self._ack_event.set()
        self._client._unregister(self)


class WorkflowStream(HubStream):
    """The events of one workflow run (``workflow:<id>``), as an async iterator: a
    :class:`HubStream` whose :attr:`result` is a :class:`WorkflowResult`.

    Created by :meth:`HubClient.workflow` (which sends ``create_workflow``) or
    :meth:`HubClient.subscribe_workflow`. Yields ``TokenCreated``, ``AgentStarted``,
    ``AgentProgress``, ``FunctionExecuted``, ``AgentCompleted``, ``WorkflowTransition`` and
    ``WorkflowSnapshot`` (after a resume the history could not cover; module docstring,
    "Workflows"), then ``WorkflowCompleted`` as the last event; a terminal ``error`` raises
    :class:`HubStreamError` (``workflow_id`` set) instead. Reconnects are resumed with ``since``
    like a completion's. :attr:`result` is updated as events arrive, which may be ahead of
    the event the caller is iterating.

    Attributes:
        id: the workflow run's id.
        channel: ``workflow:<id>``.
        result: the :class:`WorkflowResult` so far.
    """

    def __init__(self, client: HubClient, workflow_id: str, request: str | None) -> None:
        super().__init__(client, f"workflow:{workflow_id}", None, request)
        self.id = workflow_id
        self.result: WorkflowResult = WorkflowResult(workflow_id=workflow_id)  # type: ignore[assignment]

    async def collect(self) -> WorkflowResult:  # type: ignore[override]
        """Iterate to the end and return :attr:`result`.

        Raises:
            HubStreamError, HubConnectionError: as iterating does.
        """
        async for _ in self:
            pass
        return self.result

    def _error_of(self, error: ErrorInfo, usage: UsageInfo | None = None) -> HubStreamError:
        return HubStreamError(error, None, usage=usage, result=self.result, workflow_id=self.id)

    def _turn(self, agent_id: str) -> AgentRun:
        """The turn of ``agent_id`` at work (one is made if this stream never saw it start)."""
        current = self.result.current
        if current is not None and current.agent_id == agent_id:
            return current
        turn = AgentRun(agent_id, self.result.place)
        self.result.agents.append(turn)
        return turn

    def _deliver(self, message: Any) -> None:
        result = self.result
        cls = message.__class__
        if cls is AgentProgress:
            turn = self._turn(message.agent_id)
            if turn.first_output_at is None and (message.content or message.reasoning):
                turn.first_output_at = time.perf_counter()
            turn.text += message.content
            turn.reasoning += message.reasoning
            turn.progress = message.progress
        elif cls is AgentStarted:
            current = result.current
            if current is not None:  # cannot happen in a hub's run: one agent works at a time
                current.done = True
            result.agents.append(AgentRun(message.agent_id, message.place, message.completion_id, message.model,
                                          started_at=time.perf_counter()))
        elif cls is FunctionExecuted:
            self._turn(message.agent_id).functions.append(message)
        elif cls is AgentCompleted:
            turn = self._turn(message.agent_id)
            turn.result = message.result
            turn.usage = message.usage
            turn.provider = message.provider
            turn.served_model = message.model
            turn.progress = 1.0
            turn.done = True
            turn.ended_at = time.perf_counter()
            results = result.data.setdefault("results", {})
            if isinstance(results, dict):
                results[message.agent_id] = message.result
            result.usage = _add_usage(result.usage, message.usage)
        elif cls is TokenCreated:
            result.place = message.place
            result.data = _token_data(message.data)
        elif cls is WorkflowTransition:
            result.place = message.to_place
            result.data = _token_data(message.data)
            result.transitions.append(message)
        elif cls is WorkflowCompleted:
            result.place = message.place
            result.data = _token_data(message.result)
            result.usage = message.usage
            result.status = "completed"
            self._end()
            self._queue.put_nowait(message)
            self._finish()
            return
        elif cls is ErrorMessage:
            result.error = message.error
            if message.usage is not None:
                result.usage = message.usage
            result.status = "cancelled" if message.error.code == "cancelled" else "failed"
            self._end()
            self._fail(self._error_of(message.error, message.usage))
            return
        self._queue.put_nowait(message)

    def _end(self) -> None:
        result = self.result
        result.done = True
        for turn in result.agents:
            turn.done = True
        if self._sent_at is not None:
            result.duration_s = time.perf_counter() - self._sent_at

    def _on_snapshot(self, snapshot: Any) -> None:
        """Apply a ``workflow_snapshot`` (module docstring, "Workflows")."""
        if snapshot.__class__ is not WorkflowSnapshot:
            return
        result = self.result
        if snapshot.epoch == self.epoch and snapshot.seq <= self.seq:
            self._queue.put_nowait(snapshot)  # it holds nothing this stream lacks
            return
        if snapshot.epoch != self.epoch and self.seq > 0:
            self._fail(self._error_of(ErrorInfo(
                "resume_failed", f"the snapshot of {self.channel} (epoch {snapshot.epoch}) is of another run than "
                f"the one this stream delivered (epoch {self.epoch})", False,
            )))
            return
        self.epoch = snapshot.epoch
        seq = self.seq = snapshot.seq
        wid = snapshot.workflow_id
        result.snapshots += 1
        result.place = snapshot.place
        result.data = _token_data(snapshot.data)
        if snapshot.status == "running":
            result.status = "running"
        self._queue.put_nowait(snapshot)
        running = snapshot.status == "running"
        at_work = snapshot.agent_id if running else None
        content = snapshot.agent_content
        followed = result.current
        if followed is not None:
            if (at_work == followed.agent_id and snapshot.place == followed.place
                    and content.startswith(followed.text)):
                # The turn this stream was following is still at work: only the text it missed.
                if len(content) > len(followed.text):
                    self._deliver(AgentProgress(wid, seq, followed.agent_id, followed.progress,
                                                content[len(followed.text):]))
                at_work = None
            else:
                # It ended while the client was away. When the run went on (or completed), it
                # succeeded, and its answer is the agent's latest in the token's data, unless
                # that does not continue what was yielded (a later turn of the same agent, or
                # a tool round): then it is only marked ended.
                answer = result.results.get(followed.agent_id)
                if (snapshot.status in ("running", "completed") and isinstance(answer, str)
                        and answer.startswith(followed.text)):
                    if len(answer) > len(followed.text):
                        self._deliver(AgentProgress(wid, seq, followed.agent_id, followed.progress,
                                                    answer[len(followed.text):]))
                    self._deliver(AgentCompleted(wid, seq, followed.agent_id, answer))
                followed.done = followed.ended_unseen = True
        if at_work is not None:
            # Another turn is at work, which started while the client was away.
            result.agents.append(AgentRun(at_work, snapshot.place))
            if content:
                self._deliver(AgentProgress(wid, seq, at_work, 0.0, content))
        if snapshot.status == "completed":
            self._deliver(WorkflowCompleted(wid, seq, snapshot.place, snapshot.data, None))
        elif not running:
            if snapshot.status == "cancelled":
                info = ErrorInfo("cancelled", f"the workflow {wid!r} was cancelled (seen in a workflow_snapshot)",
                                 False)
            else:
                info = ErrorInfo("workflow_failed", f"the workflow {wid!r} ended with status {snapshot.status!r} "
                                 "while this client was away (the workflow_snapshot does not say why)", False)
            result.usage = None
            self._deliver(ErrorMessage(info, None, seq, None, workflow_id=wid))


# The client.


class HubClient:
    """A client of the hub's WebSocket endpoint (``ws://host:port/ws/stream``).

    Use ``async with HubClient(url) as client:`` (or ``await client.connect()`` and
    ``await client.close()``).

    Args:
        url: the hub's WebSocket URL.
        reconnect: reconnect and resume open streams when the connection is lost (module
            docstring). False: a lost connection fails every open stream with
            :class:`HubConnectionError`.
        base_delay_s: backoff base, in seconds: reconnect attempt *n* (from 0) waits uniform
            ``[0, min(max_delay_s, base_delay_s * 2**n)]`` s (full jitter).
        max_delay_s: backoff cap, in seconds.
        max_reconnect_attempts: consecutive failed connection attempts after which the client
            gives up (open streams and later calls raise :class:`HubConnectionError`); None:
            never give up. A connection counts as working once the hub sent it anything
            (the client pings it right after a reconnect).
        on_reconnect: called with a :class:`Reconnect` after each reconnect, once the resume
            requests are sent; a plain function or a coroutine function. Exceptions it
            raises are logged and ignored.
        open_timeout_s: timeout of one connection attempt (TCP + WebSocket handshake), in s.
        max_message_bytes: largest hub message accepted, in bytes (None: no limit, the hub's
            own messages have none; docs/PROTOCOL.md "Transport").
        **connect_options: passed to :func:`websockets.asyncio.client.connect`
            (``additional_headers``, ``ssl``, ``proxy``, ``ping_interval``...).
    """

    def __init__(self, url: str = "ws://127.0.0.1:8765/ws/stream", *, reconnect: bool = True,
                 base_delay_s: float = 0.1, max_delay_s: float = 5.0, max_reconnect_attempts: int | None = 10,
                 on_reconnect: Callable[[Reconnect], Union[None, Awaitable[None]]] | None = None,
                 open_timeout_s: float = 10.0, max_message_bytes: int | None = None,
                 **connect_options: Any) -> None:
        self.url = url
        self.reconnect = reconnect
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_reconnect_attempts = max_reconnect_attempts
        self.on_reconnect = on_reconnect
        self.open_timeout_s = open_timeout_s
        self.max_message_bytes = max_message_bytes
        self.connect_options = connect_options
        #: Reconnects so far.
        self.reconnects = 0
        self._conn: _Connection | None = None  # the connection, once resumed (ready for requests)
        self._live: set[_Connection] = set()  # every connection whose reader runs
        self._numbers = 0
        self._streams: dict[str, HubStream] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed: asyncio.Event | None = None
        self._failure: HubConnectionError | None = None
        self._closing = False

    # Lifecycle.

    async def __aenter__(self) -> HubClient:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> HubClient:
        """Open the connection (once; there is no retry for this first one).

        Raises:
            HubConnectionError: the hub could not be reached, refused the WebSocket, or did
                not answer within ``open_timeout_s``; or the URL is not a WebSocket URL.
        """
        if self._supervisor is not None:
            return self
        if self._closing:
            raise HubConnectionError("the client is closed")
        try:
            ws = await self._open()
        except InvalidURI as exc:
            raise HubConnectionError(f"not a WebSocket URL: {self.url!r} ({exc})") from exc
        except _CONNECT_ERRORS as exc:
            raise HubConnectionError(f"cannot connect to {self.url}: {exc or type(exc).__name__}") from exc
        self._conn = self._install(ws)
        self._supervisor = asyncio.create_task(self._supervise(), name="cbhub-client")
        self._notify()
        return self

    async def close(self) -> None:
        """Close the connection and stop reconnecting. Open streams raise
        :class:`HubConnectionError` ("the client is closed") to whoever still iterates them."""
        if self._closing:
            return
        self._closing = True
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*([supervisor] if supervisor else []), *self._tasks, return_exceptions=True)
        for conn in list(self._live):  # the current one, or one being resumed
            with contextlib.suppress(Exception):
                await conn.ws.close()
            if conn.reader is not None:
                await asyncio.gather(conn.reader, return_exceptions=True)
        self._conn = None
        self._give_up(HubConnectionError("the client is closed"))

    @property
    def connected(self) -> bool:
        """True while a connection is open and its streams resumed."""
        return self._conn is not None and not self._conn.lost

    @property
    def websocket(self) -> Any:
        """The current ``websockets`` connection (None while reconnecting): for diagnostics
        and tests; sending on it directly would confuse the client's answer matching."""
        return self._conn.ws if self._conn is not None else None

    # Requests.

    def completion(self, *, model: str, messages: Iterable[Mapping[str, Any] | ChatMessage],
                   id: str | None = None, **options: Any) -> HubStream:
        """A completion as a :class:`HubStream` (the request goes out on first iteration, or
        :meth:`HubStream.start`).

        Args:
            model: ``provider/model`` or a bare model name (docs/PROTOCOL.md ``completion``).
            messages: the conversation, OpenAI-shaped dicts or ``ChatMessage`` Structs.
            id: the completion id (1-128 of ``A-Z a-z 0-9 _ . : -``); generated
                (``py-<32 hex>``) when None, so the stream can be recovered even if the
                connection drops before the hub answers.
            **options: the other ``completion`` fields: ``max_tokens``, ``temperature``,
                ``tools``, ``tool_choice``, ``stop``, ``reasoning``, ``thinking``,
                ``coalesce``, ``fallbacks``.

        Raises:
            TypeError: an option the protocol does not have.
            ValueError: a malformed id, or no messages.
        """
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise TypeError(f"unknown completion option(s) {unknown}; expected some of {sorted(_OPTIONS)}")
        if id is None:
            id = f"py-{uuid.uuid4().hex}"
        elif not COMPLETION_ID_PATTERN.fullmatch(id):
            raise ValueError(f"completion id {id!r} must be 1-128 characters from A-Z a-z 0-9 _ . : -")
        messages = list(messages)
        if not messages:
            raise ValueError("messages must hold at least one message")
        request: dict[str, Any] = {"type": "completion", "id": id, "model": model, "messages": messages}
        request.update((key, value) for key, value in options.items() if value is not None)
        return HubStream(self, f"completion:{id}", id, _encode(request))

    def subscribe(self, channel: str) -> HubStream:
        """Watch a channel (``completion:<id>``, ``system``) as a :class:`HubStream`: its events
        from ``seq`` 1 (what the hub still holds), then live, resumed across reconnects. A
        completion channel ends after its ``completed`` (or raises on its ``error``), and its
        stream has a :attr:`~HubStream.result` like one from :meth:`completion`. A
        ``workflow:<id>`` channel gives a :class:`WorkflowStream`, as
        :meth:`subscribe_workflow` does.

        Raises:
            ValueError: not a channel name.
        """
        if not CHANNEL_PATTERN.fullmatch(channel):
            raise ValueError(f"{channel!r} is not a channel name (completion:<id>, workflow:<id>, agent:<id>, system)")
        kind, _, ident = channel.partition(":")
        if kind == "workflow":
            return WorkflowStream(self, ident, None)
        return HubStream(self, channel, ident if kind == "completion" else None, None)

    def workflow(self, definition_name: str | None = None, *, definition: Mapping[str, Any] | Any | None = None,
                 input: Mapping[str, Any] | None = None, workflow_id: str | None = None) -> WorkflowStream:
        """Start a workflow run (``create_workflow``) as a :class:`WorkflowStream` (the request
        goes out on first iteration, or :meth:`HubStream.start`).

        Args:
            definition_name: a definition the hub ships (``content_creation``).
            definition: an inline definition (a dict as docs/PROTOCOL.md "Workflows" shows, or
                a ``hub.workflows.WorkflowDefinition``); give exactly one of the two.
            input: the run's input, the token's ``data.input`` (``{"topic": ...}``).
            workflow_id: the run's id (1-128 of ``A-Z a-z 0-9 _ . : -``); generated
                (``py-wf-<32 hex>``) when None, so the run can be recovered even if the
                connection drops before the hub answers.

        Raises:
            ValueError: both or neither of ``definition_name`` and ``definition``, or a
                malformed id.
        """
        if (definition_name is None) == (definition is None):
            raise ValueError("give exactly one of definition_name and definition")
        if workflow_id is None:
            workflow_id = f"py-wf-{uuid.uuid4().hex}"
        elif not COMPLETION_ID_PATTERN.fullmatch(workflow_id):
            raise ValueError(f"workflow id {workflow_id!r} must be 1-128 characters from A-Z a-z 0-9 _ . : -")
        request: dict[str, Any] = {"type": "create_workflow", "workflowId": workflow_id, "input": dict(input or {})}
        if definition_name is not None:
            request["definitionName"] = definition_name
        else:
            request["definition"] = (dict(definition) if isinstance(definition, Mapping)
                                     else msgspec.to_builtins(definition))
        return WorkflowStream(self, workflow_id, _encode(request))

    def subscribe_workflow(self, workflow_id: str) -> WorkflowStream:
        """Watch a workflow run as a :class:`WorkflowStream`: its events from ``seq`` 1 (or a
        ``workflow_snapshot`` when the hub no longer holds them all), then live, resumed
        across reconnects; it ends after ``workflow_completed``. The same as
        ``subscribe(f"workflow:{workflow_id}")``.

        Raises:
            ValueError: a malformed id.
        """
        if not COMPLETION_ID_PATTERN.fullmatch(workflow_id):
            raise ValueError(f"workflow id {workflow_id!r} must be 1-128 characters from A-Z a-z 0-9 _ . : -")
        return WorkflowStream(self, workflow_id, None)

    async def cancel(self, completion_id: str) -> None:
        """Cancel a completion this client watches (started with :meth:`completion` or
        subscribed to with :meth:`subscribe`). Its stream then raises
        :class:`HubStreamError` code ``cancelled``. Cancelling one that already ended does
        nothing (but after a reconnect the client no longer watches streams that had ended,
        so the hub answers ``not_subscribed`` for them).

        Raises:
            HubRequestError: ``unknown_completion``, or ``not_subscribed`` (this client does
                not watch it).
            HubConnectionError: no connection, and none will come.
        """
        answer = await self._request([_encode({"type": "cancel", "completionId": completion_id}), _PING])
        if answer.error is not None:
            raise HubRequestError(answer.error)

    async def cancel_workflow(self, workflow_id: str) -> None:
        """Cancel a workflow run this client watches (started with :meth:`workflow` or
        watched with :meth:`subscribe_workflow`) and every completion it is running. Its
        stream then raises :class:`HubStreamError` code ``cancelled``. Cancelling one that
        already ended does nothing (after a reconnect, see :meth:`cancel`).

        Raises:
            HubRequestError: ``unknown_workflow``, or ``not_subscribed``.
            HubConnectionError: no connection, and none will come.
        """
        answer = await self._request([_encode({"type": "cancel_workflow", "workflowId": workflow_id}), _PING])
        if answer.error is not None:
            raise HubRequestError(answer.error)

    async def ping(self) -> float:
        """Round trip of an application-level ``ping``, in seconds.

        Raises:
            HubConnectionError: no connection, and none will come.
        """
        started = time.perf_counter()
        await self._request([_PING])
        return time.perf_counter() - started

    async def _request(self, messages: list[str]) -> _Waiter:
        """Send ``messages`` (the last one answered by a ``pong``, or ``subscribed``...) and
        wait for the answer; sent again on the next connection when this one is lost first."""
        while True:
            conn = await self._connection()
            waiter = _Waiter()
            try:
                await conn.send(messages, [waiter])
            except _Lost:
                continue
            if await waiter.future is not _Lost:
                return waiter

    async def _leave(self, channel: str) -> None:
        """Unsubscribe from ``channel`` on the current connection (best effort)."""
        conn = self._conn
        if conn is None or conn.lost or self._closing:
            return
        with contextlib.suppress(_Lost):
            await conn.send([_encode({"type": "unsubscribe", "channels": [channel]})], [_Entry()])

    # Streams.

    def _register(self, stream: HubStream) -> None:
        channel = stream.channel
        if channel in self._streams:
            raise ValueError(f"this client already has an open stream of {channel}")
        # Events of agent:<workflowId>.<agentId> are those of workflow:<workflowId> (with
        # their own seq) and nothing in them says which channel sent them: one client cannot
        # tell them apart when it watches both.
        if channel.startswith(("agent:", "workflow:")):
            for other in self._streams:
                agent, run = (channel, other) if channel.startswith("agent:") else (other, channel)
                if (agent.startswith("agent:") and run.startswith("workflow:")
                        and agent.startswith(f"agent:{run.partition(':')[2]}.")):
                    raise ValueError(f"{channel} and {other} carry the same events and nothing in them says "
                                     f"which channel sent them; watch {channel} from another HubClient")
        self._streams[channel] = stream

    def _unregister(self, stream: HubStream) -> None:
        if self._streams.get(stream.channel) is stream:
            del self._streams[stream.channel]

    async def _ensure_sent(self, stream: HubStream, conn: _Connection) -> None:
        """Send ``stream``'s request on ``conn`` unless it was sent there already: the
        ``completion`` until the hub acknowledged it, then a ``subscribe`` (with ``since``
        once the hub gave the channel an epoch).

        Raises:
            _Lost: ``conn`` is gone (the next connection sends it).
        """
        if stream._done or stream._sent_on == conn.number:
            return
        stream._sent_on = conn.number
        messages: list[str] = []
        entries: list[_Entry] = []
        if stream.channel in conn.hub_channels:
            # Left subscribed on this connection by an earlier stream: the hub would replay
            # nothing to a second subscribe, so leave first.
            messages.append(_encode({"type": "unsubscribe", "channels": [stream.channel]}))
            entries.append(_Entry())
        if stream._request is not None and not stream._acked:
            kind = "restart" if stream._sends else "start"
            messages.append(stream._request)
        else:
            kind = "subscribe"
            subscribe: dict[str, Any] = {"type": "subscribe", "channels": [stream.channel]}
            if stream.epoch is not None:
                subscribe["since"] = {stream.channel: {"seq": stream.seq, "epoch": stream.epoch}}
            messages.append(_encode(subscribe))
        entries.append(_StreamEntry(stream, kind, conn))
        stream._sends += 1
        if stream._sent_at is None:
            stream._sent_at = time.perf_counter()
        await conn.send(messages, entries)

    async def _ensure_sent_quietly(self, stream: HubStream, conn: _Connection) -> None:
        with contextlib.suppress(_Lost):
            await self._ensure_sent(stream, conn)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # The connection.

    async def _open(self) -> Any:
        return await websockets.connect(
            self.url, compression=None, open_timeout=self.open_timeout_s, max_size=self.max_message_bytes,
            **self.connect_options,
        )

    def _install(self, ws: Any) -> _Connection:
        self._numbers += 1
        conn = _Connection(ws, self._numbers)
        conn.reader = asyncio.create_task(self._read(conn), name=f"cbhub-client-reader-{conn.number}")
        self._live.add(conn)
        return conn

    async def _connection(self) -> _Connection:
        """The connection to send on, once it is open and its streams are resumed.

        Raises:
            HubConnectionError: the client is closed, never connected, or gave up.
        """
        while True:
            if self._failure is not None:
                raise self._failure
            if self._closing:
                raise HubConnectionError("the client is closed")
            if self._supervisor is None:
                raise HubConnectionError("not connected: use `async with HubClient(url)` or `await client.connect()`")
            conn = self._conn
            if conn is not None and not conn.lost:
                return conn
            await self._changed_event().wait()

    def _changed_event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        event = self._changed
        self._changed = asyncio.Event()
        if event is not None:
            event.set()

    async def _read(self, conn: _Connection) -> None:
        """Dispatch every frame of ``conn`` until it closes."""
        ws = conn.ws
        try:
            async for frame in ws:
                conn.received = True
                try:
                    self._dispatch(conn, frame)
                except Exception:  # a bug of ours must not stop the other streams
                    log.exception("handling a hub message failed: %.200r", frame)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("reading from the hub failed")
            ws.transport.abort()
        finally:
            conn.close_code = int(ws.close_code) if ws.close_code is not None else 1006
            conn.close_reason = ws.close_reason or ""
            conn.fail_pending()
            self._live.discard(conn)

    def _dispatch(self, conn: _Connection, frame: str | bytes) -> None:
        try:
            message = HUB_DECODER.decode(frame)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.debug("ignoring a hub message of a type this client does not know: %.200r", frame)
            return
        if isinstance(message, _ANSWERS) or (message.__class__ is ErrorMessage and message.seq is None):
            if message.__class__ is Subscribed:
                conn.hub_channels.update(message.channels)
            elif message.__class__ is Unsubscribed:
                conn.hub_channels.difference_update(message.channels)
            if not conn.pending:
                log.debug("an answer no request awaits: %r", message)
                return
            if conn.pending[0].feed(message):
                conn.pending.popleft()
            return
        workflow_id = getattr(message, "workflow_id", None)
        completion_id = getattr(message, "completion_id", None)
        if workflow_id is not None:  # before completion_id: agent_started carries both
            stream = self._streams.get(f"workflow:{workflow_id}")
            if stream is None and message.__class__ in _AGENT_EVENTS:
                stream = self._streams.get(f"agent:{workflow_id}.{message.agent_id}")
        elif completion_id is not None:
            stream = self._streams.get(f"completion:{completion_id}")
        elif message.__class__ is CircuitState:
            stream = self._streams.get("system")
        else:
            stream = None
        if stream is not None:
            stream._on_message(message)

    async def _supervise(self) -> None:
        """Wait for the connection to close; reconnect with backoff and resume the streams."""
        loop = asyncio.get_running_loop()
        failures = 0  # consecutive connection attempts that gave no working connection
        while True:
            conn = self._conn
            assert conn is not None and conn.reader is not None
            await asyncio.shield(conn.reader)
            self._conn = None
            if conn.received:
                failures = 0
            if self._closing:
                return
            code, reason = conn.close_code, conn.close_reason
            if not self.reconnect or code in FATAL_CLOSE_CODES:
                self._give_up(HubConnectionError(
                    f"the connection to {self.url} closed ({code}{': ' + reason if reason else ''})", code))
                return
            log.info("connection to %s lost (%s %s); reconnecting", self.url, code, reason)
            lost_at = loop.time()
            attempts = 0
            while True:
                if self.max_reconnect_attempts is not None and failures >= self.max_reconnect_attempts:
                    self._give_up(HubConnectionError(
                        f"could not reconnect to {self.url} after {failures} attempts (last close {code})", code))
                    return
                await asyncio.sleep(backoff_delay_s(failures, self.base_delay_s * 1000.0, self.max_delay_s * 1000.0))
                failures += 1
                attempts += 1
                try:
                    ws = await self._open()
                except _CONNECT_ERRORS as exc:
                    log.info("reconnecting to %s failed: %s", self.url, exc or type(exc).__name__)
                    continue
                break
            new = self._install(ws)
            channels = await self._resume(new)
            if new.lost:
                self._conn = new  # the loop above waits for its reader, then reconnects
                continue
            self._conn = new
            self.reconnects += 1
            self._notify()
            if self.on_reconnect is not None:
                info = Reconnect(attempts, code, reason, loop.time() - lost_at, tuple(channels))
                try:
                    outcome = self.on_reconnect(info)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception:
                    log.exception("on_reconnect raised")

    async def _resume(self, conn: _Connection) -> list[str]:
        """Send every open stream's request on a new connection, then a ping (its pong shows
        the connection works). Returns the channels resumed."""
        channels = []
        try:
            for stream in list(self._streams.values()):
                if not stream._done:
                    channels.append(stream.channel)
                    await self._ensure_sent(stream, conn)
            await conn.send([_PING], [_Entry()])
        except _Lost:
            pass
        return channels

    def _give_up(self, error: HubConnectionError) -> None:
        if self._failure is None:
            self._failure = error
        for stream in list(self._streams.values()):
            stream._fail(error)
        self._notify()
