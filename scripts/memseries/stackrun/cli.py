"""The command-line side shared by `memseries demo` and `memseries bench soak`: arguments and the whole run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from memseries.bases import DEFAULT_BASE
from memseries.stackrun.report import report
from memseries.stackrun.run import parse_duration, resolve_builds, run_stack


def add_common_arguments(parser: argparse.ArgumentParser, default_duration: str) -> None:
    parser.add_argument(
        "--duration",
        type=parse_duration,
        default=parse_duration(default_duration),
        help=f"how long each stack runs after start-up (e.g. 90s, 3m, 1h; default {default_duration})",
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="metadata database (postgres: a fresh database on 127.0.0.1:5432, dropped afterwards)",
    )
    parser.add_argument(
        "--parallelism", type=int, default=4, help="[core] parallelism = LocalExecutor workers"
    )
    parser.add_argument(
        "--age",
        type=float,
        default=30.0,
        help="seconds between forced gc.collect() in every forked child (0 = no aging; default 30)",
    )
    parser.add_argument("--sample-interval", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument(
        "--unpatched-venv", type=Path, help="use this venv as the unpatched base instead of building it"
    )
    parser.add_argument(
        "--patched-venv", type=Path, help="use this venv as the patched base instead of building it"
    )
    parser.add_argument("--upstream-venv", type=Path, help="use this venv as upstream 3.3.2")
    parser.add_argument(
        "--base", default=os.environ.get("BASE") or DEFAULT_BASE, help=f"Airflow release (default {DEFAULT_BASE})"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, os.environ.get("DURATION") or "3m")
    parser.add_argument("--upstream", action="store_true", help="also run upstream Airflow 3.3.2 (when the base is older)")


def run_all(args, name: str, title: str) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console()
    if args.duration <= 0 or args.parallelism < 1:
        console.print("[red]--duration and --parallelism must be positive[/red]")
        return 2
    try:
        builds = resolve_builds(args, console.print)
    except Exception as e:  # noqa: BLE001 - a build failure is a user-facing error
        console.print(f"[red]could not prepare the venvs: {e}[/red]")
        return 1
    console.print(
        f"{title}: {', '.join(f'{b.label} ({b.venv})' for b in builds)}; {args.backend}, LocalExecutor "
        f"parallelism {args.parallelism}, {args.duration:.0f}s each, forced gc.collect() every {args.age:g}s "
        "in forked children"
    )
    results = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        for b in builds:
            results.append(run_stack(b, args, progress=progress, log=console.print))
    report(results, name, title)
    failed = [r for r in results if r.error]
    for r in failed:
        console.print(f"[red]{r.build.label} failed:[/red] {r.error[:2000]}")
    return 1 if failed else 0
