"""Workflow runs: agents that work in turn on one token, every step streamed on
``workflow:<id>`` (and each agent's work on ``agent:<workflowId>.<agentId>``).

The definition is a small Petri net (the original design's terms; docs/PROTOCOL.md
"Workflows"): ``places``, an ``initialPlace``, ``finalPlaces`` (default: places no transition
leaves), ``transitions`` (``id``, ``from``, ``to``, an optional ``agent`` that must complete for
the transition to fire, an optional ``condition`` on the token's data) and ``agents`` (``id``,
``model``, a ``prompt`` template, optional ``tools``, ``fallbacks``, ``maxTokens``).

A run has one token. From the token's place, the first transition (in definition order) whose
condition holds fires: its agent, if any, runs first (an LLM completion like any other: same
providers, retries, fallbacks, coalescing); the agent's answer is stored in the token's data
under ``results.<agentId>``; then the token moves. The run completes when the token reaches a
final place, and fails (``error``) when an agent fails or no transition can fire.

Token data: ``{"input": {...the run's input...}, "results": {agentId: answer text}}``.
Templates read it with ``{input.topic}`` and ``{results.researcher}``; conditions with a
dotted ``path`` (``{"path": "results.editor", "op": "contains", "value": "APPROVED"}``).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import pathlib
import re
import secrets
from collections.abc import Callable
from typing import Any

import msgspec
import yaml

from hub.broker import Broker
from hub.channel import Channel, EncodedEvent
from hub.completions import GracePeriod
from hub.config import HubConfig
from hub.ratelimit import Ticket
from protocol.errors import ErrorCode, HubError, ProtocolError
from protocol.lifecycle import Lifecycle, WorkflowEvent, WorkflowState
from protocol.messages import (
    AgentCompleted,
    AgentProgress,
    AgentStarted,
    Completed,
    Completion,
    ContentChunk,
    ErrorInfo,
    ErrorMessage,
    FunctionExecuted,
    ThinkingStatus,
    TokenCreated,
    ToolCallMessage,
    UsageInfo,
    WorkflowCompleted,
    WorkflowSnapshot,
    WorkflowTransition,
)

__all__ = ["Condition", "AgentSpec", "TransitionSpec", "WorkflowDefinition", "DefinitionError", "load_definition",
           "named_definition", "DEFINITIONS_DIR", "register_function", "FUNCTIONS", "WorkflowRun", "WorkflowManager"]

log = logging.getLogger("cbhub.workflows")

DEFINITIONS_DIR = pathlib.Path(__file__).with_name("workflow_defs")
"""Where ``definitionName`` finds ``<name>.yaml`` (shipped: ``content_creation``)."""

_MAX_TOOL_ROUNDS = 4


class DefinitionError(ProtocolError):
    """An invalid workflow definition; the message names the offending key
    (``transitions[2].to: unknown place 'edtied'``). Code ``invalid_workflow``."""

    default_code = ErrorCode.INVALID_WORKFLOW


class Condition(msgspec.Struct, forbid_unknown_fields=True):
    """A test on the token's data: ``op`` is ``exists``, ``==``, ``!=``, ``contains``,
    ``not_contains``, ``>``, ``<``; ``path`` is dotted (``results.editor``)."""

    path: str
    op: str = "exists"
    value: Any = None


class AgentSpec(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """An agent: its model, its prompt template, the registered functions it may call."""

    id: str
    model: str
    prompt: str
    tools: list[str] = []
    fallbacks: list[str] = []
    max_tokens: int | None = None
    system: str | None = None


class TransitionSpec(msgspec.Struct, forbid_unknown_fields=True):
    """A transition from one place to another, optionally run by an agent, optionally guarded."""

    id: str
    from_: str = msgspec.field(name="from")
    to: str = ""
    agent: str | None = None
    condition: Condition | None = None


class WorkflowDefinition(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """A workflow definition (see the module docstring)."""

    places: list[str]
    initial_place: str
    transitions: list[TransitionSpec]
    agents: list[AgentSpec] = []
    final_places: list[str] | None = None
    name: str = ""
    description: str = ""
    max_steps: int | None = None
    max_agent_calls: int | None = None
    max_duration_s: float | None = msgspec.field(default=None, name="maxDurationS")

    def finals(self) -> set[str]:
        """The final places (given, or the places no transition leaves)."""
        if self.final_places is not None:
            return set(self.final_places)
        leaving = {t.from_ for t in self.transitions}
        return {place for place in self.places if place not in leaving}

    def agent(self, agent_id: str) -> AgentSpec:
        return next(agent for agent in self.agents if agent.id == agent_id)


_OPS = ("exists", "==", "!=", "contains", "not_contains", ">", "<")


def load_definition(raw: Any) -> WorkflowDefinition:
    """Validate a definition (a dict from JSON or YAML).

    Raises:
        DefinitionError: naming the offending key (msgspec's ``$.transitions[2].to`` path, or
            a reference to an unknown place, agent or function).
    """
    try:
        definition = msgspec.convert(raw, WorkflowDefinition)
    except msgspec.ValidationError as exc:
        text = str(exc)
        where = text.rsplit(" - at `$.", 1)
        message = f"{where[1].rstrip('`')}: {where[0]}" if len(where) == 2 else text
        raise DefinitionError(f"invalid workflow definition: {message}") from None
    places = set(definition.places)
    if len(places) != len(definition.places):
        raise DefinitionError("invalid workflow definition: places: a place is listed twice")
    if definition.initial_place not in places:
        raise DefinitionError(f"invalid workflow definition: initialPlace: unknown place {definition.initial_place!r}")
    agents = {agent.id for agent in definition.agents}
    for index, agent in enumerate(definition.agents):
        for tool in agent.tools:
            if tool not in FUNCTIONS:
                raise DefinitionError(f"invalid workflow definition: agents[{index}].tools: no registered function "
                                      f"{tool!r} (registered: {', '.join(sorted(FUNCTIONS))})")
    seen: set[str] = set()
    for index, transition in enumerate(definition.transitions):
        key = f"transitions[{index}]"
        if transition.id in seen:
            raise DefinitionError(f"invalid workflow definition: {key}.id: {transition.id!r} is used twice")
        seen.add(transition.id)
        for field, place in (("from", transition.from_), ("to", transition.to)):
            if place not in places:
                raise DefinitionError(f"invalid workflow definition: {key}.{field}: unknown place {place!r}")
        if transition.agent is not None and transition.agent not in agents:
            raise DefinitionError(f"invalid workflow definition: {key}.agent: unknown agent {transition.agent!r}")
        if transition.condition is not None and transition.condition.op not in _OPS:
            raise DefinitionError(f"invalid workflow definition: {key}.condition.op: {transition.condition.op!r} "
                                  f"is not one of {', '.join(_OPS)}")
    if definition.final_places is not None:
        for place in definition.final_places:
            if place not in places:
                raise DefinitionError(f"invalid workflow definition: finalPlaces: unknown place {place!r}")
    if not definition.finals():
        raise DefinitionError("invalid workflow definition: finalPlaces: the net has no final place")
    for field, value in (("maxSteps", definition.max_steps), ("maxAgentCalls", definition.max_agent_calls),
                         ("maxDurationS", definition.max_duration_s)):
        if value is not None and value <= 0:
            raise DefinitionError(f"invalid workflow definition: {field}: must be > 0, got {value}")
    _check_termination(definition)
    return definition


def _check_termination(definition: WorkflowDefinition) -> None:
    """Refuse a net that could run forever without work (hardening, docs/PROTOCOL.md
    "Workflows"): every place reachable from ``initialPlace`` must be able to reach a final
    place, and no cycle of transitions may be without an agent (it would fire in a loop,
    never waiting for anything).

    Raises:
        DefinitionError: naming the place or the cycle.
    """
    forward: dict[str, list[str]] = {}
    backward: dict[str, list[str]] = {}
    for transition in definition.transitions:
        forward.setdefault(transition.from_, []).append(transition.to)
        backward.setdefault(transition.to, []).append(transition.from_)
    reachable = _closure([definition.initial_place], forward)
    reaches_final = _closure(list(definition.finals()), backward)
    for place in definition.places:
        if place in reachable and place not in reaches_final:
            raise DefinitionError(f"invalid workflow definition: places: {place!r} is reachable from initialPlace "
                                  f"but no final place can be reached from it")
    agentless: dict[str, list[str]] = {}
    for transition in definition.transitions:
        if transition.agent is None:
            agentless.setdefault(transition.from_, []).append(transition.to)
    cycle = _find_cycle(agentless)
    if cycle:
        raise DefinitionError(f"invalid workflow definition: transitions: the cycle {' -> '.join(cycle)} has no "
                              f"agent on it (it would fire forever)")


def _closure(start: list[str], edges: dict[str, list[str]]) -> set[str]:
    seen = set(start)
    stack = list(start)
    while stack:
        for following in edges.get(stack.pop(), ()):
            if following not in seen:
                seen.add(following)
                stack.append(following)
    return seen


def _find_cycle(edges: dict[str, list[str]]) -> list[str]:
    """A cycle in ``edges`` as the places along it, first repeated at the end; [] if none
    (iterative depth-first search: a large definition cannot exhaust the stack)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in edges:
        if state.get(root):
            continue
        path = [root]
        iterators = [iter(edges.get(root, ()))]
        state[root] = 1
        while iterators:
            following = next(iterators[-1], None)
            if following is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(following) == 1:
                return path[path.index(following):] + [following]
            elif not state.get(following):
                state[following] = 1
                path.append(following)
                iterators.append(iter(edges.get(following, ())))
    return []


