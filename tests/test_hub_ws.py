"""End to end over real sockets: mock provider → hub → ``websockets`` clients on /ws/stream."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import aiohttp
import pytest

from protocol.messages import (
    Completed,
    ContentChunk,
    ErrorMessage,
    Pong,
    Subscribed,
    ThinkingStatus,
    ToolCallMessage,
    Unsubscribed,
)
from tests.conftest import RECV_TIMEOUT_S, WSClient
from tests.support import DATA, load_expected
from tools.mock_provider import expected_reasoning, expected_text

#: The WebSocket protocol on every broker (tests/conftest.py: redis2 spreads connections over two nodes).
pytestmark = pytest.mark.brokers("memory", "redis", "redis2")

# Transcript prefix → the model the hub routes to that provider's wire format.
_MODELS = {
    "openai": "openai/gpt-4o-mini",
    "anthropic": "anthropic/claude-3-5-haiku-latest",
    "gemini_sse": "google/gemini-2.0-flash",
    "ollama": "ollama/llama3.2",
}


def _model_for(path: pathlib.Path) -> str | None:
    for prefix, model in _MODELS.items():
        if path.name.startswith(prefix):
            return model
    return None  # e.g. the Gemini JSON-array transcripts: the hub asks Gemini for alt=sse


TRANSCRIPTS = sorted(
    p for p in DATA.iterdir() if not p.name.endswith(".expected.json") and _model_for(p) is not None
)


def hub_summary(messages: list[Any]) -> dict[str, Any]:
    """What a client of the hub sees, in the shape of tests/support.py's summary."""
    summary: dict[str, Any] = {"text": "", "reasoning": "", "tool_calls": [], "finish_reason": None,
                               "usage": None, "error": None}
    for message in messages:
        if isinstance(message, ContentChunk):
            summary["text"] += message.content
        elif isinstance(message, ThinkingStatus):
            summary["reasoning"] += message.content
        elif isinstance(message, ToolCallMessage):
            summary["tool_calls"].append({"id": message.id, "name": message.tool, "arguments": message.arguments,
                                          "valid": message.arguments_valid})
        elif isinstance(message, (Completed, ErrorMessage)):
            summary["finish_reason"] = message.finish_reason if isinstance(message, Completed) else "error"
            if isinstance(message, ErrorMessage):
                summary["error"] = {"code": message.error.code, "status": message.error.status}
            if message.usage is not None:
                summary["usage"] = {
                    "prompt_tokens": message.usage.prompt_tokens,
                    "completion_tokens": message.usage.completion_tokens,
                    "total_tokens": message.usage.total_tokens,
                    "reasoning_tokens": message.usage.reasoning_tokens,
                }
    return summary


def assert_gap_free(messages: list[Any]) -> None:
    assert [m.seq for m in messages] == list(range(1, len(messages) + 1))


async def start(client: WSClient, completion_id: str, content: str, model: str = "openai/gpt-4o-mini", **options: Any) -> None:
    await client.send({"type": "completion", "id": completion_id, "model": model,
                       "messages": [{"role": "user", "content": content}], **options})
    ack = await client.recv()
    assert isinstance(ack, Subscribed)
    assert ack.channels == [f"completion:{completion_id}"]
    assert ack.completion_id == completion_id


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=lambda p: p.name)
@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesced", "uncoalesced"])
async def test_transcript_replayed_through_hub_arrives_intact(ws_connect, transcript: pathlib.Path, coalesce: bool) -> None:
    """The text, reasoning, tool calls, usage and finish reason a client receives equal the
    transcript's, whatever byte boundaries the mock splits the body at."""
    expected = load_expected(transcript)
    client = await ws_connect()
    await start(client, "t1", f"[[mock replay={transcript.name} seed=11]]", model=_model_for(transcript), coalesce=coalesce)
    messages = await client.until_terminal("t1")
    assert_gap_free(messages)
    got = hub_summary(messages)
    assert got["text"] == expected["text"]
    assert got["reasoning"] == expected["reasoning"]
    assert [(c["id"], c["name"], c["arguments"], c["valid"]) for c in got["tool_calls"]] == [
        (c["id"], c["name"], c["arguments"], c["valid"]) for c in expected["tool_calls"]
    ]
    assert got["finish_reason"] == expected["finish_reason"]
    assert got["usage"] == expected["usage"]
    if expected["error"] is not None:
        assert got["error"] == expected["error"]


