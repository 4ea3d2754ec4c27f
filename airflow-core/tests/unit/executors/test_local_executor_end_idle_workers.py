"""LocalExecutor.end() sends every live worker its stop message (3.1.3 patch 0007).

Real LocalExecutor, real forked workers, real shared queue. The function a worker runs for a task
(`local_executor._execute_work`) is replaced before the workers fork by one that holds its task until the test
releases it, so that one worker is busy while the other sits idle on the queue. The only other interference is
in this process: after each stop message end() sends, the test waits until a worker has exited before end()
goes on -- what a scheduler descheduled for a moment on a busy machine sees.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
from airflow.executors import local_executor, workloads
from airflow.executors.local_executor import LocalExecutor
from airflow.utils.state import TaskInstanceState

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork based")


def make_workload(task_id: str) -> workloads.ExecuteTask:
    return workloads.ExecuteTask(
        token="",
        ti=workloads.TaskInstance(
            id=uuid.uuid4(),
            dag_version_id=uuid.uuid4(),
            task_id=task_id,
            dag_id="local_executor_end_idle_workers",
            run_id="manual__1",
            try_number=1,
            pool_slots=1,
            queue="default",
            priority_weight=1,
        ),
        dag_rel_path="local_executor_end_idle_workers.py",
        bundle_info=workloads.BundleInfo(name="dags-folder"),
        log_path=None,
    )


def wait_for(predicate, timeout: float = 60.0, step=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step:
            step()
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def held_task(monkeypatch, tmp_path: Path) -> Path:
    """Workers run task "held" until `<dir>/release` exists (its worker's pid in `<dir>/busy`); others at once."""

    def execute_work(log, workload):
        if workload.ti.task_id != "held":
            return
        (tmp_path / "busy").write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not (tmp_path / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    monkeypatch.setattr(local_executor, "_execute_work", execute_work)
    return tmp_path


def test_end_stops_idle_worker_and_the_one_that_just_finished(held_task, session):
    ex = LocalExecutor(parallelism=2)
    ex.start()
    events: dict = {}

    def step():
        ex.heartbeat()
        events.update(ex.get_event_buffer())

    held, quick = make_workload("held"), make_workload("quick")
    try:
        for w in (held, quick):
            ex.queue_workload(w, session=session)
        # one worker holds "held"; the other ran "quick" and now waits on the queue, holding its read lock
        assert wait_for(lambda: (held_task / "busy").exists() and quick.ti.key in events, step=step)
        assert len(ex.workers) == 2, f"expected two workers, have {sorted(ex.workers)}"
        busy = int((held_task / "busy").read_text())
        idle = next(pid for pid in ex.workers if pid != busy)
        # the busy worker is checked first: the idle one takes the first stop message
        ex.workers = {busy: ex.workers[busy], idle: ex.workers[idle]}
        (held_task / "release").touch()
        assert wait_for(lambda: held.ti.key in events, step=step)
        assert {state for state, _ in events.values()} == {TaskInstanceState.SUCCESS}

        procs = list(ex.workers.values())
        stop_messages = []
        real_put = ex.activity_queue.put

        def put(obj):
            real_put(obj)
            if obj is None:
                stop_messages.append(obj)
                # a worker takes it and exits before end() looks at the next worker
                multiprocessing.connection.wait([p.sentinel for p in procs], timeout=30)

        ex.activity_queue.put = put
        ending = threading.Thread(target=ex.end, daemon=True)
        ending.start()
        ending.join(60)
        hung = ending.is_alive()
        if hung:  # let end() return: it waits for a worker that never got a stop message
            for pid in (busy, idle):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            ending.join(30)
        assert not hung, (
            f"end() sent {len(stop_messages)} stop message(s) to 2 live workers, then waited more than 60 s for "
            f"worker {busy}, which never got one"
        )
        assert len(stop_messages) == 2
        assert not [pid for pid in (busy, idle) if psutil.pid_exists(pid)], "both workers stop on their message"
    finally:
        for proc in list(ex.workers.values()):
            try:
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
            except ValueError:  # closed by end()
                pass
