"""Payload of `memseries bench job-imports`: real `airflow dag-processor` / `airflow triggerer` at steady state.

Runs inside one Airflow venv (stdlib + psutil + airflow only). For each component it:
- starts the real CLI command (`python -m airflow <component>`) in its own process group, against a temp
  AIRFLOW_HOME with a freshly migrated SQLite DB and a dags folder of a few small DAGs;
- puts a `sitecustomize` on PYTHONPATH whose daemon thread (main process only: threads do not survive fork)
  writes the process's loaded-module picture (all modules, `airflow.executors.*` modules) to a JSON file
  every second;
- runs with PYTHONPROFILEIMPORTTIME=1 and sums the `import time:` lines on the process's stderr (the parse
  and trigger-runner children are forked and send their stderr to the supervisor's sockets, not here);
- waits until steady (warm-up elapsed and the module count unchanged for a while), samples psutil
  memory_full_info() (USS/PSS/RSS) of the main process and of its whole process tree, then stops the
  group with SIGTERM, and SIGKILL if it is still there.
Prints one JSON object on the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _plumbing import stop_group, tree_memory

SITECUSTOMIZE = r"""
import json, os, sys, threading, time

_out = os.environ.get("JOB_IMPORTS_PROBE_DIR")
if _out:
    _t0 = time.time()

    def _probe():
        pid = os.getpid()
        path = os.path.join(_out, f"{pid}.json")
        while True:
            mods = list(sys.modules)
            data = {
                "pid": pid,
                "t": time.time() - _t0,
                "n_modules": len(mods),
                "n_airflow_modules": sum(1 for m in mods if m == "airflow" or m.startswith("airflow.")),
                "executor_modules": sorted(m for m in mods if m.startswith("airflow.executors")),
            }
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, path)
            time.sleep(1.0)

    threading.Thread(target=_probe, name="job-imports-probe", daemon=True).start()
"""

DAG = """
from datetime import datetime
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("job_imports_{n}", start_date=datetime(2025, 1, 1), schedule="@daily", catchup=False):
    EmptyOperator(task_id="a") >> EmptyOperator(task_id="b")
"""

IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)\s*$")


def parse_importtime(stderr_text: str) -> dict:
    """Total import time, and the part spent importing airflow.executors.* (with everything they pull in)."""
    total_us = 0
    executors_us = 0
    n = 0
    entries = []  # (depth, name, cumulative_us) in post-order
    for line in stderr_text.splitlines():
        m = IMPORT_LINE.match(line)
        if not m:
            continue
        self_us, cum_us, indent, name = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        total_us += self_us
        n += 1
        entries.append((len(indent), name, cum_us))
    # -X importtime prints in post-order (a module after everything it imported, one level deeper). Walk it
    # backwards (parents first) and add up the cumulative time of each executor module that has no executor
    # module above it: the whole cost of importing executor code, including what it pulls in.
    stack: list[tuple[int, str, int]] = []
    for depth, name, cum in reversed(entries):  # pre-order-ish walk: parents first
        while stack and stack[-1][0] >= depth:
            stack.pop()
        has_exec_ancestor = any(s[1].startswith("airflow.executors") for s in stack)
        if name.startswith("airflow.executors") and not has_exec_ancestor:
            executors_us += cum
        stack.append((depth, name, cum))
    return {"import_total_s": total_us / 1e6, "import_executors_s": executors_us / 1e6, "imports": n}


def run_component(
    component: str, env: dict, work: Path, warmup: float, stable: float, samples: int, timeout: float
) -> dict:
    probe_dir = work / f"probe-{component}"
    probe_dir.mkdir()
    stderr_path = work / f"{component}.stderr"
    cmd = [sys.executable, "-m", "airflow", component]
    if component == "triggerer":
        cmd.append("--skip-serve-logs")
    penv = {**env, "JOB_IMPORTS_PROBE_DIR": str(probe_dir), "PYTHONPROFILEIMPORTTIME": "1"}
    t0 = time.monotonic()
    with open(stderr_path, "w") as err, open(work / f"{component}.stdout", "w") as out:
        popen = subprocess.Popen(cmd, env=penv, stdout=out, stderr=err, start_new_session=True)
    try:
        proc = psutil.Process(popen.pid)
        probe_file = probe_dir / f"{popen.pid}.json"
        last_count, last_change = None, time.monotonic()
        probe: dict = {}
        while True:
            if popen.poll() is not None:
                raise RuntimeError(
                    f"{component} exited early ({popen.returncode}): {stderr_path.read_text()[-3000:]}"
                )
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{component} not steady after {timeout}s")
            if probe_file.exists():
                try:
                    probe = json.loads(probe_file.read_text())
                except (OSError, ValueError):
                    probe = probe or {}
                if probe and probe["n_modules"] != last_count:
                    last_count, last_change = probe["n_modules"], time.monotonic()
            now = time.monotonic()
            if probe and now - t0 >= warmup and now - last_change >= stable:
                break
            time.sleep(0.5)
        steady_after = time.monotonic() - t0
        main, tree = [], []
        for _ in range(samples):
            mi = proc.memory_full_info()
            main.append({"uss": mi.uss, "pss": mi.pss, "rss": mi.rss})
            tree.append(tree_memory(proc))
            time.sleep(1.0)
        probe = json.loads(probe_file.read_text())
    finally:
        stop_group(popen)
    med = lambda rows, k: statistics.median(r[k] for r in rows)
    return {
        "component": component,
        "uss": med(main, "uss"),
        "pss": med(main, "pss"),
        "rss": med(main, "rss"),
        "tree_uss": med(tree, "uss"),
        "tree_pss": med(tree, "pss"),
        "tree_procs": max(r["procs"] for r in tree),
        "n_modules": probe["n_modules"],
        "n_airflow_modules": probe["n_airflow_modules"],
        "executor_modules": probe["executor_modules"],
        "steady_after_s": steady_after,
        **parse_importtime(stderr_path.read_text(errors="replace")),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--components", default="dag-processor,triggerer")
    parser.add_argument("--warmup", type=float, default=25.0, help="seconds before sampling may start")
    parser.add_argument("--stable", type=float, default=8.0, help="module count unchanged this long = steady")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--dags", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp AIRFLOW_HOME (logs) for inspection"
    )
    args = parser.parse_args()

    import airflow

    version = getattr(airflow, "__version__", "?")
    work = Path(tempfile.mkdtemp(prefix="memseries-job-imports-"))
    try:
        home = work / "home"
        dags = home / "dags"
        dags.mkdir(parents=True)
        for n in range(args.dags):
            (dags / f"job_imports_{n}.py").write_text(DAG.format(n=n))
        site = work / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k not in ("PYTHONPATH",)
        }
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                "AIRFLOW__DATABASE__LOAD_DEFAULT_CONNECTIONS": "False",
                "AIRFLOW__API_AUTH__JWT_SECRET": "job-imports-bench",
                "AIRFLOW__API__SECRET_KEY": "job-imports-bench",
                "PYTHONPATH": str(site),
            }
        )
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
        results = []
        for component in args.components.split(","):
            results.append(
                run_component(component, env, work, args.warmup, args.stable, args.samples, args.timeout)
            )
        print(json.dumps({"airflow_version": version, "python": sys.executable, "results": results}))
        return 0
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
