"""Workflows through the Python SDK (hub/client.py: HubClient.workflow, subscribe_workflow,
cancel_workflow) and ``cbhub demo workflow``, against the real hub and the mock provider over
real sockets: the exact event order of content_creation, every agent's exact text, resume after
a dropped connection (replay, and the three ``workflow_snapshot`` cases), cancel.

content_creation's researcher and writer prompts carry the run's ``input.topic``, so a
``[[mock tokens=N ...]]`` directive in the topic reaches them; the editor's prompt holds only
the writer's draft, so the editor answers with the mock's defaults (tests/conftest.py: 10
tokens, unpaced). The mock's words never contain APPROVED, so the editor's verdict routes the
token to ``revised`` and the writer works a second time.

Reconnects are held (the client's ``_open`` waits on an event) until the hub's run has reached
the state a test wants, so what the client missed does not depend on timing.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from hub.app import Hub, run_hub
from hub.client import AgentRun, HubClient, HubRequestError, HubStreamError, WorkflowResult, WorkflowStream
from hub.workflows import WorkflowRun
from protocol.messages import (
    AgentCompleted,
    AgentProgress,
    AgentStarted,
    TokenCreated,
    WorkflowCompleted,
    WorkflowSnapshot,
    WorkflowTransition,
    encode,
)
from tests.conftest import RECV_TIMEOUT_S, hub_config
from tests.support import ROOT
from tools.mock_provider import MockProvider, expected_text

EDITOR_TOKENS = 10  # the mock fixture's default answer length (the editor's prompt has no directive)
AGENT_EVENTS = (AgentStarted, AgentProgress, AgentCompleted)


def ws_url(hub: Hub) -> str:
    return hub.url.replace("http", "ws", 1) + "/ws/stream"


def topic(directive: str) -> dict[str, str]:
    return {"topic": f"tides [[mock {directive}]]", "audience": "sailors"}


@pytest.fixture
async def client(hub: Hub) -> AsyncIterator[HubClient]:
    async with HubClient(ws_url(hub), base_delay_s=0.01, max_delay_s=0.02) as connected:
        yield connected


@pytest.fixture
async def short_history_hub(mock: MockProvider) -> AsyncIterator[Hub]:
    """A hub whose channels keep 2 events: any larger gap is resumed from a snapshot."""
    async with run_hub(hub_config(mock, history_max_events=2)) as running:
        yield running


async def drain(stream: WorkflowStream, on_event: Callable[[Any], Any] | None = None) -> list[Any]:
    events = []
    async with asyncio.timeout(RECV_TIMEOUT_S):
        async for event in stream:
            events.append(event)
            if on_event is not None:
                outcome = on_event(event)
                if asyncio.iscoroutine(outcome):
                    await outcome
    return events


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(RECV_TIMEOUT_S):
        while not predicate():
            await asyncio.sleep(0.002)


def shape(events: list[Any]) -> list[tuple[str, str]]:
    """The events as (type, agent or transition or place), runs of agent_progress collapsed."""
    out: list[tuple[str, str]] = []
    for event in events:
        kind = type(event).__name__
        label = (getattr(event, "agent_id", None) or getattr(event, "transition_id", None)
                 or getattr(event, "place", None) or "")
        if isinstance(event, AgentProgress) and out and out[-1] == (kind, label):
            continue
        out.append((kind, label))
    return out


def turn_texts(events: list[Any]) -> list[tuple[str, str]]:
    """(agent, concatenated agent_progress content) per agent turn as yielded: a turn begins
    at agent_started, or at the first progress of another agent (one begun while away)."""
    turns: list[list[str]] = []
    ended = True
    for event in events:
        if isinstance(event, AgentStarted):
            turns.append([event.agent_id, ""])
            ended = False
        elif isinstance(event, AgentProgress):
            if ended or turns[-1][0] != event.agent_id:
                turns.append([event.agent_id, ""])
                ended = False
            turns[-1][1] += event.content
        elif isinstance(event, AgentCompleted):
            ended = True
    return [(agent, text) for agent, text in turns]


EXPECTED_SHAPE = [
    ("TokenCreated", "start"),
    ("AgentStarted", "researcher"), ("AgentProgress", "researcher"), ("AgentCompleted", "researcher"),
    ("WorkflowTransition", "research"),
    ("AgentStarted", "writer"), ("AgentProgress", "writer"), ("AgentCompleted", "writer"),
    ("WorkflowTransition", "write"),
    ("AgentStarted", "editor"), ("AgentProgress", "editor"), ("AgentCompleted", "editor"),
    ("WorkflowTransition", "review"),
    ("WorkflowTransition", "revise"),
    ("AgentStarted", "writer"), ("AgentProgress", "writer"), ("AgentCompleted", "writer"),
    ("WorkflowTransition", "rewrite"),
    ("WorkflowCompleted", "published"),
]


def expected_results(tokens: int) -> dict[str, str]:
    return {"researcher": expected_text(tokens), "writer": expected_text(tokens), "editor": expected_text(EDITOR_TOKENS)}


def expected_turns(tokens: int) -> list[tuple[str, str]]:
    results = expected_results(tokens)
    return [(agent, results[agent]) for agent in ("researcher", "writer", "editor", "writer")]


def held_reconnect(client: HubClient) -> asyncio.Event:
    """Make the client's reconnect wait until the returned event is set."""
    release = asyncio.Event()
    open_ws = client._open

    async def held() -> Any:
        await release.wait()
        return await open_ws()

    client._open = held  # type: ignore[method-assign]
    return release