@pytest.mark.parametrize("model", list(_MODELS.values()))
async def test_each_provider_streams_text_reasoning_and_tool_call(ws_connect, model: str) -> None:
    client = await ws_connect()
    await start(client, "gen", "hello [[mock tokens=12 reasoning=5 tool=get_weather seed=4]]", model=model)
    messages = await client.until_terminal("gen")
    assert_gap_free(messages)
    summary = hub_summary(messages)
    assert summary["text"] == expected_text(12, seed=4)
    assert summary["reasoning"] == expected_reasoning(5, seed=4)
    assert [(c["name"], c["arguments"]) for c in summary["tool_calls"]] == [("get_weather", {"city": "Paris"})]
    assert summary["finish_reason"] == "tool_calls"
    assert summary["usage"]["completion_tokens"] >= 12
    statuses = [m.status for m in messages if isinstance(m, ThinkingStatus)]
    assert statuses[-1] == "done" and statuses.count("done") == 1
    done_index = next(i for i, m in enumerate(messages) if isinstance(m, ThinkingStatus) and m.status == "done")
    first_text = next(i for i, m in enumerate(messages) if isinstance(m, ContentChunk))
    assert done_index < first_text  # reasoning ends before the answer starts
    completed = messages[-1]
    assert isinstance(completed, Completed)
    assert completed.provider == model.split("/")[0]
    assert completed.ttft_ms is not None and completed.ttft_ms >= 0


async def test_four_providers_concurrently_over_one_connection(ws_connect) -> None:
    client = await ws_connect()
    for index, model in enumerate(_MODELS.values()):
        await client.send({"type": "completion", "id": f"c{index}", "model": model,
                           "messages": [{"role": "user", "content": f"[[mock tokens=30 tps=300 seed={index}]]"}]})
    texts: dict[str, str] = {f"c{i}": "" for i in range(4)}
    seqs: dict[str, list[int]] = {f"c{i}": [] for i in range(4)}
    finished: set[str] = set()
    while len(finished) < 4:
        message = await client.recv()
        if isinstance(message, Subscribed):
            continue
        seqs[message.completion_id].append(message.seq)
        if isinstance(message, ContentChunk):
            texts[message.completion_id] += message.content
        elif isinstance(message, (Completed, ErrorMessage)):
            assert isinstance(message, Completed), message
            finished.add(message.completion_id)
    for index in range(4):
        assert texts[f"c{index}"] == expected_text(30, seed=index)
        assert seqs[f"c{index}"] == list(range(1, len(seqs[f"c{index}"]) + 1))


async def test_two_connections_watching_one_completion_get_identical_sequences(ws_connect, mock) -> None:
    owner = await ws_connect()
    watcher = await ws_connect()
    await start(owner, "shared", "[[mock tokens=40 tps=400 ttft_ms=30]]")
    await watcher.send({"type": "subscribe", "channels": ["completion:shared"]})
    ack = await watcher.recv()
    assert isinstance(ack, Subscribed) and ack.channels == ["completion:shared"]
    owner_frames, watcher_frames = await asyncio.gather(owner.until_terminal("shared"), watcher.until_terminal("shared"))
    assert owner_frames == watcher_frames
    assert hub_summary(owner_frames)["text"] == expected_text(40)
    assert mock.stats["requests"] == 1  # the upstream was called once for both


async def test_late_subscriber_gets_the_whole_stream_from_seq_1(ws_connect) -> None:
    owner = await ws_connect()
    await start(owner, "late", "[[mock tokens=30 tps=200]]")
    first = await owner.recv()
    assert isinstance(first, ContentChunk) and first.seq == 1
    watcher = await ws_connect()
    await watcher.send({"type": "subscribe", "channels": ["completion:late"]})
    assert isinstance(await watcher.recv(), Subscribed)
    rest = await owner.until_terminal("late")
    watched = await watcher.until_terminal("late")
    assert watched == [first, *rest]


async def test_type_level_subscription_sees_every_completion(ws_connect) -> None:
    dashboard = await ws_connect()
    await dashboard.send({"type": "subscribe", "streams": ["completion"]})
    ack = await dashboard.recv()
    assert isinstance(ack, Subscribed) and ack.streams == ["completion"]
    client = await ws_connect()
    await start(client, "seen", "[[mock tokens=5]]")
    mine = await client.until_terminal("seen")
    theirs = await dashboard.until_terminal("seen")
    assert theirs == mine
    await dashboard.send({"type": "unsubscribe", "streams": ["completion"]})
    assert isinstance(await dashboard.recv(), Unsubscribed)


