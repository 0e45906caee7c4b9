"""The seeds' Python SDK surface (hub/client/seeds.py: CircuitBreakerStream, StreamConfig,
events with ``event_type``), against the real hub and the mock provider: first the seed's own
usage example (../shared/seeds/003, "Client Libraries and SDKs"), changed only in its URL and
model, then what each event type carries."""

from __future__ import annotations

import ast
import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hub.app import Hub
from hub.client import (
    CircuitBreakerStream,
    CompletionEventType,
    HubClient,
    StreamConfig,
    StreamEvent,
    WorkflowEvent,
    WorkflowEventType,
)
from tests.conftest import RECV_TIMEOUT_S

try:
    from hub.testing.mock_provider import expected_reasoning, expected_text
except ImportError:  # before the mock provider moved into the product
    from tools.mock_provider import expected_reasoning, expected_text

MODEL = "openai/gpt-4o-mini"
EDITOR_TOKENS = 10  # the mock fixture's default answer length
TRANSITIONS = [("start", "researched"), ("researched", "drafted"), ("drafted", "reviewed"),
               ("reviewed", "revised"), ("revised", "published")]


def ws_url(hub: Hub) -> str:
    return hub.url.replace("http", "ws", 1) + "/ws/stream"


@pytest.fixture
async def stream(hub: Hub) -> AsyncIterator[CircuitBreakerStream]:
    async with CircuitBreakerStream(StreamConfig(ws_url=ws_url(hub), base_delay_s=0.02)) as connected:
        yield connected


async def test_the_seed_usage_example_runs_as_written(hub: Hub, capsys: pytest.CaptureFixture[str]) -> None:
    # The seed watches a workflow run that someone else started: start it first.
    async with HubClient(ws_url(hub)) as starter:
        run = starter.workflow("content_creation", input={"topic": "tides [[mock tokens=6]]"},
                               workflow_id="content-pipeline-123")
        await run.collect()

    # ---- the seed's example, with the hub's URL and the mock's model ----
    async def main() -> None:
        stream = CircuitBreakerStream(StreamConfig(
            ws_url=ws_url(hub)
        ))

        await stream.connect()

        # Simple completion streaming
        async for event in stream.create_completion_stream({
            'model': MODEL,
            'messages': [{'role': 'user', 'content': 'Hello!'}]
        }):
            if event.event_type == 'CONTENT_CHUNK':
                print(event.content, end='', flush=True)
            elif event.event_type == 'COMPLETED':
                print(f"\nUsage: {event.usage}")

        # Workflow streaming
        async for event in stream.create_workflow_stream(
            'content-pipeline-123',
            on_agent_progress=lambda agent_id, progress: print(f"{agent_id}: {progress}"),
            on_state_transition=lambda from_place, to_place, data: print(f"Transition: {from_place} -> {to_place}")
        ):
            print(f"Workflow event: {event}")
        await stream.close()  # (the seed's process exits here instead)
    # ---- end of the seed's example ----

    async with asyncio.timeout(RECV_TIMEOUT_S):
        await main()
    out = capsys.readouterr().out
    text, usage, rest = out.split("\n", 2)
    assert text == expected_text(10)
    assert usage.startswith("Usage: UsageInfo(") and "completion_tokens=10" in usage
    assert re.findall(r"^Transition: (\S+) -> (\S+)$", rest, re.M) == TRANSITIONS
    progress = re.findall(r"^(researcher|writer|editor): \{'progress': [0-9.]+, 'content': '([^']*)'", rest, re.M)
    texts: dict[str, str] = {}
    for agent, piece in progress:
        texts[agent] = texts.get(agent, "") + ast.literal_eval(f"'{piece}'")  # printed as a repr
    assert texts == {"researcher": expected_text(6), "writer": expected_text(6) * 2,
                     "editor": expected_text(EDITOR_TOKENS)}
    kinds = re.findall(r"^Workflow event: WorkflowEvent\(event_type=<WorkflowEventType\.(\w+)", rest, re.M)
    assert kinds[0] == "TOKEN_CREATED" and kinds[-1] == "WORKFLOW_COMPLETED"
    assert kinds.count("TOKEN_TRANSITIONED") == 5 and kinds.count("AGENT_STARTED") == 4