def drop(client: HubClient) -> None:
    """Drop the client's TCP connection without a close frame (the client sees 1006)."""
    client.websocket.transport.abort()


# The run, event by event.


async def test_content_creation_streams_every_event_in_order_with_exact_texts(hub: Hub, client: HubClient) -> None:
    run_input = topic("tokens=12")
    stream = client.workflow("content_creation", input=run_input)
    events = await drain(stream)
    assert shape(events) == EXPECTED_SHAPE
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert {event.workflow_id for event in events} == {stream.id} and stream.id.startswith("py-wf-")
    assert turn_texts(events) == expected_turns(12)
    assert [e.result for e in events if isinstance(e, AgentCompleted)] == [text for _, text in expected_turns(12)]
    transitions = [e for e in events if isinstance(e, WorkflowTransition)]
    assert [(t.from_place, t.to_place) for t in transitions] == [
        ("start", "researched"), ("researched", "drafted"), ("drafted", "reviewed"), ("reviewed", "revised"),
        ("revised", "published")]
    assert transitions[0].data["results"] == {"researcher": expected_text(12)}
    started = [e for e in events if isinstance(e, AgentStarted)]
    assert [(s.place, s.model) for s in started] == [
        ("start", "openai/gpt-4o-mini"), ("researched", "anthropic/claude-3-5-haiku-latest"),
        ("drafted", "google/gemini-2.0-flash"), ("revised", "anthropic/claude-3-5-haiku-latest")]
    assert isinstance(events[0], TokenCreated) and events[0].data == {"input": run_input, "results": {}}
    final = events[-1]
    assert isinstance(final, WorkflowCompleted)
    assert final.result == {"input": run_input, "results": expected_results(12)}
    assert final.usage is not None and final.usage.completion_tokens == 12 * 3 + EDITOR_TOKENS

    result = stream.result
    assert isinstance(result, WorkflowResult) and result.done and result.status == "completed"
    assert result.place == "published" and result.data == final.result and result.results == expected_results(12)
    assert result.usage == final.usage and result.error is None and result.snapshots == 0
    assert [t.transition_id for t in result.transitions] == ["research", "write", "review", "revise", "rewrite"]
    assert all(isinstance(turn, AgentRun) and turn.done and not turn.ended_unseen for turn in result.agents)
    assert [(turn.agent_id, turn.text, turn.result) for turn in result.agents] == [
        (agent, text, text) for agent, text in expected_turns(12)]
    assert [turn.completion_id for turn in result.agents] == [s.completion_id for s in started]
    assert [turn.provider for turn in result.agents] == ["openai", "anthropic", "google", "anthropic"]
    assert all(turn.progress == 1.0 and turn.duration_s is not None and turn.ttft_s is not None for turn in result.agents)
    assert result.current is None and result.duration_s is not None


