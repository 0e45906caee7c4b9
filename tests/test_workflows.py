"""Workflow runs over real sockets against the mock provider: definitions and their
validation, the exact event order, conditions, failing agents with and without fallbacks,
registered functions, cancel, resume, type-level and agent channels."""

from __future__ import annotations

from typing import Any

import pytest

from hub.workflows import DefinitionError, load_definition, named_definition, render
from protocol.messages import (
    AgentCompleted,
    AgentProgress,
    AgentStarted,
    ErrorMessage,
    FunctionExecuted,
    Subscribed,
    TokenCreated,
    WorkflowCompleted,
    WorkflowSnapshot,
    WorkflowTransition,
)
from tests.conftest import hub_config, run_test_hub
from tools.mock_provider import expected_text

#: Workflows on every broker (tests/conftest.py: redis2 watches a run from another node).
pytestmark = pytest.mark.brokers("memory", "redis", "redis2")

OPENAI = "openai/gpt-4o-mini"
ANTHROPIC = "anthropic/claude-3-haiku-20240307"


def two_step(**agent_overrides: Any) -> dict[str, Any]:
    """ask -> answer -> done, with a condition choosing `done` or `other`."""
    first = {"id": "asker", "model": OPENAI, "prompt": "Ask about {input.topic}"}
    first.update(agent_overrides)
    return {
        "places": ["start", "asked", "done", "other"],
        "initialPlace": "start",
        "agents": [first, {"id": "answerer", "model": ANTHROPIC, "prompt": "Answer about {input.topic}: {results.asker}"}],
        "transitions": [
            {"id": "ask", "from": "start", "to": "asked", "agent": "asker"},
            {"id": "to-other", "from": "asked", "to": "other", "condition": {"path": "input.route", "op": "==", "value": "other"}},
            {"id": "answer", "from": "asked", "to": "done", "agent": "answerer"},
        ],
        "finalPlaces": ["done", "other"],
    }


async def run_until_end(client: Any, workflow_id: str) -> list[Any]:
    messages = []
    while True:
        message = await client.recv()
        if getattr(message, "workflow_id", None) != workflow_id or isinstance(message, Subscribed):
            continue
        messages.append(message)
        if isinstance(message, (WorkflowCompleted, ErrorMessage)):
            return messages


def kinds(messages: list[Any]) -> list[str]:
    """Event kinds with consecutive agent_progress collapsed into one entry."""
    out: list[str] = []
    for m in messages:
        kind = type(m).__name__ + (f":{m.agent_id}" if hasattr(m, "agent_id") else "")
        kind += f":{m.transition_id}" if isinstance(m, WorkflowTransition) else ""
        if not (out and out[-1] == kind and isinstance(m, AgentProgress)):
            out.append(kind)
    return out


def agent_text(messages: list[Any], agent: str) -> str:
    return "".join(m.content for m in messages if isinstance(m, AgentProgress) and m.agent_id == agent)


# Definitions.


def test_the_shipped_definition_loads():
    definition = named_definition("content_creation")
    assert [a.id for a in definition.agents] == ["researcher", "writer", "editor"]
    assert definition.finals() == {"published"}


@pytest.mark.parametrize("change, key", [
    (lambda d: d["transitions"][2].update(to="nowhere"), "transitions[2].to: unknown place 'nowhere'"),
    (lambda d: d["transitions"][0].update(agent="ghost"), "transitions[0].agent: unknown agent 'ghost'"),
    (lambda d: d["agents"][0].update(tools=["rm_rf"]), "agents[0].tools: no registered function 'rm_rf'"),
    (lambda d: d["transitions"][1]["condition"].update(op="~="), "transitions[1].condition.op"),
    (lambda d: d.update(initialPlace="begin"), "initialPlace: unknown place 'begin'"),
    (lambda d: d["agents"][1].pop("model"), "agents[1]: Object missing required field `model`"),
    (lambda d: d["transitions"][0].update(colour="red"), "transitions[0]: Object contains unknown field `colour`"),
    (lambda d: d.update(finalPlaces=["mars"]), "finalPlaces: unknown place 'mars'"),
])
def test_invalid_definitions_name_the_key(change, key):
    definition = two_step()
    change(definition)
    with pytest.raises(DefinitionError) as raised:
        load_definition(definition)
    assert key in raised.value.message and raised.value.code == "invalid_workflow"


def test_templates_read_dotted_paths():
    data = {"input": {"topic": "tides", "n": 3}, "results": {"a": "A!"}}
    assert render("{input.topic} / {results.a} / {input.n} / {results.missing}.", data) == "tides / A! / 3 / ."


# Runs.