async def drain(events: AsyncIterator[Any]) -> list[Any]:
    out = []
    async with asyncio.timeout(RECV_TIMEOUT_S):
        async for event in events:
            out.append(event)
    return out


async def test_completion_events_carry_the_seed_fields(stream: CircuitBreakerStream) -> None:
    events: list[StreamEvent] = await drain(stream.create_completion_stream({
        "model": "anthropic/claude-sonnet-4-5", "id": "seed-tools", "stream": True,
        "messages": [{"role": "user", "content": "Weather? [[mock tokens=5 reasoning=4 tool=get_weather seed=4]]"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    }))
    kinds = {event.event_type for event in events}
    assert kinds == {CompletionEventType.THINKING, CompletionEventType.CONTENT_CHUNK, CompletionEventType.TOOL_CALL,
                     CompletionEventType.COMPLETED}
    assert all(event.completion_id == "seed-tools" for event in events)
    assert "".join(e.content for e in events if e.event_type == "THINKING") == expected_reasoning(4, seed=4)
    assert "".join(e.content for e in events if e.event_type == "CONTENT_CHUNK") == expected_text(5, seed=4)
    (call,) = [e for e in events if e.event_type == CompletionEventType.TOOL_CALL]
    assert call.metadata["tool"] == "get_weather" and call.metadata["arguments"] == {"city": "Paris"}
    last = events[-1]
    assert last.event_type == "COMPLETED" and last.usage is not None and last.usage.completion_tokens == 9  # 5 + 4 reasoning
    assert last.metadata["finishReason"] == "tool_calls" and last.metadata["provider"] == "anthropic"


async def test_a_failed_completion_ends_with_an_error_event(stream: CircuitBreakerStream) -> None:
    events = await drain(stream.create_completion_stream({
        "model": MODEL, "messages": [{"role": "user", "content": "Hi [[mock tokens=10 error_after=3 seed=1]]"}],
    }))
    assert events[:-1] and all(e.event_type == CompletionEventType.CONTENT_CHUNK for e in events[:-1])
    assert expected_text(10, seed=1).startswith("".join(e.content for e in events[:-1]))
    last = events[-1]
    assert last.event_type == CompletionEventType.ERROR and last.error is not None
    assert last.error.code == last.metadata["code"] and last.content == last.error.message
    # The connection is still usable afterwards.
    assert await stream.client.ping() >= 0


async def test_a_workflow_stream_can_start_the_run_and_ends_with_workflow_completed(
        stream: CircuitBreakerStream) -> None:
    transitions: list[tuple[str, str, dict[str, Any]]] = []
    progress: list[tuple[str, dict[str, Any]]] = []
    events: list[WorkflowEvent] = await drain(stream.create_workflow_stream(
        "seed-run-1", on_agent_progress=lambda agent, data: progress.append((agent, data)),
        on_state_transition=lambda a, b, data: transitions.append((a, b, data)),
        definition_name="content_creation", input={"topic": "tides [[mock tokens=8 tps=2000]]"},
    ))
    assert [(a, b) for a, b, _ in transitions] == TRANSITIONS
    assert all(data["token_data"]["input"]["topic"].startswith("tides") for _, _, data in transitions)
    assert events[0].event_type == WorkflowEventType.TOKEN_CREATED and events[0].place == "start"
    assert events[-1].event_type == WorkflowEventType.WORKFLOW_COMPLETED and events[-1].place == "published"
    assert events[-1].data["result"]["results"]["writer"] == expected_text(8)
    assert [e.agent_id for e in events if e.event_type == "AGENT_COMPLETED"] == [
        "researcher", "writer", "editor", "writer"]
    researcher = "".join(data["content"] for agent, data in progress if agent == "researcher")
    assert researcher == expected_text(8)
    assert len(progress) == sum(e.event_type == "AGENT_PROGRESS" for e in events)
    assert all(e.workflow_id == "seed-run-1" for e in events)


async def test_a_workflow_that_is_not_there_ends_with_an_error_event(stream: CircuitBreakerStream) -> None:
    events = await drain(stream.create_workflow_stream("never-was"))
    assert [e.event_type for e in events] == [WorkflowEventType.ERROR]
    assert events[0].data["code"] == "unknown_channel"