async def test_result_tracks_the_place_and_the_agent_at_work_while_running(client: HubClient) -> None:
    stream = client.workflow("content_creation", input=topic("tokens=40 tps=400"))
    seen = []
    async for event in stream:
        result = stream.result
        if isinstance(event, AgentProgress) and event.agent_id == "writer" and not seen:
            seen.append((result.place, result.current_agent, result.status, dict(result.results)))
            assert result.current is not None and result.current.completion_id is not None
            assert expected_text(40).startswith(result.current.text)
            assert result.usage is not None and result.usage.completion_tokens == 40  # the researcher's
    assert seen == [("researched", "writer", "running", {"researcher": expected_text(40)})]


async def test_a_second_client_subscribing_gets_the_identical_events(hub: Hub, client: HubClient) -> None:
    stream = client.workflow("content_creation", input=topic("tokens=30 tps=600"), workflow_id="shared-1")
    await stream.start()
    async with HubClient(ws_url(hub)) as other:
        watched = other.subscribe_workflow("shared-1")
        mine, theirs = await asyncio.gather(drain(stream), drain(watched))
        assert [encode(e) for e in theirs] == [encode(e) for e in mine]
        assert watched.result.results == stream.result.results == expected_results(30)
        # After the end (retained): the whole history again, then the end.
        again = await drain(other.subscribe("workflow:shared-1"))
        assert [encode(e) for e in again] == [encode(e) for e in mine]


async def test_an_agent_channel_is_a_stream_of_its_turns(hub: Hub, client: HubClient) -> None:
    stream = client.workflow("content_creation", input=topic("tokens=5"), workflow_id="agents-1")
    await stream.collect()
    other_run = await client.workflow("content_creation", input={}, workflow_id="agents-2").start()
    with pytest.raises(ValueError, match="carry the same events"):
        await client.subscribe("agent:agents-2.writer").start()
    await other_run.collect()
    async with HubClient(ws_url(hub)) as other:
        writer = other.subscribe("agent:agents-1.writer")
        events = []
        async with asyncio.timeout(RECV_TIMEOUT_S):
            async for event in writer:
                events.append(event)
                if sum(isinstance(e, AgentCompleted) for e in events) == 2:
                    break
        await writer.aclose()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert turn_texts(events) == [("writer", expected_text(5))] * 2


# Requests the hub refuses.


async def test_bad_requests(client: HubClient) -> None:
    with pytest.raises(ValueError):
        client.workflow(input={})
    with pytest.raises(ValueError):
        client.workflow("content_creation", definition={"places": []})
    with pytest.raises(ValueError):
        client.workflow("content_creation", workflow_id="has space")
    with pytest.raises(HubStreamError) as unknown:
        await client.workflow("no_such_flow").collect()
    assert unknown.value.code == "unknown_workflow_definition"
    bad = {"places": ["a", "b"], "initialPlace": "a", "transitions": [{"id": "t", "from": "a", "to": "c"}]}
    with pytest.raises(HubStreamError) as invalid:
        await client.workflow(definition=bad).collect()
    assert invalid.value.code == "invalid_workflow" and "transitions[0].to" in str(invalid.value)
    await client.workflow("content_creation", input=topic("tokens=1"), workflow_id="dup-wf").collect()
    with pytest.raises(HubStreamError) as duplicate:
        await client.workflow("content_creation", workflow_id="dup-wf").collect()
    assert duplicate.value.code == "duplicate_id"
    with pytest.raises(HubStreamError) as gone:
        await client.subscribe_workflow("never-was").collect()
    assert gone.value.code == "unknown_channel"
    await client.ping()  # still in step with the hub's answers


