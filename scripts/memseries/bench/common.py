"""Shared pieces of the benchmarks: the builds under comparison, payload runs, tables, plots' home, progress.

A benchmark module orchestrates from the tools venv; the measuring itself happens in payload scripts
(`payloads/<name>.py`) run by each build's own Python, which print one JSON object on their last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from memseries.bases import DEFAULT_BASE, UPSTREAM, get_base
from memseries.errors import SeriesError
from memseries.tables import console, markdown_table, mb, print_table, ratio, results_dir, write_markdown_table  # noqa: F401

PAYLOADS = Path(__file__).parent / "payloads"


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
    from memseries.venv import local_version, venv_python

    wanted = (getattr(args, "builds", None) or ",".join(BUILD_CHOICES)).split(",")
    unknown = [w for w in wanted if w not in BUILD_CHOICES]
    if unknown:
        raise SeriesError(f"unknown build(s) {unknown}: choose from {', '.join(BUILD_CHOICES)}")
    base = get_base(getattr(args, "base", None) or DEFAULT_BASE)
    upstream = get_base(UPSTREAM) if base.version != UPSTREAM else None
    base_python = getattr(args, "base_python", None)
    patched_python = getattr(args, "patched_python", None)
    out = []
    for w in BUILD_CHOICES:
        if w not in wanted:
            continue
        if w == "base" and base_python:
            out.append(Build(base.version, base_python.absolute(), False))
        elif w == "patched" and patched_python:
            out.append(Build(local_version(base.version), patched_python.absolute(), True))
        elif w == "base":
            out.append(Build(base.version, venv_python(base, patched=False), False))
        elif w == "patched":
            out.append(Build(local_version(base.version), venv_python(base, patched=True), True))
        elif upstream:
            out.append(Build(UPSTREAM, venv_python(upstream, patched=False), False))
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


def progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        console=console,
    )
