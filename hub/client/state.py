"""The state of one channel as the Python SDK sees it: no I/O, no asyncio, no clock.

The Python twin of sdk_js/src/channel.js. Hub messages of one channel go in
(:meth:`ChannelState.apply`, with the caller's ``time.perf_counter()`` reading as ``now``); the
events to hand to the caller come out, each exactly once and in ``seq`` order. The connection
(:mod:`hub.client.connection`) and the streams (:mod:`hub.client.streams`) only move messages
between the socket, these objects and the caller's ``async for``.

Resume rules (docs/PROTOCOL.md "Resuming"):

- every channel message carries a gap-free ``seq``; one not newer than the last one applied
  (:attr:`ChannelState.seq`) is a duplicate, replayed after a reconnect, and is dropped;
- a ``content_chunk`` with ``firstSeq`` stands for the chunks ``firstSeq``..``seq``;
- on a completion or workflow channel whose epoch is known, a forward jump of ``seq`` raises
  :class:`~hub.client.errors.ResumeError` ``stream_gap``;
- :meth:`ChannelState.cursor` is where to resume (``since``): the last ``seq`` and the epoch;
- a ``subscribed`` acknowledgement's epoch (:meth:`ChannelState.acknowledge`) other than the
  known one is another instance of the channel: a plain channel (``system``, ``agent:...``)
  starts its ``seq`` again; a completion or workflow waits for the snapshot that follows.

**Completion snapshots.** When the hub's history cannot cover the gap it answers
``recovered: false`` and sends one ``snapshot``. :meth:`CompletionState.apply` then returns, in
this order:

1. the :class:`~protocol.messages.Snapshot` itself (so callers can see that it happened);
2. synthetic events carrying only what had not been delivered yet, all with the snapshot's
   ``seq``: a ``ThinkingStatus`` with the missing reasoning suffix, a ``ContentChunk`` with the
   missing answer suffix (``firstSeq`` = the first missed ``seq``, as for a chunk the hub
   merged), a ``RefusalChunk`` with the missing refusal suffix, then the missed
   ``ToolCallMessage`` objects as the hub sent them and a ``CitationMessage`` per missed
   citation. Each is left out when nothing of its kind was missed.

With ``n`` above 1 (docs/PROTOCOL.md "Choices") each choice is caught up on its own: choice 0
against the snapshot's own fields, choice *k* against its entry of ``Snapshot.choices``, the
synthetic events carrying ``choice`` *k*; the result keeps choice 0 in its fields and the others
in :attr:`~hub.client.results.CompletionResult.choices`.

So a caller that concatenates ``ContentChunk.content`` (of one ``choice``) still ends with the exact full text and
never sees a piece twice, and the :class:`~hub.client.results.CompletionResult` is exact.
(Reasoning signatures and ``status: "done"`` markers inside the gap are not in a snapshot and
are not synthesized.) A snapshot that does not extend what was delivered (another instance of
the channel, with other text) raises ``resume_failed`` rather than contradict it.

**Workflow snapshots.** For a ``workflow_snapshot`` (the token's place and data, the agent at
work and its text so far), :meth:`WorkflowState.apply` returns, all with the snapshot's ``seq``:

1. the :class:`~protocol.messages.WorkflowSnapshot` itself;
2. for the agent turn being followed (started, not completed): when the snapshot's agent at
   work is that agent at the same place and its text continues what was delivered, one
   ``AgentProgress`` with only the missing suffix. Otherwise that turn ended while the client
   was away: when the run went on (status ``running`` or ``completed``: the turn succeeded) and
   the agent's answer in the snapshot's ``data.results`` continues the delivered text, an
   ``AgentProgress`` with the missing suffix and an ``AgentCompleted`` with that answer (no
   usage, provider or model: the snapshot has none); else nothing. The turn is marked
   :attr:`~hub.client.results.AgentRun.ended_unseen` either way;
3. when another turn is at work (it started while the client was away), an ``AgentProgress``
   with all of its text so far (no ``AgentStarted``: the snapshot has neither its completion id
   nor its model; a new ``AgentRun`` with ``completion_id`` None stands for it);
4. when the snapshot shows the run ended: a ``WorkflowCompleted`` with the snapshot's place and
   data and no usage, or an ``error`` with code ``cancelled`` (status ``cancelled``) or
   ``workflow_failed`` (status ``failed``; the snapshot does not say why).

Agent turns and transitions that began and ended entirely while the client was away are not
replayed (their answers are in the snapshot's data), and the run's usage is None when its end
was seen only in a snapshot. A snapshot of another instance of the channel (another epoch,
after events were delivered) raises ``resume_failed``.

A terminal ``error`` is returned like any event and also kept in :attr:`ChannelState.failure`;
the stream raises it instead of yielding it.
"""