async def test_an_inline_definition_runs(client: HubClient) -> None:
    definition = {
        "places": ["in", "out"], "initialPlace": "in",
        "agents": [{"id": "echo", "model": "ollama/llama3.2", "prompt": "Say {input.word} [[mock tokens=4 seed=9]]"}],
        "transitions": [{"id": "say", "from": "in", "to": "out", "agent": "echo"}],
    }
    stream = client.workflow(definition=definition, input={"word": "hi"})
    events = await drain(stream)
    assert shape(events) == [("TokenCreated", "in"), ("AgentStarted", "echo"), ("AgentProgress", "echo"),
                             ("AgentCompleted", "echo"), ("WorkflowTransition", "say"), ("WorkflowCompleted", "out")]
    assert stream.result.results == {"echo": expected_text(4, seed=9)}


# Cancel.


async def test_cancel_workflow_ends_the_stream_with_cancelled(hub: Hub, client: HubClient) -> None:
    stream = client.workflow("content_creation", input=topic("tokens=500 tps=100"))
    events = []
    with pytest.raises(HubStreamError) as caught:
        async for event in stream:
            events.append(event)
            if isinstance(event, AgentProgress):
                await client.cancel_workflow(stream.id)
    error = caught.value
    assert error.code == "cancelled" and error.workflow_id == stream.id and error.completion_id is None
    assert error.result is stream.result
    result = stream.result
    assert result.status == "cancelled" and result.done and result.error.code == "cancelled"
    assert [type(e).__name__ for e in events[:2]] == ["TokenCreated", "AgentStarted"]
    assert not any(isinstance(e, AgentCompleted) for e in events)
    run = hub.workflows.get(stream.id)
    assert run.status == "cancelled" and all(c.finished for c in run.completions)  # upstream too
    await client.cancel_workflow(stream.id)  # already ended: nothing happens
    with pytest.raises(HubRequestError) as unknown:
        await client.cancel_workflow("no-such-workflow")
    assert unknown.value.code == "unknown_workflow"


# Reconnect and resume.


async def test_reconnect_mid_run_replays_with_no_gap_and_no_duplicate_text(hub: Hub, client: HubClient) -> None:
    """Dropped twice (in the researcher's turn and in the writer's), back each time only after
    the run moved on by several events: the hub replays what was missed."""
    release = held_reconnect(client)
    stream = client.workflow("content_creation", input=topic("tokens=80 tps=800"))
    drops: list[int] = []

    async def saboteur(event: Any) -> None:
        if isinstance(event, AgentProgress) and event.agent_id in ("researcher", "writer") \
                and len(drops) < 2 and (not drops or event.agent_id == "writer"):
            drops.append(event.seq)
            release.clear()
            drop(client)
            run = hub.workflows.get(stream.id)
            await until(lambda: run.channel.last_seq > stream.seq + 5 or run.finished)
            release.set()

    events = await drain(stream, saboteur)
    assert len(drops) == 2 and client.reconnects == 2
    assert shape(events) == EXPECTED_SHAPE
    assert [event.seq for event in events] == list(range(1, len(events) + 1))  # no gap, no duplicate
    assert turn_texts(events) == expected_turns(80)
    assert stream.result.results == expected_results(80) and stream.result.snapshots == 0


async def test_lost_acknowledgement_joins_the_started_run(hub: Hub, client: HubClient) -> None:
    """The hub started the run but its ``subscribed`` never arrived: sent again, the request
    gets ``duplicate_id`` and the client subscribes instead."""
    dispatch = client._dispatch
    lost: list[Any] = []

    def lose_first_ack(conn: Any, frame: Any) -> None:
        if not lost and '"workflowId"' in frame and '"subscribed"' in frame:
            lost.append(frame)
            drop(client)
            return
        dispatch(conn, frame)

    client._dispatch = lose_first_ack  # type: ignore[method-assign]
    stream = client.workflow("content_creation", input=topic("tokens=20 tps=2000"))
    events = await drain(stream)
    assert lost and client.reconnects == 1 and len(hub.workflows.runs) == 1
    assert shape(events) == EXPECTED_SHAPE and turn_texts(events) == expected_turns(20)


