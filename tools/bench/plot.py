"""Plot fan-out results: delivered tokens/s and p99 hub-added latency against the number of
concurrent streams, hub vs the reference server (``limit``).

Usage::

    python -m tools.bench.plot RESULTS.jsonl [MORE.jsonl ...] --png docs/fanout.png
    python -m tools.bench.plot --cluster RESULTS.jsonl [...] --png docs/cluster.png

Reads the ``fanout`` rows of ``cbhub bench fanout`` JSON-lines output, keeps those with
``subscribers == 1`` and one rate (``--rate``, default: the most common), and draws one line
per server and coalescing mode. Needs matplotlib (``pip install 'circuit-breaker-hub[plot]'``).

:func:`plot_soak` draws a ``cbhub bench soak`` run instead: the hub's RSS, open file descriptors
and tasks over time, the attack phase shaded (``cbhub bench soak --png FILE``, or
``python -m tools.bench.soak RESULTS.jsonl --png FILE`` from a saved run).

:func:`plot_cluster` (``--cluster``) draws ``cbhub bench fanout --nodes N --broker redis`` runs
(issue 13): per configuration the median over its repeats of the hubs' and Redis's CPU per
delivered event, the added latency of subscribers on the owning node and on other nodes, and
the Redis round trips per delivered event.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
from typing import Any

import orjson

__all__ = ["load_rows", "plot", "main", "plot_soak", "plot_cluster"]


def load_rows(paths: list[pathlib.Path]) -> list[dict[str, Any]]:
    """Every ``fanout`` row of the given JSON-lines files."""
    rows = []
    for path in paths:
        for line in path.read_bytes().splitlines():
            if line.strip():
                row = orjson.loads(line)
                if row.get("scenario") == "fanout" and row.get("ok"):
                    rows.append(row)
    return rows


def plot(rows: list[dict[str, Any]], png: pathlib.Path, rate: Any = None, title: str = "") -> int:
    """Draw the two panels into ``png``; returns the number of lines drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in rows if row["subscribers"] == 1]
    if rate is None and rows:
        rate = collections.Counter(row["rate"] for row in rows).most_common(1)[0][0]
    rows = [row for row in rows if str(row["rate"]) == str(rate)]
    series: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in rows:
        label = row["server"] + (" (coalescing)" if row.get("coalesce") else "")
        series[label].append(row)
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, points in sorted(series.items()):
        points.sort(key=lambda row: row["streams"])
        streams = [row["streams"] for row in points]
        style = "-o" if label.startswith("hub") else "--s"
        throughput.plot(streams, [row["delivered_tokens_per_s"] for row in points], style, label=label)
        latency.plot(streams, [row["latency_p99_ms"] for row in points], style, label=label)
    throughput.set(xlabel="concurrent streams (1 subscriber each)", ylabel="delivered tokens/s",
                   title=f"throughput, {rate} tokens/s per stream")
    latency.set(xlabel="concurrent streams (1 subscriber each)", ylabel="p99 added latency (ms)",
                title="p99 latency, upstream send → client receive", yscale="log")
    for axes in (throughput, latency):
        axes.grid(True, alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return len(series)


def plot_soak(rows: list[dict[str, Any]], png: pathlib.Path, title: str = "") -> int:
    """Draw a soak run (the ``scenario: "soak"`` rows of ``cbhub bench soak``) into ``png``.

    Three panels over the run's time (seconds): the hub's RSS and the memory governor's
    estimate of what it holds (MiB), with the budget as a dashed line; its open file
    descriptors, client sockets and provider sockets; its asyncio tasks. The attack phase is
    shaded, and the normal clients' p99 time to first token of each phase is in the title.

    Returns:
        The number of samples drawn (0: nothing to draw, no file written).

    Raises:
        ImportError: matplotlib is not installed.
    """
    samples = [row for row in rows if row.get("scenario") == "soak" and row.get("row") == "sample"]
    summaries = [row for row in rows if row.get("scenario") == "soak" and row.get("row") == "summary"]
    if not samples:
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summaries[-1] if summaries else {}
    mib = float(2**20)

    def series(key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
        points = [(row["t_s"], row[key] / scale) for row in samples if row.get(key) is not None]
        return [t for t, _ in points], [v for _, v in points]

    figure, (memory, fds, tasks) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    memory.plot(*series("rss_bytes", mib), "-", label="RSS")
    if any(row.get("held_bytes") is not None for row in samples):
        memory.plot(*series("held_bytes", mib), "-", alpha=0.7, label="held stream data (governor's estimate)")
    budget = (summary.get("settings") or {}).get("memory_budget_bytes")
    if budget:
        memory.axhline(budget / mib, linestyle="--", color="grey", label="memory budget")
    memory.set(ylabel="MiB", title="hub memory")
    fds.plot(*series("fds"), "-", label="open fds")
    fds.plot(*series("client_sockets"), "-", label="client sockets")
    fds.plot(*series("upstream_sockets"), "-", label="provider sockets")
    fds.set(ylabel="count", title="hub file descriptors")
    if any(row.get("tasks") is not None for row in samples):
        tasks.plot(*series("tasks"), "-", label="asyncio tasks")
    tasks.plot(*series("hub_connections"), "-", alpha=0.7, label="connections (/healthz)")
    tasks.set(xlabel="seconds", ylabel="count", title="hub tasks and connections")
    attack = [row["t_s"] for row in samples if row.get("phase") == "attack"]
    phases = summary.get("phases") or {}
    if "attack" in phases:
        span = (phases["attack"]["from_s"], phases["attack"]["to_s"])
    elif attack:
        span = (min(attack), max(attack))
    else:
        span = None
    for axes in (memory, fds, tasks):
        if span is not None:
            axes.axvspan(*span, color="tab:red", alpha=0.12, label="attack" if axes is memory else None)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="upper left", fontsize=8)
    ttft = ", ".join(f"{name} {stats.get('ttft_p99_ms')} ms" for name, stats in phases.items())
    heading = title or "cbhub bench soak"
    figure.suptitle(heading + (f"\nnormal clients' p99 time to first token: {ttft}" if ttft else ""), fontsize=9)
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return len(samples)


def _cluster_label(row: dict[str, Any]) -> str:
    if row["broker"] == "memory":
        return "1 node\nin memory"
    label = f"{row['nodes']} node{'s' if row['nodes'] > 1 else ''}\nRedis"
    return label + (f"\n{row['workers']} workers" if row.get("workers") else "")


def plot_cluster(rows: list[dict[str, Any]], png: pathlib.Path, title: str = "",
                 latency_shape: str | None = None) -> int:
    """Draw ``fanout_cluster`` runs into ``png`` (three panels; the median of each
    configuration's repeats, :func:`tools.bench.cluster.medians`):

    1. CPU per delivered event of all hub processes together, as a multiple of the in-memory
       node's at the same shape and rate (µs written above each bar), with Redis's own CPU per
       event stacked on it: one group of bars per shape, one bar per broker and node count; a
       dashed line at 1.5 (the issue's target for 2 nodes).
    2. Added latency p50 and p99 (ms, log scale) of subscribers on the owning node and on
       other nodes, for ``latency_shape`` (``SxK``, e.g. ``100x2``; default: the paced shape
       with K >= 2 that has the most configurations).
    3. Redis round trips per delivered event (log scale) for every Redis configuration, with
       the issue's 0.1 target as a line.

    Returns:
        The number of configurations drawn (0: no ``fanout_cluster`` rows, no file written).

    Raises:
        ImportError: matplotlib is not installed.
    """
    from tools.bench.cluster import medians

    summaries = [row for row in medians(rows) if row["ok"]]
    if not summaries:
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def shape(row: dict[str, Any]) -> str:
        rate = "max speed" if str(row["rate"]) == "max" else f"{float(row['rate']):g} tok/s"
        return f"{row['streams']}x{row['subscribers']}, {rate}"

    def order(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["broker"] != "memory", row["nodes"], row.get("workers") or 0)

    # the CPU panel compares with the in-memory node: only shapes that have one
    shapes = list(dict.fromkeys(shape(row) for row in summaries if row["broker"] == "memory"))
    figure, (cpu, latency, trips) = plt.subplots(1, 3, figsize=(15, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = sorted({(order(row), _cluster_label(row)) for row in summaries})
    width = 0.8 / max(1, len(labels))
    legend: set[str] = set()
    for index, (_key, label) in enumerate(labels):
        for position, name in enumerate(shapes):
            match = [row for row in summaries if shape(row) == name and _cluster_label(row) == label]
            base = [row["hub_cpu_us_per_event"] for row in summaries
                    if shape(row) == name and row["broker"] == "memory" and row["hub_cpu_us_per_event"]]
            if not match or match[0]["hub_cpu_us_per_event"] is None or not base:
                continue
            row = match[0]
            x = position + (index - (len(labels) - 1) / 2) * width
            hub = row["hub_cpu_us_per_event"] / base[0]
            cpu.bar(x, hub, width, color=colors[index % len(colors)],
                    label=None if label in legend else label.replace("\n", " "))
            legend.add(label)
            top = hub
            if row.get("redis_cpu_us_per_event"):
                cpu.bar(x, row["redis_cpu_us_per_event"] / base[0], width, bottom=hub,
                        color=colors[index % len(colors)], alpha=0.35, hatch="//")
                top += row["redis_cpu_us_per_event"] / base[0]
            cpu.annotate(f"{row['hub_cpu_us_per_event']:.3g}", (x, top), ha="center", va="bottom", fontsize=6,
                         rotation=90)
    cpu.axhline(1.5, color="k", linestyle="--", linewidth=1)
    cpu.set_ylim(0, cpu.get_ylim()[1] * 1.12)  # room for the µs written above the bars
    cpu.set_xticks(range(len(shapes)), [name.replace(", ", "\n") for name in shapes], fontsize=8)
    cpu.set(ylabel="CPU per delivered event, × one in-memory node",
            title="hub processes (solid, µs above) + Redis (hatched)\ndashed: the 1.5x target (2 nodes)")
    cpu.legend(fontsize=7)

    paced = [row for row in summaries if str(row["rate"]) != "max" and row["subscribers"] >= 2]
    if latency_shape:
        paced = [row for row in paced if f"{row['streams']}x{row['subscribers']}" == latency_shape]
    if paced:
        counts = collections.Counter(shape(row) for row in paced)
        chosen = max(counts, key=lambda name: (counts[name], -paced[0]["subscribers"]))
        points = sorted((row for row in paced if shape(row) == chosen), key=order)
        names = [_cluster_label(row) for row in points]
        for offset, (key, text, style) in enumerate((("local_p50_ms", "owning node p50", "o"),
                                                     ("remote_p50_ms", "other node p50", "s"),
                                                     ("local_p99_ms", "owning node p99", "^"),
                                                     ("remote_p99_ms", "other node p99", "v"))):
            values = [row.get(key) for row in points]
            xs = [i + (offset - 1.5) * 0.12 for i, value in enumerate(values) if value]
            latency.plot(xs, [value for value in values if value], style, markersize=8, label=text)
        latency.set_xticks(range(len(names)), names, fontsize=8)
        latency.set(yscale="log", ylabel="added latency, ms (upstream send → client)",
                    title=f"latency by subscriber placement, {chosen}")
        latency.legend(fontsize=7)

    redis_rows = sorted((row for row in summaries if row["broker"] == "redis"
                         and row.get("redis_round_trips_per_event")), key=lambda row: (shape(row), order(row)))
    if redis_rows:
        names = [f"{shape(row)}\n{_cluster_label(row).replace(chr(10), ' ')}" for row in redis_rows]
        trips.barh(range(len(redis_rows)), [row["redis_round_trips_per_event"] for row in redis_rows],
                   color=colors[1])
        trips.axvline(0.1, color="k", linestyle="--", linewidth=1, label="target 0.1 (1000 paced streams)")
        trips.set_yticks(range(len(redis_rows)), names, fontsize=7)
        trips.invert_yaxis()
        trips.set(xscale="log", xlabel="Redis round trips per delivered event", title="Redis round trips")
        trips.legend(fontsize=7)
    for axes in (cpu, latency, trips):
        axes.grid(True, alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return len(summaries)


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring); returns 1 when nothing could be drawn."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.plot")
    parser.add_argument("results", nargs="+", type=pathlib.Path)
    parser.add_argument("--png", type=pathlib.Path, required=True)
    parser.add_argument("--rate", default=None, help="which rate's rows to draw (default: the most common)")
    parser.add_argument("--title", default="")
    parser.add_argument("--latency-shape", default=None, help="--cluster: the SxK whose latencies to draw")
    parser.add_argument("--cluster", action="store_true",
                        help="draw the fanout_cluster rows (cbhub bench fanout --nodes N --broker redis) instead")
    args = parser.parse_args(argv)
    if args.cluster:
        rows = [orjson.loads(line) for path in args.results for line in path.read_bytes().splitlines() if line.strip()]
        drawn = plot_cluster(rows, args.png, args.title, args.latency_shape)
        if not drawn:
            print("no fanout_cluster rows to draw", file=sys.stderr)
            return 1
        print(f"wrote {args.png} ({drawn} configurations)")
        return 0
    drawn = plot(load_rows(args.results), args.png, args.rate, args.title)
    if not drawn:
        print("no fanout rows with one subscriber per stream to draw", file=sys.stderr)
        return 1
    print(f"wrote {args.png} ({drawn} series)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
