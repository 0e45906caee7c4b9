"""Workflows cannot run away (issue 12): definitions that could fire forever are refused when
created, and every run is bounded in steps, agent calls and time. Real sockets, the mock
provider; the hub keeps answering while a bounded run loops."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from hub.app import run_hub
from hub.workflows import DefinitionError, load_definition
from protocol.messages import ErrorMessage, WorkflowTransition
from tests.conftest import hub_config
from tests.test_workflows import OPENAI, run_until_end


def looping(**extra: Any) -> dict[str, Any]:
    """writer <-> editor forever: the condition to leave is never true (an agent on each step)."""
    return {
        "places": ["draft", "review", "done"],
        "initialPlace": "draft",
        "agents": [{"id": "writer", "model": OPENAI, "prompt": "write [[mock tokens=2]]"},
                   {"id": "editor", "model": OPENAI, "prompt": "edit [[mock tokens=2]]"}],
        "transitions": [
            {"id": "write", "from": "draft", "to": "review", "agent": "writer"},
            {"id": "accept", "from": "review", "to": "done",
             "condition": {"path": "input.never", "op": "exists"}},
            {"id": "redo", "from": "review", "to": "draft", "agent": "editor"},
        ],
        "finalPlaces": ["done"],
        **extra,
    }


@pytest.mark.parametrize(("definition", "message"), [
    # The attack of the issue: a cycle without agents, and no way to the final place.
    ({"places": ["a", "b", "z"], "initialPlace": "a", "finalPlaces": ["z"],
      "transitions": [{"id": "ab", "from": "a", "to": "b"}, {"id": "ba", "from": "b", "to": "a"}]},
     "places: 'a' is reachable from initialPlace but no final place can be reached from it"),
    # A cycle without agents that could leave it: still refused.
    ({"places": ["a", "b", "z"], "initialPlace": "a", "finalPlaces": ["z"],
      "transitions": [{"id": "ab", "from": "a", "to": "b"}, {"id": "ba", "from": "b", "to": "a"},
                      {"id": "bz", "from": "b", "to": "z", "condition": {"path": "input.go", "op": "exists"}}]},
     "transitions: the cycle a -> b -> a has no agent on it"),
    ({**looping(), "maxSteps": 0}, "maxSteps: must be > 0"),
])
def test_definitions_that_could_run_forever_are_refused(definition: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError) as error:
        load_definition(definition)
    assert message in str(error.value) and error.value.code == "invalid_workflow"


def test_a_loop_with_agents_is_allowed_its_limits_bound_it() -> None:
    assert load_definition(looping()).finals() == {"done"}


async def _run(hub: Any, ws_factory: Any, definition: dict[str, Any], workflow_id: str) -> list[Any]:
    client = await ws_factory(hub)
    await client.send({"type": "create_workflow", "workflowId": workflow_id, "definition": definition,
                       "input": {"topic": "t"}})
    return await run_until_end(client, workflow_id)


async def test_max_steps_ends_a_looping_run_and_the_hub_keeps_answering(mock, ws_factory) -> None:
    async with run_hub(hub_config(mock, workflow_max_steps=7)) as hub:
        async with aiohttp.ClientSession() as http:
            running = asyncio.create_task(_run(hub, ws_factory, looping(), "loop-steps"))
            while not running.done():  # /healthz answers all along
                async with http.get(hub.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as response:
                    assert response.status == 200
                await asyncio.sleep(0.01)
        messages = running.result()
    transitions = [m for m in messages if isinstance(m, WorkflowTransition)]
    end = messages[-1]
    assert len(transitions) == 7
    assert isinstance(end, ErrorMessage) and end.error.code == "workflow_limit" and "max_steps 7" in end.error.message


async def test_a_definition_may_lower_the_agent_calls(mock, ws_factory) -> None:
    async with run_hub(hub_config(mock)) as hub:
        messages = await _run(hub, ws_factory, looping(maxAgentCalls=3), "loop-calls")
    end = messages[-1]
    assert isinstance(end, ErrorMessage) and end.error.code == "workflow_limit"
    assert "max_agent_calls 3" in end.error.message
    assert hub.workflows.get("loop-calls").agent_calls == 3


async def test_max_duration_ends_a_slow_run(mock, ws_factory) -> None:
    slow = looping()
    slow["agents"][0]["prompt"] = "write [[mock tokens=50 tps=20]]"  # 2.5 s of writing
    async with run_hub(hub_config(mock)) as hub:
        messages = await _run(hub, ws_factory, {**slow, "maxDurationS": 0.3}, "loop-time")
    end = messages[-1]
    assert isinstance(end, ErrorMessage) and end.error.code == "workflow_limit"
    assert "longer than 0.3 s" in end.error.message


async def test_workflow_runs_count_against_the_per_connection_limit(mock, ws_factory) -> None:
    slow = looping()
    slow["agents"][0]["prompt"] = "write [[mock tokens=40 tps=20]]"
    async with run_hub(hub_config(mock, max_completions_per_connection=2)) as hub:
        client = await ws_factory(hub)
        for n in range(5):
            await client.send({"type": "create_workflow", "workflowId": f"many-{n}", "definition": slow,
                               "input": {}, "rid": f"r{n}"})
        answers: dict[str, Any] = {}
        while len(answers) < 5:
            message = await client.recv()
            if getattr(message, "rid", None) is not None:
                answers[message.rid] = message
        assert [type(answers[f"r{n}"]).__name__ for n in range(5)] == ["Subscribed"] * 2 + ["ErrorMessage"] * 3
        assert {answers[f"r{n}"].error.code for n in range(2, 5)} == {"too_many_completions"}
        assert sorted(hub.workflows.runs) == ["many-0", "many-1"]


async def test_a_disconnected_creator_s_run_follows_the_grace_period(mock, ws_factory) -> None:
    slow = looping()
    slow["agents"][0]["prompt"] = "write [[mock tokens=100 tps=20]]"  # 5 s of writing
    async with run_hub(hub_config(mock, grace_period_s=0.2)) as hub:
        creator = await ws_factory(hub)
        await creator.send({"type": "create_workflow", "workflowId": "left", "definition": slow, "input": {}})
        await creator.recv()  # subscribed
        await creator.connection.close()
        run = hub.workflows.get("left")
        for _ in range(300):
            if run.finished:
                break
            await asyncio.sleep(0.01)
        assert run.status == "cancelled" and run.error is not None and "no subscriber for 0.2 s" in run.error.message
        assert all(completion.finished for completion in run.completions)  # its agents stopped upstream too
