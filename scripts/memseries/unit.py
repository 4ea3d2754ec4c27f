"""unit: run a base's own test modules (the `Tests:` trailers of its series) in one of its venvs.

airflow-core/tests/ is shared by every base: each base runs only the modules its series lists, so a 3.3.2 test
never runs on 3.1.3 and the other way round. `--list` prints the modules and runs nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from memseries import paths, series
from memseries.bases import DEFAULT_BASE, get_base
from memseries.venv import ensure_venv

HELP = "run the test modules a base's series lists (Tests: trailers) in its patched venv (or --unpatched/--python)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"Airflow release (default {DEFAULT_BASE})")
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgres"))
    parser.add_argument("--list", action="store_true", help="print the base's test modules, one a line; run nothing")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--unpatched", action="store_true", help="run them in the unpatched venv (most must fail)")
    which.add_argument("--python", type=Path, help="run them with this interpreter instead of the base's venv")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: extra pytest arguments")


def run(args) -> int:
    base = get_base(args.base)
    modules = series.base_test_modules(base)
    if args.list:
        for m in modules:
            print(m)
        return 0
    if not modules:
        print(f"base {base.version} has no series: no test modules to run")
        return 0
    python = args.python or ensure_venv(base.version, patched=not args.unpatched) / "bin" / "python"
    extra = [a for a in args.pytest_args if a != "--"]
    cmd = [str(python), "-m", "pytest", *modules, "-q", "-p", "no:cacheprovider", f"--backend={args.backend}", *extra]
    print(f"memseries unit: base {base.version}, {args.backend}, {python}: {len(modules)} module(s)", flush=True)
    return subprocess.run(cmd, cwd=paths.REPO, env={**os.environ, "MEMSERIES_BACKEND": args.backend}).returncode
