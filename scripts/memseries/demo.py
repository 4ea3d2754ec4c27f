"""`memseries demo`: the real Airflow stack on an unpatched vs patched base (3.3.2 by default; --base 3.1.3).

For each build: start api-server + dag-processor + scheduler (LocalExecutor) on SQLite (or PostgreSQL) over the
bundled example DAGs (examples/dags: many short Bash/Python tasks, one DAG importing numpy), age every forked
child with a forced full collection every --age seconds (harness only), sample PSS/USS of every process with
psutil, and count task runs in the metadata DB. Then print the per-process table, and write a markdown table, the
raw samples (CSV) and a PNG (per-process PSS/USS bars like the smem charts in apache/airflow#58365, plus memory
over time) into bench-results/demo-<timestamp>/.

The builds run one after the other (never side by side: they would share 2 cores and distort each other).
"""

from __future__ import annotations

import argparse
import os
import sys

from memseries.stackrun.cli import add_common_arguments, run_all

HELP = (
    "run the real Airflow stack on an unpatched and a patched base (default 3.3.2; aged workers), print the memory "
    "table + PNG"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, os.environ.get("DURATION") or "3m")
    parser.add_argument("--upstream", action="store_true", help="also run upstream Airflow 3.3.2 (when the base is older)")


def run(args) -> int:
    return run_all(args, "demo", "memseries demo")


if __name__ == "__main__":  # pragma: no cover
    ap = argparse.ArgumentParser(prog="memseries demo", description=HELP)
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
