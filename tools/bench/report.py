"""Result output shared by every scenario: JSON lines, a terminal table, a progress bar.

A result is one flat dict per measured configuration (a *row*), for example::

    {"scenario": "fanout", "server": "hub", "streams": 10, "subscribers": 100,
     "delivered_events_per_s": 81234.5, "latency_p99_ms": 3.1, ...}

Rows go out as JSON lines the moment they are measured (to stdout, or appended to
``--out FILE``), so a long run that is interrupted keeps what it measured. The table (rich)
and the progress bar go to stderr, so ``cbhub bench fanout > results.jsonl`` keeps stdout
machine-readable. Units are in the key names (``_ms``, ``_s``, ``_bytes``, ``_per_s``, ``_us``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import sys
from collections.abc import Iterator
from typing import IO, Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["Reporter", "conditions", "percentile"]


def conditions() -> dict[str, Any]:
    """The run's conditions, written once at the start of every run as a ``conditions`` row:
    date (UTC, ISO 8601), CPU count, Python and platform versions."""
    return {
        "scenario": "conditions",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """The ``fraction`` quantile (0..1, nearest-rank) of an ascending list; None when empty."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, int(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


class Reporter:
    """Collects rows, writes each as a JSON line at once and prints a table at the end.

    Args:
        out: where JSON lines go (default stdout).
        columns: row keys shown in the terminal table, in order (all keys go to JSON).
        quiet: no table and no progress bar (JSON lines only).
    """

    def __init__(self, out: IO[bytes] | None = None, columns: list[str] | None = None, quiet: bool = False) -> None:
        self.out = out if out is not None else sys.stdout.buffer
        self.columns = columns
        self.rows: list[dict[str, Any]] = []
        self.console = Console(stderr=True)
        if not self.console.is_terminal:
            self.console = Console(stderr=True, width=240)  # a log file keeps whole columns
        self.quiet = quiet

    def emit(self, row: dict[str, Any]) -> None:
        """Record one row and write it as a JSON line now."""
        self.rows.append(row)
        self.out.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
        self.out.flush()

    def note(self, text: str) -> None:
        """A line for the human on the terminal (stderr), e.g. why a peer was skipped."""
        if not self.quiet:
            self.console.print(text)

    @contextlib.contextmanager
    def progress(self, description: str, total: float) -> Iterator[Any]:
        """A progress bar on stderr; yields ``advance(amount)``."""
        if self.quiet or not self.console.is_terminal:
            yield lambda amount=1: None
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda amount=1: bar.advance(task, amount)

    def table(self, title: str) -> None:
        """Print the rows measured so far (except ``conditions``) as one table on stderr."""
        rows = [row for row in self.rows if row.get("scenario") != "conditions"]
        if self.quiet or not rows:
            return
        columns = self.columns or list(dict.fromkeys(key for row in rows for key in row))
        table = Table(title=title)
        for column in columns:
            table.add_column(column, justify="left" if column in ("scenario", "server", "format", "note") else "right")
        for row in rows:
            table.add_row(*(_cell(row.get(column)) for column in columns))
        self.console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
