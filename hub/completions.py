"""Completions: one upstream stream turned into numbered hub events on ``completion:<id>``.

Lifecycle of a :class:`CompletionRun` (the rules live here, in the manner of h11's
``_state.py``)::

    created ──start()──▶ streaming ──StreamEnd──▶ completed
                            │ ├──StreamFailed / ProviderError──▶ failed
                            │ └──cancel() / grace period over──▶ cancelled
    created ──start() with an unknown model / unconfigured provider──▶ failed

- Exactly one terminal message (``completed`` or ``error``) is published, and nothing after it.
- ``seq`` starts at 1 and has no gap; every subscriber receives the same sequence.
- A completion belongs to the hub, not to the connection that asked for it (DESIGN.md
  decision 6): when its last subscriber leaves it runs on for ``grace_period_s``, then is
  cancelled upstream. After it ends, its channel (and history) stays for ``retention_s``.
- Each event is encoded once (protocol.messages.encode) and the bytes fanned out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from typing import Any

from hub.config import HubConfig
from hub.multiplexer import Channel, EncodedEvent, StreamMultiplexer, Subscriber
from hub.providers import ProviderClient, UpstreamRequest, build_request
from protocol.buffer import StreamBuffer
from protocol.errors import HubError, ProtocolError, ProviderError, redact
from protocol.events import (
    Citation,
    ReasoningDelta,
    ReasoningDone,
    RefusalDelta,
    StreamEnd,
    StreamEvent,
    StreamFailed,
    TextDelta,
    ToolCall,
    Usage,
)
from protocol.messages import (
    CitationMessage,
    Completed,
    Completion,
    ContentChunk,
    ErrorInfo,
    ErrorMessage,
    RefusalChunk,
    ThinkingStatus,
    ToolCallMessage,
    UsageInfo,
    encode,
)

__all__ = ["CompletionRun", "CompletionManager"]

log = logging.getLogger("cbhub.completions")

_FIRST_OUTPUT = (TextDelta, ReasoningDelta, RefusalDelta, ToolCall)


class CompletionRun:
    """One completion: runs its upstream request and publishes its events.

    Attributes:
        id: the completion id.
        channel: its ``completion:<id>`` channel.
        state: ``created``, ``streaming``, ``completed``, ``failed`` or ``cancelled``.
        provider, model: what serves it (filled once the model is resolved).
        ttft_ms: time from the upstream request to the first output delta, in ms.
    """

    def __init__(self, manager: CompletionManager, completion_id: str, request: Completion, channel: Channel) -> None:
        self.manager = manager
        self.id = completion_id
        self.request = request
        self.channel = channel
        self.state = "created"
        self.provider = ""
        self.model = request.model
        self.ttft_ms: float | None = None
        self._seq = 0
        self._reasoning_open = False
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._cancel_error: HubError | None = None
        config = manager.config
        self._buffer = StreamBuffer(
            config.content_chunk_size, config.flush_interval_ms, enabled=request.coalesce, release_first=True
        )
        self._loop = asyncio.get_running_loop()

    @property
    def finished(self) -> bool:
        """True once the terminal message was published."""
        return self.state in ("completed", "failed", "cancelled")

    # Lifecycle.

    def start(self) -> None:
        """Resolve the model and start streaming; an error is published at once if the
        model is unknown, its provider is not configured, or the request cannot be
        translated for it."""
        try:
            upstream = build_request(self.request, self.manager.config)
        except HubError as exc:
            self._fail(exc)
            return
        except Exception as exc:  # a bug of ours: the completion fails, the connection lives
            log.exception("building the upstream request of %s failed", self.id)
            self._fail(HubError(f"internal error: {type(exc).__name__}", "internal_error"))
            return
        self.provider = upstream.provider
        self.model = upstream.model
        self.state = "streaming"
        self._task = asyncio.create_task(self._run(upstream), name=f"completion:{self.id}")
        self._task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never enters _run, so its except clauses
        # never run: the terminal error is published here instead.
        if not self.finished:
            self._fail(self._cancel_error or HubError("the completion was cancelled", "cancelled"), state="cancelled")

    def cancel(self, error: HubError | None = None) -> None:
        """Abort the upstream request now and publish an ``error`` (code ``cancelled``)."""
        if self.finished:
            return
        self._cancel_error = error or HubError("the completion was cancelled", "cancelled")
        if self._task is not None:
            self._task.cancel()
        else:
            self._fail(self._cancel_error, state="cancelled")

    async def wait(self) -> None:
        """Wait until the run's task has ended (for shutdown and tests)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def on_idle(self) -> None:
        """The last subscriber left: cancel after the grace period unless one returns."""
        if self.finished or self._grace is not None:
            return
        grace = self.manager.config.grace_period_s
        self._grace = self._loop.call_later(grace, self._grace_over)

    def on_subscribe(self) -> None:
        """A subscriber arrived (or the run ended): the grace period, if running, is called off."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def _grace_over(self) -> None:
        self._grace = None
        if not self.channel.subscribers:
            self.cancel(HubError(
                f"no subscriber for {self.manager.config.grace_period_s:g} s; cancelled upstream", "cancelled"
            ))

    # The stream.

    async def _run(self, upstream: UpstreamRequest) -> None:
        loop = self._loop
        started = loop.time()
        push = self._buffer.push
        flush = self.manager.multiplexer.flush
        try:
            async with contextlib.aclosing(self.manager.provider_client.stream(upstream)) as stream:
                async for events in stream:
                    now = loop.time()
                    for event in events:
                        if self.ttft_ms is None and event.__class__ in _FIRST_OUTPUT:
                            self.ttft_ms = round((now - started) * 1000.0, 3)
                        if getattr(event, "choice", 0):
                            continue  # the hub's protocol carries choice 0 only
                        self._emit(push(event, now * 1000.0))
                    self._arm_timer()
                    flush()  # write this read's events now rather than one loop iteration later
        except asyncio.CancelledError:
            self._fail(self._cancel_error or HubError("the completion was cancelled", "cancelled"), state="cancelled")
        except ProviderError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug of ours must still end the stream for its clients
            log.exception("completion %s failed", self.id)
            self._fail(HubError(f"internal error: {type(exc).__name__}", "internal_error"))
        else:
            if not self.finished:  # the normalizer always ends with a terminal event
                self._fail(HubError("the provider stream ended without a terminal event", "internal_error"))
        finally:
            self._disarm_timer()

    def _arm_timer(self) -> None:
        deadline = self._buffer.deadline_ms
        if deadline is None:
            self._disarm_timer()
        elif self._timer is None:
            self._timer = self._loop.call_at(deadline / 1000.0, self._on_timer)

    def _disarm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.finished:
            return
        self._emit(self._buffer.poll(self._loop.time() * 1000.0))
        self._arm_timer()
        self.manager.multiplexer.flush()

    # Turning events into numbered, encoded messages.

    def _emit(self, events: list[StreamEvent]) -> None:
        for event in events:
            if self.finished:
                return
            cls = event.__class__
            if cls is TextDelta:
                self._publish(ContentChunk(self.id, self._next_seq(), event.text))
            elif cls is ReasoningDelta:
                self._reasoning_open = True
                self._publish(ThinkingStatus(self.id, self._next_seq(), "thinking", event.text,
                                             event.signature, event.redacted))
            elif cls is ReasoningDone:
                self._end_reasoning()
            elif cls is RefusalDelta:
                self._publish(RefusalChunk(self.id, self._next_seq(), event.text))
            elif cls is ToolCall:
                self._end_reasoning()
                self._publish(ToolCallMessage(self.id, self._next_seq(), event.id, event.name, event.arguments,
                                              event.arguments_valid, event.server, event.signature))
            elif cls is Citation:
                self._publish(CitationMessage(self.id, self._next_seq(), event.citation))
            elif cls is StreamEnd:
                self._end_reasoning()
                self.state = "completed"
                self._publish(Completed(
                    self.id,
                    self._next_seq(),
                    event.finish_reason,
                    self.provider,
                    event.model or self.model,
                    _usage_info(event.usage),
                    self.ttft_ms,
                ))
                self.manager.finished(self)
            elif cls is StreamFailed:
                self._fail(ProviderError(event.message, event.code, retryable=event.retryable, status=event.status),
                           usage=event.usage)

    def _end_reasoning(self) -> None:
        if self._reasoning_open:
            self._reasoning_open = False
            self._publish(ThinkingStatus(self.id, self._next_seq(), "done"))

    def _fail(self, error: HubError, state: str = "failed", usage: Usage | None = None) -> None:
        if self.finished:
            return
        self._emit(self._buffer.flush())  # what was received before the failure still goes out
        if self.finished:
            return
        self.state = state
        message = redact(error.message, self.manager.config.secrets())
        self._publish(ErrorMessage(
            ErrorInfo(error.code, message, error.retryable, error.status), self.id, self._next_seq(), _usage_info(usage)
        ))
        self.manager.finished(self)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _publish(self, message: Any) -> None:
        self.manager.multiplexer.publish(self.channel, EncodedEvent(encode(message), message))


def _usage_info(usage: Usage | None) -> UsageInfo | None:
    if usage is None:
        return None
    return UsageInfo(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.reasoning_tokens)


class CompletionManager:
    """Creates, finds and retires completions.

    Args:
        config: timeouts, buffer sizes, grace and retention periods.
        multiplexer: where completion channels are opened.
        provider_client: the upstream client shared by all completions.
    """

    def __init__(self, config: HubConfig, multiplexer: StreamMultiplexer, provider_client: ProviderClient) -> None:
        self.config = config
        self.multiplexer = multiplexer
        self.provider_client = provider_client
        self.runs: dict[str, CompletionRun] = {}
        self._counter = itertools.count(1)
        self._prefix = os.urandom(4).hex()
        self._retirements: dict[str, asyncio.TimerHandle] = {}
        self.closing = False

    def create(self, request: Completion) -> CompletionRun:
        """Open ``completion:<id>`` for a new completion (not started yet: subscribe the
        requester, send its acknowledgement, then call :meth:`CompletionRun.start`).

        Raises:
            ProtocolError: ``duplicate_id`` when a completion with that id is running or retained.
            HubError: ``shutting_down`` once :meth:`close` has begun.
        """
        if self.closing:
            raise HubError("the hub is shutting down; reconnect and retry", "shutting_down", retryable=True)
        completion_id = request.id or f"comp-{self._prefix}-{next(self._counter)}"
        if completion_id in self.runs:
            raise ProtocolError(f"completion id {completion_id!r} is already in use", "duplicate_id")
        run: CompletionRun
        channel = self.multiplexer.open_channel(
            f"completion:{completion_id}", self.config.history_max_events, on_idle=lambda: run.on_idle()
        )
        run = CompletionRun(self, completion_id, request, channel)
        self.runs[completion_id] = run
        return run

    def get(self, completion_id: str) -> CompletionRun | None:
        """The completion with that id, running or retained, or None."""
        return self.runs.get(completion_id)

    def subscribe(self, subscriber: Subscriber, run: CompletionRun) -> None:
        """Subscribe to a completion's channel (replaying its history)."""
        run.on_subscribe()
        self.multiplexer.subscribe(subscriber, run.channel.name)

    def finished(self, run: CompletionRun) -> None:
        """Called once by a run when its terminal message is out: retain, then forget it."""
        run.on_subscribe()  # calls off the grace period: nothing is left to cancel
        loop = asyncio.get_running_loop()
        self._retirements[run.id] = loop.call_later(self.config.retention_s, self._retire, run.id)

    def _retire(self, completion_id: str) -> None:
        self._retirements.pop(completion_id, None)
        run = self.runs.pop(completion_id, None)
        if run is not None:
            self.multiplexer.close_channel(run.channel.name)

    async def close(self) -> None:
        """Cancel every running completion and wait for their tasks (hub shutdown)."""
        self.closing = True
        runs = list(self.runs.values())
        for run in runs:
            run.cancel(HubError("the hub is shutting down", "shutting_down", retryable=True))
        await asyncio.gather(*(run.wait() for run in runs))
        for handle in self._retirements.values():
            handle.cancel()
        self._retirements.clear()
