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

The seeds' surface (:class:`CircuitBreakerStream`, :class:`StreamConfig`, events with
``event_type``) is a thin layer over the same client: :mod:`hub.client.seeds`.

This package is the SDK only: it imports ``websockets``, ``msgspec`` and the shared wire
definitions of ``protocol/``, never the hub server (nor aiohttp). Its modules:

- :mod:`hub.client.state`: the state of one channel, I/O-free (resume cursors, replay
  de-duplication, snapshot catch-up, the results), the twin of sdk_js/src/channel.js;
- :mod:`hub.client.connection`: :class:`HubClient` and its WebSocket, reconnect and backoff;
- :mod:`hub.client.streams`: :class:`HubStream` and :class:`WorkflowStream`, the async
  iterators a caller holds;
- :mod:`hub.client.results`: :class:`CompletionResult`, :class:`WorkflowResult`,
  :class:`AgentRun`, :class:`Reconnect`;
- :mod:`hub.client.errors`: the exception tree, rooted at :class:`HubClientError`;
- :mod:`hub.client.seeds`: the seeds' names.

**One connection, many streams.** A client holds one WebSocket to ``/ws/stream``.
:meth:`HubClient.completion` and :meth:`HubClient.subscribe` return a :class:`HubStream`, an
async iterator of that channel's events with its own queue. Any number of streams run at once.

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
seconds; :func:`hub.client.connection.backoff_delay_s`) and resumes every open stream: it
subscribes again with ``since`` = the last ``seq`` and the channel's ``epoch`` it has, and the
hub replays what it missed (docs/PROTOCOL.md "Resuming"). Events it already has are dropped by
``seq``, so the caller sees every event once, in order; ``on_reconnect`` is the only sign. When
the hub's history cannot cover the gap it sends a ``snapshot`` (or ``workflow_snapshot``)
instead, and the stream yields it followed by synthetic events carrying only what was missed:
:mod:`hub.client.state` says exactly which.

**Several hubs.** ``HubClient(urls=[...])`` takes the URLs of hubs that share a broker
(docs/PROTOCOL.md "Running several hubs"): it connects to the first that answers, and each
reconnect attempt goes to the next URL after the one lost or failed, so a client whose node
died or was drained moves to another and resumes there with the same cursors, gap-free.
``Reconnect.url`` says where it went; assigning ``client.urls`` redirects later reconnects.

A completion request whose acknowledgement was lost with the connection is sent again: the
hub either starts it (the first request never arrived) or answers ``duplicate_id`` (it did),
and then the client subscribes to it. For that, :meth:`HubClient.completion` generates the
completion id (``py-<32 hex>``) when none is given, so it is known before the hub answers.
(A caller-chosen id that another client also uses would be joined, not duplicated.)

Against a hub without resumable channels (its acknowledgement has no ``epochs``), the client
resubscribes without ``since``, the hub replays the channel's history, and events already
delivered are dropped by ``seq``; a gap larger than that history is not detected there.

**Workflows.** :meth:`HubClient.workflow` starts a run of a workflow definition
(``create_workflow``; docs/PROTOCOL.md "Workflows") and :meth:`HubClient.subscribe_workflow`
watches one; both return a :class:`WorkflowStream` of the ``workflow:<id>`` channel:
``TokenCreated``, then per agent turn ``AgentStarted``, ``AgentProgress`` (its tokens),
``FunctionExecuted`` (its tool calls), ``AgentCompleted``, and the ``WorkflowTransition``
objects as the token moves, ending with ``WorkflowCompleted`` (a terminal ``error`` raises
:class:`HubStreamError`, with ``workflow_id``). :attr:`WorkflowStream.result` is a
:class:`WorkflowResult`. :meth:`HubClient.cancel_workflow` cancels a run. A
``create_workflow`` whose acknowledgement was lost is sent again like a ``completion`` (hence
the generated id, ``py-wf-<32 hex>``).

The events of an agent's channel ``agent:<workflowId>.<agentId>`` repeat those of
``workflow:<workflowId>`` with their own ``seq`` and nothing in them names the channel, so one
client does not watch both (starting the second of the two streams raises
:class:`InvalidArgumentError`); such a plain channel stream never ends by itself.

**Errors.** Every error is a :class:`HubClientError` (the tree is drawn in
:mod:`hub.client.errors`): :class:`HubStreamError` (a terminal ``error`` of a stream, a
rejected ``completion`` or ``subscribe``, or a stream that could not be resumed),
:class:`HubRequestError` (a rejected ``cancel``), :class:`HubConnectionError` (no connection,
reconnect disabled or given up, or the client closed), and the argument errors
:class:`InvalidArgumentError` (a ValueError) and :class:`UnknownOptionError` (a TypeError).
"""

from __future__ import annotations

from hub.client.connection import FATAL_CLOSE_CODES, HubClient, backoff_delay_s
from hub.client.errors import (
    HubAuthError,
    HubClientError,
    HubConnectionError,
    HubRequestError,
    HubStreamError,
    InvalidArgumentError,
    ResumeError,
    UnknownOptionError,
)
from hub.client.results import AgentRun, ChoiceResult, CompletionResult, Reconnect, WorkflowResult
from hub.client.seeds import (
    CircuitBreakerStream,
    CompletionEventType,
    StreamConfig,
    StreamEvent,
    WorkflowEvent,
    WorkflowEventType,
)
from hub.client.streams import HubStream, WorkflowStream

__all__ = [
    "HubClient",
    "HubStream",
    "WorkflowStream",
    "CompletionResult",
    "ChoiceResult",
    "WorkflowResult",
    "AgentRun",
    "Reconnect",
    "HubClientError",
    "HubRequestError",
    "HubStreamError",
    "HubConnectionError",
    "HubAuthError",
    "ResumeError",
    "InvalidArgumentError",
    "UnknownOptionError",
    "FATAL_CLOSE_CODES",
    "backoff_delay_s",
    "CircuitBreakerStream",
    "StreamConfig",
    "StreamEvent",
    "WorkflowEvent",
    "CompletionEventType",
    "WorkflowEventType",
]
