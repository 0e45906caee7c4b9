"""Completions: one upstream stream turned into numbered hub events on ``completion:<id>``.

Lifecycle of a :class:`CompletionRun`: the states and the transition table are
protocol/lifecycle.py's (``CompletionState``, ``CompletionEvent``); the run moves only
through them::

    created ──start()──▶ streaming ──StreamEnd──▶ completed
                            │ ├──StreamFailed / ProviderError──▶ failed
                            │ └──cancel() / grace period over──▶ cancelled
    created ──start() with an unknown model / unconfigured provider──▶ failed

- Exactly one terminal message (``completed`` or ``error``) is published, and nothing after it.
- ``seq`` starts at 1 and has no gap; every subscriber receives the same sequence.
- A completion belongs to the hub, not to the connection that asked for it (docs/ARCHITECTURE.md
  decision 6): when its last subscriber leaves it runs on for ``grace_period_s``, then is
  cancelled upstream. After it ends, its channel (and history) stays for ``retention_s``.
- Each event is encoded once (protocol.messages.encode) and the bytes fanned out.
- With ``n`` above 1 (OpenAI) every choice is published, each message with its ``choice``;
  reasoning, redaction, snapshot state and finish reasons are kept per choice
  (docs/PROTOCOL.md "Choices").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import msgspec

from hub.broker import Broker, Subscriber
from hub.channel import Channel, HistoryBounds
from hub.config import HubConfig
from hub.providers import ProviderClient, UpstreamRequest
from hub.ratelimit import Ticket
from hub.resilience import BreakerRegistry, CircuitBreaker, backoff_delay_s
from hub.routing import Router, Target
from protocol.buffer import StreamBuffer
from protocol.errors import ErrorCode, HubError, ProtocolError, ProviderError, redact
from protocol.events import (
    ChoiceFinished,
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
from protocol.lifecycle import CompletionEvent, CompletionState, Lifecycle
from protocol.messages import (
    Attempt,
    ChoiceSnapshot,
    CircuitState,
    CitationMessage,
    Completed,
    Completion,
    ContentChunk,
    Cursor,
    ErrorInfo,
    ErrorMessage,
    RefusalChunk,
    Snapshot,
    ThinkingStatus,
    ToolCallMessage,
    UsageInfo,
)
from protocol.redaction import Redactor, StreamRedactor, compile_redactor, redact_messages, redact_value

__all__ = ["CompletionRun", "CompletionManager", "retry_delay_s"]

log = logging.getLogger("cbhub.completions")

_FIRST_OUTPUT = (TextDelta, ReasoningDelta, RefusalDelta, ToolCall)


class GracePeriod:
    """The grace period of a run whose channel lost its last subscriber (docs/ARCHITECTURE.md
    decision 6): :meth:`start` arms a timer of ``seconds``; when it fires and the channel still
    has no subscriber, ``cancel`` is called with a ``cancelled`` error; :meth:`stop` (a
    subscriber came back, or the run ended) disarms it.

    Args:
        channel: the run's channel (its ``subscribers`` are looked at when the timer fires).
        seconds: the grace period, in s.
        cancel: ends the run with the given error.
        what: ``cancelled upstream`` (a completion) or similar, for the message.
    """

    __slots__ = ("_channel", "_seconds", "_cancel", "_what", "_timer")

    def __init__(self, channel: Channel, seconds: float, cancel: Callable[[HubError], None], what: str) -> None:
        self._channel = channel
        self._seconds = seconds
        self._cancel = cancel
        self._what = what
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Arm the timer (no-op when armed)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._seconds, self._over)

    def stop(self) -> None:
        """Disarm the timer (no-op when not armed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _over(self) -> None:
        self._timer = None
        if not self._channel.subscribers:
            self._cancel(HubError(f"no subscriber for {self._seconds:g} s; {self._what}", ErrorCode.CANCELLED))


class CompletionRun:
    """One completion: runs its upstream request and publishes its events.

    Attributes:
        id: the completion id.
        channel: its ``completion:<id>`` channel.
        lifecycle: its :class:`~protocol.lifecycle.Lifecycle` (``state`` reads it).
        finished: True once the terminal message was published.
        provider, model: what serves it (filled once the model is resolved).
        owner: the subject that started it (``anonymous`` without auth).
        ticket: its rate-limit ticket, released when it ends (None: not limited).
        used_tokens: prompt + completion tokens of its usage, once reported.
        ttft_ms: time from the upstream request to the first output delta, in ms.
    """

    def __init__(self, manager: CompletionManager, completion_id: str, request: Completion, channel: Channel,
                 owner: str = "anonymous", ticket: Ticket | None = None) -> None:
        self.manager = manager
        self.owner = owner
        self.ticket = ticket
        self.used_tokens: int | None = None
        self.id = completion_id
        self.request = request
        self.channel = channel
        self.lifecycle = Lifecycle(CompletionState.CREATED)
        self.finished = False
        self.provider = ""
        self.model = request.model
        self.ttft_ms: float | None = None
        self._choices = request.n or 1  # choices asked for: events of any other choice are dropped
        self._reasoning_open: set[int] = set()  # the choices whose reasoning run is open
        self._finish_reasons: dict[int, str] = {}  # choice → finish reason, as each reports it (n > 1)
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._grace = GracePeriod(channel, manager.config.grace_period_s, self.cancel, "cancelled upstream")
        self._cancel_error: HubError | None = None
        self._text: list[str] = []  # the state so far, for snapshots
        self._reasoning: list[str] = []
        self._tool_calls: list[ToolCallMessage] = []
        self._refusal: list[str] = []
        self._citations: list[dict[str, Any]] = []
        self._others: dict[int, _ChoiceOutput] = {}  # the state of choices above 0 (n > 1)
        self._state_seq = 0
        self.state_bytes = 0
        self._attempts: list[Attempt] = []  # attempts that ended, in order
        self._current: tuple[str, str] | None = None  # (provider, model) of the attempt under way
        self._started = 0.0
        config = manager.config
        self._buffer_settings: dict[str, Any] = {
            "chunk_size": config.content_chunk_size, "flush_interval_ms": config.flush_interval_ms,
            "enabled": request.coalesce, "release_first": True,
        }
        self._buffer = StreamBuffer(**self._buffer_settings)
        self._loop = asyncio.get_running_loop()
        # Redaction (docs/PROTOCOL.md "Redaction"): None when no rule is on, so the hot path
        # is untouched; else one StreamRedactor per streamed field of each choice (choice 0's
        # in _streams, the others' made as their first text arrives).
        self._redactor = redactor_of(config)
        self._streams: _FieldRedactors | None = None
        self._choice_streams: dict[int, _FieldRedactors] = {}
        if self._redactor is not None:
            self._streams = _FieldRedactors(self._redactor)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task streaming this completion (None before :meth:`start`, or when it failed
        at once)."""
        return self._task

    @property
    def state(self) -> CompletionState:
        """``created``, ``streaming``, ``completed``, ``failed`` or ``cancelled``."""
        return self.lifecycle.state

    def _move(self, event: CompletionEvent) -> None:
        """Advance the lifecycle (raises IllegalTransition for a move the table lacks)."""
        self.lifecycle.advance(event)
        self.finished = self.lifecycle.finished

    # Lifecycle.

    def start(self) -> None:
        """Resolve the model (a named model's deployments, then the fallbacks: hub/routing.py)
        and start streaming. An error is published at once when no candidate can be called:
        every model is unknown, its provider is not configured, every deployment is over its
        limit, or the request cannot be translated for any of them."""
        if self._redactor is not None and self.manager.config.redaction_requests:
            # Prompts are masked before anything is sent upstream (redaction.requests).
            self.request = msgspec.structs.replace(
                self.request, messages=redact_messages(self.request.messages, self._redactor))
        try:
            candidates = self.manager.router.targets(self.request)
        except Exception as exc:  # a bug of ours: the completion fails, the connection lives
            log.exception("building the upstream requests of %s failed", self.id)
            candidates = [Target(self.request.model,
                                 HubError(f"internal error: {type(exc).__name__}", ErrorCode.INTERNAL_ERROR))]
        first = next((t.upstream for t in candidates if isinstance(t.upstream, UpstreamRequest)), None)
        if first is None:
            failure = candidates[0].upstream
            assert isinstance(failure, HubError)
            self._attempts = [_not_tried(target) for target in candidates]
            self._fail(failure)
            return
        self.provider = first.provider
        self.model = first.model
        self._move(CompletionEvent.START)
        self._task = asyncio.create_task(self._run(candidates), name=f"completion:{self.id}")
        self._task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never enters _run, so its except clauses
        # never run: the terminal error is published here instead.
        if not self.finished:
            self._fail(self._cancel_error or _cancelled(), cancelled=True)

    def cancel(self, error: HubError | None = None) -> None:
        """Abort the upstream request now and publish an ``error`` (code ``cancelled``)."""
        if self.finished:
            return
        self._cancel_error = error or _cancelled()
        if self._task is not None:
            self._task.cancel()
        else:
            self._fail(self._cancel_error, cancelled=True)

    def control(self, command: str, argument: Any = None) -> None:
        """A control command from the broker: ``cancel`` (``argument``: the HubError to end
        with, or None for ``cancelled``)."""
        if command == "cancel":
            self.cancel(argument)

    async def wait(self) -> None:
        """Wait until the run's task has ended (for shutdown and tests)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def on_idle(self) -> None:
        """The last subscriber left: cancel after the grace period unless one returns."""
        if not self.finished:
            self._grace.start()

    def on_subscribe(self) -> None:
        """A subscriber arrived (or the run ended): the grace period, if running, is called off."""
        self._grace.stop()

    # The stream.

    async def _run(self, candidates: list[Target]) -> None:
        """Try the candidates in order (hub/routing.py: a named model's deployments, then the
        fallbacks), each up to ``retry_max_attempts`` times, until one streams to its end or
        fails after content was forwarded (docs/PROTOCOL.md, "Retries and fallbacks").

        Circuit breakers count a failure of this request once per breaker (a deployment's
        own, or a provider endpoint's), however many retries repeat it: a breaker measures
        the provider across distinct requests, so one client's request that keeps failing
        cannot open it for everyone (docs/PROTOCOL.md "Retries and fallbacks"). Failures the
        request causes itself (400, 422) never count, nor a deployment skipped at its limit."""
        manager = self.manager
        config = manager.config
        self._started = self._loop.time()
        error: HubError | None = None
        counted: set[CircuitBreaker] = set()  # breakers this request has already failed once
        try:
            for candidate in candidates:
                target = candidate.upstream
                if isinstance(target, HubError):
                    self._attempts.append(_not_tried(candidate))
                    error = error or target
                    continue
                breaker = manager.breakers.get(*candidate.breaker)
                deployment = candidate.deployment
                for attempt in range(max(1, config.retry_max_attempts)):
                    if not breaker.allow(self._loop.time()):
                        self._attempts.append(Attempt(target.provider, target.model, ErrorCode.PROVIDER_UNAVAILABLE))
                        error = HubError(
                            f"{target.provider} at {candidate.breaker[1]} is failing; its circuit breaker is open",
                            ErrorCode.PROVIDER_UNAVAILABLE, retryable=True, status=503)
                        break
                    self.provider, self.model = target.provider, target.model
                    self._current = (target.provider, target.model)
                    if deployment is not None:
                        deployment.started(manager.router.clock())
                    try:
                        failure = await self._attempt(target)
                    finally:
                        if deployment is not None:
                            deployment.ended(manager.router.clock(), self.used_tokens)
                    if failure is None:  # served, or failed after content was forwarded
                        breaker.record(self._loop.time(), ok=self.state == "completed")
                        return
                    self._close_attempt(failure)
                    error = failure
                    # A half-open probe is always reported: that frees the probe.
                    first = breaker not in counted or breaker.state != CircuitBreaker.CLOSED
                    if _counts_against_provider(failure) and first:
                        counted.add(breaker)
                        breaker.record(self._loop.time(), ok=False)
                    if not _may_fail_over(failure):
                        self._fail(failure)  # the request itself is at fault: no retry, no fallback
                        return
                    if not failure.retryable or attempt + 1 >= config.retry_max_attempts:
                        break  # next candidate
                    await asyncio.sleep(retry_delay_s(failure, attempt, config))
            self._fail(error or HubError("no model could be tried", ErrorCode.INTERNAL_ERROR))
        except asyncio.CancelledError:
            self._fail(self._cancel_error or _cancelled(), cancelled=True)
        except Exception as exc:  # a bug of ours must still end the stream for its clients
            log.exception("completion %s failed", self.id)
            self._fail(HubError(f"internal error: {type(exc).__name__}", ErrorCode.INTERNAL_ERROR))
        finally:
            self._disarm_timer()

    async def _attempt(self, upstream: UpstreamRequest) -> ProviderError | None:
        """One upstream request. Returns None when the completion ended (completed, or an
        error after content was forwarded, both published), or the error when the request
        failed before anything was forwarded (nothing published: the caller may retry).

        Raises:
            asyncio.CancelledError: the completion was cancelled.
        """
        loop = self._loop
        flush = self.manager.broker.flush
        total_s = self.manager.config.total_timeout_s
        self._buffer = StreamBuffer(**self._buffer_settings)  # nothing of a failed attempt carries over
        if self._redactor is not None:
            self._streams = _FieldRedactors(self._redactor)  # nor text held back by redaction
            self._choice_streams = {}
        self._finish_reasons = {}
        choices = self._choices
        push = self._buffer.push
        try:
            async with asyncio.timeout(total_s if total_s > 0 else None):
                stream = self.manager.provider_client.stream(upstream, request_id=self.id)
                async with contextlib.aclosing(stream):
                    async for events in stream:
                        now = loop.time()
                        last = events[-1]
                        if self.channel.last_seq == 0 and type(last) is StreamFailed:
                            # Failed before anything reached a client: a retry can still serve it.
                            if not any(type(e) in _FIRST_OUTPUT for e in events):
                                return ProviderError(last.message, last.code, retryable=last.retryable,
                                                     status=last.status)
                        for event in events:
                            if self.ttft_ms is None and type(event) in _FIRST_OUTPUT:
                                self.ttft_ms = round((now - self._started) * 1000.0, 3)
                            if getattr(event, "choice", 0) >= choices:
                                continue  # a choice the request did not ask for (a server's own)
                            self._emit(push(event, now * 1000.0))
                        self._arm_timer()
                        flush()  # write this read's events now rather than one loop iteration later
        except TimeoutError:
            failure = ProviderError(f"{upstream.provider} did not finish within {total_s:g} s",
                                    ErrorCode.UPSTREAM_TIMEOUT, retryable=True)
        except ProviderError as exc:
            failure = exc
        else:
            if not self.finished:  # the normalizer always ends with a terminal event
                self._fail(HubError("the provider stream ended without a terminal event", ErrorCode.INTERNAL_ERROR))
            return None
        if self.channel.last_seq == 0:
            return failure
        self._fail(failure)  # content was forwarded: the client gets an error, never a silent cut
        return None

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
        self.manager.broker.flush()

    # Turning events into numbered, encoded messages.

    def _emit(self, events: list[StreamEvent]) -> None:
        """Publish the hub messages of normalized events (the channel numbers them)."""
        if self._streams is not None:
            self._emit_redacted(events, self._streams)
            return
        for event in events:
            if self.finished:
                return
            match event:
                case TextDelta():
                    self._publish(ContentChunk(self.id, 0, event.text, None, event.choice))
                case ReasoningDelta():
                    self._reasoning_open.add(event.choice)
                    self._publish(ThinkingStatus(self.id, 0, "thinking", event.text, event.signature, event.redacted,
                                                 event.choice))
                case RefusalDelta():
                    self._publish(RefusalChunk(self.id, 0, event.text, event.choice))
                case ToolCall():
                    self._end_reasoning(event.choice)
                    self._publish(ToolCallMessage(self.id, 0, event.id, event.name, event.arguments,
                                                  event.arguments_valid, event.server, event.signature, event.choice))
                case Citation():
                    self._publish(CitationMessage(self.id, 0, event.citation, event.choice))
                case _:
                    self._emit_end(event)

    def _emit_end(self, event: StreamEvent) -> None:
        """The events that end something: reasoning, or the stream (its terminal message)."""
        match event:
            case ReasoningDone():
                self._end_reasoning(event.choice)
            case ChoiceFinished():
                self._finish_reasons[event.choice] = event.reason
            case StreamEnd():
                for choice in sorted(self._reasoning_open):
                    self._end_reasoning(choice)
                self._move(CompletionEvent.FINISH)
                self._close_attempt(None)
                if event.usage is not None:
                    self.used_tokens = event.usage.prompt_tokens + event.usage.completion_tokens
                self._publish(Completed(self.id, 0, event.finish_reason, self.provider, event.model or self.model,
                                        _usage_info(event.usage), self.ttft_ms, self._attempts,
                                        self._every_finish_reason(event.finish_reason)))
                self.manager.finished(self)
            case StreamFailed():
                self._fail(ProviderError(event.message, event.code, retryable=event.retryable,
                                         status=event.status), usage=event.usage)

    def _every_finish_reason(self, first: str) -> list[str] | None:
        """``finishReasons`` of ``completed``: None for one choice; for ``n`` above 1 each
        choice's reason at its index (choice 0's is ``first``, the stream's own). A choice
        that never reported one ended with the stream: ``tool_calls`` when it called a tool,
        else ``stop`` (the rule of protocol/normalizers/openai.py's ``map_finish_reason``)."""
        if self._choices == 1:
            return None
        reasons = [first]
        for choice in range(1, self._choices):
            reason = self._finish_reasons.get(choice)
            if reason is None:
                other = self._others.get(choice)
                reason = "tool_calls" if other is not None and other.tool_calls else "stop"
            reasons.append(reason)
        return reasons

    def _end_reasoning(self, choice: int = 0) -> None:
        """Close ``choice``'s reasoning run, if open: its held text, then ``done``."""
        if choice in self._reasoning_open:
            self._reasoning_open.discard(choice)
            streams = self._redacting(choice)
            if streams is not None:
                held = streams.reasoning.flush()
                if held:
                    self._publish(ThinkingStatus(self.id, 0, "thinking", held, None, None, choice))
            self._publish(ThinkingStatus(self.id, 0, "done", "", None, None, choice))

    def _redacting(self, choice: int) -> _FieldRedactors | None:
        """``choice``'s redactors (made on first use), or None when redaction is off."""
        if self._streams is None or choice == 0:
            return self._streams
        streams = self._choice_streams.get(choice)
        if streams is None:
            streams = self._choice_streams[choice] = _FieldRedactors(self._streams.redactor)
        return streams

    def _emit_redacted(self, events: list[StreamEvent], first: _FieldRedactors) -> None:
        """:meth:`_emit` with redaction on: text goes through its choice's and field's
        StreamRedactor, which holds back what a later chunk could still turn into a match;
        held text is flushed before a tool call, a citation and the end of reasoning of the
        same choice, and before the terminal message, so the order is kept within each
        choice. Tool-call arguments are masked whole."""
        redactor = first.redactor
        for event in events:
            if self.finished:
                return
            choice = getattr(event, "choice", 0)
            streams = first if choice == 0 else self._redacting(choice)
            assert streams is not None
            match event:
                case TextDelta():
                    text = streams.content.feed(event.text)
                    if text:
                        self._publish(ContentChunk(self.id, 0, text, None, choice))
                case ReasoningDelta():
                    self._reasoning_open.add(choice)
                    text = streams.reasoning.feed(event.text)
                    if text or event.signature or event.redacted:
                        self._publish(ThinkingStatus(self.id, 0, "thinking", text, event.signature, event.redacted,
                                                     choice))
                case RefusalDelta():
                    text = streams.refusal.feed(event.text)
                    if text:
                        self._publish(RefusalChunk(self.id, 0, text, choice))
                case ToolCall():
                    self._flush_choice(choice, streams, end_reasoning=True)
                    self._publish(ToolCallMessage(self.id, 0, event.id, event.name,
                                                  redact_value(event.arguments, redactor), event.arguments_valid,
                                                  event.server, event.signature, choice))
                case Citation():
                    self._flush_choice(choice, streams, end_reasoning=False)
                    self._publish(CitationMessage(self.id, 0, event.citation, choice))
                case ReasoningDone() | ChoiceFinished():
                    self._flush_choice(choice, streams, end_reasoning=True)
                    self._emit_end(event)
                case _:
                    self._flush_held(end_reasoning=type(event) is not StreamFailed)
                    self._emit_end(event)

    def _flush_held(self, end_reasoning: bool = True) -> None:
        """Publish the text the redactors of every choice hold back; ``end_reasoning``:
        reasoning ends too (before the end of the stream, as without redaction)."""
        if self._streams is None:
            return
        self._flush_choice(0, self._streams, end_reasoning)
        for choice in sorted(self._choice_streams):
            self._flush_choice(choice, self._choice_streams[choice], end_reasoning)

    def _flush_choice(self, choice: int, streams: _FieldRedactors, end_reasoning: bool) -> None:
        """Publish the text ``choice``'s redactors hold back (:meth:`_flush_held`, one choice)."""
        if end_reasoning:
            self._end_reasoning(choice)
        else:
            text = streams.reasoning.flush()
            if text:
                self._publish(ThinkingStatus(self.id, 0, "thinking", text, None, None, choice))
        text = streams.content.flush()
        if text:
            self._publish(ContentChunk(self.id, 0, text, None, choice))
        text = streams.refusal.flush()
        if text:
            self._publish(RefusalChunk(self.id, 0, text, choice))

    def _fail(self, error: HubError, cancelled: bool = False, usage: Usage | None = None) -> None:
        if self.finished:
            return
        self._emit(self._buffer.flush())  # what was received before the failure still goes out
        if self._ended():
            return
        self._flush_held(end_reasoning=False)
        if self._ended():
            return
        self._move(CompletionEvent.CANCEL if cancelled else CompletionEvent.FAIL)
        if usage is not None:
            self.used_tokens = usage.prompt_tokens + usage.completion_tokens
        self._close_attempt(error)
        message = redact(error.message, self.manager.config.secrets())
        self._publish(ErrorMessage(
            ErrorInfo(error.code, message, error.retryable, error.status), self.id, 0, _usage_info(usage),
            self._attempts,
        ))
        self.manager.finished(self)

    def _ended(self) -> bool:
        """:attr:`finished`, read anew (a call may have ended the run)."""
        return self.finished

    def _close_attempt(self, error: HubError | None) -> None:
        """Record the attempt under way (if any) as ended, with ``error`` or as the one that served."""
        if self._current is not None:
            provider, model = self._current
            self._current = None
            self._attempts.append(Attempt(provider, model, error.code if error else None,
                                          error.status if error else None))

    def _publish(self, message: Any) -> None:
        payload_bytes = len(self.channel.publish(message).payload)
        # The state so far, for snapshots (docs/PROTOCOL.md "Resuming"); choices above 0
        # (n > 1) in their own _ChoiceOutput.
        match message:
            case ContentChunk():
                (self._other(message.choice).text if message.choice else self._text).append(message.content)
            case ThinkingStatus():
                if not message.content:
                    self._state_seq = message.seq
                    return
                (self._other(message.choice).reasoning if message.choice else self._reasoning).append(
                    message.content)
            case ToolCallMessage():
                (self._other(message.choice).tool_calls if message.choice else self._tool_calls).append(message)
            case RefusalChunk():
                (self._other(message.choice).refusal if message.choice else self._refusal).append(message.content)
            case CitationMessage():
                self._citations.append(message.citation)
            case Completed() | ErrorMessage():
                return
            case _:
                self._state_seq = message.seq
                return
        self._state_seq = message.seq
        # What the snapshot state holds, for the memory budget (hub/memory.py): about the
        # message's encoded size (its text, plus the list slot and object header).
        self.state_bytes += payload_bytes
        manager = self.manager
        manager.state_bytes += payload_bytes
        # The memory governor's trigger between its periodic checks (hub/memory.py): the
        # state and the history grew by at most what was published.
        manager.published_bytes += payload_bytes
        if manager.published_bytes > manager.growth_mark:
            manager.grew()

    def _other(self, choice: int) -> _ChoiceOutput:
        """The snapshot state of ``choice`` (above 0), made on first use."""
        state = self._others.get(choice)
        if state is None:
            state = self._others[choice] = _ChoiceOutput()
        return state

    def release(self) -> None:
        """Drop the snapshot state (the run was retired: nobody can subscribe any more). A
        session may still hold the run object for its per-connection count; the text must
        not live on with it."""
        self._text = []
        self._reasoning = []
        self._tool_calls = []
        self._refusal = []
        self._citations = []
        self._others = {}
        self.state_bytes = 0

    def snapshot(self) -> Snapshot:
        """The state after every non-terminal event published so far (choices above 0 in
        ``choices``, in index order)."""
        choices = [ChoiceSnapshot(choice, "".join(state.text), "".join(state.reasoning), list(state.tool_calls),
                                  "".join(state.refusal))
                   for choice, state in sorted(self._others.items())]
        return Snapshot(self.id, self.channel.name, self.channel.epoch, self._state_seq, "".join(self._text),
                        "".join(self._reasoning), list(self._tool_calls), "".join(self._refusal),
                        list(self._citations), choices)


class _ChoiceOutput:
    """What one choice above 0 has published so far (``n`` above 1), for snapshots."""

    __slots__ = ("text", "reasoning", "tool_calls", "refusal")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[ToolCallMessage] = []
        self.refusal: list[str] = []


class _FieldRedactors:
    """The redactor of a completion and one StreamRedactor per streamed field."""

    __slots__ = ("redactor", "content", "reasoning", "refusal")

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.content: StreamRedactor = redactor.stream()
        self.reasoning: StreamRedactor = redactor.stream()
        self.refusal: StreamRedactor = redactor.stream()


def redactor_of(config: HubConfig) -> Redactor | None:
    """The configured :class:`~protocol.redaction.Redactor` (compiled once per configuration),
    or None when no redaction rule is on."""
    if not config.redaction_builtins and not config.redaction_rules:
        return None
    return compile_redactor(config.redaction_builtins, config.redaction_rules, config.redaction_max_match_chars)


def retry_delay_s(failure: HubError, attempt: int, config: HubConfig) -> float:
    """Seconds to wait before retry ``attempt`` (0 = the first retry): the provider's own
    ``retry-after`` / ``retry-after-ms`` when it sent one (already capped at
    ``retry_after_max_s``), else exponential backoff with full jitter."""
    asked = getattr(failure, "retry_after_s", None)
    if asked is not None:
        return float(asked)
    return backoff_delay_s(attempt, config.retry_base_delay_ms, config.retry_max_delay_ms)


def _cancelled() -> HubError:
    """The error a cancelled completion ends with when no other reason was given."""
    return HubError("the completion was cancelled", ErrorCode.CANCELLED)


def _provider_of(model: str) -> str:
    """The provider prefix of a model name (``openai/gpt-4o`` → ``openai``), or ""."""
    return model.partition("/")[0] if "/" in model else ""


def _not_tried(target: Target) -> Attempt:
    """The attempt record of a candidate that could not be tried (its ``upstream`` is the
    error): a deployment names its provider kind and upstream model, a plain name its
    ``provider/`` prefix and the name."""
    assert isinstance(target.upstream, HubError)
    if target.deployment is not None:
        deployment = target.deployment.deployment
        return Attempt(deployment.provider, deployment.model, target.upstream.code)
    return Attempt(_provider_of(target.name), target.name, target.upstream.code)


def _may_fail_over(error: HubError) -> bool:
    """Whether another attempt (a retry or the next fallback) may serve the request after
    ``error``: yes for the provider's and the network's faults, no when the request itself
    was refused (400, 422, auth: every provider would refuse it, or the operator must act)."""
    return error.retryable or error.code in (ErrorCode.MODEL_NOT_FOUND, ErrorCode.INVALID_UPSTREAM_RESPONSE,
                                             ErrorCode.PROVIDER_NOT_CONFIGURED, ErrorCode.PROVIDER_UNAVAILABLE)


def _counts_against_provider(error: HubError) -> bool:
    """Whether ``error`` is a failure of the provider for its circuit breaker."""
    return error.retryable or error.code == ErrorCode.INVALID_UPSTREAM_RESPONSE


def _usage_info(usage: Usage | None) -> UsageInfo | None:
    if usage is None:
        return None
    return UsageInfo(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.reasoning_tokens)


_SYSTEM_HISTORY = 100  # system-channel events kept for late subscribers


class CompletionManager:
    """Creates, finds and retires completions.

    Args:
        config: timeouts, buffer sizes, grace and retention periods, retries, breakers.
        broker: where completion channels (and the ``system`` channel) are opened.
        provider_client: the upstream client shared by all completions.

    Attributes:
        breakers: the circuit breakers of every provider endpoint; their state changes are
            published as ``circuit_state`` on the ``system`` channel.
    """

    def __init__(self, config: HubConfig, broker: Broker, provider_client: ProviderClient) -> None:
        self.config = config
        self.broker = broker
        self.provider_client = provider_client
        self.system = broker.channel("system") or broker.open_channel("system", HistoryBounds(_SYSTEM_HISTORY))
        self.breakers = BreakerRegistry(
            {"failure_rate": config.breaker_failure_rate, "window_s": config.breaker_window_s,
             "min_requests": config.breaker_min_requests, "cooldown_s": config.breaker_cooldown_s,
             "half_open_probes": config.breaker_half_open_probes},
            on_change=self._circuit_changed,
        )
        # Named models and the choice among their deployments (keys read from the environment now).
        self.router = Router(config)
        self.runs: dict[str, CompletionRun] = {}
        self._retirements: dict[str, asyncio.TimerHandle] = {}  # in the order the runs finished
        self.closing = False
        self.state_bytes = 0  # what every run's snapshot state holds (CompletionRun.state_bytes)
        self.published_bytes = 0  # payload bytes of content-like events published since start
        self.growth_mark = 1 << 62  # published_bytes at which to call the growth watcher
        self._growth_step = 0
        self._on_growth: Callable[[], None] | None = None

    def watch_growth(self, every_bytes: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` soon (from the event loop, never inside a publish) each time the
        completions have published ``every_bytes`` more payload bytes of text, reasoning,
        tool calls and citations: what their histories and snapshot states can have grown by.
        The memory governor's trigger between its periodic checks: an addition and a
        comparison per such event."""
        self._growth_step = max(1, every_bytes)
        self._on_growth = callback
        self.growth_mark = self.published_bytes + self._growth_step

    def grew(self) -> None:
        """Past the growth mark: set the next one and call the watcher soon."""
        self.growth_mark = self.published_bytes + self._growth_step
        if self._on_growth is not None:
            asyncio.get_running_loop().call_soon(self._on_growth)

    def _circuit_changed(self, provider: str, base_url: str, breaker: CircuitBreaker, previous: str) -> None:
        rate, total = breaker.stats(asyncio.get_running_loop().time())
        log.warning("circuit of %s at %s: %s -> %s", provider, base_url, previous, breaker.state)
        self.system.publish(CircuitState(0, provider, base_url, breaker.state, previous,
                                         round(rate, 3) if rate is not None else None, total or None))

    def create(self, request: Completion, owner: str = "anonymous", ticket: Ticket | None = None) -> CompletionRun:
        """Open ``completion:<id>`` for a new completion (not started yet: subscribe the
        requester, send its acknowledgement, then call :meth:`CompletionRun.start`).

        Args:
            owner: the subject that asks for it.
            ticket: its rate-limit ticket, released (with the tokens used) when it ends.

        Raises:
            ProtocolError: ``duplicate_id`` when a completion with that id is running or retained.
            HubError: ``shutting_down`` once :meth:`close` has begun.
        """
        if self.closing:
            raise HubError("the hub is shutting down; reconnect and retry", ErrorCode.SHUTTING_DOWN, retryable=True)
        # 96 random bits: an id the hub chose cannot be guessed from another one.
        completion_id = request.id or f"comp-{secrets.token_hex(12)}"
        if completion_id in self.runs:
            raise ProtocolError(f"completion id {completion_id!r} is already in use", ErrorCode.DUPLICATE_ID)
        run: CompletionRun
        channel = self.open_channel(f"completion:{completion_id}", on_idle=lambda: run.on_idle(),
                                    on_subscribe=lambda: run.on_subscribe(), snapshot=lambda: run.snapshot(),
                                    control=lambda command, argument: run.control(command, argument))
        run = CompletionRun(self, completion_id, request, channel, owner, ticket)
        self.runs[completion_id] = run
        return run

    def history_bounds(self) -> HistoryBounds:
        """The configured history bounds of a stream channel (completion, workflow, agent):
        events, bytes and age."""
        config = self.config
        return HistoryBounds(config.history_max_events, config.completion_max_buffered_bytes,
                             config.history_max_age_s or None)

    def open_channel(self, name: str, on_idle: Callable[[], None] | None = None, **hooks: Any) -> Channel:
        """Open a stream channel (completion, workflow, agent) with the configured history
        bounds; ``hooks`` are the broker's ``on_subscribe``, ``snapshot`` and ``control``."""
        return self.broker.open_channel(name, self.history_bounds(), on_idle=on_idle, **hooks)

    def running_count(self) -> int:
        """Completions not finished yet."""
        return sum(1 for run in self.runs.values() if not run.finished)

    def get(self, completion_id: str) -> CompletionRun | None:
        """The completion with that id, running or retained, or None."""
        return self.runs.get(completion_id)

    def subscribe(self, subscriber: Subscriber, run: CompletionRun, since: Cursor | None = None) -> bool:
        """Subscribe to a completion's channel and bring the subscriber up to date
        (:meth:`hub.broker.Broker.subscribe`). Returns ``recovered``."""
        return self.broker.subscribe(subscriber, run.channel.name, since)

    def finished(self, run: CompletionRun) -> None:
        """Called once by a run when its terminal message is out: release its rate-limit
        ticket, retain it, then forget it."""
        run.on_subscribe()  # calls off the grace period: nothing is left to cancel
        if run.ticket is not None:
            run.ticket.release(run.used_tokens)
        loop = asyncio.get_running_loop()
        self._retirements[run.id] = loop.call_later(self.config.retention_s, self._retire, run.id)

    def finished_oldest_first(self) -> list[CompletionRun]:
        """The finished runs still retained, oldest first (for the memory governor)."""
        runs = self.runs
        return [runs[ident] for ident in self._retirements if ident in runs]

    def retire(self, completion_id: str) -> None:
        """Forget a finished completion now, before its retention ends (the memory
        governor's second relief): its channel, history and snapshot state go."""
        handle = self._retirements.get(completion_id)
        if handle is not None:
            handle.cancel()
        self._retire(completion_id)

    def _retire(self, completion_id: str) -> None:
        self._retirements.pop(completion_id, None)
        run = self.runs.pop(completion_id, None)
        if run is not None:
            self.state_bytes -= run.state_bytes
            run.release()
            self.broker.close_channel(run.channel.name)

    async def close(self) -> None:
        """Cancel every running completion and wait for their tasks (hub shutdown)."""
        self.closing = True
        runs = list(self.runs.values())
        for run in runs:
            run.cancel(HubError("the hub is shutting down", ErrorCode.SHUTTING_DOWN, retryable=True))
        await asyncio.gather(*(run.wait() for run in runs))
        for handle in self._retirements.values():
            handle.cancel()
        self._retirements.clear()
