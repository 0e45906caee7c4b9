"""Plot fan-out results: delivered tokens/s and p99 hub-added latency against the number of
concurrent streams, hub vs the reference server (``limit``).

Usage::

    python -m tools.bench.plot RESULTS.jsonl [MORE.jsonl ...] --png docs/fanout.png

Reads the ``fanout`` rows of ``cbhub bench fanout`` JSON-lines output, keeps those with
``subscribers == 1`` and one rate (``--rate``, default: the most common), and draws one line
per server and coalescing mode. Needs matplotlib (``pip install 'circuit-breaker-hub[plot]'``).
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
from typing import Any

import orjson

__all__ = ["load_rows", "plot", "main"]


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
