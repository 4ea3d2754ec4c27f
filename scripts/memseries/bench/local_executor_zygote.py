"""local-executor-zygote: LocalExecutor workers on a real stack, patched (zygote, 0007-0008) vs unpatched base.

Each configuration (start method x parallelism x .pyc or not) runs the real stack (api-server, dag-processor,
scheduler with LocalExecutor) on each build, one after the other, over the example DAGs (a steady backlog of
small PythonOperator/Bash tasks through the real task SDK supervisor and the execution API) plus one long task
(`memseries_lexec_busy`, top priority, no retries). Workers are aged (a full gc.collect() every --age seconds, from the harness's
sitecustomize). Once the long task runs, the worker running it is SIGKILLed; the worker that replaces it runs
tasks until the end. Measured over the last --measure seconds:

- steady worker USS: mean over the original workers (samples without a live task child);
- replacement worker USS: the workers forked after the kill, at the end;
- zygote USS (patched only; its own cost);
- scheduler-tree PSS: scheduler + zygote + forkserver + workers + task processes, mean over sample rounds;
- tasks/min (successful task runs in the window) and p50 task start latency (start_date - queued_dttm);
- p50 wait from scheduled to start (start_date - scheduled_dttm): the whole wait once the scheduler found the
  TI runnable, wherever it waited (SCHEDULED in the DB, or QUEUED in the executor's backlog);
- TIs queued (mean over the window): the backlog. LocalExecutor takes up to `parallelism` workloads per
  scheduler loop whatever its workers are doing, so with a steady backlog the latency is about the backlog
  divided by the throughput (Little's law): a build whose scheduler loops faster queues more and shows a
  longer latency at the same or a higher throughput. Read the latency beside this column.

"Without .pyc" is this machine's default (PYTHONDONTWRITEBYTECODE=1, an empty bytecode cache prefix); "with
.pyc" points PYTHONPYCACHEPREFIX at a per-build cache that a warm-up import fills first.

Output: bench-results/local-executor-zygote-<time>/{results.md,raw.json,local-executor-zygote.png}.
Targets (issue 19): steady USS <= 0.55x, replacement <= 0.35x, tree PSS <= 0.9x at parallelism 4 and <= 0.7x
at 16; forkserver at or below the base's fork figures; tasks/min and p50 latency within noise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil

from memseries.bench import common
from memseries.stack import EXAMPLE_DAGS, Stack, StackConfig, default_classify, mib

ZYGOTE_TITLE = "airflow zygote -- LocalExecutor"
BUSY_DAG = '''
from __future__ import annotations
import time
from datetime import datetime, timedelta
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

with DAG(dag_id="memseries_lexec_busy", schedule="@once", start_date=datetime(2026, 1, 1), catchup=False,
         default_args={"retries": 0}):
    PythonOperator(task_id="long", python_callable=lambda: time.sleep({seconds}), priority_weight=1000)
'''
TREE_ROLES = ("scheduler", "zygote", "worker", "task", "scheduler-child")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_build_arguments(parser)
    parser.set_defaults(builds="base,patched")
    parser.add_argument(
        "--configs",
        default="fork:4,forkserver:4,fork:16,forkserver:16,fork:4:pyc",
        help="comma-separated start-method:parallelism[:pyc] (default: both methods at 4 and 16, fork:4 with .pyc)",
    )
    parser.add_argument("--warmup", type=float, default=45.0, help="seconds before measuring (45)")
    parser.add_argument("--measure", type=float, default=75.0, help="seconds measured (75)")
    parser.add_argument("--age", type=float, default=15.0, help="forced full collection every N s (15)")
    parser.add_argument("--interval", type=float, default=2.0, help="sampling interval (2)")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--from-raw", type=Path, help="re-render a previous run's raw.json")


def classify(component: str, proc: psutil.Process, title: str, parent_role: str) -> str:
    if title.startswith(ZYGOTE_TITLE):
        return "zygote"
    return default_classify(component, proc, title, parent_role)


def _parse_configs(text: str) -> list[tuple[str, int, bool]]:
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) not in (2, 3) or parts[0] not in ("fork", "forkserver", "spawn") or not parts[1].isdigit():
            raise SystemExit(f"bad --configs item {item!r}: want method:parallelism[:pyc]")
        out.append((parts[0], int(parts[1]), len(parts) == 3 and parts[2] == "pyc"))
    return out


@contextlib.contextmanager
def _bytecode(build: common.Build, pyc: bool, cache_root: Path):
    """Environment for the run: with .pyc, a warm per-build cache prefix; without, an empty one and no writes."""
    saved = {k: os.environ.get(k) for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    try:
        if pyc:
            prefix = cache_root / build.label
            prefix.mkdir(parents=True, exist_ok=True)
            os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
            os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
            warm = ("import airflow.jobs.scheduler_job_runner, airflow.executors.local_executor, "
                    "airflow.sdk.execution_time.supervisor, airflow.sdk.execution_time.task_runner, "
                    "airflow.providers.standard.operators.python, airflow.api_fastapi.main")
            subprocess.run([str(build.python), "-c", warm], env=dict(os.environ), capture_output=True, timeout=600,
                           check=False)
        else:
            os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
            os.environ["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="memseries-nopyc-")
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _dt(value) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace(" ", "T"))


def run_one(build: common.Build, method: str, parallelism: int, pyc: bool, args, log, cache_root: Path) -> dict:
    busy_seconds = int(args.warmup + args.measure + 60)
    with tempfile.TemporaryDirectory(prefix="memseries-lexec-dags-") as tmp:
        busy = Path(tmp) / "memseries_lexec_busy.py"
        busy.write_text(BUSY_DAG.replace("{seconds}", str(busy_seconds)))
        cfg = StackConfig(
            venv=build.venv,
            label=f"{build.label} {method} p{parallelism}{' pyc' if pyc else ''}",
            backend=args.backend,
            parallelism=parallelism,
            dags=[EXAMPLE_DAGS, busy],
            age_interval=args.age,
            config={("core", "mp_start_method"): method, ("scheduler", "task_instance_heartbeat_timeout"): "600"},
        )
        with _bytecode(build, pyc, cache_root), Stack(cfg, classify=classify, log=log) as st:
            sampler = st.start_sampler(interval=args.interval, roles=TREE_ROLES)
            t_start = time.monotonic()
            original: set[int] = set()
            killed: dict = {}
            measure_from = t_start + args.warmup
            counts_before = None
            queued_counts: list[int] = []  # TIs in state queued, once a second in the window (the backlog)
            while time.monotonic() < measure_from + args.measure:
                st.check_alive()
                procs = st.processes()
                workers = [p for p in procs if p.role == "worker"]
                if not killed:
                    original |= {p.pid for p in workers}
                    # a worker's title names the task instance it runs by its id
                    ids = {str(r[0]).replace("-", "") for r in st.query(
                        "SELECT id FROM task_instance WHERE dag_id = 'memseries_lexec_busy' AND state = 'running'")}
                    busy_worker = [p for p in workers if ids and any(i in p.title.replace("-", "") for i in ids)]
                    if busy_worker:
                        time.sleep(3)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(busy_worker[0].pid, signal.SIGKILL)
                        killed = {"pid": busy_worker[0].pid, "t": time.monotonic() - st.t0}
                        log(f"[{cfg.label}] SIGKILLed busy worker {busy_worker[0].pid}")
                if time.monotonic() >= measure_from:
                    counts = st.task_counts()
                    if counts_before is None:
                        counts_before = counts.get("success", 0)
                    queued_counts.append(counts.get("queued", 0))
                time.sleep(1.0)
            counts_after = st.task_counts().get("success", 0)
            sampler.stop()
            samples = sampler.snapshot()
            t_lo = measure_from - st.t0
            rows = st.query("SELECT queued_dttm, start_date, scheduled_dttm FROM task_instance "
                            "WHERE start_date IS NOT NULL AND queued_dttm IS NOT NULL "
                            "AND dag_id != 'memseries_lexec_busy'")
            t_lo_wall = st.started_wall + (measure_from - st.t0)
    latencies, waits = [], []
    for queued, started, scheduled in rows:
        q, s, sch = _dt(queued), _dt(started), _dt(scheduled)
        if q and s and s.timestamp() >= t_lo_wall:
            latencies.append((s - q).total_seconds())
            if sch:
                waits.append((s - sch).total_seconds())
    window = [s for s in samples if s.t >= t_lo]
    late = [s for s in samples if s.t >= samples[-1].t - max(args.interval * 3, 10)] if samples else []

    def mean_uss(pids, ss) -> float | None:
        """Mean over the workers of each one's USS: the mean of its samples without a live task process (a
        worker's USS drops while its task process shares its pages), else the largest sample."""
        per = []
        for pid in pids:
            mine = [s for s in ss if s.pid == pid]
            free = [s.uss for s in mine if s.children == 0]
            if free:
                per.append(statistics.mean(free))
            elif mine:
                per.append(max(s.uss for s in mine))
        return statistics.mean(per) if per else None

    steady_pids = original - {killed.get("pid")}
    all_workers = {s.pid for s in window if s.role == "worker"}
    replacement_pids = all_workers - original
    rounds: dict[float, int] = {}
    for s in window:
        rounds[s.t] = rounds.get(s.t, 0) + s.pss
    zyg = [s.uss for s in window if s.role == "zygote"]
    return {
        "build": build.label, "patched": build.patched, "method": method, "parallelism": parallelism, "pyc": pyc,
        "steady_uss": mean_uss(steady_pids, late) or mean_uss(steady_pids, window),
        "replacement_uss": mean_uss(replacement_pids, late) or mean_uss(replacement_pids, window),
        "replacements": len(replacement_pids),
        "zygote_uss": statistics.mean(zyg) if zyg else None,
        "tree_pss": statistics.mean(rounds.values()) if rounds else None,
        "tasks_per_min": (counts_after - (counts_before or 0)) * 60.0 / args.measure,
        "p50_latency": statistics.median(latencies) if latencies else None,
        "p50_wait": statistics.median(waits) if waits else None,
        "mean_queued": statistics.mean(queued_counts) if queued_counts else None,
        "killed": killed,
        "series": [(s.t, s.pid, s.role, s.uss, s.pss) for s in samples],
    }