async def test_coalescing_sends_fewer_frames_than_upstream_chunks_and_the_same_text(ws_connect) -> None:
    client = await ws_connect()
    tokens = 300
    await start(client, "fast", f"[[mock tokens={tokens} tps=0]]")
    coalesced = [m for m in await client.until_terminal("fast") if isinstance(m, ContentChunk)]
    await start(client, "each", f"[[mock tokens={tokens} tps=0]]", coalesce=False)
    uncoalesced = [m for m in await client.until_terminal("each") if isinstance(m, ContentChunk)]
    assert "".join(m.content for m in coalesced) == expected_text(tokens)
    assert "".join(m.content for m in uncoalesced) == expected_text(tokens)
    assert len(uncoalesced) == tokens  # one frame per upstream delta
    assert len(coalesced) < tokens
    # Every coalesced frame but the last reached the size threshold or its time limit;
    # none is bigger than the threshold plus one token.
    assert max(len(m.content) for m in coalesced) < 100 + max(len(w) + 1 for w in expected_text(tokens).split())


async def _wait_for(predicate: Any, timeout_s: float = RECV_TIMEOUT_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_cancel_closes_the_upstream_connection(ws_connect, mock) -> None:
    client = await ws_connect()
    await start(client, "long", "[[mock tokens=2000 tps=100]]")
    first = await client.recv()
    assert isinstance(first, ContentChunk)
    await client.send({"type": "cancel", "completionId": "long"})
    messages = await client.until_terminal("long")
    assert isinstance(messages[-1], ErrorMessage) and messages[-1].error.code == "cancelled"
    await _wait_for(lambda: mock.stats["disconnected"] == 1)
    assert mock.stats["completed"] == 0
    # Nothing more arrives for that completion; the connection still works.
    await client.send({"type": "ping"})
    assert isinstance(await client.recv(), Pong)


async def test_bad_messages_get_coded_errors_and_leave_other_streams_untouched(ws_connect) -> None:
    client = await ws_connect()
    await start(client, "steady", "[[mock tokens=40 tps=200]]")
    bad_inputs = [
        ("{not json", "invalid_json"),
        ('{"type": "teleport"}', "unknown_type"),
        ('{"type": "completion", "model": "openai/x"}', "invalid_message"),
        ('{"type": "cancel", "completionId": "nope"}', "unknown_completion"),
        ('{"type": "subscribe", "channels": ["completion:ghost"]}', "unknown_channel"),
        ('{"type": "subscribe", "channels": ["bogus"]}', "unknown_channel"),
        ('{"type": "completion", "id": "steady", "model": "openai/x", "messages": [{"role": "user", "content": "x"}]}', "duplicate_id"),
    ]
    for raw, _ in bad_inputs:
        await client.connection.send(raw)
    await client.connection.send(b"\x00binary")
    codes = []
    text = ""
    while True:
        message = await client.recv()
        if isinstance(message, ErrorMessage) and message.completion_id is None:
            codes.append(message.error.code)
            assert message.error.message
        elif isinstance(message, ContentChunk):
            text += message.content
        elif isinstance(message, Completed):
            break
        else:
            assert not isinstance(message, ErrorMessage), message
    assert codes == [code for _, code in bad_inputs] + ["invalid_message"]
    assert text == expected_text(40)


async def test_unknown_model_gets_model_not_found(ws_connect) -> None:
    client = await ws_connect()
    await start(client, "nomodel", "hi", model="someone/else")
    (message,) = await client.until_terminal("nomodel")
    assert isinstance(message, ErrorMessage)
    assert message.error.code == "model_not_found" and message.seq == 1


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [(503, "provider_error", True), (429, "rate_limited", True), (401, "auth_failed", False), (400, "provider_error", False)],
)
async def test_provider_http_error_becomes_an_error_event(ws_connect, status: int, code: str, retryable: bool) -> None:
    client = await ws_connect()
    await start(client, "httperr", f"[[mock status={status}]]", model="anthropic/claude-3-5-haiku-latest")
    (message,) = await client.until_terminal("httperr")
    assert isinstance(message, ErrorMessage)
    assert (message.error.code, message.error.status, message.error.retryable) == (code, status, retryable)
    assert str(status) in message.error.message


