"""The lifecycles of a completion and of a workflow run, as explicit states and a table.

Rules (in the manner of h11's ``_state.py``):

- Everything that decides which state a run may move to lives in this file. A run keeps its
  state in a :class:`Lifecycle` and moves it only with :meth:`Lifecycle.advance`; it never
  assigns a state string itself.
- The table is data (:data:`COMPLETION_TRANSITIONS`, :data:`WORKFLOW_TRANSITIONS`): a state
  maps each event it accepts to the next state. An event a state does not list is a bug of
  the hub (the hub drives these machines, never a client), and :func:`advance` raises
  :class:`~protocol.errors.IllegalTransition` (a :class:`~protocol.errors.HubError` with
  code ``internal_error``) and leaves the state as it was.
- A terminal state accepts no event: a run reaches exactly one terminal state, once, and
  publishes exactly one terminal message (``completed`` or ``error``) when it gets there.
  Callers that may race (a cancel arriving as the stream ends) ask :meth:`Lifecycle.can`
  first, or check :attr:`Lifecycle.finished`.
- Pure: no I/O, no clock, no asyncio. The states are ``StrEnum`` members equal to the strings
  the hub already sends (``workflow_snapshot.status``), so adopting them changes no byte on
  the wire.

Theory of operation::

    completion
        created ──START──▶ streaming ──FINISH──▶ completed
           │                  ├──────FAIL───▶ failed
           │                  └──────CANCEL─▶ cancelled
           ├──FAIL (no model could be called: unknown model, provider not configured,
           │        a request that cannot be translated)──▶ failed
           └──CANCEL (cancelled before it started)──▶ cancelled

    workflow run (its task starts with the run, so it begins ``running``)
        running ──FIRE (a transition fired; the token moved)──▶ running
           ├──COMPLETE (the token reached a final place)──▶ completed
           ├──FAIL (an agent failed, the net is stuck, a bug)──▶ failed
           └──CANCEL (cancel_workflow, shutdown)──▶ cancelled

Retries and fallbacks of a completion happen inside ``streaming``; they are not moves of this
machine.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Generic, TypeVar

from protocol.errors import IllegalTransition

__all__ = [
    "CompletionState",
    "CompletionEvent",
    "WorkflowState",
    "WorkflowEvent",
    "COMPLETION_TRANSITIONS",
    "WORKFLOW_TRANSITIONS",
    "IllegalTransition",
    "Lifecycle",
    "advance",
    "is_terminal",
]


class CompletionState(enum.StrEnum):
    """Where a completion is (``CompletionRun.state``)."""

    CREATED = "created"
    STREAMING = "streaming"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CompletionEvent(enum.StrEnum):
    """What happens to a completion."""

    START = "start"  # a model was resolved and the upstream task started
    FINISH = "finish"  # the provider's stream ended (StreamEnd): ``completed`` is published
    FAIL = "fail"  # an error ends it: ``error`` is published
    CANCEL = "cancel"  # cancel, grace period over, HTTP client gone, shutdown: ``error`` cancelled


class WorkflowState(enum.StrEnum):
    """Where a workflow run is (``WorkflowRun.status``, ``workflow_snapshot.status``)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkflowEvent(enum.StrEnum):
    """What happens to a workflow run."""

    FIRE = "fire"  # a transition fired (``workflow_transition``)
    COMPLETE = "complete"  # the token reached a final place (``workflow_completed``)
    FAIL = "fail"  # an agent failed, no transition can fire, or a bug (``error``)
    CANCEL = "cancel"  # cancel_workflow or shutdown (``error`` cancelled)


# The tables. Terminal states map to nothing.

