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


def _redis_url_or_skip() -> str:
    """The Redis of the cluster tests (database 15, or ``CBHUB_TEST_REDIS_URL``); skips the
    test when none answers, unless ``CBHUB_REQUIRE_REDIS=1``."""
    import os

    import pytest
    import redis

    url = os.environ.get("CBHUB_TEST_REDIS_URL") or "redis://127.0.0.1:6379/15"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError):
        if os.environ.get("CBHUB_REQUIRE_REDIS") == "1":
            raise
        pytest.skip(f"no Redis answers at {url}")
    return url


def test_fanout_quick_over_two_nodes_on_redis_delivers_everything_everywhere(tmp_path):
    # Issue 13: two hub processes share the Redis broker; each stream's subscribers go round
    # the nodes, so 2x3 has subscribers on the owning node and on the other one.
    import redis

    url = _redis_url_or_skip()
    rows = _run(tmp_path, "fanout", "--nodes", "2", "--broker", "redis", "--redis-url", url)
    assert rows[0]["scenario"] == "conditions"
    runs = rows[1:]
    assert [(r["scenario"], r["broker"], r["nodes"], r["streams"], r["subscribers"]) for r in runs] == [
        ("fanout_cluster", "redis", 2, 2, 3), ("fanout_cluster", "redis", 2, 4, 1)]
    for row in runs:
        assert row["ok"] and not row["errors"] and row["gaps"] == 0
        assert row["tokens_delivered"] == row["tokens_expected"] == row["connections"] * row["tokens_per_stream"]
        assert row["events_delivered"] == row["tokens_expected"] + row["connections"]
        assert len(row["node_cpu_s"]) == 2 and row["redis_private"] is False
        # every event of every stream went to Redis (other clients of a shared Redis can only
        # add to these counts; the exact ones are checked on a private Redis below)
        assert row["redis_events_written"] >= row["streams"] * (row["tokens_per_stream"] + 1)
        assert row["redis_evalsha"] >= 1
    with_remote, local_only = runs
    assert with_remote["remote_samples"] == 2 * 20 and with_remote["local_samples"] == 4 * 20
    assert with_remote["remote_p50_ms"] is not None and with_remote["remote_extra_p50_ms"] is not None
    assert local_only["remote_samples"] == 0 and local_only["remote_p50_ms"] is None
    # the bench's key prefixes are gone from the shared Redis
    client = redis.Redis.from_url(url)
    try:
        for row in runs:
            assert row["redis_prefix"].startswith("cbhub-bench-")
            assert not list(client.scan_iter(match=row["redis_prefix"] + "*", count=1000))
    finally:
        client.close()


def test_fanout_quick_over_three_nodes_on_a_private_redis_counts_its_own_round_trips(tmp_path):
    # --redis-url own: the bench's own redis-server, so Redis's counters are this run's alone
    import os
    import shutil

    import pytest

    if not shutil.which("redis-server") and not shutil.which("redis-server", path="/usr/bin:/usr/local/bin"):
        if os.environ.get("CBHUB_REQUIRE_REDIS") == "1":
            raise RuntimeError("CBHUB_REQUIRE_REDIS=1 but no redis-server binary")
        pytest.skip("no redis-server binary")
    rows = _run(tmp_path, "fanout", "--nodes", "3", "--broker", "redis", "--shape", "3x3")
    [row] = rows[1:]
    assert row["ok"] and row["gaps"] == 0 and row["redis_private"] is True and len(row["node_cpu_s"]) == 3
    # each node owns one stream and has one subscriber of each stream
    assert row["local_samples"] == row["remote_samples"] / 2 == 3 * row["tokens_per_stream"]
    # every content event and terminal of every stream was appended once, in batches
    assert row["redis_events_written"] == 3 * (row["tokens_per_stream"] + 1)
    assert 1 <= row["redis_evalsha"] <= row["redis_round_trips"] < row["redis_events_written"]
    assert row["redis_round_trips_per_event"] == pytest.approx(row["redis_round_trips"] / row["events_delivered"],
                                                               abs=1e-5)
    assert row["redis_cpu_s"] >= 0 and set(row["redis_commands"]) >= {"evalsha", "xadd", "publish"}


