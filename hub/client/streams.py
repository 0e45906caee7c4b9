"""The streams of the Python SDK: :class:`HubStream` (one channel's events as an async
iterator) and :class:`WorkflowStream` (a workflow run's).

A stream is a thin asyncio shell around a channel state of :mod:`hub.client.state`: the
client's reader task hands it the channel's messages (``_on_message``, never awaiting), the
state says which events to deliver, and the stream queues them for the caller's ``async for``.
What a stream yields, and how reconnects and snapshots look, is in the package docstring
(:mod:`hub.client`) and in :mod:`hub.client.state`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from hub.client.errors import HubClientError, HubConnectionError, HubStreamError, ResumeError
from hub.client.results import CompletionResult, WorkflowResult
from hub.client.state import ChannelState, CompletionState, WorkflowState
from protocol.messages import Completed, ErrorInfo, ErrorMessage, Subscribed, UsageInfo, WorkflowCompleted

if TYPE_CHECKING:
    from hub.client.connection import Connection, HubClient

__all__ = ["HubStream", "WorkflowStream"]

log = logging.getLogger("cbhub.client")

#: The type of a stream's result: CompletionResult, WorkflowResult, or None for a plain channel.
R = TypeVar("R")
_END = object()  # queue item: the stream ended normally


class HubStream(Generic[R]):
    """The events of one channel, as an async iterator (see the :mod:`hub.client` docstring
    for what it yields, and :mod:`hub.client.state` for reconnects and snapshots).

    Created by :meth:`HubClient.completion <hub.client.connection.HubClient.completion>`
    (which sends the ``completion`` request) or :meth:`~hub.client.connection.HubClient.subscribe`.
    Nothing is sent until the first ``__anext__``, or :meth:`start`. Iteration ends after
    ``Completed``, raises :class:`~hub.client.errors.HubStreamError` on a terminal ``error``
    and :class:`~hub.client.errors.HubConnectionError` when the connection is gone for good.
    Events are queued as they arrive whether or not the caller iterates (the queue is not
    bounded). Leaving the ``async for`` early does not unsubscribe: call :meth:`aclose`, or use
    ``async with``.

    Attributes:
        channel: the channel name (``completion:<id>``, ``system``).
        id: the completion id, the workflow id for a :class:`WorkflowStream`, or None for
            another channel.
        result: the :class:`~hub.client.results.CompletionResult` so far (None for a channel
            that is neither a completion's nor a workflow's; a
            :class:`~hub.client.results.WorkflowResult` for a workflow's).
    """

    def __init__(self, client: HubClient, state: ChannelState, ident: str | None,
                 request: dict[str, Any] | None) -> None:
        self.channel = state.name
        self.id = ident
        self.result: R = cast(R, state.result)
        self._state = state
        self._client = client
        self._request = request  # the starting message (without rid), sent until the hub acknowledges it
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._acked = False
        self._ack_event = asyncio.Event()
        self._error: BaseException | None = None
        self._started = False
        self._done = False  # nothing more will be delivered
        self._exhausted = False  # the iterator has ended
        self._sent_on = 0  # number of the connection the request was last sent on
        self._sends = 0

    @property
    def epoch(self) -> str | None:
        """The channel instance's epoch, once the hub sent it."""
        return self._state.epoch

    @property
    def seq(self) -> int:
        """The ``seq`` of the latest event delivered (0: none yet)."""
        return self._state.seq

    # The caller's side.

    def __aiter__(self) -> HubStream[R]:
        return self

    async def __anext__(self) -> Any:
        """The next event (a ``protocol.messages`` Struct).

        Raises:
            StopAsyncIteration: the stream ended (after ``Completed`` or ``WorkflowCompleted``).
            HubStreamError: the stream ended with an ``error`` or could not be resumed.
            HubConnectionError: no connection, and none will come.
        """
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

    async def start(self) -> HubStream[R]:
        """Send the request (once) and wait until the hub has acknowledged it.

        Returns:
            This stream.

        Raises:
            HubStreamError: the hub rejected it (for example ``duplicate_id``,
                ``too_many_completions``, ``shutting_down``, ``unknown_channel``).
            HubConnectionError: no connection, and none will come.
            InvalidArgumentError: another open stream of this client watches the same channel
                (or one that carries the same events).
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
            await client._ensure_sent_quietly(self, conn)  # if lost, the next connection sends it
        await self._ack_event.wait()
        if self._error is not None and not self._acked:
            raise self._error
        return self

    async def collect(self) -> R:
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
        for other subscribers, or for the hub's grace period; use ``HubClient.cancel``)."""
        if self._done and self._exhausted:
            return
        was_done = self._done
        self._finish()
        self._exhausted = True
        if not was_done and self._started:
            await self._client._leave(self.channel)

    async def __aenter__(self) -> HubStream[R]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # The connection's side (called by the client's reader task; never awaits).

    def _mark_sent(self, now: float) -> None:
        """The request or a subscribe went out at ``now`` (``perf_counter()``, s)."""
        self._sends += 1
        state = self._state
        if isinstance(state, (CompletionState, WorkflowState)) and state.sent_at is None:
            state.sent_at = now

    def _cursor(self) -> dict[str, Any] | None:
        """``since`` for this channel's cursor (``{"seq": n, "epoch": "..."}``), or None."""
        cursor = self._state.cursor()
        return None if cursor is None else {"seq": cursor.seq, "epoch": cursor.epoch}

    def _on_answer(self, kind: str, message: Any, conn: Connection) -> None:
        """The hub's answer to this stream's request: ``kind`` is ``start``, ``restart`` (the
        request sent again after a lost acknowledgement) or ``subscribe``."""
        if self._done:
            return
        if isinstance(message, Subscribed):
            self._acked = True
            self._state.acknowledge(message.epochs.get(self.channel))
            self._ack_event.set()
        elif isinstance(message, ErrorMessage):
            error = message.error
            if kind == "restart" and error.code == "duplicate_id":
                # The first request did reach the hub before the connection dropped: the
                # completion (or run) exists, so watch it instead of starting it.
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

    def _on_message(self, message: Any) -> None:
        """One event of this stream's channel."""
        if self._done:
            return
        try:
            events = self._state.apply(message, time.perf_counter())
        except ResumeError as exc:
            self._fail(self._error_of(exc.info()))
            return
        failure = self._state.failure
        for event in events:
            if event is failure and failure is not None:
                self._fail(self._error_of(failure.error, failure.usage))
                return
            self._queue.put_nowait(event)
            if isinstance(event, (Completed, WorkflowCompleted)) and self._state.ended:
                self._finish()
                return

    def _error_of(self, error: ErrorInfo, usage: UsageInfo | None = None) -> HubStreamError:
        """The :class:`~hub.client.errors.HubStreamError` this stream raises for ``error``."""
        result = self._state.result
        return HubStreamError(error, self.id if isinstance(result, CompletionResult) else None, usage=usage,
                              result=result)

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


class WorkflowStream(HubStream[WorkflowResult]):
    """The events of one workflow run (``workflow:<id>``), as an async iterator: a
    :class:`HubStream` whose :attr:`result` is a :class:`~hub.client.results.WorkflowResult`.

    Created by ``HubClient.workflow`` (which sends ``create_workflow``) or
    ``HubClient.subscribe_workflow``. Yields ``TokenCreated``, ``AgentStarted``,
    ``AgentProgress``, ``FunctionExecuted``, ``AgentCompleted``, ``WorkflowTransition`` and
    ``WorkflowSnapshot`` (after a resume the history could not cover; :mod:`hub.client.state`),
    then ``WorkflowCompleted`` as the last event; a terminal ``error`` raises
    :class:`~hub.client.errors.HubStreamError` (``workflow_id`` set) instead. Reconnects are
    resumed with ``since`` like a completion's. :attr:`result` is updated as events arrive,
    which may be ahead of the event the caller is iterating.

    Attributes:
        id: the workflow run's id.
        channel: ``workflow:<id>``.
        result: the :class:`~hub.client.results.WorkflowResult` so far.
    """

    def __init__(self, client: HubClient, workflow_id: str, request: dict[str, Any] | None) -> None:
        super().__init__(client, WorkflowState(f"workflow:{workflow_id}", workflow_id), workflow_id, request)

    def _error_of(self, error: ErrorInfo, usage: UsageInfo | None = None) -> HubStreamError:
        return HubStreamError(error, None, usage=usage, result=self.result, workflow_id=self.id)
