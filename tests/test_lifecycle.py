"""protocol/lifecycle.py: the completion and workflow state machines (in the manner of h2's
tests/test_state_machines.py: any event in any state either moves per the table or raises the
documented error)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ErrorCode, HubError, IllegalTransition
from protocol.lifecycle import (
    COMPLETION_TRANSITIONS,
    WORKFLOW_TRANSITIONS,
    CompletionEvent,
    CompletionState,
    Lifecycle,
    WorkflowEvent,
    WorkflowState,
    advance,
    is_terminal,
)

MACHINES = [
    (CompletionState, CompletionEvent, COMPLETION_TRANSITIONS, CompletionState.CREATED),
    (WorkflowState, WorkflowEvent, WORKFLOW_TRANSITIONS, WorkflowState.RUNNING),
]
ANY_EVENT = st.sampled_from([*CompletionEvent, *WorkflowEvent])
ANY_STATE = st.sampled_from([*CompletionState, *WorkflowState])


def _table(state: CompletionState | WorkflowState):
    return COMPLETION_TRANSITIONS if isinstance(state, CompletionState) else WORKFLOW_TRANSITIONS


def _own(state, event) -> bool:
    return isinstance(event, CompletionEvent) == isinstance(state, CompletionState)


# The table.


@pytest.mark.parametrize(("states", "events", "table", "initial"), MACHINES)
def test_the_table_covers_every_state_and_stays_in_its_machine(states, events, table, initial) -> None:
    assert set(table) == set(states)
    assert not is_terminal(initial)
    for moves in table.values():
        assert set(moves) <= set(events)
        assert all(isinstance(target, states) for target in moves.values())
    terminals = {state for state in states if is_terminal(state)}
    assert {state.value for state in terminals} == {"completed", "failed", "cancelled"}


def test_the_states_are_the_strings_the_hub_sends() -> None:
    assert [state.value for state in CompletionState] == ["created", "streaming", "completed", "failed", "cancelled"]
    assert [state.value for state in WorkflowState] == ["running", "completed", "failed", "cancelled"]
    assert WorkflowState.RUNNING == "running"


def test_the_documented_moves() -> None:
    assert advance(CompletionState.CREATED, CompletionEvent.START) is CompletionState.STREAMING
    assert advance(CompletionState.CREATED, CompletionEvent.FAIL) is CompletionState.FAILED
    assert advance(CompletionState.CREATED, CompletionEvent.CANCEL) is CompletionState.CANCELLED
    assert advance(CompletionState.STREAMING, CompletionEvent.FINISH) is CompletionState.COMPLETED
    assert advance(CompletionState.STREAMING, CompletionEvent.FAIL) is CompletionState.FAILED
    assert advance(CompletionState.STREAMING, CompletionEvent.CANCEL) is CompletionState.CANCELLED
    assert advance(WorkflowState.RUNNING, WorkflowEvent.FIRE) is WorkflowState.RUNNING
    assert advance(WorkflowState.RUNNING, WorkflowEvent.COMPLETE) is WorkflowState.COMPLETED
    assert advance(WorkflowState.RUNNING, WorkflowEvent.FAIL) is WorkflowState.FAILED
    assert advance(WorkflowState.RUNNING, WorkflowEvent.CANCEL) is WorkflowState.CANCELLED


def test_an_illegal_move_raises_the_documented_error() -> None:
    with pytest.raises(IllegalTransition) as caught:
        advance(CompletionState.CREATED, CompletionEvent.FINISH)
    error = caught.value
    assert isinstance(error, HubError) and error.code is ErrorCode.INTERNAL_ERROR
    assert (error.machine, error.state, error.event) == ("completion", "created", "finish")
    with pytest.raises(IllegalTransition, match="workflow in state 'completed'"):
        advance(WorkflowState.COMPLETED, WorkflowEvent.CANCEL)


def test_an_event_of_the_other_machine_is_refused_although_its_string_matches() -> None:
    assert WorkflowEvent.FAIL == CompletionEvent.FAIL  # both "fail": StrEnums compare as strings
    with pytest.raises(IllegalTransition):
        advance(CompletionState.STREAMING, WorkflowEvent.FAIL)
    with pytest.raises(IllegalTransition):
        advance(WorkflowState.RUNNING, CompletionEvent.CANCEL)
    assert not Lifecycle(CompletionState.STREAMING).can(WorkflowEvent.CANCEL)


# Properties.


@given(state=ANY_STATE, event=ANY_EVENT)
def test_any_event_in_any_state_moves_per_the_table_or_raises(state, event) -> None:
    expected = _table(state)[state].get(event) if _own(state, event) else None
    if expected is None:
        with pytest.raises(IllegalTransition) as caught:
            advance(state, event)
        assert (caught.value.state, caught.value.event) == (state.value, event.value)
    else:
        assert advance(state, event) is expected


@given(machine=st.sampled_from(MACHINES), data=st.data())
def test_a_run_reaches_at_most_one_terminal_state_once_and_never_leaves_it(machine, data) -> None:
    states, events, table, initial = machine
    lifecycle = Lifecycle(initial)
    events_seen = data.draw(st.lists(ANY_EVENT, max_size=30))
    terminals_entered = []
    for event in events_seen:
        before = lifecycle.state
        legal = lifecycle.can(event)
        assert legal == (_own(before, event) and event in table[before])
        if legal:
            after = lifecycle.advance(event)
            assert after is table[before][event] is lifecycle.state
            assert not is_terminal(before)
            if is_terminal(after):
                terminals_entered.append(after)
        else:
            with pytest.raises(IllegalTransition):
                lifecycle.advance(event)
            assert lifecycle.state is before  # a refused event changes nothing
        assert isinstance(lifecycle.state, states)
        assert lifecycle.finished == is_terminal(lifecycle.state)
    assert len(terminals_entered) <= 1
    if terminals_entered:
        assert lifecycle.state is terminals_entered[0]


def test_lifecycle_repr_and_finished() -> None:
    lifecycle = Lifecycle(CompletionState.CREATED)
    assert repr(lifecycle) == "Lifecycle(<CompletionState.CREATED: 'created'>)"
    lifecycle.advance(CompletionEvent.START)
    assert not lifecycle.finished
    lifecycle.advance(CompletionEvent.CANCEL)
    assert lifecycle.finished and lifecycle.state == "cancelled"


def test_the_module_is_pure() -> None:
    tree = ast.parse(Path(__file__).resolve().parent.parent.joinpath("protocol/lifecycle.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "enum", "collections", "types", "typing", "protocol"}