async def snapshot_run(hub: Hub, tokens: int, drop_in: str, back_when: Callable[[WorkflowRun], bool]) -> tuple[WorkflowStream, list[Any]]:
    """Run content_creation on a short-history hub; drop at the first progress of ``drop_in``
    and reconnect once ``back_when(run)`` holds."""
    async with HubClient(ws_url(hub), base_delay_s=0.01, max_delay_s=0.02) as client:
        release = held_reconnect(client)
        stream = client.workflow("content_creation", input=topic(f"tokens={tokens} tps=800"))

        async def saboteur(event: Any) -> None:
            if isinstance(event, AgentProgress) and event.agent_id == drop_in and client.reconnects == 0 \
                    and release.is_set() is False and client.connected:
                drop(client)
                run = hub.workflows.get(stream.id)
                await until(lambda: back_when(run) and run.channel.last_seq > stream.seq + 3)
                release.set()

        try:
            events = await drain(stream, saboteur)
        finally:
            release.set()
        assert client.reconnects == 1
    return stream, events


async def test_snapshot_resume_while_the_followed_agent_is_still_at_work(short_history_hub: Hub) -> None:
    tokens = 300
    stream, events = await snapshot_run(
        short_history_hub, tokens, "writer",
        lambda run: run.current_agent == "writer" and len("".join(run.current_text)) > 100)
    [snapshot] = [e for e in events if isinstance(e, WorkflowSnapshot)]
    at = events.index(snapshot)
    assert snapshot.status == "running" and snapshot.agent_id == "writer" and snapshot.place == "researched"
    synthetic = events[at + 1]
    assert isinstance(synthetic, AgentProgress) and synthetic.seq == snapshot.seq and synthetic.agent_id == "writer"
    assert snapshot.agent_content.endswith(synthetic.content) and len(synthetic.content) < len(snapshot.agent_content)
    assert shape(events[:at] + events[at + 1:]) == EXPECTED_SHAPE  # nothing left out, nothing invented
    assert turn_texts(events) == expected_turns(tokens)  # each piece of text once
    result = stream.result
    assert result.snapshots == 1 and result.results == expected_results(tokens)
    assert [(t.agent_id, t.text) for t in result.agents] == expected_turns(tokens)
    assert result.usage is not None and result.usage.completion_tokens == 3 * tokens + EDITOR_TOKENS


async def test_snapshot_resume_after_the_followed_agent_ended_while_away(short_history_hub: Hub) -> None:
    """The researcher ended and the writer began while the client was away: the researcher's
    turn is completed from the snapshot's data, the writer's text so far arrives in one
    agent_progress (no agent_started: the snapshot has no completion id or model)."""
    tokens = 300
    stream, events = await snapshot_run(
        short_history_hub, tokens, "researcher",
        lambda run: run.current_agent == "writer" and len("".join(run.current_text)) > 100)
    [snapshot] = [e for e in events if isinstance(e, WorkflowSnapshot)]
    at = events.index(snapshot)
    assert (snapshot.status, snapshot.place, snapshot.agent_id) == ("running", "researched", "writer")
    after = events[at + 1:at + 4]
    assert [type(e).__name__ for e in after] == ["AgentProgress", "AgentCompleted", "AgentProgress"]
    assert all(e.seq == snapshot.seq for e in after)
    assert (after[0].agent_id, after[1].agent_id, after[2].agent_id) == ("researcher", "researcher", "writer")
    assert after[1].result == expected_text(tokens) and after[1].usage is None
    assert after[2].content == snapshot.agent_content
    assert turn_texts(events) == expected_turns(tokens)
    assert [e.transition_id for e in events if isinstance(e, WorkflowTransition)] == ["write", "review", "revise", "rewrite"]
    result = stream.result
    assert [(t.agent_id, t.text, t.result) for t in result.agents] == [(a, x, x) for a, x in expected_turns(tokens)]
    assert result.agents[0].ended_unseen and result.agents[1].completion_id is None
    assert result.results == expected_results(tokens) and result.status == "completed"
    assert isinstance(events[-1], WorkflowCompleted) and result.usage == events[-1].usage


