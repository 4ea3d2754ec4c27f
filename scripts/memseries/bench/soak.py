"""`memseries bench soak`: the `memseries demo` stack for a long run, unpatched vs patched base (+ upstream 3.3.2).

Same harness as the demo (memseries.stack: real api-server, dag-processor and scheduler with LocalExecutor over
examples/dags, aged forked children, psutil PSS/USS sampling, task runs from the metadata DB), run for
--duration per build (30 minutes by default), one build after the other. Output: the per-process table, a
summary with task throughput and worker gc.collect() times, ratios, and bench-results/soak-<timestamp>/
(table.md, samples.csv, soak.png).
"""

from __future__ import annotations

import argparse

from memseries.stackrun.cli import add_common_arguments, run_all

HELP = "long run of the real stack (default 30m per build): base vs base+memfix (vs 3.3.2), table + PNG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "30m")
    parser.set_defaults(sample_interval=15.0, age=60.0)
    parser.add_argument(
        "--no-upstream",
        dest="upstream",
        action="store_false",
        help="leave out upstream 3.3.2 when the base is older (default: compare all three builds)",
    )


def run(args) -> int:
    return run_all(args, "soak", "memseries bench soak")
