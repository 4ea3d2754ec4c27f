"""Tables and result directories shared by `demo` and every benchmark (neither imports the other)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from memseries import paths

# Without a terminal rich would squeeze tables to 80 columns; benchmark tables are wide.
console = Console(width=None if sys.stdout.isatty() else 200)


def results_dir(name: str) -> Path:
    d = paths.BENCH_RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def print_table(title: str, headers: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for h in headers:
        table.add_column(str(h), justify="right" if h != headers[0] else "left")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    console.print(table)


def markdown_table(title: str, headers: list[str], rows: list[list]) -> str:
    out = [f"### {title}", "", "| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def write_markdown_table(path: Path, title: str, headers: list[str], rows: list[list]) -> None:
    """Append the table to `path` (a run's tables share one markdown file)."""
    with path.open("a") as f:
        f.write(markdown_table(title, headers, rows) + "\n")


def ratio(a: float, b: float) -> str:
    """a/b as '0.12x', or '-' when b is zero."""
    return f"{a / b:.2f}x" if b else "-"


def mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.1f}"