def named_definition(name: str, directory: pathlib.Path = DEFINITIONS_DIR) -> WorkflowDefinition:
    """Load ``<directory>/<name>.yaml`` (or ``.json``).

    Raises:
        DefinitionError: no such definition (``unknown_workflow_definition``) or an invalid one.
    """
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", name):
        raise DefinitionError(f"no workflow definition named {name!r}", ErrorCode.UNKNOWN_WORKFLOW_DEFINITION)
    for suffix in (".yaml", ".yml", ".json"):
        path = directory / f"{name}{suffix}"
        if path.is_file():
            return load_definition(yaml.safe_load(path.read_text(encoding="utf-8")))
    names = sorted(p.stem for p in directory.glob("*.y*ml"))
    raise DefinitionError(f"no workflow definition named {name!r} (available: {', '.join(names)})",
                          ErrorCode.UNKNOWN_WORKFLOW_DEFINITION)


# Registered functions (the tools agents may call).

FUNCTIONS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}


def register_function(name: str, description: str,
                      parameters: dict[str, Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make a Python function callable by agents as the tool ``name``.

    The function gets the call's arguments as keyword arguments and returns a JSON value (it
    may be async). ``parameters`` is the tool's JSON Schema, sent to the model.
    """

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        FUNCTIONS[name] = (function, {"type": "function", "function": {
            "name": name, "description": description, "parameters": parameters}})
        return function

    return register


@register_function("get_weather", "Current weather in a city (a demo function with made-up data).",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
def get_weather(city: str) -> dict[str, Any]:
    """Made-up, deterministic weather for the demo."""
    return {"city": city, "temperature_c": 11 + len(city) % 9, "conditions": "light rain" if len(city) % 2 else "clear"}


@register_function("word_count", "Count the words of a text.",
                   {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
def word_count(text: str) -> dict[str, Any]:
    """Words in ``text``."""
    return {"words": len(text.split())}


# Token data helpers.


def lookup(data: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of the token's data, or None."""
    value: Any = data
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


_FIELD = re.compile(r"\{([A-Za-z0-9_.]+)\}")


def render(template: str, data: dict[str, Any]) -> str:
    """The template with every ``{dotted.path}`` replaced by that value of the token's data
    (JSON for non-strings; empty when absent)."""

    def value(match: re.Match[str]) -> str:
        found = lookup(data, match.group(1))
        if found is None:
            return ""
        return found if isinstance(found, str) else msgspec.json.encode(found).decode()

    return _FIELD.sub(value, template)


def holds(condition: Condition | None, data: dict[str, Any]) -> bool:
    """Whether the transition's condition holds for the token's data (no condition: yes)."""
    if condition is None:
        return True
    found = lookup(data, condition.path)
    op, value = condition.op, condition.value
    try:
        if op == "exists":
            return found is not None
        if op == "==":
            return bool(found == value)
        if op == "!=":
            return bool(found != value)
        if op == "contains":
            return found is not None and str(value) in (found if isinstance(found, str) else str(found))
        if op == "not_contains":
            return found is None or str(value) not in (found if isinstance(found, str) else str(found))
        if op == ">":
            return found is not None and found > value
        if op == "<":
            return found is not None and found < value
    except TypeError:
        return False
    return False


def _add_usage(total: UsageInfo | None, usage: UsageInfo | None) -> UsageInfo | None:
    if usage is None:
        return total
    if total is None:
        return msgspec.structs.replace(usage)
    return UsageInfo(total.prompt_tokens + usage.prompt_tokens, total.completion_tokens + usage.completion_tokens,
                     total.total_tokens + usage.total_tokens,
                     (total.reasoning_tokens or 0) + (usage.reasoning_tokens or 0) or None)


class _AgentListener:
    """Subscribes to an agent's completion channel: turns its content into ``agent_progress``
    and resolves when the completion ends."""

    def __init__(self, run: WorkflowRun, agent: AgentSpec) -> None:
        self.run = run
        self.agent = agent
        self.text: list[str] = []
        self.tool_calls: list[ToolCallMessage] = []
        self.done: asyncio.Future[Completed | ErrorMessage] = asyncio.get_running_loop().create_future()
        self.chars = 0

    def deliver(self, event: EncodedEvent) -> None:
        message = event.message
        match message:
            case ContentChunk():
                self.text.append(message.content)
                self.run.current_text.append(message.content)
                self._progress(content=message.content)
            case ThinkingStatus() if message.content:
                self._progress(reasoning=message.content)
            case ToolCallMessage():
                self.tool_calls.append(message)
            case Completed() | ErrorMessage() if message.seq is not None and not self.done.done():
                self.done.set_result(message)

    def _progress(self, content: str = "", reasoning: str = "") -> None:
        self.chars += len(content) + len(reasoning)
        budget = 4 * (self.agent.max_tokens or 512)
        progress = round(min(0.99, self.chars / budget), 3)
        self.run.publish_agent(self.agent.id, AgentProgress(
            self.run.id, 0, self.agent.id, progress, content, reasoning))


class WorkflowRun:
    """One run of a definition: its token, its channels, its task (see the module docstring).

    Attributes:
        lifecycle: its :class:`~protocol.lifecycle.Lifecycle` (protocol/lifecycle.py's table);
            ``status`` reads it: ``running``, ``completed``, ``failed`` or ``cancelled``.
        place: where the token is.
        data: the token's data (``input``, ``results``).
        owner: the subject that started it; its agents' completions are the owner's too.
        ticket: its rate-limit ticket, released with the run's token usage when it ends.
    """

    def __init__(self, manager: WorkflowManager, workflow_id: str, definition: WorkflowDefinition,
                 run_input: dict[str, Any], channel: Channel, owner: str = "anonymous",
                 ticket: Ticket | None = None) -> None:
        self.manager = manager
        self.owner = owner
        self.ticket = ticket
        self.id = workflow_id
        self.definition = definition
        self.channel = channel
        self.token_id = f"{workflow_id}.token"
        self.place = definition.initial_place
        self.data: dict[str, Any] = {"input": run_input, "results": {}}
        self.lifecycle = Lifecycle(WorkflowState.RUNNING)
        self.error: ErrorInfo | None = None
        self.usage: UsageInfo | None = None
        self.current_agent: str | None = None
        self.current_text: list[str] = []
        self.completions: list[Any] = []  # every CompletionRun this run started
        self._agent_channels: dict[str, Channel] = {}
        self._task: asyncio.Task[None] | None = None
        self._cancel_error: HubError | None = None
        self._calls = itertools.count(1)  # numbers the agents' completions within the run
        self.agent_calls = 0  # completions its agents made, tool rounds included (max_agent_calls)
        self._grace = GracePeriod(channel, manager.config.grace_period_s, self.cancel, "the run was cancelled")

    @property
    def finished(self) -> bool:
        """True once the run's terminal message was published."""
        return self.lifecycle.finished

    def channel_names(self) -> list[str]:
        """The run's ``workflow:`` channel and every ``agent:`` channel it opened."""
        return [self.channel.name, *(channel.name for channel in self._agent_channels.values())]

    @property
    def status(self) -> WorkflowState:
        """``running``, ``completed``, ``failed`` or ``cancelled``."""
        return self.lifecycle.state

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    # Publishing.

    def publish_agent(self, agent_id: str, message: Any) -> None:
        """Publish an agent event on ``workflow:<id>`` and a copy on ``agent:<id>.<agentId>``
        (each channel numbers its own)."""
        self.channel.publish(message)
        self._agent_channel(agent_id).publish(msgspec.structs.replace(message, seq=0))

    def _agent_channel(self, agent_id: str) -> Channel:
        channel = self._agent_channels.get(agent_id)
        if channel is None:
            channel = self.manager.completions.open_channel(f"agent:{self.id}.{agent_id}")
            self._agent_channels[agent_id] = channel
        return channel

    def snapshot(self) -> WorkflowSnapshot:
        """The run's state after every event published so far."""
        return WorkflowSnapshot(self.id, self.channel.name, self.channel.epoch, self.channel.last_seq, self.status,
                                self.place,
                                self.data, self.current_agent, "".join(self.current_text), self.usage, self.error)

    # Running.

    def start(self) -> None:
        """Put the token on the initial place and start the run's task."""
        self.channel.publish(TokenCreated(self.id, 0, self.token_id, self.place, self.data))
        self._task = asyncio.create_task(self._run(), name=f"workflow:{self.id}")

    def cancel(self, error: HubError | None = None) -> None:
        """Stop the run and every completion it is running (upstream too)."""
        if self.finished:
            return
        self._cancel_error = error or HubError("the workflow was cancelled", ErrorCode.CANCELLED)
        for run in self.completions:
            run.cancel(self._cancel_error)
        if self._task is not None:
            self._task.cancel()

    def control(self, command: str, argument: Any = None) -> None:
        """A control command from the broker: ``cancel`` (``argument``: the HubError to end
        with, or None for ``cancelled``)."""
        if command == "cancel":
            self.cancel(argument)

    def on_idle(self) -> None:
        """The last subscriber of ``workflow:<id>`` left: cancel the run after the grace
        period unless one returns (the rule of completions)."""
        if not self.finished:
            self._grace.start()

    def on_subscribe(self) -> None:
        """A subscriber arrived (or the run ended): the grace period is called off."""
        self._grace.stop()

    def _limits(self) -> tuple[int, int, float]:
        """``(max_steps, max_agent_calls, max_duration_s)``: the hub's, or the definition's
        when lower."""
        config, definition = self.manager.config, self.definition
        return (min(config.workflow_max_steps, definition.max_steps or config.workflow_max_steps),
                min(config.workflow_max_agent_calls, definition.max_agent_calls or config.workflow_max_agent_calls),
                min(config.workflow_max_duration_s, definition.max_duration_s or config.workflow_max_duration_s))

    async def _run(self) -> None:
        finals = self.definition.finals()
        max_steps, _, max_duration_s = self._limits()
        try:
            async with asyncio.timeout(max_duration_s):
                await self._fire_until(finals, max_steps)
            self.lifecycle.advance(WorkflowEvent.COMPLETE)
            self.channel.publish(WorkflowCompleted(self.id, 0, self.place, self.data, self.usage))
        except TimeoutError:
            self._end_with(HubError(f"the run took longer than {max_duration_s:g} s (max_duration_s)",
                                    ErrorCode.WORKFLOW_LIMIT), WorkflowEvent.FAIL)
        except asyncio.CancelledError:
            self._end_with(self._cancel_error or HubError("the workflow was cancelled", ErrorCode.CANCELLED),
                           WorkflowEvent.CANCEL)
        except HubError as exc:
            self._end_with(exc, WorkflowEvent.FAIL)
        except Exception as exc:  # a bug of ours still ends the run for its clients
            log.exception("workflow %s failed", self.id)
            bug = HubError(f"internal error: {type(exc).__name__}", ErrorCode.INTERNAL_ERROR)
            self._end_with(bug, WorkflowEvent.FAIL)
        finally:
            self.current_agent = None
            self.manager.finished(self)

    async def _fire_until(self, finals: set[str], max_steps: int) -> None:
        """Fire transitions until the token is on a final place, yielding to the event loop
        at every step.

        Raises:
            HubError: ``workflow_stuck`` (nothing can fire), ``workflow_limit`` (``max_steps``).
        """
        steps = 0
        while self.place not in finals:
            await asyncio.sleep(0)  # every step gives the loop back, agent or not
            if steps >= max_steps:
                raise HubError(f"the run fired {steps} transitions (max_steps {max_steps})", ErrorCode.WORKFLOW_LIMIT)
            steps += 1
            enabled = [t for t in self.definition.transitions
                       if t.from_ == self.place and holds(t.condition, self.data)]
            if not enabled:
                raise HubError(f"no transition can fire from place {self.place!r}", ErrorCode.WORKFLOW_STUCK)
            transition = enabled[0]
            if transition.agent is not None:
                result = await self._run_agent(self.definition.agent(transition.agent))
                self.data["results"][transition.agent] = result
            from_place, self.place = self.place, transition.to
            self.lifecycle.advance(WorkflowEvent.FIRE)
            self.channel.publish(WorkflowTransition(self.id, 0, self.token_id, transition.id, from_place,
                                                    self.place, self.data))

    def _end_with(self, error: HubError, event: WorkflowEvent) -> None:
        if not self.lifecycle.can(event):
            return  # already ended (a failure while publishing the end): one terminal message only
        self.lifecycle.advance(event)
        self.error = ErrorInfo(error.code, error.message, error.retryable, error.status)
        for run in self.completions:
            if not run.finished:
                run.cancel(error)
        info = ErrorInfo(error.code, error.message, error.retryable, error.status)
        self.channel.publish(ErrorMessage(info, None, 0, self.usage, workflow_id=self.id))

    async def _run_agent(self, agent: AgentSpec) -> str:
        """Run one agent to its answer: a completion, then (while it calls tools) the
        functions and a follow-up completion with their results."""
        self.current_agent, self.current_text = agent.id, []
        messages: list[dict[str, Any]] = []
        if agent.system:
            messages.append({"role": "system", "content": render(agent.system, self.data)})
        messages.append({"role": "user", "content": render(agent.prompt, self.data)})
        tools = [FUNCTIONS[name][1] for name in agent.tools] or None
        completions = self.manager.completions
        agent_usage: UsageInfo | None = None  # over every tool round
        for round_no in range(_MAX_TOOL_ROUNDS):
            request = msgspec.convert({
                "model": agent.model, "messages": messages, "id": f"{self.id}.{agent.id}.{next(self._calls)}",
                "tools": tools, "fallbacks": agent.fallbacks, "max_tokens": agent.max_tokens,
            }, Completion)
            max_agent_calls = self._limits()[1]
            if self.agent_calls >= max_agent_calls:
                raise HubError(f"the run's agents made {self.agent_calls} completions (max_agent_calls "
                               f"{max_agent_calls})", ErrorCode.WORKFLOW_LIMIT)
            self.agent_calls += 1
            run = completions.create(request, owner=self.owner)
            self.completions.append(run)
            listener = _AgentListener(self, agent)
            self.manager.broker.subscribe(listener, run.channel.name)
            if round_no == 0:
                self.publish_agent(agent.id, AgentStarted(
                    self.id, 0, agent.id, self.place, run.id, agent.model))
            run.start()
            try:
                end = await listener.done
            finally:
                self.manager.broker.unsubscribe(listener, run.channel.name)
            if isinstance(end, ErrorMessage):
                self.usage = _add_usage(self.usage, end.usage)
                raise HubError(f"agent {agent.id!r} failed: {end.error.message}", end.error.code,
                               retryable=end.error.retryable, status=end.error.status)
            self.usage = _add_usage(self.usage, end.usage)
            agent_usage = _add_usage(agent_usage, end.usage)
            text = "".join(listener.text)
            if not listener.tool_calls or not tools:
                self.publish_agent(agent.id, AgentCompleted(
                    self.id, 0, agent.id, text, agent_usage, end.provider, end.model))
                return text
            # The model called tools: run them, then ask again with their results.
            messages.append({"role": "assistant", "content": text or None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.tool, "arguments": msgspec.json.encode(call.arguments).decode()}}
                for call in listener.tool_calls]})
            for call in listener.tool_calls:
                result, error = await self._execute(agent, call)
                self.publish_agent(agent.id, FunctionExecuted(
                    self.id, 0, agent.id, call.id, call.tool, call.arguments, result, error))
                content = msgspec.json.encode(result if error is None else {"error": error}).decode()
                messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
        raise HubError(f"agent {agent.id!r} kept calling tools after {_MAX_TOOL_ROUNDS} rounds",
                       ErrorCode.WORKFLOW_STUCK)

    async def _execute(self, agent: AgentSpec, call: ToolCallMessage) -> tuple[Any, str | None]:
        if call.tool not in agent.tools or call.tool not in FUNCTIONS:
            return None, f"agent {agent.id!r} may not call {call.tool!r}"
        if not isinstance(call.arguments, dict):
            return None, "the arguments are not a JSON object"
        function = FUNCTIONS[call.tool][0]
        try:
            result = function(**call.arguments)
            if inspect.isawaitable(result):
                result = await result
            return result, None
        except Exception as exc:  # the function's failure goes back to the model, not the run
            return None, f"{type(exc).__name__}: {exc}"