async def test_a_run_streams_every_step_in_order(mock, ws_connect):
    client = await ws_connect()
    await client.send({"type": "create_workflow", "workflowId": "w1", "definition": two_step(),
                       "input": {"topic": "tides [[mock tokens=4]]"}})
    ack = await client.recv()
    assert isinstance(ack, Subscribed) and ack.workflow_id == "w1" and ack.recovered == {"workflow:w1": True}
    messages = await run_until_end(client, "w1")
    assert kinds(messages) == [
        "TokenCreated", "AgentStarted:asker", "AgentProgress:asker", "AgentCompleted:asker",
        "WorkflowTransition:ask", "AgentStarted:answerer", "AgentProgress:answerer", "AgentCompleted:answerer",
        "WorkflowTransition:answer", "WorkflowCompleted"]
    assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
    assert agent_text(messages, "asker") == agent_text(messages, "answerer") == expected_text(4)
    done = messages[-1]
    assert done.place == "done" and done.result["results"] == {"asker": expected_text(4), "answerer": expected_text(4)}
    assert done.usage is not None and done.usage.completion_tokens == 8
    started = [m for m in messages if isinstance(m, AgentStarted)]
    assert [(m.agent_id, m.model) for m in started] == [("asker", OPENAI), ("answerer", ANTHROPIC)]
    assert messages[-1].result["input"]["topic"].startswith("tides")
    assert all(0 <= m.progress < 1 for m in messages if isinstance(m, AgentProgress))


async def test_a_condition_routes_the_token(ws_connect):
    client = await ws_connect()
    await client.send({"type": "create_workflow", "workflowId": "w2", "definition": two_step(),
                       "input": {"topic": "x [[mock tokens=2]]", "route": "other"}})
    messages = await run_until_end(client, "w2")
    transitions = [m.transition_id for m in messages if isinstance(m, WorkflowTransition)]
    assert transitions == ["ask", "to-other"] and messages[-1].place == "other"
    assert "answerer" not in messages[-1].result["results"]


async def test_a_failing_agent_fails_the_run_unless_a_fallback_serves(mock, ws_connect):
    client = await ws_connect()
    failing = "x [[mock script=400 script_id=wf-fail]]"
    await client.send({"type": "create_workflow", "workflowId": "w3", "definition": two_step(), "input": {"topic": failing}})
    failed = await run_until_end(client, "w3")
    assert isinstance(failed[-1], ErrorMessage) and failed[-1].error.code == "provider_error"
    assert "asker" in failed[-1].error.message and failed[-1].workflow_id == "w3"
    # With a fallback the same fault is served by another provider (503 is retried, then fails over).
    rescued = "x [[mock tokens=3 script=503,503,503 script_id=wf-rescue]]"
    await client.send({"type": "create_workflow", "workflowId": "w4", "definition": two_step(fallbacks=[ANTHROPIC]),
                       "input": {"topic": rescued}})
    messages = await run_until_end(client, "w4")
    assert isinstance(messages[-1], WorkflowCompleted)
    [asker] = [m for m in messages if isinstance(m, AgentCompleted) and m.agent_id == "asker"]
    assert asker.provider == "anthropic" and asker.result == expected_text(3)


async def test_registered_functions_run_for_tool_calls(ws_connect):
    definition = two_step(tools=["get_weather"])
    client = await ws_connect()
    await client.send({"type": "create_workflow", "workflowId": "w5", "definition": definition,
                       "input": {"topic": "weather [[mock tokens=3 tool=get_weather]]"}})
    messages = await run_until_end(client, "w5")
    [executed] = [m for m in messages if isinstance(m, FunctionExecuted)]
    assert executed.agent_id == "asker" and executed.name == "get_weather" and executed.arguments == {"city": "Paris"}
    assert executed.result["city"] == "Paris" and executed.error is None
    assert isinstance(messages[-1], WorkflowCompleted)
    assert messages[-1].result["results"]["asker"] == expected_text(3)  # the answer after the function's result


async def test_cancel_mid_run_stops_every_running_completion_upstream(mock, ws_connect):
    client = await ws_connect()
    await client.send({"type": "create_workflow", "workflowId": "w6", "definition": two_step(),
                       "input": {"topic": "slow [[mock tokens=500 tps=50]]"}})
    while not isinstance(await client.recv(), AgentProgress):
        pass
    await client.send({"type": "cancel_workflow", "workflowId": "w6"})
    messages = await run_until_end(client, "w6")
    assert isinstance(messages[-1], ErrorMessage) and messages[-1].error.code == "cancelled"
    for _ in range(200):
        if mock.stats["disconnected"] == 1:
            break
        import asyncio

        await asyncio.sleep(0.01)
    assert mock.stats["disconnected"] == 1 and mock.stats["active"] == 0


