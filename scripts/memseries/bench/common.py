"""Shared pieces of the benchmarks: the builds under comparison, payload runs, tables, plots' home, progress.

A benchmark module orchestrates from the tools venv; the measuring itself happens in payload scripts
(`payloads/<name>.py`) run by each build's own Python, which print one JSON object on their last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from memseries import paths
from memseries.bases import DEFAULT_BASE, UPSTREAM
from memseries.errors import SeriesError

PAYLOADS = Path(__file__).parent / "payloads"
# Without a terminal rich would squeeze tables to 80 columns; benchmark tables are wide.
console = Console(width=None if sys.stdout.isatty() else 200)


@dataclass(frozen=True)
class Build:
    label: str  # "3.3.2", "3.3.2+memfix"; with --base 3.1.3: "3.1.3", "3.1.3+memfix", "3.3.2"
    python: Path
    patched: bool

    @property
    def venv(self) -> Path:
        return self.python.parent.parent


BUILD_CHOICES = ("base", "patched", "upstream")


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--builds",
        default=",".join(BUILD_CHOICES),
        help="comma-separated subset of base (unpatched --base), patched (--base + series), upstream (3.3.2; "
        "only when --base is older)",
    )
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"Airflow release under test (default {DEFAULT_BASE})")
    parser.add_argument(
        "--patched-python",
        type=Path,
        help="use this interpreter as the patched build instead of the series venv (e.g. a work venv)",
    )
    parser.add_argument(
        "--base-python",
        type=Path,
        help="use this interpreter as the unpatched build; give one installed the same way as --patched-python "
        "when comparing PSS (venvs hard-linked to uv's cache share pages with each other)",
    )


def builds(args: argparse.Namespace | None = None) -> list[Build]:
    """The builds to compare, their venvs made (or reused) first, unless --base/--patched-python replace them."""
    from memseries.venv import ensure_venv, local_version

    wanted = (getattr(args, "builds", None) or ",".join(BUILD_CHOICES)).split(",")
    unknown = [w for w in wanted if w not in BUILD_CHOICES]
    if unknown:
        raise SeriesError(f"unknown build(s) {unknown}: choose from {', '.join(BUILD_CHOICES)}")
    base = getattr(args, "base", None) or DEFAULT_BASE
    base_python = getattr(args, "base_python", None)
    patched_python = getattr(args, "patched_python", None)
    out = []
    for w in BUILD_CHOICES:
        if w not in wanted:
            continue
        if w == "base" and base_python:
            out.append(Build(base, base_python.absolute(), False))
        elif w == "patched" and patched_python:
            out.append(Build(local_version(base), patched_python.absolute(), True))
        elif w == "base":
            out.append(Build(base, ensure_venv(base, patched=False) / "bin" / "python", False))
        elif w == "patched":
            out.append(Build(local_version(base), ensure_venv(base, patched=True) / "bin" / "python", True))
        elif base != UPSTREAM:
            out.append(Build(UPSTREAM, ensure_venv(UPSTREAM, patched=False) / "bin" / "python", False))
    return out


def run_payload(build: Build, script_name: str, *args: str, timeout: float = 1800, env: dict | None = None) -> dict:
    """Run payloads/<script_name> with the build's Python; returns the JSON object on its last stdout line."""
    script = PAYLOADS / script_name
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [str(build.python), str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        start_new_session=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise SeriesError(
            f"payload {script_name} failed on {build.label} (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise SeriesError(f"payload {script_name} on {build.label} printed no JSON last line: {lines[-1][:200]}") from exc


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


def progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        console=console,
    )


def ratio(a: float, b: float) -> str:
    """a/b as '0.12x', or '-' when b is zero."""
    return f"{a / b:.2f}x" if b else "-"


def mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.1f}"