def test_fanout_cluster_spreads_each_streams_subscribers_round_the_nodes():
    from tools.bench.cluster import node_of

    # stream i is owned by node i % N; its k-th connection is on node (owner + k) % N
    assert [node_of(c, 4, 2) for c in range(8)] == [
        (0, True), (1, True), (0, True), (1, True), (1, False), (0, False), (1, False), (0, False)]
    # K = 10 over 2 nodes: five subscribers of each stream on each node
    placed = [node_of(c, 100, 2) for c in range(1000) if c % 100 == 7]
    assert sum(local for _, local in placed) == 5 and {node for node, _ in placed} == {0, 1}
    assert all(node_of(c, 5, 1) == (0, True) for c in range(15))


def test_fanout_cluster_medians_take_each_configurations_repeats_together():
    from tools.bench.cluster import medians

    def row(nodes: int, cpu: float, ok: bool = True) -> dict:
        return {"scenario": "fanout_cluster", "broker": "redis", "nodes": nodes, "workers": None, "streams": 100,
                "subscribers": 10, "rate": 50.0, "tokens_per_stream": 500, "coalesce": False, "burst": 1,
                "batch": False, "ok": ok, "hub_cpu_us_per_event": cpu, "remote_p50_ms": None}

    summaries = medians([row(2, 3.0), row(3, 9.0), row(2, 1.0), row(2, 2.0, ok=False), {"scenario": "conditions"}])
    assert [(s["nodes"], s["runs"], s["ok"], s["hub_cpu_us_per_event"]) for s in summaries] == [
        (2, 3, False, 2.0), (3, 1, True, 9.0)]
    assert summaries[0]["remote_p50_ms"] is None and summaries[0]["scenario"] == "fanout_cluster_median"


def test_fanout_refuses_an_in_memory_broker_over_several_nodes(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "bench", "fanout", "--nodes", "2", "--broker", "memory", "--quick",
         "--out", str(tmp_path / "r.jsonl")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--broker redis" in done.stderr


def test_fanout_cluster_counts_no_command_a_broker_script_runs_as_a_round_trip():
    from tools.bench.cluster import script_commands

    inside = script_commands()
    # the publish script appends and publishes every event inside one EVALSHA
    assert {"xadd", "publish"} <= inside
    assert "evalsha" not in inside and "info" not in inside and "hgetall" not in inside


def test_plot_cluster_draws_the_median_of_each_configuration(tmp_path):
    import pytest

    pytest.importorskip("matplotlib")
    from tools.bench.plot import plot_cluster

    def row(broker: str, nodes: int, cpu: float, trips: float | None) -> dict:
        return {"scenario": "fanout_cluster", "broker": broker, "nodes": nodes, "workers": None, "streams": 100,
                "subscribers": 2, "rate": 50.0, "tokens_per_stream": 500, "coalesce": False, "burst": 1,
                "batch": False, "ok": True, "hub_cpu_us_per_event": cpu, "redis_cpu_us_per_event": 1.0,
                "redis_round_trips_per_event": trips, "local_p50_ms": 0.3, "local_p99_ms": 2.0,
                "remote_p50_ms": 0.7 if nodes > 1 else None, "remote_p99_ms": 6.0 if nodes > 1 else None}

    png = tmp_path / "cluster.png"
    rows = [row("memory", 1, 8.0, None), row("redis", 2, 12.0, 0.2), row("redis", 2, 14.0, 0.3)]
    assert plot_cluster(rows, png, "test") == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_cluster([{"scenario": "conditions"}], tmp_path / "none.png") == 0
    assert not (tmp_path / "none.png").exists()