from __future__ import annotations

from typing import Any

from hub.client.errors import ResumeError
from hub.client.results import AgentRun, ChoiceResult, CompletionResult, WorkflowResult, add_usage, token_data
from protocol.messages import (
    AgentCompleted,
    AgentProgress,
    AgentStarted,
    CitationMessage,
    Completed,
    ContentChunk,
    Cursor,
    ErrorInfo,
    ErrorMessage,
    FunctionExecuted,
    RefusalChunk,
    Snapshot,
    ThinkingStatus,
    TokenCreated,
    ToolCallMessage,
    WorkflowCompleted,
    WorkflowSnapshot,
    WorkflowTransition,
)

__all__ = ["ChannelState", "CompletionState", "WorkflowState", "state_for"]

#: Events that are model output: the first one of a completion sets its client-side TTFT.
OUTPUT_EVENTS = (ContentChunk, ThinkingStatus, RefusalChunk, ToolCallMessage)


class ChannelState:
    """A plain channel (``system``, ``agent:<workflowId>.<agentId>``): resume cursor and
    replay de-duplication; every message is passed through (snapshots are ignored).

    Attributes:
        name: the channel name.
        epoch: the channel instance's epoch, once the hub said it (None before).
        seq: the ``seq`` of the latest event applied (0: none yet).
        resumable: the hub gave this channel an epoch, so it supports ``since``.
        ended: a terminal message (``completed``, ``workflow_completed``, terminal ``error``)
            was applied; later messages are ignored.
        failure: the terminal ``error`` message, when the channel ended with one.
        result: what the events accumulate into (None for a plain channel).
    """

    #: Whether a forward jump of ``seq`` on a resumable channel is an error.
    tracks_gaps = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.epoch: str | None = None
        self.seq = 0
        self.resumable = False
        self.ended = False
        self.failure: ErrorMessage | None = None
        self.result: CompletionResult | WorkflowResult | None = None

    def cursor(self) -> Cursor | None:
        """Where to resume: the last ``seq`` applied and the epoch; None while the epoch is
        unknown (then subscribe without ``since``)."""
        return None if self.epoch is None else Cursor(self.seq, self.epoch)

    def acknowledge(self, epoch: str | None) -> None:
        """Take the epoch of a ``subscribed`` acknowledgement (None: the hub gave none, an
        older hub without resumable channels)."""
        if epoch is None:
            return
        self.resumable = True
        if self.epoch is None:
            self.epoch = epoch
        elif epoch != self.epoch and not self.tracks_gaps:
            self.epoch = epoch
            self.seq = 0  # another instance of the channel: its seq starts again

    def apply(self, message: Any, now: float) -> list[Any]:
        """Apply one hub message of this channel.

        Args:
            message: a decoded hub message (a ``protocol.messages`` Struct).
            now: the caller's ``time.perf_counter()`` reading, in seconds (for timings).

        Returns:
            The events to deliver, in order (none for a duplicate).

        Raises:
            ResumeError: ``stream_gap`` or ``resume_failed``; the channel cannot continue.
        """
        if self.ended:
            return []
        if isinstance(message, (Snapshot, WorkflowSnapshot)):
            return self._snapshot(message, now)
        seq = getattr(message, "seq", None)
        if isinstance(seq, int):
            if seq <= self.seq:
                return []  # already delivered (replayed on resume)
            first = getattr(message, "first_seq", None) or seq
            if first > self.seq + 1 and self.resumable and self.tracks_gaps:
                raise ResumeError("stream_gap", f"events {self.seq + 1} to {first - 1} of {self.name} never arrived")
            self.seq = seq
        out: list[Any] = []
        self._record(message, now, out)
        return out

    # Overridden by the completion and workflow states.

    def _record(self, message: Any, now: float, out: list[Any]) -> None:
        out.append(message)

    def _snapshot(self, snapshot: Snapshot | WorkflowSnapshot, now: float) -> list[Any]:
        return []