@pytest.mark.parametrize("model", list(_MODELS.values()))
async def test_in_band_error_after_content_is_an_error_not_a_completion(ws_connect, model: str) -> None:
    client = await ws_connect()
    await start(client, "inband", "[[mock tokens=20 error_after=3]]", model=model)
    messages = await client.until_terminal("inband")
    assert isinstance(messages[-1], ErrorMessage)
    assert not any(isinstance(m, Completed) for m in messages)
    assert "".join(m.content for m in messages if isinstance(m, ContentChunk)) == expected_text(3)


@pytest.mark.parametrize("model", list(_MODELS.values()))
async def test_truncated_body_is_an_error_never_a_success(ws_connect, model: str) -> None:
    client = await ws_connect()
    await start(client, "cut", "[[mock tokens=20 truncate_after=4]]", model=model)
    messages = await client.until_terminal("cut")
    last = messages[-1]
    assert isinstance(last, ErrorMessage) and last.error.code == "stream_truncated" and last.error.retryable


async def test_provider_headers_reach_the_upstream(mock) -> None:
    from hub.app import run_hub
    from tests.conftest import hub_config

    config = hub_config(mock, openai_api_key="sk-test-openai-0123456789", anthropic_api_key="sk-ant-test-0123456789",
                        gemini_api_key="AIzaTestKey0123456789012345")
    async with run_hub(config) as running, aiohttp.ClientSession() as session:
        for model in _MODELS.values():
            async with session.post(running.url + "/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": "[[mock tokens=2]]"}]}) as response:
                assert response.status == 200
        async with session.get(mock.url + "/_mock/requests") as response:
            requests = await response.json()
    by_path = {r["path"].split(":")[0] if "models/" not in r["path"] else "gemini": r for r in requests}
    assert by_path["/v1/chat/completions"]["headers"]["authorization"] == "Bearer sk-test-openai-0123456789"
    assert by_path["/v1/chat/completions"]["body"]["stream_options"] == {"include_usage": True}
    assert by_path["/v1/messages"]["headers"]["x-api-key"] == "sk-ant-test-0123456789"
    assert by_path["/v1/messages"]["headers"]["anthropic-version"] == "2023-06-01"
    assert by_path["gemini"]["headers"]["x-goog-api-key"] == "AIzaTestKey0123456789012345"
    assert by_path["gemini"]["query"].get("alt") == "sse"
    assert by_path["/api/chat"]["body"]["stream"] is True


async def test_unsubscribed_connection_no_longer_receives(ws_connect) -> None:
    owner = await ws_connect()
    watcher = await ws_connect()
    await start(owner, "u1", "[[mock tokens=200 tps=100]]")
    await watcher.send({"type": "subscribe", "channels": ["completion:u1"]})
    assert isinstance(await watcher.recv(), Subscribed)
    await watcher.send({"type": "unsubscribe", "channels": ["completion:u1"]})
    # Content replayed or live before the unsubscribe took effect may arrive; then the ack.
    while not isinstance(message := await watcher.recv(), Unsubscribed):
        assert isinstance(message, ContentChunk)
    assert message.channels == ["completion:u1"]
    await owner.send({"type": "cancel", "completionId": "u1"})
    await owner.until_terminal("u1")
    await watcher.send({"type": "ping"})
    assert isinstance(await watcher.recv(), Pong)  # nothing of u1 arrived after the ack


async def test_a_bug_while_starting_a_completion_fails_it_and_keeps_the_connection(ws_connect, monkeypatch) -> None:
    import hub.routing  # where completions build their upstream requests (hub/routing.py)

    def broken(*args: Any) -> None:
        raise RuntimeError("simulated bug")

    client = await ws_connect()
    await start(client, "before", "[[mock tokens=30 tps=300]]")
    monkeypatch.setattr(hub.routing, "build_request", broken)
    await start(client, "buggy", "x")
    monkeypatch.undo()
    buggy = await client.until_terminal("buggy")
    assert isinstance(buggy[-1], ErrorMessage) and buggy[-1].error.code == "internal_error"
    assert "simulated bug" not in buggy[-1].error.message  # internals are not leaked
    before = await client.until_terminal("before")
    assert isinstance(before[-1], Completed)
    await start(client, "after", "[[mock tokens=3]]")
    assert isinstance((await client.until_terminal("after"))[-1], Completed)
