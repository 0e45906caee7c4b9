"""``cbhub bench fanout --nodes N --broker redis``: the fan-out of :mod:`tools.bench.fanout`
spread over several hub processes (nodes) that share the Redis broker (issue 13).

One run of a shape ``SxK`` over N nodes, with the method of ``fanout`` (the mock provider's
paced, stamped, gated streams; load-generator processes from :mod:`tools.bench.loadgen`; CPU
from the operating system's accounting of each process):

- Every node is its own ``cbhub serve`` with ``CBHUB_BROKER_URL`` and a broker prefix of
  this run's own (``cbhub-bench-<hex>:``); every key under it is deleted afterwards (SCAN +
  UNLINK). ``--broker memory`` (one node only) is the in-memory reference.
- Stream ``i`` is started on node ``i % N`` (its *owning* node). Its ``K`` subscriber
  connections go round the nodes from there: connection ``k`` of stream ``i`` (``k = 0`` is
  the one that starts it) connects to node ``(i + k) % N``. So with ``K = N`` every stream has
  one subscriber on each node, and with ``K = 10`` over 2 nodes five on each.
- The connections of one node are held by two load-generator processes: one for those
  watching streams owned by that node (*local*), one for streams owned elsewhere (*remote*),
  so latency is measured separately for both (with one node, ``--procs`` processes as in
  ``fanout``).

Figures per run (one JSON line, ``scenario: fanout_cluster``), besides those of ``fanout``
(``delivered_events_per_s``, ``ok``, ...):

- ``hub_cpu_us_per_event``: user + system CPU of every hub process together (with
  ``--workers``, their worker processes too) over the measured window, per delivered event.
  ``node_cpu_s`` lists each node's share.
- ``redis_round_trips``: commands clients sent to Redis in the window, from Redis's own
  ``INFO commandstats`` (delta): every command except ``INFO`` itself and the commands the
  broker's Lua scripts run inside an ``EVALSHA`` (:func:`script_commands`; Redis 7 counts those
  too). A command both sent directly and run by a script is not counted (liveness ``SREM``,
  a pipelined ``HGET``: a few per channel or per second), and a pipeline counts one per
  command. ``redis_evalsha`` is the publish round trips among them,
  ``redis_events_written`` the ``XADD`` calls (events appended to streams), so
  ``redis_events_per_round_trip`` is the batching. ``redis_round_trips_per_event`` divides by
  delivered events.
- ``redis_cpu_us_per_event``: Redis's ``used_cpu_user + used_cpu_sys`` (``INFO cpu``) delta,
  per delivered event.
- ``local_p50_ms`` / ``p99`` / ``p999`` and ``remote_...``: hub-added latency (mock stamp to
  client receive, as in ``fanout``) of subscribers on the owning node and on other nodes;
  ``remote_extra_p50_ms`` / ``p99`` is remote minus local.
- ``machine_busy_cores``: the CPU the whole machine used in the window, in cores
  (``/proc/stat``), and ``other_busy_cores`` what processes outside this run used (other
  work sharing the machine), both per second of the window; ``loadavg_1m`` before the run.

Redis: ``--redis-url own`` (the default) starts a private ``redis-server`` (``--save ""
--appendonly no``) on a free port for the whole command, so its command counts and CPU are
this run's alone; ``--redis-url redis://...`` uses an existing one, whose figures then also
count every other client of that server (the row says ``redis_private: false``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import psutil

from tools.bench.fanout import _row, _wait_gate
from tools.bench.loadgen import Plan, WorkerResult, Workers, split
from tools.bench.procs import ServerProcess, bench_auth, start_hub, start_mock
from tools.bench.report import Reporter, percentile

__all__ = ["run", "run_cluster", "node_of", "private_redis", "redis_counters", "script_commands", "medians", "COLUMNS"]

COLUMNS = [
    "broker", "nodes", "workers", "streams", "subscribers", "rate", "delivered_events_per_s", "hub_cpu_us_per_event",
    "redis_round_trips_per_event", "redis_events_per_round_trip", "redis_cpu_us_per_event", "local_p50_ms",
    "local_p99_ms", "remote_p50_ms", "remote_p99_ms", "other_busy_cores", "ok",
]

_SCRIPT_CALL = re.compile(r"redis\.p?call\(\s*'(\w+)'")


def script_commands() -> frozenset[str]:
    """The commands the Lua scripts of hub/redis_broker.py run (lower case), read from the
    module's string constants: Redis 7 counts a command a script runs in ``INFO commandstats``
    as if a client had sent it, so these are not round trips."""
    from hub import redis_broker

    names: set[str] = set()
    for value in vars(redis_broker).values():
        if isinstance(value, str) and "redis." in value:
            names.update(name.lower() for name in _SCRIPT_CALL.findall(value))
    return frozenset(names)


def node_of(connection: int, streams: int, nodes: int) -> tuple[int, bool]:
    """``(node, local)`` of connection ``connection``: it watches stream ``connection %
    streams``, owned by node ``stream % nodes``; its place ``k = connection // streams`` among
    the stream's connections puts it on node ``(owner + k) % nodes``; ``local`` when that is
    the owning node."""
    stream, k = connection % streams, connection // streams
    owner = stream % nodes
    node = (owner + k) % nodes
    return node, node == owner


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[tuple[str, int]]:
    """A ``redis-server`` of this run's own on a free port of 127.0.0.1, with no persistence;
    yields ``(url, pid)`` and stops it at the end.

    Raises:
        RuntimeError: no ``redis-server`` on PATH (nor /usr/bin), or it did not answer in 10 s.
    """
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError

    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/local/bin")
    if binary is None:
        raise RuntimeError("redis-server not found: install Redis or pass --redis-url")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--logfile", "", "--loglevel", "warning", stdout=asyncio.subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = aioredis.from_url(url)
        try:
            for _ in range(200):
                try:
                    await client.ping()
                    break
                except (OSError, RedisConnectionError):
                    if process.returncode is not None:
                        raise RuntimeError(f"redis-server exited with status {process.returncode}") from None
                    await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the private redis-server did not answer within 10 s")
        finally:
            await client.aclose()
        yield url, process.pid
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def redis_counters(client: Any) -> dict[str, float]:
    """Redis's own counters: ``calls:<command>`` per command (``INFO commandstats``) and
    ``cpu_s`` (``used_cpu_user + used_cpu_sys``, seconds)."""
    stats = await client.info("commandstats")
    cpu = await client.info("cpu")
    counters: dict[str, float] = {"cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}
    for key, value in stats.items():
        name = key.removeprefix("cmdstat_")
        calls = value["calls"] if isinstance(value, dict) else int(str(value).split("calls=")[1].split(",")[0])
        counters[f"calls:{name}"] = float(calls)
    return counters


def _delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


async def _unlink_prefix(client: Any, prefix: str) -> int:
    """Delete every key under ``prefix`` (SCAN + UNLINK); returns the keys left after (0)."""
    async for key in client.scan_iter(match=prefix + "*", count=1000):
        await client.unlink(key)
    left = 0
    async for _key in client.scan_iter(match=prefix + "*", count=1000):
        left += 1
    return left


def _with_pool(url: str, pool: int) -> str:
    """``url`` with redis-py's ``max_connections=pool`` query parameter (0: unchanged), which
    the hub's broker takes over its own pool size. (Before a40a37c the hub's pool failed claims
    past 100 connections in use, so S streams started at once on one node needed ``pool`` > S.)"""
    if not pool or "max_connections=" in url:
        return url
    return url + ("&" if "?" in url else "?") + f"max_connections={pool}"


def _tree_cpu_s(process: ServerProcess) -> float:
    """User + system CPU of a server process and of its live children (``--workers``), in s."""
    total = process.cpu_s()
    assert process.process is not None
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(process.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
    return total


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _ms(ordered: list[int], fraction: float) -> float | None:
    value = percentile(ordered, fraction)  # type: ignore[arg-type]
    return None if value is None else round(value / 1e6, 3)


def _latencies(results: list[WorkerResult]) -> list[int]:
    import array

    values = array.array("q")
    for result in results:
        values.frombytes(result.latencies_ns)
    return sorted(values)


async def run_cluster(broker: str, nodes: int, streams: int, subscribers: int, tokens: int, rate: float,
                      coalesce: bool, *, redis_url: str | None = None, redis_pid: int | None = None,
                      workers: int = 0, pool: int = 0, procs: int = 2, batch: bool = False, burst: int = 1,
                      aligned: bool = False, loop: str = "asyncio", flush_interval_ms: float = 25.0,
                      timeout_s: float = 300.0, auth: str = "none") -> dict[str, Any]:
    """Measure one configuration in fresh hub processes; returns the result row.

    Args:
        broker: ``memory`` (``nodes`` must be 1) or ``redis`` (``redis_url`` required).
        nodes: hub processes.
        redis_pid: the pid of a private redis-server (its figures are then this run's alone).
        workers: ``cbhub serve --workers`` per node (0: the option is not passed).
        pool: redis-py's ``max_connections`` in the hubs' broker URL (0: the hub's own pool).
        Others: as for :func:`tools.bench.fanout.run_shape`.

    Raises:
        ValueError: ``memory`` with more than one node, or ``redis`` without a URL.
        RuntimeError: a process failed to start or a load generator failed.
    """
    import redis.asyncio as aioredis

    if broker == "memory" and nodes != 1:
        raise ValueError("the in-memory broker serves one node; use --broker redis for more")
    if broker == "redis" and not redis_url:
        raise ValueError("--broker redis needs a Redis URL")
    prefix = f"cbhub-bench-{uuid.uuid4().hex[:12]}:"
    client = aioredis.from_url(redis_url) if broker == "redis" and redis_url else None
    processes: list[ServerProcess] = []
    try:
        mock = await start_mock().start()
        processes.append(mock)
        settings, token_query = bench_auth(auth)
        if broker == "redis":
            assert redis_url is not None
            settings.update(broker_url=_with_pool(redis_url, pool), broker_prefix=prefix)
        hubs = [start_hub(mock.url, loop=loop, flush_interval_ms=flush_interval_ms, grace_period_s=60,
                          retention_s=60, **settings) for _ in range(nodes)]
        for hub in hubs:
            if workers:
                hub.argv += ["--workers", str(workers)]
            processes.append(hub)
        await asyncio.gather(*(hub.start() for hub in hubs))
        query = "&".join(part for part in ("batch=1" if batch else "", token_query) if part)
        urls = [hub.url.replace("http", "ws", 1) + "/ws/stream" + (f"?{query}" if query else "") for hub in hubs]
        gate = f"bench-{uuid.uuid4().hex[:8]}"
        prompt = (f"bench [[mock tokens={tokens} tps={rate:g} burst={burst} ttft_ms={{offset_ms}} stamp=1 "
                  f"gate={gate}]]")
        stagger_ms = 1000.0 / rate if rate and not aligned else 0.0
        groups: dict[tuple[int, bool], list[int]] = {}
        for connection in range(streams * subscribers):
            groups.setdefault(node_of(connection, streams, nodes), []).append(connection)
        plans: list[Plan] = []
        local_plan: list[bool] = []
        for (node, watches_own), indexes in sorted(groups.items()):
            parts = split(len(indexes), procs) if nodes == 1 else [list(range(len(indexes)))]
            for part in parts:
                plans.append(Plan(urls[node], "hub", [indexes[i] for i in part], streams, prompt, coalesce,
                                  stagger_ms=stagger_ms))
                local_plan.append(watches_own)
        load = Workers(plans)
        try:
            await load.phase("connect")
            await load.phase("own")
            await load.phase("subscribe")
            rss_before = max(hub.rss_bytes() for hub in hubs)
            loadavg = os.getloadavg()[0]
            measuring = asyncio.create_task(load.phase("measure"))
            async with aiohttp.ClientSession() as session:
                await _wait_gate(session, mock.url, gate, streams)
                redis_before = await redis_counters(client) if client is not None else {}
                mock_before = mock.cpu_s()
                node_before = [_tree_cpu_s(hub) for hub in hubs]
                busy_before = _machine_busy_s()
                started = time.monotonic_ns()
                await session.post(f"{mock.url}/_mock/release", params={"gate": gate})
            results: list[WorkerResult] = await asyncio.wait_for(measuring, timeout_s)
            node_used = [_tree_cpu_s(hub) - before for hub, before in zip(hubs, node_before, strict=True)]
            busy_used = _machine_busy_s() - busy_before
            ended = time.monotonic_ns()
            mock_used = mock.cpu_s() - mock_before
            peak = max((hub.peak_rss_bytes() or 0) for hub in hubs)
            redis_after = await _settled(client) if client is not None else {}
        finally:
            await load.close()
        row = _row("hub", streams, subscribers, tokens, rate, coalesce, batch, results, started, sum(node_used),
                   peak, rss_before, auth)
        events = row["events_delivered"]
        window_s = (ended - started) / 1e9
        client_cpu = row["client_cpu_s"]
        redis_cpu = _delta(redis_after, redis_before, "cpu_s") if client is not None else 0.0
        row.update({
            "scenario": "fanout_cluster",
            "broker": broker,
            "nodes": nodes,
            "workers": workers or None,
            "redis_pool": pool if broker == "redis" else None,
            "burst": burst,
            "loop": loop,
            "aligned": aligned or not rate,
            "hub_cpu_s": round(sum(node_used), 3),
            "node_cpu_s": [round(value, 3) for value in node_used],
            "hub_cpu_us_per_event": row["cpu_us_per_event"],
            "upstream_cpu_s": round(mock_used, 3),
            "loadavg_1m": round(loadavg, 2),
            "machine_busy_cores": round(busy_used / window_s, 2),
            "other_busy_cores": round(max(0.0, busy_used - sum(node_used) - mock_used - client_cpu - redis_cpu)
                                      / window_s, 2),
        })
        row.update(_redis_figures(redis_before, redis_after, events, redis_url, redis_pid, prefix)
                   if client is not None else _no_redis())
        local = _latencies([r for r, here in zip(results, local_plan, strict=True) if here])
        remote = _latencies([r for r, here in zip(results, local_plan, strict=True) if not here])
        for label, ordered in (("local", local), ("remote", remote)):
            row[f"{label}_samples"] = len(ordered)
            for name, fraction in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
                row[f"{label}_{name}_ms"] = _ms(ordered, fraction)
        for name in ("p50", "p99"):
            local_value, remote_value = row[f"local_{name}_ms"], row[f"remote_{name}_ms"]
            row[f"remote_extra_{name}_ms"] = (round(remote_value - local_value, 3)
                                              if local_value is not None and remote_value is not None else None)
        return row
    finally:
        for process in reversed(processes):
            await process.stop()
        if client is not None:
            try:
                left = await _unlink_prefix(client, prefix)
                if left:
                    raise RuntimeError(f"{left} keys under {prefix!r} could not be deleted")
            finally:
                await client.aclose()


async def _settled(client: Any) -> dict[str, float]:
    """Redis's counters once the last publish round trips have landed: read until the
    ``XADD`` count stays the same for 100 ms (at most 2 s)."""
    counters = await redis_counters(client)
    for _ in range(20):
        await asyncio.sleep(0.1)
        again = await redis_counters(client)
        if again.get("calls:xadd") == counters.get("calls:xadd"):
            return again
        counters = again
    return counters


def _redis_figures(before: dict[str, float], after: dict[str, float], events: int, url: str | None,
                   pid: int | None, prefix: str) -> dict[str, Any]:
    calls = {key.removeprefix("calls:"): _delta(after, before, key) for key in after if key.startswith("calls:")}
    inside = script_commands()
    round_trips = sum(value for name, value in calls.items() if name not in inside and name != "info")
    evalsha = calls.get("evalsha", 0.0)
    written = calls.get("xadd", 0.0)
    cpu = _delta(after, before, "cpu_s")
    return {
        "redis_private": pid is not None,
        "redis_prefix": prefix,
        "redis_round_trips": int(round_trips),
        "redis_evalsha": int(evalsha),
        "redis_events_written": int(written),
        "redis_commands": {name: int(value) for name, value in sorted(calls.items()) if value and name != "info"},
        "redis_round_trips_per_event": round(round_trips / events, 5) if events else None,
        "redis_events_per_round_trip": round(written / evalsha, 2) if evalsha else None,
        "redis_cpu_s": round(cpu, 3),
        "redis_cpu_us_per_event": round(cpu / events * 1e6, 3) if events else None,
    }


def _no_redis() -> dict[str, Any]:
    return {"redis_private": None, "redis_prefix": None, "redis_round_trips": None, "redis_evalsha": None,
            "redis_events_written": None, "redis_commands": None, "redis_round_trips_per_event": None,
            "redis_events_per_round_trip": None, "redis_cpu_s": None, "redis_cpu_us_per_event": None}


#: The figures :func:`medians` takes the median of, over the repeats of one configuration.
MEDIAN_KEYS = ("delivered_events_per_s", "hub_cpu_us_per_event", "redis_round_trips_per_event",
               "redis_events_per_round_trip", "redis_cpu_us_per_event", "local_p50_ms", "local_p99_ms",
               "remote_p50_ms", "remote_p99_ms", "remote_extra_p50_ms", "remote_extra_p99_ms",
               "machine_busy_cores", "other_busy_cores", "loadavg_1m")


def config_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two ``fanout_cluster`` rows repeats of one configuration."""
    return (row["broker"], row["nodes"], row.get("workers"), row["streams"], row["subscribers"], str(row["rate"]),
            row["tokens_per_stream"], row["coalesce"], row.get("burst"), row.get("batch"))


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration of the ``fanout_cluster`` rows given (in first-seen order):
    the configuration's keys, ``runs`` (how many), ``ok`` (all were) and the median of each of
    :data:`MEDIAN_KEYS` over the runs (None when no run had it)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("scenario") == "fanout_cluster":
            groups.setdefault(config_key(row), []).append(row)
    out = []
    for group in groups.values():
        first = group[0]
        summary = {key: first.get(key) for key in ("broker", "nodes", "workers", "streams", "subscribers", "rate",
                                                     "tokens_per_stream", "coalesce", "burst", "batch")}
        summary.update(scenario="fanout_cluster_median", runs=len(group), ok=all(row["ok"] for row in group))
        for key in MEDIAN_KEYS:
            values = [row[key] for row in group if row.get(key) is not None]
            summary[key] = round(statistics.median(values), 5) if values else None
        out.append(summary)
    return out


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """``cbhub bench fanout`` with ``--nodes`` or ``--broker redis``: every configuration of
    the command line, ``--repeat`` times each, then one median row per configuration;
    returns 0 when every run was ok."""
    reporter.columns = COLUMNS
    return asyncio.run(_main(args, reporter))


async def _main(args: argparse.Namespace, reporter: Reporter) -> int:
    brokers = list(dict.fromkeys(args.broker or ["memory"]))
    node_counts = list(dict.fromkeys(args.nodes or [1]))
    pairs = [(broker, nodes) for broker in brokers for nodes in node_counts if broker == "redis" or nodes == 1]
    if len(pairs) < len(brokers) * len(node_counts):
        reporter.note("--broker memory serves one node: use --broker redis for --nodes above 1"
                      + ("" if pairs else " (nothing to run)"))
    if not pairs:
        return 2
    shapes = args.shape or ([(2, 3), (4, 1)] if args.quick else [(100, 10), (1000, 2)])
    tokens = args.tokens or (20 if args.quick else 200)
    rates = args.rate or [0.0]
    coalesce_modes = {"off": [False], "on": [True], "both": [False, True]}[args.coalesce]
    procs = args.procs or (2 if (os.cpu_count() or 1) >= 2 and not args.quick else 1)
    configs = [(broker, nodes, shape, rate, coalesce) for broker, nodes in pairs
               for shape in shapes for rate in rates for coalesce in coalesce_modes]
    repeat = max(1, args.repeat)
    failures = 0
    measured: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        redis_url, redis_pid = args.redis_url, None
        if "redis" in brokers and redis_url == "own":
            redis_url, redis_pid = await stack.enter_async_context(private_redis())
        with reporter.progress("fanout cluster", total=len(configs) * repeat) as advance:
            for _ in range(repeat):  # rounds: each configuration once per round, so drifts in load spread
                for broker, nodes, (streams, subscribers), rate, coalesce in configs:
                    row = await run_cluster(broker, nodes, streams, subscribers, tokens, rate, coalesce,
                                            redis_url=redis_url if broker == "redis" else None,
                                            redis_pid=redis_pid if broker == "redis" else None,
                                            workers=args.workers or 0, pool=args.redis_pool, procs=procs,
                                            batch=args.batch, burst=args.burst, aligned=args.aligned, loop=args.loop,
                                            flush_interval_ms=args.flush_interval_ms, timeout_s=args.timeout,
                                            auth=args.auth)
                    reporter.emit(row)
                    measured.append(row)
                    failures += not row["ok"]
                    advance()
    if repeat > 1:
        for summary in medians(measured):
            reporter.emit(summary)
    reporter.table(f"fanout over nodes: {tokens} tokens per stream, Redis "
                   f"{'private' if redis_pid else (redis_url or '-')}")
    return 1 if failures else 0
