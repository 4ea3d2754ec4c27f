"""check: every series applies exactly to its base, in order, and every patch has its trailers, tests and newsfragment."""

from __future__ import annotations

import argparse
import sys

from memseries import series
from memseries.bases import get_base, patched_bases
from memseries.errors import SeriesError

HELP = "verify that every series of every base applies exactly to its pristine wheel and that each patch is complete"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", action="append", help="check only this base (repeatable; default: every patched base)")


def run(args) -> int:
    bases = [get_base(v) for v in args.base] if args.base else patched_bases()
    if not bases:
        raise SeriesError("no patched base found (no airflow-core/patches/<base>/series)")
    failures = 0
    for base in bases:
        for s in base.series:
            try:
                patches = series.load(s)
                problems = [p for patch in patches for p in series.metadata_problems(patch, s)]
                changed = series.apply_to_pristine(base, s, patches)
            except SeriesError as exc:
                print(f"FAIL {base.version}: {exc}", file=sys.stderr)
                failures += 1
                continue
            for problem in problems:
                print(f"FAIL {base.version}: {problem}", file=sys.stderr)
            failures += bool(problems)
            if not problems:
                print(f"ok   {base.version}: {len(patches)} patches apply exactly, {len(changed)} files changed "
                      f"({s.label})")
    return 1 if failures else 0
