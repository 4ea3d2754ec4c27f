"""unit: run a base's own test modules (the `Tests:` trailers of its series) in one of its venvs.

The test trees (airflow-core/tests/, providers/<name>/tests/) are shared by every base: each base runs only the
modules its series list, so a 3.3.2 test never runs on 3.1.3 and the other way round. One pytest run per
distribution (each tree has its own conftest); the backend reaches them as MEMSERIES_BACKEND. `--list` prints
the modules and runs nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from memseries import paths, series
from memseries.bases import DEFAULT_BASE, get_base
from memseries.venv import DEFAULT_PYTHON, PYTHONS, venv_python

HELP = "run the test modules a base's series list (Tests: trailers) in its patched venv (or --unpatched/--python)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"Airflow release (default {DEFAULT_BASE})")
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgres"))
    parser.add_argument("--list", action="store_true", help="print the base's test modules, one a line; run nothing")
    parser.add_argument("--python-version", default=DEFAULT_PYTHON, choices=PYTHONS,
                        help=f"run in the base's venv for this Python (default {DEFAULT_PYTHON})")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--unpatched", action="store_true", help="run them in the unpatched venv (most must fail)")
    which.add_argument("--python", type=Path, help="run them with this interpreter instead of the base's venv")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: extra pytest arguments")


def run(args) -> int:
    base = get_base(args.base)
    groups = [(s, modules) for s, modules in series.base_test_modules(base) if modules]
    if args.list:
        for _, modules in groups:
            for m in modules:
                print(m)
        return 0
    if not groups:
        print(f"base {base.version} has no series: no test modules to run")
        return 0
    python = args.python or venv_python(base, patched=not args.unpatched, python=args.python_version)
    extra = [a for a in args.pytest_args if a != "--"]
    rc = 0
    for s, modules in groups:
        print(f"memseries unit: base {base.version}, {s.label}, {args.backend}, {python}: {len(modules)} module(s)",
              flush=True)
        cmd = [str(python), "-m", "pytest", *modules, "-q", "-p", "no:cacheprovider", *extra]
        env = {**os.environ, "MEMSERIES_BACKEND": args.backend}
        rc = rc or subprocess.run(cmd, cwd=paths.REPO, env=env).returncode
    return rc
