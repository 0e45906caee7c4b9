"""Smoke runs of ``cbhub bench fanout --quick`` and ``cbhub bench connections --quick`` (the
CI guard that keeps the benchmark suite from rotting). Real processes: mock provider, hub,
reference server and load generators on 127.0.0.1. Only completeness and sanity are
asserted (every token sent was delivered, in order, once); never a timing."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import orjson


def _run(tmp_path: pathlib.Path, *args: str) -> list[dict]:
    out = tmp_path / "results.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "bench", *args, "--quick", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


def test_fanout_quick_delivers_every_token_through_hub_and_reference(tmp_path):
    rows = _run(tmp_path, "fanout")
    assert rows[0]["scenario"] == "conditions"
    runs = rows[1:]
    assert {(r["server"], r["streams"], r["subscribers"]) for r in runs} == {
        ("hub", 2, 3), ("hub", 4, 1), ("limit", 2, 3), ("limit", 4, 1)}
    for row in runs:
        assert row["ok"] and not row["errors"] and row["gaps"] == 0
        assert row["tokens_delivered"] == row["tokens_expected"] == row["connections"] * row["tokens_per_stream"]
        # one content message per token plus one terminal message per connection
        assert row["events_delivered"] == row["tokens_expected"] + row["connections"]
        assert row["latency_p50_ms"] is not None and row["latency_p50_ms"] >= 0
        assert row["frames_per_token"] >= 1.0


def test_connections_quick_reaches_every_connection(tmp_path):
    rows = _run(tmp_path, "connections", "--counts", "50")
    [row] = rows[1:]
    assert row["ok"] and row["connections"] == 50
    assert row["rss_after_mb"] >= row["rss_before_mb"] > 0
    assert 0 <= row["broadcast_p50_ms"] <= row["broadcast_last_ms"]


def test_fanout_and_connections_with_jwt_auth_reach_every_client(tmp_path):
    # Every client presents the bench token on the upgrade; all are the owner of every stream.
    [row] = _run(tmp_path, "fanout", "--servers", "hub", "--shape", "3x4", "--auth", "jwt")[1:]
    assert row["auth"] == "jwt" and row["ok"] and not row["errors"] and row["gaps"] == 0
    assert row["tokens_delivered"] == row["tokens_expected"] == 12 * row["tokens_per_stream"]
    (tmp_path / "more").mkdir()
    [row] = _run(tmp_path / "more", "connections", "--counts", "30", "--auth", "jwt")[1:]
    assert row["auth"] == "jwt" and row["ok"] and row["handshakes_per_s"] > 0


def test_resume_quick_continues_every_stream_exactly(tmp_path):
    rows = _run(tmp_path, "resume")
    measures = {row["measure"]: row["value"] for row in rows[1:]}
    assert set(measures) == {"resume_ms_p50", "resume_ms_p99", "replay_msgs_per_s", "bytes_per_history_entry"}
    assert 0 < measures["resume_ms_p50"] <= measures["resume_ms_p99"]
    assert measures["replay_msgs_per_s"] > 0
