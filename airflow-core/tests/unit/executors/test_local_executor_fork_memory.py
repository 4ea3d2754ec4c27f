"""Forked LocalExecutor workers keep sharing the scheduler's heap after a full collection (patch 0001).

The parent (standing in for the scheduler) holds a large heap of GC-tracked objects, a real LocalExecutor
forks its workers, and each worker is made to run a full `gc.collect()` — what happens in production an hour
or so into a worker's life. A collection writes to the GC header of every object it traverses, so without the
freeze every page of the inherited heap is copied into each worker: its private memory (USS) grows by about
the size of the parent's heap. With the GC frozen around the fork the inherited objects are never traversed.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import sys
import time
import uuid

import psutil
import pytest
from airflow.executors import local_executor, workloads
from airflow.executors.local_executor import LocalExecutor
from airflow.utils.state import TaskInstanceState

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork and /proc based")

PARENT_OBJECTS = 250_000
WORKERS = 2
MB = 1024 * 1024


def make_workload(n: int) -> workloads.ExecuteTask:
    return workloads.ExecuteTask(
        token="",
        ti=workloads.TaskInstance(
            id=uuid.uuid4(),
            dag_version_id=uuid.uuid4(),
            task_id=f"collect_{n}",
            dag_id="local_executor_fork_memory",
            run_id="manual__1",
            try_number=1,
            pool_slots=1,
            queue="default",
            priority_weight=1,
        ),
        dag_rel_path="local_executor_fork_memory.py",
        bundle_info=workloads.BundleInfo(name="dags-folder"),
        log_path=None,
    )


def uss(proc: psutil.Process) -> int:
    return proc.memory_full_info().uss


def test_full_collection_in_forked_worker_does_not_copy_parent_heap(monkeypatch, tmp_path, session):
    me = psutil.Process()
    gc.collect()
    before = uss(me)
    # A scheduler-like heap: small containers, strings and ints, all GC-tracked containers.
    heap = [{"id": i, "name": f"object-{i}", "deps": [i, i + 1]} for i in range(PARENT_OBJECTS)]
    gc.collect()
    heap_bytes = uss(me) - before
    assert heap_bytes > 40 * MB, f"test heap too small to measure ({heap_bytes / MB:.1f} MB)"

    # Every worker must take exactly one collection task: it waits for the others at the barrier.
    barrier = multiprocessing.get_context("fork").Barrier(WORKERS)

    def collect_work(log, workload):
        this = psutil.Process()
        uss(this)  # warm psutil up, so its own allocations are not counted
        start = uss(this)
        gc.collect()
        end = uss(this)
        (tmp_path / f"{os.getpid()}.json").write_text(json.dumps({"start": start, "end": end}))
        barrier.wait(timeout=60)

    monkeypatch.setattr(local_executor, "_execute_work", collect_work)
    ex = LocalExecutor(parallelism=WORKERS)
    ex.start()
    try:
        batch = [make_workload(i) for i in range(WORKERS)]
        for w in batch:
            ex.queue_workload(w, session=session)
        events: dict = {}
        deadline = time.monotonic() + 90
        while not {w.ti.key for w in batch} <= set(events):
            assert time.monotonic() < deadline, f"workers did not finish: {events}"
            ex.heartbeat()
            events.update(ex.get_event_buffer())
            time.sleep(0.05)
        assert {state for state, _ in events.values()} == {TaskInstanceState.SUCCESS}
    finally:
        ex.end()
    del heap

    reports = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert len(reports) == WORKERS, "each worker must have run one full collection"
    growth = [(r["end"] - r["start"]) for r in reports]
    summary = ", ".join(f"{r['start'] / MB:.1f} -> {r['end'] / MB:.1f} MB" for r in reports)
    # Unfrozen, a worker copies about the whole parent heap (~heap_bytes); frozen, next to nothing.
    bound = max(10 * MB, heap_bytes // 5)
    assert max(growth) < bound, (
        f"worker USS grew by up to {max(growth) / MB:.1f} MB in a full collection (bound {bound / MB:.1f} MB;"
        f" parent heap {heap_bytes / MB:.1f} MB; per worker {summary})"
    )