def _fmt(v, unit="") -> str:
    if v is None:
        return "-"
    return f"{mib(v):.1f}" if unit == "mib" else f"{v:.2f}" if unit == "s" else f"{v:.0f}"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def render(results: list[dict], out: Path) -> str:
    headers = ["config", "build", "steady worker USS MiB", "replacement USS MiB", "zygote USS MiB",
               "scheduler-tree PSS MiB", "tasks/min", "p50 start latency s", "p50 scheduled->start s",
               "TIs queued (mean)"]
    rows, ratio_rows = [], []
    key = lambda r: (r["method"], r["parallelism"], r["pyc"])  # noqa: E731
    for r in results:
        cfg = f"{r['method']} p{r['parallelism']}{' .pyc' if r['pyc'] else ''}"
        rows.append([cfg, r["build"], _fmt(r["steady_uss"], "mib"), _fmt(r["replacement_uss"], "mib"),
                     _fmt(r["zygote_uss"], "mib"), _fmt(r["tree_pss"], "mib"), _fmt(r["tasks_per_min"]),
                     _fmt(r["p50_latency"], "s"), _fmt(r.get("p50_wait"), "s"), _fmt(r.get("mean_queued"))])
    base_fork = {(r["parallelism"], r["pyc"]): r for r in results if not r["patched"] and r["method"] == "fork"}
    for r in results:
        if not r["patched"]:
            continue
        base = next((b for b in results if not b["patched"] and key(b) == key(r)), None)
        if not base:
            continue
        bf = base_fork.get((r["parallelism"], r["pyc"]))
        ratio_rows.append([
            f"{r['method']} p{r['parallelism']}{' .pyc' if r['pyc'] else ''}",
            _ratio(r["steady_uss"], base["steady_uss"]), _ratio(r["replacement_uss"], base["replacement_uss"]),
            _ratio(r["tree_pss"], base["tree_pss"]), _ratio(r["tree_pss"], bf["tree_pss"]) if bf else "-",
            _ratio(r["tasks_per_min"], base["tasks_per_min"]), _ratio(r["p50_latency"], base["p50_latency"]),
            _ratio(r.get("p50_wait"), base.get("p50_wait")),
        ])
    ratio_headers = ["config", "steady USS", "replacement USS", "tree PSS", "tree PSS vs base fork",
                     "tasks/min", "p50 latency", "p50 scheduled->start"]
    common.print_table("LocalExecutor workers: patched (zygote) vs unpatched", headers, rows)
    common.print_table("patched / unpatched", ratio_headers, ratio_rows)
    md = (common.markdown_table("LocalExecutor workers: patched (zygote) vs unpatched", headers, rows) + "\n"
          + common.markdown_table("patched / unpatched (same config)", ratio_headers, ratio_rows))
    (out / "results.md").write_text(md)
    _plot(results, out / "local-executor-zygote.png")
    return md


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({(r["method"], r["parallelism"], r["pyc"]) for r in results})
    fig, axes = plt.subplots(1, len(configs), figsize=(4.5 * len(configs), 4), squeeze=False)
    for ax, c in zip(axes[0], configs):
        for r in results:
            if (r["method"], r["parallelism"], r["pyc"]) != c:
                continue
            per: dict[int, list] = {}
            for t, pid, role, uss, _ in r["series"]:
                if role in ("worker", "zygote"):
                    per.setdefault((pid, role), []).append((t, mib(uss)))
            for (pid, role), pts in per.items():
                ax.plot(*zip(*pts), color="tab:green" if r["patched"] else "tab:red",
                        linestyle="--" if role == "zygote" else "-", linewidth=0.8, alpha=0.7)
        ax.set_title(f"{c[0]} p{c[1]}{' .pyc' if c[2] else ''}")
        ax.set_xlabel("s")
        ax.set_ylabel("USS MiB (red: base, green: patched, dashed: zygote)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> int:
    if args.from_raw:
        results = json.loads(args.from_raw.read_text())
        render(results, args.from_raw.parent)
        return 0
    builds = common.builds(args)
    out = common.results_dir("local-executor-zygote")
    cache_root = Path(tempfile.mkdtemp(prefix="memseries-pyc-"))
    results = []
    for method, parallelism, pyc in _parse_configs(args.configs):
        for build in builds:
            results.append(run_one(build, method, parallelism, pyc, args, common.console.print, cache_root))
            (out / "raw.json").write_text(json.dumps(results))
    render(results, out)
    print(f"results in {out}")
    return 0
