"""Payload of `memseries bench local-executor`: aged LocalExecutor workers under a steady workload.

Runs inside one Airflow venv (3.1.3, 3.1.3 + series, or 3.3.2); stdlib + psutil + airflow only. The process
plays the scheduler: it imports the scheduler stack, builds a scheduler-like heap (DAGs serialized and
deserialized, and their serialized JSON kept, as the scheduler's DAG bag holds them), collects it into the
oldest generation, then starts a real LocalExecutor (fork, the Linux default) and feeds it ExecuteTask
workloads at a steady rate for a bounded time.

What the workers run is replaced before `start()` (forked workers inherit it): a synthetic task that
allocates short-lived objects and waits `--task-seconds`, instead of supervising a real task process (that
needs an API server; `make demo` covers the real stack). Workers are *aged*: a thread started in each
forked worker runs a full `gc.collect()` `--age-after` seconds after the fork and then every
`--age-every` seconds, as production workers eventually do on their own (after an hour or more).

Every `--interval` seconds each worker's (and the parent's) PSS/USS/RSS is sampled with psutil's
memory_full_info(). gc.freeze()/gc.unfreeze() are wrapped to time them. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
import uuid

from _plumbing import mem


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--parallelism", type=int, default=4)
    p.add_argument("--rate", type=float, default=8.0, help="tasks per second")
    p.add_argument("--task-seconds", type=float, default=0.3)
    p.add_argument("--age-after", type=float, default=8.0)
    p.add_argument("--age-every", type=float, default=15.0)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--dags", type=int, default=120)
    p.add_argument("--tasks", type=int, default=50)
    return p.parse_args(argv)


def setup_env() -> str:
    home = tempfile.mkdtemp(prefix="memseries-lexec-")
    os.makedirs(os.path.join(home, "dags"), exist_ok=True)
    os.environ.update(
        {
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(home, "dags"),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__API_AUTH__JWT_SECRET": "memseries-bench-secret",
            "AIRFLOW__API__SECRET_KEY": "memseries-bench-secret",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        }
    )
    return home


def build_heap(n_dags: int, n_tasks: int) -> list:
    """DAGs as the scheduler holds them: deserialized objects, plus their serialized JSON."""
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
    from airflow.serialization import serialized_objects as so

    ser = getattr(so, "SerializedDAG", None)
    if ser is None or not hasattr(ser, "to_dict"):
        ser = so.DagSerialization  # 3.3.x
    heap = []
    for d in range(n_dags):
        with DAG(f"bench_dag_{d}", schedule=None, tags=["memseries", f"group{d % 7}"]) as dag:
            prev = None
            for i in range(n_tasks):
                if i % 2:
                    op = BashOperator(task_id=f"task_{i}", bash_command=f"echo {d} {i}", env={"N": str(i)})
                else:
                    op = EmptyOperator(task_id=f"task_{i}")
                if prev is not None:
                    prev >> op
                prev = op
        data = ser.to_dict(dag)
        heap.append((data, ser.from_dict(json.loads(json.dumps(data)))))
    return heap


def make_workload(workloads, n: int):
    return workloads.ExecuteTask(
        token="",
        ti=workloads.TaskInstance(
            id=uuid.uuid4(),
            dag_version_id=uuid.uuid4(),
            task_id=f"task_{n}",
            dag_id="memseries_bench",
            run_id="manual__bench",
            try_number=1,
            pool_slots=1,
            queue="default",
            priority_weight=1,
        ),
        dag_rel_path="memseries_bench.py",
        bundle_info=workloads.BundleInfo(name="dags-folder"),
        log_path=None,
    )


def main() -> int:
    args = parse_args()
    home = setup_env()
    t_import = time.perf_counter()
    # The scheduler stack, imported as in the scheduler.
    import airflow.jobs.scheduler_job_runner
    import psutil
    from airflow.executors import local_executor, workloads
    from airflow.executors.base_executor import BaseExecutor
    from airflow.executors.local_executor import LocalExecutor
    from airflow.utils.state import TaskInstanceState

    import_s = time.perf_counter() - t_import
    t_heap = time.perf_counter()
    heap = build_heap(args.dags, args.tasks)
    gc.collect()  # a scheduler that has run a while has its long-lived objects in the oldest generation
    heap_s = time.perf_counter() - t_heap
    parent = psutil.Process()
    out_dir = tempfile.mkdtemp(prefix="memseries-lexec-age-")
    parent_pid = os.getpid()

    # --- what a worker runs for a task, and its aging ------------------------------------------------
    def synthetic_task(workload) -> None:
        # Like a supervisor: short-lived objects (messages, log lines) that die young, then waiting on the
        # task. Nothing here survives long enough to trigger a full collection on its own; aging does that.
        for _ in range(20):
            batch = [[i, f"{workload.ti.task_id}-{i}"] for i in range(100)]
            del batch
        time.sleep(args.task_seconds)

    if hasattr(local_executor, "_execute_work"):  # 3.1.x: _run_worker calls _execute_work(log, workload)
        local_executor._execute_work = lambda log, workload: synthetic_task(workload)
    else:  # 3.3.x: _run_worker calls BaseExecutor.run_workload(workload, **kw)

        def run_workload(workload, **kwargs) -> int:
            synthetic_task(workload)
            return 0

        BaseExecutor.run_workload = staticmethod(run_workload)

    def aging_loop() -> None:
        time.sleep(args.age_after)
        path = os.path.join(out_dir, f"{os.getpid()}.jsonl")
        while True:
            t0 = time.perf_counter()
            gc.collect()
            with open(path, "a") as f:
                f.write(json.dumps({"collect_ms": (time.perf_counter() - t0) * 1000}) + "\n")
            time.sleep(args.age_every)

    def after_fork_in_child() -> None:
        if os.getpid() != parent_pid:
            threading.Thread(target=aging_loop, daemon=True, name="memseries-aging").start()

    os.register_at_fork(after_in_child=after_fork_in_child)

    # --- time gc.freeze()/gc.unfreeze() in this (the executor's) process ----------------------------
    freeze_events: list[tuple[str, float]] = []
    real_freeze, real_unfreeze = gc.freeze, gc.unfreeze

    def timed_freeze():
        t0 = time.perf_counter_ns()
        real_freeze()
        freeze_events.append(("freeze", (time.perf_counter_ns() - t0) / 1000))

    def timed_unfreeze():
        t0 = time.perf_counter_ns()
        real_unfreeze()
        freeze_events.append(("unfreeze", (time.perf_counter_ns() - t0) / 1000))

    gc.freeze, gc.unfreeze = timed_freeze, timed_unfreeze

    tracked = len(gc.get_objects())
    parent_before = mem(parent)

    # --- run ---------------------------------------------------------------------------------------
    executor = LocalExecutor(parallelism=args.parallelism)
    t0 = time.monotonic()
    executor.start()
    start_s = time.monotonic() - t0
    workers_after_start = len(executor.workers)
    samples: list[dict] = []
    first_seen: dict[int, float] = {}
    procs: dict[int, psutil.Process] = {}
    queued = done = failed = 0
    next_sample = 0.0
    n = 0

    def sample(now: float) -> None:
        workers = {}
        for pid in list(executor.workers):
            if pid not in procs:
                try:
                    procs[pid] = psutil.Process(pid)
                except psutil.NoSuchProcess:
                    continue
                first_seen[pid] = now
            m = mem(procs[pid])
            if m:
                workers[str(pid)] = m
        samples.append({"t": round(now, 3), "workers": workers, "parent": mem(parent)})

    def collect_events() -> None:
        nonlocal done, failed
        for state, _info in executor.get_event_buffer().values():
            if state == TaskInstanceState.SUCCESS:
                done += 1
            elif state == TaskInstanceState.FAILED:
                failed += 1

    while (now := time.monotonic() - t0) < args.duration:
        while queued < now * args.rate:
            executor.queue_workload(make_workload(workloads, n), session=None)
            n += 1
            queued += 1
        executor.heartbeat()
        collect_events()
        if now >= next_sample:
            sample(now)
            next_sample += args.interval
        time.sleep(0.05)

    deadline = time.monotonic() + 60
    while done + failed < queued and time.monotonic() < deadline:
        executor.heartbeat()
        collect_events()
        time.sleep(0.05)
    sample(time.monotonic() - t0)
    worker_pids = sorted(procs)
    executor.end()
    collect_events()
    gc.freeze, gc.unfreeze = real_freeze, real_unfreeze

    # freeze/unfreeze pairs = batches
    batches = []
    pending = None
    for kind, us in freeze_events:
        if kind == "freeze":
            pending = us
        elif pending is not None:
            batches.append({"freeze_us": pending, "unfreeze_us": us, "total_us": pending + us})
            pending = None

    collects: dict[str, list[float]] = {}
    for pid in worker_pids:
        path = os.path.join(out_dir, f"{pid}.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                collects[str(pid)] = [json.loads(line)["collect_ms"] for line in f if line.strip()]

    import shutil

    import airflow

    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)
    print(
        json.dumps(
            {
                "airflow_version": airflow.__version__,
                "python": sys.version.split()[0],
                "args": vars(args),
                "import_s": import_s,
                "heap_build_s": heap_s,
                "tracked_objects": tracked,
                "parent_before_start": parent_before,
                "start_s": start_s,
                "workers_after_start": workers_after_start,
                "worker_first_seen": {str(p): t for p, t in first_seen.items()},
                "samples": samples,
                "batches": batches,
                "collects_ms": collects,
                "queued": queued,
                "succeeded": done,
                "failed": failed,
                "heap_len": len(heap),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