async def test_snapshot_resume_after_the_run_completed_while_away(short_history_hub: Hub) -> None:
    tokens = 60
    stream, events = await snapshot_run(short_history_hub, tokens, "researcher", lambda run: run.finished)
    [snapshot] = [e for e in events if isinstance(e, WorkflowSnapshot)]
    assert snapshot.status == "completed" and snapshot.agent_id is None and snapshot.place == "published"
    assert [type(e).__name__ for e in events[events.index(snapshot):]] == [
        "WorkflowSnapshot", "AgentProgress", "AgentCompleted", "WorkflowCompleted"]
    final = events[-1]
    assert final.seq == snapshot.seq and final.place == "published" and final.usage is None
    assert turn_texts(events) == [("researcher", expected_text(tokens))]
    result = stream.result
    assert result.status == "completed" and result.done and result.usage is None
    assert result.results == expected_results(tokens) and [t.agent_id for t in result.agents] == ["researcher"]


async def test_snapshot_resume_after_the_run_was_cancelled_while_away(short_history_hub: Hub) -> None:
    async with HubClient(ws_url(short_history_hub), base_delay_s=0.01, max_delay_s=0.02) as client:
        release = held_reconnect(client)
        stream = client.workflow("content_creation", input=topic("tokens=500 tps=400"))
        events = []
        with pytest.raises(HubStreamError) as caught:
            async with asyncio.timeout(RECV_TIMEOUT_S):
                async for event in stream:
                    events.append(event)
                    if isinstance(event, AgentProgress) and not release.is_set():
                        drop(client)
                        run = short_history_hub.workflows.get(stream.id)
                        await until(lambda run=run: run.channel.last_seq > stream.seq + 3)
                        run.cancel()
                        await until(lambda run=run: run.finished)
                        release.set()
    assert caught.value.code == "cancelled" and caught.value.workflow_id == stream.id
    assert isinstance(events[-1], WorkflowSnapshot) and events[-1].status == "cancelled"
    assert stream.result.status == "cancelled" and stream.result.agents[0].ended_unseen


# cbhub demo workflow (and plain cbhub demo, unchanged).


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub.cli", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_cbhub_demo_workflow_prints_every_agent_and_a_summary() -> None:
    status, out, err = await run_cli("demo", "workflow", "--tokens", "8", "--tps", "1000", "--topic", "the moon")
    assert status == 0, err
    # The demo gives the n-th agent's prompt [[mock seed=n]], so each writes its own text.
    texts = {"researcher": expected_text(8, seed=1), "writer": expected_text(8, seed=2), "editor": expected_text(8, seed=3)}
    for agent, text in texts.items():
        assert f"── {agent} " in out and f"\n{text}\n" in out
    assert out.count("── writer ") == 2 and out.count(f"\n{texts['writer']}\n") == 2
    assert "'topic': 'the moon [[mock tokens=8 tps=1000]]'" in out
    for transition in ("→ research: start → researched", "→ revise: reviewed → revised", "→ rewrite: revised → published"):
        assert transition in out
    rows = re.findall(r"^(researcher|writer|editor) +\S+ +(\S+) +[\d.]+ +(\d+) +[\d.]+ +(\d+)/8/(\d+) ", out, re.M)
    assert [(agent, place) for agent, place, *_ in rows] == [
        ("researcher", "start"), ("writer", "researched"), ("editor", "drafted"), ("writer", "revised")]
    assert [int(chars) for _, _, chars, *_ in rows] == [len(texts[agent]) for agent, *_ in rows]
    assert re.search(r"^4 agent turns, 0 function calls; path research → write → review → revise → rewrite; "
                     r"usage \(p/c/t\) \d+/32/\d+; \d+\.\d\d s$", out, re.M), out


async def test_cbhub_demo_without_a_subcommand_still_streams_four_providers() -> None:
    status, out, err = await run_cli("demo", "--tokens", "3", "--tps", "300")
    assert status == 0, err
    for provider in ("openai", "anthropic", "google", "ollama"):
        assert re.search(rf"^{provider} .* stop / \d+/3/\d+$", out, re.M), out
    status, _, err = await run_cli("demo", "--topic", "x")
    assert status == 2 and "demo workflow" in err
