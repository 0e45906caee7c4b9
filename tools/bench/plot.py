"""Plot fan-out results: delivered tokens/s and p99 hub-added latency against the number of
concurrent streams, hub vs the reference server (``limit``).

Usage::

    python -m tools.bench.plot RESULTS.jsonl [MORE.jsonl ...] --png docs/fanout.png

Reads the ``fanout`` rows of ``cbhub bench fanout`` JSON-lines output, keeps those with
``subscribers == 1`` and one rate (``--rate``, default: the most common), and draws one line
per server and coalescing mode. Needs matplotlib (``pip install 'circuit-breaker-hub[plot]'``).

:func:`plot_soak` draws a ``cbhub bench soak`` run instead: the hub's RSS, open file descriptors
and tasks over time, the attack phase shaded (``cbhub bench soak --png FILE``, or
``python -m tools.bench.soak RESULTS.jsonl --png FILE`` from a saved run).
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
from typing import Any

import orjson

__all__ = ["load_rows", "plot", "main", "plot_soak"]


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


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring); returns 1 when nothing could be drawn."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.plot")
    parser.add_argument("results", nargs="+", type=pathlib.Path)
    parser.add_argument("--png", type=pathlib.Path, required=True)
    parser.add_argument("--rate", default=None, help="which rate's rows to draw (default: the most common)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    drawn = plot(load_rows(args.results), args.png, args.rate, args.title)
    if not drawn:
        print("no fanout rows with one subscriber per stream to draw", file=sys.stderr)
        return 1
    print(f"wrote {args.png} ({drawn} series)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