async def test_resume_mid_run_has_no_gap_and_snapshots_when_the_history_is_short(mock, ws_factory):
    async with run_test_hub(hub_config(mock, history_max_events=4)) as hub:
        first = await ws_factory(hub)
        await first.send({"type": "create_workflow", "workflowId": "w7", "definition": two_step(),
                          "input": {"topic": "x [[mock tokens=30 tps=300]]"}})
        ack = await first.recv()
        epoch = ack.epochs["workflow:w7"]
        head = [await first.recv() for _ in range(3)]
        await first.connection.close()
        again = await ws_factory(hub)
        await again.send({"type": "subscribe_workflow", "workflowId": "w7",
                          "since": {"seq": head[-1].seq, "epoch": epoch}})
        resumed_ack = await again.recv()
        rest = await run_until_end(again, "w7")
        if resumed_ack.recovered["workflow:w7"]:
            assert rest[0].seq == head[-1].seq + 1
        else:
            assert isinstance(rest[0], WorkflowSnapshot) and rest[0].epoch == epoch
            assert [m.seq for m in rest[1:]] == list(range(rest[0].seq + 1, rest[0].seq + len(rest)))
        late = await ws_factory(hub)
        await late.send({"type": "subscribe_workflow", "workflowId": "w7"})
        late_ack = await late.recv()
        assert late_ack.recovered == {"workflow:w7": False}
        snapshot = await late.recv()
        assert isinstance(snapshot, WorkflowSnapshot) and snapshot.status == "completed" and snapshot.place == "done"
        assert snapshot.data["results"]["answerer"] == expected_text(30)


async def test_type_level_and_agent_channel_subscriptions(ws_connect):
    watcher = await ws_connect()
    await watcher.send({"type": "subscribe", "streams": ["workflow", "agent_status"]})
    assert isinstance(await watcher.recv(), Subscribed)
    client = await ws_connect()
    await client.send({"type": "create_workflow", "workflowId": "w8", "definition": two_step(),
                       "input": {"topic": "x [[mock tokens=2]]"}})
    mine = await run_until_end(client, "w8")
    received = []
    while not (received and isinstance(received[-1], WorkflowCompleted)):
        received.append(await watcher.recv())
    # Each agent event went out on workflow:w8 and on agent:w8.<agent>: the watcher of both
    # stream types gets both copies, and the workflow channel's events in order.
    agent_events = [m for m in mine if isinstance(m, (AgentStarted, AgentProgress, AgentCompleted, FunctionExecuted))]
    assert len(received) == len(mine) + len(agent_events)
    remaining = iter(received)
    assert all(any(r == m for r in remaining) for m in mine)  # mine is a subsequence of received
    late = await ws_connect()
    await late.send({"type": "subscribe", "channels": ["agent:w8.asker"]})
    assert isinstance(await late.recv(), Subscribed)
    replay = [await late.recv() for _ in range(sum(1 for m in agent_events if m.agent_id == "asker"))]
    assert [type(m).__name__ for m in replay][0] == "AgentStarted" and isinstance(replay[-1], AgentCompleted)
    assert [m.seq for m in replay] == list(range(1, len(replay) + 1))


async def test_bad_workflow_requests_get_coded_errors(ws_connect):
    client = await ws_connect()
    broken = two_step()
    broken["transitions"][0]["to"] = "mars"
    await client.send({"type": "create_workflow", "workflowId": "bad", "definition": broken, "input": {}})
    error = await client.recv()
    assert error.error.code == "invalid_workflow" and "transitions[0].to" in error.error.message
    await client.send({"type": "create_workflow", "definitionName": "no_such_flow", "input": {}})
    error = await client.recv()
    assert error.error.code == "unknown_workflow_definition" and "content_creation" in error.error.message
    await client.send({"type": "cancel_workflow", "workflowId": "nope"})
    assert (await client.recv()).error.code == "unknown_workflow"
    await client.send({"type": "create_workflow", "definitionName": "x", "definition": two_step()})
    assert (await client.recv()).error.code == "invalid_message"


async def test_content_creation_runs_end_to_end_over_the_mock(ws_connect):
    client = await ws_connect()
    await client.send({"type": "create_workflow", "workflowId": "cc", "definitionName": "content_creation",
                       "input": {"topic": "tides [[mock tokens=5]]", "audience": "children"}})
    messages = await run_until_end(client, "cc")
    transitions = [m.transition_id for m in messages if isinstance(m, WorkflowTransition)]
    # The mock's editor never says APPROVED: the token goes through `revise`, the writer again.
    assert transitions == ["research", "write", "review", "revise", "rewrite"]
    assert isinstance(messages[0], TokenCreated) and isinstance(messages[-1], WorkflowCompleted)
    assert set(messages[-1].result["results"]) == {"researcher", "writer", "editor"}
    assert [m.agent_id for m in messages if isinstance(m, AgentStarted)] == ["researcher", "writer", "editor", "writer"]
