"""``cbhub bench sse`` (tools/bench/sse.py): a tiny real run, without the LiteLLM proxy.

The scenario starts the mock provider and the hub as child processes and streams through
them. Only completeness and exactness are asserted, never timings.
"""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import aiohttp
import orjson
import pytest

from tools.bench import sse
from tools.bench.report import Reporter
from tools.mock_provider import MockProvider


def run_sse(argv: list[str]) -> int:
    """Run the scenario as ``cbhub bench sse ARGV`` does. The parser is built here the way
    tools/bench/cli.py builds it (``--out``, ``--quiet``, then the scenario's options), so
    this test depends on no other scenario's module."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=argparse.FileType("ab"))
    parser.add_argument("--quiet", action="store_true")
    sse.add_arguments(parser, "sse")
    args = parser.parse_args(argv)
    try:
        return sse.run(args, Reporter(out=args.out, quiet=args.quiet))
    finally:
        if args.out is not None:
            args.out.close()


HUB_ROWS = {("hub", "/v1/chat/completions"), ("hub-nocoalesce", "/v1/chat/completions"),
            ("hub", "/v1/messages"), ("hub", "/v1/responses")}


def test_quick_run_without_litellm_is_complete(tmp_path: Path) -> None:
    # Every endpoint (the default): each row's streams must have brought every chunk and exactly
    # the mock's text (a row is ok only then), read as Chat Completions chunks, Anthropic
    # text_delta events and Responses output_text.delta events.
    out = tmp_path / "sse.jsonl"
    tokens = 5
    status = run_sse(["--quick", "--quiet", "--litellm", "/nonexistent", "--concurrency", "1,3",
                      "--tokens", str(tokens), "--out", str(out)])
    assert status == 0
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    skipped = [row for row in rows if row["server"] == "litellm"]
    assert len(skipped) == 1 and skipped[0]["note"].startswith("skipped:")
    measured = {(row["server"], row["endpoint"], row["streams"]): row for row in rows if "streams" in row}
    servers = HUB_ROWS | {("mock-direct", "/v1/chat/completions")}
    assert set(measured) == {(server, endpoint, streams) for server, endpoint in servers for streams in (1, 3)}
    for (server, endpoint, streams), row in measured.items():
        assert row["repeats"] == 1
        assert row["tokens_per_stream"] == tokens
        assert row["chunks"] == streams * tokens, (server, endpoint, streams)
        assert row["ok"] is True and row["failed_streams"] == 0 and row["error"] is None, (server, endpoint)
        assert row["ratio_vs_litellm"] is None
        assert row["ttft_p50_ms"] is not None
        assert 1 <= row["events"] <= streams * tokens
        if server != "mock-direct":
            assert row["added_ttft_p50_ms"] is not None and row["added_ttft_p99_ms"] is not None
    # Without coalescing, every upstream chunk is its own SSE event.
    assert measured["hub-nocoalesce", "/v1/chat/completions", 3]["events"] == 3 * tokens
    assert measured["mock-direct", "/v1/chat/completions", 3]["events"] == 3 * tokens


def test_endpoint_option_picks_the_rows(tmp_path: Path) -> None:
    out = tmp_path / "sse.jsonl"
    status = run_sse(["--quick", "--quiet", "--litellm", "/nonexistent", "--concurrency", "2", "--tokens", "4",
                      "--endpoint", "responses", "--endpoint", "messages", "--coalesce", "on", "--out", str(out)])
    assert status == 0
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines() if b'"streams"' in line]
    assert [(row["server"], row["endpoint"]) for row in rows] == [
        ("mock-direct", "/v1/chat/completions"), ("hub", "/v1/messages"), ("hub", "/v1/responses")]
    assert all(row["ok"] and row["chunks"] == 8 for row in rows)
    # "coalesce": false exists on /v1/chat/completions only: nothing to measure, a bad option.
    assert run_sse(["--quick", "--quiet", "--endpoint", "messages", "--coalesce", "off"]) == 2


def test_endpoints_for() -> None:
    assert sse._endpoints_for(None) == ["chat", "messages", "responses"]
    assert sse._endpoints_for(["responses", "chat", "responses"]) == ["chat", "responses"]
    assert sse._endpoints_for(["messages", "all"]) == ["chat", "messages", "responses"]


def test_each_endpoint_is_read_by_its_own_events() -> None:
    read = sse._read_event
    # Anthropic Messages: only text_delta is text; thinking and tool arguments are not chunks.
    assert read("messages", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "pixel "}}) == ("pixel ", False, None)
    assert read("messages", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "thinking_delta", "thinking": "hm "}}) == (None, False, None)
    assert read("messages", {"type": "message_stop"}) == (None, True, None)
    text, end, error = read("messages", {"type": "error", "error": {"type": "api_error", "message": "boom"}})
    assert text is None and not end and error is not None and "boom" in error
    # Responses: output_text.delta is text, reasoning summaries are not; completed ends it.
    assert read("responses", {"type": "response.output_text.delta", "delta": "nectar "}) == ("nectar ", False, None)
    assert read("responses", {"type": "response.reasoning_summary_text.delta", "delta": "x"}) == (None, False, None)
    assert read("responses", {"type": "response.completed", "response": {}}) == (None, True, None)
    text, end, error = read("responses", {"type": "response.incomplete", "response": {}})
    assert text is None and not end and error is not None and "response.incomplete" in error
    # Chat Completions: the end is data: [DONE], read by stream_once, never an event.
    assert read("chat", {"choices": [{"index": 0, "delta": {"content": "token "}}]}) == ("token ", False, None)
    assert read("chat", {"error": {"message": "x"}})[2] is not None


def test_request_bodies() -> None:
    def body(endpoint: str) -> dict[str, object]:
        target = sse.Target("hub", "http://x", "openai/mock-model", _NoProcess(),  # type: ignore[arg-type]
                            endpoint=endpoint)
        return orjson.loads(sse.request_body(target, 7))  # type: ignore[no-any-return]

    prompt = "bench [[mock tokens=7 tps=0]]"
    assert body("chat")["messages"] == [{"role": "user", "content": prompt}]
    messages = body("messages")
    assert messages["messages"] == [{"role": "user", "content": prompt}] and messages["max_tokens"] == 30
    assert body("responses") == {"model": "openai/mock-model", "stream": True, "input": prompt}


class _NoProcess:
    """Stands in for a ServerProcess whose CPU is not of interest."""

    def cpu_s(self) -> float:
        return 0.0


async def test_a_cut_stream_fails_the_check() -> None:
    # The mock reads directives anywhere in the body: this extra field (`user`, one OpenAI knows;
    # the mock refuses unknown ones) cuts every stream after 3 tokens (no data: [DONE], no end
    # of the chunked body).
    async with MockProvider(port=0) as mock:
        target = sse.Target("mock-direct", mock.url + "/v1/chat/completions", "mock-model",
                            _NoProcess(), extra={"user": "[[mock truncate_after=3]]"})  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as session:
            m = await sse.measure(session, target, streams=2, tokens=5, repeat=1, timeout_s=10, advance=lambda: None)
    assert m.failed == 4  # 2 warm-up streams + 2 measured streams
    assert m.chunks == 2 * 3
    assert m.first_error is not None and m.first_error.startswith("warm-up: ClientPayloadError")


async def test_litellm_that_exits_at_once_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "litellm"
    fake.write_text("#!/bin/sh\necho 'fake litellm: cannot start' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    proxy = sse.LiteLLMProcess(str(fake), "http://127.0.0.1:9", startup_timeout_s=10)
    assert "api_base: http://127.0.0.1:9/v1" in (proxy.directory / "config.yaml").read_text()
    with pytest.raises(RuntimeError, match=r"(?s)status 3.*fake litellm: cannot start"):
        await proxy.start()
    assert not proxy.directory.exists()


def test_find_litellm_and_tokens() -> None:
    assert sse.find_litellm("/nonexistent") == (None, "--litellm /nonexistent: no such executable")
    assert sse._tokens_for([1, 100], None, quick=False) == [2000, 200]
    assert sse._tokens_for([1, 100], None, quick=True) == [200, 20]
    assert sse._tokens_for([1, 4], [7], quick=False) == [7, 7]
    with pytest.raises(ValueError):
        sse._tokens_for([1, 4], [7, 8, 9], quick=False)