class CompletionState(ChannelState):
    """A ``completion:<id>`` channel: de-duplication, gap detection, snapshot catch-up, and
    its :class:`~hub.client.results.CompletionResult`.

    Attributes:
        result: the completion so far.
        sent_at: ``perf_counter()`` when this client first sent the request or subscribed (set
            by the connection), in seconds; None before.
        requested: this client sent the ``completion`` request (so TTFT is measured from it).
    """

    tracks_gaps = True

    def __init__(self, name: str, completion_id: str, *, requested: bool = False) -> None:
        super().__init__(name)
        self.result: CompletionResult = CompletionResult(completion_id=completion_id)
        self.sent_at: float | None = None
        self.requested = requested
        self.first_output_at: float | None = None

    def _record(self, message: Any, now: float, out: list[Any]) -> None:
        result = self.result
        if isinstance(message, OUTPUT_EVENTS) and self.first_output_at is None:
            self.first_output_at = now
            if self.requested and self.sent_at is not None:
                result.client_ttft_ms = (now - self.sent_at) * 1000.0
        choice = getattr(message, "choice", 0)
        if choice:  # n > 1: another choice's output goes to its own entry, never into choice 0's
            other = result.choices.get(choice)
            if other is None:
                other = result.choices[choice] = ChoiceResult()
            target: CompletionResult | ChoiceResult = other
        else:
            target = result
        match message:
            case ContentChunk():
                target.text += message.content
            case ThinkingStatus():
                target.reasoning += message.content
            case RefusalChunk():
                target.refusal += message.content
            case ToolCallMessage():
                target.tool_calls.append(message)
            case CitationMessage():
                target.citations.append(message.citation)
            case Completed():
                result.finish_reason = message.finish_reason
                result.finish_reasons = message.finish_reasons
                result.provider = message.provider
                result.model = message.model
                result.usage = message.usage
                result.ttft_ms = message.ttft_ms
                result.attempts = list(message.attempts)
                self._end(now)
            case ErrorMessage():
                result.error = message.error
                result.usage = message.usage
                result.attempts = list(message.attempts)
                self._end(now)
                self.failure = message
        out.append(message)

    def _end(self, now: float) -> None:
        result = self.result
        result.done = True
        self.ended = True
        if self.first_output_at is not None:
            result.generation_s = now - self.first_output_at
        if self.sent_at is not None:
            result.duration_s = now - self.sent_at

    def _snapshot(self, snapshot: Snapshot | WorkflowSnapshot, now: float) -> list[Any]:
        if not isinstance(snapshot, Snapshot):
            return []
        result = self.result
        if snapshot.epoch == self.epoch and snapshot.seq <= self.seq:
            return [snapshot]  # it holds nothing this stream lacks
        # Choice 0 is the snapshot's own fields, every other choice an entry of its `choices`
        # (docs/PROTOCOL.md "Choices"); each must continue what this stream delivered of it.
        others = {c.choice: ChoiceResult(c.content, c.reasoning, c.refusal, c.tool_calls) for c in snapshot.choices}
        states = [(0, ChoiceResult(snapshot.content, snapshot.reasoning, snapshot.refusal, snapshot.tool_calls,
                                   snapshot.citations), result.choice(0))]
        states += [(k, others.get(k) or ChoiceResult(), result.choice(k))
                   for k in sorted(set(others) | set(result.choices))]
        if not all(_continues(new, old, citations=k == 0) for k, new, old in states):
            raise ResumeError("resume_failed", f"the snapshot of {self.name} (epoch {snapshot.epoch}) does not "
                              f"continue what this stream delivered (epoch {self.epoch})")
        first = self.seq + 1
        seq = snapshot.seq
        self.epoch = snapshot.epoch
        self.seq = seq
        out: list[Any] = [snapshot]
        cid = snapshot.completion_id
        for k, new, old in states:
            if len(new.reasoning) > len(old.reasoning):
                self._record(ThinkingStatus(cid, seq, "thinking", content=new.reasoning[len(old.reasoning):], choice=k),
                             now, out)
            if len(new.text) > len(old.text):
                self._record(ContentChunk(cid, seq, new.text[len(old.text):], first if first < seq else None, choice=k),
                             now, out)
            if len(new.refusal) > len(old.refusal):
                self._record(RefusalChunk(cid, seq, new.refusal[len(old.refusal):], choice=k), now, out)
            for call in new.tool_calls[len(old.tool_calls):]:
                self._record(call, now, out)
            if k == 0:
                for citation in new.citations[len(old.citations):]:
                    self._record(CitationMessage(cid, seq, citation), now, out)
        return out