class WorkflowManager:
    """Creates, finds and retires workflow runs.

    Args:
        config: history bounds and retention.
        broker: where ``workflow:`` and ``agent:`` channels are opened.
        completions: the CompletionManager the agents' completions run in.
        definitions_dir: where ``definitionName`` is looked up.
    """

    def __init__(self, config: HubConfig, broker: Broker, completions: Any,
                 definitions_dir: pathlib.Path = DEFINITIONS_DIR) -> None:
        self.config = config
        self.broker = broker
        self.completions = completions
        self.definitions_dir = definitions_dir
        self.runs: dict[str, WorkflowRun] = {}
        self._retirements: dict[str, asyncio.TimerHandle] = {}

    def create(self, workflow_id: str | None, definition: dict[str, Any] | None, definition_name: str | None,
               run_input: dict[str, Any], owner: str = "anonymous", ticket: Ticket | None = None) -> WorkflowRun:
        """Validate and register a run (start it with :meth:`WorkflowRun.start`); ``owner`` is
        the subject asking, ``ticket`` its rate-limit ticket (released when the run ends).

        Raises:
            DefinitionError: invalid or unknown definition.
            ProtocolError: ``duplicate_id``.
            HubError: ``shutting_down``.
        """
        if self.completions.closing:
            raise HubError("the hub is shutting down; reconnect and retry", ErrorCode.SHUTTING_DOWN, retryable=True)
        spec = load_definition(definition) if definition is not None else named_definition(
            definition_name or "", self.definitions_dir)
        workflow_id = workflow_id or f"wf-{secrets.token_hex(12)}"  # 96 random bits: not guessable
        if workflow_id in self.runs:
            raise ProtocolError(f"workflow id {workflow_id!r} is already in use", ErrorCode.DUPLICATE_ID)
        run: WorkflowRun
        channel = self.completions.open_channel(f"workflow:{workflow_id}", on_idle=lambda: run.on_idle(),
                                                on_subscribe=lambda: run.on_subscribe(),
                                                snapshot=lambda: run.snapshot(),
                                                control=lambda command, argument: run.control(command, argument))
        run = WorkflowRun(self, workflow_id, spec, run_input, channel, owner, ticket)
        self.runs[workflow_id] = run
        return run

    def running_count(self) -> int:
        """Workflow runs not finished yet (they count against ``max_completions``)."""
        return sum(1 for run in self.runs.values() if not run.finished)

    def get(self, workflow_id: str) -> WorkflowRun | None:
        return self.runs.get(workflow_id)

    def finished(self, run: WorkflowRun) -> None:
        """Release the run's rate-limit ticket (with the tokens its agents used), retain its
        channels for ``retention_s``, then forget them."""
        run.on_subscribe()  # calls off the grace period: nothing is left to cancel
        if run.ticket is not None:
            usage = run.usage
            run.ticket.release(usage.prompt_tokens + usage.completion_tokens if usage is not None else None)
        loop = asyncio.get_running_loop()
        self._retirements[run.id] = loop.call_later(self.config.retention_s, self._retire, run.id)

    def finished_oldest_first(self) -> list[WorkflowRun]:
        """The finished runs still retained, oldest first (for the memory governor)."""
        runs = self.runs
        return [runs[ident] for ident in self._retirements if ident in runs]

    def retire(self, workflow_id: str) -> None:
        """Forget a finished run now, before its retention ends (the memory governor's
        second relief): its workflow and agent channels go."""
        handle = self._retirements.get(workflow_id)
        if handle is not None:
            handle.cancel()
        self._retire(workflow_id)

    def _retire(self, workflow_id: str) -> None:
        self._retirements.pop(workflow_id, None)
        run = self.runs.pop(workflow_id, None)
        if run is not None:
            self.broker.close_channel(run.channel.name)
            for channel in run._agent_channels.values():
                self.broker.close_channel(channel.name)

    async def close(self) -> None:
        """Cancel every running run (hub shutdown) and wait for them."""
        runs = [run for run in self.runs.values() if not run.finished]
        for run in runs:
            run.cancel(HubError("the hub is shutting down", ErrorCode.SHUTTING_DOWN, retryable=True))
        await asyncio.gather(*(run.task for run in runs if run.task is not None), return_exceptions=True)
        for handle in self._retirements.values():
            handle.cancel()
        self._retirements.clear()
