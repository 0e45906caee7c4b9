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


def test_quick_run_without_litellm_is_complete(tmp_path: Path) -> None:
    out = tmp_path / "sse.jsonl"
    tokens = 5
    status = run_sse(["--quick", "--quiet", "--litellm", "/nonexistent", "--concurrency", "1,3",
                      "--tokens", str(tokens), "--out", str(out)])
    assert status == 0
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    skipped = [row for row in rows if row["server"] == "litellm"]
    assert len(skipped) == 1 and skipped[0]["note"].startswith("skipped:")
    measured = {(row["server"], row["streams"]): row for row in rows if "streams" in row}
    assert set(measured) == {(server, streams) for server in ("mock-direct", "hub", "hub-nocoalesce")
                             for streams in (1, 3)}
    for (server, streams), row in measured.items():
        assert row["repeats"] == 1
        assert row["tokens_per_stream"] == tokens
        assert row["chunks"] == streams * tokens, (server, streams)
        assert row["ok"] is True and row["failed_streams"] == 0 and row["error"] is None
        assert row["ratio_vs_litellm"] is None
        assert row["ttft_p50_ms"] is not None
        if server != "mock-direct":
            assert row["added_ttft_p50_ms"] is not None
    # Without coalescing, every upstream chunk is its own SSE event.
    assert measured["hub-nocoalesce", 3]["events"] == 3 * tokens
    assert measured["mock-direct", 3]["events"] == 3 * tokens


class _NoProcess:
    """Stands in for a ServerProcess whose CPU is not of interest."""

    def cpu_s(self) -> float:
        return 0.0


async def test_a_cut_stream_fails_the_check() -> None:
    # The mock reads directives anywhere in the body: this extra field cuts every stream
    # after 3 tokens (no data: [DONE], no end of the chunked body).
    async with MockProvider(port=0) as mock:
        target = sse.Target("mock-direct", mock.url + "/v1/chat/completions", "mock-model",
                            _NoProcess(), extra={"cut": "[[mock truncate_after=3]]"})  # type: ignore[arg-type]
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
