"""What the Python SDK accumulates from a stream's events: :class:`CompletionResult`,
:class:`WorkflowResult` with one :class:`AgentRun` per agent turn, and the :class:`Reconnect`
notice. Plain dataclasses; :mod:`hub.client.state` fills them in.

Times are this client's ``time.perf_counter()`` readings (seconds) or durations computed from
them (``*_s`` in seconds, ``*_ms`` in milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.messages import Attempt, ErrorInfo, FunctionExecuted, ToolCallMessage, UsageInfo, WorkflowTransition

__all__ = ["CompletionResult", "ChoiceResult", "AgentRun", "WorkflowResult", "Reconnect", "token_data", "add_usage"]

@dataclass
class ChoiceResult:
    """The output of one choice above 0 of a completion that asked for ``n`` above 1
    (docs/PROTOCOL.md "Choices"), accumulated from the messages whose ``choice`` is its index.

    Attributes:
        text: the choice's answer text (its ``content_chunk`` contents, in order).
        reasoning: its reasoning text.
        refusal: its refusal text.
        tool_calls: its ``tool_call`` messages, in order.
        citations: its citation objects, in order (a snapshot does not carry these for choices
            above 0, so citations missed during a resume from a snapshot are not here).
    """

    text: str = ""
    reasoning: str = ""
    refusal: str = ""
    tool_calls: list[ToolCallMessage] = field(default_factory=list)
    citations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CompletionResult:
    """A completion as accumulated from its events (complete after ``completed``).

    Attributes:
        text: the answer text (all ``content_chunk`` contents of choice 0, in order; with
            ``n`` above 1 the other choices are in :attr:`choices`).
        reasoning: the reasoning text (all ``thinking_status`` contents of choice 0).
        tool_calls: the ``tool_call`` messages of choice 0, in order.
        usage: token usage from ``completed`` (or from the ``error``, when the provider
            reported some before failing).
        finish_reason: ``stop``, ``length``, ``tool_calls``, ``content_filter`` or ``error``
            (docs/PROTOCOL.md ``completed``); None until completed, and after an error.
        provider: the provider that served it (``openai``, ``anthropic``, ``google``, ``ollama``).
        model: the model the provider reported.
        ttft_ms: time to first token measured by the hub, from its first upstream request to
            the first output, in ms (``completed.ttftMs``).
        completion_id: the completion's id.
        refusal: the refusal text of choice 0, if the model refused.
        citations: the citation objects of choice 0, in order.
        choices: the output of each choice above 0 that has any, by index (only for ``n``
            above 1; docs/PROTOCOL.md "Choices"); empty otherwise.
        finish_reasons: every choice's finish reason, at its index (``completed.finishReasons``,
            only for ``n`` above 1); None otherwise.
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
    choices: dict[int, ChoiceResult] = field(default_factory=dict)
    finish_reasons: list[str] | None = None

    def choice(self, index: int) -> ChoiceResult:
        """The output of choice ``index`` (a non-negative int) so far: for 0 a
        :class:`ChoiceResult` view made from this result's own fields (a copy; its lists are
        this result's), for another index its entry in :attr:`choices` (an empty one when that
        choice has no output yet, not stored)."""
        if index == 0:
            return ChoiceResult(self.text, self.reasoning, self.refusal, self.tool_calls, self.citations)
        return self.choices.get(index) or ChoiceResult()

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


def token_data(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a token's data that a result may update (``results``) without changing the
    event it came from."""
    copy = dict(data)
    if isinstance(copy.get("results"), dict):
        copy["results"] = dict(copy["results"])
    return copy


def add_usage(total: UsageInfo | None, usage: UsageInfo | None) -> UsageInfo | None:
    """The sum of two usages (None stands for "nothing reported")."""
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
        url: the URL of the new connection (with several ``urls``, maybe another hub's).
    """

    attempts: int
    close_code: int
    close_reason: str
    downtime_s: float
    channels: tuple[str, ...]
    url: str = ""

