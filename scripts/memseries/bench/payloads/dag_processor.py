"""Payload of `memseries bench dag-processor`: the real `airflow dag-processor` parsing numpy-heavy DAG files.

Runs inside one Airflow venv (stdlib + psutil + airflow only; the DAG files import numpy, which the venv's
constraints install). It:
- migrates a fresh SQLite AIRFLOW_HOME and writes `--dags` DAG files that import numpy (and a few of its
  commonly used submodules) and define a small DAG;
- puts a `sitecustomize` on PYTHONPATH that imports a probe module in every process. In the manager, the probe
  registers an at-fork hook that notes, in each forked parse process, the fork moment and whether numpy was
  already imported (inherited from the manager). At the end of each DAG file, the probe records in the parse
  process: wall time since the fork (= the parse up to the end of the DAG file: process set-up, imports, DAG
  definition; serialisation afterwards is not included), USS/PSS/RSS (psutil memory_full_info()), then the
  time of a full `gc.collect()` and USS/PSS after it, the number of objects the collector tracks there and the
  inherited freeze count. Records are appended as JSON lines to a file;
- runs the real `python -m airflow dag-processor` (min_file_process_interval 0, so files are parsed back to
  back) in its own process group, with `[dag_processor] preload_modules` set when `--preload` is given, and
  stops the group (SIGTERM, then SIGKILL) once DAGS x RUNS parses are recorded (or after `--timeout`).
  Not `--num-runs`: 3.3.2's manager exits on it before its first parse finishes (its max_runs check passes
  while no file has stats yet);
- collects the manager's own "Froze DAG processor heap" / "Preloaded module" log lines (patched build only).
Prints one JSON object on the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = r"""
import gc, json, os, sys, time

_OUT = os.environ.get("MEMSERIES_DAGPROC_OUT")
_fork = {}


def _after_fork_in_child():
    _fork["t"] = time.perf_counter()
    _fork["numpy_inherited"] = sys.modules.get("numpy") is not None
    if os.environ.get("MEMSERIES_DAGPROC_FORK_USS"):  # diagnostics only: costs a few ms of parse time
        import psutil

        _fork["uss_at_fork"] = psutil.Process().memory_full_info().uss


if _OUT:
    os.register_at_fork(after_in_child=_after_fork_in_child)


def report(dag_file):
    end = time.perf_counter()
    import psutil

    proc = psutil.Process()
    before = proc.memory_full_info()
    t0 = time.perf_counter()
    gc.collect()
    gc_s = time.perf_counter() - t0
    after = proc.memory_full_info()
    record = {
        "file": os.path.basename(dag_file),
        "pid": os.getpid(),
        "t_end": time.time(),
        "parse_s": end - _fork["t"] if "t" in _fork else None,
        "numpy_inherited": _fork.get("numpy_inherited"),
        "uss_at_fork": _fork.get("uss_at_fork"),
        "uss": before.uss,
        "pss": before.pss,
        "rss": before.rss,
        "gc_s": gc_s,
        "uss_after_gc": after.uss,
        "pss_after_gc": after.pss,
        "tracked_after_gc": len(gc.get_objects()),
        "freeze_count": gc.get_freeze_count(),
    }
    with open(_OUT, "a") as f:
        f.write(json.dumps(record) + "\n")
"""

SITECUSTOMIZE = "import _memseries_dagproc_probe  # noqa: F401\n"

NUMPY_IMPORTS = """
import numpy as np
import numpy.fft
import numpy.linalg
import numpy.ma
import numpy.polynomial
import numpy.random

WEIGHTS = np.linspace(0.0, 1.0, 16)
"""

DAG = """{imports}
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("numpy_heavy_{n}", schedule=None, tags=["memseries"]):
    EmptyOperator(task_id="extract") >> EmptyOperator(task_id="load")

import _memseries_dagproc_probe

_memseries_dagproc_probe.report(__file__)
"""

PRELOAD_DEFAULT = "numpy, numpy.fft, numpy.linalg, numpy.ma, numpy.polynomial, numpy.random"
LOG_LINE = re.compile(
    r"(Froze DAG processor heap.*?objects frozen|Preloaded module \S+ into the DAG processor manager: [^\[]*)"
)


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dags", type=int, default=4, help="number of DAG files (4)")
    parser.add_argument("--runs", type=int, default=6, help="parses of each file (6)")
    parser.add_argument("--parallelism", type=int, default=2, help="[dag_processor] parsing_processes (2)")
    parser.add_argument(
        "--preload",
        default="",
        help=f"[dag_processor] preload_modules ('' = unset); 'default' = {PRELOAD_DEFAULT!r}",
    )
    parser.add_argument(
        "--no-library",
        action="store_true",
        help="DAG files without the numpy imports (to measure the parse-process floor)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up on the dag-processor after (600 s)"
    )
    args = parser.parse_args()
    preload = PRELOAD_DEFAULT if args.preload == "default" else args.preload

    home = Path(tempfile.mkdtemp(prefix="memseries-bench-dagproc-"))
    try:
        dags = home / "dags"
        dags.mkdir()
        probe_dir = home / "probe"
        probe_dir.mkdir()
        (probe_dir / "_memseries_dagproc_probe.py").write_text(PROBE)
        (probe_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        for n in range(args.dags):
            imports = "" if args.no_library else NUMPY_IMPORTS
            (dags / f"numpy_heavy_{n}.py").write_text(DAG.format(n=n, imports=imports))
        out = home / "parses.jsonl"
        out.touch()
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__DATABASE__LOAD_DEFAULT_CONNECTIONS": "False",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "0",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": str(args.parallelism),
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "0",
            "PYTHONPATH": str(probe_dir),
            "MEMSERIES_DAGPROC_OUT": str(out),
        }
        env.pop("AIRFLOW__DAG_PROCESSOR__PRELOAD_MODULES", None)
        if preload:
            env["AIRFLOW__DAG_PROCESSOR__PRELOAD_MODULES"] = preload
        migrate = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if migrate.returncode != 0:
            print(migrate.stderr[-3000:], file=sys.stderr)
            return 1

        log_path = home / "dag-processor.log"
        start = time.monotonic()
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "airflow", "dag-processor"],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            expected = args.dags * args.runs
            deadline = start + args.timeout
            rc = None
            while time.monotonic() < deadline:
                if _count_lines(out) >= expected:
                    break
                rc = proc.poll()
                if rc is not None:
                    break
                time.sleep(0.5)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=15)
                    break
                except subprocess.TimeoutExpired:
                    continue
        wall_s = time.monotonic() - start
        log_text = log_path.read_text(errors="replace")
        parses = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        parses = sorted(parses, key=lambda r: r["t_end"])[:expected]
        if len(parses) < expected:
            print(log_text[-4000:], file=sys.stderr)
            print(f"dag-processor exit {rc}, {len(parses)}/{expected} parses recorded", file=sys.stderr)
            if not parses:
                return 1
        import airflow

        result = {
            "airflow_version": airflow.__version__,
            "preload_modules": preload,
            "dags": args.dags,
            "runs": args.runs,
            "parallelism": args.parallelism,
            "exit_code": rc,  # None: still running when stopped after the wanted parses (normal)
            "wall_s": wall_s,
            "parses": parses,
            "manager_log": [m.group(1).strip() for m in LOG_LINE.finditer(log_text)],
        }
        print(json.dumps(result))
        return 0
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