COMPLETION_TRANSITIONS: Mapping[CompletionState, Mapping[CompletionEvent, CompletionState]] = MappingProxyType({
    CompletionState.CREATED: MappingProxyType({
        CompletionEvent.START: CompletionState.STREAMING,
        CompletionEvent.FAIL: CompletionState.FAILED,
        CompletionEvent.CANCEL: CompletionState.CANCELLED,
    }),
    CompletionState.STREAMING: MappingProxyType({
        CompletionEvent.FINISH: CompletionState.COMPLETED,
        CompletionEvent.FAIL: CompletionState.FAILED,
        CompletionEvent.CANCEL: CompletionState.CANCELLED,
    }),
    CompletionState.COMPLETED: MappingProxyType({}),
    CompletionState.FAILED: MappingProxyType({}),
    CompletionState.CANCELLED: MappingProxyType({}),
})

WORKFLOW_TRANSITIONS: Mapping[WorkflowState, Mapping[WorkflowEvent, WorkflowState]] = MappingProxyType({
    WorkflowState.RUNNING: MappingProxyType({
        WorkflowEvent.FIRE: WorkflowState.RUNNING,
        WorkflowEvent.COMPLETE: WorkflowState.COMPLETED,
        WorkflowEvent.FAIL: WorkflowState.FAILED,
        WorkflowEvent.CANCEL: WorkflowState.CANCELLED,
    }),
    WorkflowState.COMPLETED: MappingProxyType({}),
    WorkflowState.FAILED: MappingProxyType({}),
    WorkflowState.CANCELLED: MappingProxyType({}),
})


S = TypeVar("S", CompletionState, WorkflowState)
E = TypeVar("E", CompletionEvent, WorkflowEvent)


def _machine(state: CompletionState | WorkflowState) -> str:
    return "completion" if isinstance(state, CompletionState) else "workflow"


def _following(state: S, event: CompletionEvent | WorkflowEvent) -> S | None:
    # The events of both machines are StrEnums, so WorkflowEvent.FAIL == CompletionEvent.FAIL
    # ("fail"): an event of the other machine must be refused by its type, not by a lookup.
    if isinstance(state, CompletionState):
        return COMPLETION_TRANSITIONS[state].get(event) if isinstance(event, CompletionEvent) else None
    return WORKFLOW_TRANSITIONS[state].get(event) if isinstance(event, WorkflowEvent) else None


def advance(state: S, event: CompletionEvent | WorkflowEvent) -> S:
    """The state after ``event`` in ``state``, per the machine's table.

    Raises:
        IllegalTransition: the table has no move for ``event`` in ``state`` (a terminal state,
            or an event of the other machine); the caller's state is unchanged.
    """
    following = _following(state, event)
    if following is None:
        raise IllegalTransition(_machine(state), state.value, str(event))
    return following


def is_terminal(state: CompletionState | WorkflowState) -> bool:
    """True for a state no event leaves: completed, failed or cancelled."""
    if isinstance(state, CompletionState):
        return not COMPLETION_TRANSITIONS[state]
    return not WORKFLOW_TRANSITIONS[state]


class Lifecycle(Generic[S]):
    """The state of one run, moved only through the table.

    ``Lifecycle(CompletionState.CREATED)`` for a completion, ``Lifecycle(WorkflowState.RUNNING)``
    for a workflow run.

    Attributes:
        state: where the run is; equal to the string the hub sends for it.
    """

    __slots__ = ("state",)

    def __init__(self, initial: S) -> None:
        self.state: S = initial

    def __repr__(self) -> str:
        return f"Lifecycle({self.state!r})"

    @property
    def finished(self) -> bool:
        """True once the run is in a terminal state."""
        return is_terminal(self.state)

    def can(self, event: CompletionEvent | WorkflowEvent) -> bool:
        """Whether ``event`` is a legal move now (for callers that may race with the end)."""
        return _following(self.state, event) is not None

    def advance(self, event: CompletionEvent | WorkflowEvent) -> S:
        """Move by ``event`` and return the new state.

        Raises:
            IllegalTransition: no such move from the current state; the state is unchanged.
        """
        self.state = advance(self.state, event)
        return self.state