def _continues(new: ChoiceResult, old: ChoiceResult, *, citations: bool) -> bool:
    """Whether ``new`` (one choice's state in a snapshot) extends ``old`` (what this stream
    delivered of that choice): every text starts with the delivered one, and the delivered
    tool calls (by id) and, when ``citations`` (a snapshot has them for choice 0 only), the
    citations' count are a prefix."""
    return (new.text.startswith(old.text) and new.reasoning.startswith(old.reasoning)
            and new.refusal.startswith(old.refusal) and len(new.tool_calls) >= len(old.tool_calls)
            and [c.id for c in new.tool_calls[:len(old.tool_calls)]] == [c.id for c in old.tool_calls]
            and (not citations or len(new.citations) >= len(old.citations)))


class WorkflowState(ChannelState):
    """A ``workflow:<id>`` channel: de-duplication, gap detection, snapshot catch-up (module
    docstring, "Workflow snapshots"), and its :class:`~hub.client.results.WorkflowResult`.

    Attributes:
        result: the run so far.
        sent_at: ``perf_counter()`` when this client first sent ``create_workflow`` or
            subscribed, in seconds; None before.
    """

    tracks_gaps = True

    def __init__(self, name: str, workflow_id: str) -> None:
        super().__init__(name)
        self.result: WorkflowResult = WorkflowResult(workflow_id=workflow_id)
        self.sent_at: float | None = None

    def _turn(self, agent_id: str) -> AgentRun:
        """The turn of ``agent_id`` at work (one is made if it was never seen to start)."""
        current = self.result.current
        if current is not None and current.agent_id == agent_id:
            return current
        turn = AgentRun(agent_id, self.result.place)
        self.result.agents.append(turn)
        return turn

    def _record(self, message: Any, now: float, out: list[Any]) -> None:
        result = self.result
        match message:
            case AgentProgress():
                turn = self._turn(message.agent_id)
                if turn.first_output_at is None and (message.content or message.reasoning):
                    turn.first_output_at = now
                turn.text += message.content
                turn.reasoning += message.reasoning
                turn.progress = message.progress
            case AgentStarted():
                current = result.current
                if current is not None:  # cannot happen in a hub's run: one agent works at a time
                    current.done = True
                result.agents.append(AgentRun(message.agent_id, message.place, message.completion_id, message.model,
                                              started_at=now))
            case FunctionExecuted():
                self._turn(message.agent_id).functions.append(message)
            case AgentCompleted():
                turn = self._turn(message.agent_id)
                turn.result = message.result
                turn.usage = message.usage
                turn.provider = message.provider
                turn.served_model = message.model
                turn.progress = 1.0
                turn.done = True
                turn.ended_at = now
                results = result.data.setdefault("results", {})
                if isinstance(results, dict):
                    results[message.agent_id] = message.result
                result.usage = add_usage(result.usage, message.usage)
            case TokenCreated():
                result.place = message.place
                result.data = token_data(message.data)
            case WorkflowTransition():
                result.place = message.to_place
                result.data = token_data(message.data)
                result.transitions.append(message)
            case WorkflowCompleted():
                result.place = message.place
                result.data = token_data(message.result)
                result.usage = message.usage
                result.status = "completed"
                self._end(now)
            case ErrorMessage():
                result.error = message.error
                if message.usage is not None:
                    result.usage = message.usage
                result.status = "cancelled" if message.error.code == "cancelled" else "failed"
                self._end(now)
                self.failure = message
        out.append(message)

    def _end(self, now: float) -> None:
        result = self.result
        result.done = True
        self.ended = True
        for turn in result.agents:
            turn.done = True
        if self.sent_at is not None:
            result.duration_s = now - self.sent_at

    def _snapshot(self, snapshot: Snapshot | WorkflowSnapshot, now: float) -> list[Any]:
        if not isinstance(snapshot, WorkflowSnapshot):
            return []
        result = self.result
        if snapshot.epoch == self.epoch and snapshot.seq <= self.seq:
            return [snapshot]  # it holds nothing this stream lacks
        if snapshot.epoch != self.epoch and self.seq > 0:
            raise ResumeError("resume_failed", f"the snapshot of {self.name} (epoch {snapshot.epoch}) is of another "
                              f"run than the one this stream delivered (epoch {self.epoch})")
        self.epoch = snapshot.epoch
        seq = self.seq = snapshot.seq
        wid = snapshot.workflow_id
        result.snapshots += 1
        result.place = snapshot.place
        result.data = token_data(snapshot.data)
        if snapshot.status == "running":
            result.status = "running"
        out: list[Any] = [snapshot]
        running = snapshot.status == "running"
        at_work = snapshot.agent_id if running else None
        content = snapshot.agent_content
        followed = result.current
        if followed is not None:
            if (at_work == followed.agent_id and snapshot.place == followed.place
                    and content.startswith(followed.text)):
                # The turn being followed is still at work: only the text it missed.
                if len(content) > len(followed.text):
                    self._record(AgentProgress(wid, seq, followed.agent_id, followed.progress,
                                               content[len(followed.text):]), now, out)
                at_work = None
            else:
                # It ended while the client was away. When the run went on (or completed), it
                # succeeded, and its answer is the agent's latest in the token's data, unless
                # that does not continue what was delivered (a later turn of the same agent,
                # or a tool round): then it is only marked ended.
                answer = result.results.get(followed.agent_id)
                if (snapshot.status in ("running", "completed") and isinstance(answer, str)
                        and answer.startswith(followed.text)):
                    if len(answer) > len(followed.text):
                        self._record(AgentProgress(wid, seq, followed.agent_id, followed.progress,
                                                   answer[len(followed.text):]), now, out)
                    self._record(AgentCompleted(wid, seq, followed.agent_id, answer), now, out)
                followed.done = followed.ended_unseen = True
        if at_work is not None:
            # Another turn is at work, which started while the client was away.
            result.agents.append(AgentRun(at_work, snapshot.place))
            if content:
                self._record(AgentProgress(wid, seq, at_work, 0.0, content), now, out)
        if snapshot.status == "completed":
            self._record(WorkflowCompleted(wid, seq, snapshot.place, snapshot.data, None), now, out)
        elif not running:
            if snapshot.status == "cancelled":
                info = ErrorInfo("cancelled", f"the workflow {wid!r} was cancelled (seen in a workflow_snapshot)",
                                 False)
            else:
                info = ErrorInfo("workflow_failed", f"the workflow {wid!r} ended with status {snapshot.status!r} "
                                 "while this client was away (the workflow_snapshot does not say why)", False)
            result.usage = None
            self._record(ErrorMessage(info, None, seq, None, workflow_id=wid), now, out)
        return out


def state_for(channel: str, *, requested: bool = False) -> ChannelState:
    """The state object for ``channel``: :class:`CompletionState` for ``completion:<id>``,
    :class:`WorkflowState` for ``workflow:<id>``, else a plain :class:`ChannelState`.

    Args:
        channel: a channel name (``protocol.messages.CHANNEL_PATTERN``).
        requested: this client sends the request that starts the channel (a ``completion``).
    """
    kind, _, ident = channel.partition(":")
    if kind == "completion":
        return CompletionState(channel, ident, requested=requested)
    if kind == "workflow":
        return WorkflowState(channel, ident)
    return ChannelState(channel)
